import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { ErrorCode, TunnelError, type WireError } from '../src/errors.js';
import { Dispatcher, type DispatchHost, type RunningCall } from '../src/node/dispatcher.js';
import { SessionTable } from '../src/node/sessions.js';
import { decodeResult, encodeParams } from '../src/rpc/body.js';
import { withContext, type CallContext } from '../src/rpc/context.js';
import { DeadlineWheel } from '../src/rpc/deadlines.js';
import { ServiceRegistry } from '../src/rpc/registry.js';
import { decode } from '../src/wire/codec.js';
import { Connection } from '../src/wire/connection.js';
import { MemorySocket } from '../src/wire/memory-socket.js';
import { cancel, Kind, request, sessionClosed, type Message } from '../src/wire/messages.js';
import { CHUNK_SIZE } from '../src/wire/streams.js';
import { elapse as advance, settle, useFakeClock } from './helpers/fake-clock.js';

/**
 * The node's dispatcher held in the hand: its connection is one end of an in-memory socket pair,
 * the other end a Connection that plays the relay and records every answer. Timers are fake
 * (deadlines, the held-answer poll); setImmediate stays real, for `settle`.
 */

useFakeClock();

/** The fake clock on by `ms`, 10 ms at a time. */
const elapse = (ms: number, step = 10) => advance(ms, step);

/** A promise the test settles by hand: a handler that runs until told. */
function gate<T = unknown>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

type Response = Extract<Message, { kind: 1 }>;

interface Options {
  answersCancels?: boolean;
  localMeta?: (meta: Record<string, unknown>) => Record<string, unknown>;
  host?: Partial<DispatchHost>;
}

function harness(services: ServiceRegistry, opts: Options = {}) {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  const finished = { count: 0 };
  const deadlines = new DeadlineWheel<RunningCall>((call) => call.dispatcher.expire(call));
  const host: DispatchHost = {
    name: 'office-1',
    log,
    services,
    forwarded: new Map(),
    deadlines,
    defaultTimeout: 30_000,
    maxMessage: 1024 * 1024,
    maxReassembly: 1024 * 1024,
    maxBacklog: 1024 * 1024,
    maxInFlight: 100,
    callFinished: () => void finished.count++,
    served: 0,
    ...opts.host,
  };
  const [nodeEnd, relayEnd] = MemorySocket.pair();
  const sessions = new SessionTable();
  // The dispatcher is made right after its connection; messages arrive on a later microtask.
  const conn = new Connection(nodeEnd, { message: (m) => dispatcher.onMessage(m), close: () => {} }, { log, heartbeatTimeout: 0 });
  const dispatcher: Dispatcher = new Dispatcher(host, conn, sessions, opts.answersCancels ?? false, opts.localMeta);
  const received: Message[] = [];
  const relay = new Connection(relayEnd, { message: (m) => received.push(m), close: () => {} }, { log, heartbeatTimeout: 0 });
  let nextId = 1;
  return {
    host,
    deadlines,
    dispatcher,
    sessions,
    relay,
    relayEnd,
    nodeEnd,
    received,
    lines,
    finished,
    /** The relay sends a request; returns its id. */
    call(method: string, args: unknown[], meta: Record<string, unknown> = {}, id = nextId++): number {
      relay.send(request(id, method, encodeParams(args), { session: 's1', address: '10.0.0.7:5000', identity: null, timeout: 5_000, ...meta }));
      return id;
    },
    responses: () => received.filter((m): m is Response => m.kind === Kind.RESPONSE),
    answerTo(id: number): Response | undefined {
      return received.find((m): m is Response => m.kind === Kind.RESPONSE && m.id === id);
    },
    resultOf(id: number): unknown {
      const r = received.find((m): m is Response => m.kind === Kind.RESPONSE && m.id === id);
      if (!r) throw new Error(`no answer to ${id}; got ${JSON.stringify(received.map((m) => m.kind))}`);
      if (r.error) throw new Error(`answer to ${id} is an error: ${r.error.code} ${r.error.message}`);
      return decodeResult(r.result);
    },
    errorOf(id: number): WireError {
      const r = received.find((m): m is Response => m.kind === Kind.RESPONSE && m.id === id);
      if (!r?.error) throw new Error(`no error answer to ${id}; got ${JSON.stringify(r)}`);
      return r.error;
    },
  };
}

