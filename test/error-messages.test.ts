// The messages a new user meets in a first hour, from the real CLIs as child processes: a deadline
// that passed, TLS mistakes, a refused node's reconnect line, a handler's bug, NO_NODE's reason.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, isTunnelError } from '../src/index.js';
import { CA_HINT, USE_WS, USE_WSS } from '../src/wire/dial.js';
import { certDir, makeCerts } from './helpers/certs.js';
import { BIN, killAll, Proc, runCall, START_TIMEOUT, startNode, startRelay, type RunningRelay } from './helpers/processes.js';

afterAll(killAll);

describe('messages of calls (real CLIs)', () => {
  let relay: RunningRelay;

  beforeAll(async () => {
    relay = await startRelay();
    await startNode(relay.addr, ['--name', 'slow-1', '--services', 'test/fixtures/slow-services.js']);
  });

  it('TIMEOUT names the deadline that passed', async () => {
    const r = await runCall(relay.addr, ['--timeout', '200ms', 'Slow.Sleep', '30000']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^TIMEOUT: .*within 200 ms \(--timeout\)$/m);
    // The library names the caller's deadline too (the relay's and the client's own timer say the same).
    const client = await connect(relay.addr);
    try {
      const err = await client.call('Slow.Sleep', 30_000, { timeout: 300 }).catch((e: unknown) => e);
      expect(isTunnelError(err, 'TIMEOUT')).toBe(true);
      expect((err as Error).message).toMatch(/within 300 ms/);
    } finally {
      await client.close();
    }
  });

  it('NO_NODE carries one reason per event, in --json and from the library', async () => {
    const named = await runCall(relay.addr, ['--json', '--node', 'nope', 'Slow.Echo', '1']);
    expect(named.code).toBe(1);
    expect(JSON.parse(named.stdout)).toMatchObject({ error: { code: 'NO_NODE', data: { reason: 'node-not-found' } } });
    const labels = await runCall(relay.addr, ['--json', '--where', 'region=mars', 'Slow.Echo', '1']);
    expect(JSON.parse(labels.stdout)).toMatchObject({ error: { code: 'NO_NODE', data: { reason: 'no-match' } } });
    const client = await connect(relay.addr);
    try {
      const err = await client.call('Slow.Echo', 1, { node: 'nope' }).catch((e: unknown) => e);
      expect(isTunnelError(err, 'NO_NODE') && err.data).toEqual({ reason: 'node-not-found' });
    } finally {
      await client.close();
    }
  });
});

describe('a handler that throws something other than a TunnelError (real CLIs)', () => {
  it('is logged at warn with its stack on the node, at the default level; the caller gets APP_ERROR with the message only', async () => {
    const relay = await startRelay();
    // No --log-level: what a new user runs.
    const node = new Proc(BIN.node, ['--relay', relay.addr, '--name', 'broken-1', '--services', 'test/fixtures/throwing-services.js']);
    await node.waitForMsg('connected to relay', START_TIMEOUT);
    const r = await runCall(relay.addr, ['Broken.Crash']);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe('APP_ERROR: database handle is closed');
    const line = await node.waitForMsg('handler threw');
    expect(line).toMatchObject({ level: 40, method: 'Broken.Crash', err: { message: 'database handle is closed' } });
    expect((line.err as { stack: string }).stack).toMatch(/helperThatFails .*throwing-services\.js/);
    // A TunnelError is the handler's answer, not a failure of the node: no warning for it.
    const refused = await runCall(relay.addr, ['Broken.Refuse']);
    expect(refused.stderr.trim()).toBe('OUT_OF_STOCK: none left');
    expect(node.logs.filter((l) => l.msg === 'handler threw').map((l) => l.method)).toEqual(['Broken.Crash']);
  });
});

