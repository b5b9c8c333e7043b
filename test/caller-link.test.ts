import { afterEach, describe, expect, it, vi } from 'vitest';
import type { WireError } from '../src/errors.js';
import { CallerLink, relayDeadlines } from '../src/relay/caller-link.js';
import type { CallerLimits, CallerOutput, CallObserver } from '../src/relay/contracts.js';
import { NodeDirectory } from '../src/relay/directory.js';
import { NodeLink } from '../src/relay/node-link.js';
import { PermissionTable } from '../src/relay/permissions.js';
import { Presence } from '../src/relay/presence.js';
import { decode, encode } from '../src/wire/codec.js';
import { Kind, response, type Message } from '../src/wire/messages.js';
import { peerPair, settle, settleUntil, silent, type PeerPair } from './helpers/links.js';

/**
 * The relay's side of one caller (caller-link.ts) in the hand: real node links over in-memory
 * connections to nodes played by the test, and a caller output that records what the caller is
 * sent. No socket, no Relay.
 */

afterEach(() => {
  vi.useRealTimers();
});

const limits: CallerLimits = {
  defaultTimeout: 30_000,
  maxTimeout: 60_000,
  maxMessage: 1 << 20,
  maxCallerInFlight: 8,
  maxNodeInFlight: 4,
  maxReassembly: 4 << 20,
};

interface FakeNode extends PeerPair {
  link: NodeLink;
}

/** A node serving Arith (answered at once: a product) and Slow (never answered), linked into `directory`. */
function fakeNode(directory: NodeDirectory, name: string, labels: Record<string, string> = {}): FakeNode {
  const pair = peerPair();
  const link = new NodeLink(name, pair.relay, { Arith: ['Multiply'], Slow: ['Sleep'] }, labels, '10.0.0.9:1', silent, `${name}-i`, 'relay-1');
  pair.relay.setHandlers({ message: (m) => link.onMessage(m), close: () => link.onClose() });
  pair.onPeerMessage = (m) => {
    if (m.kind !== Kind.REQUEST || m.method !== 'Arith.Multiply') return;
    const [a, b] = decode(m.params) as [number, number];
    pair.peer.send(response(m.id, null, encode(a * b)));
  };
  directory.add(link);
  return { ...pair, link };
}

function caller(options: { identity?: string | null; permissions?: PermissionTable; limits?: Partial<CallerLimits> } = {}) {
  const directory = new NodeDirectory();
  if (options.permissions) directory.permissions = options.permissions;
  const answers: Array<{ id: number; error: WireError | null; result: unknown }> = [];
  const out: CallerOutput = {
    respond: (id, error, result) => answers.push({ id, error, result: result === null ? null : decode(result) }),
  };
  const seen: string[] = [];
  const observer: CallObserver = {
    started: (c) => seen.push(`started ${c.method}`),
    ended: (method, code, c) => seen.push(`ended ${method} ${code}${c ? '' : ' (refused)'}`),
    refused: (who, method, reason) => seen.push(`refused ${who.identity} ${method}: ${reason}`),
  };
  const deadlines = relayDeadlines();
  const link = new CallerLink({
    session: 's-1',
    out,
    address: '10.0.0.1:5',
    identity: options.identity ?? null,
    directory,
    limits: { ...limits, ...options.limits },
    deadlines,
    log: silent,
    presence: new Presence(directory, silent),
    observer,
  });
  let nextId = 1;
  /** The caller sends a request; its id is returned. */
  const call = (method: string, args: unknown[], meta: Record<string, unknown> = {}, id = nextId++): number => {
    link.onMessage({ kind: Kind.REQUEST, id, method, params: encode(args), meta, stream: 0 });
    return id;
  };
  return { link, directory, answers, seen, deadlines, call };
}

const requestsAt = (node: PeerPair) => node.of(Kind.REQUEST) as Array<Extract<Message, { kind: 0 }>>;

