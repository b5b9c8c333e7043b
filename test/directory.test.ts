import { describe, expect, it } from 'vitest';
import { TunnelError } from '../src/errors.js';
import type { RoutedCall } from '../src/relay/contracts.js';
import { DirectoryNode, NodeDirectory, type RouteRequest } from '../src/relay/directory.js';
import { PermissionTable } from '../src/relay/permissions.js';
import { selectorNamed } from '../src/relay/selectors.js';
import { FakeRoute } from './helpers/routes.js';

/** Which node gets a call (directory.ts), over routes held in the hand: no relay, no socket. */

function directoryOf(...routes: FakeRoute[]): NodeDirectory {
  const d = new NodeDirectory();
  for (const r of routes) d.add(r);
  return d;
}

/** The names of the nodes `n` calls of `request` are routed to, one after another. */
function names(d: NodeDirectory, request: RouteRequest, n: number): string[] {
  return Array.from({ length: n }, () => d.route(request).name);
}

/** [code, message, data] of what `f` throws; fails when it returns. */
function thrown(f: () => unknown): [string, string, unknown] {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(TunnelError);
    const e = err as TunnelError;
    return [e.code, e.message, e.data];
  }
  throw new Error('expected an error');
}

const arith = { Arith: ['Add', 'Multiply'] };

