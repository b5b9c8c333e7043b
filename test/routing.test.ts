import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Client } from '../src/client/client.js';
import { isTunnelError } from '../src/errors.js';
import { killAll, runCall, startNode, startRelay, type Proc, type RunningRelay } from './helpers/processes.js';

const FLEET = 'test/fixtures/fleet-services.js';
const SLOW_MS = 1_000;

function countBy(values: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of values) out[v] = (out[v] ?? 0) + 1;
  return out;
}

/** Waits until `proc` has logged `msg` at least `n` times. */
function waitForCount(proc: Proc, msg: string, n: number, timeout = 10_000) {
  return proc.waitForLog(() => proc.logs.filter((l) => l.msg === msg).length >= n, timeout, `${n}× "${msg}"`);
}

describe('routing over three nodes', () => {
  let relay: RunningRelay;
  const clients: Client[] = [];
  const client = async () => {
    const c = await connect(relay.addr);
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    relay = await startRelay();
    // n3 is the slow one: its Fleet.Work takes SLOW_MS, the others answer at once.
    await Promise.all([
      startNode(relay.addr, ['--name', 'n1', '--label', 'region=eu', '--services', FLEET]),
      startNode(relay.addr, ['--name', 'n2', '--label', 'region=eu', '--label', 'tier=gpu', '--services', FLEET]),
      startNode(relay.addr, ['--name', 'n3', '--label', 'region=us', '--services', FLEET], { FLEET_DELAY_MS: String(SLOW_MS) }),
    ]);
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await killAll();
  });

  it('round-robin spreads 300 calls evenly (±10 %)', async () => {
    const c = await client();
    const served = await Promise.all(Array.from({ length: 300 }, () => c.call<string>('Fleet.Where', { affinity: false })));
    const counts = countBy(served);
    console.log('round-robin spread of 300 calls:', counts);
    expect(Object.keys(counts).sort()).toEqual(['n1', 'n2', 'n3']);
    for (const n of Object.values(counts)) expect(Math.abs(n - 100)).toBeLessThanOrEqual(10);
  });

  it('random (per call) reaches every node', async () => {
    const c = await client();
    const served = await Promise.all(Array.from({ length: 300 }, () => c.call<string>('Fleet.Where', { affinity: false, selector: 'random' })));
    const counts = countBy(served);
    console.log('random spread of 300 calls:', counts);
    // Binomial(300, 1/3): 50 is six standard deviations below the mean.
    for (const name of ['n1', 'n2', 'n3']) expect(counts[name]).toBeGreaterThan(50);
  });

  it('least-pending avoids the node whose handlers are slow; round-robin does not', async () => {
    const c = await client();
    // Open-loop load: a call every 10 ms whatever the answers do, as from many independent users
    // (a closed loop would make the callers themselves wait on the slow node). The timer paces the
    // load; it synchronises nothing.
    const run = async (selector: 'least-pending' | 'round-robin') => {
      const calls: Array<Promise<string>> = [];
      for (let i = 0; i < 150; i++) {
        calls.push(c.call<string>('Fleet.Work', { affinity: false, selector }));
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      return countBy(await Promise.all(calls));
    };
    const least = await run('least-pending');
    const rr = await run('round-robin');
    console.log(`150 calls, one every 10 ms, n3 slow (${SLOW_MS} ms): least-pending`, least, 'round-robin', rr);
    expect(rr.n3).toBe(50);
    expect((least.n1 ?? 0) + (least.n2 ?? 0) + (least.n3 ?? 0)).toBe(150);
    expect(least.n3 ?? 0).toBeLessThan(25);
  });

  it('--node and --where target exactly', async () => {
    const c = await client();
    const named = await Promise.all(Array.from({ length: 30 }, () => c.call<string>('Fleet.Where', { node: 'n2' })));
    expect(new Set(named)).toEqual(new Set(['n2']));
    const eu = await Promise.all(Array.from({ length: 30 }, () => c.call<string>('Fleet.Where', { where: { region: 'eu' }, affinity: false })));
    expect(countBy(eu)).toEqual({ n1: 15, n2: 15 });

    const byNode = await runCall(relay.addr, ['--node', 'n3', 'Fleet.Where']);
    expect(byNode).toMatchObject({ code: 0, stdout: 'n3\n' });
    const byLabel = await runCall(relay.addr, ['--where', 'region=us', 'Fleet.Where']);
    expect(byLabel).toMatchObject({ code: 0, stdout: 'n3\n' });
    // Repeated --where: every label must match.
    const both = await runCall(relay.addr, ['--where', 'region=eu', '--where', 'tier=gpu', 'Fleet.Where']);
    expect(both).toMatchObject({ code: 0, stdout: 'n2\n' });
    const none = await runCall(relay.addr, ['--where', 'region=mars', 'Fleet.Where']);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/NO_NODE: no node serving Fleet.Where has labels region=mars; nodes serving it: .*n1 \(region=eu\)/);
    const clash = await runCall(relay.addr, ['--node', 'n3', '--where', 'region=eu', 'Fleet.Where']);
    expect(clash.code).toBe(1);
    expect(clash.stderr).toContain('NO_NODE: node n3 has labels region=us, which do not match region=eu');
    const unknown = await runCall(relay.addr, ['--node', 'n9', 'Fleet.Where']);
    expect(unknown.stderr).toMatch(/NO_NODE: no node named n9 is connected; nodes online: .*n1/);
  });

  it('affinity keeps a logged-in session working across 100 calls while other callers spread', async () => {
    const alice = await client();
    const home = await alice.call<string>('Fleet.Login', 'alice');
    const others = await Promise.all(Array.from({ length: 30 }, () => client()));
    const [mine, theirs] = await Promise.all([
      (async () => {
        const out: Array<{ user: string; node: string }> = [];
        for (let i = 0; i < 100; i++) out.push(await alice.call('Fleet.Whoami'));
        return out;
      })(),
      Promise.all(others.map((o) => o.call<string>('Fleet.Where'))),
    ]);
    expect(mine.every((r) => r.user === 'alice' && r.node === home)).toBe(true);
    const spread = countBy(theirs);
    console.log(`affinity: 100/100 Whoami on ${home}; 30 other callers spread`, spread);
    for (const name of ['n1', 'n2', 'n3']) expect(spread[name]).toBeGreaterThanOrEqual(5);

    // An explicit node or where is obeyed (the other node has no login) and does not move the session.
    const elsewhere = ['n1', 'n2', 'n3'].find((n) => n !== home)!;
    await expect(alice.call('Fleet.Whoami', { node: elsewhere })).rejects.toMatchObject({ code: 'NOT_LOGGED_IN' });
    const otherRegion = home === 'n3' ? 'eu' : 'us';
    await expect(alice.call('Fleet.Whoami', { where: { region: otherRegion } })).rejects.toMatchObject({ code: 'NOT_LOGGED_IN' });
    expect(await alice.call('Fleet.Whoami')).toEqual({ user: 'alice', node: home });
  });

  it('rejects an unknown selector and a malformed where with BAD_REQUEST', async () => {
    const c = await client();
    await expect(c.request('Fleet.Where', [], { selector: 'fastest' as 'random' })).rejects.toMatchObject({
      code: 'BAD_REQUEST',
      message: expect.stringContaining('round-robin, random, least-pending'),
    });
    await expect(c.request('Fleet.Where', [], { where: { region: 7 as unknown as string } })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    const cli = await runCall(relay.addr, ['--selector', 'fastest', 'Fleet.Where']);
    expect(cli.code).toBe(2);
  });
});

