import { Packr, Unpackr } from 'msgpackr';
import { checkMessagePack } from './scan.js';

/**
 * MessagePack settings shared by every role. Records and bundled strings are msgpackr's own
 * extensions; they are off so that any MessagePack implementation can read what we write.
 * Decoding checks the bytes first (scan.ts): no extensions but ours, nesting capped, lengths that
 * fit; msgpackr itself renames `__proto__` keys.
 */
// 'auto' (64-bit integers as numbers when they fit, else BigInt) is supported at run time but
// missing from msgpackr's type declarations.
const options = {
  useRecords: false,
  mapsAsObjects: true,
  bundleStrings: false,
  moreTypes: false,
  int64AsType: 'auto' as 'number',
};

const packr = new Packr(options);
const unpackr = new Unpackr(options);

/** Encodes one value. The returned buffer stays valid; msgpackr never reuses its bytes. */
export function encode(value: unknown): Buffer {
  return packr.pack(value);
}

/** Decodes exactly one value; throws on malformed, truncated or refused input. */
export function decode(bytes: Uint8Array): unknown {
  checkMessagePack(bytes);
  return unpackr.unpack(bytes);
}

/** Decodes every value packed back to back in one buffer (one WebSocket message may carry several). */
export function decodeAll(bytes: Uint8Array): unknown[] {
  checkMessagePack(bytes);
  return unpackr.unpackMultiple(bytes) as unknown[];
}
