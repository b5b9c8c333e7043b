import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { ErrorCode, NoNodeReason, type TunnelError, type WireError } from '../src/errors.js';
import { Dispatcher, type DispatchHost, type RunningCall } from '../src/node/dispatcher.js';
import { SessionTable } from '../src/node/sessions.js';
import { InCalls, type InCallsHost } from '../src/relay/cluster/calls-in.js';
import { Cluster } from '../src/relay/cluster/cluster.js';
import { HopStream } from '../src/relay/cluster/hop-stream.js';
import { checkClusterOptions, clusterServer } from '../src/relay/cluster/options.js';
import type { Channel, ClusterLink, PresenceMessage } from '../src/relay/cluster/link.js';
import { ClusterKind, pack, unpack, type ClusterMessage } from '../src/relay/cluster/messages.js';
import { NodeDirectory } from '../src/relay/directory.js';
import { NodeLink } from '../src/relay/node-link.js';
import { decodeResult, encodeParams } from '../src/rpc/body.js';
import { withContext, type CallContext } from '../src/rpc/context.js';
import { DeadlineWheel } from '../src/rpc/deadlines.js';
import { ServiceRegistry } from '../src/rpc/registry.js';
import { AddressError } from '../src/util/address.js';
import { Connection } from '../src/wire/connection.js';
import { MemorySocket } from '../src/wire/memory-socket.js';
import { CHUNK_SIZE, STREAM_WINDOW } from '../src/wire/streams.js';
import { elapse as advance, settle, useFakeClock } from './helpers/fake-clock.js';

/**
 * The calls other relays send to this relay's nodes (calls-in.ts), held in the hand: the other relay
 * is a fake NATS link the test speaks through; the node is a real NodeLink whose connection is an
 * in-memory socket pair, with the node's real Dispatcher at the far end. So an open from a peer goes
 * all the way to a handler and its answer all the way back. Timers are fake; setImmediate is real.
 */

const log = pino({ level: 'silent' });

useFakeClock();

/** Lets deliveries settle a few times: an open crosses the bus, the relay link, the node and back. */
async function flush(times = 4): Promise<void> {
  for (let i = 0; i < times; i++) await settle();
}

/** The fake clock on by `ms`, 10 ms at a time. */
const elapse = (ms: number, step = 10) => advance(ms, step);

/** What NATS would carry, checked on the way. */
const wire = (message: unknown[]): ClusterMessage => unpack(pack(message));

/** An in-memory bus of cluster links: inbox messages only (these parts use no presence or requests). */
class FakeBus {
  readonly links = new Map<string, FakeLink>();

  link(): FakeLink {
    const l = new FakeLink(this);
    this.links.set(l.id, l);
    return l;
  }
}

class FakeLink implements ClusterLink {
  readonly id = randomBytes(8).toString('hex');
  connected = false;
  count = 0;
  /** Every message this link received, with its channel. */
  readonly received: Array<{ channel: Channel; m: ClusterMessage; from: string }> = [];
  private readonly status: Array<(up: boolean) => void> = [];
  private readonly handlers: Record<Channel, Array<(m: ClusterMessage, from: string) => void>> = { open: [], m: [], s: [] };

  constructor(private readonly bus: FakeBus) {}

  up(up: boolean): void {
    if (up === this.connected) return;
    this.connected = up;
    if (up) this.count++;
    for (const h of this.status) h(up);
  }

  send(relayId: string, channel: Channel, message: unknown[]): void {
    if (!this.connected) return;
    const m = wire(message);
    const target = this.bus.links.get(relayId);
    queueMicrotask(() => {
      if (!target?.connected) return;
      target.received.push({ channel, m, from: this.id });
      target.handlers[channel].forEach((h) => h(m, this.id));
    });
  }

  publishPresence(): void {}
  request(): Promise<ClusterMessage | undefined> {
    return Promise.reject(new Error('no requests in these tests'));
  }
  warnOnce(): void {}
  onStatus(handler: (up: boolean) => void): void {
    this.status.push(handler);
  }
  onPresence(_handler: (m: PresenceMessage) => void): void {}
  onMessage(channel: Channel, handler: (m: ClusterMessage, from: string) => void): void {
    this.handlers[channel].push(handler);
  }
  onRequest(): void {}
  onUndelivered(): void {}
}

