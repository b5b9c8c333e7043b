import { connect as netConnect } from 'node:net';
import { once } from 'node:events';
import { WebSocket } from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killAll, runCall, startNode, startRelay, type RunningRelay } from './helpers/processes.js';
import { RawPeer, req } from './helpers/raw.js';

const SERVICES = ['--services', 'test/fixtures/security-services.js'];
const hello = (role = 'caller', extra: Record<string, unknown> = {}) => [4, { version: 1, role, ...extra }];

async function caller(addr: string): Promise<RawPeer> {
  const p = new RawPeer(`ws://${addr}/`);
  await p.open();
  p.send(hello());
  await p.until(() => p.received.some((m) => Array.isArray(m) && m[0] === 5), 5_000, 'welcome');
  return p;
}

const errorOf = (r: unknown[]) => r[2] as { code: string; message: string } | null;

describe('message size, in-flight calls and slow peers', () => {
  let relay: RunningRelay;
  beforeAll(async () => {
    relay = await startRelay(['--max-message', '64KiB', '--max-caller-in-flight', '8', '--max-node-in-flight', '12', '--hello-timeout', '1s']);
    await startNode(relay.addr, [...SERVICES, '--name', 'office-1']);
  });
  afterAll(killAll);

  it('tells callers its limit: the client refuses oversized arguments before sending', async () => {
    const r = await runCall(relay.addr, ['Sec.Echo', 'x'.repeat(80 * 1024)]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/TOO_LARGE: arguments of Sec.Echo are \d+ bytes; the relay accepts at most 65536/);
  });

  it('answers an oversized request TOO_LARGE by id, and closes 1009 past the envelope allowance', async () => {
    const p = await caller(relay.addr);
    p.send(req(1, 'Sec.Echo', ['y'.repeat(80 * 1024)]));
    const r = await p.response(1);
    expect(errorOf(r)).toMatchObject({ code: 'TOO_LARGE' });
    p.send(req(2, 'Sec.Echo', ['z'.repeat(200 * 1024)]));
    expect((await p.waitClosed()).code).toBe(1009);
  });

  it('answers a result too large for the relay TOO_LARGE and keeps the node', async () => {
    const r = await runCall(relay.addr, ['Sec.Blob', String(100 * 1024)]);
    expect(r.stderr).toMatch(/TOO_LARGE: the result of Sec.Blob is \d+ bytes; the relay passes at most 65536/);
    const ok = await runCall(relay.addr, ['Sec.Echo', '3']);
    expect(ok.stdout).toBe('3\n');
  });

  it('answers OVERLOADED at once past the in-flight limits of a caller and of a node', async () => {
    const a = await caller(relay.addr);
    for (let id = 1; id <= 10; id++) a.send(req(id, 'Sec.Hang', [], { timeout: 20_000 }));
    for (const id of [9, 10]) {
      const r = await a.response(id, 5_000);
      expect(errorOf(r)).toMatchObject({ code: 'OVERLOADED', message: expect.stringContaining('this connection already has 8 calls in flight') });
    }
    const b = await caller(relay.addr);
    for (let id = 1; id <= 6; id++) b.send(req(id, 'Sec.Hang', [], { timeout: 20_000 }));
    for (const id of [5, 6]) {
      const r = await b.response(id, 5_000);
      expect(errorOf(r)).toMatchObject({ code: 'OVERLOADED', message: expect.stringContaining('node office-1 already has 12 calls in flight') });
    }
    expect(a.received.filter((m) => Array.isArray(m) && m[0] === 1)).toHaveLength(2);
    a.close();
    b.close();
    // Once the callers are gone their calls are gone too: the node takes calls again.
    const ok = await runCall(relay.addr, ['Sec.Echo', '4']);
    expect(ok.stdout).toBe('4\n');
  });

  it('closes a socket that never starts its handshake, and a WebSocket that never says hello', async () => {
    const started = Date.now();
    const raw = netConnect(relay.port, '127.0.0.1');
    await once(raw, 'close', { signal: AbortSignal.timeout(5_000) });
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);

    const slowloris = netConnect(relay.port, '127.0.0.1', () => slowloris.write('GET / HTTP/1.1\r\nHost: x\r\n'));
    slowloris.on('error', () => undefined);
    await once(slowloris, 'close', { signal: AbortSignal.timeout(5_000) });

    const silent = new RawPeer(`ws://${relay.addr}/`);
    await silent.open();
    const closed = await silent.waitClosed(5_000);
    expect(closed.code).toBe(4002);
    expect(closed.reason).toMatch(/no hello within 1000 ms/);
  });
});

