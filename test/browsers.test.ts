import { request, type IncomingHttpHeaders } from 'node:http';
import { WebSocket } from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrowserPolicy, originKey } from '../src/util/browser-policy.js';
import { Relay } from '../src/relay/relay.js';
import { gatewayCall, http, metric, scrape } from './helpers/http.js';
import { BIN, killAll, Proc, startNode, startRelay, type RunningRelay } from './helpers/processes.js';
import { RawPeer, req } from './helpers/raw.js';
import { decode } from '../src/wire/codec.js';

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** One HTTP request to 127.0.0.1 with headers fetch will not let us set (Host), bounded in time. */
function raw(port: number, path: string, headers: Record<string, string>, method = 'GET', body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const r = request({ host: '127.0.0.1', port, path, method, headers, timeout: 5_000 }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    r.on('timeout', () => r.destroy(new Error(`no answer from ${path} in 5 s`)));
    r.on('error', reject);
    r.end(body);
  });
}

/** A WebSocket upgrade with the given headers: 101, or the refusal's status and X-Tunnel-Reason. */
function upgrade(port: number, headers: Record<string, string>): Promise<{ status: number; reason: string }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers, perMessageDeflate: false, handshakeTimeout: 5_000 });
    ws.on('open', () => {
      ws.terminate();
      resolve({ status: 101, reason: '' });
    });
    ws.on('unexpected-response', (_req, res) => {
      resolve({ status: res.statusCode ?? 0, reason: String(res.headers['x-tunnel-reason']) });
      res.resume();
      ws.terminate();
    });
    ws.on('error', (err) => resolve({ status: -1, reason: err.message }));
  });
}

const hello = (role: string, extra: Record<string, unknown> = {}) => [4, { version: 1, role, ...extra }];
const refusedLines = (p: Proc) => p.logs.filter((l) => l.msg === 'refused request');

