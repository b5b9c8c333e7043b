import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as natsConnect, type Msg, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Client } from '../src/index.js';
import { encode } from '../src/wire/codec.js';
import { clusterArgs, clusterKeyFile, NATS_PASSWORD, NATS_USER, NatsServer, stopAllNats } from './helpers/nats.js';
import { BIN, killAll, Proc, startNode, startRelay, type RunningRelay } from './helpers/processes.js';
import { waitUntil } from './helpers/wait.js';

/**
 * NATS is transport, not trust (issue 18): a NATS user who may publish and subscribe on the cluster's
 * prefix but holds no cluster key can neither read cross-relay calls nor change what relays believe.
 */

const INTRUDER = { user: 'intruder', pass: 'intruder-password' };

async function hears(relay: RunningRelay, name: string, from = 0): Promise<void> {
  await relay.proc.waitForLog((l) => l.msg === 'relay joined the cluster' && l.relay === name, 10_000, `relay ${name} joined`, from);
}

async function metric(admin: string, pattern: RegExp): Promise<number> {
  const text = await (await fetch(`http://${admin}/metrics`)).text();
  const m = pattern.exec(text);
  return m ? Number(m[1]) : 0;
}

function refused(relay: RunningRelay): number {
  return relay.proc.logs.filter((l) => l.msg === 'refused a cluster message').length;
}