describe('a node refused at connect (real CLIs)', () => {
  it('logs the real attempt count in its first reconnect line', async () => {
    const relay = await startRelay();
    await startNode(relay.addr, ['--name', 'taken']);
    const second = new Proc(BIN.node, ['--relay', relay.addr, '--name', 'taken', '--log-level', 'debug']);
    const refused = await second.waitForMsg('relay refused our name; retrying at the longest backoff', START_TIMEOUT);
    const from = second.logs.indexOf(refused);
    const reconnecting = await second.waitForMsg('reconnecting', 10_000, from);
    expect(reconnecting).toMatchObject({ attempt: 1 });
    second.kill();
  });
});

describe('TLS mistakes get a hint (real CLIs and the library)', () => {
  const certs = certDir();
  let tls: RunningRelay;
  let plain: RunningRelay;

  beforeAll(async () => {
    makeCerts(certs.dir, []);
    [tls, plain] = await Promise.all([startRelay(['--tls-cert', certs.file('relay.crt'), '--tls-key', certs.file('relay.key')]), startRelay()]);
  });
  afterAll(() => certs.remove());

  it('tunnel-call: a private CA without --ca, ws:// to a TLS port, wss:// to a plain one', async () => {
    const [noCa, wsToTls, wssToPlain, right] = await Promise.all([
      runCall(`wss://127.0.0.1:${tls.port}`, ['Arith.Multiply', '2', '3']),
      runCall(`ws://127.0.0.1:${tls.port}`, ['Arith.Multiply', '2', '3']),
      runCall(`wss://127.0.0.1:${plain.port}`, ['Arith.Multiply', '2', '3']),
      runCall(`wss://127.0.0.1:${tls.port}`, ['--ca', certs.file('ca.crt'), 'Server.Ping']),
    ]);
    expect(noCa.code).toBe(3);
    expect(noCa.stderr).toContain(CA_HINT);
    expect(wsToTls.code).toBe(3);
    expect(wsToTls.stderr).toContain(USE_WSS);
    expect(wssToPlain.code).toBe(3);
    expect(wssToPlain.stderr).toContain(USE_WS);
    // The hints are for mistakes only: the right flags get no hint, and a hint names one mistake.
    expect(right.stderr).not.toMatch(/--ca FILE|use wss?:\/\//);
    expect(noCa.stderr).not.toContain('use ws');
  });

  it('the library: the same hints in connect() errors', async () => {
    const failure = (url: string) =>
      connect(url, { connectTimeout: 20_000 }).then(
        () => expect.fail(`connected to ${url}`),
        (e: unknown) => e as Error,
      );
    expect((await failure(`wss://127.0.0.1:${tls.port}`)).message).toMatch(new RegExp(`; ${escape(CA_HINT)}$`));
    expect((await failure(`ws://127.0.0.1:${tls.port}`)).message).toMatch(new RegExp(`; ${escape(USE_WSS)}$`));
    expect((await failure(`wss://127.0.0.1:${plain.port}`)).message).toMatch(new RegExp(`; ${escape(USE_WS)}$`));
  });

  it('tunnel-node: the hint is in its log', async () => {
    const noCa = new Proc(BIN.node, ['--relay', `wss://127.0.0.1:${tls.port}`, '--name', 'no-ca']);
    const wsToTls = new Proc(BIN.node, ['--relay', `ws://127.0.0.1:${tls.port}`, '--name', 'ws-to-tls']);
    const wssToPlain = new Proc(BIN.node, ['--relay', `wss://127.0.0.1:${plain.port}`, '--name', 'wss-to-plain']);
    const couldNot = (p: Proc) => p.waitForLog((l) => l.msg === 'could not connect to relay', START_TIMEOUT, 'could not connect to relay');
    expect((await couldNot(noCa)).reason).toContain(CA_HINT);
    expect((await couldNot(wssToPlain)).reason).toContain(USE_WS);
    const speaksTls = await wsToTls.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith(USE_WSS), START_TIMEOUT, 'the wss:// hint');
    expect(speaksTls).toMatchObject({ level: 50, msg: `${USE_WSS} (--relay wss://127.0.0.1:${tls.port}/)` });
    for (const p of [noCa, wsToTls, wssToPlain]) p.kill();
  });
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}
