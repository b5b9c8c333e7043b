import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type Client } from '../src/index.js';
import type { PresenceEvent } from '../src/wire/presence.js';
import { clusterArgs, clusterKeyFile, freePort, NatsServer, stopAllNats } from './helpers/nats.js';
import { killAll, Proc, BIN, START_TIMEOUT, startNode, startRelay, type RunningRelay } from './helpers/processes.js';
import { waitUntil } from './helpers/wait.js';

/** Several relays over a real nats-server (issue 13). Every wait is bounded; nothing sleeps a fixed time. */

const SLOW = 'test/fixtures/slow-services.js';
const FLEET = 'test/fixtures/fleet-services.js';

async function clusterRelay(nats: string | string[], name: string, extra: string[] = [], port = 0): Promise<RunningRelay> {
  const relay = await startRelay([...clusterArgs(nats), '--relay-name', name, ...extra], port);
  await relay.proc.waitForMsg('connected to the cluster', 10_000);
  return relay;
}

/** Waits until `relay` has heard from every relay named. */
async function hears(relay: RunningRelay, ...names: string[]): Promise<void> {
  for (const name of names) {
    await relay.proc.waitForLog((l) => l.msg === 'relay joined the cluster' && l.relay === name, 10_000, `relay ${name} joined`);
  }
}