describe('NodeDirectory.route', () => {
  it('takes turns among the nodes of a service, in the order they joined', () => {
    const d = directoryOf(new FakeRoute('a', arith), new FakeRoute('b', arith), new FakeRoute('kv', { KV: ['Get'] }), new FakeRoute('c', arith));
    expect(names(d, { service: 'Arith', method: 'Add' }, 5)).toEqual(['a', 'b', 'c', 'a', 'b']);
    expect(names(d, { service: 'KV', method: 'Get' }, 2)).toEqual(['kv', 'kv']);
  });

  it('gives the named node, whatever the turn', () => {
    const d = directoryOf(new FakeRoute('a', arith), new FakeRoute('b', arith));
    expect(names(d, { service: 'Arith', method: 'Add', node: 'b' }, 2)).toEqual(['b', 'b']);
    expect(d.route({ service: 'Arith', method: 'Add' }).name).toBe('a');
  });

  it('explains a named node that is missing, serves something else, drains or lacks the labels', () => {
    const lab = new FakeRoute('lab-1', arith, { region: 'eu' });
    const d = directoryOf(lab, new FakeRoute('kv-1', { KV: ['Get'] }));
    expect(thrown(() => d.route({ service: 'Arith', method: 'Add', node: 'lab-9' }))).toEqual([
      'NO_NODE',
      'no node named lab-9 is connected; nodes online: lab-1 (Arith), kv-1 (KV)',
      { reason: 'node-not-found' },
    ]);
    expect(thrown(() => d.route({ service: 'KV', method: 'Get', node: 'lab-1' }))).toEqual([
      'NO_SERVICE',
      'node lab-1 does not serve KV; it serves Arith',
      undefined,
    ]);
    expect(thrown(() => d.route({ service: 'Arith', method: 'Divide', node: 'lab-1' }))).toEqual([
      'NO_METHOD',
      'service Arith on node lab-1 has no method Divide; methods: Add, Multiply',
      undefined,
    ]);
    expect(thrown(() => d.route({ service: 'Arith', method: 'Add', node: 'lab-1', where: { region: 'us' } }))).toEqual([
      'NO_NODE',
      'node lab-1 has labels region=eu, which do not match region=us',
      { reason: 'no-match' },
    ]);
    lab.draining = true;
    expect(thrown(() => d.route({ service: 'Arith', method: 'Add', node: 'lab-1' }))).toEqual([
      'NO_NODE',
      'node lab-1 is draining or disconnecting and takes no new calls',
      { reason: 'draining' },
    ]);
  });

  it('keeps the session on its previous node while it qualifies, and moves it when that node drains', () => {
    const a = new FakeRoute('a', arith, { tier: 'gold' });
    const b = new FakeRoute('b', arith);
    const d = directoryOf(a, b);
    expect(names(d, { service: 'Arith', method: 'Add', affinity: b }, 3)).toEqual(['b', 'b', 'b']);
    // The turn did not move while affinity decided.
    expect(d.route({ service: 'Arith', method: 'Add' }).name).toBe('a');
    expect(d.route({ service: 'Arith', method: 'Add', affinity: b, where: { tier: 'gold' } }).name).toBe('a');
    expect(d.route({ service: 'Arith', method: 'Add', affinity: a, node: 'b' }).name).toBe('b');
    a.draining = true;
    expect(names(d, { service: 'Arith', method: 'Add', affinity: a }, 2)).toEqual(['b', 'b']);
  });

  it('skips nodes that drain or whose socket is closing, and says so when every node does', () => {
    const a = new FakeRoute('a', arith);
    const b = new FakeRoute('b', arith);
    const c = new FakeRoute('c', arith);
    const d = directoryOf(a, b, c);
    b.draining = true;
    c.up = false;
    expect(names(d, { service: 'Arith', method: 'Add' }, 3)).toEqual(['a', 'a', 'a']);
    a.draining = true;
    expect(thrown(() => d.route({ service: 'Arith', method: 'Add' }))).toEqual([
      'NO_NODE',
      'every node serving Arith is draining; try again shortly',
      { reason: 'draining' },
    ]);
    expect(thrown(() => d.route({ service: 'Arith', method: 'Add', where: { x: 'y' } }))[1]).toBe(
      'no node serving Arith.Add has labels x=y; nodes serving it: a (no labels), b (no labels), c (no labels)',
    );
  });

  it('routes only to nodes whose labels match where', () => {
    const d = directoryOf(
      new FakeRoute('eu-1', arith, { region: 'eu', tier: 'gold' }),
      new FakeRoute('us-1', arith, { region: 'us' }),
      new FakeRoute('eu-2', arith, { region: 'eu' }),
    );
    expect(names(d, { service: 'Arith', method: 'Add', where: { region: 'eu' } }, 3)).toEqual(['eu-1', 'eu-2', 'eu-1']);
    expect(names(d, { service: 'Arith', method: 'Add', where: { region: 'eu', tier: 'gold' } }, 2)).toEqual(['eu-1', 'eu-1']);
    expect(thrown(() => d.route({ service: 'Arith', method: 'Add', where: { region: 'ap' } }))).toEqual([
      'NO_NODE',
      'no node serving Arith.Add has labels region=ap; nodes serving it: eu-1 (region=eu,tier=gold), us-1 (region=us), eu-2 (region=eu)',
      { reason: 'no-match' },
    ]);
  });

  it("uses the call's selector, else the directory's", () => {
    const a = new FakeRoute('a', arith);
    const b = new FakeRoute('b', arith);
    const d = directoryOf(a, b);
    a.inFlight = 3;
    b.inFlight = 1;
    expect(names(d, { service: 'Arith', method: 'Add', selector: selectorNamed('least-pending') }, 2)).toEqual(['b', 'b']);
    d.selector = selectorNamed('least-pending');
    expect(d.route({ service: 'Arith', method: 'Add' }).name).toBe('b');
    b.inFlight = 5;
    expect(d.route({ service: 'Arith', method: 'Add' }).name).toBe('a');
    expect(d.route({ service: 'Arith', method: 'Add', selector: selectorNamed('round-robin') }).name).toBe('b');
  });

  it('names what is online when nothing serves the service or the method', () => {
    const d = directoryOf(new FakeRoute('a', arith), new FakeRoute('kv', { KV: ['Get', 'Put'] }));
    expect(thrown(() => d.route({ service: 'Echo', method: 'Say' }))).toEqual([
      'NO_SERVICE',
      'no node serves service Echo; nodes online: a (Arith), kv (KV)',
      undefined,
    ]);
    expect(thrown(() => d.route({ service: 'KV', method: 'Delete' }))).toEqual([
      'NO_METHOD',
      'service KV has no method Delete; methods on kv: Get, Put',
      undefined,
    ]);
    expect(thrown(() => new NodeDirectory().route({ service: 'Echo', method: 'Say' }))[1]).toBe('no node serves service Echo; nodes online: none');
  });

  it('shows a caller with call= rules only the nodes it may call, and refuses the others as if they were not there', () => {
    const table = new PermissionTable({ callers: { alice: { call: ['lab-*/Arith.Add', 'KV.Get'] } } });
    const alice = table.access('alice')!;
    const d = directoryOf(new FakeRoute('office-1', arith), new FakeRoute('lab-1', arith), new FakeRoute('kv', { KV: ['Get', 'Put'] }));
    expect(names(d, { service: 'Arith', method: 'Add', access: alice }, 3)).toEqual(['lab-1', 'lab-1', 'lab-1']);
    expect(thrown(() => d.route({ service: 'Arith', method: 'Add', node: 'office-1', access: alice }))).toEqual([
      'NO_NODE',
      'no node named office-1 is connected; nodes online: lab-1 (Arith), kv (KV)',
      { reason: 'node-not-found' },
    ]);
    expect(thrown(() => d.route({ service: 'Arith', method: 'Multiply', node: 'lab-1', access: alice }))).toEqual([
      'FORBIDDEN',
      'caller alice may not call Arith.Multiply on node lab-1 (call= in the tokens file)',
      undefined,
    ]);
    expect(thrown(() => d.route({ service: 'Arith', method: 'Multiply', access: alice }))[0]).toBe('NO_SERVICE');
    expect(thrown(() => d.route({ service: 'KV', method: 'Delete', node: 'kv', access: alice }))[1]).toBe(
      'caller alice may not call KV.Delete on node kv (call= in the tokens file)',
    );
    expect(d.describe(alice)).toBe('lab-1 (Arith), kv (KV)');
    expect(d.describe()).toBe('office-1 (Arith), lab-1 (Arith), kv (KV)');
  });

  it('a service announced with * takes any method', () => {
    const d = directoryOf(new FakeRoute('fwd', { Legacy: ['*'] }));
    expect(d.route({ service: 'Legacy', method: 'Anything' }).name).toBe('fwd');
  });
});

