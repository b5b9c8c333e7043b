import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import type { Credential } from '../src/relay/auth.js';
import { NodeDirectory } from '../src/relay/directory.js';
import type { RelayMetrics } from '../src/relay/metrics.js';
import { NodeLink } from '../src/relay/node-link.js';
import { NodeRegistry } from '../src/relay/node-registry.js';
import type { Connection } from '../src/wire/connection.js';
import { CloseCode } from '../src/wire/close-codes.js';
import { Kind, PROTOCOL_VERSION, type Hello } from '../src/wire/messages.js';
import { peerPair, settleUntil, silent, type PeerPair } from './helpers/links.js';

/** One name, one live node (node-registry.ts), with nodes played by the test over in-memory connections. */

const credential = { kind: 'node' } as unknown as Credential;

function registry(heartbeatTimeout = 100) {
  const directory = new NodeDirectory();
  const reconnected: string[] = [];
  const rejectedMetric: string[] = [];
  const rejected: Array<{ conn: Connection; code: number; reason: string; metric: string }> = [];
  const metrics = {
    nodeReconnected: (name: string) => reconnected.push(name),
    connectionRejected: (reason: string) => rejectedMetric.push(reason),
  } as unknown as RelayMetrics;
  const reg = new NodeRegistry({
    relayName: 'relay-1',
    relayVersion: '9.9.9',
    maxMessage: 1000,
    heartbeatTimeout,
    log: silent,
    directory,
    metrics,
    reject: (conn, code, reason, metric) => {
      rejected.push({ conn, code, reason, metric });
      conn.close(code, reason);
    },
  });
  const events: string[] = [];
  reg.on('join', (l: NodeLink) => events.push(`join ${l.address}`));
  reg.on('leave', (l: NodeLink, why: string) => events.push(`leave ${l.address} ${why}`));
  reg.on('update', (l: NodeLink) => events.push(`update ${l.address}`));
  return { reg, directory, reconnected, rejected, rejectedMetric, events };
}

const hello = (instance: string, services = { Arith: ['Add'] }): Hello => ({ version: PROTOCOL_VERSION, role: 'node', name: 'lab-1', services, instance });

/** A node connecting as `address` and claiming lab-1. */
function connect(reg: NodeRegistry, address: string, instance: string): PeerPair {
  const pair = peerPair();
  reg.claim(pair.relay, hello(instance), address, silent, credential);
  return pair;
}

