import { describe, expect, it } from 'vitest';
import { AUDIT_RING, RelayEvents, type AuditRecord } from '../src/relay/events.js';

describe('RelayEvents', () => {
  it('emits each record with a sequence number and a time', () => {
    const bus = new RelayEvents();
    const seen: AuditRecord[] = [];
    bus.on('audit', (r) => seen.push(r));
    const before = Date.now();
    bus.audit({ kind: 'node-join', node: 'office-1', address: '127.0.0.1:1', relays: ['r1'] });
    bus.audit({ kind: 'refused-call', identity: null, method: 'Arith.Multiply', reason: 'no', address: undefined });
    expect(seen.map((r) => r.seq)).toEqual([1, 2]);
    expect(seen[0]).toMatchObject({ kind: 'node-join', node: 'office-1', relays: ['r1'] });
    expect(seen[0]!.at).toBeGreaterThanOrEqual(before);
    // Absent fields stay absent; a null identity (anonymous) is kept.
    expect(Object.keys(seen[1]!).sort()).toEqual(['at', 'identity', 'kind', 'method', 'reason', 'seq']);
  });

  it(`keeps the last ${AUDIT_RING} events, oldest first`, () => {
    const bus = new RelayEvents();
    expect(bus.recent()).toEqual([]);
    for (let i = 0; i < AUDIT_RING + 123; i++) bus.audit({ kind: 'refused-connection', reason: `r${i}` });
    const recent = bus.recent();
    expect(recent).toHaveLength(AUDIT_RING);
    expect(recent[0]!.seq).toBe(124);
    expect(recent.at(-1)!.seq).toBe(AUDIT_RING + 123);
    expect(recent.every((r, i) => i === 0 || r.seq === recent[i - 1]!.seq + 1)).toBe(true);
    expect(bus.total).toBe(AUDIT_RING + 123);
  });

  it('bounds text that may quote a peer, and its own capacity', () => {
    const bus = new RelayEvents(3);
    const r = bus.audit({ kind: 'refused-request', reason: 'x'.repeat(10_000), node: 'n'.repeat(1_000) });
    expect(r.reason!.length).toBe(300);
    expect(r.node!.length).toBe(300);
    for (let i = 0; i < 10; i++) bus.audit({ kind: 'action', action: 'drain-node', target: `n${i}` });
    expect(bus.recent().map((e) => e.target)).toEqual(['n7', 'n8', 'n9']);
    expect(() => new RelayEvents(0)).toThrow(/capacity must be a positive integer/);
  });
});
