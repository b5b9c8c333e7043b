import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { connect } from '../src/client/client.js';
import { gatewayCall } from './helpers/http.js';
import { Holds } from './helpers/hold.js';
import { BIN, killAll, Proc, runCall, startNode, startRelay } from './helpers/processes.js';

const SLOW = fileURLToPath(new URL('./fixtures/slow-services.js', import.meta.url));

describe('drain and shutdown', () => {
  // Calls that must still be running when something happens are held by the test (Slow.Hold) and
  // released once it has checked what it needs, not slept for a duration that a busy machine outlasts.
  let holds: Holds;
  beforeEach(async () => {
    holds = await Holds.open();
  });
  afterEach(async () => {
    await killAll();
    await holds.close();
  });

  it('relay: SIGTERM lets a running call finish, refuses new calls, and exits 0 within the drain time', async () => {
    const relay = await startRelay(['--drain-timeout', '30s']);
    const node = await startNode(relay.addr, ['--name', 'slow-1', '--services', SLOW]);
    const early = await connect(relay.addr, { timeout: 10_000 });
    const goaway = once(early, 'goaway');

    const call = runCall(relay.addr, ['Slow.Hold', String(holds.port)], {}, 50_000);
    await holds.waitHeld(1, 20_000);
    relay.proc.kill('SIGTERM');
    const draining = await relay.proc.waitForMsg('draining: refusing new connections and calls');

    // A caller connected before the drain is told at once and fails new calls fast: nowhere near
    // the 10 s timeout it would otherwise wait out.
    expect(await goaway).toEqual(['relay is shutting down']);
    const t = Date.now();
    await expect(early.call('Slow.Echo', 1)).rejects.toMatchObject({ code: 'GOING_AWAY' });
    expect(Date.now() - t).toBeLessThan(5_000);
    // New connections and gateway calls are refused.
    const late = await runCall(relay.addr, ['Slow.Echo', '1']);
    expect(late.code).toBe(3);
    expect(late.stderr).toContain('503');
    const http = await gatewayCall(relay.port, 'Slow.Echo', [1]);
    expect(http.status).toBe(503);
    expect(http.json).toMatchObject({ error: { code: 'GOING_AWAY' } });

    // The call in flight was still running throughout; released, it completes, then the relay exits 0
    // without waiting out --drain-timeout.
    expect(holds.held).toBe(1);
    holds.release();
    expect(await call).toMatchObject({ code: 0, stdout: 'released\n' });
    const { code } = await relay.proc.exited;
    expect(code).toBe(0);
    // The relay's own clock, not this process's (which ran two more callers meanwhile): drained
    // before the 30 s drain timeout, which would have logged "drain timeout" instead.
    const drained = relay.proc.logs.find((l) => l.msg === 'drained: no call in flight');
    expect(drained).toBeDefined();
    expect((drained!.time as number) - (draining.time as number)).toBeLessThan(30_000);
    // The node was told too: it leaves once idle and reconnects with backoff.
    await node.waitForMsg('relay is going away');
    await node.waitForMsg('reconnecting');
    await early.close();
  });

  it('relay: a broadcast in flight at SIGTERM is waited for like any call', async () => {
    const relay = await startRelay(['--drain-timeout', '30s']);
    await Promise.all(['b1', 'b2'].map((name) => startNode(relay.addr, ['--name', name, '--services', SLOW])));
    const all = runCall(relay.addr, ['--all', '--json', 'Slow.Hold', String(holds.port)], {}, 50_000);
    await holds.waitHeld(2, 20_000);
    relay.proc.kill('SIGTERM');
    await relay.proc.waitForMsg('draining: refusing new connections and calls');
    expect(holds.held).toBe(2);
    holds.release();
    const done = await all;
    expect(done.code).toBe(0);
    const results = (JSON.parse(done.stdout) as { results: Array<{ node: string; ok: boolean; result: unknown }> }).results;
    expect(results.map((r) => [r.node, r.ok, r.result])).toEqual([
      ['b1', true, 'released'],
      ['b2', true, 'released'],
    ]);
    expect((await relay.proc.exited).code).toBe(0);
    expect(relay.proc.logs.some((l) => l.msg === 'drained: no call in flight')).toBe(true);
  });

  it('relay: a second signal exits at once', async () => {
    const relay = await startRelay(['--drain-timeout', '60s']);
    const node = await startNode(relay.addr, ['--name', 'slow-1', '--services', SLOW]);
    void runCall(relay.addr, ['Slow.Sleep', '60000']);
    await node.waitForMsg('test handler started');
    relay.proc.kill('SIGTERM');
    await relay.proc.waitForMsg('draining: refusing new connections and calls');
    const t = Date.now();
    relay.proc.kill('SIGTERM');
    const { code } = await relay.proc.exited;
    expect(code).toBe(130);
    // At once: far from the 60 s drain it would otherwise wait for.
    expect(Date.now() - t).toBeLessThan(30_000);
  });

  it('node: SIGTERM during a running call finishes it, takes no new call, and exits 0', async () => {
    const relay = await startRelay();
    const node = await startNode(relay.addr, ['--name', 'slow-1', '--services', SLOW, '--drain-timeout', '30s']);
    const call = runCall(relay.addr, ['Slow.Hold', String(holds.port)], {}, 50_000);
    await holds.waitHeld(1, 20_000);
    node.kill('SIGTERM');
    await relay.proc.waitForMsg('node is draining');

    // The call is held: the node is still draining, not gone, when the late call arrives.
    const late = await runCall(relay.addr, ['Slow.Echo', '1']);
    expect(late.code).toBe(1);
    expect(late.stderr).toContain('NO_NODE: every node serving Slow is draining');

    expect(holds.held).toBe(1);
    holds.release();
    expect(await call).toMatchObject({ code: 0, stdout: 'released\n' });
    const { code } = await node.exited;
    expect(code).toBe(0);
    // Within its 30 s drain timeout by the node's own clock (the call's answer shows it was not aborted).
    const waiting = node.logs.find((l) => l.msg === 'draining: waiting for running calls');
    const stopped = node.logs.find((l) => l.msg === 'node stopped');
    expect(waiting).toMatchObject({ running: 1 });
    expect((stopped!.time as number) - (waiting!.time as number)).toBeLessThan(30_000);
    const left = await relay.proc.waitForMsg('node disconnected');
    expect(left.failedCalls).toBe(0);
  });

  it('tunnel-call: SIGINT cancels the call on the node and exits non-zero', async () => {
    const relay = await startRelay();
    const node = await startNode(relay.addr, ['--name', 'slow-1', '--services', SLOW]);
    const call = new Proc(BIN.call, ['--relay', relay.addr, 'Slow.Sleep', '60000']);
    await node.waitForMsg('test handler started');
    call.kill('SIGINT');
    const { code } = await call.exited;
    expect(code).toBe(130);
    expect(call.stderr).toContain('CANCELLED');
    await node.waitForMsg('test handler aborted');
  });
});
