import { decode, encode } from './codec.js';
import { Kind, MAX_ID } from './messages.js';
import { checkMessagePack } from './scan.js';
import { EnvelopeReader, OTHER, uintSize, writeUint } from './skip.js';
import { COPY_LIMIT } from './turn-writer.js';

/**
 * The envelopes of the MessagePack-RPC spec, read and written around params and results that stay
 * the bytes they came in: request `[0, msgid, method, params]`, response `[1, msgid, error, result]`,
 * notification `[2, method, params]`. The relay's MessagePack-RPC port reads requests and writes
 * responses; the node's `--forward` writes requests and reads responses.
 *
 * Errors travel as strings, `"CODE: message"`, because Go's codec decodes the error field into a
 * string (docs/PROTOCOL.md).
 */

/** A request (with a msgid) or a notification (without), as a server reads it. */
export interface CallEnvelope {
  /** The caller's msgid, echoed in the answer; undefined for a notification, which gets none. */
  msgid: number | undefined;
  method: string;
  /** The params array, as its bytes. */
  params: Buffer;
}

/** A response, as a client reads it. */
export interface ResponseEnvelope {
  /** Any number: a msgid that matches no call is the reader's to drop. */
  msgid: number;
  /** Decoded; null when the call succeeded. */
  error: unknown;
  /** The result, as its bytes. */
  result: Buffer;
}

/**
 * Why a message cannot be served. `fatal`: nothing after it can be trusted, the connection ends.
 * `refused`: answered with a BAD_REQUEST error for `msgid` (a notification's is only logged).
 */
export type EnvelopeFault = Fatal | { refused: string; msgid: number | undefined };

/** A message after which nothing on the connection can be trusted. */
export interface Fatal {
  fatal: string;
}

/** A notification from a server: a client that subscribes to none passes over it. */
export const NOTIFICATION = Symbol('notification');

/** One message as it is written: `head`, then `more` unchanged when the payload was too big to copy behind it. */
export type Framed = [head: Buffer, more?: Uint8Array];

/**
 * Reads envelopes without decoding params or results. Each element in a form the byte reader does
 * not take (skip.ts) is decoded on its own with msgpackr, so every message is judged as a full decode
 * would have judged it. Both readers throw, with the decoder's message, for bytes that are not valid
 * MessagePack (scan.ts: what a decode would refuse is refused here too).
 */
export class MsgpackRpcReader {
  private readonly r = new EnvelopeReader();

  /** One framed value (framer.ts) a server reads: a request or a notification, or why it is not one. */
  readCall(frame: Buffer): CallEnvelope | EnvelopeFault {
    checkMessagePack(frame);
    const r = this.r.reset(frame);
    const length = r.arrayLength();
    if (length <= 0) return { fatal: 'each message must be a request [0, msgid, method, params] or a notification [2, method, params]' };
    const kind = valueAt(r);
    switch (kind) {
      case Kind.REQUEST: {
        const msgid = length >= 2 ? valueAt(r) : undefined;
        if (!isMsgid(msgid)) return { fatal: `request msgid must be an integer 0..${MAX_ID}` };
        if (length !== 4) return { refused: `a request is [0, msgid, method, params]; this one has ${length} elements`, msgid };
        return this.call(msgid);
      }
      case Kind.NOTIFY:
        if (length !== 3) return { fatal: `a notification is [2, method, params]; this one has ${length} elements` };
        return this.call(undefined);
      case Kind.RESPONSE:
        return { fatal: 'this port serves requests and sends no requests of its own, so it takes no responses [1, ...]; send [0, msgid, method, params]' };
      default:
        return { fatal: `unknown message type ${JSON.stringify(kind) ?? typeof kind}; want 0 (request) or 2 (notification)` };
    }
  }

  /** One framed value a client reads: a response, a notification, or why it is neither. */
  readResponse(frame: Buffer): ResponseEnvelope | typeof NOTIFICATION | Fatal {
    checkMessagePack(frame);
    const r = this.r.reset(frame);
    const length = r.arrayLength();
    if (length === OTHER) return { fatal: 'a message that is not an array' };
    const kind = length === 0 ? undefined : valueAt(r);
    if (kind === Kind.NOTIFY) return NOTIFICATION;
    if (kind !== Kind.RESPONSE || length !== 4) return { fatal: NOT_A_RESPONSE };
    const msgid = valueAt(r);
    if (typeof msgid !== 'number') return { fatal: NOT_A_RESPONSE };
    const error = r.nil() ? null : decode(r.element());
    return { msgid, error, result: r.rest() };
  }

  /** The method and params after a msgid (or after the type of a notification). */
  private call(msgid: number | undefined): CallEnvelope | EnvelopeFault {
    const r = this.r;
    const method = r.ascii() ?? decode(r.element());
    if (typeof method !== 'string' || method === '') return { refused: 'method must be a non-empty string', msgid };
    if (!r.atArray()) return { refused: 'params must be an array', msgid };
    return { msgid, method, params: r.rest() };
  }
}

const NOT_A_RESPONSE = 'a message that is not a response [1, msgid, error, result]';

/** `[0, msgid, method, params]` around the params bytes; `method` is already a MessagePack str ({@link encodeMethod}). */
export function requestWithParams(msgid: number, method: Buffer, params: Uint8Array): Framed {
  const head = 2 + uintSize(msgid) + method.length;
  const small = params.length <= COPY_LIMIT;
  const b = Buffer.allocUnsafe(small ? head + params.length : head);
  b[0] = 0x94;
  b[1] = Kind.REQUEST;
  b.set(method, writeUint(b, 2, msgid));
  if (!small) return [b, params];
  b.set(params, head);
  return [b];
}

/** `[1, msgid, nil, result]` around the result bytes: copied behind the header when small, else written after it. */
export function responseWithResult(msgid: number, result: Uint8Array): Framed {
  const head = 3 + uintSize(msgid);
  const small = result.length <= COPY_LIMIT;
  const b = Buffer.allocUnsafe(small ? head + result.length : head);
  b[0] = 0x94;
  b[1] = Kind.RESPONSE;
  b[writeUint(b, 2, msgid)] = 0xc0;
  if (!small) return [b, result];
  b.set(result, head);
  return [b];
}

/** `[1, msgid, nil, value]`, the value encoded. */
export const valueResponse = (msgid: number, value: unknown): Buffer => encode([Kind.RESPONSE, msgid, null, value]);

/** `[1, msgid, "CODE: message", nil]`: every error is a string. */
export const errorResponse = (msgid: number, code: string, message: string): Buffer => encode([Kind.RESPONSE, msgid, `${code}: ${message}`, null]);

/** The error field of a response as text: a string as it is, anything else as JSON. */
export const errorText = (error: unknown): string => (typeof error === 'string' ? error : (JSON.stringify(error) ?? String(error)));

/** A method name as the MessagePack str {@link requestWithParams} puts in a request. */
export const encodeMethod = (method: string): Buffer => encode(method);

/** The next element: a plain unsigned integer as read, anything else as msgpackr decodes it. */
function valueAt(r: EnvelopeReader): unknown {
  const n = r.uint();
  return n !== OTHER ? n : decode(r.element());
}

function isMsgid(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= MAX_ID;
}
