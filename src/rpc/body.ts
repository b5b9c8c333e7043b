import { ErrorCode, TunnelError } from '../errors.js';
import { decode, encode } from '../wire/codec.js';
import { toWireValue, WireValueError } from './wire-value.js';

/**
 * Params and results travel as a MessagePack value inside a `bin`, so that the relay forwards them
 * untouched. Each value is made into what travels first (wire-value.ts); `undefined` as an argument or
 * a result has no MessagePack form (msgpackr would write an extension), so it becomes nil.
 */
export function encodeParams(args: readonly unknown[]): Buffer {
  return join(paramsPieces(args));
}

/**
 * An encoded value as pieces to be written one after the other. Binary arguments or results larger
 * than {@link LARGE_BINARY} are referenced, not copied: msgpackr would copy a 16 MiB buffer into its
 * own (twice, as it grows), stalling the event loop for every call behind it. Such buffers are sent
 * as they are; do not modify them until the call has settled.
 */
export type Pieces = Uint8Array[];

export const LARGE_BINARY = 64 * 1024;

const isLargeBinary = (v: unknown): v is Uint8Array => v instanceof Uint8Array && v.length > LARGE_BINARY;

/** A MessagePack header with a 16- or 32-bit length after `code16` / `code32`. */
function lengthHeader(n: number, code16: number, code32: number): Buffer {
  const b = Buffer.allocUnsafe(n < 0x10000 ? 3 : 5);
  if (n < 0x10000) {
    b[0] = code16;
    b.writeUInt16BE(n, 1);
  } else {
    b[0] = code32;
    b.writeUInt32BE(n, 1);
  }
  return b;
}

/** MessagePack `bin` header for `n` bytes. */
const binHeader = (n: number): Buffer => (n < 0x100 ? Buffer.from([0xc4, n]) : lengthHeader(n, 0xc5, 0xc6));

/** MessagePack `array` header for `n` elements. */
const arrayHeader = (n: number): Buffer => (n < 16 ? Buffer.from([0x90 | n]) : lengthHeader(n, 0xdc, 0xdd));

export function paramsPieces(args: readonly unknown[]): Pieces {
  // A path in an error starts with the argument's index: "at [0][1].big".
  const values = args.map((a, i) => {
    try {
      return toWireValue(a);
    } catch (err) {
      if (err instanceof WireValueError) err.within(`[${i}]`);
      throw err;
    }
  });
  if (!values.some(isLargeBinary)) return [encode(values)];
  const pieces: Pieces = [arrayHeader(values.length)];
  for (const v of values) {
    if (isLargeBinary(v)) pieces.push(binHeader(v.length), v);
    else pieces.push(encode(v));
  }
  return pieces;
}

export function resultPieces(value: unknown): Pieces {
  value = toWireValue(value);
  if (isLargeBinary(value)) return [binHeader(value.length), value];
  return [encode(value)];
}

export function piecesLength(pieces: Pieces): number {
  let n = 0;
  for (const p of pieces) n += p.length;
  return n;
}

export function join(pieces: Pieces): Buffer {
  return pieces.length === 1 ? Buffer.from(pieces[0]!.buffer, pieces[0]!.byteOffset, pieces[0]!.length) : Buffer.concat(pieces);
}

export function decodeParams(bytes: Uint8Array): unknown[] {
  let value: unknown;
  try {
    value = decode(bytes);
  } catch (err) {
    throw new TunnelError(ErrorCode.BAD_REQUEST, `params are not valid MessagePack: ${(err as Error).message}`);
  }
  if (!Array.isArray(value)) throw new TunnelError(ErrorCode.BAD_REQUEST, 'params must be a MessagePack array');
  return value;
}

export function encodeResult(value: unknown): Buffer {
  return encode(toWireValue(value));
}

export function decodeResult(bytes: Uint8Array | null): unknown {
  if (bytes === null) return null;
  try {
    return decode(bytes);
  } catch (err) {
    throw new TunnelError(ErrorCode.PROTOCOL_ERROR, `result is not valid MessagePack: ${(err as Error).message}`);
  }
}
