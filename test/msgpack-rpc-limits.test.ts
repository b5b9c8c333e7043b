import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as tcpConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { connect, Relay } from '../src/index.js';
import { AddressTable, LIMIT_DEFAULTS, RefusalLog } from '../src/relay/limits.js';
import { MsgpackRpcPort } from '../src/relay/msgpack-rpc-port.js';
import type { Logger } from '../src/util/logger.js';
import { decode, encode } from '../src/wire/codec.js';
import { MessagePackFramer } from '../src/wire/framer.js';
import { certDir, makeCerts } from './helpers/certs.js';
import { Wakeups } from './helpers/wait.js';
import { killAll, startNode, startRelay, type Proc, type RunningRelay } from './helpers/processes.js';

/** The bounds of the MessagePack-RPC port: slow consumers, connection caps, idle connections, live authentication. */

const SLOW = fileURLToPath(new URL('./fixtures/slow-services.js', import.meta.url));
const PROBE = pathToFileURL(fileURLToPath(new URL('./fixtures/memory-probe.mjs', import.meta.url))).href;
const MiB = 1024 * 1024;

afterEach(killAll);

const req = (msgid: number, method: string, params: unknown[]) => encode([0, msgid, method, params]);

async function rpcPortOf(relay: RunningRelay): Promise<number> {
  return (await relay.proc.waitForMsg('msgpack-rpc port listening')).port as number;
}

/** A raw TCP client of the port that collects decoded replies and notices the close. */
class RawRpc {
  readonly replies: unknown[][] = [];
  closed = false;
  private readonly framer = new MessagePackFramer(64 * MiB);
  private readonly wakeups = new Wakeups();

  private constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      for (const f of this.framer.push(d)) this.replies.push(decode(f) as unknown[]);
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  /** Connects from `localAddress` (any 127.x.y.z is this host); a connection the relay refuses at once ends up `closed`. */
  static async open(port: number, localAddress = '127.0.0.1'): Promise<RawRpc> {
    return RawRpc.over(tcpConnect({ port, host: '127.0.0.1', localAddress }), 'connect');
  }

  static async over(socket: Socket, connected: 'connect' | 'secureConnect'): Promise<RawRpc> {
    const c = new RawRpc(socket);
    await new Promise<void>((resolve) => {
      socket.once(connected, resolve);
      socket.once('close', resolve);
    });
    return c;
  }