describe('NodeRegistry', () => {
  it('registers a node: its link in the directory, a welcome, a join', async () => {
    const { reg, directory, events, reconnected } = registry();
    const node = connect(reg, '10.0.0.1:1', 'i-1');
    const link = directory.local('lab-1') as NodeLink;
    expect(link).toBeInstanceOf(NodeLink);
    expect([link.address, link.instance, link.relays]).toEqual(['10.0.0.1:1', 'i-1', ['relay-1']]);
    expect([...reg.all()]).toEqual([link]);
    expect(reg.credentialOf(link)).toBe(credential);
    expect(events).toEqual(['join 10.0.0.1:1']);
    await settleUntil(() => node.of(Kind.WELCOME).length === 1, 'the welcome');
    expect(node.of(Kind.WELCOME)[0]!.welcome).toEqual({ version: PROTOCOL_VERSION, relay: '9.9.9', name: 'lab-1', maxMessage: 1000 });
    expect(reconnected).toEqual([]);
  });

  it('the same process reconnecting replaces its old connection at once (4000)', async () => {
    const { reg, directory, events, reconnected } = registry();
    const first = connect(reg, '10.0.0.1:1', 'i-1');
    connect(reg, '10.0.0.1:2', 'i-1');
    expect((directory.local('lab-1') as NodeLink).address).toBe('10.0.0.1:2');
    expect(events).toEqual(['join 10.0.0.1:1', 'leave 10.0.0.1:1 replaced', 'join 10.0.0.1:2']);
    expect(reconnected).toEqual(['lab-1']);
    expect(reg.size).toBe(1);
    await settleUntil(() => first.peerCloses.length === 1, 'the old connection closed');
    expect(first.peerCloses[0]).toEqual([CloseCode.REPLACED, 'replaced by a new connection for node lab-1']);
    // The old link's close is no leave: the name is held by the new one.
    expect(events).toHaveLength(3);
  });

  it('refuses another process while the holder answers a ping (4006)', async () => {
    const { reg, directory, rejected, events } = registry();
    connect(reg, '10.0.0.1:1', 'i-1');
    const second = connect(reg, '10.0.0.2:1', 'i-2');
    await settleUntil(() => rejected.length === 1, 'the newcomer refused');
    expect(rejected[0]).toMatchObject({ conn: second.relay, code: CloseCode.NAME_CONFLICT, metric: 'name_conflict' });
    expect(rejected[0]!.reason).toMatch(/^name lab-1 is held by a live node from 10\.0\.0\.1:1 since .*; give each node its own --name$/);
    expect((directory.local('lab-1') as NodeLink).address).toBe('10.0.0.1:1');
    expect(events).toEqual(['join 10.0.0.1:1']);
    await settleUntil(() => second.peerCloses.length === 1, 'the newcomer closed');
    expect(second.peerCloses[0]![0]).toBe(CloseCode.NAME_CONFLICT);
  });

  it('gives the name to another process when the holder does not answer (half-open)', async () => {
    const { reg, directory, rejected, events } = registry(50);
    const first = connect(reg, '10.0.0.1:1', 'i-1');
    first.relaySocket.cutSilently();
    const joined = once(reg, 'join', { signal: AbortSignal.timeout(5_000) });
    connect(reg, '10.0.0.2:1', 'i-2');
    // The probe waits min(2 s, heartbeatTimeout) = 50 ms for the pong that never comes.
    await joined;
    expect(events).toEqual(['join 10.0.0.1:1', 'leave 10.0.0.1:1 replaced', 'join 10.0.0.2:1']);
    expect((directory.local('lab-1') as NodeLink).address).toBe('10.0.0.2:1');
    expect(rejected).toEqual([]);
  });

  it('a holder going away does not hold the name', () => {
    const { reg, directory, events } = registry();
    connect(reg, '10.0.0.1:1', 'i-1');
    (directory.local('lab-1') as NodeLink).goingAway = true;
    connect(reg, '10.0.0.2:1', 'i-2');
    expect(events).toEqual(['join 10.0.0.1:1', 'leave 10.0.0.1:1 replaced', 'join 10.0.0.2:1']);
  });

  it('a node that disconnects leaves the directory, and its return counts as a reconnect', async () => {
    const { reg, directory, events, reconnected } = registry();
    const node = connect(reg, '10.0.0.1:1', 'i-1');
    node.peer.close(CloseCode.NORMAL, 'bye');
    await settleUntil(() => events.length === 2, 'the leave');
    expect(events).toEqual(['join 10.0.0.1:1', 'leave 10.0.0.1:1 closed']);
    expect([directory.size, reg.size]).toEqual([0, 0]);
    connect(reg, '10.0.0.1:3', 'i-9');
    expect(reconnected).toEqual(['lab-1']);
  });

  it('revokes a node at once (4003), whatever its socket does', async () => {
    const { reg, directory, events } = registry();
    const node = connect(reg, '10.0.0.1:1', 'i-1');
    reg.revoke(directory.local('lab-1') as NodeLink, 'token removed');
    expect(events).toEqual(['join 10.0.0.1:1', 'leave 10.0.0.1:1 revoked']);
    expect([directory.size, reg.size]).toEqual([0, 0]);
    await settleUntil(() => node.peerCloses.length === 1, 'the close at the node');
    expect(node.peerCloses[0]).toEqual([CloseCode.UNAUTHORIZED, 'token removed']);
    expect(events).toHaveLength(2);
  });

  it('yields the name to an older node of another relay (4006), counted as a name conflict', async () => {
    const { reg, directory, events, rejectedMetric } = registry();
    const node = connect(reg, '10.0.0.1:1', 'i-1');
    reg.yieldName(directory.local('lab-1') as NodeLink, 'name lab-1 is held on relay-2');
    expect(events).toEqual(['join 10.0.0.1:1', 'leave 10.0.0.1:1 conflict']);
    expect(rejectedMetric).toEqual(['name_conflict']);
    await settleUntil(() => node.peerCloses.length === 1, 'the close at the node');
    expect(node.peerCloses[0]).toEqual([CloseCode.NAME_CONFLICT, 'name lab-1 is held on relay-2']);
  });

  it('welcomes a node of a cluster with the relays it may move to', async () => {
    const { reg } = registry();
    reg.clusterWelcome = () => ({ url: 'wss://relay-1.example:443', relays: ['wss://relay-2.example:443'] });
    const node = connect(reg, '10.0.0.1:1', 'i-1');
    await settleUntil(() => node.of(Kind.WELCOME).length === 1, 'the welcome');
    expect(node.of(Kind.WELCOME)[0]!.welcome).toMatchObject({ url: 'wss://relay-1.example:443', relays: ['wss://relay-2.example:443'] });
  });
});
