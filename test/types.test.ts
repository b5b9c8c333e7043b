// Type-level tests of typed stubs, withContext and error codes. tsconfig.json includes this file, so
// `npm run build` checks every `@ts-expect-error` below (an error that stops happening fails the
// build); vitest runs the same file, where expectTypeOf is a no-op and the stub runtime is tested
// against a fake client.
import { describe, expect, expectTypeOf, it } from 'vitest';
import {
  defineService,
  ErrorCode,
  isTunnelError,
  passwordLogin,
  TunnelError,
  withContext,
  type BroadcastResult,
  type CallContext,
  type Client,
  type ServiceStub,
  type TunnelErrorCode,
  type UntypedService,
} from '../src/index.js';
import { serviceStub, type StubTarget } from '../src/client/stub.js';
import type { Arith as ExampleArith } from '../src/services/arith.js';
import type { Wire } from '../src/index.js';
import type { Values } from './fixtures/wire-values.js';

// eslint-disable-next-line @typescript-eslint/no-unused-vars -- only its type is used: typeof Arith
const Arith = defineService({
  Multiply(a: number, b: number) {
    return a * b;
  },
  Sum(...nums: number[]) {
    return nums.reduce((x, y) => x + y, 0);
  },
  Scale(x: number, factor = 2) {
    return x * factor;
  },
  async Later(s: string) {
    return s.length;
  },
  Maybe(flag: boolean): string | undefined {
    return flag ? 'yes' : undefined;
  },
  Hello: withContext((ctx, name: string) => `Hello ${name} from ${ctx.caller.address}`),
  Login: passwordLogin({ alice: 'secret' }),
  _private() {
    return 1;
  },
  label: 'not a method',
});

class Calc {
  private secret = 1;
  Add(a: number, b: number): number {
    return a + b + this.secret - 1;
  }
}

/** A stub whose calls resolve with what they were asked, so the runtime can be checked without a relay. */
function fakeClient() {
  const sent: { kind: 'request' | 'broadcast'; method: string; args: readonly unknown[]; options: object }[] = [];
  const target: StubTarget = {
    async request(method, args, options) {
      sent.push({ kind: 'request', method, args, options });
      return method;
    },
    async broadcast(method, args, options) {
      sent.push({ kind: 'broadcast', method, args, options });
      return [{ node: 'n1', ok: true, result: method, ms: 1 }];
    },
  };
  return { target, sent };
}

describe('typed stubs (types)', () => {
  const arith = serviceStub<typeof Arith>(fakeClient().target, 'Arith');

  it("gives each method the handler's parameters and a promise of its result", () => {
    expectTypeOf(arith.Multiply).toEqualTypeOf<(a: number, b: number) => Promise<number>>();
    expectTypeOf(arith.Sum).toEqualTypeOf<(...nums: number[]) => Promise<number>>();
    expectTypeOf(arith.Scale).toEqualTypeOf<(x: number, factor?: number) => Promise<number>>();
    expectTypeOf(arith.Later).returns.toEqualTypeOf<Promise<number>>();
    // undefined travels as MessagePack nil
    expectTypeOf(arith.Maybe).returns.toEqualTypeOf<Promise<string | null>>();
  });

  it('leaves the context out of a withContext handler', () => {
    expectTypeOf(arith.Hello).toEqualTypeOf<(name: string) => Promise<string>>();
    expectTypeOf(arith.Login).parameters.toEqualTypeOf<[credentials: string] | [user: string, password: string]>();
    expectTypeOf(arith.Login).returns.toEqualTypeOf<Promise<string>>();
  });

  it('refuses wrong arguments and unknown methods at compile time', () => {
    const compileOnly = () => {
      const six: Promise<number> = arith.Multiply(2, 3);
      // @ts-expect-error a string where a number goes
      void arith.Multiply('2', 3);
      // @ts-expect-error too few arguments
      void arith.Multiply(2);
      // @ts-expect-error no such method
      void arith.Divide(1, 2);
      // @ts-expect-error names starting with _ are never served
      void arith._private();
      // @ts-expect-error not a method
      void arith.label;
      // @ts-expect-error the stub never passes the context
      void arith.Hello({} as CallContext, 'bob');
      // @ts-expect-error rest parameters are typed too
      void arith.Sum(1, '2');
      void arith.Login('alice:secret');
      void arith.Login('alice', 'secret');
      // @ts-expect-error Login takes one or two strings
      void arith.Login(1);
      return six;
    };
    expect(typeof compileOnly).toBe('function');
  });

  it('types with() and broadcast', () => {
    expectTypeOf(arith.with({ timeout: 500 })).toEqualTypeOf<ServiceStub<typeof Arith>>();
    expectTypeOf(arith.with({ node: 'office-1', retry: 2 }).Multiply).returns.toEqualTypeOf<Promise<number>>();
    expectTypeOf(arith.broadcast.Multiply).returns.toEqualTypeOf<Promise<BroadcastResult<number>[]>>();
    expectTypeOf(arith.broadcast.with({ where: { region: 'eu' }, timeout: 5_000 }).Hello).returns.toEqualTypeOf<Promise<BroadcastResult<string>[]>>();
    const compileOnly = async () => {
      // @ts-expect-error a misspelt option
      arith.with({ timout: 500 });
      // @ts-expect-error options are typed
      arith.with({ timeout: '500' });
      // @ts-expect-error broadcast has no node option
      arith.broadcast.with({ node: 'office-1' });
      // @ts-expect-error no such method on the broadcast side either
      void arith.broadcast.Divide(1, 2);
      for (const r of await arith.broadcast.Multiply(2, 3)) {
        if (r.ok) expectTypeOf(r.result).toEqualTypeOf<number>();
        else expectTypeOf(r.error).toEqualTypeOf<TunnelError>();
      }
    };
    expect(typeof compileOnly).toBe('function');
  });

  it('types stubs of classes, of the example services, and untyped stubs', () => {
    const { target } = fakeClient();
    const calc = serviceStub<Calc>(target, 'Calc');
    expectTypeOf(calc.Add).toEqualTypeOf<(a: number, b: number) => Promise<number>>();
    expectTypeOf(calc).not.toHaveProperty('secret');
    const example = serviceStub<typeof ExampleArith>(target, 'Arith');
    expectTypeOf(example.Multiply).toBeCallableWith(2, 3);
    expectTypeOf(example.Multiply).toBeCallableWith({ X: 2, Y: 3 });
    expectTypeOf((client: Client) => client.service<typeof Arith>('Arith')).returns.toEqualTypeOf<ServiceStub<typeof Arith>>();
    expectTypeOf((client: Client) => client.service('Anything')).returns.toEqualTypeOf<ServiceStub<UntypedService>>();
    const any = serviceStub<UntypedService>(target, 'Anything');
    expectTypeOf(any.Whatever).toBeCallableWith(1, 'two', { three: 3 });
    expectTypeOf(any.Whatever).returns.toEqualTypeOf<Promise<unknown>>();
    expectTypeOf(any.with({ timeout: 1 })).toEqualTypeOf(any);
  });
});