describe('CallerLink', () => {
  it('routes a request to a node and hands the answer back under the caller’s id', async () => {
    const { directory, answers, seen, call } = caller();
    const node = fakeNode(directory, 'lab-1');
    const id = call('Arith.Multiply', [6, 7], {}, 41);
    await settleUntil(() => answers.length === 1, 'the answer');
    expect(answers).toEqual([{ id, error: null, result: 42 }]);
    const [req] = requestsAt(node);
    expect(req!.meta).toEqual({ session: 's-1', address: '10.0.0.1:5', identity: null, timeout: 30_000 });
    expect(seen).toEqual(['started Arith.Multiply', 'ended Arith.Multiply OK']);
  });

  it('a cancel from the caller answers CANCELLED, tells the node, and drops the late answer', async () => {
    const { link, directory, answers, seen, call } = caller();
    const node = fakeNode(directory, 'lab-1');
    const id = call('Slow.Sleep', [10_000]);
    await settleUntil(() => requestsAt(node).length === 1, 'the request at the node');
    expect(link.inFlightIds).toEqual([id]);
    link.onMessage({ kind: Kind.CANCEL, id });
    expect(answers).toEqual([{ id, error: { code: 'CANCELLED', message: 'Slow.Sleep was cancelled by the caller' }, result: null }]);
    await settleUntil(() => node.of(Kind.CANCEL).length === 1, 'the cancel at the node');
    expect(node.of(Kind.CANCEL)[0]!.id).toBe(requestsAt(node)[0]!.id);
    node.peer.send(response(requestsAt(node)[0]!.id, null, encode('late')));
    await settle();
    await settle();
    expect(answers).toHaveLength(1);
    expect(seen).toEqual(['started Slow.Sleep', 'ended Slow.Sleep CANCELLED']);
    expect(link.inFlight).toBe(0);
  });

  it('answers TIMEOUT when the deadline passes, and tells the node to stop', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
    const { directory, answers, deadlines, call } = caller();
    const node = fakeNode(directory, 'lab-1');
    const id = call('Slow.Sleep', [10_000], { timeout: 200 });
    await settleUntil(() => requestsAt(node).length === 1, 'the request at the node');
    expect(requestsAt(node)[0]!.meta.timeout).toBe(200);
    vi.advanceTimersByTime(150);
    expect(answers).toEqual([]);
    vi.advanceTimersByTime(100);
    expect(answers).toEqual([{ id, error: { code: 'TIMEOUT', message: 'Slow.Sleep on node lab-1 did not answer within 200 ms' }, result: null }]);
    expect(deadlines.pending).toBe(0);
    await settleUntil(() => node.of(Kind.CANCEL).length === 1, 'the cancel at the node');
  });

  it('answers NODE_LOST when the node goes with the call', async () => {
    const { directory, answers, call } = caller();
    const node = fakeNode(directory, 'lab-1');
    const id = call('Slow.Sleep', [10_000]);
    await settleUntil(() => requestsAt(node).length === 1, 'the request at the node');
    node.peerSocket.terminate();
    await settleUntil(() => answers.length === 1, 'the failure');
    expect(answers[0]).toMatchObject({ id, error: { code: 'NODE_LOST' } });
  });

  it('sends refusals back as they are, counted and audited, without reaching a node', async () => {
    const permissions = new PermissionTable({ callers: { alice: { call: ['Arith.Multiply'] } } });
    const { link, directory, answers, seen, call } = caller({ identity: 'alice', permissions });
    const node = fakeNode(directory, 'lab-1');
    call('Slow.Sleep', [1], {}, 1);
    call('NoDot', [], {}, 2);
    call('Arith.Multiply', [1, 1], { timeout: -1 }, 3);
    link.goingAway = 'relay is shutting down';
    call('Arith.Multiply', [1, 1], {}, 4);
    expect(answers.map((a) => [a.id, a.error?.code, a.error?.message])).toEqual([
      [1, 'FORBIDDEN', 'caller alice may not call Slow.Sleep on any node it can see (call= in the tokens file)'],
      [2, 'BAD_REQUEST', 'method "NoDot" must be Service.Method'],
      [3, 'BAD_REQUEST', 'metadata timeout must be a positive number of milliseconds'],
      [4, 'GOING_AWAY', 'the relay is going away (relay is shutting down) and takes no new calls; reconnect and call again'],
    ]);
    expect(seen).toEqual([
      'refused alice Slow.Sleep: caller alice may not call Slow.Sleep on any node it can see (call= in the tokens file)',
      'ended Slow.Sleep FORBIDDEN (refused)',
      'ended (unknown) BAD_REQUEST (refused)',
      'ended Arith.Multiply BAD_REQUEST (refused)',
      'ended Arith.Multiply GOING_AWAY (refused)',
    ]);
    await settle();
    expect(requestsAt(node)).toEqual([]);
  });

  it('refuses a second request under an id in flight, and a node at its in-flight limit', async () => {
    const { directory, answers, call } = caller({ limits: { maxNodeInFlight: 1 } });
    fakeNode(directory, 'lab-1');
    call('Slow.Sleep', [1], {}, 5);
    call('Arith.Multiply', [1, 1], {}, 5);
    call('Arith.Multiply', [1, 1], {}, 6);
    expect(answers.map((a) => [a.id, a.error?.code, a.error?.message])).toEqual([
      [5, 'BAD_REQUEST', 'request id 5 is already in flight on this connection'],
      [6, 'OVERLOADED', 'node lab-1 already has 1 calls in flight (the limit); try again shortly'],
    ]);
  });

  it('keeps a session on the node of its first call, unless the call asks for no affinity', async () => {
    const { directory, answers, call } = caller();
    const a = fakeNode(directory, 'lab-1');
    const b = fakeNode(directory, 'lab-2');
    for (let i = 0; i < 3; i++) call('Arith.Multiply', [i, 2]);
    await settleUntil(() => answers.length === 3, 'three answers');
    expect([requestsAt(a).length, requestsAt(b).length]).toEqual([3, 0]);
    for (let i = 0; i < 4; i++) call('Arith.Multiply', [i, 2], { affinity: false });
    await settleUntil(() => answers.length === 7, 'seven answers');
    expect([requestsAt(a).length, requestsAt(b).length]).toEqual([5, 2]);
    // A call sent elsewhere by name does not move the session.
    call('Arith.Multiply', [1, 1], { node: 'lab-2' });
    call('Arith.Multiply', [1, 1]);
    await settleUntil(() => answers.length === 9, 'nine answers');
    expect([requestsAt(a).length, requestsAt(b).length]).toEqual([6, 3]);
    // A sticky node that drains is replaced.
    a.link.drain(true);
    call('Arith.Multiply', [1, 1]);
    call('Arith.Multiply', [1, 1]);
    await settleUntil(() => answers.length === 11, 'eleven answers');
    expect([requestsAt(a).length, requestsAt(b).length]).toEqual([6, 5]);
  });

  it('broadcasts to every matching node and answers with one entry per node', async () => {
    const { directory, answers, seen, call } = caller();
    const a = fakeNode(directory, 'lab-1', { region: 'eu' });
    const b = fakeNode(directory, 'lab-2', { region: 'eu' });
    const c = fakeNode(directory, 'us-1', { region: 'us' });
    const id = call('Arith.Multiply', [3, 4], { broadcast: true, where: { region: 'eu' } });
    await settleUntil(() => answers.length === 1, 'the broadcast answer');
    expect([requestsAt(a).length, requestsAt(b).length, requestsAt(c).length]).toEqual([1, 1, 0]);
    const entries = answers[0]!.result as Array<{ node: string; error: unknown; result: Uint8Array }>;
    expect(answers[0]!.id).toBe(id);
    expect(entries.map((e) => [e.node, e.error, decode(e.result)])).toEqual([
      ['lab-1', null, 12],
      ['lab-2', null, 12],
    ]);
    expect(seen).toEqual(['started Arith.Multiply', 'ended Arith.Multiply OK']);
  });

  it("answers the relay's own service itself", async () => {
    const { directory, answers, call } = caller();
    fakeNode(directory, 'lab-1', { region: 'eu' });
    const id = call('Relay.List', []);
    expect(answers).toHaveLength(1);
    expect(answers[0]).toMatchObject({ id, error: null, result: [{ name: 'lab-1', labels: { region: 'eu' } }] });
  });

  it('when the caller leaves, forgets its calls and tells every node that served it to drop the session', async () => {
    const { link, directory, answers, seen, call } = caller();
    const a = fakeNode(directory, 'lab-1');
    const b = fakeNode(directory, 'lab-2');
    call('Slow.Sleep', [1], { node: 'lab-1' });
    call('Arith.Multiply', [2, 2], { node: 'lab-2' });
    await settleUntil(() => answers.length === 1, 'the quick answer');
    link.onClose();
    expect(link.inFlight).toBe(0);
    await settleUntil(() => a.of(Kind.SESSION_CLOSED).length === 1 && b.of(Kind.SESSION_CLOSED).length === 1, 'both nodes told');
    expect(a.of(Kind.SESSION_CLOSED)[0]!.session).toBe('s-1');
    // SESSION_CLOSED aborts the node's handlers: no cancel besides.
    expect(a.of(Kind.CANCEL)).toEqual([]);
    expect(seen.slice(-1)).toEqual(['ended Slow.Sleep CANCELLED']);
    expect(answers).toHaveLength(1);
  });
});
