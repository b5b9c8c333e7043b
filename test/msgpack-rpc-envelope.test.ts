import { describe, expect, it } from 'vitest';
import { decode, encode } from '../src/wire/codec.js';
import { MAX_ID } from '../src/wire/messages.js';
import {
  encodeMethod,
  errorResponse,
  errorText,
  MsgpackRpcReader,
  NOTIFICATION,
  requestWithParams,
  responseWithResult,
  valueResponse,
  type CallEnvelope,
  type Framed,
  type ResponseEnvelope,
} from '../src/wire/msgpack-rpc-envelope.js';
import { COPY_LIMIT } from '../src/wire/turn-writer.js';

/** The MessagePack-RPC envelopes of the relay's port and the node's --forward, with no socket. */

const joined = (framed: Framed): Buffer => Buffer.concat(framed.filter((b) => b !== undefined));
const MSGIDS = [0, 1, 127, 128, 255, 256, 65_535, 65_536, MAX_ID];
/** What checkMessagePack says of bytes that end before the value does. */
const TRUNCATED = /^truncated MessagePack|is longer than the \d+ bytes left$/;
const SMALL = encode([{ A: 2, B: 3 }]);
const LARGE = encode(['x'.repeat(COPY_LIMIT + 10)]);

describe('writing', () => {
  it.each(MSGIDS)('writes a request with msgid %d byte for byte as msgpackr encodes it, small params copied behind the head', (msgid) => {
    const framed = requestWithParams(msgid, encodeMethod('Arith.Multiply'), SMALL);
    expect(framed).toHaveLength(1);
    expect(framed[0]).toEqual(encode([0, msgid, 'Arith.Multiply', [{ A: 2, B: 3 }]]));
  });

  it('leaves params above COPY_LIMIT uncopied after the head', () => {
    const [head, more] = requestWithParams(70_000, encodeMethod('Big.Echo'), LARGE);
    expect(more).toBe(LARGE);
    expect(head.length).toBe(1 + 1 + 5 + 9); // array, type, uint32 msgid, str 'Big.Echo'
    expect(Buffer.concat([head, more!]).equals(encode([0, 70_000, 'Big.Echo', ['x'.repeat(COPY_LIMIT + 10)]]))).toBe(true);
  });

  it.each(MSGIDS)('writes a response with msgid %d around result bytes as msgpackr encodes it', (msgid) => {
    const result = encode({ sum: 5 });
    const framed = responseWithResult(msgid, result);
    expect(framed).toHaveLength(1);
    expect(framed[0]).toEqual(encode([1, msgid, null, { sum: 5 }]));
  });

  it('leaves results above COPY_LIMIT uncopied after the head', () => {
    const [head, more] = responseWithResult(5, LARGE);
    expect(more).toBe(LARGE);
    expect(head).toEqual(Buffer.from([0x94, 0x01, 0x05, 0xc0]));
  });

  it('writes errors as the string "CODE: message" and values encoded', () => {
    expect(decode(errorResponse(9, 'BAD_REQUEST', 'params must be an array'))).toEqual([1, 9, 'BAD_REQUEST: params must be an array', null]);
    expect(decode(valueResponse(10, true))).toEqual([1, 10, null, true]);
  });

  it('reads an error field as text: a string as it is, anything else as JSON', () => {
    expect(errorText('APP_ERROR: divide by zero')).toBe('APP_ERROR: divide by zero');
    expect(errorText({ code: 7, msg: 'no' })).toBe('{"code":7,"msg":"no"}');
    expect(errorText(undefined)).toBe('undefined');
  });
});

describe('round trips', () => {
  const reader = new MsgpackRpcReader();

  it.each(MSGIDS)('reads back a request with msgid %d, params as the same bytes', (msgid) => {
    for (const params of [SMALL, LARGE]) {
      const call = reader.readCall(joined(requestWithParams(msgid, encodeMethod('Arith.Multiply'), params))) as CallEnvelope;
      expect([call.msgid, call.method]).toEqual([msgid, 'Arith.Multiply']);
      expect(call.params.equals(params)).toBe(true);
    }
  });

  it.each(MSGIDS)('reads back a response with msgid %d, result as the same bytes', (msgid) => {
    for (const result of [SMALL, LARGE]) {
      const response = reader.readResponse(joined(responseWithResult(msgid, result))) as ResponseEnvelope;
      expect([response.msgid, response.error]).toEqual([msgid, null]);
      expect(response.result.equals(result)).toBe(true);
    }
  });

  it('reads back an error response with its string', () => {
    expect(reader.readResponse(errorResponse(3, 'UNAUTHORIZED', 'call Relay.Auth first'))).toEqual({
      msgid: 3,
      error: 'UNAUTHORIZED: call Relay.Auth first',
      result: encode(null),
    });
  });

  it('reads a notification as a call without msgid, and a client passes over one', () => {
    expect(reader.readCall(encode([2, 'Log.Write', ['hi']]))).toEqual({ msgid: undefined, method: 'Log.Write', params: encode(['hi']) });
    expect(reader.readResponse(encode([2, 'Server.Event', [1]]))).toBe(NOTIFICATION);
  });

  it('reads elements in the forms it does not parse by decoding them: a uint64 msgid, a non-ASCII method, a float type', () => {
    const u64 = Buffer.concat([Buffer.from([0x94, 0x00, 0xcf, 0, 0, 0, 0, 0, 0, 0, 9]), encode('A.B'), encode([])]);
    expect(reader.readCall(u64)).toEqual({ msgid: 9, method: 'A.B', params: encode([]) });
    expect(reader.readCall(encode([0, 1, 'Grüße.Sag', [1]]))).toEqual({ msgid: 1, method: 'Grüße.Sag', params: encode([1]) });
    const float = Buffer.concat([Buffer.from([0x94, 0xca]), Buffer.from(new Float32Array([1]).buffer).reverse(), encode(4), encode(null), encode('ok')]);
    expect(reader.readResponse(float)).toEqual({ msgid: 4, error: null, result: encode('ok') });
  });
});