describe('draining', () => {
  let relay: RunningRelay;
  let d1: Proc;
  let c: Client;

  beforeAll(async () => {
    relay = await startRelay();
    [d1] = await Promise.all([startNode(relay.addr, ['--name', 'd1', '--services', FLEET]), startNode(relay.addr, ['--name', 'd2', '--services', FLEET])]);
    c = await connect(relay.addr);
  });
  afterAll(async () => {
    await c.close();
    await killAll();
  });

  it('a draining node gets no new calls and finishes its running ones', async () => {
    const home = await c.call<string>('Fleet.Where', { node: 'd1' });
    expect(home).toBe('d1');
    const running = c.call<string>('Fleet.Work', 1_500, { node: 'd1' });
    await waitForCount(d1, 'fleet work started', 1);
    const from = relay.proc.logs.length;
    d1.kill('SIGTERM');
    await relay.proc.waitForLog((l) => l.msg === 'node is draining' && l.node === 'd1', 5_000, 'd1 draining', from);

    // The session's sticky node drains: its calls now go to d2 (a Login would be needed again there).
    const after = await Promise.all(Array.from({ length: 20 }, () => c.call<string>('Fleet.Where')));
    expect(new Set(after)).toEqual(new Set(['d2']));
    const err = await c.call('Fleet.Where', { node: 'd1' }).catch((e: unknown) => e);
    expect(isTunnelError(err, 'NO_NODE')).toBe(true);
    expect((err as Error).message).toContain('draining');

    expect(await running).toBe('d1');
    expect((await d1.exited).code).toBe(0);
  });
});
