// A program a user of the packed tarball would write, compiled in a fresh project with `strict` and
// `skipLibCheck: false` by .ci/consumer-check.sh: it proves the published types stand on their own,
// that typed stubs refuse wrong calls (the @ts-expect-error lines must be errors), and that relay,
// node and client start, answer and stop so that the process exits by itself.
import { connect, defineService, isTunnelError, Relay, ServiceRegistry, TunnelError, TunnelNode, withContext, type BroadcastResult } from 'tunnel-rpc';

export const Arith = defineService({
  Multiply(a: number, b: number) {
    return a * b;
  },
  Sum(...nums: number[]) {
    return nums.reduce((x, y) => x + y, 0);
  },
  Where: withContext((ctx, tag: string) => `${tag} on ${ctx.node}`),
});

function check(what: string, ok: boolean, got: unknown): void {
  if (!ok) throw new Error(`${what}: got ${JSON.stringify(got)}`);
}

const relay = new Relay({ listen: '127.0.0.1:0' });
const { url } = await relay.listen();
const node = new TunnelNode({ relay: url, name: 'consumer-1', services: new ServiceRegistry().register('Arith', Arith) });
node.start();
await node.waitConnected();
const client = await connect(url);
try {
  const arith = client.service<typeof Arith>('Arith');
  const six: number = await arith.Multiply(2, 3); // Promise<number>
  check('Multiply(2, 3)', six === 6, six);
  const sum: number = await arith.Sum(1, 2, 3);
  check('Sum(1, 2, 3)', sum === 6, sum);

  // @ts-expect-error a string where a number goes
  const wrongType = arith.Multiply('2', 3);
  await wrongType;
  // @ts-expect-error no such method
  const noMethod = arith.Divide(1, 2);
  const err: unknown = await noMethod.then(
    () => null,
    (e: unknown) => e,
  );
  if (!isTunnelError(err, 'NO_METHOD')) throw new Error(`Divide: expected NO_METHOD, got ${String(err)}`);
  const code: 'NO_METHOD' = err.code;
  check('isTunnelError narrows', code === 'NO_METHOD', code);

  const where: string = await arith.with({ timeout: 2_000, node: 'consumer-1' }).Where('t');
  check('with().Where', where === 't on consumer-1', where);
  const all: BroadcastResult<number>[] = await arith.broadcast.with({ timeout: 2_000 }).Multiply(4, 5);
  check('broadcast', all.length === 1 && all[0]!.ok && all[0]!.result === 20, all);
  const untyped: unknown = await client.call('Arith.Multiply', 6, 7);
  check('call()', untyped === 42, untyped);
  check('TunnelError code', new TunnelError('MY_CODE', 'custom').code === 'MY_CODE', null);
} finally {
  await client.close();
  await node.stop();
  await relay.close();
}
console.log('consumer program: ok');
