import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Client } from '../src/client/client.js';
import { isTunnelError } from '../src/errors.js';
import { buildGo, CI, GO_PACKAGES, goMissing, GoServer, killForeign, runJsonLines, skipNote, type GoPrograms } from './helpers/foreign.js';
import { BIN, killAll, Proc, runCall, startNode, startRelay, type RunningRelay } from './helpers/processes.js';

const SLOW = fileURLToPath(new URL('./fixtures/slow-services.js', import.meta.url));

describe('tunnel-node --forward flags', () => {
  afterAll(killAll);

  it.each([
    ['Arith', '--forward takes Name=host:port or Name=unix:/path, got "Arith"'],
    ['Arith=nowhere', 'give a port: "nowhere:PORT"'],
    ['9x=127.0.0.1:1', 'service name "9x" must start with a letter'],
    ['Arith=unix:', 'give the socket path after unix:'],
  ])('refuses --forward %s with a clear message', async (value, message) => {
    const p = new Proc(BIN.node, ['--relay', '127.0.0.1:1', '--forward', value]);
    const { code } = await p.exited;
    expect(code).toBe(2);
    expect(p.stderr).toContain(message);
  });
});

const goReason = goMissing();
if (goReason && !CI) skipNote('the --forward tests with a Go net/rpc server', goReason, GO_PACKAGES);

describe.skipIf(goReason !== undefined && !CI)('tunnel-node --forward to a Go net/rpc server', () => {
  let go: GoPrograms;
  let relay: RunningRelay;
  let rpcPort: number;
  let node: Proc;
  let tcpServer: GoServer;
  let tcpAddress: string;
  let sockDir: string;
  let client: Client;

  beforeAll(async () => {
    if (goReason) throw new Error(`CI=true but ${goReason}; .ci/run installs ${GO_PACKAGES}`);
    go = await buildGo();
    sockDir = mkdtempSync(join(tmpdir(), 'tunnel-sock-'));
    const sock = join(sockDir, 'arith.sock');
    tcpServer = new GoServer(go.server, '127.0.0.1:0');
    tcpAddress = await tcpServer.address;
    await new GoServer(go.server, `unix:${sock}`).address;
    relay = await startRelay(['--msgpack-rpc-listen', '127.0.0.1:0']);
    rpcPort = (await relay.proc.waitForMsg('msgpack-rpc port listening')).port as number;
    // One node serving a TypeScript service and two forwarded ones, over TCP and a Unix socket.
    node = await startNode(relay.addr, ['--name', 'fwd-1', '--services', SLOW, '--forward', `Server=${tcpAddress}`, '--forward', `Arith=unix:${sock}`]);
    client = await connect(relay.addr, { timeout: 20_000 });
  }, 300_000);

  afterAll(async () => {
    await client?.close();
    await killForeign();
    await killAll();
    go?.cleanup();
    if (sockDir) rmSync(sockDir, { recursive: true, force: true });
  });

  it('passes tunnel-call results and the Go error string through', async () => {
    const mul = await runCall(relay.addr, ['Arith.Multiply', '{"X":6,"Y":7}']);
    expect(mul.stdout).toBe('42\n');
    const div = await runCall(relay.addr, ['Arith.Divide', '{"X":7,"Y":2}']);
    expect(div.stdout).toBe('3.5\n');
    const zero = await runCall(relay.addr, ['Arith.Divide', '{"X":1,"Y":0}']);
    expect(zero.code).toBe(1);
    expect(zero.stderr).toBe('APP_ERROR: divide by zero\n');
    const ping = await runCall(relay.addr, ['Server.Ping']);
    expect(ping.stdout).toBe('pong\n');
    const missing = await runCall(relay.addr, ['Arith.Power', '{"X":1,"Y":0}']);
    expect(missing.stderr).toBe('APP_ERROR: rpc: can\'t find method Arith.Power\n');
    // The same node still serves its own TypeScript service.
    const where = await runCall(relay.addr, ['Slow.Where']);
    expect(where.stdout).toBe('fwd-1\n');
  });

  it('passes params and results through unchanged', async () => {
    const value = { text: 'héllo', list: [1, -2, 3.25, null, true], nested: { deep: ['x'] }, big: 2 ** 40 };
    expect(await client.request('Server.Echo', [value])).toEqual(value);
  });

  it('answers 1,000 concurrent calls, each correctly', async () => {
    const n = 1_000;
    const results = await Promise.all(Array.from({ length: n }, (_, i) => client.request<number>('Arith.Multiply', [{ X: i, Y: 3 }])));
    expect(results).toEqual(Array.from({ length: n }, (_, i) => i * 3));
  });

  it('carries a Go client through the relay to the Go server: foreign at both ends', async () => {
    const r = await runJsonLines(go.client, [
      '-addr',
      `127.0.0.1:${rpcPort}`,
      'call',
      'Arith.Multiply {"X":6,"Y":7}',
      'Arith.Divide {"X":1,"Y":0}',
      'fwd-1/Server.Echo {"a":[1,"x",{"b":true}]}',
      'Server.Ping null',
    ]);
    expect(r.stderr).toBe('');
    expect(r.lines).toEqual([{ result: 42 }, { error: 'APP_ERROR: divide by zero' }, { result: { a: [1, 'x', { b: true }] } }, { result: 'pong' }]);
    const bench = await runJsonLines(go.client, ['-addr', `127.0.0.1:${rpcPort}`, 'bench', '-n', '2000', '-c', '32', 'Arith.Multiply {"X":6,"Y":7}']);
    expect(bench.lines).toEqual([expect.objectContaining({ calls: 2000, failed: 0 })]);
  });

  it('fails calls cleanly while the Go server is down and works again after it restarts', async () => {
    const from = node.logs.length;
    const sleeping = client.request('Server.Sleep', [20_000]).catch((err: unknown) => err);
    // The Sleep call must be on the Go server before it is killed: a Ping after it on the same
    // connections answering proves the request was written.
    expect(await client.request('Server.Ping', [])).toBe('pong');
    expect(await client.request('Server.Ping', [])).toBe('pong');
    await tcpServer.stop();

    const inFlight = await sleeping;
    expect(isTunnelError(inFlight, 'APP_ERROR')).toBe(true);
    expect((inFlight as Error).message).toMatch(new RegExp(`^forwarded service Server: .*local server at ${tcpAddress}.* while the call was in flight; it may or may not have run$`));
    await node.waitForMsg('forward target unreachable', 5_000, from);

    const down = await runCall(relay.addr, ['Server.Ping']);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(new RegExp(`^APP_ERROR: forwarded service Server: cannot reach the local server at ${tcpAddress.replace(/\./g, '\\.')} \\(ECONNREFUSED\\); is it running\\?\n$`));
    // Other services of the node are not disturbed.
    expect(await client.request('Arith.Multiply', [{ X: 2, Y: 2 }])).toBe(4);

    tcpServer = new GoServer(go.server, tcpAddress);
    expect(await tcpServer.address).toBe(tcpAddress);
    expect(await client.request('Server.Ping', [])).toBe('pong');
    expect(await client.request('Server.Ping', [])).toBe('pong');
    await node.waitForMsg('forward target reachable', 5_000, from);
  });
});