  send(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Waits until `pred` holds, bounded by `timeout` ms. */
  until(pred: () => boolean, timeout = 5_000, what = 'condition'): Promise<void> {
    return this.wakeups.until(pred, timeout, what, () => `replies ${JSON.stringify(this.replies.slice(-3)).slice(0, 300)}, closed ${this.closed}`);
  }

  async reply(msgid: number, timeout = 5_000): Promise<unknown[]> {
    const find = () => this.replies.find((r) => r[1] === msgid);
    await this.until(() => find() !== undefined || this.closed, timeout, `reply ${msgid}`);
    const r = find();
    if (!r) throw new Error(`connection closed before reply ${msgid}`);
    return r;
  }

  async call(msgid: number, method: string, params: unknown[]): Promise<unknown[]> {
    this.send(req(msgid, method, params));
    return this.reply(msgid);
  }

  waitClosed(timeout = 5_000): Promise<void> {
    return this.until(() => this.closed, timeout, 'close');
  }

  destroy(): void {
    this.socket.destroy();
  }

  private wake(): void {
    this.wakeups.wake();
  }
}

/** The relay's memory after two full collections, as the preloaded probe logs it on SIGUSR2. */
async function memory(proc: Proc): Promise<{ rss: number; heap: number }> {
  const from = proc.logs.length;
  proc.child.kill('SIGUSR2');
  const line = await proc.waitForMsg('memory', 10_000, from);
  return { rss: line.rss as number, heap: (line.heapUsed as number) + (line.external as number) };
}

/** The most resident memory the process ever had (Linux `VmHWM`), bytes. */
function peakRss(pid: number): number {
  const kib = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  return Number(kib) * 1024;
}

const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;

describe('a MessagePack-RPC caller that does not read its answers', () => {
  it('is cut as a slow consumer with the relay under 40 MiB over its baseline, its calls cancelled, others served', async () => {
    const relay = await startRelay(['--msgpack-rpc-listen', '127.0.0.1:0'], 0, { NODE_OPTIONS: `--expose-gc --import ${PROBE}` });
    const port = await rpcPortOf(relay);
    await startNode(relay.addr, ['--name', 'kv-1']);
    const slow = await startNode(relay.addr, ['--name', 'slow-1', '--services', SLOW]);
    const honest = await connect(relay.addr);
    const value = 'x'.repeat(250_000);
    expect(await honest.call('KV.Set', 'big', value)).toBe(true);

    // The baseline is a relay that has already passed the same 1,024 answers to a caller that reads
    // them (32 at a time, so never above the backlog limit): what remains is what the abuser costs.
    const warm = await RawRpc.open(port);
    for (let batch = 0; batch < 32; batch++) {
      for (let i = 0; i < 32; i++) warm.send(req(batch * 32 + i, 'KV.Get', ['big']));
      const last = await warm.reply(batch * 32 + 31, 10_000);
      expect((last[3] as string).length).toBe(250_000);
    }
    expect(warm.replies).toHaveLength(1_024);
    warm.replies.length = 0;
    warm.destroy();
    const before = await memory(relay.proc);
    const peakBefore = peakRss(relay.proc.child.pid!);

    // Two calls that run until cancelled, then 1,024 × 250 KB, and the caller stops reading.
    const from = relay.proc.logs.length;
    const attacker = await RawRpc.open(port);
    attacker.socket.pause();
    const requests = [req(1, 'Slow.Sleep', [120_000]), req(2, 'Slow.Sleep', [120_000])];
    for (let id = 3; id < 3 + 1_024; id++) requests.push(req(id, 'KV.Get', ['big']));
    attacker.send(Buffer.concat(requests));
    // An honest caller is answered while the relay deals with it.
    expect(await honest.call('Arith.Multiply', 6, 7, { node: 'kv-1' })).toBe(42);

    const cut = await relay.proc.waitForMsg('slow consumer: closing connection', 30_000, from);
    expect(cut).toMatchObject({ level: 40, limit: 8 * MiB, peer: expect.stringMatching(/^127\.0\.0\.1:\d+$/), session: expect.any(String) });
    expect(cut.backlogBytes as number).toBeGreaterThan(8 * MiB);
    // The connection is gone: what the kernel still holds for it ends in a close.
    attacker.socket.resume();
    await attacker.waitClosed(10_000);
    // Its calls were cancelled on the node with its session.
    await slow.waitForLog((l) => l.msg === 'session closed' && l.session === cut.session, 10_000, 'session closed on slow-1');
    expect(slow.logs.filter((l) => l.msg === 'test handler aborted')).toHaveLength(2);

    // Every answer kv-1 had queued for the attacker went before this one: the relay has seen them all.
    expect(await honest.call('Server.Ping', { node: 'kv-1' })).toBe('pong');
    const after = await memory(relay.proc);
    const peakAfter = peakRss(relay.proc.child.pid!);
    console.log(
      `msgpack-rpc slow consumer: relay rss ${mib(before.rss)} -> ${mib(after.rss)} (${mib(after.rss - before.rss)}), ` +
        `heap+external ${mib(before.heap)} -> ${mib(after.heap)} (${mib(after.heap - before.heap)}), peak rss ${mib(peakBefore)} -> ${mib(peakAfter)}`,
    );
    expect(after.rss - before.rss).toBeLessThanOrEqual(40 * MiB);
    expect(after.heap - before.heap).toBeLessThanOrEqual(40 * MiB);
    // Not only what is left: at no moment did the attack take the relay 40 MiB above what it had reached already.
    expect(peakAfter - peakBefore).toBeLessThanOrEqual(40 * MiB);
    await honest.close();
  }, 90_000);
});

/**
 * The most a socket's kernel buffers can take from the relay for a reader that never reads: the
 * relay's send buffer at its largest, and the reader's receive buffer as it starts (it grows only
 * as its owner reads), doubled for the kernel's bookkeeping.
 */
function kernelBuffers(): number {
  const field = (file: string, i: number, fallback: number) => Number(readFileSync(`/proc/sys/net/ipv4/${file}`, 'utf8').trim().split(/\s+/)[i] ?? fallback);
  try {
    return field('tcp_wmem', 2, 4 * MiB) + 2 * field('tcp_rmem', 1, 128 * 1024);
  } catch {
    return 4 * MiB + 256 * 1024;
  }
}

describe('a MessagePack-RPC caller whose backlog stays above the limit', () => {
  it('stops being read at once and is cut after --slow-consumer-timeout', async () => {
    const relay = await startRelay(['--msgpack-rpc-listen', '127.0.0.1:0', '--max-backlog', '1MiB', '--slow-consumer-timeout', '2s']);
    const port = await rpcPortOf(relay);
    await startNode(relay.addr, ['--name', 'kv-1']);
    const honest = await connect(relay.addr);
    // One answer larger than the limit and all the kernel can take off the relay: its backlog stays
    // above the limit whatever the kernel absorbs and however the relay's turns fall on a busy
    // machine. One answer is never cut as twice the limit, so only the clock can cut this one.
    const size = MiB + kernelBuffers() + MiB;
    expect(size, 'an answer that fits in one message').toBeLessThan(15 * MiB);
    expect(await honest.call('KV.Set', 'big', 'y'.repeat(size))).toBe(true);

    const from = relay.proc.logs.length;
    const reader = await RawRpc.open(port);
    reader.socket.pause();
    const sentAt = Date.now();
    reader.send(req(1, 'KV.Get', ['big']));
    const pause = await relay.proc.waitForMsg('msgpack-rpc caller is not reading its answers; not reading from it until it does', 10_000, from);
    const cut = await relay.proc.waitForMsg('slow consumer: closing connection', 10_000, from);
    expect(cut).toMatchObject({ limit: MiB, session: pause.session, reason: `backlog above ${MiB} bytes for 2000 ms` });
    expect(relay.proc.logs.indexOf(pause)).toBeLessThan(relay.proc.logs.indexOf(cut));
    expect(cut.backlogBytes as number).toBeGreaterThan(MiB);
    // What it held was that one answer (with its few bytes of framing), nothing piled up behind it.
    expect(cut.backlogBytes as number).toBeLessThanOrEqual(size + 64);
    // The clock started after the request was sent (the relay's and this process's clocks are one);
    // a few ms for the two clocks' rounding.
    expect((cut.time as number) - sentAt).toBeGreaterThanOrEqual(2_000 - 5);
    const metrics = await (await fetch(`http://${relay.addr}/metrics`)).text();
    expect(metrics).toMatch(/^tunnel_relay_slow_consumers_total\{transport="msgpack-rpc"\} 1$/m);
    expect(await honest.call('Arith.Multiply', 2, 3)).toBe(6);
    await honest.close();
  }, 60_000);
});

/** How many file descriptors the process holds. */
const fds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

/** Opens a WebSocket caller from `localAddress` and says hello: 'welcome', the HTTP status it was refused with, or 'closed'. */
async function wsCaller(addr: string, localAddress: string): Promise<{ outcome: number | 'welcome' | 'closed'; ws: WebSocket }> {
  const ws = new WebSocket(`ws://${addr}/`, { localAddress, perMessageDeflate: false });
  const outcome = await new Promise<number | 'welcome' | 'closed'>((resolve, reject) => {
    // Neither a welcome nor a close: an answer of its own, not a 'closed' that a refusal would give.
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`no welcome, refusal or close from ${addr} within 10 s`));
    }, 10_000);
    const done = (v: number | 'welcome' | 'closed') => {
      clearTimeout(timer);
      resolve(v);
    };
    ws.on('unexpected-response', (_req, res) => done(res.statusCode ?? 0));
    ws.on('open', () => ws.send(encode([4, { version: 1, role: 'caller' }])));
    ws.on('message', (d: Buffer) => {
      if ((decode(d) as unknown[])[0] === 5) done('welcome');
    });
    ws.on('error', () => done('closed'));
    ws.on('close', () => done('closed'));
  });
  return { outcome, ws };
}

