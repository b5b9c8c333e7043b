import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ClusterSeal, MAX_AGE, OpenSeal, readClusterKey, SealError } from '../src/relay/cluster/seal.js';

/** The seal on cluster messages (issue 18): in memory, no NATS. */

const KEY = Buffer.from('0123456789abcdef0123456789abcdef0123456789abcdef');
const text = (s: string) => new TextEncoder().encode(s);

function failure(f: () => unknown): string {
  try {
    f();
  } catch (err) {
    if (err instanceof SealError) return err.reason;
    throw err;
  }
  return 'accepted';
}

describe('cluster seal', () => {
  it('opens what a relay with the same key sealed, and hides the plaintext', () => {
    const a = new ClusterSeal(KEY, 'tunnel');
    const b = new ClusterSeal(KEY, 'tunnel');
    const sealed = a.seal('tunnel.presence', text('Hello.Login alice:secret'));
    expect(Buffer.from(sealed).includes(Buffer.from('alice:secret'))).toBe(false);
    expect(Buffer.from(b.open('tunnel.presence', sealed)).toString()).toBe('Hello.Login alice:secret');
    expect(a.own(sealed)).toBe(true);
    expect(b.own(sealed)).toBe(false);
  });

  it('refuses another key, another cluster name, another subject and any altered byte', () => {
    const a = new ClusterSeal(KEY, 'tunnel');
    const sealed = a.seal('tunnel.relay.x.open', text('call'));
    expect(failure(() => new ClusterSeal(Buffer.from('another key of at least 32 characters!!'), 'tunnel').open('tunnel.relay.x.open', sealed))).toBe('forged');
    expect(failure(() => new ClusterSeal(KEY, 'other').open('tunnel.relay.x.open', sealed))).toBe('forged');
    expect(failure(() => new ClusterSeal(KEY, 'tunnel').open('tunnel.relay.y.open', sealed))).toBe('forged');
    for (const at of [0, 5, 20, 30, sealed.length - 20, sealed.length - 1]) {
      const copy = Buffer.from(sealed);
      copy[at]! ^= 1;
      expect(['forged', 'malformed']).toContain(failure(() => new ClusterSeal(KEY, 'tunnel').open('tunnel.relay.x.open', copy)));
    }
    expect(failure(() => new ClusterSeal(KEY, 'tunnel').open('s', text('short')))).toBe('malformed');
    expect(failure(() => new ClusterSeal(KEY, 'tunnel').open('s', new Uint8Array(200)))).toBe('malformed');
  });

  it('accepts each message once, in any order within the window, and refuses replays', () => {
    const a = new ClusterSeal(KEY, 'tunnel');
    const b = new ClusterSeal(KEY, 'tunnel');
    const msgs = Array.from({ length: 50 }, (_, i) => a.seal('s', text(`m${i}`)));
    const order = [...msgs.keys()].sort((x, y) => ((x * 7919) % 50) - ((y * 7919) % 50));
    for (const i of order) expect(Buffer.from(b.open('s', msgs[i]!)).toString()).toBe(`m${i}`);
    for (const m of msgs) expect(failure(() => b.open('s', m))).toBe('replayed');
    // Far behind the newest one: older than the window is refused too.
    const old = a.seal('s', text('old'));
    for (let i = 0; i < 2_000; i++) b.open('s', a.seal('s', text('x')));
    expect(failure(() => b.open('s', old))).toBe('replayed');
  });

  it('refuses a message outside the time window (a replay after the window, or a clock far off)', () => {
    let now = 1_000_000_000;
    const a = new ClusterSeal(KEY, 'tunnel', () => now);
    const b = new ClusterSeal(KEY, 'tunnel', () => now);
    const sealed = a.seal('s', text('heartbeat'));
    now += MAX_AGE + 1;
    expect(failure(() => b.open('s', sealed))).toBe('stale');
    now -= 2 * MAX_AGE + 2;
    expect(failure(() => b.open('s', a.seal('s', text('x'))))).toBe('accepted');
  });

  it('uses a subject token that does not show the relay id, the same on every relay with the key', () => {
    const a = new ClusterSeal(KEY, 'tunnel');
    const b = new ClusterSeal(KEY, 'tunnel');
    const id = '0011223344556677';
    expect(a.token(id)).toBe(b.token(id));
    expect(a.token(id)).not.toContain(id);
    expect(a.token(id)).toMatch(/^[0-9a-f]{24}$/);
    expect(new ClusterSeal(KEY, 'other').token(id)).not.toBe(a.token(id));
    expect(new OpenSeal().token(id)).toBe(id);
  });

  it('reads a key file, refuses a short one with the command that makes a good one, and warns on a readable one', () => {
    const dir = mkdtempSync(join(tmpdir(), 'seal-'));
    const good = join(dir, 'good.key');
    writeFileSync(good, `${'ab'.repeat(32)}\n`, { mode: 0o600 });
    expect(readClusterKey(good)).toEqual({ key: Buffer.from('ab'.repeat(32)) });
    const open = join(dir, 'open.key');
    writeFileSync(open, 'ab'.repeat(32), { mode: 0o644 });
    expect(readClusterKey(open).warning).toMatch(/can be read by other users .*chmod 600/);
    const short = join(dir, 'short.key');
    writeFileSync(short, 'secret\n', { mode: 0o600 });
    expect(() => readClusterKey(short)).toThrow(/6 characters; it needs at least 32 \(make one: openssl rand -hex 32/);
    expect(() => readClusterKey(join(dir, 'missing.key'))).toThrow(/cannot read the cluster key/);
  });
});

describe('cluster seal, first contact', () => {
  it('refuses what a sender sent before the first message this relay heard from it', () => {
    const a = new ClusterSeal(KEY, 'tunnel');
    const b = new ClusterSeal(KEY, 'tunnel');
    const early = a.seal('s', text('before b listened'));
    const first = a.seal('s', text('first heard'));
    expect(Buffer.from(b.open('s', first)).toString()).toBe('first heard');
    expect(failure(() => b.open('s', early))).toBe('replayed');
  });
});