describe('origins and hosts on a relay listening on 127.0.0.1', () => {
  let relay: RunningRelay;
  let admin: number;

  beforeAll(async () => {
    relay = await startRelay(['--allow-origin', 'https://app.example', '--allow-host', 'tunnel.example', '--admin-listen', '127.0.0.1:0']);
    admin = (await relay.proc.waitForMsg('admin listening')).port as number;
    await startNode(relay.addr, ['--name', 'office-1']);
  });
  afterAll(killAll);

  it('serves clients that send no Origin, as curl does', async () => {
    const r = await gatewayCall(relay.port, 'Arith.Multiply', '[2,3]', '', { 'content-type': 'application/x-www-form-urlencoded' });
    expect(r.status).toBe(200);
    expect(r.json).toEqual({ result: 6 });
    expect((await raw(relay.port, '/call/Arith.Multiply', { host: `localhost:${relay.port}` }, 'POST', '[2,3]')).status).toBe(200);
    expect((await raw(relay.port, '/call/Arith.Multiply', { host: `[::1]:${relay.port}` }, 'POST', '[2,3]')).status).toBe(200);
  });

  it('refuses a gateway POST from a foreign origin with 403, and the node never sees it (CSRF)', async () => {
    const before = refusedLines(relay.proc).length;
    const r = await raw(relay.port, '/call/KV.Set', { origin: 'https://evil.example', 'content-type': 'text/plain' }, 'POST', '["csrf","yes"]');
    expect(r.status).toBe(403);
    expect(JSON.parse(r.body)).toMatchObject({
      error: { code: 'FORBIDDEN', message: expect.stringContaining('origin "https://evil.example" is not allowed') },
    });
    expect(r.headers['x-tunnel-reason']).toContain('origin "https://evil.example" is not allowed');
    expect(r.headers['access-control-allow-origin']).toBeUndefined();
    const get = await gatewayCall(relay.port, 'KV.Get', ['csrf']);
    expect(get.json).toEqual({ result: null });
    const line = await relay.proc.waitForLog((l) => l.msg === 'refused request' && String(l.reason).includes('evil.example'), 5_000, 'audit line', before);
    expect(line).toMatchObject({ level: 40, door: 'http', peer: expect.stringMatching(/^127\.0\.0\.1:\d+$/) });
  });

  it('refuses a WebSocket upgrade from a foreign origin, as caller or as node', async () => {
    const caller = await upgrade(relay.port, { origin: 'https://evil.example' });
    expect(caller).toEqual({ status: 403, reason: expect.stringContaining('origin "https://evil.example" is not allowed') });
    const node = new RawPeer(`ws://127.0.0.1:${relay.port}/`, { origin: 'null' });
    await node.until(() => node.closed !== undefined || node.ws.readyState === WebSocket.CLOSED, 5_000, 'refusal');
    expect(node.ws.readyState).toBe(WebSocket.CLOSED);
    expect(relay.proc.logs.filter((l) => l.msg === 'node connected')).toHaveLength(1);
  });

  it('lets an allowed origin call over the gateway and a WebSocket, with CORS', async () => {
    const r = await http(`http://127.0.0.1:${relay.port}/call/Arith.Multiply`, { method: 'POST', headers: { origin: 'https://app.example' }, body: '[6,7]' });
    expect(r.json).toEqual({ result: 42 });
    const again = await raw(relay.port, '/call/Arith.Multiply', { origin: 'https://app.example' }, 'POST', '[2,3]');
    expect(again.headers['access-control-allow-origin']).toBe('https://app.example');
    expect(again.headers.vary).toContain('Origin');
    const p = new RawPeer(`ws://127.0.0.1:${relay.port}/`, { origin: 'https://app.example' });
    await p.open();
    p.send(hello('caller'));
    p.send(req(1, 'Arith.Multiply', [3, 4]));
    const answer = await p.response(1);
    expect(answer[2]).toBeNull();
    expect(decode(answer[3] as Uint8Array)).toBe(12);
    p.close();
  });

  it('answers the CORS preflight for allowed origins only', async () => {
    const ok = await raw(
      relay.port,
      '/call/KV.Set',
      {
        origin: 'https://app.example',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization, content-type',
      },
      'OPTIONS',
    );
    expect(ok.status).toBe(204);
    expect(ok.headers).toMatchObject({
      'access-control-allow-origin': 'https://app.example',
      'access-control-allow-methods': 'POST',
      'access-control-allow-headers': 'authorization, content-type',
      vary: 'Origin',
    });
    const foreign = await raw(relay.port, '/call/KV.Set', { origin: 'https://evil.example', 'access-control-request-method': 'POST' }, 'OPTIONS');
    expect(foreign.status).toBe(403);
    expect(foreign.headers['access-control-allow-origin']).toBeUndefined();
  });

  it('accepts only loopback Host names and the --allow-host ones (DNS rebinding)', async () => {
    const evil = await raw(relay.port, '/call/Arith.Multiply', { host: `evil.example:${relay.port}` }, 'POST', '[2,3]');
    expect(evil.status).toBe(403);
    expect(JSON.parse(evil.body)).toMatchObject({ error: { code: 'FORBIDDEN' } });
    expect(evil.headers['x-tunnel-reason']).toContain('host "evil.example:');
    expect((await raw(relay.port, '/healthz', { host: 'evil.example' })).status).toBe(403);
    expect(await upgrade(relay.port, { host: 'evil.example' })).toMatchObject({ status: 403, reason: expect.stringContaining('host "evil.example"') });
    const named = await raw(relay.port, '/call/Arith.Multiply', { host: `Tunnel.Example:${relay.port}` }, 'POST', '[2,3]');
    expect(named.status).toBe(200);
    expect((await upgrade(relay.port, { host: 'tunnel.example' })).status).toBe(101);
    expect((await raw(relay.port, '/healthz', { host: '127.0.0.2' })).status).toBe(200);
  });

  it('applies the same rules on the admin listener', async () => {
    const before = refusedLines(relay.proc).length;
    expect((await http(`http://127.0.0.1:${admin}/metrics`)).status).toBe(200);
    expect((await raw(admin, '/nodes', { host: `evil.example:${admin}` })).status).toBe(403);
    const foreign = await raw(admin, '/metrics', { origin: 'https://evil.example' });
    expect(foreign.status).toBe(403);
    expect(foreign.headers['x-tunnel-reason']).toContain('origin "https://evil.example"');
    // Both refusals are logged, at the admin door: waited for, so that none lands in the next test's count.
    await relay.proc.waitForLog(
      () =>
        refusedLines(relay.proc)
          .slice(before)
          .filter((l) => l.door === 'admin').length >= 2,
      10_000,
      'two admin refusals',
    );
    expect(
      refusedLines(relay.proc)
        .slice(before)
        .map((l) => l.door),
    ).toEqual(['admin', 'admin']);
  });

  it('counts each refusal in metrics and logs it once, without secrets', async () => {
    const before = refusedLines(relay.proc).length;
    const origin = metric(await scrape(admin), 'tunnel_relay_rejected_connections_total', { reason: 'forbidden_origin' });
    const host = metric(await scrape(admin), 'tunnel_relay_rejected_connections_total', { reason: 'forbidden_host' });
    await raw(relay.port, '/call/Arith.Multiply', { origin: 'https://evil.example', authorization: 'Bearer s3cret-token' }, 'POST', '[1,1]');
    await raw(relay.port, '/call/Arith.Multiply', { host: 'evil.example' }, 'POST', '[1,1]');
    await relay.proc.waitForLog(() => refusedLines(relay.proc).length >= before + 2, 5_000, 'two audit lines');
    const after = await scrape(admin);
    expect(metric(after, 'tunnel_relay_rejected_connections_total', { reason: 'forbidden_origin' })).toBe(origin + 1);
    expect(metric(after, 'tunnel_relay_rejected_connections_total', { reason: 'forbidden_host' })).toBe(host + 1);
    expect(refusedLines(relay.proc)).toHaveLength(before + 2);
    expect(relay.proc.stderr).not.toContain('s3cret-token');
  });
});

