// What survives the wire (docs/LIBRARY.md): each kind of value round-trips through a real relay and
// node, in both directions; test/types.test.ts checks the stub types against the same service.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, isTunnelError, Relay, ServiceRegistry, TunnelNode, type Client } from '../src/index.js';
import { decode, encode } from '../src/wire/codec.js';
import { AT, Values } from './fixtures/wire-values.js';

/** msgpackr's option names, which must never reach a user. */
const MSGPACKR_OPTIONS = /useBigIntExtension|largeBigInt|mapsAsObjects|moreTypes|useRecords|structuredClone|int64AsType/;

describe('what survives the wire, through a real relay and node', () => {
  let relay: Relay;
  let node: TunnelNode;
  let client: Client;

  beforeAll(async () => {
    relay = new Relay({ listen: '127.0.0.1:0' });
    const { url } = await relay.listen();
    node = new TunnelNode({ relay: url, name: 'values-1', services: new ServiceRegistry().register('Values', Values) });
    node.start();
    await node.waitConnected();
    client = await connect(url, { timeout: 20_000 });
  });
  afterAll(async () => {
    await client?.close();
    await node?.stop(1_000);
    await relay?.close();
  });

  const values = () => client.service<typeof Values>('Values');

  it('a Map arrives as an object with string keys, a Set as an array', async () => {
    const m = await values().Map();
    expect(m).not.toBeInstanceOf(Map);
    expect(m).toEqual({ a: 1, b: 2 });
    expect(await values().NumberKeys()).toEqual({ '7': 'seven' });
    expect(await values().Set()).toEqual(['x', 'y']);
  });

  it('a bigint arrives as a number within ±2^53, as a bigint beyond', async () => {
    expect(await values().Small()).toBe(5);
    expect(await values().Large()).toBe(2n ** 60n + 1n);
  });

  it('a Date arrives as a Date, to the millisecond', async () => {
    const d = await values().Date();
    expect(d).toBeInstanceOf(Date);
    expect(d.toISOString()).toBe(AT.toISOString());
  });

  it('bytes arrive as a Uint8Array, and a typed array as its real bytes', async () => {
    const b = await values().Bytes();
    expect(b).toBeInstanceOf(Uint8Array);
    expect(Buffer.from(b).toString()).toBe('hi');
    const i = await values().Int16();
    expect(i).toBeInstanceOf(Uint8Array);
    expect([...new Int16Array(new Uint8Array(i).buffer)]).toEqual([1, -2]);
  });

  it('an Error value arrives as its name, message and own fields, without its stack', async () => {
    const e = await values().Error();
    expect(e).toEqual({ name: 'NotFound', message: 'no cat', key: 'cat' });
    expect(Object.keys(e)).not.toContain('stack');
  });

  it('a RegExp arrives as its source, an object with toJSON as what toJSON gives, an instance as its own fields', async () => {
    expect(await values().RegExp()).toBe('/a+/g');
    expect(await values().Url()).toBe('http://example.test/x');
    expect(await values().Instance()).toEqual({ x: 3, y: 4 });
  });

  it('functions are dropped from objects and null in arrays; undefined is null at the top and stays inside', async () => {
    const f = await values().Functions();
    expect(f).toEqual({ keep: 1, list: [1, null] });
    expect(Object.keys(f)).toEqual(['keep', 'list']);
    expect(await values().Nothing()).toBeNull();
    const o = await values().Optional();
    expect(o).toEqual({ b: 1 });
    expect('a' in o && o.a).toBeUndefined();
  });

  it('nested values follow the same rules', async () => {
    const n = await values().Nested();
    expect(n.at).toBeInstanceOf(Date);
    expect(n).toEqual({ at: AT, tags: [1], counts: { k: 9 } });
  });

  it('arguments arrive at the handler by the same rules', async () => {
    // The stub asks for what the handler gets; the untyped call sends what a careless caller would.
    const got = (await client.call('Values.Received', new Map([['a', 1]]), new Set([2]), 3n, AT, () => 1)) as Record<string, unknown>;
    expect(got).toEqual({ m: ['Object', { a: 1 }], s: ['Array', [2]], n: ['number', 3], d: ['Date', AT.toISOString()], f: 'null' });
  });

  it('what cannot travel is refused in our words, naming where it sat', async () => {
    const huge = await values()
      .Huge()
      .catch((e: unknown) => e);
    expect(isTunnelError(huge, 'APP_ERROR')).toBe(true);
    expect((huge as Error).message).toBe(
      'Values.Huge returned a value that cannot be encoded: the bigint 1180591620717411303424 does not fit in 64 bits, the largest integer MessagePack carries; send it as a string (String(n))',
    );
    const promise = await values()
      .Promise()
      .catch((e: unknown) => e);
    expect((promise as Error).message).toBe('Values.Promise returned a value that cannot be encoded: at .later: a Promise cannot be sent: await it first');
    const key = await values()
      .BadKey()
      .catch((e: unknown) => e);
    expect((key as Error).message).toMatch(/a Map key must be a string or a number \(a Map arrives as an object\); key 0 is object$/);
    const arg = await client.call('Values.Received', [1, { big: -(2n ** 64n) }]).catch((e: unknown) => e);
    expect(isTunnelError(arg, 'BAD_REQUEST')).toBe(true);
    expect((arg as Error).message).toMatch(
      /^arguments of Values.Received cannot be encoded: at \[0\]\[1\]\.big: the bigint -18446744073709551616 does not fit in 64 bits/,
    );
    for (const err of [huge, promise, key, arg]) expect((err as Error).message).not.toMatch(MSGPACKR_OPTIONS);
    // The node goes on serving.
    expect(await values().Small()).toBe(5);
  });

  it("a foreign peer's map with a key that is not a string or number is refused in our words", () => {
    // codec.encode writes what it is given (a Go or Python peer could send this); decoding refuses it.
    const bytes = encode(new Map([[[1], 'x']]));
    expect(() => decode(bytes)).toThrow('a map key is an array, a map or nil: keys must be strings or numbers (maps arrive as objects)');
    let message = '';
    try {
      decode(bytes);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).not.toMatch(MSGPACKR_OPTIONS);
  });
});