describe('NodeDirectory.targets', () => {
  it('is every node that can take the call now and matches where', () => {
    const a = new FakeRoute('a', arith, { region: 'eu' });
    const b = new FakeRoute('b', arith, { region: 'eu' });
    const c = new FakeRoute('c', arith, { region: 'us' });
    const d = directoryOf(a, b, c);
    expect(d.targets('Arith', 'Add', undefined).map((n) => n.name)).toEqual(['a', 'b', 'c']);
    b.draining = true;
    expect(d.targets('Arith', 'Add', { region: 'eu' }).map((n) => n.name)).toEqual(['a']);
    expect(thrown(() => d.targets('Arith', 'Add', { region: 'ap' }))[2]).toEqual({ reason: 'no-match' });
    expect(thrown(() => d.targets('KV', 'Get', undefined))[0]).toBe('NO_SERVICE');
  });
});

describe('NodeDirectory membership', () => {
  it('indexes a node by its services, and forgets it with its last route', () => {
    const d = new NodeDirectory();
    const a = new FakeRoute('a', arith);
    d.add(a);
    expect([d.size, d.get('a')?.name, d.local('a')]).toEqual([1, 'a', a]);
    expect(d.remove(a)).toBe(true);
    expect(d.remove(a)).toBe(false);
    expect(d.size).toBe(0);
    expect(thrown(() => d.route({ service: 'Arith', method: 'Add' }))[0]).toBe('NO_SERVICE');
  });

  it('a new local route replaces the old one, which is handed back; its late removal changes nothing', () => {
    const d = new NodeDirectory();
    const old = new FakeRoute('a', arith);
    const fresh = new FakeRoute('a', { KV: ['Get'] });
    d.add(old);
    expect(d.add(fresh)).toBe(old);
    expect(d.remove(old)).toBe(false);
    expect(d.get('a')?.routes).toEqual([fresh]);
    // What the node serves is what its newest route says.
    expect(d.route({ service: 'KV', method: 'Get' }).name).toBe('a');
    expect(thrown(() => d.route({ service: 'Arith', method: 'Add' }))[0]).toBe('NO_SERVICE');
  });

  it('describes at most ten nodes, then how many more', () => {
    const d = directoryOf(...Array.from({ length: 12 }, (_, i) => new FakeRoute(`n${i}`, { S: ['m'] })));
    expect(d.describe()).toBe('n0 (S), n1 (S), n2 (S), n3 (S), n4 (S), n5 (S), n6 (S), n7 (S), n8 (S), n9 (S), and 2 more');
  });
});

describe('DirectoryNode', () => {
  const call = () => ({ path: undefined }) as unknown as RoutedCall;

  it('a node reached here and through other relays: the local route first, the others in turn while it is down', () => {
    const d = new NodeDirectory();
    const east = new FakeRoute('a', arith, {}, false);
    const west = new FakeRoute('a', arith, {}, false);
    const here = new FakeRoute('a', arith, {}, true);
    east.relays = ['east'];
    west.relays = ['west'];
    here.relays = ['here'];
    d.add(east);
    d.add(west);
    expect(d.add(here)).toBeUndefined();
    const node = d.get('a')!;
    expect(node).toBeInstanceOf(DirectoryNode);
    expect(node.routes).toEqual([here, east, west]);
    expect([node.local, node.relays]).toEqual([true, ['east', 'here', 'west']]);
    expect([node.pick(), node.pick()]).toEqual([here, here]);
    here.up = false;
    expect([node.pick(), node.pick(), node.pick()]).toEqual([east, west, east]);
    const c = call();
    node.forward(c, new Uint8Array(0), { session: 's', address: 'x', identity: null, timeout: 1 });
    expect(c.path).toBe(west);
    expect(west.forwarded).toHaveLength(1);
    east.up = false;
    west.draining = true;
    expect([node.available, node.draining, node.pick()]).toEqual([false, false, undefined]);
    here.draining = true;
    east.draining = true;
    expect(node.draining).toBe(true);
  });

  it('adds up what its routes carry, and tells every route that a session closed', () => {
    const d = new NodeDirectory();
    const here = new FakeRoute('a', arith, {}, true);
    const there = new FakeRoute('a', arith, {}, false);
    d.add(here);
    d.add(there);
    here.inFlight = 2;
    there.inFlight = 3;
    here.served = 10;
    there.served = 1;
    const node = d.get('a')!;
    expect([node.inFlight, node.served]).toEqual([5, 11]);
    node.closeSession('s1');
    expect([here.closedSessions, there.closedSessions]).toEqual([['s1'], ['s1']]);
    const c = call();
    c.path = there;
    node.abandon(c, true);
    expect(there.abandoned).toEqual([{ call: c, tellNode: true }]);
    expect(here.abandoned).toEqual([]);
  });
});