/** A node attached to this relay: NodeLink on the relay's end, the node's Dispatcher on the other. */
function attachNode(directory: NodeDirectory, name: string, services: ServiceRegistry) {
  const [relayEnd, nodeEnd] = MemorySocket.pair();
  // As the relay's WebSocket door makes it: a chunk from the node is acknowledged once passed on.
  const relayConn = new Connection(relayEnd, { message: (m) => link.onMessage(m), close: () => link.onClose() }, { log, heartbeatTimeout: 0, autoAck: false });
  const link: NodeLink = new NodeLink(name, relayConn, services.describe(), {}, '127.0.0.1:40000', log, undefined, 'relay-b');
  directory.add(link);
  const dispatchHost: DispatchHost = {
    name,
    log,
    services,
    forwarded: new Map(),
    deadlines: new DeadlineWheel<RunningCall>((call) => call.dispatcher.expire(call)),
    defaultTimeout: 30_000,
    maxMessage: 1024 * 1024,
    maxReassembly: 1024 * 1024,
    maxBacklog: 1024 * 1024,
    maxInFlight: 100,
    callFinished: () => {},
    served: 0,
  };
  const sessions = new SessionTable();
  const nodeConn = new Connection(nodeEnd, { message: (m) => dispatcher.onMessage(m), close: () => {} }, { log, heartbeatTimeout: 0 });
  const dispatcher: Dispatcher = new Dispatcher(dispatchHost, nodeConn, sessions, false);
  return { link, dispatcher, sessions, dispatchHost };
}

/** Services whose handlers the test can watch: Arith answers at once, Sleep.For waits until aborted. */
function services() {
  const contexts: CallContext[] = [];
  const registry = new ServiceRegistry()
    .register('Arith', { Multiply: (a: number, b: number) => a * b })
    .register('Blob', { Get: (n: number) => Buffer.alloc(n, 5) })
    .register('Sleep', {
      For: withContext((ctx: CallContext) => {
        contexts.push(ctx);
        return new Promise((_resolve, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason as Error)));
      }),
    });
  return { registry, contexts };
}

/** Relay B serves calls in (the one under test) for its node office-1; relay A is played by the test. */
function cluster(opts: Partial<InCallsHost> = {}) {
  const bus = new FakeBus();
  const a = bus.link();
  const b = bus.link();
  a.up(true);
  b.up(true);
  const directory = new NodeDirectory();
  const s = services();
  const node = attachNode(directory, 'office-1', s.registry);
  const host: InCallsHost = { relayName: 'relay-b', directory, maxTimeout: 60_000, maxNodeInFlight: 100, maxMessage: 1024 * 1024, ...opts };
  const calls = new InCalls(host, b);
  const meta = (extra: Record<string, unknown> = {}) => ({ session: 'sess-a', address: '198.51.100.4:5000', identity: 'alice', timeout: 5_000, ...extra });
  return {
    a,
    b,
    calls,
    node,
    contexts: s.contexts,
    /** Relay A opens a call on relay B. */
    open(callId: number, nodeName: string, method: string, args: unknown[] | null, extra: Record<string, unknown> = {}): void {
      a.send(b.id, 'open', [ClusterKind.OPEN, callId, nodeName, method, args === null ? null : encodeParams(args), meta(extra)]);
    },
    /** What relay A heard about its calls. */
    answers: () => a.received.filter((r) => r.channel === 'm').map((r) => r.m),
    answerTo(callId: number): { error: WireError | null; result: Uint8Array | null } | undefined {
      const r = a.received.find((x) => x.m.kind === ClusterKind.RESPONSE && x.m.callId === callId);
      return r?.m.kind === ClusterKind.RESPONSE ? r.m : undefined;
    },
  };
}

