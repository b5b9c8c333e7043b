import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Client } from '../src/client/client.js';
import type { TunnelError } from '../src/errors.js';
import { killAll, runCall, startNode, startRelay, type Proc, type RunningRelay } from './helpers/processes.js';

const FLEET = 'test/fixtures/fleet-services.js';
const STARTED = 'fleet work started';

const started = (p: Proc) => p.logs.filter((l) => l.msg === STARTED).length;

/** Waits until the nodes together have started `n` Fleet.Work handlers (node processes start slowly on a busy machine). */
async function waitStarted(procs: Proc[], n: number, timeout = 30_000): Promise<void> {
  await Promise.race(procs.map((p) => p.waitForLog(() => procs.reduce((sum, q) => sum + started(q), 0) >= n, timeout, `${n} started handlers`)));
}

type Outcome = { ok: true; node: string } | { ok: false; code: string };

describe('failover, at most once', () => {
  let relay: RunningRelay;
  const procs = new Map<string, Proc>();
  let c: Client;

  const start = async (name: string) => procs.set(name, await startNode(relay.addr, ['--name', name, '--services', FLEET]));
  const settle = (p: Promise<string>): Promise<Outcome> =>
    p.then(
      (node) => ({ ok: true, node }),
      (err: TunnelError) => ({ ok: false, code: err.code }),
    );

  beforeAll(async () => {
    relay = await startRelay();
    await Promise.all(['f1', 'f2', 'f3'].map(start));
    c = await connect(relay.addr);
  });
  afterAll(async () => {
    await c.close();
    await killAll();
  });

  it('a session whose sticky node dropped goes on to another node: the call was not sent, so it is no NODE_LOST', async () => {
    const home = await c.call<string>('Fleet.Where');
    const from = relay.proc.logs.length;
    procs.get(home)!.kill('SIGKILL');
    await relay.proc.waitForLog((l) => l.msg === 'node disconnected' && l.node === home, 10_000, `${home} disconnected`, from);
    const next = await c.call<string>('Fleet.Where');
    expect(next).not.toBe(home);
    expect(await c.call<string>('Fleet.Where')).toBe(next);
    procs.delete(home);
    await start('f4');
  });

  it('a call in flight on a node that dies fails NODE_LOST and is not run again without retry', async () => {
    const live = [...procs.values()];
    const before = live.map(started);
    // Long enough that the victim is killed while its calls run, however late this process sees them start.
    const calls = Array.from({ length: 6 }, () => settle(c.call<string>('Fleet.Work', 5_000, { affinity: false })));
    await waitStarted(live, before.reduce((a, b) => a + b, 0) + 6);
    const [victimName, victim] = [...procs.entries()][0]!;
    const onVictim = started(victim) - before[0]!;
    const from = relay.proc.logs.length;
    victim.kill('SIGKILL');
    procs.delete(victimName);
    const gone = await relay.proc.waitForLog((l) => l.msg === 'node disconnected' && l.node === victimName, 10_000, `${victimName} disconnected`, from);
    const outcomes = await Promise.all(calls);
    const lost = outcomes.filter((o) => !o.ok);
    console.log(`no retry: ${onVictim} calls were running on ${victimName}; outcomes`, outcomes.map((o) => (o.ok ? o.node : o.code)).join(' '));
    expect(onVictim).toBeGreaterThan(0);
    // Every call the victim started either answered before it died or failed NODE_LOST, as many as the relay failed.
    const answeredByVictim = outcomes.filter((o) => o.ok && o.node === victimName).length;
    expect(lost.length + answeredByVictim).toBe(onVictim);
    expect(lost.length).toBe(gone.failedCalls);
    expect(lost.length).toBeGreaterThan(0);
    expect(lost.every((o) => !o.ok && o.code === 'NODE_LOST')).toBe(true);
    // Executed at most once: the survivors ran exactly the calls routed to them, nothing was re-sent.
    const survivorsRan = [...procs.values()].reduce((sum, p) => sum + started(p), 0) - (before.reduce((a, b) => a + b, 0) - before[0]!);
    expect(survivorsRan).toBe(6 - onVictim);
    await start('f5');
  });

  it('with retry, NODE_LOST calls are sent again to another node and succeed', async () => {
    const live = [...procs.entries()];
    const before = live.map(([, p]) => started(p));
    const retries: number[] = [];
    c.on('retry', (r: { attempt: number }) => retries.push(r.attempt));
    const calls = Array.from({ length: 6 }, () => settle(c.call<string>('Fleet.Work', 5_000, { affinity: false, retry: 2 })));
    await waitStarted(
      live.map(([, p]) => p),
      before.reduce((a, b) => a + b, 0) + 6,
    );
    const [victimName, victim] = live[0]!;
    const onVictim = started(victim) - before[0]!;
    const from = relay.proc.logs.length;
    victim.kill('SIGKILL');
    procs.delete(victimName);
    const gone = await relay.proc.waitForLog((l) => l.msg === 'node disconnected' && l.node === victimName, 10_000, `${victimName} disconnected`, from);
    const outcomes = await Promise.all(calls);
    c.removeAllListeners('retry');
    console.log(
      `retry 2: ${onVictim} calls were running on ${victimName}; ${retries.length} retries; outcomes`,
      outcomes.map((o) => (o.ok ? o.node : o.code)).join(' '),
    );
    expect(onVictim).toBeGreaterThan(0);
    expect(outcomes.every((o) => o.ok)).toBe(true);
    // Each call lost with the victim was retried once, elsewhere; one the victim had answered was not.
    const answeredByVictim = outcomes.filter((o) => o.ok && o.node === victimName).length;
    expect(retries).toHaveLength(gone.failedCalls as number);
    expect(retries.length).toBeGreaterThan(0);
    expect(retries.length + answeredByVictim).toBe(onVictim);
  });

  it('tunnel-call --retry N retries on NODE_LOST; without it the call fails NODE_LOST', async () => {
    const names = [...procs.keys()];
    const victimName = names[0]!;
    const victim = procs.get(victimName)!;
    const n0 = started(victim);
    const plain = runCall(relay.addr, ['--node', victimName, 'Fleet.Work', '20000'], {}, 40_000);
    // A call that ended before starting says why, instead of this waiting out its bound.
    await Promise.race([
      victim.waitForLog(() => started(victim) > n0, 30_000, 'the pinned call to start'),
      plain.then((r) => Promise.reject(new Error(`the pinned call ended before it started on ${victimName}: ${JSON.stringify(r)}`))),
    ]);
    victim.kill('SIGKILL');
    procs.delete(victimName);
    const r = await plain;
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('NODE_LOST');
    expect(r.stderr).toContain('may or may not have run');

    await start('f6');
    const retried = runCall(relay.addr, ['--retry', '3', 'Fleet.Work', '5000'], {}, 40_000);
    // Whichever node the selector picked is killed while the call runs on it.
    const live = [...procs.entries()];
    const counts0 = live.map(([, p]) => started(p));
    await Promise.race([
      waitStarted(
        live.map(([, p]) => p),
        counts0.reduce((a, b) => a + b, 0) + 1,
      ),
      retried.then((r) => Promise.reject(new Error(`the call ended before it started: ${JSON.stringify(r)}`))),
    ]);
    const i = live.findIndex(([, p], k) => started(p) > counts0[k]!);
    const [hitName, hit] = live[i]!;
    hit.kill('SIGKILL');
    procs.delete(hitName);
    const rr = await retried;
    expect(rr.code).toBe(0);
    expect(rr.stdout.trim()).not.toBe(hitName);
    expect(rr.stderr).toContain('retrying after NODE_LOST');
  });
});
