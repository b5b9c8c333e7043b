import { describe, expect, it } from 'vitest';
import type { WireError } from '../src/errors.js';
import type { CallSink, RoutedCall } from '../src/relay/contracts.js';
import { NodeLink } from '../src/relay/node-link.js';
import { RelayedCall } from '../src/relay/relayed-call.js';
import { CloseCode } from '../src/wire/close-codes.js';
import { decode, encode } from '../src/wire/codec.js';
import { chunk, goaway, Kind, request, response, responseStream, type NodeMeta } from '../src/wire/messages.js';
import { STREAM_THRESHOLD } from '../src/wire/streams.js';
import { peerPair, settle, settleUntil, silent } from './helpers/links.js';

/** The relay's side of one node connection (node-link.ts) over an in-memory connection: the node is played by the test. */

/** A sink that records what the link hands back for each call. */
function sink() {
  const done: Array<{ call: RoutedCall; error: WireError | null; result: Uint8Array | null }> = [];
  const streams: Array<{ call: RoutedCall; event: string; bytes?: number }> = [];
  const s: CallSink = {
    complete: (call, error, result) => done.push({ call, error, result }),
    streamStart: (call, length) => streams.push({ call, event: 'start', bytes: length }),
    streamChunk: (call, final, bytes, ack) => {
      streams.push({ call, event: final ? 'final' : 'chunk', bytes: bytes.length });
      ack();
    },
  };
  return { s, done, streams };
}

function linked() {
  const pair = peerPair();
  const link = new NodeLink('lab-1', pair.relay, { Arith: ['Add', 'Multiply'], Legacy: ['*'] }, { region: 'eu' }, '10.0.0.5:7', silent, 'inst-1', 'relay-1');
  pair.relay.setHandlers({ message: (m) => link.onMessage(m), close: () => link.onClose() });
  const updates: boolean[] = [];
  link.onUpdate = () => updates.push(link.draining);
  return { ...pair, link, updates };
}

const meta: NodeMeta = { session: 's-1', address: '10.0.0.1:2', identity: 'alice', timeout: 5000 };