describe('calls in: from a peer relay to a local node and back', () => {
  it("a peer's call reaches the node's handler and its answer goes back to that peer", async () => {
    const c = cluster();
    c.open(7, 'office-1', 'Arith.Multiply', [6, 7]);
    await flush();
    const answer = c.answerTo(7);
    expect(answer?.error).toBeNull();
    expect(decodeResult(answer!.result)).toBe(42);
    expect(c.node.link.inFlight).toBe(0);
    expect(c.node.link.served).toBe(1);
    expect(c.answers()).toHaveLength(1);
    c.calls.stop();
  });

  it("the node sees the caller's session, address and identity; a deadline over the relay's is capped", async () => {
    const c = cluster({ maxTimeout: 1_000 });
    const now = Date.now();
    c.open(1, 'office-1', 'Sleep.For', [], { timeout: 60_000 });
    await flush();
    const ctx = c.contexts[0]!;
    expect(ctx.session.id).toBe('sess-a');
    expect(ctx.caller).toEqual({ address: '198.51.100.4:5000', identity: 'alice' });
    expect(ctx.deadline).toBe(now + 1_000);
    c.calls.stop();
  });

  it('a call to a node that is not attached here is NO_NODE (node-not-found), naming this relay', async () => {
    const c = cluster();
    c.open(2, 'ghost', 'Arith.Multiply', [1, 2]);
    await flush();
    expect(c.answerTo(2)?.error).toEqual({
      code: ErrorCode.NO_NODE,
      message: 'node ghost is no longer attached to relay relay-b',
      data: { reason: NoNodeReason.NODE_NOT_FOUND },
    });
    expect(c.contexts).toHaveLength(0);
  });

  it('a method the node does not serve is NO_METHOD; a draining node is NO_NODE (draining)', async () => {
    const c = cluster();
    c.open(3, 'office-1', 'Arith.Divide', [1, 2]);
    await flush();
    expect(c.answerTo(3)?.error).toEqual({ code: ErrorCode.NO_METHOD, message: 'node office-1 does not serve Arith.Divide' });
    c.node.link.drain(true);
    c.open(4, 'office-1', 'Arith.Multiply', [1, 2]);
    await flush();
    expect(c.answerTo(4)?.error).toMatchObject({ code: ErrorCode.NO_NODE, data: { reason: NoNodeReason.DRAINING } });
  });

  it('refuses past the per-node limit (OVERLOADED), a call id in flight twice, and bad metadata', async () => {
    const c = cluster({ maxNodeInFlight: 1 });
    c.open(1, 'office-1', 'Sleep.For', []);
    await flush();
    c.open(1, 'office-1', 'Sleep.For', []);
    c.open(2, 'office-1', 'Arith.Multiply', [1, 2]);
    await flush();
    expect(c.answerTo(2)?.error).toMatchObject({
      code: ErrorCode.OVERLOADED,
      message: 'node office-1 already has 1 calls in flight (the limit); try again shortly',
    });
    // The duplicate hits the in-flight limit first: with room, it is BAD_REQUEST.
    const d = cluster();
    d.open(1, 'office-1', 'Sleep.For', []);
    await flush();
    d.open(1, 'office-1', 'Sleep.For', []);
    d.open(5, 'office-1', 'Arith.Multiply', [1, 2], { timeout: -1 });
    d.open(6, 'office-1', 'Arith.Multiply', [1, 2], { session: '' });
    d.open(8, 'office-1', 'Arith.Multiply', null);
    await flush();
    expect(d.answerTo(1)?.error).toEqual({ code: ErrorCode.BAD_REQUEST, message: 'call 1 is already in flight' });
    expect(d.answerTo(5)?.error).toEqual({ code: ErrorCode.BAD_REQUEST, message: 'meta.timeout must be a positive number' });
    expect(d.answerTo(6)?.error).toEqual({ code: ErrorCode.BAD_REQUEST, message: 'meta.session must be a string' });
    expect(d.answerTo(8)?.error).toEqual({ code: ErrorCode.BAD_REQUEST, message: 'open without params needs meta.stream' });
    expect(d.contexts).toHaveLength(1);
    c.calls.stop();
    d.calls.stop();
  });

  it('params over the relay limit are TOO_LARGE', async () => {
    const c = cluster({ maxMessage: 100 });
    c.open(1, 'office-1', 'Arith.Multiply', [Buffer.alloc(200), 1]);
    await flush();
    expect(c.answerTo(1)?.error).toMatchObject({ code: ErrorCode.TOO_LARGE });
  });
  it('a large answer crosses to the peer in chunks, one window at a time, as the peer acknowledges', async () => {
    const c = cluster();
    const size = 3 * STREAM_WINDOW + 1000;
    c.open(11, 'office-1', 'Blob.Get', [size]);
    await flush(12);
    const sent = () => c.answers().filter((m) => m.kind === ClusterKind.CHUNK) as Array<Extract<ClusterMessage, { kind: 8 }>>;
    const bytes = (chunks: Array<{ bytes: Uint8Array }>) => chunks.reduce((n, ch) => n + ch.bytes.length, 0);
    const head = c.answers().find((m) => m.kind === ClusterKind.RESPONSE_STREAM);
    expect(head).toMatchObject({ callId: 11 });
    const length = (head as { length: number }).length;
    expect(length).toBeGreaterThan(size);
    // Nothing acknowledged yet: one window and no more.
    expect(bytes(sent())).toBe(STREAM_WINDOW);
    for (let round = 0; round < 10 && !sent().some((ch) => ch.final); round++) {
      c.a.send(c.b.id, 's', [ClusterKind.ACK, 11, STREAM_WINDOW]);
      await flush(12);
      expect(bytes(sent())).toBeLessThanOrEqual(STREAM_WINDOW * (round + 2));
    }
    const chunks = sent();
    expect(chunks.at(-1)!.final).toBe(true);
    expect(chunks.every((ch) => ch.bytes.length <= CHUNK_SIZE)).toBe(true);
    expect(bytes(chunks)).toBe(length);
    expect(c.answerTo(11)).toBeUndefined();
    c.calls.stop();
  });
});