describe('failed Logins', () => {
  let relay: RunningRelay;
  beforeAll(async () => {
    relay = await startRelay(['--max-login-failures-per-address', '8']);
    await startNode(relay.addr, [...SERVICES, '--name', 'office-1']);
  });
  afterAll(killAll);

  it('closes a connection after 5 failed Logins, then refuses Logins from the address', async () => {
    const a = await caller(relay.addr);
    for (let id = 1; id <= 5; id++) a.send(req(id, 'Sec.Login', ['alice', `guess-${id}`]));
    for (let id = 1; id <= 5; id++) expect(errorOf(await a.response(id))).toMatchObject({ code: 'LOGIN_FAILED' });
    const closed = await a.waitClosed();
    expect(closed).toEqual({ code: 4005, reason: 'too many failed Login attempts on this connection (5); reconnect to try again' });

    const b = await caller(relay.addr);
    for (let id = 1; id <= 3; id++) b.send(req(id, 'Sec.Login', ['alice', `guess-${id}`]));
    expect((await b.waitClosed()).reason).toBe('too many failed Login attempts from 127.0.0.1');

    // Even the right password is refused now, without reaching the node; other calls still work.
    const c = await caller(relay.addr);
    c.send(req(1, 'Sec.Login', ['alice', 'correct horse battery staple']));
    expect(errorOf(await c.response(1))).toMatchObject({ code: 'LOGIN_FAILED', message: expect.stringMatching(/from 127\.0\.0\.1; try again in \d+ s/) });
    c.send(req(2, 'Sec.Echo', [5]));
    expect(errorOf(await c.response(2))).toBeNull();
    c.close();
    expect(relay.proc.stderr).not.toContain('guess-');
  });
});

describe('same-name takeover with a half-open old connection', () => {
  afterAll(killAll);

  it('replaces the old connection; its late close does not remove the new registration', async () => {
    const relay = await startRelay();
    const old = new RawPeer(`ws://${relay.addr}/`);
    await old.open();
    old.send(hello('node', { name: 'twin', services: { Sec: ['Echo', 'Who'] } }));
    await old.until(() => old.received.some((m) => Array.isArray(m) && m[0] === 5), 5_000, 'welcome');
    // From now on the old node reads nothing: no pong, no close handshake, like a peer behind a dead NAT.
    old.ws.pause();

    await startNode(relay.addr, [...SERVICES, '--name', 'twin']);
    await relay.proc.waitForMsg('node name reconnected; replacing the previous connection');
    await relay.proc.waitForMsg('replaced node connection closed', 10_000);
    expect(relay.proc.logs.some((l) => l.msg === 'node disconnected')).toBe(false);
    const r = await runCall(relay.addr, ['--node', 'twin', 'Sec.Echo', '6']);
    expect(r.stdout).toBe('6\n');
    old.close();
  });
});

describe('connections from one address', () => {
  afterAll(killAll);

  it('accepts 256 connections from one address and refuses the rest with 429, and recovers', async () => {
    const relay = await startRelay();
    const url = `ws://${relay.addr}/`;
    const outcomes = await Promise.all(
      Array.from(
        { length: 300 },
        () =>
          new Promise<{ ws: WebSocket; status: number; reason: string }>((resolve) => {
            const ws = new WebSocket(url, { perMessageDeflate: false });
            ws.on('open', () => resolve({ ws, status: 101, reason: '' }));
            ws.on('unexpected-response', (_req, res) => {
              resolve({ ws, status: res.statusCode ?? 0, reason: String(res.headers['x-tunnel-reason']) });
              res.resume();
              ws.terminate();
            });
            ws.on('error', () => resolve({ ws, status: -1, reason: 'error' }));
          }),
      ),
    );
    const open = outcomes.filter((o) => o.status === 101);
    const refused = outcomes.filter((o) => o.status === 429);
    expect(open).toHaveLength(256);
    expect(refused).toHaveLength(44);
    expect(refused[0]!.reason).toBe('too many connections from 127.0.0.1 (limit 256)');
    for (const o of open.slice(0, 10)) o.ws.terminate();
    for (const o of refused) o.ws.terminate();
    // Once the relay has seen some of them close, the address may connect again (bounded retries).
    let p: RawPeer | undefined;
    for (let attempt = 0; attempt < 50 && !p; attempt++) {
      const candidate = new RawPeer(url);
      await candidate.until(() => candidate.ws.readyState === WebSocket.OPEN || candidate.closed !== undefined, 5_000, 'open or refused');
      if (candidate.ws.readyState === WebSocket.OPEN) p = candidate;
    }
    expect(p).toBeDefined();
    p = p!;
    p.send(hello());
    await p.until(() => p!.received.some((m) => Array.isArray(m) && m[0] === 5), 5_000, 'welcome');
    for (const o of open) o.ws.terminate();
    p.close();
  });
});