describe('a request the port cannot serve, with the reason it gives', () => {
  const reader = new MsgpackRpcReader();
  const SHAPE = 'each message must be a request [0, msgid, method, params] or a notification [2, method, params]';
  const MSGID = `request msgid must be an integer 0..${MAX_ID}`;

  it.each([
    ['a value that is not an array', encode('hello'), SHAPE],
    ['an empty array', encode([]), SHAPE],
    ['a request with no msgid', encode([0]), MSGID],
    ['a msgid that is a string', encode([0, 'x', 'Server.Ping', []]), MSGID],
    ['a negative msgid', encode([0, -1, 'Server.Ping', []]), MSGID],
    ['a msgid above 2^32 - 1', encode([0, 2 ** 32, 'Server.Ping', []]), MSGID],
    ['a fractional msgid', encode([0, 1.5, 'Server.Ping', []]), MSGID],
    ['a notification of 2 elements', encode([2, 'Log.Write']), 'a notification is [2, method, params]; this one has 2 elements'],
    [
      'a response',
      encode([1, 7, null]),
      'this port serves requests and sends no requests of its own, so it takes no responses [1, ...]; send [0, msgid, method, params]',
    ],
    ['an unknown message type', encode([9, 1, 2, 3]), 'unknown message type 9; want 0 (request) or 2 (notification)'],
    ['a message type that is a string', encode(['x', 1]), 'unknown message type "x"; want 0 (request) or 2 (notification)'],
  ])('ends the connection on %s', (_what, bytes, fatal) => {
    expect(reader.readCall(bytes)).toEqual({ fatal });
  });

  it.each([
    ['3 elements', encode([0, 5, 'Server.Ping']), 5, 'a request is [0, msgid, method, params]; this one has 3 elements'],
    ['5 elements', encode([0, 6, 'Server.Ping', [], 'extra']), 6, 'a request is [0, msgid, method, params]; this one has 5 elements'],
    ['params that are not an array', encode([0, 7, 'Arith.Multiply', 5]), 7, 'params must be an array'],
    ['an empty method', encode([0, 8, '', []]), 8, 'method must be a non-empty string'],
    ['a method that is a number', encode([0, 9, 42, []]), 9, 'method must be a non-empty string'],
    ['a notification with params that are not an array', encode([2, 'Log.Write', 'hi']), undefined, 'params must be an array'],
  ])('refuses a request with %s, for its msgid', (_what, bytes, msgid, refused) => {
    expect(reader.readCall(bytes)).toEqual({ refused, msgid });
  });

  it('throws for bytes that are not one valid value: truncated, 0xc1, a length beyond the bytes', () => {
    const whole = encode([0, 1, 'Arith.Multiply', [2, 3]]);
    for (let n = 1; n < whole.length; n++) expect(() => reader.readCall(whole.subarray(0, n)), `first ${n} bytes`).toThrow(TRUNCATED);
    expect(() => reader.readCall(Buffer.from([0x94, 0x00, 0xc1, 0xa3, 0x41, 0x2e, 0x42, 0x90]))).toThrow('invalid MessagePack byte 0xc1 at offset 2');
    expect(() => reader.readCall(Buffer.from([0x94, 0x00, 0x01, 0xdb, 0xff, 0xff, 0xff, 0xff]))).toThrow(/exceeds the limit|truncated/);
  });
});

describe('a response --forward cannot take, with the reason it gives', () => {
  const reader = new MsgpackRpcReader();
  const NOT_A_RESPONSE = 'a message that is not a response [1, msgid, error, result]';

  it.each([
    ['a value that is not an array', encode('x'), 'a message that is not an array'],
    ['an empty array', encode([]), NOT_A_RESPONSE],
    ['a request', encode([0, 1, 'A.B', []]), NOT_A_RESPONSE],
    ['a response of 3 elements', encode([1, 1, null]), NOT_A_RESPONSE],
    ['a msgid that is a string', encode([1, 'x', null, 1]), NOT_A_RESPONSE],
  ])('closes the connection on %s', (_what, bytes, fatal) => {
    expect(reader.readResponse(bytes)).toEqual({ fatal });
  });

  it('takes any number as a msgid and any value as an error: matching them is the caller’s', () => {
    expect(reader.readResponse(encode([1, -1, { code: 1 }, null]))).toEqual({ msgid: -1, error: { code: 1 }, result: encode(null) });
  });

  it('throws for truncated bytes', () => {
    const whole = encode([1, 300, null, { a: 1 }]);
    for (let n = 1; n < whole.length; n++) expect(() => reader.readResponse(whole.subarray(0, n)), `first ${n} bytes`).toThrow(TRUNCATED);
  });
});
