import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeParams } from '../src/rpc/body.js';
import { passwordLogin } from '../src/rpc/login.js';
import { Session } from '../src/rpc/session.js';
import { TunnelError } from '../src/errors.js';
import { decode, decodeAll, encode } from '../src/wire/codec.js';
import { parse, ShapeError } from '../src/wire/messages.js';
import { checkMessagePack, MAX_DEPTH, WireFormatError } from '../src/wire/scan.js';
import { crafted, hostileMessage, validMessage } from './helpers/hostile.js';

/** What the relay and the node do with one WebSocket message: decode, then check each value's shape. */
function receive(bytes: Uint8Array): 'accepted' | 'refused' {
  let values: unknown[];
  try {
    values = decodeAll(bytes);
  } catch (err) {
    expect(err).toBeInstanceOf(Error);
    expect(err).not.toBeInstanceOf(RangeError);
    return 'refused';
  }
  let refused = false;
  for (const v of values) {
    try {
      const m = parse(v);
      // The node decodes params; the caller decodes results.
      if (m.kind === 0) decodeParams(m.params);
      if (m.kind === 1 && m.result) decode(m.result);
    } catch (err) {
      expect(err instanceof ShapeError || err instanceof TunnelError || err instanceof WireFormatError || err instanceof Error).toBe(true);
      refused = true;
    }
  }
  return refused ? 'refused' : 'accepted';
}

describe('decoding hostile bytes', () => {
  it('does not let __proto__ or constructor keys reach any prototype', () => {
    const v = decode(crafted[0]!) as Record<string, unknown>;
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(v.polluted).toBeUndefined();
    const h = parse(decode(crafted[1]!));
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(h.kind).toBe(4);
    // A role smuggled through __proto__ is not a role.
    const smuggled = Uint8Array.from([
      0x92,
      0x04,
      0x82,
      0xa7,
      ...Buffer.from('version'),
      0x01,
      0xa9,
      ...Buffer.from('__proto__'),
      0x81,
      0xa4,
      ...Buffer.from('role'),
      0xa4,
      ...Buffer.from('node'),
    ]);
    expect(() => parse(decode(smuggled))).toThrow('hello.role must be "node" or "caller"');
  });

  it(`caps nesting at ${MAX_DEPTH} levels without recursing`, () => {
    const nest = (n: number) => Uint8Array.from([...new Array(n).fill(0x91), 0xc0]);
    expect(() => decode(nest(MAX_DEPTH))).not.toThrow();
    expect(() => decode(nest(MAX_DEPTH + 1))).toThrow(WireFormatError);
    expect(() => decode(crafted[2]!)).toThrow(`nested deeper than ${MAX_DEPTH} levels`);
  });

  it('checks every length against the bytes that follow before anything is allocated', () => {
    for (const b of crafted.slice(3, 7)) expect(() => decode(b)).toThrow(/truncated|longer than/);
  });

  it('refuses every extension type except timestamp, including msgpackr records', () => {
    for (const b of crafted.slice(7, 14)) expect(() => decode(b)).toThrow(WireFormatError);
    expect(() => decode(crafted[14]!)).toThrow(/invalid MessagePack byte 0xc1/);
    const when = [new Date(0), new Date(1_700_000_000_123), new Date(-1), new Date(2 ** 40)];
    expect(decode(encode(when))).toEqual(when);
    expect(decode(encode([{ a: undefined }]))).toEqual([{ a: undefined }]);
  });

  it('round-trips whatever our encoder writes', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 8 }), (v) => {
        // msgpackr renames a __proto__ key on purpose (see the test above).
        fc.pre(!JSON.stringify(v).includes('"__proto__"'));
        // Through JSON because MessagePack has no -0 integer: msgpackr writes -0 as 0.
        expect(JSON.stringify(decode(encode(v)))).toBe(JSON.stringify(v));
      }),
      { numRuns: 1_000 },
    );
  });

  it('survives 10 000 random and mutated messages: each is accepted or refused with an Error', () => {
    let accepted = 0;
    let refused = 0;
    fc.assert(
      fc.property(hostileMessage, (bytes) => {
        if (receive(bytes) === 'accepted') accepted++;
        else refused++;
      }),
      { numRuns: 10_000 },
    );
    expect(accepted + refused).toBe(10_000);
    // Both branches are exercised: the generator is not only producing garbage.
    expect(accepted).toBeGreaterThan(100);
    expect(refused).toBeGreaterThan(100);
  });

  it('agrees with msgpackr on every message it accepts', () => {
    fc.assert(
      fc.property(validMessage, (bytes) => {
        expect(() => checkMessagePack(bytes)).not.toThrow();
      }),
      { numRuns: 1_000 },
    );
  });
});

describe('the Login helper', () => {
  it('stops checking passwords on a connection after 5 failures', async () => {
    const login = passwordLogin({ alice: 'right-password' });
    const session = new Session('s1');
    const ctx = { session } as never;
    for (let i = 0; i < 5; i++)
      await expect(login(ctx, 'alice', 'wrong')).rejects.toMatchObject({ code: 'LOGIN_FAILED', message: 'username or password incorrect' });
    await expect(login(ctx, 'alice', 'right-password')).rejects.toMatchObject({
      code: 'LOGIN_FAILED',
      message: expect.stringContaining('too many failed Login attempts (5)'),
    });
    expect(session.loggedIn).toBe(false);
    const fresh = { session: new Session('s2') } as never;
    await expect(login(fresh, 'alice', 'right-password')).resolves.toBe('alice');
  });
});
