import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, defineService, isTunnelError, NoNodeReason, Relay, ServiceRegistry, TunnelError, TunnelNode, withContext } from '../src/index.js';
import { registerExamples } from '../src/services/index.js';
import { waitUntil } from './helpers/wait.js';

const Calc = defineService({
  Sum(...nums: number[]) {
    return nums.reduce((x, y) => x + y, 0);
  },
  Scale(x: number, factor = 2) {
    return x * factor;
  },
  Where: withContext((ctx, tag: string) => `${tag}@${ctx.node}`),
  Refuse(code: string): never {
    throw new TunnelError(code, `refused with ${code}`);
  },
});

describe('library API against a real relay', () => {
  let relay: Relay;
  let url: string;
  let node: TunnelNode;
  const seen: string[] = [];

  beforeAll(async () => {
    relay = new Relay({ listen: '127.0.0.1:0' });
    ({ url } = await relay.listen());
    const registry = registerExamples(new ServiceRegistry()).register('Probe', {
      Wait: withContext(async (ctx, ms: number) => {
        seen.push('started');
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, ms);
          ctx.signal.addEventListener('abort', () => {
            clearTimeout(t);
            seen.push(`aborted:${(ctx.signal.reason as { code?: string }).code}`);
            resolve();
          });
        });
        return ms;
      }),
      Caller: withContext((ctx) => ({ session: ctx.session.id, address: ctx.caller.address, identity: ctx.caller.identity, node: ctx.node })),
      Remember: withContext((ctx, value: unknown) => {
        const before = ctx.session.data.get('v') ?? null;
        ctx.session.data.set('v', value);
        return before;
      }),
    });
    registry.register('Calc', Calc);
    node = new TunnelNode({ relay: url, name: 'lib-node', services: registry });
    node.start();
    await node.waitConnected();
  });
  afterAll(async () => {
    await node.stop(1_000);
    await relay.close();
  });

  it('calls with spread arguments and trailing options', async () => {
    const client = await connect(url);
    expect(await client.call('Arith.Multiply', 2, 3)).toBe(6);
    expect(await client.call('Arith.Multiply', 4, 5, { timeout: 2_000 })).toBe(20);
    expect(await client.request('Arith.Divide', [9, 3])).toBe(3);
    await client.close();
  });

  it('calls through a typed stub: rest and default parameters, the context first, options, broadcast, custom codes', async () => {
    const client = await connect(url);
    const calc = client.service<typeof Calc>('Calc');
    expect(await calc.Sum(1, 2, 3)).toBe(6);
    expect(await calc.Sum()).toBe(0);
    expect(await calc.Scale(3)).toBe(6);
    expect(await calc.Scale(3, 10)).toBe(30);
    expect(await calc.with({ timeout: 2_000, node: 'lib-node' }).Where('t')).toBe('t@lib-node');
    expect(await calc.broadcast.Sum(4, 5)).toEqual([{ node: 'lib-node', ok: true, result: 9, ms: expect.any(Number) }]);
    const err = await calc.Refuse('OUT_OF_STOCK').catch((e: unknown) => e);
    expect(isTunnelError(err, 'OUT_OF_STOCK') && err.message).toBe('refused with OUT_OF_STOCK');
    const lost = await calc
      .with({ node: 'no-such-node', timeout: 2_000 })
      .Sum(1)
      .catch((e: unknown) => e);
    expect(isTunnelError(lost, 'NO_NODE')).toBe(true);
    expect((lost as TunnelError).data).toEqual({ reason: NoNodeReason.NODE_NOT_FOUND });
    const arith = client.service('Arith');
    expect(await arith.Multiply(6, 7)).toBe(42);
    await client.close();
  });

  it('gives each caller connection its own session and Login', async () => {
    const alice = await connect(url);
    const other = await connect(url);
    expect(alice.session).not.toBe(other.session);
    expect(await alice.call('Hello.Login', 'alice:secret')).toBe('alice');
    expect(await alice.call('Hello.Hello', 'bob')).toMatch(/^Hello bob, from 127\.0\.0\.1:\d+$/);
    const err = await other.call('Hello.Hello', 'bob').catch((e: unknown) => e);
    expect(isTunnelError(err, 'NOT_LOGGED_IN')).toBe(true);
    expect(await alice.call('Probe.Remember', 1)).toBeNull();
    expect(await alice.call('Probe.Remember', 2)).toBe(1);
    expect(await other.call('Probe.Remember', 3)).toBeNull();
    const info = (await alice.call('Probe.Caller')) as { session: string; node: string; identity: unknown };
    expect(info).toMatchObject({ session: alice.session, node: 'lib-node', identity: null });
    await Promise.all([alice.close(), other.close()]);
  });

  it('cancels a call through an AbortSignal: the caller gets CANCELLED and the handler sees its signal', async () => {
    const client = await connect(url);
    const controller = new AbortController();
    const pending = client.call('Probe.Wait', 30_000, { signal: controller.signal });
    await waitUntil(() => seen.includes('started'), 10_000, 'Probe.Wait to start');
    controller.abort();
    const err = await pending.catch((e: unknown) => e);
    expect(isTunnelError(err, 'CANCELLED')).toBe(true);
    await waitUntil(() => seen.includes('aborted:CANCELLED'), 10_000, 'Probe.Wait to be aborted');
    expect(seen).toContain('aborted:CANCELLED');
    await client.close();
  });

  it('fails calls in flight with CONNECTION_CLOSED when the client closes, and later calls at once', async () => {
    const client = await connect(url);
    const pending = client.call('Probe.Wait', 30_000);
    await client.close();
    expect(isTunnelError(await pending.catch((e: unknown) => e), 'CONNECTION_CLOSED')).toBe(true);
    expect(isTunnelError(await client.call('Server.Ping').catch((e: unknown) => e), 'CONNECTION_CLOSED')).toBe(true);
  });

  it('reports the presence of the node', () => {
    expect(relay.nodes()).toEqual([
      expect.objectContaining({
        name: 'lib-node',
        services: expect.objectContaining({ Arith: ['Divide', 'Multiply'], Calc: ['Refuse', 'Scale', 'Sum', 'Where'] }),
      }),
    ]);
  });

  it('refuses to connect to a port where no relay listens, with the reason', async () => {
    const err = await connect('127.0.0.1:1', { connectTimeout: 2_000 }).catch((e: unknown) => e);
    expect(isTunnelError(err, 'CONNECTION_CLOSED')).toBe(true);
    expect((err as Error).message).toMatch(/ECONNREFUSED/);
  });
});