function arith(): ServiceRegistry {
  return new ServiceRegistry().register('Arith', {
    Multiply: (a: number, b: number) => a * b,
    Add: (...xs: number[]) => xs.reduce((s, x) => s + x, 0),
  });
}

describe('dispatcher: registry lookup and answers', () => {
  it('runs the method with exactly the caller arguments and answers with its result', async () => {
    const h = harness(arith());
    const a = h.call('Arith.Multiply', [6, 7]);
    const b = h.call('Arith.Add', [1, 2, 3, 4]);
    await settle();
    expect(h.resultOf(a)).toBe(42);
    expect(h.resultOf(b)).toBe(10);
    expect(h.host.served).toBe(2);
    expect(h.finished.count).toBe(2);
    expect(h.dispatcher.size).toBe(0);
    expect(h.deadlines.pending).toBe(0);
  });

  it('an unknown service is NO_SERVICE naming what the node serves; an unknown method NO_METHOD naming the methods', async () => {
    const h = harness(arith());
    const a = h.call('Nope.Multiply', [1]);
    const b = h.call('Arith.Divide', [1, 2]);
    await settle();
    expect(h.errorOf(a)).toMatchObject({ code: ErrorCode.NO_SERVICE, message: 'this node does not serve Nope; it serves Arith' });
    expect(h.errorOf(b)).toMatchObject({ code: ErrorCode.NO_METHOD, message: 'service Arith has no method Divide; methods: Add, Multiply' });
    // Refused before running: nothing counted as served, no deadline left behind.
    expect(h.host.served).toBe(0);
    expect(h.deadlines.pending).toBe(0);
  });

  it('checks the method name again (a direct caller, or a relay that does not): BAD_REQUEST', async () => {
    const h = harness(arith());
    h.dispatcher.onMessage({ kind: Kind.REQUEST, id: 9, method: 'NoDot', params: encodeParams([]), meta: {}, stream: 0 });
    await settle();
    expect(h.errorOf(9)).toMatchObject({ code: ErrorCode.BAD_REQUEST, message: 'method "NoDot" must be Service.Method' });
  });

  it('params that are not a MessagePack array are BAD_REQUEST', async () => {
    const h = harness(arith());
    h.dispatcher.onMessage({ kind: Kind.REQUEST, id: 3, method: 'Arith.Add', params: Buffer.from([0x01]), meta: {}, stream: 0 });
    await settle();
    expect(h.errorOf(3)).toMatchObject({ code: ErrorCode.BAD_REQUEST, message: 'params must be a MessagePack array' });
  });

  it('a handler that throws an Error answers APP_ERROR with its message, and the operator sees a warning', async () => {
    const services = new ServiceRegistry().register('Shop', {
      Buy: () => {
        throw new Error('the till is closed');
      },
    });
    const h = harness(services);
    const id = h.call('Shop.Buy', []);
    await settle();
    expect(h.errorOf(id)).toEqual({ code: ErrorCode.APP_ERROR, message: 'the till is closed' });
    const warn = h.lines.find((l) => l.msg === 'handler threw');
    expect(warn).toMatchObject({ method: 'Shop.Buy', level: 40 });
    expect(h.host.served).toBe(1);
  });

  it("a handler's own TunnelError travels unchanged (its code and data), without a warning", async () => {
    const services = new ServiceRegistry().register('Shop', {
      Buy: async () => {
        await Promise.resolve();
        throw new TunnelError('OUT_OF_STOCK', 'no more apples', { data: { left: 0 } });
      },
    });
    const h = harness(services);
    const id = h.call('Shop.Buy', []);
    await settle();
    expect(h.errorOf(id)).toEqual({ code: 'OUT_OF_STOCK', message: 'no more apples', data: { left: 0 } });
    expect(h.lines.some((l) => l.msg === 'handler threw')).toBe(false);
  });

  it('a result that cannot be encoded is APP_ERROR naming the method', async () => {
    const services = new ServiceRegistry().register('Bad', { Fn: () => ({ big: 2n ** 70n }) });
    const h = harness(services);
    const id = h.call('Bad.Fn', []);
    await settle();
    const err = h.errorOf(id);
    expect(err.code).toBe(ErrorCode.APP_ERROR);
    expect(err.message).toMatch(/^Bad\.Fn returned a value that cannot be encoded: .*does not fit in 64 bits/);
  });

  it('a result over what the relay passes (its welcome) is TOO_LARGE, with both sizes', async () => {
    const services = new ServiceRegistry().register('Blob', { Get: (n: number) => Buffer.alloc(n, 1) });
    const h = harness(services);
    h.dispatcher.peerMaxMessage = 1000;
    const small = h.call('Blob.Get', [10]);
    const big = h.call('Blob.Get', [2000]);
    await settle();
    expect(Buffer.from(h.resultOf(small) as Uint8Array)).toEqual(Buffer.alloc(10, 1));
    expect(h.errorOf(big)).toMatchObject({ code: ErrorCode.TOO_LARGE });
    expect(h.errorOf(big).message).toMatch(/^the result of Blob\.Get is 200\d bytes; the relay passes at most 1000$/);
  });

  it('a second request under an id that is still running is BAD_REQUEST; the first goes on', async () => {
    const g = gate<number>();
    const services = new ServiceRegistry().register('Slow', { Run: () => g.promise });
    const h = harness(services);
    h.call('Slow.Run', [], {}, 5);
    await settle();
    h.call('Slow.Run', [], {}, 5);
    await settle();
    expect(h.errorOf(5)).toMatchObject({ code: ErrorCode.BAD_REQUEST, message: 'request id 5 is already running' });
    g.resolve(99);
    await settle();
    const answers = h.responses().filter((r) => r.id === 5);
    expect(answers).toHaveLength(2);
    expect(decode(answers[1]!.result!)).toBe(99);
  });

  it('gives a withContext handler the caller, node, session, method and deadline', async () => {
    let seen: CallContext | undefined;
    const services = new ServiceRegistry().register('Who', {
      Am: withContext((ctx: CallContext, x: number) => {
        seen = ctx;
        return x + 1;
      }),
    });
    const h = harness(services);
    const now = Date.now();
    const id = h.call('Who.Am', [1], { session: 'sess-9', address: '192.0.2.1:4444', identity: 'alice', timeout: 2_000 });
    await settle();
    expect(h.resultOf(id)).toBe(2);
    expect(seen).toBeDefined();
    expect(seen!.caller).toEqual({ address: '192.0.2.1:4444', identity: 'alice' });
    expect(seen!.node).toBe('office-1');
    expect(seen!.method).toBe('Who.Am');
    expect(seen!.session.id).toBe('sess-9');
    expect(seen!.deadline).toBe(now + 2_000);
    expect(h.sessions.has('sess-9')).toBe(true);
  });

  it('params streamed in chunks run once the last chunk is in, with the whole body', async () => {
    const services = new ServiceRegistry().register('Blob', { Len: (b: Uint8Array) => b.length });
    const h = harness(services, { host: { maxMessage: 4 * CHUNK_SIZE } });
    const body = encodeParams([Buffer.alloc(CHUNK_SIZE + 1000, 3)]);
    h.relay.sendStream(request(1, 'Blob.Len', null, { session: 's1', address: 'a', identity: null, timeout: 5_000, stream: body.length }), 1, body);
    await elapse(50);
    expect(h.resultOf(1)).toBe(CHUNK_SIZE + 1000);
  });

  it("a direct caller's broadcast is answered as a list of one entry for this node", async () => {
    const h = harness(arith(), { answersCancels: true, localMeta: (meta) => ({ ...meta, session: 'direct-1', address: '127.0.0.1:1' }) });
    const id = h.call('Arith.Multiply', [3, 5], { broadcast: true });
    await settle();
    const [entry] = h.resultOf(id) as Array<{ node: string; error: unknown; result: Uint8Array }>;
    expect(entry!.node).toBe('office-1');
    expect(entry!.error).toBeNull();
    expect(decode(entry!.result)).toBe(15);
  });
});