describe('origins and hosts, other settings', () => {
  const relays: Relay[] = [];
  afterAll(async () => {
    await Promise.all(relays.map((r) => r.close()));
    await killAll();
  });

  async function library(options: ConstructorParameters<typeof Relay>[0]): Promise<number> {
    const relay = new Relay(options);
    relays.push(relay);
    return (await relay.listen()).port;
  }

  it('does not check Host on a wildcard address unless --allow-host is given', async () => {
    const open = await library({ listen: ':0' });
    expect((await raw(open, '/healthz', { host: 'evil.example' })).status).toBe(200);
    const named = await library({ listen: ':0', allowHost: ['tunnel.example'] });
    expect((await raw(named, '/healthz', { host: 'evil.example' })).status).toBe(403);
    expect((await raw(named, '/healthz', { host: 'tunnel.example:443' })).status).toBe(200);
    expect((await raw(named, '/healthz', { host: `localhost:${named}` })).status).toBe(200);
  });

  it('allows every origin with *, still echoing it', async () => {
    const port = await library({ listen: '127.0.0.1:0', allowOrigin: ['*'] });
    const r = await raw(port, '/call/Nope.Thing', { origin: 'null' }, 'POST', '[]');
    expect(r.status).toBe(404);
    expect(r.headers['access-control-allow-origin']).toBe('null');
    expect((await upgrade(port, { origin: 'https://anything.example' })).status).toBe(101);
  });

  it('compares origins as scheme://host:port, default ports left out', () => {
    const policy = new BrowserPolicy({ allowOrigin: ['https://App.Example:443/', 'http://localhost:8080'] });
    expect(policy.allowsOrigin('https://app.example')).toBe(true);
    expect(policy.allowsOrigin('http://localhost:8080')).toBe(true);
    expect(policy.allowsOrigin('http://app.example')).toBe(false);
    expect(policy.allowsOrigin('https://app.example:8443')).toBe(false);
    expect(policy.allowsOrigin('http://localhost')).toBe(false);
    expect(policy.allowsOrigin('null')).toBe(false);
    expect(policy.allowsOrigin('garbage')).toBe(false);
    expect(originKey('*', 'x')).toBe('*');
  });

  it('refuses malformed settings, naming the option or flag', async () => {
    expect(() => new Relay({ allowOrigin: ['https://app.example/path'] })).toThrow(
      /^Relay option allowOrigin "https:\/\/app.example\/path": an origin has no path/,
    );
    expect(() => new Relay({ allowOrigin: ['app.example'] })).toThrow(/^Relay option allowOrigin "app.example": not an origin/);
    expect(() => new Relay({ allowHost: ['tunnel.example:80'] })).toThrow(/^Relay option allowHost "tunnel.example:80": give the host name alone/);
    for (const [args, message] of [
      [['--allow-origin', 'ftp//x'], '--allow-origin "ftp//x": not an origin'],
      [['--allow-host', '127.1'], '--allow-host "127.1": host "127.1" is neither'],
    ] as const) {
      const p = new Proc(BIN.relay, ['--listen', '127.0.0.1:0', ...args]);
      const timer = setTimeout(() => p.kill('SIGKILL'), 15_000);
      const { code } = await p.exited;
      clearTimeout(timer);
      expect(code).toBe(2);
      expect(p.stderr).toContain(message);
      expect(p.logs).toEqual([]);
    }
  });
});
