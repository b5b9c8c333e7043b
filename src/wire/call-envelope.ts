import { encode } from './codec.js';
import { Kind, request, response, type NodeMeta } from './messages.js';
import { uintSize, writeUint } from './skip.js';

/**
 * The two messages every relayed call costs the relay, written by hand: the request it forwards to a
 * node, `[0, id, method, params, {session, address, identity, timeout}]`, and the answer it passes
 * to a caller, `[1, id, nil, result]`. They are the same MessagePack bytes msgpackr writes for them
 * (test/call-envelope.test.ts compares the two), without its walk over a generic array and object:
 * that walk was most of the relay's encoding time per call. Anything else (an error, a timeout that
 * is not a whole number, an id past 32 bits, metadata of other types) goes through msgpackr as before.
 * The metadata written is exactly the four fields of `NodeMeta`, in that order.
 */

/** The request to a node, as one buffer; params are copied in, as msgpackr does. */
export function encodeRequest(id: number, method: string, params: Uint8Array, meta: NodeMeta): Buffer {
  const { session, address, identity, timeout } = meta;
  const plain = typeof session === 'string' && typeof address === 'string' && (identity === null || typeof identity === 'string');
  if (!plain || !isUint32(id) || !isUint32(timeout)) return encode(request(id, method, params, meta));
  const methodBytes = utf8Length(method);
  const sessionBytes = utf8Length(session);
  const addressBytes = utf8Length(address);
  const identityBytes = identity === null ? 0 : utf8Length(identity);
  const size =
    1 + // fixarray 5
    1 + // kind 0
    uintSize(id) +
    strHeader(methodBytes) +
    methodBytes +
    binHeader(params.length) +
    params.length +
    3 + // map16 of 4 (msgpackr writes every object's header as map16)
    KEYS.session.length +
    strHeader(sessionBytes) +
    sessionBytes +
    KEYS.address.length +
    strHeader(addressBytes) +
    addressBytes +
    KEYS.identity.length +
    (identity === null ? 1 : strHeader(identityBytes) + identityBytes) +
    KEYS.timeout.length +
    uintSize(timeout);
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  out[at++] = 0x95;
  out[at++] = Kind.REQUEST;
  at = writeUint(out, at, id);
  at = writeStr(out, at, method, methodBytes);
  at = writeBin(out, at, params);
  out[at++] = 0xde;
  out[at++] = 0;
  out[at++] = 4;
  at = writeKey(out, at, KEYS.session);
  at = writeStr(out, at, session, sessionBytes);
  at = writeKey(out, at, KEYS.address);
  at = writeStr(out, at, address, addressBytes);
  at = writeKey(out, at, KEYS.identity);
  if (identity === null) out[at++] = 0xc0;
  else at = writeStr(out, at, identity, identityBytes);
  at = writeKey(out, at, KEYS.timeout);
  writeUint(out, at, timeout);
  return out;
}

/** A successful answer to a caller, as one buffer; the result is copied in, as msgpackr does. */
export function encodeResult(id: number, result: Uint8Array): Buffer {
  if (!isUint32(id)) return encode(response(id, null, result));
  const out = Buffer.allocUnsafe(2 + uintSize(id) + 1 + binHeader(result.length) + result.length);
  out[0] = 0x94;
  out[1] = Kind.RESPONSE;
  let at = writeUint(out, 2, id);
  out[at++] = 0xc0;
  writeBin(out, at, result);
  return out;
}

/** The map keys of the request's metadata, encoded once (fixstr). */
const KEYS = {
  session: encode('session'),
  address: encode('address'),
  identity: encode('identity'),
  timeout: encode('timeout'),
};

function isUint32(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 0xffffffff;
}

function strHeader(bytes: number): number {
  return bytes < 0x20 ? 1 : bytes < 0x100 ? 2 : bytes < 0x10000 ? 3 : 5;
}

function writeStr(out: Buffer, at: number, s: string, bytes: number): number {
  if (bytes < 0x20) out[at++] = 0xa0 | bytes;
  else if (bytes < 0x100) {
    out[at++] = 0xd9;
    out[at++] = bytes;
  } else if (bytes < 0x10000) {
    out[at++] = 0xda;
    out.writeUInt16BE(bytes, at);
    at += 2;
  } else {
    out[at++] = 0xdb;
    out.writeUInt32BE(bytes, at);
    at += 4;
  }
  if (bytes === s.length && bytes <= SHORT) {
    // ASCII (bytes equal characters): by hand, which for short strings beats a call into Buffer.write.
    for (let i = 0; i < bytes; i++) out[at + i] = s.charCodeAt(i);
    return at + bytes;
  }
  return at + out.write(s, at, bytes, 'utf8');
}

/** Strings up to this many characters are measured and written by hand when they are ASCII. */
const SHORT = 64;

/** UTF-8 bytes of `s`: counted by hand for a short ASCII string, else by Buffer.byteLength. */
function utf8Length(s: string): number {
  const n = s.length;
  if (n > SHORT) return Buffer.byteLength(s);
  for (let i = 0; i < n; i++) if (s.charCodeAt(i) >= 0x80) return Buffer.byteLength(s);
  return n;
}

function binHeader(length: number): number {
  return length < 0x100 ? 2 : length < 0x10000 ? 3 : 5;
}

function writeBin(out: Buffer, at: number, bytes: Uint8Array): number {
  const n = bytes.length;
  if (n < 0x100) {
    out[at++] = 0xc4;
    out[at++] = n;
  } else if (n < 0x10000) {
    out[at++] = 0xc5;
    out.writeUInt16BE(n, at);
    at += 2;
  } else {
    out[at++] = 0xc6;
    out.writeUInt32BE(n, at);
    at += 4;
  }
  out.set(bytes, at);
  return at + n;
}

function writeKey(out: Buffer, at: number, key: Buffer): number {
  out.set(key, at);
  return at + key.length;
}