/** `tunnel_relay_rejected_connections_total{reason="too_many_connections"}`, from the admin port, which no connection limit applies to. */
async function rejected(relay: RunningRelay): Promise<number> {
  const admin = (await relay.proc.waitForMsg('admin listening')).port as number;
  const text = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
  return Number(/^tunnel_relay_rejected_connections_total\{reason="too_many_connections"\} (\d+)/m.exec(text)?.[1] ?? 0);
}

describe('connection limits of the MessagePack-RPC port', () => {
  it('shares --max-connections-per-address with the WebSocket port, closes the extra ones, keeps fds bounded', async () => {
    const relay = await startRelay(['--msgpack-rpc-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--max-connections-per-address', '50']);
    const port = await rpcPortOf(relay);
    await startNode(relay.addr, ['--name', 'office-1']); // from 127.0.0.1: one of its 50
    const pid = relay.proc.child.pid!;
    const fdsBefore = fds(pid);
    const from = relay.proc.logs.length;

    const conns: RawRpc[] = [];
    for (let i = 0; i < 60; i++) conns.push(await RawRpc.open(port));
    const outcomes = await Promise.all(
      conns.map(async (c, i) => {
        c.send(req(i, 'Server.Ping', []));
        await c.until(() => c.replies.length > 0 || c.closed, 5_000, `connection ${i}`);
        return c.replies.length > 0 ? 'served' : 'closed';
      }),
    );
    expect(outcomes.filter((o) => o === 'served')).toHaveLength(49);
    expect(outcomes.slice(49).every((o) => o === 'closed')).toBe(true);
    const lines = relay.proc.logs.slice(from).filter((l) => l.msg === 'too many msgpack-rpc connections; closing the extra ones');
    expect(lines).toHaveLength(1); // one line for the burst of 11
    expect(lines[0]).toMatchObject({ level: 40, ip: '127.0.0.1', reason: 'too many connections from 127.0.0.1 (limit 50)' });
    expect(await rejected(relay)).toBe(11);
    // 49 more sockets than before, and the admin request's at most: the 11 extra ones hold none.
    expect(fds(pid) - fdsBefore).toBeLessThanOrEqual(49 + 5);

    // The address is full for the WebSocket port too; another address is served.
    const full = await wsCaller(relay.addr, '127.0.0.1');
    expect(full.outcome).toBe(429);
    const other = await wsCaller(relay.addr, '127.0.0.2');
    expect(other.outcome).toBe('welcome');
    other.ws.terminate();
    // Once one msgpack-rpc connection leaves, a WebSocket caller from that address is served again.
    const gone = relay.proc.logs.length;
    conns[0]!.destroy();
    await relay.proc.waitForMsg('msgpack-rpc caller disconnected', 5_000, gone);
    const again = await wsCaller(relay.addr, '127.0.0.1');
    expect(again.outcome).toBe('welcome');
    again.ws.terminate();
    for (const c of conns) c.destroy();
  }, 60_000);

  it('counts both ports against --max-connections', async () => {
    const relay = await startRelay(['--msgpack-rpc-listen', '127.0.0.1:0', '--max-connections', '20']);
    const port = await rpcPortOf(relay);
    await startNode(relay.addr, ['--name', 'office-1']); // one of the 20
    const from = relay.proc.logs.length;
    const conns: RawRpc[] = [];
    for (let i = 0; i < 25; i++) conns.push(await RawRpc.open(port, `127.0.0.${2 + (i % 5)}`));
    const outcomes = await Promise.all(
      conns.map(async (c, i) => {
        c.send(req(i, 'Server.Ping', []));
        await c.until(() => c.replies.length > 0 || c.closed, 5_000, `connection ${i}`);
        return c.replies.length > 0 ? 'served' : 'closed';
      }),
    );
    expect(outcomes.filter((o) => o === 'served')).toHaveLength(19);
    const line = await relay.proc.waitForMsg('too many msgpack-rpc connections; closing the extra ones', 5_000, from);
    expect(line.reason).toBe('the relay has 20 connections, its limit');
    // The WebSocket port is full as well: its socket is closed before any HTTP.
    expect((await wsCaller(relay.addr, '127.0.0.9')).outcome).toBe('closed');
    await relay.proc.waitForMsg('too many connections on the relay; closing the extra ones', 5_000, from);
    const gone = relay.proc.logs.length;
    conns[0]!.destroy();
    await relay.proc.waitForMsg('msgpack-rpc caller disconnected', 5_000, gone);
    const again = await wsCaller(relay.addr, '127.0.0.9');
    expect(again.outcome).toBe('welcome');
    again.ws.terminate();
    for (const c of conns) c.destroy();
  }, 60_000);
});

