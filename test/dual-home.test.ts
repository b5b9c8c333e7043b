import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { WebSocket, WebSocketServer } from 'ws';
import { connect, isTunnelError, Relay, ServiceRegistry, TunnelNode, withContext, type Client } from '../src/index.js';
import { registerExamples } from '../src/services/index.js';
import { decode, decodeAll, encode } from '../src/wire/codec.js';
import { freePort } from './helpers/nats.js';
import { Holds } from './helpers/hold.js';
import { BIN, killAll, Proc, runCall, START_TIMEOUT, startRelay, type LogLine } from './helpers/processes.js';
import { waitUntil } from './helpers/wait.js';

/** A node with tunnels to several relays at once (issue 13, "Dual-homed nodes"), node side. */

const SERVICES = fileURLToPath(new URL('./fixtures/dual-services.js', import.meta.url));
const FAST_RETRY = ['--reconnect-base', '100ms', '--reconnect-cap', '500ms'];

/**
 * A WebSocket hop in front of a real relay: it passes every message both ways, keeps the first one
 * each node sent (its hello), and can cut the node's side as a network failure would.
 */
class RelayHop {
  readonly hellos: Array<Record<string, unknown>> = [];
  private readonly wss: WebSocketServer;
  private readonly pairs = new Set<{ node: WebSocket; relay: WebSocket }>();

  private constructor(target: string, wss: WebSocketServer) {
    this.wss = wss;
    wss.on('connection', (node) => {
      const relay = new WebSocket(target, { perMessageDeflate: false });
      const pair = { node, relay };
      this.pairs.add(pair);
      const early: Buffer[] = [];
      let first = true;
      node.on('message', (data: Buffer) => {
        if (first) {
          first = false;
          const m = decodeAll(data)[0];
          if (Array.isArray(m) && m[0] === 4) this.hellos.push(m[1] as Record<string, unknown>);
        }
        if (relay.readyState === WebSocket.OPEN) relay.send(data);
        else early.push(data);
      });
      relay.on('open', () => {
        for (const data of early.splice(0)) relay.send(data);
      });
      relay.on('message', (data: Buffer) => node.send(data));
      const end = (other: WebSocket, code: number, reason: Buffer) => {
        this.pairs.delete(pair);
        if (code >= 4000 || code === 1000 || code === 1001) other.close(code, reason);
        else other.terminate();
      };
      relay.on('close', (code, reason) => end(node, code, reason));
      node.on('close', (code, reason) => end(relay, code, reason));
      relay.on('error', () => node.terminate());
      node.on('error', () => relay.terminate());
    });
  }

