import { describe, expect, it } from 'vitest';
import { isTunnelError } from '../src/errors.js';
import { decode, encode } from '../src/wire/codec.js';
import { MAX_DEPTH, MessagePackFramer } from '../src/wire/framer.js';

/** Values that exercise every header form: fix and sized ints, floats, str8/16/32, bin, nested maps. */
const VALUES: unknown[] = [
  0,
  127,
  -1,
  -33,
  255,
  65_535,
  2 ** 32,
  -(2 ** 40),
  1.5,
  null,
  true,
  false,
  '',
  'a'.repeat(31),
  'b'.repeat(200),
  'c'.repeat(70_000),
  Buffer.alloc(300, 7),
  Buffer.alloc(70_000, 9),
  [],
  {},
  [0, 1, 'Arith.Multiply', [{ X: 2, Y: 3 }]],
  { nested: { list: Array.from({ length: 20 }, (_, i) => ({ i })) } },
  Array.from({ length: 70_000 }, (_, i) => i % 3),
  new Date(0),
];

function split(bytes: Buffer, seed: number): Buffer[] {
  // A small deterministic generator, so that a failure can be replayed.
  let x = seed;
  const next = () => (x = (x * 1103515245 + 12345) % 2 ** 31);
  const out: Buffer[] = [];
  for (let at = 0; at < bytes.length;) {
    const n = 1 + (next() % (seed % 2 === 0 ? 7 : 9000));
    out.push(bytes.subarray(at, at + n));
    at += n;
  }
  return out;
}

describe('MessagePackFramer', () => {
  const stream = Buffer.concat(VALUES.map((v) => encode(v)));

  it.each([1, 2, 3, 4, 5, 6])('finds every value however the stream is cut (seed %i)', (seed) => {
    const framer = new MessagePackFramer(1 << 20);
    const got: unknown[] = [];
    for (const chunk of split(stream, seed)) for (const f of framer.push(chunk)) got.push(decode(f));
    expect(got).toEqual(VALUES);
    expect(framer.buffered).toBe(0);
  });

  it('finds every value in one push', () => {
    const framer = new MessagePackFramer(1 << 20);
    expect(framer.push(stream).map((f) => decode(f))).toEqual(VALUES);
  });

  it('refuses a declared length over the limit before the payload arrives', () => {
    const framer = new MessagePackFramer(1024);
    expect(() => framer.push(Buffer.from([0xc6, 0, 0, 8, 0]))).toThrowError(/at least 2053 bytes exceeds the limit of 1024/);
  });

  it('refuses an array whose item count cannot fit', () => {
    const framer = new MessagePackFramer(1024);
    let err: unknown;
    try {
      framer.push(Buffer.from([0xdc, 0x10, 0x00]));
    } catch (e) {
      err = e;
    }
    expect(isTunnelError(err, 'TOO_LARGE')).toBe(true);
  });

  it('refuses nesting deeper than the limit', () => {
    const framer = new MessagePackFramer(1 << 20);
    expect(() => framer.push(Buffer.alloc(MAX_DEPTH + 1, 0x91))).toThrowError(/nested deeper than 256/);
  });

  it('refuses 0xc1', () => {
    const framer = new MessagePackFramer(1 << 20);
    expect(() => framer.push(Buffer.from([0x92, 0x01, 0xc1]))).toThrowError(/byte 0xc1 at offset 2/);
  });
});
