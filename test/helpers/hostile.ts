import fc from 'fast-check';
import { encode } from '../../src/wire/codec.js';

/** Values any MessagePack peer could send as params or metadata. */
const value = fc.jsonValue({ maxDepth: 4 });

/** Well-formed messages of every kind, as bytes. */
export const validMessage: fc.Arbitrary<Uint8Array> = fc
  .oneof(
    fc
      .tuple(
        fc.nat(),
        fc.constantFrom('Sec.Echo', 'Sec.Who', 'Sec.Login', 'Nope.Nope', 'Sec', '.'),
        fc.array(value, { maxLength: 4 }),
        fc.dictionary(fc.string(), value, { maxKeys: 3 }),
      )
      .map(([id, method, args, meta]) => [0, id, method, encode(args), meta]),
    fc.tuple(fc.nat(), value).map(([id, v]) => [1, id, null, encode(v)]),
    fc.tuple(fc.nat(), fc.string()).map(([id, msg]) => [1, id, { code: 'APP_ERROR', message: msg }, null]),
    fc.nat().map((id) => [3, id]),
    fc
      .record({
        version: fc.constantFrom(1, 2),
        role: fc.constantFrom('node', 'caller', 'admin'),
        name: fc.string(),
        services: fc.dictionary(fc.string(), fc.array(fc.string())),
      })
      .map((h) => [4, h]),
    fc.string().map((s) => [6, s]),
    fc.string().map((s) => [7, s]),
    fc.tuple(fc.string(), value).map(([m, v]) => [2, m, encode([v])]),
  )
  .map((m) => new Uint8Array(encode(m)));

/** Hand-made attacks the random generators would rarely find. */
export const crafted: Uint8Array[] = [
  // {"__proto__": {"polluted": true}}
  Uint8Array.from([0x81, 0xa9, ...Buffer.from('__proto__'), 0x81, 0xa8, ...Buffer.from('polluted'), 0xc3]),
  new Uint8Array(encode([4, { version: 1, role: 'caller', constructor: { prototype: { polluted: true } } }])),
  // 100 000 nested arrays
  Uint8Array.from([...new Array(100_000).fill(0x91), 0xc0]),
  // str32, bin32, array32 and map32 claiming 4 GiB
  Uint8Array.from([0xdb, 0xff, 0xff, 0xff, 0xff, 0x61]),
  Uint8Array.from([0xc6, 0xff, 0xff, 0xff, 0xff, 0x61]),
  Uint8Array.from([0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]),
  Uint8Array.from([0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0]),
  // msgpackr's own extensions: record definition, Set, Error, RegExp, structured-clone pointer, typed array, bundled strings
  Uint8Array.from([0xd4, 0x72, 0x40, 0x91, 0xa1, 0x61]),
  Uint8Array.from([0xd4, 0x73, 0x00, 0x91, 0x01]),
  Uint8Array.from([0xd4, 0x65, 0x00, 0x93, 0xa4, ...Buffer.from('Evil'), 0xa1, 0x78, 0xc0]),
  Uint8Array.from([0xd4, 0x78, 0x00, 0x92, 0xa7, ...Buffer.from('(a+)+$x'), 0xa0]),
  Uint8Array.from([0xd6, 0x70, 0x00, 0x00, 0x00, 0x01]),
  Uint8Array.from([0xc7, 0x05, 0x74, 0x01, 0x00, 0x00, 0x00, 0x00]),
  Uint8Array.from([0xd6, 0x62, 0x7f, 0xff, 0xff, 0xff, 0xa0]),
  Uint8Array.from([0xc1]),
];

/** Random bytes, valid messages with bytes flipped, cut, inserted or repeated, and the crafted ones. */
export const hostileMessage: fc.Arbitrary<Uint8Array> = fc.oneof(
  { weight: 3, arbitrary: fc.uint8Array({ maxLength: 256 }) },
  {
    weight: 6,
    arbitrary: fc
      .tuple(
        validMessage,
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.constantFrom('flip', 'set', 'cut', 'insert', 'repeat')), {
          minLength: 1,
          maxLength: 4,
        }),
      )
      .map(([bytes, ops]) => mutate(bytes, ops)),
  },
  { weight: 1, arbitrary: fc.constantFrom(...crafted) },
);

function mutate(bytes: Uint8Array, ops: Array<[number, number, string]>): Uint8Array {
  let b = Buffer.from(bytes);
  for (const [at, byte, op] of ops) {
    const i = b.length === 0 ? 0 : at % b.length;
    if (op === 'flip' && b.length > 0) b[i] = b[i]! ^ (1 << (byte % 8));
    else if (op === 'set' && b.length > 0) b[i] = byte;
    else if (op === 'cut') b = b.subarray(0, i);
    else if (op === 'insert') b = Buffer.concat([b.subarray(0, i), Buffer.from([byte, 0xff, 0xff, 0xff]), b.subarray(i)]);
    else if (op === 'repeat') b = Buffer.concat([b, b]);
  }
  return b;
}
