import { describe, expect, it } from 'vitest';
import { decode, decodeAll, encode } from '../src/wire/codec.js';
import * as m from '../src/wire/messages.js';
import { Kind, parse, ShapeError } from '../src/wire/messages.js';

const bin = (v: unknown) => encode(v);
const roundTrip = (value: unknown[]) => parse(decode(encode(value)));

describe('message shapes', () => {
  it('round-trips every message kind', () => {
    expect(roundTrip(m.request(7, 'Arith.Multiply', bin([2, 3]), { timeout: 500, node: 'n1' }))).toEqual({
      kind: Kind.REQUEST,
      id: 7,
      method: 'Arith.Multiply',
      params: bin([2, 3]),
      meta: { timeout: 500, node: 'n1' },
      stream: 0,
    });
    expect(roundTrip(m.response(7, null, bin(6)))).toEqual({ kind: Kind.RESPONSE, id: 7, error: null, result: bin(6) });
    expect(roundTrip(m.response(8, { code: 'TIMEOUT', message: 'late', data: { ms: 5 } }, bin(1)))).toEqual({
      kind: Kind.RESPONSE,
      id: 8,
      error: { code: 'TIMEOUT', message: 'late', data: { ms: 5 } },
      result: null,
    });
    expect(roundTrip(m.notify('Relay.presence', bin([1])))).toEqual({ kind: Kind.NOTIFY, method: 'Relay.presence', params: bin([1]) });
    expect(roundTrip(m.cancel(9))).toEqual({ kind: Kind.CANCEL, id: 9 });
    const hello = { version: 1, role: 'node' as const, name: 'office-1', services: { Arith: ['Multiply'] }, labels: { region: 'eu' } };
    expect(roundTrip(m.hello(hello))).toEqual({ kind: Kind.HELLO, hello });
    expect(roundTrip(m.welcome({ version: 1, relay: 'r', session: 's1' }))).toEqual({ kind: Kind.WELCOME, welcome: { version: 1, relay: 'r', session: 's1' } });
    expect(roundTrip(m.sessionClosed('s1'))).toEqual({ kind: Kind.SESSION_CLOSED, session: 's1' });
    expect(roundTrip(m.goaway('bye'))).toEqual({ kind: Kind.GOAWAY, reason: 'bye' });
    expect(roundTrip(m.chunk(7, true, bin('x')))).toEqual({ kind: Kind.CHUNK, id: 7, final: true, bytes: bin('x') });
    expect(roundTrip(m.responseStream(7, 1_000_000))).toEqual({ kind: Kind.RESPONSE_STREAM, id: 7, length: 1_000_000 });
    expect(roundTrip(m.chunkAck(7, 262_144))).toEqual({ kind: Kind.CHUNK_ACK, id: 7, bytes: 262_144 });
    expect(roundTrip(m.chunkAck(7, 0))).toEqual({ kind: Kind.CHUNK_ACK, id: 7, bytes: 0 });
    expect(roundTrip(m.chunkAckV1(262_144))).toEqual({ kind: Kind.CHUNK_ACK, id: undefined, bytes: 262_144 });
    expect(() => roundTrip([10, 7, -1])).toThrow(/stream id and a byte count/);
    expect(() => roundTrip([10, 7, 1.5])).toThrow(/stream id and a byte count/);
    expect(roundTrip(m.request(8, 'A.B', null, { stream: 300_000 }))).toMatchObject({ kind: Kind.REQUEST, id: 8, stream: 300_000, params: new Uint8Array(0) });
  });

  it('accepts a request without metadata (4 elements, as in MessagePack-RPC)', () => {
    expect(parse([0, 1, 'A.B', bin([])])).toMatchObject({ kind: Kind.REQUEST, meta: {} });
  });

  it('decodes several values packed into one message', () => {
    const packed = Buffer.concat([encode(m.cancel(1)), encode(m.cancel(2)), encode(m.goaway('x'))]);
    expect(
      decodeAll(packed)
        .map(parse)
        .map((x) => x.kind),
    ).toEqual([Kind.CANCEL, Kind.CANCEL, Kind.GOAWAY]);
  });

  it('rejects wrong shapes with BAD_REQUEST, keeping the id when there is one', () => {
    const cases: Array<[unknown, number | undefined, RegExp]> = [
      [null, undefined, /array/],
      [[0], undefined, /array/],
      [[42, 1], undefined, /unknown message kind 42/],
      [[0, -1, 'A.B', bin([])], undefined, /request id/],
      [[0, 2 ** 32, 'A.B', bin([])], undefined, /request id/],
      [[0, 5, 17, bin([])], 5, /method/],
      [[0, 5, 'A.B', [1, 2]], 5, /params must be bin/],
      [[0, 5, 'A.B', bin([]), 'meta'], 5, /metadata/],
      [[0, 5, 'A.B', bin([]), {}, 'extra'], 5, /6 elements/],
      [[1, 5, 'oops', null], undefined, /response error/],
      [[3, 'x'], undefined, /cancel/],
      [[4, { version: 1, role: 'admin' }], undefined, /role/],
      [[4, { version: 1, role: 'node', services: { A: 'x' } }], undefined, /services/],
      [[0, 6, 'A.B', null, { stream: -1 }], 6, /stream/],
      [[0, 6, 'A.B', null, {}], 6, /params must be bin/],
      [[8, 1, 'yes', bin(1)], undefined, /chunk/],
      [[9, 1, 0], undefined, /response stream/],
    ];
    for (const [value, id, reason] of cases) {
      let caught: unknown;
      try {
        parse(value);
      } catch (err) {
        caught = err;
      }
      expect(caught, JSON.stringify(value)).toBeInstanceOf(ShapeError);
      expect((caught as ShapeError).code).toBe('BAD_REQUEST');
      expect((caught as ShapeError).id).toBe(id);
      expect((caught as ShapeError).message).toMatch(reason);
    }
  });

  it('throws (never crashes) on undecodable bytes, unknown extensions and deep nesting; renames __proto__', () => {
    expect(() => decodeAll(Buffer.from([0x94, 0x00]))).toThrow(/longer than the 1 bytes left/);
    expect(() => decode(Buffer.from([0xd4, 0x33, 0x01]))).toThrow(/extension/i);
    expect(() => decode(Buffer.alloc(100_000, 0x91))).toThrow();
    const polluted = decode(Buffer.from([0x81, 0xa9, ...Buffer.from('__proto__'), 0x81, 0xa1, 0x78, 0x01])) as Record<string, unknown>;
    expect(Object.getPrototypeOf(polluted)).toBe(Object.prototype);
    expect((polluted as { x?: unknown }).x).toBeUndefined();
    expect(({} as { x?: unknown }).x).toBeUndefined();
  });
});
