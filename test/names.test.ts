import { afterEach, describe, expect, it } from 'vitest';
import { killAll, Proc, BIN, runCall, startNode, startRelay } from './helpers/processes.js';
import { RawPeer } from './helpers/raw.js';

/** One name, one live node (issue 11, item 5). */

const FAST_RETRY = ['--reconnect-base', '100ms', '--reconnect-cap', '500ms'];

async function rawNode(addr: string, name: string, instance: string): Promise<RawPeer> {
  const peer = new RawPeer(`ws://${addr}/`);
  await peer.open();
  peer.send([4, { version: 2, role: 'node', name, instance, services: { Twin: ['Who'] } }]);
  await peer.until(() => peer.received.some((m) => Array.isArray(m) && m[0] === 5) || peer.closed !== undefined, 5_000, 'welcome or close');
  return peer;
}

describe('one name, one live node', () => {
  afterEach(killAll);

  it("refuses a second process under a live node's name, without ever taking turns, and lets it in once the holder is gone", async () => {
    const relay = await startRelay();
    const first = await startNode(relay.addr, ['--name', 'office-1']);
    const second = new Proc(BIN.node, ['--relay', relay.addr, '--name', 'office-1', '--log-level', 'debug', ...FAST_RETRY]);
    const refused = await second.waitForMsg('relay refused our name; retrying at the longest backoff', 10_000);
    expect(refused.reason).toMatch(
      /^name office-1 is held by a live node from 127\.0\.0\.1:\d+ since \d{4}-\d\d-\d\dT[\d:.]+Z; give each node its own --name$/,
    );
    // It keeps trying, and is refused each time: the relay never lets the two take turns.
    const conflicts = () => relay.proc.logs.filter((l) => l.msg === 'refused hello' && String(l.reason).startsWith('name office-1 is held')).length;
    await relay.proc.waitForLog(() => conflicts() >= 3, 15_000, 'three refused claims');
    expect(relay.proc.logs.filter((l) => l.msg === 'node name reconnected; replacing the previous connection')).toHaveLength(0);
    expect(first.logs.filter((l) => l.msg === 'disconnected from relay')).toHaveLength(0);
    expect((await runCall(relay.addr, ['--node', 'office-1', 'Arith.Multiply', '6', '7'])).stdout).toBe('42\n');
    const metrics = await (await fetch(`http://${relay.addr}/metrics`)).text();
    expect(metrics).toMatch(/tunnel_relay_rejected_connections_total\{reason="name_conflict"\} [3-9]/);

    // The holder dies: the claimer takes the name on its next attempt, without a replacement.
    first.kill('SIGKILL');
    await second.waitForMsg('connected to relay', 15_000);
    expect((await runCall(relay.addr, ['--node', 'office-1', 'Arith.Multiply', '2', '3'])).stdout).toBe('6\n');
    expect(relay.proc.logs.filter((l) => l.msg === 'node name reconnected; replacing the previous connection')).toHaveLength(0);
  });

  it('lets the same process (same instance id) replace its old connection at once', async () => {
    const relay = await startRelay();
    const old = await rawNode(relay.addr, 'twin', 'instance-a');
    expect(old.closed).toBeUndefined();
    const t0 = Date.now();
    const again = await rawNode(relay.addr, 'twin', 'instance-a');
    expect(again.closed).toBeUndefined();
    expect(Date.now() - t0).toBeLessThan(1_000);
    expect((await old.waitClosed()).code).toBe(4000);
    const line = await relay.proc.waitForMsg('node name reconnected; replacing the previous connection');
    expect(line.sameProcess).toBe(true);
  });

  it('refuses another instance while the holder answers pings, and replaces a holder that does not', async () => {
    const relay = await startRelay();
    const holder = await rawNode(relay.addr, 'twin', 'instance-a');
    const other = await rawNode(relay.addr, 'twin', 'instance-b');
    expect(await other.waitClosed()).toMatchObject({ code: 4006, reason: expect.stringMatching(/^name twin is held by a live node from/) });
    // The holder stops reading (no pong): a half-open connection.
    (holder.ws as unknown as { _socket: { pause(): void } })._socket.pause();
    const third = await rawNode(relay.addr, 'twin', 'instance-c');
    expect(third.closed).toBeUndefined();
    await relay.proc.waitForMsg('node name held by a connection that does not answer; replacing it');
    holder.close();
  });

  it('exits 2 at start on an invalid --name instead of retrying forever', async () => {
    const p = new Proc(BIN.node, ['--relay', '127.0.0.1:1', '--name=bad!name']);
    const { code } = await p.exited;
    expect(code).toBe(2);
    expect(p.stderr).toMatch(/node name "bad!name" must be 1-128 characters/);
  });
});
