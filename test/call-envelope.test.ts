import { describe, expect, it } from 'vitest';
import { encodeRequest, encodeResult } from '../src/wire/call-envelope.js';
import { decode, encode } from '../src/wire/codec.js';
import { request, response, type NodeMeta } from '../src/wire/messages.js';

// The relay writes the two messages of every call by hand (call-envelope.ts); they must be the very
// bytes msgpackr writes for the same values, at every size boundary of every field.
const IDS = [0, 1, 127, 128, 255, 256, 65_535, 65_536, 2 ** 32 - 1, 2 ** 32, 2 ** 40];
const TEXTS = [
  '',
  'a',
  'Arith.Multiply',
  'x'.repeat(31),
  'x'.repeat(32),
  'é'.repeat(15),
  'é'.repeat(16),
  '🦊'.repeat(8),
  'y'.repeat(255),
  'y'.repeat(256),
  'z'.repeat(65_535),
  'z'.repeat(65_536),
];
const SIZES = [0, 1, 255, 256, 65_535, 65_536, 300_000];
const TIMEOUTS = [1, 127, 128, 30_000, 65_536, 2 ** 31 - 1, 1.5, 2 ** 32, 0.25];

const bytes = (n: number) => Uint8Array.from({ length: n }, (_, i) => (i * 31) & 0xff);
const meta = (text: string, identity: string | null, timeout: number): NodeMeta => ({
  session: `s-${text}`,
  address: `127.0.0.1:${text.length}`,
  identity,
  timeout,
});

describe('the hand-written call envelopes', () => {
  it('a request to a node is what msgpackr writes, at every boundary of id, method, params, metadata and timeout', () => {
    let checked = 0;
    for (const id of IDS)
      for (const text of TEXTS)
        for (const size of [0, 256, 65_536]) {
          const m = meta(text, text.length % 2 ? null : text, 30_000);
          const params = bytes(size);
          expect(encodeRequest(id, text, params, m).equals(encode(request(id, text, params, m)))).toBe(true);
          checked++;
        }
    for (const size of SIZES)
      for (const timeout of TIMEOUTS)
        for (const identity of [null, 'billing', 'ü'.repeat(40)]) {
          const m = meta('k', identity, timeout);
          expect(encodeRequest(7, 'KV.Get', bytes(size), m).equals(encode(request(7, 'KV.Get', bytes(size), m)))).toBe(true);
          checked++;
        }
    expect(checked).toBe(IDS.length * TEXTS.length * 3 + SIZES.length * TIMEOUTS.length * 3);
  });

  it('a successful answer to a caller is what msgpackr writes', () => {
    for (const id of IDS)
      for (const size of SIZES) {
        const result = bytes(size);
        expect(encodeResult(id, result).equals(encode(response(id, null, result)))).toBe(true);
      }
  });

  it('metadata of other types goes through msgpackr as before', () => {
    for (const m of [
      { session: 's', address: 'a', identity: undefined, timeout: 5 },
      { session: 's', address: 'a', identity: 7, timeout: 5 },
    ] as unknown as NodeMeta[]) {
      expect(encodeRequest(3, 'A.B', bytes(4), m).equals(encode(request(3, 'A.B', bytes(4), m)))).toBe(true);
    }
  });

  it('decodes to the message it was made from', () => {
    const m = meta('Ωmega', 'alice', 1_000);
    expect(decode(encodeRequest(42, 'Greeter.Greet', Buffer.from('hi'), m))).toEqual([0, 42, 'Greeter.Greet', Buffer.from('hi'), m]);
    expect(decode(encodeResult(42, Buffer.from([1, 2, 3])))).toEqual([1, 42, null, Buffer.from([1, 2, 3])]);
  });
});