  static async start(relayAddr: string): Promise<RelayHop> {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
    await once(wss, 'listening');
    return new RelayHop(`ws://${relayAddr}/`, wss);
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.wss.address() as AddressInfo).port}/`;
  }

  /** Drops every node connection without a close frame: the node sees its tunnel die. */
  cut(): void {
    for (const { node, relay } of this.pairs) {
      node.terminate();
      relay.terminate();
    }
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }
}

const hops: RelayHop[] = [];
async function hop(relayAddr: string): Promise<RelayHop> {
  const h = await RelayHop.start(relayAddr);
  hops.push(h);
  return h;
}

const callers: Client[] = [];
async function caller(relayAddr: string): Promise<Client> {
  const c = await connect(relayAddr, { timeout: 20_000 });
  callers.push(c);
  return c;
}

/** The node's `connected to relay` lines for `url` (the tunnel's logger names its relay). */
const connectedTo = (node: Proc, url: string) => node.logs.filter((l) => l.msg === 'connected to relay' && l.relay === url).length;

afterEach(async () => {
  await Promise.all(callers.splice(0).map((c) => c.close().catch(() => undefined)));
  await Promise.all(hops.splice(0).map((h) => h.close()));
  await killAll();
});

describe('dual-homed node (tunnel-node --relay A --relay B)', () => {
  it('holds a tunnel to each relay, with one name and one instance, and serves callers of both', async () => {
    const [a, b] = await Promise.all([startRelay(), startRelay()]);
    const [hopA, hopB] = await Promise.all([hop(a.addr), hop(b.addr)]);
    const node = new Proc(BIN.node, ['--relay', hopA.url, '--relay', hopB.url, '--name', 'dual-1', '--log-level', 'debug']);
    await node.waitForLog(() => connectedTo(node, hopA.url) === 1 && connectedTo(node, hopB.url) === 1, 10_000, 'a tunnel to each relay');

    const starting = node.logs.find((l) => l.msg === 'node starting')!;
    expect(starting).toMatchObject({ relay: hopA.url, relays: [hopA.url, hopB.url] });
    // Both relays list it, and both heard the same process: one name, one instance.
    for (const relay of [a, b]) {
      const list = await runCall(relay.addr, ['--list', '--json']);
      expect(list.code).toBe(0);
      expect((JSON.parse(list.stdout) as { nodes: Array<{ name: string }> }).nodes.map((n) => n.name)).toEqual(['dual-1']);
      expect((await runCall(relay.addr, ['Arith.Multiply', '6', '7'])).stdout).toBe('42\n');
    }
    expect(hopA.hellos).toHaveLength(1);
    expect(hopB.hellos).toHaveLength(1);
    expect(hopA.hellos[0]).toMatchObject({ role: 'node', name: 'dual-1', instance: expect.stringMatching(/^[0-9a-f-]{36}$/) });
    expect(hopB.hellos[0]!.instance).toBe(hopA.hellos[0]!.instance);
    expect(hopB.hellos[0]!.services).toEqual(hopA.hellos[0]!.services);
  });

  it('loses one relay without losing the other: only its calls abort, Logins stay, and it comes back', async () => {
    const portB = await freePort();
    const a = await startRelay();
    let b = await startRelay([], portB);
    const hopA = await hop(a.addr);
    const urlB = `ws://127.0.0.1:${portB}/`;
    const node = new Proc(BIN.node, [
      '--relay',
      hopA.url,
      '--relay',
      b.addr,
      '--name',
      'dual-1',
      '--services',
      SERVICES,
      '--log-level',
      'debug',
      ...FAST_RETRY,
    ]);
    await node.waitForLog(() => connectedTo(node, hopA.url) === 1 && connectedTo(node, urlB) === 1, 10_000, 'a tunnel to each relay');

    const alice = await caller(a.addr);
    const onB = await caller(b.addr);
    expect(await alice.call('Hello.Login', 'alice:secret')).toBe('alice');
    // One call in flight through each tunnel.
    const throughA = alice.call('Slow.Sleep', 3_000);
    const throughB = onB.call('Slow.Sleep', 60_000).catch((e: unknown) => e);
    const started = (l: LogLine, session: string) => l.msg === 'test handler started' && l.session === session;
    await node.waitForLog((l) => started(l, alice.session), 10_000, 'the call through A running');
    await node.waitForLog((l) => started(l, onB.session), 10_000, 'the call through B running');

    const mark = node.logs.length;
    b.proc.kill('SIGKILL');
    await b.proc.exited;
    const lost = await node.waitForLog((l) => l.msg === 'disconnected from relay', 10_000, 'the loss of B', mark);
    expect(lost.relay).toBe(urlB);
    const aborted = await node.waitForMsg('test handler aborted', 10_000, mark);
    expect(aborted).toMatchObject({ session: onB.session, reason: 'NODE_LOST' });
    expect(isTunnelError(await throughB)).toBe(true);

    // A is untouched: its call in flight finishes, new calls work, and the Login made through A holds.
    expect(await alice.call('Arith.Multiply', 6, 7)).toBe(42);
    expect(await alice.call('Hello.WhoAmI')).toBe('alice');
    expect(await throughA).toBe(3_000);
    expect(node.logs.filter((l) => l.msg === 'test handler aborted')).toHaveLength(1);
    expect(node.logs.some((l) => l.msg === 'no relay connected: sessions cleared')).toBe(false);
    expect(node.logs.some((l) => l.msg === 'disconnected from relay' && l.relay === hopA.url)).toBe(false);

    // B comes back on its port: the node returns to it by itself.
    b = await startRelay([], portB);
    await node.waitForLog(() => connectedTo(node, urlB) === 2, 15_000, 'the tunnel to B again');
    const again = await caller(b.addr);
    expect(await again.call('Arith.Multiply', 2, 3)).toBe(6);

    // A's tunnel dies and returns while B holds: the Login made through A is still there.
    hopA.cut();
    await node.waitForLog(() => connectedTo(node, hopA.url) === 2, 15_000, 'the tunnel to A again');
    expect(await alice.call('Hello.WhoAmI')).toBe('alice');

    // Both tunnels die at once: sessions end with the last one, and after the reconnect the caller
    // must log in again, as with a single relay.
    const beforeKill = node.logs.length;
    b.proc.kill('SIGKILL');
    await b.proc.exited;
    await node.waitForLog((l) => l.msg === 'disconnected from relay' && l.relay === urlB, 10_000, 'the loss of B again', beforeKill);
    hopA.cut();
    const cleared = await node.waitForMsg('no relay connected: sessions cleared', 10_000);
    expect(cleared.sessions).toBeGreaterThanOrEqual(1);
    await node.waitForLog(() => connectedTo(node, hopA.url) === 3, 15_000, 'the tunnel to A a third time');
    const err = await alice.call('Hello.WhoAmI').catch((e: unknown) => e);
    expect(isTunnelError(err, 'NOT_LOGGED_IN')).toBe(true);
  });

  it('drains both tunnels on SIGTERM (relays from TUNNEL_RELAY, comma-separated): running calls finish, none is lost', async () => {
    const [a, b] = await Promise.all([startRelay(), startRelay()]);
    // The drain time only bounds the test: the running calls end when the test releases them.
    const node = new Proc(BIN.node, ['--name', 'dual-1', '--services', SERVICES, '--log-level', 'debug', '--drain-timeout', '40s'], {
      TUNNEL_RELAY: `${a.addr},${b.addr}`,
    });
    const holds = await Holds.open();
    try {
      await node.waitForLog(() => node.logs.filter((l) => l.msg === 'connected to relay').length === 2, START_TIMEOUT, 'a tunnel to each relay');
      const calls = [a, b].map((r) => runCall(r.addr, ['Slow.Hold', String(holds.port)], {}, 50_000));
      await holds.waitHeld(2, 20_000);

      node.kill('SIGTERM');
      await Promise.all([a, b].map((r) => r.proc.waitForMsg('node is draining')));
      // Both calls are still running (held): the node is draining, not gone, on both relays.
      for (const r of [a, b]) {
        const late = await runCall(r.addr, ['Slow.Echo', '1']);
        expect(late.code).not.toBe(0);
        expect(late.stderr).toContain('NO_NODE');
      }
      expect(holds.held).toBe(2);
      holds.release();
      for (const done of await Promise.all(calls)) expect(done).toMatchObject({ code: 0, stdout: 'released\n' });
      expect((await node.exited).code).toBe(0);
      for (const r of [a, b]) expect((await r.proc.waitForMsg('node disconnected')).failedCalls).toBe(0);
    } finally {
      await holds.close();
    }
  });

  it('exits 2 when a relay is given twice, however it is spelt', async () => {
    for (const args of [
      ['--relay', '127.0.0.1:9', '--relay', '127.0.0.1:9'],
      ['--relay', '9', '--relay', 'ws://localhost:9'],
      ['--relay', '127.0.0.1:9,127.0.0.1:9'],
    ]) {
      const p = new Proc(BIN.node, args);
      expect((await p.exited).code).toBe(2);
      expect(p.stderr).toMatch(/^tunnel-node: --relay "[^"]+" (is given twice|and "[^"]+" are the same relay \(ws:\/\/[^)]+\)); give each relay once\n/);
    }
    const bad = new Proc(BIN.node, ['--relay', '127.0.0.1:9', '--relay', '127.1:9']);
    expect((await bad.exited).code).toBe(2);
    expect(bad.stderr).toMatch(/^tunnel-node: --relay "127\.1:9"/);
  });
});

