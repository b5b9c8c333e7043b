import { once } from 'node:events';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { BIN, killAll, Proc, runCall, START_TIMEOUT, startNode, startRelay, type LogLine } from './helpers/processes.js';
import { duplicateKeys } from './helpers/strict-json.js';

/** The JSON log lines of a stderr text. */
function jsonLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.startsWith('{'));
}

function expectNoDuplicateKeys(who: string, stderr: string): void {
  const lines = jsonLines(stderr);
  expect(lines.length, `${who} wrote no JSON log line`).toBeGreaterThan(0);
  for (const line of lines) expect({ who, line, duplicates: duplicateKeys(line) }).toEqual({ who, line, duplicates: [] });
}

const parsed = (stderr: string): LogLine[] => jsonLines(stderr).map((l) => JSON.parse(l) as LogLine);

afterAll(killAll);

describe('JSON log lines', () => {
  it('never carry a key twice, on the relay, the node or the caller, at trace level', async () => {
    const relay = await startRelay(['--log-level', 'trace', '--msgpack-rpc-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0']);
    const node = await startNode(relay.addr, ['--log-level', 'trace', '--name', 'n1', '--label', 'site=lab', '--direct-listen', '127.0.0.1:0']);
    const direct = `127.0.0.1:${(await node.waitForMsg('direct listener ready')).port as number}`;
    const calls = [
      await runCall(relay.addr, ['--log-level', 'trace', '--login', 'alice:secret', 'Hello.Hello', 'bob']),
      await runCall(relay.addr, ['--log-level', 'trace', 'Arith.Divide', '1', '0']),
      await runCall(relay.addr, ['--log-level', 'trace', '--list']),
      await runCall(relay.addr, ['--log-level', 'trace', '--all', 'Arith.Multiply', '2', '3']),
      await runCall(relay.addr, ['--log-level', 'trace', '--node', 'nobody', 'Arith.Multiply', '2', '3']),
      await runCall(direct, ['--log-level', 'trace', 'Arith.Multiply', '2', '3']),
    ];
    node.kill('SIGTERM');
    await node.exited;
    relay.proc.kill('SIGTERM');
    await relay.proc.exited;
    expectNoDuplicateKeys('tunnel-relay', relay.proc.stderr);
    expectNoDuplicateKeys('tunnel-node', node.stderr);
    calls.forEach((c, i) => expectNoDuplicateKeys(`tunnel-call #${i}`, c.stderr));
  });
});

describe('start-up and per-session lines', () => {
  it('a relay and a node each say one thing at info when they start; sessions are debug', async () => {
    const relay = new Proc(BIN.relay, ['--listen', '127.0.0.1:0']);
    const listening = await relay.waitForMsg('relay listening', START_TIMEOUT);
    const addr = `127.0.0.1:${listening.port as number}`;
    expect(relay.logs.filter((l) => l.level === 30).map((l) => l.msg)).toEqual(['relay listening']);
    // The settings are there at debug, after the checks.
    const debug = new Proc(BIN.relay, ['--listen', '127.0.0.1:0', '--log-level', 'debug']);
    expect(await debug.waitForMsg('relay starting', START_TIMEOUT)).toMatchObject({ level: 20, maxTimeout: 300_000, listen: '127.0.0.1:0' });

    const node = new Proc(BIN.node, ['--relay', addr, '--name', 'quiet-1', '--users', 'alice:secret']);
    await node.waitForMsg('connected to relay', START_TIMEOUT);
    for (let i = 0; i < 3; i++) expect((await runCall(addr, ['--login', 'alice:secret', 'Hello.WhoAmI'])).stdout).toBe('alice\n');
    expect(node.logs.filter((l) => (l.level ?? 0) >= 30).map((l) => l.msg)).toEqual(['connected to relay']);
    expect(relay.logs.filter((l) => l.level === 30).map((l) => l.msg)).toEqual(['relay listening', 'node connected']);
  });
});

describe('tunnel-call --log-level debug', () => {
  it('says which relay, which session, and per call the method, milliseconds and node when known', async () => {
    const relay = await startRelay();
    const node = await startNode(relay.addr, ['--name', 'office-1', '--direct-listen', '127.0.0.1:0']);
    const direct = `127.0.0.1:${(await node.waitForMsg('direct listener ready')).port as number}`;

    const viaRelay = parsed((await runCall(relay.addr, ['--log-level', 'debug', 'Arith.Multiply', '2', '3'])).stderr);
    expect(viaRelay).toEqual([
      expect.objectContaining({ msg: 'connecting', relay: `ws://${relay.addr}/`, timeoutMs: 30_000 }),
      expect.objectContaining({ msg: 'connected', url: `ws://${relay.addr}/`, server: expect.stringMatching(/^tunnel-relay\//), session: expect.any(String) }),
      expect.objectContaining({ msg: 'call answered', method: 'Arith.Multiply', ms: expect.any(Number) }),
    ]);
    expect(viaRelay[2]).not.toHaveProperty('node');

    const named = parsed((await runCall(relay.addr, ['--log-level', 'debug', '--node', 'office-1', 'Arith.Multiply', '2', '3'])).stderr);
    expect(named.at(-1)).toMatchObject({ msg: 'call answered', method: 'Arith.Multiply', node: 'office-1' });

    const straight = parsed((await runCall(direct, ['--log-level', 'debug', 'Arith.Divide', '1', '0'])).stderr);
    expect(straight.find((l) => l.msg === 'connected')).toMatchObject({ server: 'tunnel-node/office-1', session: expect.stringMatching(/^direct-/) });
    expect(straight.at(-1)).toMatchObject({ msg: 'call failed', method: 'Arith.Divide', node: 'office-1', code: 'APP_ERROR' });
  });
});

describe('fatal start-up errors', () => {
  let blocker: Server | undefined;
  afterEach(async () => {
    if (blocker) await new Promise((resolve) => blocker!.close(resolve));
    blocker = undefined;
  });

  async function busyPort(): Promise<number> {
    blocker = createServer();
    blocker.listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    return (blocker.address() as AddressInfo).port;
  }

  it('reach stderr as plain text even with --log-level silent', async () => {
    const port = await busyPort();
    const relay = new Proc(BIN.relay, ['--listen', `127.0.0.1:${port}`, '--log-level', 'silent']);
    expect((await relay.exited).code).toBe(1);
    expect(relay.stderr).toMatch(new RegExp(`^tunnel-relay: cannot listen \\(listen=127\\.0\\.0\\.1:${port} err=listen EADDRINUSE[^\\n]*\\)\\n$`));

    const node = new Proc(BIN.node, ['--relay', '127.0.0.1:1', '--direct-listen', `127.0.0.1:${port}`, '--log-level', 'silent']);
    expect((await node.exited).code).toBe(1);
    expect(node.stderr).toMatch(/^tunnel-node: cannot listen for direct callers \(directListen=127\.0\.0\.1:\d+ err=listen EADDRINUSE/);
  });

  it('are one JSON line at fatal level otherwise', async () => {
    const port = await busyPort();
    const relay = new Proc(BIN.relay, ['--listen', `127.0.0.1:${port}`]);
    expect((await relay.exited).code).toBe(1);
    expect(relay.logs).toEqual([expect.objectContaining({ level: 60, msg: 'cannot listen', err: expect.stringContaining('EADDRINUSE') })]);
    expect(jsonLines(relay.stderr)).toHaveLength(relay.stderr.trim().split('\n').length);
  });
});