describe('idle MessagePack-RPC connections', () => {
  it('closes a connection that sends nothing within --hello-timeout, and one idle for --msgpack-rpc-idle-timeout, not one with a call in flight', async () => {
    const relay = await startRelay(['--msgpack-rpc-listen', '127.0.0.1:0', '--msgpack-rpc-idle-timeout', '1s', '--hello-timeout', '1s']);
    const port = await rpcPortOf(relay);
    const slowNode = await startNode(relay.addr, ['--name', 'slow-1', '--services', SLOW]);

    const started = Date.now();
    const silent = await RawRpc.open(port);
    const idle = await RawRpc.open(port);
    // Taken before the call is sent: the relay's idle clock starts at or after it (one clock for both processes).
    const pinged = Date.now();
    expect(await idle.call(1, 'Slow.Echo', ['hi'])).toEqual([1, 1, null, 'hi']);
    const busy = await RawRpc.open(port);
    busy.send(req(2, 'Slow.Sleep', [2_500]));

    await silent.waitClosed(10_000);
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    await relay.proc.waitForMsg('closing msgpack-rpc connection that sent nothing', 5_000);
    await idle.waitClosed(10_000);
    const idleClosed = await relay.proc.waitForMsg('closing idle msgpack-rpc connection', 5_000);
    expect((idleClosed.time as number) - pinged).toBeGreaterThanOrEqual(1_000);
    // The sleeping call outlives the idle timeout, and the connection is closed only after its answer:
    // a second idle close, a timeout after the handler's end (its start on the node, plus its 2.5 s).
    expect(await busy.reply(2, 10_000)).toEqual([1, 2, null, 2_500]);
    await busy.waitClosed(10_000);
    const handler = await slowNode.waitForMsg('test handler started');
    const busyClosed = await relay.proc.waitForLog(
      (l) => l.msg === 'closing idle msgpack-rpc connection' && l !== idleClosed,
      5_000,
      'the busy connection closed idle',
    );
    expect((busyClosed.time as number) - (handler.time as number)).toBeGreaterThanOrEqual(2_500 + 1_000);
  }, 30_000);
});