describe('calls in: cancellation', () => {
  it("the peer's cancel stops the handler on the node (CANCELLED); nothing is answered", async () => {
    const c = cluster();
    c.open(9, 'office-1', 'Sleep.For', []);
    await flush();
    expect(c.node.dispatcher.size).toBe(1);
    c.a.send(c.b.id, 's', [ClusterKind.CANCEL, 9]);
    await flush();
    const signal = c.contexts[0]!.signal;
    expect(signal.aborted).toBe(true);
    expect((signal.reason as TunnelError).code).toBe(ErrorCode.CANCELLED);
    expect(c.node.dispatcher.size).toBe(0);
    expect(c.node.link.inFlight).toBe(0);
    expect(c.answers()).toHaveLength(0);
    // A cancel for a call that is over is ignored.
    c.a.send(c.b.id, 's', [ClusterKind.CANCEL, 9]);
    await flush();
    expect(c.answers()).toHaveLength(0);
  });

  it('the deadline answers the peer TIMEOUT and the handler on the node is stopped', async () => {
    const c = cluster();
    c.open(3, 'office-1', 'Sleep.For', [], { timeout: 100 });
    await flush();
    await elapse(150);
    expect(c.answerTo(3)?.error).toEqual({ code: ErrorCode.TIMEOUT, message: 'Sleep.For on node office-1 did not answer within 100 ms' });
    // The node has its own copy of the deadline (the same 100 ms): either stops the handler.
    expect(c.contexts[0]!.signal.aborted).toBe(true);
    expect(c.node.dispatcher.size).toBe(0);
    expect(c.node.link.inFlight).toBe(0);
    expect(c.answers()).toHaveLength(1);
  });

  it('a peer gone: its calls are stopped on the node and its callers sessions closed there', async () => {
    const c = cluster();
    c.open(1, 'office-1', 'Sleep.For', []);
    await flush();
    expect(c.node.sessions.has('sess-a')).toBe(true);
    c.calls.peerGone(c.a.id);
    await flush();
    expect(c.contexts[0]!.signal.aborted).toBe(true);
    expect(c.node.sessions.has('sess-a')).toBe(false);
    expect(c.node.link.inFlight).toBe(0);
    c.calls.stop();
  });

  it("the peer's caller leaving closes its session on the node", async () => {
    const c = cluster();
    c.open(1, 'office-1', 'Sleep.For', []);
    await flush();
    c.a.send(c.b.id, 's', [ClusterKind.SESSION_CLOSED, 'sess-a', 'office-1']);
    await flush();
    expect(c.contexts[0]!.signal.aborted).toBe(true);
    expect((c.contexts[0]!.signal.reason as TunnelError).message).toBe('caller disconnected');
    expect(c.node.sessions.has('sess-a')).toBe(false);
    c.calls.stop();
  });

  it('NATS lost: calls in flight are stopped, and their relays hear NODE_LOST once it is back', async () => {
    const c = cluster();
    c.open(4, 'office-1', 'Sleep.For', []);
    await flush();
    c.b.up(false);
    await flush();
    expect(c.contexts[0]!.signal.aborted).toBe(true);
    expect(c.answers()).toHaveLength(0);
    c.b.up(true);
    await flush();
    expect(c.answerTo(4)?.error).toMatchObject({ code: ErrorCode.NODE_LOST });
    expect(c.answers()).toHaveLength(1);
  });

  it('the node going answers the peer NODE_LOST', async () => {
    const c = cluster();
    c.open(5, 'office-1', 'Sleep.For', []);
    await flush();
    c.node.link.disconnect('operator');
    await flush(8);
    expect(c.answerTo(5)?.error).toMatchObject({ code: ErrorCode.NODE_LOST });
    c.calls.stop();
  });
});