describe('dual-homed TunnelNode (library)', () => {
  const relays: Relay[] = [];
  const nodes: TunnelNode[] = [];
  afterEach(async () => {
    await Promise.all(nodes.splice(0).map((n) => n.stop(1_000)));
    await Promise.all(relays.splice(0).map((r) => r.drain(1_000)));
  });

  async function relay(): Promise<string> {
    const r = new Relay({ listen: '127.0.0.1:0', drainTimeout: 5_000 });
    relays.push(r);
    return (await r.listen()).url;
  }

  it('takes a list of relays and refuses an empty or repeated one', () => {
    const services = registerExamples(new ServiceRegistry());
    expect(() => new TunnelNode({ relay: [], services })).toThrow('TunnelNode option relay: give at least one relay address');
    expect(() => new TunnelNode({ relay: ['127.0.0.1:9', 'ws://127.0.0.1:9/'], services })).toThrow(
      'TunnelNode option relay "127.0.0.1:9" and "ws://127.0.0.1:9/" are the same relay (ws://127.0.0.1:9/); give each relay once',
    );
    const node = new TunnelNode({ relay: ['127.0.0.1:9', '127.0.0.1:10'], services });
    expect(node.url).toBe('ws://127.0.0.1:9/');
    expect(node.urls).toEqual(['ws://127.0.0.1:9/', 'ws://127.0.0.1:10/']);
    expect(node.tunnels).toEqual([
      { url: 'ws://127.0.0.1:9/', current: 'ws://127.0.0.1:9/', connected: false, since: undefined, running: 0 },
      { url: 'ws://127.0.0.1:10/', current: 'ws://127.0.0.1:10/', connected: false, since: undefined, running: 0 },
    ]);
  });

  it('reports each tunnel, leaves the relay that says GOAWAY after its calls, keeps the other, and stops both', async () => {
    const [urlA, urlB] = await Promise.all([relay(), relay()]);
    const [relayA, relayB] = relays as [Relay, Relay];
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const services = registerExamples(new ServiceRegistry()).register('Hold', {
      Wait: withContext(async (ctx) => {
        await held;
        return ctx.session.user ?? null;
      }),
    });
    const lines: LogLine[] = [];
    const log = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line) as LogLine) });
    const node = new TunnelNode({ relay: [urlA, urlB], name: 'dual-lib', services, log, reconnectBase: 50, reconnectCap: 200 });
    nodes.push(node);
    const connected: string[] = [];
    const disconnected: Array<[number, string, string]> = [];
    node.on('connected', (url: string) => connected.push(url));
    node.on('disconnected', (code: number, reason: string, url: string) => disconnected.push([code, reason, url]));
    node.start();
    await node.waitConnected();
    expect(node.connected).toBe(true);
    await waitUntil(() => connected.length === 2, 10_000, 'both tunnels connected');
    expect(connected.sort()).toEqual([urlA, urlB].sort());
    expect(node.tunnels).toEqual([
      { url: urlA, current: urlA, connected: true, since: expect.any(Date), running: 0 },
      { url: urlB, current: urlB, connected: true, since: expect.any(Date), running: 0 },
    ]);
    expect(relayA.nodes().map((n) => n.name)).toEqual(['dual-lib']);
    expect(relayB.nodes().map((n) => n.name)).toEqual(['dual-lib']);

    // A call held on B while B drains: the tunnel to B stays until it is answered, then leaves.
    const onA = await connect(urlA);
    const onB = await connect(urlB);
    expect(await onA.call('Hello.Login', 'alice:secret')).toBe('alice');
    const heldOnB = onB.call('Hold.Wait');
    await waitUntil(() => node.tunnels[1]!.running === 1, 10_000, 'a call running on the second tunnel');
    const draining = relayB.drain(5_000);
    await waitUntil(() => lines.some((l) => l.msg === 'relay is going away' && l.relay === urlB), 10_000, 'the node to hear relay B going away');
    expect(node.tunnels[1]).toMatchObject({ connected: true, running: 1 });
    expect(disconnected).toEqual([]);
    release();
    expect(await heldOnB).toBeNull();
    await draining;
    await waitUntil(() => disconnected.length > 0, 10_000, 'a tunnel to disconnect');
    expect(disconnected[0]![2]).toBe(urlB);
    expect(node.connected).toBe(true);
    expect(node.tunnels.map((t) => t.connected)).toEqual([true, false]);
    expect(await onA.call('Hello.WhoAmI')).toBe('alice');

    const stopped = once(node, 'stopped');
    await node.stop(1_000);
    await stopped;
    expect(node.connected).toBe(false);
    await waitUntil(() => relayA.nodes().length === 0, 10_000, 'relay A to have no node');
    await Promise.all([onA.close(), onB.close()]);
  });
});

