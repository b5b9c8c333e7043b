import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Authenticator, parseTokens, type Credential } from '../src/relay/auth.js';
import { silentLogger } from '../src/util/logger.js';
import { parseCallPattern, PermissionTable, type NodeView } from '../src/relay/permissions.js';

const T = 'x'.repeat(16);

function node(name: string, services: Record<string, string[]>): NodeView {
  return { name, services: new Map(Object.entries(services).map(([s, m]) => [s, new Set(m)])) };
}

const office1 = node('office-1', { Arith: ['Add', 'Multiply'], Hello: ['Login', 'Hello'], KV: ['Get', 'Set'] });
const office2 = node('office-2', { Hello: ['Login'] });
const lab1 = node('lab-1', { Arith: ['Add'], KV: ['Get', 'Set'] });
const forward = node('gw-1', { Legacy: ['*'] });

describe('call= patterns', () => {
  it('matches node, service and method parts with * globs', () => {
    const p = parseCallPattern('office-*/Arith.*');
    expect(p.node('office-1')).toBe(true);
    expect(p.node('lab-1')).toBe(false);
    expect(p.service('Arith')).toBe(true);
    expect(p.service('Arithmetic')).toBe(false);
    expect(p.method('Multiply')).toBe(true);
  });

  it('reads a service alone as every method, and no node part as every node', () => {
    const p = parseCallPattern('KV');
    expect(p.node('anything')).toBe(true);
    expect(p.service('KV')).toBe(true);
    expect(p.method('Set')).toBe(true);
  });

  it('takes the part after the last dot as the method, and treats dots and dashes literally', () => {
    const p = parseCallPattern('a.b-c.Get*');
    expect(p.service('a.b-c')).toBe(true);
    expect(p.service('aXb-c')).toBe(false);
    expect(p.method('GetAll')).toBe(true);
    expect(p.method('Put')).toBe(false);
  });

  it('refuses malformed patterns with a message naming them', () => {
    expect(() => parseCallPattern('a/b/C.D')).toThrow(/more than one \//);
    expect(() => parseCallPattern('Arith.Add(')).toThrow(/"Arith.Add\(": the method part/);
    expect(() => parseCallPattern('/Arith')).toThrow(/the node part/);
    expect(() => parseCallPattern('Ar ith')).toThrow(/the service part/);
    expect(() => parseCallPattern('Arith.')).toThrow(/the method part/);
  });
});

describe('serve=: reserved services', () => {
  const table = new PermissionTable({ nodes: { 'office-1': { serve: ['Arith', 'Hello'] }, 'office-2': { serve: ['Hello'] } } });

  it('lets the listed nodes serve what they list, and only that', () => {
    expect(table.mayServe('office-1', 'Hello')).toBe(true);
    expect(table.mayServe('office-2', 'Hello')).toBe(true);
    expect(table.mayServe('office-2', 'Arith')).toBe(false);
    expect(table.serveRefusal('office-1', ['Arith', 'KV'])).toBe('node office-1 may not serve KV: its serve= in the tokens file does not list it');
  });

  it('keeps other nodes off reserved services but not off the rest', () => {
    expect(table.mayServe('lab-1', 'KV')).toBe(true);
    expect(table.serveRefusal('lab-1', ['KV', 'Hello'])).toBe(
      'node lab-1 may not serve Hello: it is reserved to nodes whose tokens list it (serve= in the tokens file)',
    );
    expect(table.serveRefusal('lab-1', ['KV', 'Server'])).toBeUndefined();
  });

  it('gives a node whose name nothing proved no serve= of its own', () => {
    expect(table.mayServe('office-1', 'Hello', false)).toBe(false);
    expect(table.mayServe('office-1', 'KV', false)).toBe(true);
    expect(table.serveRefusal('office-1', ['Hello'], false)).toBe(
      'node office-1 may not serve Hello with the shared node token: it is reserved to nodes with their own token line (serve=)',
    );
  });

  it('has no rules when open', () => {
    expect(PermissionTable.OPEN.mayServe('anyone', 'Hello')).toBe(true);
    expect(PermissionTable.OPEN.access('billing')).toBeUndefined();
  });
});

describe('call=: what a caller may call and see', () => {
  const table = new PermissionTable({ callers: { billing: { call: ['office-*/Arith.*', '*/KV.Get', 'Legacy.Read'] } } });
  const billing = table.access('billing')!;

  it('gives callers without rules, and anonymous callers, everything', () => {
    expect(table.access('ops')).toBeUndefined();
    expect(table.access(null)).toBeUndefined();
  });

  it('decides per node, service and method', () => {
    expect(billing.mayCall('office-1', 'Arith', 'Multiply')).toBe(true);
    expect(billing.mayCall('lab-1', 'Arith', 'Add')).toBe(false);
    expect(billing.mayCall('lab-1', 'KV', 'Get')).toBe(true);
    expect(billing.mayCall('office-1', 'KV', 'Set')).toBe(false);
    expect(billing.mayCallSomewhere('Arith', 'Add')).toBe(true);
    expect(billing.mayCallSomewhere('Hello', 'Login')).toBe(false);
  });

  it('sees a node when it may call one of its methods; a forwarded service counts by its name', () => {
    expect(billing.canSee(office1)).toBe(true);
    expect(billing.canSee(lab1)).toBe(true);
    expect(billing.canSee(office2)).toBe(false);
    expect(billing.canSee(forward)).toBe(true);
    expect(billing.servicesOf(office1)).toEqual(['Arith', 'KV']);
    expect(billing.methodsOf(office1, 'KV')).toEqual(['Get']);
    expect(billing.servicesOf(lab1)).toEqual(['KV']);
    expect(billing.methodsOf(forward, 'Legacy')).toEqual(['*']);
  });

  it('words a refusal with what was denied, never what exists', () => {
    const err = billing.forbidden('Hello', 'Login');
    expect(err.code).toBe('FORBIDDEN');
    expect(err.message).toBe('caller billing may not call Hello.Login on any node it can see (call= in the tokens file)');
    expect(billing.forbidden('Arith', 'Add', 'lab-1').message).toContain('on node lab-1');
  });

  it('merges the rules of several sources for one identity', () => {
    const merged = new PermissionTable({ callers: { billing: { call: ['Arith'] } } }, { callers: { billing: { call: ['KV.Get'] } } }).access('billing')!;
    expect(merged.mayCall('x', 'Arith', 'Add')).toBe(true);
    expect(merged.mayCall('x', 'KV', 'Get')).toBe(true);
    expect(merged.mayCall('x', 'KV', 'Set')).toBe(false);
  });

  it('refuses bad options at construction, naming the entry', () => {
    expect(() => new PermissionTable({ nodes: { 'office 1': { serve: ['Arith'] } } })).toThrow(/"office 1" is not a node name/);
    expect(() => new PermissionTable({ nodes: { n: { serve: ['Relay'] } } })).toThrow(/relay's own service/);
    expect(() => new PermissionTable({ callers: { c: { call: ['a/b/c'] } } })).toThrow(/more than one \//);
  });
});

describe('tokens file lines with rules', () => {
  it('reads serve= on node lines and call= on caller lines', () => {
    const entries = parseTokens(`node office-1 ${T} serve=Arith,Hello\ncaller billing ${T} call=office-*/Arith.*,*/KV.Get\ncaller ops ${T}\n`);
    expect(entries.map((e) => [e.kind, e.name, e.serve, e.call])).toEqual([
      ['node', 'office-1', ['Arith', 'Hello'], undefined],
      ['caller', 'billing', undefined, ['office-*/Arith.*', '*/KV.Get']],
      ['caller', 'ops', undefined, undefined],
    ]);
  });

  it('names the file and line of a bad rule', () => {
    expect(() => parseTokens(`node a ${T}\ncaller b ${T} serve=X\n`, 'tokens.txt')).toThrow(/^tokens.txt line 2: a caller line takes call=/);
    expect(() => parseTokens(`node a ${T} serve=Ar ith`, 'f')).toThrow(/^f line 1: want "node NAME TOKEN \[serve=/);
    expect(() => parseTokens(`node a ${T} serve=Arith,,KV`, 'f')).toThrow(/^f line 1: serve= needs a comma-separated list/);
    expect(() => parseTokens(`node a ${T} serve=Ar$ith`, 'f')).toThrow(/^f line 1: serve= service "Ar\$ith" must be a service name/);
    expect(() => parseTokens(`caller a ${T} call=x/y/Z.W`, 'f')).toThrow(/^f line 1: call= pattern "x\/y\/Z.W" has more than one \//);
  });
});

describe('Authenticator: who a rule applies to, and re-checks after a reload', () => {
  const SHARED = 'shared-node-token-0123';
  const OFFICE = 'office-node-token-0123';
  const BILLING = 'billing-token-01234567';

  function withTokens(text: string, run: (auth: Authenticator, write: (text: string) => void) => void): void {
    const dir = mkdtempSync(join(tmpdir(), 'perm-'));
    const file = join(dir, 'tokens');
    writeFileSync(file, text);
    try {
      run(new Authenticator({ nodeToken: SHARED, tokens: file }, silentLogger), (t) => writeFileSync(file, t));
    } finally {
      rmSync(dir, { recursive: true });
    }
  }
  const credential = (v: ReturnType<Authenticator['node']>): Credential => {
    if (!v.ok) throw new Error(v.reason);
    return v.credential;
  };

  it('applies serve= to the node that presents its own token line, not to a holder of the shared token', () => {
    withTokens(`node office-1 ${OFFICE} serve=Hello\n`, (auth) => {
      const own = credential(auth.node('office-1', OFFICE, undefined));
      const shared = credential(auth.node('office-1', SHARED, undefined));
      expect(auth.serveRefusal('office-1', ['Hello'], own)).toBeUndefined();
      expect(auth.serveRefusal('office-1', ['Hello'], shared)).toMatch(/with the shared node token/);
      expect(auth.serveRefusal('lab-1', ['KV'], credential(auth.node('lab-1', SHARED, undefined)))).toBeUndefined();
    });
  });

  it('re-checks nodes and callers against the reloaded file', () => {
    withTokens(`node office-1 ${OFFICE}\ncaller billing ${BILLING}\n`, (auth, write) => {
      const office = credential(auth.node('office-1', OFFICE, undefined));
      const billing = auth.caller(BILLING);
      if (!billing.ok) throw new Error(billing.reason);
      write(`node office-1 ${OFFICE} serve=Arith\ncaller billing ${'b'.repeat(20)}\n`);
      auth.reload();
      expect(auth.recheckNode('office-1', office, ['Arith'])).toBeUndefined();
      expect(auth.recheckNode('office-1', office, ['Arith', 'KV'])).toBe('node office-1 may not serve KV: its serve= in the tokens file does not list it');
      expect(auth.recheckCaller('billing', billing.credential)).toBe('caller token refused (its token was revoked)');
      // Without its credential a session is checked by identity: billing still has a token.
      expect(auth.recheckCaller('billing', undefined)).toBeUndefined();
      expect(auth.recheckCaller(null, undefined)).toBe('this relay now requires a caller token (--token or TUNNEL_TOKEN)');
    });
  });
});
