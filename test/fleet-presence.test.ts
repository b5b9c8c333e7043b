import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Client } from '../src/client/client.js';
import type { NodeInfo, PresenceEvent } from '../src/wire/presence.js';
import { killAll, runCall, startNode, startRelay, type Proc, type RunningRelay } from './helpers/processes.js';
import { stopAllProxies, TcpProxy } from './helpers/tcp-proxy.js';

const FLEET = 'test/fixtures/fleet-services.js';
/** The relay drops a silent node after this long; it looks every third of it. */
const HEARTBEAT_MS = 2_000;
/** What a machine three times slower than ours still meets for "within the heartbeat timeout": timeout and check interval, thrice. */
const DROP_BOUND_MS = 3 * (HEARTBEAT_MS + HEARTBEAT_MS / 3);

describe('broadcast and presence', () => {
  let relay: RunningRelay;
  const nodes = new Map<string, Proc>();
  let c: Client;
  /** b3 reaches the relay through it: the proxy knows when the relay last had bytes from b3. */
  let b3Proxy: TcpProxy;

  beforeAll(async () => {
    relay = await startRelay(['--heartbeat-timeout', `${HEARTBEAT_MS}ms`]);
    b3Proxy = await TcpProxy.start(relay.port);
    const specs: Array<[string, string[], Record<string, string>]> = [
      ['b1', ['--label', 'region=eu'], {}],
      ['b2', ['--label', 'region=eu'], {}],
      // b3 sends no pings of its own: all it sends the relay (pongs, answers) counts as heard from it.
      ['b3', ['--label', 'region=us', '--heartbeat-timeout', '0'], {}],
      ['b4', ['--label', 'region=us'], {}],
      ['b5', ['--label', 'region=us'], { FLEET_FAIL: '1' }],
    ];
    await Promise.all(
      specs.map(async ([name, args, env]) => {
        const via = name === 'b3' ? `127.0.0.1:${b3Proxy.port}` : relay.addr;
        nodes.set(name, await startNode(via, ['--name', name, '--services', FLEET, ...args], env));
      }),
    );
    // One node with the built-in examples, so that --list has different services to show.
    nodes.set('ex1', await startNode(relay.addr, ['--name', 'ex1', '--label', 'role=examples']));
    c = await connect(relay.addr);
  });
  afterAll(async () => {
    await c.close();
    for (const p of nodes.values()) p.kill('SIGCONT');
    await killAll();
    await stopAllProxies();
  });

  it('broadcast to 5 nodes with one failing reports 4 ok and 1 error', async () => {
    const results = await c.broadcast('Fleet.Apply', [{ v: 2 }]);
    console.log('broadcast Fleet.Apply:', results.map((r) => `${r.node}:${r.ok ? 'ok' : r.error.code}:${r.ms}ms`).join(' '));
    expect(results.map((r) => r.node)).toEqual(['b1', 'b2', 'b3', 'b4', 'b5']);
    expect(results.filter((r) => r.ok)).toHaveLength(4);
    for (const r of results.filter((r) => r.ok)) expect(r).toMatchObject({ ok: true, result: { node: r.node, applied: { v: 2 } } });
    const bad = results.find((r) => !r.ok)!;
    expect(bad.node).toBe('b5');
    expect(bad.ok || bad.error.code).toBe('APP_ERROR');
    expect(bad.ok || bad.error.message).toContain('disk full');

    const cli = await runCall(relay.addr, ['--all', 'Fleet.Apply', '{"v":3}']);
    expect(cli.code).toBe(1);
    const lines = cli.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^NODE\s+STATUS\s+RESULT\s+MS$/);
    expect(lines.filter((l) => /^b[1-4]\s+ok\s+\{"node":"b[1-4]","applied":\{"v":3\}\}\s+\d+$/.test(l))).toHaveLength(4);
    expect(lines.find((l) => l.startsWith('b5'))).toMatch(/^b5\s+APP_ERROR\s+node b5 cannot store config .*disk full\s+\d+$/);
    expect(lines.at(-1)).toBe('4 ok, 1 failed');

    const json = await runCall(relay.addr, ['--all', '--json', '--where', 'region=eu', 'Fleet.Apply', '{"v":4}']);
    expect(json.code).toBe(0);
    const parsed = JSON.parse(json.stdout) as { results: Array<{ node: string; ok: boolean; result: unknown; ms: number }> };
    expect(parsed.results.map((r) => [r.node, r.ok, r.result])).toEqual([
      ['b1', true, { node: 'b1', applied: { v: 4 } }],
      ['b2', true, { node: 'b2', applied: { v: 4 } }],
    ]);
  });

  it('a broadcast past its deadline reports TIMEOUT for the nodes that did not answer', async () => {
    // A deadline the answers meet even on a slow machine, then one that calls of 5 s cannot meet.
    const results = await c.broadcast('Fleet.Work', [], { timeout: 10_000, where: { region: 'eu' } });
    expect(results.map((r) => [r.node, r.ok])).toEqual([
      ['b1', true],
      ['b2', true],
    ]);
    const slow = await c.broadcast('Fleet.Work', [5_000], { timeout: 500, where: { region: 'eu' } });
    expect(slow.map((r) => (r.ok ? 'ok' : r.error.code))).toEqual(['TIMEOUT', 'TIMEOUT']);
    const none = await c.broadcast('Fleet.Apply', [1], { where: { region: 'mars' } }).catch((e: unknown) => e);
    expect(none).toMatchObject({ code: 'NO_NODE' });
  });

  it('--list shows every node with the right services, labels and counters', async () => {
    const r = await runCall(relay.addr, ['--list', '--json']);
    expect(r.code).toBe(0);
    const list = (JSON.parse(r.stdout) as { nodes: NodeInfo[] }).nodes;
    expect(list.map((n) => n.name)).toEqual(['b1', 'b2', 'b3', 'b4', 'b5', 'ex1']);
    const b5 = list.find((n) => n.name === 'b5')!;
    expect(b5.services).toEqual({ Fleet: ['Apply', 'Login', 'Where', 'Whoami', 'Work'] });
    expect(b5.labels).toEqual({ region: 'us' });
    expect(b5.served).toBeGreaterThanOrEqual(2);
    expect(b5).toMatchObject({ inFlight: 0, draining: false, address: expect.stringMatching(/^127\.0\.0\.1:\d+$/) });
    expect(Date.parse(b5.connectedAt)).toBeLessThanOrEqual(Date.now());
    const ex1 = list.find((n) => n.name === 'ex1')!;
    expect(ex1.services).toEqual({
      Arith: ['Divide', 'Multiply'],
      Hello: ['Hello', 'Login', 'Logout', 'WhoAmI'],
      KV: ['Get', 'Keys', 'Set', 'Watch'],
      Server: ['Ping'],
    });

    const text = await runCall(relay.addr, ['--list']);
    expect(text.stdout).toMatch(/^NODE\s+STATE\s+LABELS\s+ADDRESS\s+RELAYS\s+CONNECTED SINCE\s+IN FLIGHT\s+SERVED\n/);
    expect(text.stdout).toMatch(/\nex1\s+online\s+role=examples\s+127\.0\.0\.1:\d+\s+\S+\s+\S+Z \(\d+[smhd] ago\)\s+0\s+0\n {4}Arith: Divide, Multiply\n/);
    expect(text.stdout).toContain('    Fleet: Apply, Login, Where, Whoami, Work');

    const unknown = await runCall(relay.addr, ['Relay.Nope']);
    expect(unknown.stderr).toContain("NO_METHOD: the relay's own service Relay has no method Nope; methods: List, Unwatch, Watch");

    const eu = await runCall(relay.addr, ['--list', '--json', '--where', 'region=eu']);
    expect((JSON.parse(eu.stdout) as { nodes: NodeInfo[] }).nodes.map((n) => n.name)).toEqual(['b1', 'b2']);
  });

  it('a killed node disappears from --list at once; a frozen one within the heartbeat timeout, and watchers see both leave', async () => {
    const events: PresenceEvent[] = [];
    let wake: () => void = () => {};
    const watch = await c.watchPresence((e) => {
      events.push(e);
      wake();
    });
    expect(watch.nodes.map((n) => n.name)).toContain('b4');
    const waitEvent = async (pred: (e: PresenceEvent) => boolean, timeout: number) => {
      const deadline = Date.now() + timeout;
      while (!events.some(pred)) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no matching presence event within ${timeout} ms; saw ${JSON.stringify(events)}`);
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, left);
          wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
      }
      return events.find(pred)!;
    };

    // Killed: the relay sees the socket close, and the node leaves on that, not on missed heartbeats.
    const b4Address = watch.nodes.find((n) => n.name === 'b4')!.address;
    const killedAt = Date.now();
    nodes.get('b4')!.kill('SIGKILL');
    await waitEvent((e) => e.event === 'leave' && e.node.name === 'b4', DROP_BOUND_MS);
    const afterKill = await runCall(relay.addr, ['--list', '--json']);
    expect((JSON.parse(afterKill.stdout) as { nodes: NodeInfo[] }).nodes.map((n) => n.name)).not.toContain('b4');
    console.log(`SIGKILLed b4 left the presence list after ${Date.now() - killedAt} ms`);
    const b4Gone = await relay.proc.waitForLog((l) => l.msg === 'node disconnected' && l.node === 'b4', 5_000, 'b4 disconnected');
    expect(
      relay.proc.logs.slice(0, relay.proc.logs.indexOf(b4Gone)).filter((l) => l.msg === 'peer missed heartbeats; dropping connection' && l.peer === b4Address),
    ).toEqual([]);

    // Frozen: the socket stays open, and only the heartbeat timeout drops it, counted from the last
    // bytes the relay had from b3 (a ping answered before the SIGSTOP, maybe late under load).
    const b3Address = watch.nodes.find((n) => n.name === 'b3')!.address;
    const frozenAt = Date.now();
    nodes.get('b3')!.kill('SIGSTOP');
    const left = await waitEvent((e) => e.event === 'leave' && e.node.name === 'b3', DROP_BOUND_MS);
    const dropped = await relay.proc.waitForLog(
      (l) => l.msg === 'peer missed heartbeats; dropping connection' && l.peer === b3Address,
      5_000,
      'the heartbeat drop of b3',
    );
    const silent = (dropped.time as number) - b3Proxy.lastFromClient;
    console.log(`SIGSTOPped b3 left after ${Date.now() - frozenAt} ms, ${silent} ms after the relay last heard from it (heartbeat timeout ${HEARTBEAT_MS} ms)`);
    expect(silent).toBeGreaterThanOrEqual(HEARTBEAT_MS);
    expect(silent).toBeLessThan(DROP_BOUND_MS);
    expect(left.node.labels).toEqual({ region: 'us' });
    const afterFreeze = await runCall(relay.addr, ['--list', '--json']);
    expect((JSON.parse(afterFreeze.stdout) as { nodes: NodeInfo[] }).nodes.map((n) => n.name)).toEqual(['b1', 'b2', 'b5', 'ex1']);

    // The frozen node wakes, finds its connection gone and joins again.
    nodes.get('b3')!.kill('SIGCONT');
    const back = await waitEvent((e) => e.event === 'join' && e.node.name === 'b3', 30_000);
    expect(back.node.services).toHaveProperty('Fleet');
    await watch.stop();
  });
});
