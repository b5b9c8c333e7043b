import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decode, encode } from '../src/wire/codec.js';
import { MessagePackFramer } from '../src/wire/framer.js';
import { WireFormatError } from '../src/wire/scan.js';
import { checkOneValue, EnvelopeReader, OTHER, skipValue, uintSize, writeUint } from '../src/wire/skip.js';

/** Every header form: fix and sized ints, floats, str8/16/32, bin8/16/32, arrays and maps 16/32, ext. */
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
  '',
  'a'.repeat(31),
  'b'.repeat(200),
  'c'.repeat(70_000),
  Buffer.alloc(10, 1),
  Buffer.alloc(300, 7),
  Buffer.alloc(70_000, 9),
  [],
  {},
  [0, 1, 'Arith.Multiply', [{ X: 2, Y: 3 }]],
  Array.from({ length: 20 }, (_, i) => i),
  Array.from({ length: 70_000 }, (_, i) => i % 3),
  Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`k${i}`, i])),
  new Date(0),
  new Date(2 ** 35 * 1000),
  undefined,
];

/** Hand-made bytes for the forms msgpackr does not write: fixext 2, 16, ext8/16/32, map32, array32. */
const RAW: Buffer[] = [
  Buffer.from([0xd5, 1, 0, 0]),
  Buffer.from([0xd8, 1, ...Buffer.alloc(16)]),
  Buffer.from([0xc7, 3, 1, 9, 9, 9]),
  Buffer.from([0xc8, 0, 2, 1, 9, 9]),
  Buffer.from([0xc9, 0, 0, 0, 1, 1, 9]),
  Buffer.from([0xdd, 0, 0, 0, 2, 0xc0, 0x01]),
  Buffer.from([0xdf, 0, 0, 0, 1, 0xa1, 0x61, 0x02]),
];

describe('skipValue', () => {
  it('finds the end of every form, alone and followed by another value', () => {
    for (const bytes of [...VALUES.map((v) => encode(v)), ...RAW]) {
      expect(skipValue(bytes, 0)).toBe(bytes.length);
      const two = Buffer.concat([Buffer.from([0x07]), bytes, Buffer.from([0xc3])]);
      expect(skipValue(two, 1)).toBe(1 + bytes.length);
    }
  });

  it('agrees with the framer on random values', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.jsonValue(), (a, b) => {
        const bytes = Buffer.concat([encode(a), encode(b)]);
        const [first] = new MessagePackFramer(bytes.length).push(bytes);
        expect(skipValue(bytes, 0)).toBe(first!.length);
      }),
      { numRuns: 500 },
    );
  });

  it('throws on every truncation, and on 0xc1', () => {
    for (const bytes of [...VALUES.map((v) => encode(v)), ...RAW]) {
      for (const cut of new Set([0, 1, 2, 3, bytes.length >> 1, bytes.length - 1])) {
        if (cut >= bytes.length) continue;
        expect(() => skipValue(bytes.subarray(0, cut), 0)).toThrow(WireFormatError);
      }
    }
    expect(() => skipValue(Buffer.from([0x92, 0x01, 0xc1]), 0)).toThrow(/0xc1/);
  });
});

describe('checkOneValue', () => {
  it('takes one whole value and refuses none, two, or a foreign extension', () => {
    checkOneValue(encode([1, 'x', { y: null }]));
    expect(() => checkOneValue(Buffer.alloc(0))).toThrow(WireFormatError);
    expect(() => checkOneValue(Buffer.from([0x01, 0x02]))).toThrow(/more than one/);
    expect(() => checkOneValue(Buffer.from([0xd5, 1, 0, 0]))).toThrow(/extension/);
  });
});

describe('EnvelopeReader', () => {
  it('reads a request envelope and leaves params as bytes', () => {
    const params = encode([{ A: 2, B: 3 }, 'x']);
    const frame = Buffer.concat([Buffer.from([0x94, 0x00, 0xce, 0xff, 0xff, 0xff, 0xff]), encode('Arith.Multiply'), params]);
    const r = new EnvelopeReader().reset(frame);
    expect(r.arrayLength()).toBe(4);
    expect(r.uint()).toBe(0);
    expect(r.uint()).toBe(0xffff_ffff);
    expect(r.ascii()).toBe('Arith.Multiply');
    expect(r.atArray()).toBe(true);
    expect(r.rest()).toEqual(params);
  });

  it('reads every unsigned form below 2³² and leaves others to a decode', () => {
    for (const n of [0, 127, 128, 255, 256, 65_535, 65_536, 0xffff_ffff]) {
      expect(new EnvelopeReader().reset(encode(n)).uint()).toBe(n);
    }
    for (const v of [-1, 2 ** 32, 1.5, 'x', null]) {
      const r = new EnvelopeReader().reset(encode(v));
      expect(r.uint()).toBe(OTHER);
      expect(r.pos).toBe(0);
    }
  });

  it('reads ASCII strings of each length form, and nothing else', () => {
    for (const s of ['', 'a', 'a'.repeat(31), 'b'.repeat(32), 'c'.repeat(300)]) expect(new EnvelopeReader().reset(encode(s)).ascii()).toBe(s);
    for (const v of ['héllo', 5, Buffer.from('x'), ['x']]) expect(new EnvelopeReader().reset(encode(v)).ascii()).toBeUndefined();
  });

  it('reads array lengths of each form and skips one element', () => {
    for (const n of [0, 15, 16, 65_535, 65_536]) expect(new EnvelopeReader().reset(encode(new Array(n).fill(0))).arrayLength()).toBe(n);
    expect(new EnvelopeReader().reset(encode({ a: 1 })).arrayLength()).toBe(OTHER);
    const r = new EnvelopeReader().reset(encode([1, { a: [1, 2] }, 'z']));
    r.arrayLength();
    expect(r.element()).toEqual(encode(1));
    expect(r.element()).toEqual(encode({ a: [1, 2] }));
    expect(r.nil()).toBe(false);
    expect(r.ascii()).toBe('z');
  });
});

describe('writeUint', () => {
  it('writes each unsigned form that uintSize counts, as msgpackr reads it', () => {
    for (const n of [0, 1, 127, 128, 255, 256, 65_535, 65_536, 2 ** 32 - 1]) {
      const b = Buffer.alloc(uintSize(n));
      expect(writeUint(b, 0, n)).toBe(b.length);
      expect(decode(b)).toBe(n);
    }
  });
});
