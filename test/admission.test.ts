import { describe, expect, it } from 'vitest';
import { ErrorCode, TunnelError } from '../src/errors.js';
import { admit, nodeBusy, RELAY_PARAMS_LIMIT, type Admission, type AdmissionState, type CallRequest } from '../src/relay/admission.js';
import type { CallerLimits, NodeRoute } from '../src/relay/contracts.js';
import { PermissionTable } from '../src/relay/permissions.js';
import { selectorNamed } from '../src/relay/selectors.js';
import { NAME_LIMITS } from '../src/wire/bounds.js';
import { Kind } from '../src/wire/messages.js';

/** The checks of a request before routing, as a pure function: every refusal with its exact code and message. */

const limits: CallerLimits = {
  defaultTimeout: 30_000,
  maxTimeout: 60_000,
  maxMessage: 1000,
  maxCallerInFlight: 4,
  maxNodeInFlight: 2,
  maxReassembly: 10_000,
};

function req(method: string, meta: Record<string, unknown> = {}, params: Uint8Array = new Uint8Array(3), stream = 0): CallRequest {
  return { kind: Kind.REQUEST, id: 7, method, params, meta, stream };
}

function state(over: Partial<AdmissionState> = {}): AdmissionState {
  return { idInUse: false, inFlight: 0, uploads: 0, goingAway: undefined, limits, access: undefined, ...over };
}

/** [code, message, method counted] of a refusal; fails the test on an admission. */
function refusal(a: Admission): [string, string, string] {
  if (a.ok) throw new Error(`admitted to ${a.to}, expected a refusal`);
  expect(a.error).toBeInstanceOf(TunnelError);
  return [a.error.code, a.error.message, a.method];
}

const alice = new PermissionTable({ callers: { alice: { call: ['Hello.*', 'lab-*/Arith.Add'] } } }).access('alice');