describe('authentication on the MessagePack-RPC port follows reloads of the tokens file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tunnel-mrpc-tokens-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('serves anonymous calls until caller lines are added, then asks for Relay.Auth with a token that works', async () => {
    const file = join(dir, 'tokens.txt');
    const nodeToken = 'node-token-0123456789abcdef';
    const callerToken = 'caller-token-0123456789abcdef';
    writeFileSync(file, `node office-1 ${nodeToken}\n`);
    const relay = await startRelay(['--msgpack-rpc-listen', '127.0.0.1:0', '--tokens', file]);
    const port = await rpcPortOf(relay);
    await startNode(relay.addr, ['--name', 'office-1', '--services', 'test/fixtures/security-services.js'], { TUNNEL_TOKEN: nodeToken });

    const before = await RawRpc.open(port);
    expect(await before.call(1, 'Sec.Who', [])).toEqual([1, 1, null, null]);
    // No caller token is required yet: any token is accepted.
    expect(await before.call(2, 'Relay.Auth', ['any-token-at-all-1234'])).toEqual([1, 2, null, true]);

    const from = relay.proc.logs.length;
    writeFileSync(file, `node office-1 ${nodeToken}\ncaller billing ${callerToken}\n`);
    relay.proc.child.kill('SIGHUP');
    await relay.proc.waitForLog((l) => l.msg === 'tokens reloaded' && l.entries === 2, 5_000, 'tokens reloaded', from);

    const anonymous = await RawRpc.open(port);
    expect(await anonymous.call(3, 'Sec.Who', [])).toEqual([
      1,
      3,
      'UNAUTHORIZED: this relay requires a caller token: call Relay.Auth(token) first on this connection',
      null,
    ]);
    expect(await anonymous.call(5, 'Relay.Auth', [callerToken])).toEqual([1, 5, null, true]);
    expect(await anonymous.call(6, 'Sec.Who', [])).toEqual([1, 6, null, 'billing']);
    // A wrong token is answered, and its connection closed.
    const guess = await RawRpc.open(port);
    expect(await guess.call(4, 'Relay.Auth', ['wrong-token-0123456789abcdef'])).toEqual([
      1,
      4,
      'UNAUTHORIZED: Relay.Auth takes one string, a caller token the relay accepts; this one was refused',
      null,
    ]);
    await guess.until(() => guess.closed, 5_000, 'close after a wrong token');

    // The connection opened before the reload calls anonymously no more (or was closed as revoked).
    before.send(req(7, 'Sec.Who', []));
    await before.until(() => before.replies.some((r) => r[1] === 7) || before.closed, 5_000, 'reply 7 or close');
    if (!before.closed) expect(before.replies.find((r) => r[1] === 7)![2]).toMatch(/^UNAUTHORIZED: this relay now requires a caller token/);
    before.destroy();
    anonymous.destroy();
  }, 30_000);
});