describe('a cluster over a NATS that others may publish on', () => {
  let nats: NatsServer;
  let a: RunningRelay;
  let b: RunningRelay;
  let adminA: string;
  let adminB: string;
  let intruder: NatsConnection;
  const seen: Msg[] = [];
  let caller: Client;
  let office: Proc;

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nats-trust-'));
    const conf = join(dir, 'nats.conf');
    // The relays' account, and another user with the same rights on the prefix: any NATS user who
    // was given too much, or a compromised service sharing the NATS.
    writeFileSync(
      conf,
      [
        'authorization {',
        '  users = [',
        `    { user: ${NATS_USER}, password: "${NATS_PASSWORD}", permissions: { publish: ["tunnel.>"], subscribe: ["tunnel.>"] } }`,
        `    { user: ${INTRUDER.user}, password: "${INTRUDER.pass}", permissions: { publish: ["tunnel.>"], subscribe: ["tunnel.>"] } }`,
        '  ]',
        '}',
      ].join('\n'),
    );
    nats = await NatsServer.start({ args: ['-c', conf] });
    intruder = await natsConnect({ servers: nats.url, user: INTRUDER.user, pass: INTRUDER.pass });
    intruder.subscribe('tunnel.>', { callback: (_err, msg) => void seen.push(msg) });
    await intruder.flush();
    [a, b] = await Promise.all([
      startRelay([...clusterArgs(nats.url), '--relay-name', 'a-1', '--admin-listen', '127.0.0.1:0']),
      startRelay([...clusterArgs(nats.url), '--relay-name', 'b-1', '--admin-listen', '127.0.0.1:0']),
    ]);
    adminA = `127.0.0.1:${(await a.proc.waitForMsg('admin listening')).port as number}`;
    adminB = `127.0.0.1:${(await b.proc.waitForMsg('admin listening')).port as number}`;
    await Promise.all([hears(a, 'b-1'), hears(b, 'a-1')]);
    office = await startNode(b.addr, ['--name', 'office-1', '--services', 'test/fixtures/trust-services.js']);
    caller = await connect(a.addr);
    await waitUntil(async () => (await caller.nodes()).some((n) => n.name === 'office-1'), 10_000, 'office-1 seen from a-1');
    expect(await caller.call('Hello.Login', 'alice:secret')).toBe('alice');
    expect(await caller.call('Arith.Multiply', 6, 7)).toBe(42);
    for (let i = 0; i < 5; i++) await caller.call('Count.Hit', `tag-${i}`);
  });

  afterAll(async () => {
    await caller?.close();
    await intruder?.close();
    await killAll();
    await stopAllNats();
  });

  it('shows the intruder nothing in clear: no params, no names, no relay ids, only sealed bytes', async () => {
    await waitUntil(() => seen.length > 10, 10_000, 'cluster traffic');
    const secrets = ['alice:secret', 'office-1', 'Hello.Login', 'Arith.Multiply', 'a-1', 'b-1', 'heartbeat'].map((s) => Buffer.from(s));
    for (const msg of seen) {
      const data = Buffer.from(msg.data);
      for (const s of secrets) expect(data.includes(s), `${msg.subject} carries ${s.toString()} in clear`).toBe(false);
      if (data.length > 0) expect(data[0]).toBe(1); // the seal's version byte, never a MessagePack array
      // Subjects: the presence subject, relay inboxes by an HMAC token, request inboxes; no relay id.
      expect(msg.subject).toMatch(/^tunnel\.(presence|relay\.[0-9a-f]{24}\.(open|m|s|q|r\.[0-9a-f]{24}\.\d+)|_INBOX\..+)$/);
    }
    expect(seen.some((m) => m.subject.includes('.open'))).toBe(true);
  });

  it('ignores forged presence: a relay claiming office-1, and a fake restart of b-1; nothing closes the real node', async () => {
    const before = refused(a);
    const now = Date.now();
    const node = {
      name: 'office-1',
      instance: 'forged-instance',
      services: { Hello: ['Login', 'WhoAmI'], Arith: ['Multiply'] },
      labels: {},
      address: '10.0.0.66:1',
      connectedAt: now - 86_400_000,
      draining: false,
    };
    // The shapes of docs/CLUSTER.md, as an intruder who read them would write them: in clear, and
    // sealed with a key of its own.
    const forged = [
      encode([20, { name: 'evil-1', id: 'deadbeefdeadbeef', started: now - 86_400_000, seq: 1 }, 'join', node]),
      encode([20, { name: 'b-1', id: 'feedfacefeedface', started: now + 1_000, seq: 1 }, 'heartbeat', { count: 0, digest: 'x' }]),
      Buffer.concat([Buffer.from([1]), Buffer.alloc(120, 7)]),
    ];
    for (let i = 0; i < 100; i++) for (const data of forged) intruder.publish('tunnel.presence', data);
    await intruder.flush();
    // Every forged message was handled (and refused) once these counts are reached.
    await waitUntil(
      async () => (await metric(adminA, /^tunnel_relay_cluster_rejected_messages_total\{reason="forged"\} (\d+)/m)) >= 100,
      10_000,
      'a-1 counts forged',
    );
    await waitUntil(
      async () => (await metric(adminA, /^tunnel_relay_cluster_rejected_messages_total\{reason="malformed"\} (\d+)/m)) >= 200,
      10_000,
      'a-1 counts malformed',
    );
    await waitUntil(
      async () => (await metric(adminB, /^tunnel_relay_cluster_rejected_messages_total\{reason="malformed"\} (\d+)/m)) >= 200,
      10_000,
      'b-1 counts malformed',
    );
    // One log line per burst and reason, not one per message.
    expect(refused(a) - before).toBeLessThanOrEqual(2);
    // Nothing changed: office-1 is on b-1, reachable, still alice's Login.
    const nodes = await caller.nodes();
    expect(nodes.map((n) => [n.name, n.relays])).toEqual([['office-1', ['b-1']]]);
    expect(await caller.call('Hello.WhoAmI')).toBe('alice');
    expect(office.child.exitCode).toBeNull();
    expect(office.logs.some((l) => l.msg === 'relay refused our name; retrying at the longest backoff')).toBe(false);
    expect(a.proc.logs.some((l) => l.msg === 'relay left the cluster')).toBe(false);
    expect(a.proc.logs.some((l) => l.msg === 'relay joined the cluster' && l.relay === 'evil-1')).toBe(false);
  });

  it('refuses a sealed message sent again (replay), and a call replayed is not run twice', async () => {
    const opens = seen.filter((m) => m.subject.endsWith('.open'));
    // Any presence message, even one sent before the other relay listened (older than its first one).
    const presence = seen.filter((m) => m.subject === 'tunnel.presence');
    expect(opens.length).toBeGreaterThan(0);
    const runsBefore = office.logs.filter((l) => l.msg === 'counted').length;
    expect(runsBefore).toBe(5);
    const replayedBefore =
      (await metric(adminA, /^tunnel_relay_cluster_rejected_messages_total\{reason="replayed"\} (\d+)/m)) +
      (await metric(adminB, /^tunnel_relay_cluster_rejected_messages_total\{reason="replayed"\} (\d+)/m));
    for (const m of [...opens, ...presence.slice(0, 5)]) intruder.publish(m.subject, m.data);
    await intruder.flush();
    await waitUntil(
      async () =>
        (await metric(adminA, /^tunnel_relay_cluster_rejected_messages_total\{reason="replayed"\} (\d+)/m)) +
          (await metric(adminB, /^tunnel_relay_cluster_rejected_messages_total\{reason="replayed"\} (\d+)/m)) >=
        replayedBefore + opens.length + 5,
      10_000,
      'every replay refused',
    );
    expect(office.logs.filter((l) => l.msg === 'counted').length).toBe(runsBefore);
    // And the cluster still works.
    expect(await caller.call('Arith.Multiply', 3, 3)).toBe(9);
  });

  it('does not hear a relay with another cluster key', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'other-key-'));
    const other = join(dir, 'other.key');
    writeFileSync(other, 'f'.repeat(64), { mode: 0o600 });
    const args = clusterArgs(nats.url);
    args[args.indexOf(clusterKeyFile())] = other;
    const from = a.proc.logs.length;
    const forged = () => metric(adminA, /^tunnel_relay_cluster_rejected_messages_total\{reason="forged"\} (\d+)/m);
    const before = await forged();
    const c = await startRelay([...args, '--relay-name', 'c-1']);
    await c.proc.waitForMsg('connected to the cluster', 10_000);
    await c.proc.waitForLog((l) => l.msg === 'refused a cluster message' && l.reason === 'forged', 10_000, 'c-1 refuses the others');
    // c-1's heartbeats: a-1 refuses each (its log line for this reason may be in its quiet interval).
    await waitUntil(async () => (await forged()) >= before + 2, 10_000, 'a-1 refuses c-1');
    expect(a.proc.logs.slice(from).some((l) => l.msg === 'relay joined the cluster' && l.relay === 'c-1')).toBe(false);
    c.proc.kill('SIGKILL');
  });
});

