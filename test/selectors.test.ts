import { afterEach, describe, expect, it, vi } from 'vitest';
import { TunnelError } from '../src/errors.js';
import { PermissionTable } from '../src/relay/permissions.js';
import { eligible, formatLabels, matchesWhere, parseWhere, SELECTORS, selectorNamed } from '../src/relay/selectors.js';
import { FakeRoute } from './helpers/routes.js';

/** How the relay picks one of several nodes (selectors.ts), over routes held in the hand. */

afterEach(() => {
  vi.restoreAllMocks();
});

const arith = { Arith: ['Add'] };

function fleet(n: number): FakeRoute[] {
  return Array.from({ length: n }, (_, i) => new FakeRoute(`n${i}`, arith));
}

describe('eligible and matchesWhere', () => {
  it('a node qualifies when it takes calls, has the method, carries every label and the caller may call it', () => {
    const node = new FakeRoute('lab-1', { Arith: ['Add'], Legacy: ['*'] }, { region: 'eu', tier: 'gold' });
    expect(eligible(node, 'Arith', 'Add', undefined)).toBe(true);
    expect(eligible(node, 'Legacy', 'Whatever', undefined)).toBe(true);
    expect(eligible(node, 'Arith', 'Multiply', undefined)).toBe(false);
    expect(eligible(node, 'KV', 'Get', undefined)).toBe(false);
    expect(eligible(node, 'Arith', 'Add', { region: 'eu' })).toBe(true);
    expect(eligible(node, 'Arith', 'Add', { region: 'eu', tier: 'silver' })).toBe(false);
    const table = new PermissionTable({ callers: { bob: { call: ['office-*/Arith'] }, carol: { call: ['lab-*/Arith.Add'] } } });
    expect(eligible(node, 'Arith', 'Add', undefined, table.access('bob'))).toBe(false);
    expect(eligible(node, 'Arith', 'Add', undefined, table.access('carol'))).toBe(true);
    node.draining = true;
    expect(eligible(node, 'Arith', 'Add', undefined)).toBe(false);
  });

  it('where matches by every key, and a label missing on the node does not match', () => {
    const node = new FakeRoute('a', arith, { region: 'eu' });
    expect(matchesWhere(node, undefined)).toBe(true);
    expect(matchesWhere(node, {})).toBe(true);
    expect(matchesWhere(node, { region: 'eu' })).toBe(true);
    expect(matchesWhere(node, { zone: 'eu' })).toBe(false);
  });
});

describe('selectors', () => {
  it('round-robin takes the first eligible node from the cursor on, wrapping around', () => {
    const rr = selectorNamed('round-robin');
    const nodes = fleet(4);
    expect(rr(nodes, 0, 'Arith', 'Add', undefined)).toBe(0);
    expect(rr(nodes, 2, 'Arith', 'Add', undefined)).toBe(2);
    nodes[2]!.draining = true;
    nodes[3]!.draining = true;
    expect(rr(nodes, 2, 'Arith', 'Add', undefined)).toBe(0);
    for (const n of nodes) n.draining = true;
    expect(rr(nodes, 1, 'Arith', 'Add', undefined)).toBe(-1);
    expect(rr([], 0, 'Arith', 'Add', undefined)).toBe(-1);
  });

  it('random starts its scan at a random node and skips the ineligible', () => {
    const random = selectorNamed('random');
    const nodes = fleet(4);
    const roll = vi.spyOn(Math, 'random');
    roll.mockReturnValue(0.6);
    expect(random(nodes, 0, 'Arith', 'Add', undefined)).toBe(2);
    nodes[2]!.up = false;
    expect(random(nodes, 0, 'Arith', 'Add', undefined)).toBe(3);
    roll.mockReturnValue(0.99);
    nodes[3]!.up = false;
    expect(random(nodes, 0, 'Arith', 'Add', undefined)).toBe(0);
  });

  it('least-pending takes the eligible node with the fewest calls in flight; ties go to the first from the cursor', () => {
    const least = selectorNamed('least-pending');
    const nodes = fleet(4);
    [3, 1, 1, 2].forEach((n, i) => (nodes[i]!.inFlight = n));
    expect(least(nodes, 0, 'Arith', 'Add', undefined)).toBe(1);
    expect(least(nodes, 2, 'Arith', 'Add', undefined)).toBe(2);
    expect(least(nodes, 3, 'Arith', 'Add', undefined)).toBe(1);
    nodes[1]!.draining = true;
    nodes[2]!.draining = true;
    expect(least(nodes, 0, 'Arith', 'Add', undefined)).toBe(3);
    expect(least(nodes, 0, 'Arith', 'Add', { region: 'eu' })).toBe(-1);
    nodes[0]!.inFlight = 0;
    expect(least(nodes, 3, 'Arith', 'Add', undefined)).toBe(0);
  });

  it('selectorNamed knows exactly the documented names', () => {
    expect(SELECTORS).toEqual(['round-robin', 'random', 'least-pending']);
    for (const name of SELECTORS) expect(typeof selectorNamed(name)).toBe('function');
    for (const name of ['fastest', 'toString', 'constructor', 3, undefined]) {
      expect(() => selectorNamed(name)).toThrow(TunnelError);
    }
    expect(() => selectorNamed('__proto__')).toThrow('unknown selector "__proto__"; choose one of round-robin, random, least-pending');
  });
});

describe('parseWhere and formatLabels', () => {
  it('takes a map of strings; nothing or an empty map is no restriction', () => {
    expect(parseWhere(undefined)).toBeUndefined();
    expect(parseWhere(null)).toBeUndefined();
    expect(parseWhere({})).toBeUndefined();
    expect(parseWhere({ region: 'eu' })).toEqual({ region: 'eu' });
  });

  it('refuses anything else, naming the key', () => {
    const shape = 'metadata where must be a map of label names to string values';
    for (const bad of ['eu', 3, [['region', 'eu']], new Uint8Array(1)]) expect(() => parseWhere(bad)).toThrow(shape);
    expect(() => parseWhere({ region: 'eu', tier: 2 })).toThrow('metadata where.tier must be a string, got number');
  });

  it('formats labels for messages', () => {
    expect(formatLabels({ region: 'eu', tier: 'gold' })).toBe('region=eu,tier=gold');
    expect(formatLabels({})).toBe('no labels');
  });
});