/** Calls until the call stops failing with one of `codes` (the cluster converging), at most `timeout` ms. */
async function eventually<T>(what: () => Promise<T>, timeout = 10_000, codes = ['NO_SERVICE', 'NO_NODE']): Promise<T> {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      return await what();
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (!codes.includes(code ?? '') || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

describe('relays in a cluster over NATS', () => {
  let nats: NatsServer;
  let eu: RunningRelay;
  let us: RunningRelay;
  let caller: Client;

  beforeAll(async () => {
    nats = await NatsServer.start();
    [eu, us] = await Promise.all([clusterRelay(nats.url, 'eu-1'), clusterRelay(nats.url, 'us-1')]);
    await Promise.all([hears(eu, 'us-1'), hears(us, 'eu-1')]);
    caller = await connect(eu.addr);
  });
  afterAll(async () => {
    await caller?.close();
    await killAll();
    await stopAllNats();
  });

  it('shows a node that joins another relay within 1 s, with the relays that hold it', async () => {
    const events: PresenceEvent[] = [];
    const watch = await caller.watchPresence((e) => events.push(e));
    const node = new Proc(BIN.node, ['--relay', us.addr, '--name', 'office-1', '--log-level', 'debug']);
    const welcomed = await node.waitForMsg('connected to relay', START_TIMEOUT);
    const t0 = welcomed.time as number;
    await waitUntil(() => events.some((e) => e.event === 'join' && e.node.name === 'office-1'), 10_000, 'the join of office-1 at eu-1');
    const join = events.find((e) => e.event === 'join' && e.node.name === 'office-1');
    expect(join).toBeDefined();
    expect(join!.node.relays).toEqual(['us-1']);
    expect(Date.parse(join!.at) - t0).toBeLessThan(1_000);
    await watch.stop();
    const list = await caller.nodes();
    expect(list.map((n) => [n.name, n.relays])).toEqual([['office-1', ['us-1']]]);
  });

  it("calls a node on another relay: plain, by name, with Login on the caller's connection, and broadcast", async () => {
    expect(await eventually(() => caller.call('Arith.Multiply', 6, 7))).toBe(42);
    expect(await caller.call('Arith.Multiply', 2, 3, { node: 'office-1' })).toBe(6);
    await expect(caller.call('Hello.Hello', 'bob')).rejects.toMatchObject({ code: 'NOT_LOGGED_IN' });
    expect(await caller.call('Hello.Login', 'alice:secret')).toBe('alice');
    expect(await caller.call('Hello.Hello', 'bob')).toMatch(/^Hello bob, from 127\.0\.0\.1:\d+$/);
    expect(await caller.call('Hello.WhoAmI')).toBe('alice');
    // A local node on eu-1 too: a broadcast from eu-1 reaches both, one row each.
    await startNode(eu.addr, ['--name', 'office-2']);
    const rows = await eventually(async () => {
      const r = await caller.broadcast('Arith.Multiply', [3, 4]);
      if (r.length < 2) throw Object.assign(new Error('not yet'), { code: 'NO_NODE' });
      return r;
    });
    expect(rows.map((r) => [r.node, r.ok && r.result])).toEqual([
      ['office-1', 12],
      ['office-2', 12],
    ]);
    // The CLI, from the other relay: --list has a RELAYS column.
    const list = await connect(us.addr);
    expect((await list.nodes()).map((n) => [n.name, n.relays])).toEqual([
      ['office-1', ['us-1']],
      ['office-2', ['eu-1']],
    ]);
    await list.close();
  });

  it('passes 16 MiB each way across relays, byte for byte', async () => {
    const big = Buffer.alloc(16 * 1024 * 1024 - 256);
    for (let i = 0; i < big.length; i += 4096) big[i] = i & 0xff;
    expect(await caller.call('KV.Set', 'big', big, { node: 'office-1', timeout: 60_000 })).toBe(true);
    const back = (await caller.call('KV.Get', 'big', { node: 'office-1', timeout: 60_000 })) as Buffer;
    expect(back.length).toBe(big.length);
    expect(back.equals(big)).toBe(true);
  });

  it("carries deadlines, cancels and a caller's disconnect to the handler on another relay", async () => {
    const slow = await startNode(us.addr, ['--name', 'slow-1', '--services', SLOW]);
    const c = await connect(eu.addr);
    await expect(eventually(() => c.call('Slow.Sleep', 60_000, { timeout: 500 }))).rejects.toMatchObject({ code: 'TIMEOUT' });
    await slow.waitForLog(
      (l) => l.msg === 'test handler aborted' && (l.reason === 'CANCELLED' || l.reason === 'TIMEOUT'),
      10_000,
      'the handler aborted at the deadline',
    );
    const from = slow.logs.length;
    const controller = new AbortController();
    const cancelled = c.call('Slow.Sleep', 60_000, { timeout: 30_000, signal: controller.signal });
    await slow.waitForMsg('test handler started', 10_000, from);
    controller.abort();
    await expect(cancelled).rejects.toMatchObject({ code: 'CANCELLED' });
    await slow.waitForLog((l) => l.msg === 'test handler aborted', 10_000, 'the handler aborted on cancel', from);
    // The caller goes away mid-call: its session is closed on the node, which aborts the handler.
    const from2 = slow.logs.length;
    void c.call('Slow.Sleep', 60_000, { timeout: 30_000 }).catch(() => undefined);
    await slow.waitForMsg('test handler started', 10_000, from2);
    await c.close();
    await slow.waitForLog((l) => l.msg === 'session closed', 10_000, 'session closed on the node', from2);
    await slow.waitForLog((l) => l.msg === 'test handler aborted', 10_000, 'the handler aborted on disconnect', from2);
  });

  it("refuses another process claiming a live node's name on another relay", async () => {
    const claimer = new Proc(BIN.node, ['--relay', eu.addr, '--name', 'office-1', '--log-level', 'debug', '--reconnect-cap', '1s']);
    const refused = await claimer.waitForMsg('relay refused our name; retrying at the longest backoff', 10_000);
    expect(refused.reason).toMatch(/^name office-1 is held by a live node from 127\.0\.0\.1:\d+ on relay us-1 since /);
    claimer.kill('SIGKILL');
    expect(await caller.call('Arith.Multiply', 1, 5, { node: 'office-1' })).toBe(5);
  });

  it('forgets a relay that dies (SIGKILL) within 4 s: its nodes leave, calls in flight through it fail NODE_LOST', async () => {
    const doomed = await clusterRelay(nats.url, 'ap-1');
    await hears(eu, 'ap-1');
    const far = await startNode(doomed.addr, ['--name', 'far-1', '--services', FLEET]);
    const c = await connect(eu.addr);
    expect(await eventually(() => c.call('Fleet.Where', { node: 'far-1' }))).toBe('far-1');
    const inFlight = c.call('Fleet.Work', 60_000, { node: 'far-1', timeout: 60_000 });
    inFlight.catch(() => undefined);
    // In flight means running on the node: killed before it arrived, the call was never delivered (NO_NODE).
    await far.waitForMsg('fleet work started', 10_000);
    const started = Date.now();
    doomed.proc.kill('SIGKILL');
    await expect(inFlight).rejects.toMatchObject({ code: 'NODE_LOST' });
    // By eu-1's own clock (its log line), which fails the calls as it forgets ap-1: what this process
    // takes to hear of it is not the relay's doing.
    const left = await eu.proc.waitForLog((l) => l.msg === 'relay left the cluster' && l.relay === 'ap-1', 10_000, 'ap-1 left');
    expect((left.time as number) - started).toBeLessThan(4_500);
    expect((await c.nodes()).map((n) => n.name)).not.toContain('far-1');
    await c.close();
  });

  it('never brings back the nodes of a relay that restarted under the same name', async () => {
    const port = await freePort();
    const first = await clusterRelay(nats.url, 'sa-1', [], port);
    await hears(eu, 'sa-1');
    const node = await startNode(first.addr, ['--name', 'old-1']);
    await eventually(() => caller.call('Arith.Multiply', 1, 1, { node: 'old-1' }));
    node.kill('SIGKILL');
    first.proc.kill('SIGKILL');
    await first.proc.exited;
    const second = await clusterRelay(nats.url, 'sa-1', [], port);
    await eu.proc.waitForLog((l) => l.msg === 'relay left the cluster' && l.relay === 'sa-1', 10_000, 'the old sa-1 gone');
    await second.proc.waitForLog((l) => l.msg === 'relay joined the cluster' && l.relay === 'eu-1', 10_000, 'the new sa-1 hears eu-1');
    await expect(caller.call('Arith.Multiply', 1, 1, { node: 'old-1' })).rejects.toMatchObject({ code: 'NO_NODE', data: { reason: 'node-not-found' } });
    expect((await caller.nodes()).map((n) => n.name)).not.toContain('old-1');
  });
});

describe('a dual-homed node in a cluster', () => {
  afterAll(async () => {
    await killAll();
    await stopAllNats();
  });

  it('is one node with two routes, keeps its Logins, and survives the SIGKILL of one of its relays: new calls succeed at once', async () => {
    const nats = await NatsServer.start();
    const [a, b, c] = await Promise.all([clusterRelay(nats.url, 'a-1'), clusterRelay(nats.url, 'b-1'), clusterRelay(nats.url, 'c-1')]);
    await Promise.all([hears(c, 'a-1', 'b-1'), hears(a, 'b-1', 'c-1'), hears(b, 'a-1', 'c-1')]);
    const node = await startNode(`${a.addr},${b.addr}`, ['--name', 'twin-1', '--services', 'test/fixtures/dual-services.js']);
    await node.waitForLog((l) => l.msg === 'connected to relay' && String(l.relay).includes(String(b.port)), 10_000, 'both tunnels');
    const caller = await connect(c.addr);
    const seen = await eventually(async () => {
      const [n] = (await caller.nodes()).filter((x) => x.name === 'twin-1');
      if (!n || n.relays.length < 2) throw Object.assign(new Error('not yet'), { code: 'NO_NODE' });
      return n;
    });
    expect(seen.relays).toEqual(['a-1', 'b-1']);
    expect(await caller.call('Hello.Login', 'alice:secret')).toBe('alice');
    // Calls go by either relay; the Login lives in the node process, valid whichever tunnel a call takes.
    for (let i = 0; i < 6; i++) expect(await caller.call('Hello.WhoAmI')).toBe('alice');
    const settled: Array<string | undefined> = [undefined, undefined, undefined, undefined];
    settled.forEach((_, i) => {
      void caller.call('Slow.Sleep', 60_000, { timeout: 60_000 }).then(
        () => (settled[i] = 'ok'),
        (e: { code: string }) => (settled[i] = e.code),
      );
    });
    await node.waitForLog(() => node.logs.filter((l) => l.msg === 'test handler started').length >= 4, 10_000, 'four calls running');

    const t0 = Date.now();
    a.proc.kill('SIGKILL');
    // A call sent in the instant NATS still holds the dead relay's subscription is in flight on the dead
    // tunnel, like the others there; once the node and NATS have seen the socket close, calls go by b-1.
    await node.waitForLog((l) => l.msg === 'disconnected from relay' && String(l.relay).includes(String(a.port)), 10_000, 'the node lost a-1');
    const t1 = Date.now();
    expect(await caller.call('Hello.WhoAmI', { timeout: 5_000 })).toBe('alice');
    const failover = { sinceKill: Date.now() - t0, sinceNodeSawIt: Date.now() - t1 };
    // At once: not after c-1 forgets a-1 at its 3 s heartbeat expiry, with room for a slow machine.
    expect(failover.sinceNodeSawIt, JSON.stringify(failover)).toBeLessThan(2_000);
    for (let i = 0; i < 20; i++) expect(await caller.call('Hello.WhoAmI', { timeout: 5_000 })).toBe('alice');
    // Only the calls in flight on the dead relay's tunnel fail; the others are still running.
    await c.proc.waitForLog((l) => l.msg === 'relay left the cluster' && l.relay === 'a-1', 10_000, 'a-1 gone');
    await waitUntil(() => settled.some((x) => x !== undefined), 10_000, 'the calls on a-1 to fail');
    const lost = settled.map((x) => x ?? 'running');
    expect(lost.filter((x) => x === 'NODE_LOST').length).toBeGreaterThan(0);
    expect(lost.filter((x) => x === 'running').length).toBeGreaterThan(0);
    expect(lost.every((x) => x === 'NODE_LOST' || x === 'running')).toBe(true);
    const [after] = (await caller.nodes()).filter((x) => x.name === 'twin-1');
    expect(after!.relays).toEqual(['b-1']);
    await caller.close();
  });
});

describe('a cluster whose NATS account covers only its prefix', () => {
  afterAll(async () => {
    await killAll();
    await stopAllNats();
  });

  it("works with docs/CLUSTER.md's account (user, password, publish and subscribe on the prefix only), and refuses a wrong password", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nats-auth-'));
    const conf = join(dir, 'nats.conf');
    // The account of docs/CLUSTER.md: the relays may publish and subscribe under acme.tunnel and nowhere else.
    writeFileSync(
      conf,
      [
        'authorization {',
        '  users = [',
        '    { user: tunnel-relay, password: "correct horse battery staple",',
        '      permissions: { publish: ["acme.tunnel.>"], subscribe: ["acme.tunnel.>"] } }',
        '  ]',
        '}',
      ].join('\n'),
    );
    const nats = await NatsServer.start({ args: ['-c', conf] });
    const auth = ['--cluster-name', 'acme.tunnel', '--cluster-user', 'tunnel-relay', '--cluster-key', clusterKeyFile()];
    const env = { TUNNEL_CLUSTER_PASSWORD: 'correct horse battery staple' };
    const a = await startRelay(['--cluster', nats.url, '--relay-name', 'a-1', ...auth], 0, env);
    const b = await startRelay(['--cluster', nats.url, '--relay-name', 'b-1', ...auth], 0, env);
    await Promise.all([a.proc.waitForMsg('connected to the cluster'), b.proc.waitForMsg('connected to the cluster')]);
    await Promise.all([hears(a, 'b-1'), hears(b, 'a-1')]);
    await startNode(b.addr, ['--name', 'far-1']);
    const c = await connect(a.addr);
    // A probe (request/reply) needs replies under the prefix too.
    expect(await eventually(() => c.call('Arith.Multiply', 4, 5, { node: 'far-1' }))).toBe(20);
    const claimer = new Proc(BIN.node, ['--relay', a.addr, '--name', 'far-1', '--log-level', 'debug']);
    await claimer.waitForMsg('relay refused our name; retrying at the longest backoff', 10_000);
    claimer.kill('SIGKILL');
    await c.close();
    expect(nats.stderr).not.toMatch(/Permissions Violation/);
    expect(a.proc.stderr).not.toContain('correct horse');
    // A relay with a wrong password serves its own nodes, degraded, and says why.
    const wrong = await startRelay(['--cluster', nats.url, '--relay-name', 'w-1', ...auth], 0, { TUNNEL_CLUSTER_PASSWORD: 'wrong horse battery staple' });
    await wrong.proc.waitForLog((l) => l.level === 50 || /authorization|auth/i.test(String(l.err ?? '')), 10_000, 'an authorization error');
    await startNode(wrong.addr, ['--name', 'alone-1']);
    const w = await connect(wrong.addr);
    expect(await w.call('Arith.Multiply', 2, 2)).toBe(4);
    await w.close();
  });
});

describe('NATS trouble', () => {
  afterEach(async () => {
    await killAll();
    await stopAllNats();
  });

  it('keeps local calls going while NATS is down, says so in /readyz and /metrics, and resumes cross-relay calls when it is back', async () => {
    const port = await freePort();
    let nats = await NatsServer.start({ port });
    const [a, b] = await Promise.all([clusterRelay(nats.url, 'a-1', ['--admin-listen', '127.0.0.1:0']), clusterRelay(nats.url, 'b-1')]);
    await Promise.all([hears(a, 'b-1'), hears(b, 'a-1')]);
    const admin = `127.0.0.1:${(await a.proc.waitForMsg('admin listening')).port as number}`;
    await startNode(a.addr, ['--name', 'near-1']);
    await startNode(b.addr, ['--name', 'far-1']);
    const c = await connect(a.addr);
    expect(await eventually(() => c.call('Arith.Multiply', 2, 2, { node: 'far-1' }))).toBe(4);

    await nats.stop();
    await a.proc.waitForMsg('lost the cluster (NATS); serving local nodes and callers only until it is back', 10_000);
    let local = 0;
    for (let i = 0; i < 50; i++) local += (await c.call('Arith.Multiply', i, 1, { node: 'near-1' })) === i ? 1 : 0;
    expect(local).toBe(50);
    const ready = (await (await fetch(`http://${admin}/readyz`)).json()) as { ready: boolean; cluster: { state: string } };
    expect(ready).toMatchObject({ ready: true, cluster: { state: 'degraded' } });
    expect(await (await fetch(`http://${admin}/metrics`)).text()).toMatch(/^tunnel_relay_cluster_connected 0$/m);

    const from = a.proc.logs.length;
    nats = await NatsServer.start({ port });
    await a.proc.waitForMsg('connected to the cluster', 15_000, from);
    expect(await eventually(() => c.call('Arith.Multiply', 3, 3, { node: 'far-1' }), 10_000)).toBe(9);
    expect(await (await fetch(`http://${admin}/metrics`)).text()).toMatch(/^tunnel_relay_cluster_connected 1$/m);
    await c.close();
  });

  it('survives losing one server of a three-server NATS cluster', async () => {
    const ports = await Promise.all([freePort(), freePort(), freePort()]);
    const routes = await Promise.all([freePort(), freePort(), freePort()]);
    const servers = await Promise.all(
      [0, 1, 2].map((i) =>
        NatsServer.start({ port: ports[i]!, cluster: { name: 'tunnel-test', routePort: routes[i]!, routes: routes.filter((_, j) => j !== i) } }),
      ),
    );
    await Promise.all(servers.map((s) => s.waitFor(/route connection|Route connection created/i, 10_000)));
    // a-1 knows servers 0 and 1; b-1 knows 2 and 1: they meet through the routes.
    const [a, b] = await Promise.all([clusterRelay([servers[0]!.url, servers[1]!.url], 'a-1'), clusterRelay([servers[2]!.url, servers[1]!.url], 'b-1')]);
    await Promise.all([hears(a, 'b-1'), hears(b, 'a-1')]);
    await startNode(b.addr, ['--name', 'far-1']);
    const c = await connect(a.addr);
    expect(await eventually(() => c.call('Arith.Multiply', 2, 5, { node: 'far-1' }))).toBe(10);
    // Stop the server a-1 uses now, whichever it is: it moves to the other one it knows.
    const usedByA = servers.find((s) => a.proc.logs.some((l) => l.msg === 'connected to the cluster' && String(l.server).endsWith(`:${s.port}`)))!;
    const from = a.proc.logs.length;
    await usedByA.stop();
    await a.proc.waitForMsg('connected to the cluster', 15_000, from);
    expect(await eventually(() => c.call('Arith.Multiply', 3, 5, { node: 'far-1' }), 10_000)).toBe(15);
    expect((await c.nodes()).map((n) => n.name)).toContain('far-1');
    await c.close();
  });
});