describe('joining a cluster', () => {
  afterAll(async () => {
    await killAll();
    await stopAllNats();
  });

  async function refusal(args: string[]): Promise<string> {
    const p = new Proc(BIN.relay, ['--listen', '127.0.0.1:0', ...args]);
    const { code } = await p.exited;
    expect(code).toBe(2);
    return p.stderr;
  }

  it('refuses an open NATS and a missing cluster key, saying why and how; --cluster-insecure joins and warns', async () => {
    const open = await NatsServer.start({ open: true });
    expect(await refusal(['--cluster', open.url, '--cluster-key', clusterKeyFile()])).toMatch(
      /the cluster NATS is open: give the relays a NATS account \(--cluster-user and TUNNEL_CLUSTER_PASSWORD, --cluster-token or --cluster-creds\) or TLS/,
    );
    expect(await refusal(['--cluster', open.url, '--cluster-user', 'u', '--cluster-password', 'p'])).toMatch(
      /a cluster needs a cluster key \(--cluster-key FILE.*openssl rand -hex 32/,
    );
    expect(await refusal(['--cluster-key', clusterKeyFile()])).toMatch(/--cluster-key needs --cluster/);
    const lab = await startRelay(['--cluster', open.url, '--cluster-insecure', '--relay-name', 'lab-1']);
    await lab.proc.waitForLog((l) => l.msg === 'connected to the cluster' && l.secure === false, 10_000, 'connected in clear');
    expect(lab.proc.logs.some((l) => l.level === 40 && /neither encrypted nor authenticated/.test(String(l.msg)))).toBe(true);
  });
});
