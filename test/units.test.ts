import { describe, expect, it } from 'vitest';
import { isCallOptions } from '../src/client/options.js';
import { Backoff } from '../src/node/backoff.js';
import { SessionTable } from '../src/node/sessions.js';
import { Cancellation } from '../src/rpc/cancellation.js';
import { discoverMethods, invoke, ServiceRegistry } from '../src/rpc/registry.js';
import { Session } from '../src/rpc/session.js';
import type { CallContext } from '../src/rpc/context.js';
import { listenAddress, relayUrl } from '../src/util/address.js';
import { parseDuration, parseSize } from '../src/util/units.js';
import { silentLogger } from '../src/util/logger.js';
import { passwordLogin } from '../src/rpc/login.js';
import { PendingTable } from '../src/rpc/pending.js';

const ctx = (session = new Session('s')): CallContext => ({
  session, caller: { address: '127.0.0.1:1', identity: null }, node: 'n', method: 'X.Y',
  signal: new AbortController().signal, deadline: Date.now() + 1000, log: silentLogger,
});

describe('backoff', () => {
  it('doubles the ceiling up to the cap, draws below it, and resets', () => {
    const b = new Backoff(500, 30_000, () => 0.5);
    const ceilings = Array.from({ length: 8 }, () => b.next().ceiling);
    expect(ceilings).toEqual([500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    b.reset();
    expect(b.next()).toEqual({ delay: 250, ceiling: 500, attempt: 1 });
    b.exhaust();
    expect(b.next().ceiling).toBe(30_000);
  });
  it('refuses nonsense settings', () => {
    expect(() => new Backoff(0, 10)).toThrow(/base/);
    expect(() => new Backoff(100, 10)).toThrow(/cap/);
  });
});

describe('service registry', () => {
  class Calc {
    private secret = 1;
    Add(a: number, b: number, _ctx: CallContext) {
      return a + b + this.secret - 1;
    }
    _hidden() {}
  }
  it('discovers methods of objects and classes like Go rpc.Register', () => {
    expect(discoverMethods(new Calc())).toEqual(['Add']);
    expect(discoverMethods({ A() {}, b: 1, _c() {} })).toEqual(['A']);
  });
  it('pads missing arguments, refuses extra ones, and enforces requireLogin', async () => {
    const r = new ServiceRegistry().register('Calc', new Calc()).register('Sec', { Login: passwordLogin({ u: 'p' }), Get: () => 1 }, { requireLogin: true });
    expect(await invoke(r.lookup('Calc', 'Add'), [2, 3], ctx())).toBe(5);
    await expect(invoke(r.lookup('Calc', 'Add'), [1, 2, 3], ctx())).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    const s = new Session('s1');
    await expect(invoke(r.lookup('Sec', 'Get'), [], ctx(s))).rejects.toMatchObject({ code: 'NOT_LOGGED_IN' });
    await expect(invoke(r.lookup('Sec', 'Login'), ['u:wrong'], ctx(s))).rejects.toMatchObject({ code: 'LOGIN_FAILED', message: 'username or password incorrect' });
    expect(s.failedLogins).toBe(1);
    expect(await invoke(r.lookup('Sec', 'Login'), ['u', 'p'], ctx(s))).toBe('u');
    expect(await invoke(r.lookup('Sec', 'Get'), [], ctx(s))).toBe(1);
    expect(() => r.lookup('Nope', 'X')).toThrow(/does not serve Nope; it serves Calc, Sec/);
    expect(() => r.lookup('Calc', 'Sub')).toThrow(/no method Sub; methods: Add/);
  });
  it('refuses bad registrations', () => {
    expect(() => new ServiceRegistry().register('bad name', { A() {} })).toThrow(/service name/);
    expect(() => new ServiceRegistry().register('Empty', {})).toThrow(/no methods/);
    expect(() => new ServiceRegistry().register('S', { A() {} }, { requireLogin: ['B'] })).toThrow(/unknown methods: B/);
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
    for (let i = 0; i < 200 && expired.length < 2; i++) await new Promise((r) => setTimeout(r, 5));
    expect(expired).toEqual(['a', 'b']);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(55);
    expect(wheel.pending).toBe(0);
  });
});
