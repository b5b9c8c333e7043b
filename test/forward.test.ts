import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Client } from '../src/client/client.js';
import { isTunnelError } from '../src/errors.js';
import { ForwardedService } from '../src/node/forward.js';
import { decodeResult, encodeParams } from '../src/rpc/body.js';
import type { CallContext } from '../src/rpc/context.js';
import { decode, encode } from '../src/wire/codec.js';
import { MessagePackFramer } from '../src/wire/framer.js';
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

describe('the argument count of a forwarded call', () => {
  let server: Server;
  let port: number;
  const sockets = new Set<Socket>();
  const ctx = { signal: new AbortController().signal } as CallContext;

  beforeAll(async () => {
    // A MessagePack-RPC server that answers every request with its params: positional, not Go.
    server = createServer((socket) => {
      sockets.add(socket);
      const framer = new MessagePackFramer(1 << 20);
      socket.on('data', (d: Buffer) => {
        for (const frame of framer.push(d)) {
          const [, id, , params] = decode(frame) as [number, number, string, unknown[]];
          socket.write(encode([1, id, null, params]));
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => server.close(resolve));
  });

  it("refuses more than one argument by default, as Go's net/rpc would silently answer a zero value", async () => {
    const goLike = new ForwardedService('Arith', { host: '127.0.0.1', port });
    try {
      const err = await goLike.call('Arith.Multiply', encodeParams([6, 7]), ctx).catch((e: unknown) => e);
      expect(isTunnelError(err, 'BAD_REQUEST')).toBe(true);
      expect((err as Error).message).toBe(
        `forwarded service Arith follows Go's net/rpc: it takes exactly one argument (a struct as a JSON object, e.g. '{"A":2,"B":3}'); got 2 (a server that takes several: tunnel-node --forward-args any)`,
      );
      // One argument, and none, pass.
      expect(decodeResult(await goLike.call('Arith.Multiply', encodeParams([{ A: 6, B: 7 }]), ctx))).toEqual([{ A: 6, B: 7 }]);
      expect(decodeResult(await goLike.call('Server.Ping', encodeParams([]), ctx))).toEqual([]);
    } finally {
      goLike.close();
    }
  });

  it('passes every argument with args: any', async () => {
    const positional = new ForwardedService('Calc', { host: '127.0.0.1', port }, { args: 'any' });
    try {
      expect(decodeResult(await positional.call('Calc.Add', encodeParams([1, 2, 3]), ctx))).toEqual([1, 2, 3]);
    } finally {
      positional.close();
    }
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
    // Go's net/rpc takes one argument: positional ones are refused instead of answering 0.
    const positional = await runCall(relay.addr, ['Arith.Multiply', '6', '7']);
    expect(positional.code).toBe(1);
    expect(positional.stdout).toBe('');
    expect(positional.stderr).toMatch(/^BAD_REQUEST: forwarded service Arith follows Go's net\/rpc: it takes exactly one argument .*; got 2 /);
    const missing = await runCall(relay.addr, ['Arith.Power', '{"X":1,"Y":0}']);
    expect(missing.stderr).toBe("APP_ERROR: rpc: can't find method Arith.Power\n");
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
    expect((inFlight as Error).message).toMatch(
      new RegExp(`^forwarded service Server: .*local server at ${tcpAddress}.* while the call was in flight; it may or may not have run$`),
    );
    await node.waitForMsg('forward target unreachable', 5_000, from);

    const down = await runCall(relay.addr, ['Server.Ping']);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(
      new RegExp(
        `^APP_ERROR: forwarded service Server: cannot reach the local server at ${tcpAddress.replace(/\./g, '\\.')} \\(ECONNREFUSED\\); is it running\\?\n$`,
      ),
    );
    // Other services of the node are not disturbed.
    expect(await client.request('Arith.Multiply', [{ X: 2, Y: 2 }])).toBe(4);

    tcpServer = new GoServer(go.server, tcpAddress);
    expect(await tcpServer.address).toBe(tcpAddress);
    expect(await client.request('Server.Ping', [])).toBe('pong');
    expect(await client.request('Server.Ping', [])).toBe('pong');
    await node.waitForMsg('forward target reachable', 5_000, from);
  });
});