describe('NodeLink', () => {
  it('describes the node from its hello', () => {
    const { link } = linked();
    expect([link.name, link.instance, link.address, link.relays, link.local, link.labels]).toEqual([
      'lab-1',
      'inst-1',
      '10.0.0.5:7',
      ['relay-1'],
      true,
      { region: 'eu' },
    ]);
    expect([link.hasMethod('Arith', 'Add'), link.hasMethod('Arith', 'Divide'), link.hasMethod('Legacy', 'Any'), link.hasMethod('KV', 'Get')]).toEqual([
      true,
      false,
      true,
      false,
    ]);
    expect(link.methods('Arith')).toEqual(['Add', 'Multiply']);
    expect([link.available, link.draining, link.inFlight]).toEqual([true, false, 0]);
  });

  it('forwards a call under a tunnel id with the params untouched, and hands the answer back', async () => {
    const { link, of, peer, received } = linked();
    const { s, done } = sink();
    const params = encode([2, 3]);
    const call = new RelayedCall(s, 41, link, 'Arith.Multiply', 5000);
    link.forward(call, params, meta);
    expect([call.path, link.inFlight]).toEqual([link, 1]);
    await settleUntil(() => of(Kind.REQUEST).length === 1, 'the request at the node');
    const [req] = of(Kind.REQUEST);
    expect(req).toMatchObject({ id: call.tunnelId, method: 'Arith.Multiply', meta, stream: 0 });
    expect(Buffer.from(req!.params)).toEqual(Buffer.from(params));
    peer.send(response(req!.id, null, encode(6)));
    await settleUntil(() => done.length === 1, 'the answer');
    expect(done[0]!.call).toBe(call);
    expect(done[0]!.error).toBeNull();
    expect(decode(done[0]!.result!)).toBe(6);
    expect([link.inFlight, link.served]).toEqual([0, 1]);
    // An answer nobody waits for any more is dropped.
    peer.send(response(req!.id, null, encode(7)));
    await settle();
    await settle();
    expect(done).toHaveLength(1);
    expect(received).toHaveLength(1);
  });

  it('tells the node to stop a call it abandons, and drops its late answer', async () => {
    const { link, of, peer } = linked();
    const { s, done } = sink();
    const call = new RelayedCall(s, 1, link, 'Arith.Add', 5000);
    link.forward(call, encode([1, 2]), meta);
    call.abandon(true);
    expect(link.inFlight).toBe(0);
    await settleUntil(() => of(Kind.CANCEL).length === 1, 'the cancel at the node');
    expect(of(Kind.CANCEL)[0]!.id).toBe(call.tunnelId);
    const quiet = new RelayedCall(s, 2, link, 'Arith.Add', 5000);
    link.forward(quiet, encode([1, 2]), meta);
    quiet.abandon(false);
    peer.send(response(call.tunnelId, null, encode(3)));
    peer.send(response(quiet.tunnelId, null, encode(3)));
    await settleUntil(() => of(Kind.REQUEST).length === 2, 'both requests');
    await settle();
    expect(of(Kind.CANCEL)).toHaveLength(1);
    expect(done).toEqual([]);
  });

  it('sends large params in chunks after a head announcing their length', async () => {
    const { link, of } = linked();
    const { s } = sink();
    const params = new Uint8Array(STREAM_THRESHOLD * 2 + 10).fill(7);
    const call = new RelayedCall(s, 1, link, 'Arith.Add', 5000);
    link.forward(call, params, meta);
    expect(call.uploading).toBe(true);
    await settleUntil(() => of(Kind.CHUNK).some((c) => c.final), 'the final chunk at the node');
    expect(of(Kind.REQUEST)[0]).toMatchObject({ id: call.tunnelId, meta: { ...meta, stream: params.length } });
    const sent = of(Kind.CHUNK);
    expect(sent.every((c) => c.id === call.tunnelId)).toBe(true);
    expect(sent.reduce((n, c) => n + c.bytes.length, 0)).toBe(params.length);
  });

  it('passes a streamed result on, chunk by chunk, and counts it served after the final chunk', async () => {
    const { link, of, peer } = linked();
    const { s, streams, done } = sink();
    const call = new RelayedCall(s, 1, link, 'Arith.Add', 5000);
    link.forward(call, encode([1]), meta);
    await settleUntil(() => of(Kind.REQUEST).length === 1, 'the request');
    peer.send(responseStream(call.tunnelId, 5));
    peer.send(chunk(call.tunnelId, false, new Uint8Array(3)));
    peer.send(chunk(call.tunnelId, true, new Uint8Array(2)));
    await settleUntil(() => streams.length === 3, 'the stream at the sink');
    expect(streams.map((e) => [e.call, e.event, e.bytes])).toEqual([
      [call, 'start', 5],
      [call, 'chunk', 3],
      [call, 'final', 2],
    ]);
    expect([link.inFlight, link.served, done.length]).toEqual([0, 1, 0]);
  });

  it('refuses calls from the node', async () => {
    const { of, peer } = linked();
    peer.send(request(9, 'Caller.Do', encode([]), {}));
    await settleUntil(() => of(Kind.RESPONSE).length === 1, 'the refusal');
    expect(of(Kind.RESPONSE)[0]).toMatchObject({
      id: 9,
      error: { code: 'BAD_REQUEST', message: 'nodes serve calls; they cannot make them on this connection' },
    });
  });

  it('drains on the node GOAWAY, and presence hears of it', async () => {
    const { link, peer, updates } = linked();
    peer.send(goaway('node is stopping'));
    await settleUntil(() => updates.length === 1, 'the update');
    expect([link.goingAway, link.draining, link.available, link.drained]).toEqual([true, true, false, false]);
    expect(updates).toEqual([true]);
  });

  it('an operator drains and undrains it; quietly at its join', () => {
    const { link, updates } = linked();
    expect(link.drain(true, true)).toBe(true);
    expect(updates).toEqual([]);
    expect([link.drained, link.available]).toEqual([true, false]);
    expect(link.drain(true)).toBe(false);
    expect(link.drain(false)).toBe(true);
    expect(updates).toEqual([false]);
    expect(link.available).toBe(true);
  });

  it('tells the node a session closed, until the node is gone', async () => {
    const { link, of } = linked();
    link.closeSession('s-1');
    await settleUntil(() => of(Kind.SESSION_CLOSED).length === 1, 'the session close');
    expect(of(Kind.SESSION_CLOSED)[0]!.session).toBe('s-1');
    link.onClose();
    link.closeSession('s-2');
    await settle();
    expect(of(Kind.SESSION_CLOSED)).toHaveLength(1);
  });

  it('fails every call in flight NODE_LOST when the node goes, and is unavailable from then on', async () => {
    const { link, peerSocket, peerCloses } = linked();
    const { s, done } = sink();
    const a = new RelayedCall(s, 1, link, 'Arith.Add', 5000);
    const b = new RelayedCall(s, 2, link, 'Arith.Multiply', 5000);
    link.forward(a, encode([1]), meta);
    link.forward(b, encode([1]), meta);
    peerSocket.terminate();
    await settleUntil(() => done.length === 2, 'both calls failed');
    expect(done.map((d) => [d.call, d.error?.code, d.error?.message])).toEqual([
      [a, 'NODE_LOST', 'node lab-1 disconnected while the call was in flight; it may or may not have run'],
      [b, 'NODE_LOST', 'node lab-1 disconnected while the call was in flight; it may or may not have run'],
    ]);
    expect([link.closed, link.available, link.inFlight]).toEqual([true, false, 0]);
    expect(peerCloses).toHaveLength(1);
  });

  it('closes the node for an operator with 1008 and the reason', async () => {
    const { link, peerCloses } = linked();
    link.disconnect('disconnected by an operator');
    await settleUntil(() => peerCloses.length === 1, 'the close at the node');
    expect(peerCloses[0]).toEqual([CloseCode.POLICY, 'disconnected by an operator']);
  });
});