describe('what survives the wire (types): each stub type is what test/wire-values.test.ts sees arrive', () => {
  const values = serviceStub<typeof Values>(fakeClient().target, 'Values');

  it('types results as they arrive', () => {
    expectTypeOf(values.Map).returns.toEqualTypeOf<Promise<Record<string, number>>>();
    expectTypeOf(values.NumberKeys).returns.toEqualTypeOf<Promise<Record<string, string>>>();
    expectTypeOf(values.Set).returns.toEqualTypeOf<Promise<string[]>>();
    expectTypeOf(values.Small).returns.toEqualTypeOf<Promise<number | bigint>>();
    expectTypeOf(values.Large).returns.toEqualTypeOf<Promise<number | bigint>>();
    expectTypeOf(values.Date).returns.toEqualTypeOf<Promise<Date>>();
    expectTypeOf(values.Bytes).returns.toEqualTypeOf<Promise<Uint8Array>>();
    expectTypeOf(values.Int16).returns.toEqualTypeOf<Promise<Uint8Array>>();
    expectTypeOf(values.Error).returns.toEqualTypeOf<Promise<{ name: string; message: string; key: string }>>();
    expectTypeOf(values.RegExp).returns.toEqualTypeOf<Promise<string>>();
    expectTypeOf(values.Url).returns.toEqualTypeOf<Promise<string>>();
    // Own fields only: the method stays behind.
    expectTypeOf(values.Instance).returns.toEqualTypeOf<Promise<{ x: number; y: number }>>();
    expectTypeOf(values.Functions).returns.toEqualTypeOf<Promise<{ keep: number; list: (number | null)[] }>>();
    expectTypeOf(values.Nothing).returns.toEqualTypeOf<Promise<null>>();
    expectTypeOf(values.Optional).returns.toEqualTypeOf<Promise<{ a?: string; b: number }>>();
    expectTypeOf(values.Nested).returns.toEqualTypeOf<Promise<{ at: Date; tags: number[]; counts: Record<string, number | bigint> }>>();
    expectTypeOf<Wire<ReadonlyMap<string, Set<bigint>>>>().toEqualTypeOf<Record<string, (number | bigint)[]>>();
    expectTypeOf<Wire<[Date, () => void]>>().toEqualTypeOf<[Date, null]>();
    // A handler typed loosely stays loose: any stays any, unknown stays unknown.
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    expectTypeOf<Wire<any>>().toBeAny();
    expectTypeOf<Wire<unknown>>().toBeUnknown();
  });

  it('types parameters as the handler receives them', () => {
    expectTypeOf(values.Received).parameters.toEqualTypeOf<[m: Record<string, number>, s: number[], n: number | bigint, d: Date, f: null]>();
    const compileOnly = () => {
      void values.Received({ a: 1 }, [1], 5, new Date(), null);
      // @ts-expect-error the handler receives a record, not a Map: the stub asks for what it gets
      void values.Received(new Map([['a', 1]]), [1], 5, new Date(), null);
    };
    expect(typeof compileOnly).toBe('function');
  });
});