describe('Cluster (the facade), not started', () => {
  const options = { servers: ['nats://127.0.0.1:4222'], insecure: true };
  const host = {
    relayName: 'relay-b',
    log,
    directory: new NodeDirectory(),
    localLinks: () => [],
    allowedServices: (_n: string, s: string[]) => s,
    routeAdded: () => {},
    routeRemoved: () => {},
    yieldName: () => {},
    maxTimeout: 60_000,
    maxNodeInFlight: 100,
    maxMessage: 1024 * 1024,
  };

  it('is degraded with no peers until it connects, and reaches no relay', async () => {
    const c = new Cluster(host, options);
    expect(c.id).toMatch(/^[0-9a-f]{16}$/);
    expect(c.connected).toBe(false);
    expect(c.state).toBe('degraded');
    expect(c.peerNames).toEqual([]);
    expect(c.unreachable).toEqual([]);
    expect(c.peerUrls()).toEqual([]);
    expect(c.reachable('0123456789abcdef')).toBe(false);
    await c.stop();
    expect(new Cluster(host, options).id).not.toBe(c.id);
  });

  it('checks its options at construction: a bare-number NATS host is refused, as every address', () => {
    expect(() => new Cluster(host, { servers: ['9090:4222'], insecure: true })).toThrow(AddressError);
    expect(() => clusterServer('nats://127.1:4222')).toThrow(AddressError);
    expect(clusterServer('4222')).toBe('nats://localhost:4222');
    expect(clusterServer('tls://[::1]:4222/')).toBe('tls://[::1]:4222');
    expect(() => checkClusterOptions({ servers: ['nats://127.0.0.1:4222'], key: '/k', name: 'bad name' })).toThrow(/cluster option name "bad name"/);
    expect(() => checkClusterOptions({ servers: ['nats://127.0.0.1:4222'], key: '/k' })).toThrow(/the cluster NATS is open/);
    expect(() => checkClusterOptions({ servers: ['tls://127.0.0.1:4222'], key: '/k' })).not.toThrow();
    expect(() => new Cluster(host, { servers: [] })).toThrow('cluster option servers must list at least one NATS server');
    expect(() => new Cluster(host, { servers: ['nats://127.0.0.1:4222'] })).toThrow(/needs a cluster key/);
    expect(() => new Cluster(host, { ...options, user: 'u' })).toThrow('cluster option user needs password');
  });
});

describe('HopStream: the window of one stream between relays', () => {
  const chunk = (n: number) => new Uint8Array(n);

  it('sends up to one window unacknowledged; each chunk is released to its sender once acknowledged', () => {
    const published: Array<[boolean, number]> = [];
    const s = new HopStream((final, bytes) => published.push([final, bytes.length]));
    const acked: number[] = [];
    for (let i = 0; i < 6; i++) s.push(i === 5, chunk(CHUNK_SIZE), () => acked.push(i));
    expect(published).toHaveLength(STREAM_WINDOW / CHUNK_SIZE);
    expect(s.idle).toBe(false);
    expect(s.ack(CHUNK_SIZE + 10)).toBe(true);
    expect(acked).toEqual([0]);
    expect(published).toHaveLength(STREAM_WINDOW / CHUNK_SIZE + 1);
    expect(s.ack(4 * CHUNK_SIZE - 10)).toBe(true);
    expect(acked).toEqual([0, 1, 2, 3, 4]);
    expect(s.idle).toBe(false);
    expect(s.ack(CHUNK_SIZE)).toBe(true);
    expect(acked).toEqual([0, 1, 2, 3, 4, 5]);
    expect(published.at(-1)).toEqual([true, CHUNK_SIZE]);
    expect(s.idle).toBe(true);
  });

  it('an acknowledgement of more than was sent is refused and changes nothing', () => {
    const s = new HopStream(() => {});
    s.push(false, chunk(100));
    expect(s.ack(101)).toBe(false);
    expect(s.ack(100)).toBe(true);
    expect(s.idle).toBe(true);
  });

  it('an empty final chunk is released at once when nothing is owed, else after what is before it', () => {
    const acked: string[] = [];
    const s = new HopStream(() => {});
    s.push(true, chunk(0), () => acked.push('alone'));
    expect(acked).toEqual(['alone']);
    const t = new HopStream(() => {});
    t.push(false, chunk(10), () => acked.push('data'));
    t.push(true, chunk(0), () => acked.push('end'));
    expect(acked).toEqual(['alone']);
    t.ack(10);
    expect(acked).toEqual(['alone', 'data', 'end']);
  });

  it('close releases every waiting sender and sends nothing more', () => {
    let published = 0;
    const s = new HopStream(() => published++);
    const acked: number[] = [];
    for (let i = 0; i < 6; i++) s.push(false, chunk(CHUNK_SIZE), () => acked.push(i));
    s.close();
    expect(acked).toEqual([0, 1, 2, 3, 4, 5]);
    s.push(true, chunk(1), () => acked.push(6));
    expect(acked.at(-1)).toBe(6);
    expect(published).toBe(STREAM_WINDOW / CHUNK_SIZE);
  });
});