describe('dispatcher: deadlines and cancellation', () => {
  function sleeper() {
    const signals: AbortSignal[] = [];
    const gates: Array<ReturnType<typeof gate>> = [];
    const services = new ServiceRegistry().register('Sleep', {
      For: withContext((ctx: CallContext) => {
        signals.push(ctx.signal);
        const g = gate();
        gates.push(g);
        return g.promise;
      }),
    });
    return { services, signals, gates };
  }

  it('through a relay: the deadline aborts the handler with TIMEOUT and the node stays silent', async () => {
    const s = sleeper();
    const h = harness(s.services);
    h.call('Sleep.For', [], { timeout: 100 });
    await settle();
    expect(h.dispatcher.size).toBe(1);
    await elapse(80);
    expect(s.signals[0]!.aborted).toBe(false);
    await elapse(60);
    expect(s.signals[0]!.aborted).toBe(true);
    expect((s.signals[0]!.reason as TunnelError).code).toBe(ErrorCode.TIMEOUT);
    expect((s.signals[0]!.reason as TunnelError).message).toBe('Sleep.For did not finish within 100 ms (its deadline)');
    // The handler finishing late is not answered: the relay answered the caller already.
    s.gates[0]!.resolve('late');
    await settle();
    expect(h.responses()).toHaveLength(0);
    expect(h.dispatcher.size).toBe(0);
  });

  it('a direct connection: the deadline answers TIMEOUT once; the late result is dropped', async () => {
    const s = sleeper();
    const h = harness(s.services, { answersCancels: true, localMeta: (m) => m });
    const id = h.call('Sleep.For', [], { timeout: 50 });
    await elapse(100);
    expect(h.errorOf(id)).toMatchObject({ code: ErrorCode.TIMEOUT });
    s.gates[0]!.resolve('late');
    await settle();
    expect(h.responses()).toHaveLength(1);
  });

  it('no timeout in the request: the default applies', async () => {
    const s = sleeper();
    const h = harness(s.services, { host: { defaultTimeout: 300 } });
    h.call('Sleep.For', [], { timeout: undefined });
    await elapse(250);
    expect(s.signals[0]!.aborted).toBe(false);
    await elapse(100);
    expect(s.signals[0]!.aborted).toBe(true);
  });

  it("the caller's cancel aborts the handler with CANCELLED; through a relay nothing is answered", async () => {
    const s = sleeper();
    const h = harness(s.services);
    const id = h.call('Sleep.For', []);
    await settle();
    h.relay.send(cancel(id));
    await settle();
    expect(s.signals[0]!.aborted).toBe(true);
    expect((s.signals[0]!.reason as TunnelError).code).toBe(ErrorCode.CANCELLED);
    s.gates[0]!.resolve(1);
    await settle();
    expect(h.responses()).toHaveLength(0);
    expect(h.deadlines.pending).toBe(0);
  });

  it("a direct caller's cancel is answered CANCELLED by the node", async () => {
    const s = sleeper();
    const h = harness(s.services, { answersCancels: true, localMeta: (m) => m });
    const id = h.call('Sleep.For', []);
    await settle();
    h.relay.send(cancel(id));
    await settle();
    expect(h.errorOf(id)).toEqual({ code: ErrorCode.CANCELLED, message: 'Sleep.For was cancelled by the caller' });
  });

  it('a cancel of an unknown id does nothing', async () => {
    const s = sleeper();
    const h = harness(s.services, { answersCancels: true, localMeta: (m) => m });
    h.call('Sleep.For', [], {}, 1);
    await settle();
    h.relay.send(cancel(77));
    await settle();
    expect(s.signals[0]!.aborted).toBe(false);
    expect(h.responses()).toHaveLength(0);
  });

  it("a closed session aborts that session's handlers only", async () => {
    const s = sleeper();
    const h = harness(s.services);
    h.call('Sleep.For', [], { session: 'gone' });
    h.call('Sleep.For', [], { session: 'stays' });
    await settle();
    h.relay.send(sessionClosed('gone'));
    await settle();
    expect(s.signals[0]!.aborted).toBe(true);
    expect((s.signals[0]!.reason as TunnelError).message).toBe('caller disconnected');
    expect(s.signals[1]!.aborted).toBe(false);
    expect(h.sessions.has('gone')).toBe(false);
    expect(h.sessions.has('stays')).toBe(true);
  });

  it('drop() aborts every call with the reason given and clears the deadlines', async () => {
    const s = sleeper();
    const h = harness(s.services);
    h.call('Sleep.For', []);
    h.call('Sleep.For', []);
    await settle();
    expect(h.deadlines.pending).toBe(2);
    h.dispatcher.drop(new TunnelError(ErrorCode.NODE_LOST, 'tunnel gone'));
    expect(s.signals.map((x) => (x.reason as TunnelError).message)).toEqual(['tunnel gone', 'tunnel gone']);
    expect(h.dispatcher.size).toBe(0);
    expect(h.deadlines.pending).toBe(0);
    expect(h.finished.count).toBe(1);
  });
});