describe('withContext and error codes (types)', () => {
  it('types the context and keeps `this`', () => {
    // eslint-disable-next-line @typescript-eslint/no-unused-vars -- only its type is used
    const svc = {
      prefix: 'hi',
      Greet: withContext(function (this: { prefix: string }, ctx, name: string) {
        expectTypeOf(ctx).toEqualTypeOf<CallContext>();
        return `${this.prefix} ${name}`;
      }),
    };
    expectTypeOf<ServiceStub<typeof svc>['Greet']>().toEqualTypeOf<(name: string) => Promise<string>>();
    // @ts-expect-error the context comes first, so a first parameter of another type does not fit
    withContext((name: string) => name);
  });

  it('narrows err.code with isTunnelError and keeps custom codes', () => {
    const err: unknown = new TunnelError('OUT_OF_STOCK', 'none left');
    if (isTunnelError(err, 'NODE_LOST')) expectTypeOf(err.code).toEqualTypeOf<'NODE_LOST'>();
    if (isTunnelError(err, ErrorCode.TIMEOUT)) expectTypeOf(err.code).toEqualTypeOf<'TIMEOUT'>();
    if (isTunnelError(err)) expectTypeOf(err.code).toEqualTypeOf<TunnelErrorCode>();
    expectTypeOf<ErrorCode>().toExtend<TunnelErrorCode>();
    expectTypeOf<'NODE_LOST'>().toExtend<ErrorCode>();
    // @ts-expect-error not one of the project's codes
    const wrong: ErrorCode = 'NODE_GONE';
    void wrong;
    expect(isTunnelError(err, 'OUT_OF_STOCK')).toBe(true);
    expect(isTunnelError(err, 'NODE_LOST')).toBe(false);
  });
});

describe('typed stubs (run time)', () => {
  it("sends Service.Method with the arguments and the stub's options", async () => {
    const { target, sent } = fakeClient();
    const stub = serviceStub<typeof Arith>(target, 'Arith');
    expect(await stub.Multiply(2, 3)).toBe('Arith.Multiply');
    expect(await stub.Sum()).toBe('Arith.Sum');
    expect(stub.Multiply).toBe(stub.Multiply);
    const controller = new AbortController();
    const slow = stub.with({ timeout: 500, node: 'office-1' }).with({ timeout: undefined, retry: 1, signal: controller.signal });
    await slow.Sum(1, 2, 3);
    expect(sent).toEqual([
      { kind: 'request', method: 'Arith.Multiply', args: [2, 3], options: {} },
      { kind: 'request', method: 'Arith.Sum', args: [], options: {} },
      { kind: 'request', method: 'Arith.Sum', args: [1, 2, 3], options: { timeout: 500, node: 'office-1', retry: 1, signal: controller.signal } },
    ]);
  });

  it("broadcasts with the stub's timeout, where and signal, and refuses node, selector and retry", async () => {
    const { target, sent } = fakeClient();
    const stub = serviceStub<typeof Arith>(target, 'Arith').with({ timeout: 900, affinity: false });
    expect(await stub.broadcast.Multiply(2, 3)).toEqual([{ node: 'n1', ok: true, result: 'Arith.Multiply', ms: 1 }]);
    await stub.broadcast
      .with({ where: { region: 'eu' } })
      .with({ timeout: 100 })
      .Hello('bob');
    expect(sent).toEqual([
      { kind: 'broadcast', method: 'Arith.Multiply', args: [2, 3], options: { timeout: 900 } },
      { kind: 'broadcast', method: 'Arith.Hello', args: ['bob'], options: { timeout: 100, where: { region: 'eu' } } },
    ]);
    expect(() => stub.with({ node: 'office-1', retry: 2 }).broadcast).toThrow(/does not combine with node, retry/);
    expect(() => stub.broadcast.with({ node: 'x' } as never)).toThrow(/unknown broadcast option node; broadcast options are timeout, where, signal/);
  });

  it('is not a promise, sends nothing when printed, and refuses typos and bad names', async () => {
    const { target, sent } = fakeClient();
    const stub = serviceStub<typeof Arith>(target, 'Arith');
    expect(await stub).toBe(stub);
    expect((stub as unknown as Record<string, unknown>).then).toBeUndefined();
    expect((stub as unknown as Record<symbol, unknown>)[Symbol.iterator]).toBeUndefined();
    expect(() => JSON.stringify(stub)).not.toThrow();
    expect(() => String(stub)).toThrow(TypeError);
    expect((stub as unknown as Record<string, unknown>)._private).toBeUndefined();
    expect((stub as unknown as Record<string, unknown>).$$typeof).toBeUndefined();
    expect(sent).toEqual([]);
    expect(() => stub.with({ timout: 1 } as never)).toThrow(/unknown call option timout; call options are timeout, node, where/);
    expect(() => stub.with(null as never)).toThrow(/with\(\) takes an object of call options, got null/);
    expect(() => {
      (stub as unknown as Record<string, unknown>).Multiply = 1;
    }).toThrow(TypeError);
    expect(() => serviceStub(target, 'no spaces')).toThrow(/service name "no spaces" must start with a letter/);
  });
});
