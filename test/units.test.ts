import { describe, expect, it, vi } from 'vitest';
import { isCallOptions } from '../src/client/options.js';
import { Backoff } from '../src/util/backoff.js';
import { SessionTable } from '../src/node/sessions.js';
import { Cancellation } from '../src/rpc/cancellation.js';
import { defineService, discoverMethods, invoke, ServiceRegistry } from '../src/rpc/registry.js';
import { Session } from '../src/rpc/session.js';
import { withContext, type CallContext } from '../src/rpc/context.js';
import { listenAddress, relayUrl } from '../src/util/address.js';
import { parseDuration, parseSize } from '../src/util/units.js';
import { silentLogger } from '../src/util/logger.js';
import { LARGE_HEAP, SMALL_HEAP, wantIncremental } from '../src/util/gc.js';
import { passwordLogin } from '../src/rpc/login.js';
import { PendingTable } from '../src/rpc/pending.js';
import { waitUntil } from './helpers/wait.js';

const ctx = (session = new Session('s')): CallContext => ({
  session,
  caller: { address: '127.0.0.1:1', identity: null },
  node: 'n',
  method: 'X.Y',
  signal: new AbortController().signal,
  deadline: Date.now() + 1000,
  log: silentLogger,
});

describe('backoff', () => {
  it('doubles the ceiling up to the cap, draws below it, and resets', () => {
    const b = new Backoff(500, 30_000, { random: () => 0.5 });
    const ceilings = Array.from({ length: 8 }, () => b.next().ceiling);
    expect(ceilings).toEqual([500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    b.reset();
    expect(b.next()).toEqual({ delay: 250, ceiling: 500, attempt: 1 });
    b.exhaust();
    expect(b.next().ceiling).toBe(30_000);
  });
  it('counts attempts, not the jump to the cap: a refusal at the first connect is attempt 1', () => {
    const b = new Backoff(500, 30_000, { random: () => 0.5 });
    b.exhaust();
    expect(b.next()).toEqual({ delay: 15_000, ceiling: 30_000, attempt: 1 });
    expect(b.next()).toMatchObject({ ceiling: 30_000, attempt: 2 });
    b.reset();
    expect(b.next()).toEqual({ delay: 250, ceiling: 500, attempt: 1 });
  });
  it('refuses nonsense settings', () => {
    expect(() => new Backoff(0, 10)).toThrow(/base/);
    expect(() => new Backoff(100, 10)).toThrow(/cap/);
  });
});

describe('service registry', () => {
  class Calc {
    private secret = 1;
    Add(a: number, b: number) {
      return a + b + this.secret - 1;
    }
    _hidden() {}
  }
  it('discovers methods of objects and classes like Go rpc.Register', () => {
    expect(discoverMethods(new Calc())).toEqual(['Add']);
    expect(discoverMethods({ A() {}, b: 1, _c() {} })).toEqual(['A']);
  });
  it("passes exactly the caller's arguments: rest and default parameters work, fn.length plays no part", async () => {
    const r = new ServiceRegistry().register('Calc', new Calc()).register('M', {
      Sum: (...nums: number[]) => nums.reduce((x, y) => x + y, 0),
      Scale: (x: number, factor = 2) => x * factor,
      Count: (...args: unknown[]) => args.length,
      Ping: () => 'pong',
    });
    expect(await invoke(r.lookup('Calc', 'Add'), [2, 3], ctx())).toBe(5);
    expect(await invoke(r.lookup('M', 'Sum'), [1, 2, 3], ctx())).toBe(6);
    expect(await invoke(r.lookup('M', 'Sum'), [], ctx())).toBe(0);
    expect(await invoke(r.lookup('M', 'Scale'), [3], ctx())).toBe(6);
    expect(await invoke(r.lookup('M', 'Scale'), [3, 10], ctx())).toBe(30);
    expect(await invoke(r.lookup('M', 'Count'), [1, null, {}], ctx())).toBe(3);
    // Go's net/rpc sends one nil or empty struct to a method that takes nothing: it is ignored.
    expect(await invoke(r.lookup('M', 'Ping'), [null], ctx())).toBe('pong');
    expect(await invoke(r.lookup('M', 'Ping'), [{}], ctx())).toBe('pong');
  });
  it('gives a withContext handler the context first, with `this` the service object', async () => {
    const svc = {
      prefix: 'hi',
      Greet: withContext(function (this: { prefix: string }, c: CallContext, name: string) {
        return `${this.prefix} ${name} from ${c.caller.address} on ${c.node}`;
      }),
      All: withContext((c, ...names: string[]) => `${c.method}:${names.join(',')}`),
      Who: withContext((c) => c.session.id),
    };
    const r = new ServiceRegistry().register('G', svc);
    expect(await invoke(r.lookup('G', 'Greet'), ['bob'], ctx())).toBe('hi bob from 127.0.0.1:1 on n');
    expect(await invoke(r.lookup('G', 'All'), ['a', 'b', 'c'], ctx())).toBe('X.Y:a,b,c');
    expect(await invoke(r.lookup('G', 'Who'), [null], ctx(new Session('s9')))).toBe('s9');
    expect(withContext(svc.Who)).toBe(svc.Who);
  });
  it('says how to fix a handler that still expects the context as its last parameter', async () => {
    const r = new ServiceRegistry().register('Old', {
      Greet(name: string, c: CallContext) {
        return `hi ${name}, I am ${c.session.user}`;
      },
      Broken(o: { deep?: { x: number } }) {
        return o.deep!.x;
      },
    });
    const err = await invoke(r.lookup('Old', 'Greet'), ['bob'], ctx()).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: 'APP_ERROR',
      message: expect.stringMatching(/Old\.Greet failed: .*'session'.*wrap it with withContext\(\(ctx, \.\.\.args\) =>/),
    });
    // An unrelated TypeError keeps its own message.
    const other = await invoke(r.lookup('Old', 'Broken'), [{}], ctx()).catch((e: unknown) => e);
    expect(other).toBeInstanceOf(TypeError);
    expect((other as Error).message).not.toMatch(/withContext/);
  });
  it('enforces requireLogin, declared on register or with defineService', async () => {
    const r = new ServiceRegistry()
      .register('Sec', { Login: passwordLogin({ u: 'p' }), Get: () => 1 }, { requireLogin: true })
      .register('Def', defineService({ Open: () => 'open', Shut: () => 'shut' }, { requireLogin: ['Shut'] }))
      .register('Plain', defineService({ Open: () => 'open' }));
    const s = new Session('s1');
    await expect(invoke(r.lookup('Sec', 'Get'), [], ctx(s))).rejects.toMatchObject({ code: 'NOT_LOGGED_IN' });
    await expect(invoke(r.lookup('Sec', 'Login'), ['u:wrong'], ctx(s))).rejects.toMatchObject({
      code: 'LOGIN_FAILED',
      message: 'username or password incorrect',
    });
    expect(s.failedLogins).toBe(1);
    await expect(invoke(r.lookup('Sec', 'Login'), [7], ctx(s))).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    await expect(invoke(r.lookup('Def', 'Shut'), [], ctx(s))).rejects.toMatchObject({ code: 'NOT_LOGGED_IN' });
    expect(await invoke(r.lookup('Def', 'Open'), [], ctx(s))).toBe('open');
    expect(await invoke(r.lookup('Plain', 'Open'), [], ctx(s))).toBe('open');
    expect(await invoke(r.lookup('Sec', 'Login'), ['u', 'p'], ctx(s))).toBe('u');
    expect(await invoke(r.lookup('Sec', 'Get'), [], ctx(s))).toBe(1);
    expect(await invoke(r.lookup('Def', 'Shut'), [], ctx(s))).toBe('shut');
    expect(() => r.lookup('Nope', 'X')).toThrow(/does not serve Nope; it serves Sec, Def, Plain/);
    expect(() => r.lookup('Sec', 'Sub')).toThrow(/no method Sub; methods: Get, Login/);
  });
  it('recognises marks made by another copy of the library (a --services module with its own install)', async () => {
    const foreign = Object.assign((c: CallContext) => c.node, { [Symbol.for('tunnel-rpc.withContext')]: true });
    const impl = { Where: foreign, Secret: () => 42 };
    Object.defineProperty(impl, Symbol.for('tunnel-rpc.serviceOptions'), { value: { requireLogin: ['Secret'] } });
    const r = new ServiceRegistry().register('F', impl);
    expect(await invoke(r.lookup('F', 'Where'), [], ctx())).toBe('n');
    await expect(invoke(r.lookup('F', 'Secret'), [], ctx())).rejects.toMatchObject({ code: 'NOT_LOGGED_IN' });
  });
  it('refuses bad registrations', () => {
    expect(() => new ServiceRegistry().register('bad name', { A() {} })).toThrow(/service name/);
    expect(() => new ServiceRegistry().register('Empty', {})).toThrow(/no methods/);
    expect(() => new ServiceRegistry().register('S', { A() {} }, { requireLogin: ['B'] })).toThrow(/unknown methods: B/);
    expect(() => withContext(42 as never)).toThrow(/withContext takes a function, got number/);
  });
});

describe('sessions', () => {
  it('aborts running handlers when a session closes', () => {
    const t = new SessionTable();
    const c = new Cancellation();
    const signal = c.signal;
    t.get('a').track(c);
    expect(t.close('a')).toBe(true);
    expect(signal.aborted).toBe(true);
    expect((signal.reason as { code: string }).code).toBe('CANCELLED');
    // A signal first read after the abort is born aborted.
    const late = new Cancellation();
    late.abort(new Error('x'));
    expect(late.signal.aborted).toBe(true);
    expect(t.has('a')).toBe(false);
  });
});

describe('pending table', () => {
  it('hands out unique ids and skips ids in use', () => {
    const p = new PendingTable<string>();
    const a = p.add('a');
    const b = p.add('b');
    expect(a).not.toBe(b);
    expect(p.take(a)).toBe('a');
    expect(p.take(a)).toBeUndefined();
    expect(p.drain()).toEqual(['b']);
  });
});

describe('addresses and units', () => {
  it('turns what users type into relay URLs', () => {
    expect(relayUrl('localhost:9090')).toBe('ws://localhost:9090/');
    expect(relayUrl(':9091')).toBe('ws://localhost:9091/');
    expect(() => relayUrl('relay.example')).toThrow(/give a port/);
    expect(relayUrl('[::1]:9090')).toBe('ws://[::1]:9090/');
    expect(relayUrl('wss://relay.example:443/tunnel')).toBe('wss://relay.example/tunnel');
    expect(() => relayUrl('http://x')).toThrow(/ws:\/\/ or wss:\/\//);
    expect(() => relayUrl('h:notaport')).toThrow(/port/);
    expect(listenAddress(':9090', '--listen')).toEqual({ host: '', port: 9090 });
  });
  it('parses durations and sizes with clear errors', () => {
    expect(parseDuration('30s', 't')).toBe(30_000);
    expect(parseDuration('500ms', 't')).toBe(500);
    expect(parseDuration('2m', 't')).toBe(120_000);
    expect(parseDuration('250', 't')).toBe(250);
    expect(() => parseDuration('soon', 'timeout')).toThrow(/--timeout must be a duration/);
    expect(parseSize('16MiB', 's')).toBe(16 * 1024 * 1024);
    expect(() => parseSize('big', 'max-message')).toThrow(/--max-message/);
  });
  it('tells call options from arguments', () => {
    expect(isCallOptions({ timeout: 5 })).toBe(true);
    expect(isCallOptions({ timeout: 5, other: 1 })).toBe(false);
    expect(isCallOptions({})).toBe(false);
    expect(isCallOptions([1])).toBe(false);
    expect(isCallOptions(new Date())).toBe(false);
  });
});

describe('deadline wheel', () => {
  it('expires entries after their timeout, not before, and forgets removed ones', async () => {
    const { DeadlineWheel } = await import('../src/rpc/deadlines.js');
    const expired: string[] = [];
    const wheel = new DeadlineWheel<{ name: string; deadlineSlot: number }>((e) => expired.push(e.name), 5);
    const t0 = Date.now();
    const a = { name: 'a', deadlineSlot: 0 };
    const b = { name: 'b', deadlineSlot: 0 };
    const c = { name: 'c', deadlineSlot: 0 };
    wheel.add(a, 30);
    wheel.add(b, 60);
    wheel.add(c, 30);
    wheel.remove(c);
    expect(wheel.pending).toBe(2);
    await waitUntil(() => expired.length >= 2, 5_000, 'a and b to expire', 5);
    expect(expired).toEqual(['a', 'b']);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(55);
    expect(wheel.pending).toBe(0);
  });

  it('keeps one interval for calls made one at a time, and stops it one tick after the last', async () => {
    const { DeadlineWheel } = await import('../src/rpc/deadlines.js');
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'setTimeout', 'clearTimeout', 'Date'] });
    try {
      const started = vi.spyOn(globalThis, 'setInterval');
      const expired: string[] = [];
      const wheel = new DeadlineWheel<{ name: string; deadlineSlot: number }>((e) => expired.push(e.name), 10);
      for (let i = 0; i < 100; i++) {
        const call = { name: `c${i}`, deadlineSlot: 0 };
        wheel.add(call, 1_000);
        wheel.remove(call);
      }
      expect(started).toHaveBeenCalledTimes(1);
      expect(vi.getTimerCount()).toBe(1);
      vi.advanceTimersByTime(10);
      expect(vi.getTimerCount()).toBe(0);
      // A call after the stop starts it again, and still expires on time.
      const late = { name: 'late', deadlineSlot: 0 };
      wheel.add(late, 50);
      vi.advanceTimersByTime(70);
      expect(expired).toEqual(['late']);
      expect(vi.getTimerCount()).toBe(0);
      started.mockRestore();
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('garbage-collection tuning (util/gc.ts)', () => {
  it('turns incremental marking off only while the heap is small, with hysteresis', () => {
    // On (the default) it stays on until the heap drops to SMALL_HEAP, then off until it passes LARGE_HEAP.
    expect(wantIncremental(10 * 1024 * 1024, true)).toBe(false);
    expect(wantIncremental(SMALL_HEAP, true)).toBe(false);
    expect(wantIncremental(SMALL_HEAP + 1, true)).toBe(true);
    expect(wantIncremental(40 * 1024 * 1024, false)).toBe(false);
    expect(wantIncremental(LARGE_HEAP, false)).toBe(false);
    expect(wantIncremental(LARGE_HEAP + 1, false)).toBe(true);
    expect(SMALL_HEAP).toBeLessThan(LARGE_HEAP);
  });
});