describe('admit: refusals', () => {
  it('an id already in flight or uploading', () => {
    expect(refusal(admit(req('Arith.Add'), state({ idInUse: true })))).toEqual([
      'BAD_REQUEST',
      'request id 7 is already in flight on this connection',
      'Arith.Add',
    ]);
  });

  it('a relay going away', () => {
    expect(refusal(admit(req('Arith.Add'), state({ goingAway: 'relay is shutting down' })))).toEqual([
      'GOING_AWAY',
      'the relay is going away (relay is shutting down) and takes no new calls; reconnect and call again',
      'Arith.Add',
    ]);
  });

  it('a method name that is not Service.Method, counted under (unknown)', () => {
    expect(refusal(admit(req('NoDot'), state()))).toEqual(['BAD_REQUEST', 'method "NoDot" must be Service.Method', '(unknown)']);
    expect(refusal(admit(req('Arith.'), state()))).toEqual(['BAD_REQUEST', 'method "Arith." must be Service.Method', '(unknown)']);
    const [code, message, method] = refusal(admit(req('Arith.\u0007'), state()));
    expect([code, method]).toEqual(['BAD_REQUEST', '(unknown)']);
    expect(message).toBe('names may not contain control characters (C0, DEL or C1): method "Arith.\\u0007" has U+0007 at position 6');
  });

  it('memory under pressure', () => {
    const memory = { pressed: true, describe: () => 'the relay holds 900 MiB of its 1 GiB budget; try again shortly' };
    expect(refusal(admit(req('Arith.Add'), state({ limits: { ...limits, memory } })))).toEqual([
      'OVERLOADED',
      'the relay holds 900 MiB of its 1 GiB budget; try again shortly',
      'Arith.Add',
    ]);
    expect(admit(req('Arith.Add'), state({ limits: { ...limits, memory: { ...memory, pressed: false } } })).ok).toBe(true);
  });

  it('the connection at its in-flight limit, uploads counted, the message naming calls only', () => {
    expect(refusal(admit(req('Arith.Add'), state({ inFlight: 4 })))).toEqual([
      'OVERLOADED',
      'this connection already has 4 calls in flight (the limit); wait for answers before sending more',
      'Arith.Add',
    ]);
    expect(refusal(admit(req('Arith.Add'), state({ inFlight: 3, uploads: 1 })))[1]).toBe(
      'this connection already has 3 calls in flight (the limit); wait for answers before sending more',
    );
    expect(admit(req('Arith.Add'), state({ inFlight: 3 })).ok).toBe(true);
  });

  it('params over the limit, whole or announced as a stream', () => {
    expect(refusal(admit(req('Arith.Add', {}, new Uint8Array(1001)), state()))).toEqual([
      'TOO_LARGE',
      'params of Arith.Add are 1001 bytes; this relay accepts at most 1000',
      'Arith.Add',
    ]);
    expect(refusal(admit(req('Arith.Add', {}, new Uint8Array(0), 5000), state()))[1]).toBe(
      'params of Arith.Add are 5000 bytes; this relay accepts at most 1000',
    );
    expect(admit(req('Arith.Add', {}, new Uint8Array(1000)), state()).ok).toBe(true);
  });

  it("params of the relay's own methods over 64 KiB", () => {
    const big = { ...limits, maxMessage: 1 << 20 };
    expect(refusal(admit(req('Relay.List', {}, new Uint8Array(RELAY_PARAMS_LIMIT + 1)), state({ limits: big })))).toEqual([
      'TOO_LARGE',
      `params of Relay.List are ${RELAY_PARAMS_LIMIT + 1} bytes; the relay's own methods take at most ${RELAY_PARAMS_LIMIT}`,
      'Relay.List',
    ]);
    expect(admit(req('Other.List', {}, new Uint8Array(RELAY_PARAMS_LIMIT + 1)), state({ limits: big })).ok).toBe(true);
  });

  it('a Login from a locked-out address, with the lockout error as it is', () => {
    const locked = new TunnelError(ErrorCode.LOGIN_FAILED, 'too many failed Login attempts from 10.0.0.1; try again in 30 s');
    const asked: string[] = [];
    const logins = { refuse: (method: string) => (asked.push(method), method.endsWith('.Login') ? locked : undefined) };
    const a = admit(req('Auth.Login'), state({ logins }));
    expect(a.ok ? undefined : a.error).toBe(locked);
    expect(refusal(a)).toEqual(['LOGIN_FAILED', 'too many failed Login attempts from 10.0.0.1; try again in 30 s', 'Auth.Login']);
    expect(admit(req('Auth.Logout'), state({ logins })).ok).toBe(true);
    expect(asked).toEqual(['Auth.Login', 'Auth.Logout']);
  });

  it('a method call= allows on no node; the relay service is always allowed', () => {
    expect(refusal(admit(req('Arith.Multiply'), state({ access: alice })))).toEqual([
      'FORBIDDEN',
      'caller alice may not call Arith.Multiply on any node it can see (call= in the tokens file)',
      'Arith.Multiply',
    ]);
    // Allowed on some node: whether on this one is the directory's business.
    expect(admit(req('Arith.Add'), state({ access: alice })).ok).toBe(true);
    expect(admit(req('Hello.Greet'), state({ access: alice })).ok).toBe(true);
    expect(admit(req('Relay.List'), state({ access: alice }))).toMatchObject({ ok: true, to: 'relay' });
  });

  it('a timeout that is not a positive number', () => {
    for (const timeout of ['100', 0, -5, Number.NaN, null]) {
      expect(refusal(admit(req('Arith.Add', { timeout }), state()))).toEqual([
        'BAD_REQUEST',
        'metadata timeout must be a positive number of milliseconds',
        'Arith.Add',
      ]);
    }
  });

  it('a node that is not a node name', () => {
    const message = `metadata node must be a node name (a string of at most ${NAME_LIMITS.name} characters)`;
    expect(refusal(admit(req('Arith.Add', { node: 42 }), state()))).toEqual(['BAD_REQUEST', message, 'Arith.Add']);
    expect(refusal(admit(req('Arith.Add', { node: 'n'.repeat(NAME_LIMITS.name + 1) }), state()))).toEqual(['BAD_REQUEST', message, 'Arith.Add']);
    expect(admit(req('Arith.Add', { node: 'n'.repeat(NAME_LIMITS.name) }), state()).ok).toBe(true);
    const [code, text] = refusal(admit(req('Arith.Add', { node: 'lab\n1' }), state()));
    expect(code).toBe('BAD_REQUEST');
    expect(text).toBe('names may not contain control characters (C0, DEL or C1): metadata node "lab\\u000a1" has U+000A at position 3');
  });

  it('a where that is not a map of strings, or over the label limits', () => {
    const bad = (where: unknown) => refusal(admit(req('Arith.Add', { where }), state()));
    expect(bad([1])).toEqual(['BAD_REQUEST', 'metadata where must be a map of label names to string values', 'Arith.Add']);
    expect(bad(new Uint8Array(2))[1]).toBe('metadata where must be a map of label names to string values');
    expect(bad({ region: 3 })).toEqual(['BAD_REQUEST', 'metadata where.region must be a string, got number', 'Arith.Add']);
    expect(bad({ '': 'x' })).toEqual(['BAD_REQUEST', `metadata where: label keys are 1-${NAME_LIMITS.labelKey} characters`, 'Arith.Add']);
    const many = NAME_LIMITS.labels + 1;
    expect(bad(Object.fromEntries(Array.from({ length: many }, (_, i) => [`k${i}`, 'v'])))).toEqual([
      'BAD_REQUEST',
      `metadata where has ${many} labels; at most ${NAME_LIMITS.labels}`,
      'Arith.Add',
    ]);
  });

  it('an unknown selector', () => {
    expect(refusal(admit(req('Arith.Add', { selector: 'fastest' }), state()))).toEqual([
      'BAD_REQUEST',
      'unknown selector "fastest"; choose one of round-robin, random, least-pending',
      'Arith.Add',
    ]);
  });

  it('a broadcast that names a node', () => {
    expect(refusal(admit(req('Arith.Add', { broadcast: true, node: 'lab-1' }), state()))).toEqual([
      'BAD_REQUEST',
      'a broadcast goes to every matching node; drop node or broadcast',
      'Arith.Add',
    ]);
  });

  it('the first failing check decides', () => {
    const everything = state({ idInUse: true, goingAway: 'bye', inFlight: 9 });
    expect(refusal(admit(req('NoDot', { timeout: -1 }, new Uint8Array(5000)), everything))[1]).toBe('request id 7 is already in flight on this connection');
    expect(refusal(admit(req('NoDot'), state({ goingAway: 'bye', inFlight: 9 })))[0]).toBe('GOING_AWAY');
    expect(refusal(admit(req('NoDot'), state({ inFlight: 9 })))[2]).toBe('(unknown)');
    expect(refusal(admit(req('Arith.Add', {}, new Uint8Array(5000)), state({ inFlight: 9 })))[0]).toBe('OVERLOADED');
    expect(refusal(admit(req('Arith.Multiply', { timeout: -1 }), state({ access: alice })))[0]).toBe('FORBIDDEN');
    expect(refusal(admit(req('Arith.Add', { timeout: -1, node: 42 }), state()))[1]).toBe('metadata timeout must be a positive number of milliseconds');
    expect(refusal(admit(req('Arith.Add', { node: 42, where: [1] }), state()))[1]).toContain('metadata node');
    expect(refusal(admit(req('Arith.Add', { where: [1], selector: 'x' }), state()))[1]).toContain('metadata where');
  });
});

