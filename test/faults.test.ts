import { afterEach, describe, expect, it } from 'vitest';
import { connect, isTunnelError } from '../src/index.js';
import { killAll, Proc, BIN, startNode, startRelay } from './helpers/processes.js';

const SLOW = 'test/fixtures/slow-services.js';

afterEach(killAll);

describe('failures', () => {
  it('fails every call in flight with NODE_LOST within 1 s when the node is SIGKILLed, and keeps serving another node', async () => {
    const relay = await startRelay();
    const slow = await startNode(relay.addr, ['--name', 'slow-1', '--services', SLOW]);
    await startNode(relay.addr, ['--name', 'arith-1']);
    const client = await connect(relay.addr);
    const calls = Array.from({ length: 100 }, () =>
      client.call('Slow.Sleep', 60_000).then(
        () => ({ ok: true as const, at: Date.now() }),
        (err: unknown) => ({ ok: false as const, err, at: Date.now() }),
      ),
    );
    // All 100 handlers are running on the node before it dies.
    await slow.waitForLog(() => slow.logs.filter((l) => l.msg === 'test handler started').length >= 100, 15_000, '100 running handlers');
    const killedAt = Date.now();
    slow.kill('SIGKILL');
    const outcomes = await Promise.all(calls);
    console.log(`the last NODE_LOST reached this process ${Math.max(...outcomes.map((o) => o.at)) - killedAt} ms after the SIGKILL`);
    expect(outcomes.every((o) => !o.ok && isTunnelError(o.err, 'NODE_LOST'))).toBe(true);
    // The relay fails all of them when it sees the socket close, by its own clock within 1 s of the
    // kill; how soon this busy process reads the 100 answers is not the relay's doing.
    const gone = await relay.proc.waitForLog((l) => l.msg === 'node disconnected' && l.node === 'slow-1', 10_000, 'slow-1 disconnected');
    expect(gone.failedCalls).toBe(100);
    expect((gone.time as number) - killedAt).toBeLessThan(1_000);
    expect(await client.call('Arith.Multiply', 6, 7)).toBe(42);
    await client.close();
  });

  it('reconnects by itself after the relay is killed and restarted, with growing jittered delays', async () => {
    const first = await startRelay();
    const node = await startNode(first.addr, ['--name', 'office-1', '--reconnect-base', '100ms', '--reconnect-cap', '3s']);
    first.proc.kill('SIGKILL');
    await first.proc.exited;
    const isReconnect = (l: Record<string, unknown>) => l.msg === 'reconnecting';
    await node.waitForLog(() => node.logs.filter(isReconnect).length >= 5, 20_000, 'five reconnect attempts');
    const second = await startRelay([], first.port);
    await node.waitForLog(() => node.logs.filter((l) => l.msg === 'connected to relay').length >= 2, 20_000, 'reconnection');

    const attempts = node.logs.filter(isReconnect).slice(0, 5) as Array<{ attempt: number; delayMs: number; ceilingMs: number }>;
    expect(attempts.map((a) => a.ceilingMs)).toEqual([100, 200, 400, 800, 1600]);
    for (const a of attempts) {
      expect(a.delayMs).toBeGreaterThanOrEqual(0);
      expect(a.delayMs).toBeLessThanOrEqual(a.ceilingMs);
    }
    // Full jitter: the waits are not simply the ceilings.
    expect(attempts.some((a) => a.delayMs !== a.ceilingMs)).toBe(true);

    const client = await connect(second.addr);
    expect(await client.call('Arith.Multiply', 2, 3)).toBe(6);
    await client.close();
  });

  it('aborts the handler and drops the session when the caller is killed mid-call', async () => {
    const relay = await startRelay();
    const node = await startNode(relay.addr, ['--name', 'slow-1', '--services', SLOW]);
    const caller = new Proc(BIN.call, ['--relay', relay.addr, 'Slow.Sleep', '60000']);
    const started = await node.waitForMsg('test handler started');
    caller.kill('SIGKILL');
    const aborted = await node.waitForMsg('test handler aborted', 10_000);
    expect(aborted.session).toBe(started.session);
    expect(aborted.reason).toBe('CANCELLED');
    const closed = await node.waitForMsg('session closed', 10_000);
    expect(closed.session).toBe(started.session);
    expect(closed.abortedCalls).toBe(1);
  });

  it('fails a call that passes its deadline with TIMEOUT and aborts the handler', async () => {
    const relay = await startRelay();
    const node = await startNode(relay.addr, ['--name', 'slow-1', '--services', SLOW]);
    const client = await connect(relay.addr);
    const t0 = Date.now();
    const err = await client.call('Slow.Sleep', 60_000, { timeout: 300 }).catch((e: unknown) => e);
    expect(isTunnelError(err, 'TIMEOUT')).toBe(true);
    // The deadline, not the 60 s sleep: far below the one, whatever the machine's load.
    expect(Date.now() - t0).toBeLessThan(30_000);
    const aborted = await node.waitForMsg('test handler aborted');
    expect(['TIMEOUT', 'CANCELLED']).toContain(aborted.reason);
    await client.close();
  });
});