describe('dispatcher: in-flight limit and backlog', () => {
  it('refuses OVERLOADED past --max-in-flight, and takes calls again once one finishes', async () => {
    const gates: Array<ReturnType<typeof gate>> = [];
    const services = new ServiceRegistry().register('Slow', {
      Run: () => {
        const g = gate();
        gates.push(g);
        return g.promise;
      },
    });
    const h = harness(services, { host: { maxInFlight: 2 } });
    h.call('Slow.Run', [], {}, 1);
    h.call('Slow.Run', [], {}, 2);
    h.call('Slow.Run', [], {}, 3);
    await settle();
    expect(h.errorOf(3)).toEqual({
      code: ErrorCode.OVERLOADED,
      message: 'node office-1 already runs 2 calls on this connection (its --max-in-flight); try again shortly',
    });
    expect(gates).toHaveLength(2);
    gates[0]!.resolve('one');
    await settle();
    h.call('Slow.Run', [], {}, 4);
    await settle();
    expect(gates).toHaveLength(3);
    expect(h.answerTo(4)).toBeUndefined();
  });

  it('holds answers while the relay does not read; the session over --max-backlog is refused, another is not; all leave once it reads', async () => {
    const services = new ServiceRegistry().register('Blob', { Get: (n: number) => Buffer.alloc(n, 2) });
    const h = harness(services, { host: { maxBacklog: 500 } });
    h.relayEnd.stopReading();
    h.call('Blob.Get', [1000], { session: 'a' }, 1); // sent: the socket was empty
    h.call('Blob.Get', [1000], { session: 'a' }, 2); // held: the backlog is over 500
    await settle();
    expect(h.nodeEnd.bufferedAmount).toBeGreaterThan(1000);
    expect(h.nodeEnd.bufferedAmount).toBeLessThan(2000);
    h.call('Blob.Get', [10], { session: 'a' }, 3);
    h.call('Blob.Get', [10], { session: 'b' }, 4);
    await settle();
    h.relayEnd.startReading();
    await settle();
    expect(h.errorOf(3)).toMatchObject({ code: ErrorCode.OVERLOADED });
    expect(h.errorOf(3).message).toMatch(/--max-backlog of 500 bytes/);
    // Session b's call ran; its answer waits behind the held one of session a.
    expect(h.answerTo(4)).toBeUndefined();
    await elapse(20, 5);
    expect((h.resultOf(2) as Uint8Array).length).toBe(1000);
    expect((h.resultOf(4) as Uint8Array).length).toBe(10);
    expect(h.responses().map((r) => r.id)).toEqual([1, 3, 2, 4]);
    // Nothing is held any more: session a is served again.
    h.call('Blob.Get', [5], { session: 'a' }, 5);
    await settle();
    expect((h.resultOf(5) as Uint8Array).length).toBe(5);
  });

  it('every session is refused once held answers of all of them reach 16 times --max-backlog', async () => {
    const services = new ServiceRegistry().register('Blob', { Get: (n: number) => Buffer.alloc(n, 2) });
    const h = harness(services, { host: { maxBacklog: 100 } });
    h.relayEnd.stopReading();
    // One answer per session, each within its own share, 17 of them: 1700 held bytes > 16 × 100.
    for (let i = 0; i < 18; i++) h.call('Blob.Get', [100], { session: `s${i}` }, i + 1);
    await settle();
    h.call('Blob.Get', [1], { session: 'fresh' }, 50);
    await settle();
    h.relayEnd.startReading();
    await settle();
    expect(h.errorOf(50)).toMatchObject({ code: ErrorCode.OVERLOADED });
  });

  it('answers held back are forgotten when the connection drops its calls', async () => {
    const services = new ServiceRegistry().register('Blob', { Get: (n: number) => Buffer.alloc(n, 2) });
    const h = harness(services, { host: { maxBacklog: 100 } });
    h.relayEnd.stopReading();
    h.call('Blob.Get', [500], {}, 1);
    h.call('Blob.Get', [500], {}, 2);
    await settle();
    h.dispatcher.drop(new TunnelError(ErrorCode.NODE_LOST, 'gone'));
    h.relayEnd.startReading();
    await elapse(20, 5);
    expect(h.responses().map((r) => r.id)).toEqual([1]);
  });
});
