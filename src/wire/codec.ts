import { Packr, Unpackr } from 'msgpackr';
import { checkMessagePack, WireFormatError } from './scan.js';

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

/**
 * Encodes one value. The returned buffer stays valid; msgpackr never reuses its bytes. Values of
 * users go through rpc/wire-value.ts first, which refuses in our words what msgpackr would refuse.
 */
export function encode(value: unknown): Buffer {
  try {
    return packr.pack(value);
  } catch (err) {
    throw inOurWords(err);
  }
}

/** Decodes exactly one value; throws on malformed, truncated or refused input. */
export function decode(bytes: Uint8Array): unknown {
  checkMessagePack(bytes);
  try {
    return unpackr.unpack(bytes);
  } catch (err) {
    throw inOurWords(err);
  }
}

/** Decodes every value packed back to back in one buffer (one WebSocket message may carry several). */
export function decodeAll(bytes: Uint8Array): unknown[] {
  checkMessagePack(bytes);
  try {
    return unpackr.unpackMultiple(bytes) as unknown[];
  } catch (err) {
    throw inOurWords(err);
  }
}

/**
 * msgpackr's errors name its own options (`mapsAsObjects`, `useBigIntExtension`, …), which our users
 * cannot set and should never read. Those we know are said again; any other that names an option
 * is replaced whole. The original stays as the cause, for a debugger.
 */
export function inOurWords(err: unknown): Error {
  if (!(err instanceof Error) || err instanceof WireFormatError) return err as Error;
  const m = err.message;
  let said: string | undefined;
  const key = /^Invalid property type for record: (\w+)/.exec(m);
  if (key) said = `a map key is ${key[1] === 'object' ? 'an array, a map or nil' : `a ${key[1]}`}: keys must be strings or numbers (maps arrive as objects)`;
  else if (/too large to fit in MessagePack 64-bit integer/.test(m)) said = 'an integer does not fit in 64 bits; send it as a string';
  else if (/^Unknown type: (\w+)/.test(m)) said = `a ${/^Unknown type: (\w+)/.exec(m)![1]} cannot be sent`;
  else if (/[a-z][A-Z]\w*:|use[A-Z]|[a-z]+To[A-Z]|maxShared|mapsAsObjects|structuredClone|largeBigInt/.test(m))
    said = 'the value cannot be carried by MessagePack';
  return said === undefined ? err : new Error(said, { cause: err });
}