const opensslMissing = spawnSync('openssl', ['version']).status !== 0;
describe.skipIf(opensslMissing)('the port over TLS', () => {
  it('bounds the handshake by the first-request timeout and counts connections from the TCP connect', async () => {
    const certs = certDir();
    makeCerts(certs.dir, []);
    const tls = { key: readFileSync(certs.file('relay.key')), cert: readFileSync(certs.file('relay.crt')) };
    const ca = readFileSync(certs.file('ca.crt'));
    certs.remove();
    const relay = new Relay({ listen: '127.0.0.1:0', maxConnectionsPerAddress: 2, helloTimeout: 500 });
    await relay.listen();
    const rpc = new MsgpackRpcPort(relay, { listen: '127.0.0.1:0', tls });
    const { port } = await rpc.listen();
    try {
      const started = Date.now();
      const silent = await RawRpc.open(port);
      await silent.waitClosed(5_000);
      expect(Date.now() - started).toBeGreaterThanOrEqual(450);

      const secure = () => RawRpc.over(tlsConnect({ host: '127.0.0.1', port, ca, servername: 'localhost' }), 'secureConnect');
      const a = await secure();
      const b = await secure();
      expect(await a.call(1, 'Relay.List', [])).toEqual([1, 1, null, []]);
      expect(await b.call(1, 'Relay.List', [])).toEqual([1, 1, null, []]);
      const c = await secure();
      await c.waitClosed(5_000);
      expect(c.replies).toEqual([]);
      a.destroy();
      b.destroy();
    } finally {
      await rpc.close();
      await relay.close();
    }
  });
});

describe('connection counting and refusal logs', () => {
  it('admits a connection only under both limits, and forgets it on close', () => {
    const table = new AddressTable({ ...LIMIT_DEFAULTS, maxConnectionsPerAddress: 2, maxConnections: 3 });
    expect(table.admit('10.0.0.1')).toBeUndefined();
    expect(table.admit('10.0.0.1')).toBeUndefined();
    expect(table.admit('10.0.0.1')).toBe('address');
    expect(table.admit('10.0.0.2')).toBeUndefined();
    expect(table.admit('10.0.0.3')).toBe('total');
    expect(table.total).toBe(3);
    table.close('10.0.0.1');
    expect(table.admit('10.0.0.3')).toBeUndefined();
    expect(table.connections('10.0.0.1')).toBe(1);
  });

  it('logs one line per burst of refusals and counts the rest into the next', () => {
    const lines: Array<Record<string, unknown>> = [];
    const log = { warn: (fields: Record<string, unknown>) => lines.push(fields) } as unknown as Logger;
    let now = 0;
    const refusals = new RefusalLog(log, 'refused', 10_000, 60_000, () => now);
    for (let i = 0; i < 100; i++, now += 100) refusals.refused({ i });
    expect(lines).toEqual([{ i: 0, refusedSinceLastLine: 0 }]);
    now += 10_000; // quiet: the next refusal starts a new burst
    refusals.refused({ i: 100 });
    expect(lines.at(-1)).toEqual({ i: 100, refusedSinceLastLine: 99 });
    for (let i = 0; i < 700; i++, now += 100) refusals.refused({ i: 101 + i }); // a burst longer than a minute
    expect(lines).toHaveLength(3);
    expect(lines.at(-1)).toMatchObject({ refusedSinceLastLine: 600 });
  });
});