/**
 * The relay side of one tunnel, by hand: what a relay of a cluster sends a node, so that the node's
 * shared session table can be tested before the cluster exists. Real sockets, no routing.
 */
class WireRelay {
  readonly hellos: Array<Record<string, unknown>> = [];
  private node: WebSocket | undefined;
  private readonly answers = new Map<number, (a: unknown[]) => void>();

  private constructor(private readonly wss: WebSocketServer) {
    wss.on('connection', (ws) => {
      ws.on('message', (data: Buffer) => {
        for (const m of decodeAll(data) as unknown[][]) {
          if (m[0] === 4) {
            this.hellos.push(m[1] as Record<string, unknown>);
            this.node = ws;
            ws.send(encode([5, { version: 2, relay: 'wire-relay', name: (m[1] as { name: string }).name }]));
          } else if (m[0] === 1) {
            this.answers.get(m[1] as number)?.(m);
          }
        }
      });
    });
  }

  static async start(): Promise<WireRelay> {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
    await once(wss, 'listening');
    return new WireRelay(wss);
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.wss.address() as AddressInfo).port}/`;
  }

  /** Forwards a call for caller session `session`; resolves with `{error}` or `{result}`. */
  call(id: number, session: string, method: string, ...args: unknown[]): Promise<{ error?: { code: string }; result?: unknown }> {
    const answered = new Promise<unknown[]>((resolve) => this.answers.set(id, resolve));
    this.node!.send(encode([0, id, method, encode(args), { session, timeout: 5_000 }]));
    return answered.then(([, , error, result]) => (error ? { error: error as { code: string } } : { result: decode(result as Uint8Array) }));
  }

  closeSession(session: string): void {
    this.node!.send(encode([6, session]));
  }

  async close(): Promise<void> {
    for (const ws of this.wss.clients) ws.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }
}

describe('dual-homed TunnelNode: one session table for every tunnel', () => {
  it('sees a caller session arriving through either relay as one session, and ends it when either relay says it closed', async () => {
    const [x, y] = await Promise.all([WireRelay.start(), WireRelay.start()]);
    const node = new TunnelNode({ relay: [x.url, y.url], name: 'dual-wire', services: registerExamples(new ServiceRegistry()) });
    try {
      node.start();
      await waitUntil(() => node.tunnels.every((t) => t.connected), 10_000, 'every tunnel connected');
      expect(x.hellos[0]!.instance).toBe(node.instance);
      expect(y.hellos[0]!.instance).toBe(node.instance);

      // A caller of the cluster logs in through one relay; its next call arrives through the other.
      expect(await x.call(1, 'cluster-s1', 'Hello.Login', 'alice:secret')).toEqual({ result: 'alice' });
      expect(await y.call(1, 'cluster-s1', 'Hello.WhoAmI')).toEqual({ result: 'alice' });
      expect(await y.call(2, 'cluster-s2', 'Hello.WhoAmI')).toMatchObject({ error: { code: 'NOT_LOGGED_IN' } });

      // The caller disconnects; the relay that says so is not the one it logged in through.
      y.closeSession('cluster-s1');
      // Messages on one tunnel are handled in order: once this answer is back, the close was seen.
      expect(await y.call(3, 'cluster-s3', 'Server.Ping')).toEqual({ result: 'pong' });
      expect(await x.call(2, 'cluster-s1', 'Hello.WhoAmI')).toMatchObject({ error: { code: 'NOT_LOGGED_IN' } });
    } finally {
      await node.stop(1_000);
      await Promise.all([x.close(), y.close()]);
    }
  });
});