describe('admit: where an admitted request goes', () => {
  it('a call, with its service, method, capped or default timeout, node, where and selector', () => {
    expect(admit(req('billing.v2.Charge'), state())).toEqual({
      ok: true,
      to: 'call',
      service: 'billing.v2',
      method: 'Charge',
      timeout: 30_000,
      node: undefined,
      where: undefined,
      selector: undefined,
    });
    const a = admit(req('Arith.Add', { timeout: 90_000, node: 'lab-1', where: { region: 'eu' }, selector: 'least-pending' }), state());
    expect(a).toMatchObject({ ok: true, to: 'call', timeout: 60_000, node: 'lab-1', where: { region: 'eu' } });
    expect(a.ok && a.selector).toBe(selectorNamed('least-pending'));
    expect(admit(req('Arith.Add', { timeout: 250 }), state())).toMatchObject({ timeout: 250 });
    expect(admit(req('Arith.Add', { where: {} }), state())).toMatchObject({ where: undefined });
  });

  it('a broadcast', () => {
    expect(admit(req('Arith.Add', { broadcast: true, where: { tier: 'gold' } }), state())).toMatchObject({
      ok: true,
      to: 'broadcast',
      where: { tier: 'gold' },
    });
  });

  it('a streamed broadcast is collected first, before its where is read', () => {
    expect(admit(req('Arith.Add', { broadcast: true, where: [1], node: 'x' }, new Uint8Array(0), 500), state())).toMatchObject({ ok: true, to: 'upload' });
    // A streamed call that is not a broadcast goes to its node chunk by chunk.
    expect(admit(req('Arith.Add', {}, new Uint8Array(0), 500), state())).toMatchObject({ ok: true, to: 'call' });
  });

  it("the relay's own service, whose where presence reads itself", () => {
    expect(admit(req('Relay.Watch', { where: [1], selector: 'x' }), state())).toMatchObject({ ok: true, to: 'relay', service: 'Relay', method: 'Watch' });
  });
});

describe('nodeBusy', () => {
  it('refuses a node at its in-flight limit, naming it', () => {
    const node = (inFlight: number) => ({ name: 'lab-1', inFlight }) as NodeRoute;
    expect(nodeBusy(node(1), 2)).toBeUndefined();
    const busy = nodeBusy(node(2), 2);
    expect([busy?.code, busy?.message]).toEqual(['OVERLOADED', 'node lab-1 already has 2 calls in flight (the limit); try again shortly']);
  });
});
