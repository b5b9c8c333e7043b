import { ErrorCode, TunnelError } from '../errors.js';
import { decode, encode } from '../wire/codec.js';

/**
 * Params and results travel as a MessagePack value inside a `bin`, so that the relay forwards them
 * untouched. `undefined` has no MessagePack form (msgpackr would write an extension), so it becomes nil.
 */
export function encodeParams(args: readonly unknown[]): Buffer {
  return encode(args.map((a) => (a === undefined ? null : a)));
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
  return encode(value === undefined ? null : value);
}

export function decodeResult(bytes: Uint8Array | null): unknown {
  if (bytes === null) return null;
  try {
    return decode(bytes);
  } catch (err) {
    throw new TunnelError(ErrorCode.PROTOCOL_ERROR, `result is not valid MessagePack: ${(err as Error).message}`);
  }
}
