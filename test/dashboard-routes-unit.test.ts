import { once } from 'node:events';
import { createServer, request, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ErrorCode, noNode, NoNodeReason, TunnelError } from '../src/errors.js';
import { crossOrigin, sameOrigin } from '../src/relay/dashboard/actions.js';
import type { DashboardHost } from '../src/relay/dashboard/host.js';
import { Dashboard, isDashboardUrl, type DashboardDoor, type DashboardOptions } from '../src/relay/dashboard/routes.js';
import { RelayEvents, type AuditRecord } from '../src/relay/events.js';
import { AuthFailures, type AuthDoor } from '../src/relay/auth-failures.js';
import { AddressTable, LIMIT_DEFAULTS } from '../src/relay/limits.js';
import { silentLogger } from '../src/util/logger.js';

/**
 * The dashboard's routes (routes.ts) and actions (actions.ts) in-process: a Dashboard over a fake
 * relay, behind a node:http server on 127.0.0.1, port 0, asked with node:http so that every header
 * (Origin, Sec-Fetch-Site, Authorization) is exactly what the test sends.
 */

const VIEWER = 'viewer-token';
const ADMIN = 'admin-token';

/** A relay with no nodes: it records the actions asked of it and the wrong tokens counted. */
function fakeHost() {
  const events = new RelayEvents();
  const audits: AuditRecord[] = [];
  events.on('audit', (r) => audits.push(r));
  const actions: Array<[string, string, string]> = [];
  const failures: Array<[string, string, string]> = [];
  const refused: string[] = [];
  // The relay's own guessing limits, over an address table of their own: 3 wrong tokens back off.
  const addresses = new AddressTable({ ...LIMIT_DEFAULTS, maxAuthFailuresPerAddress: 3, authBackoff: 7_000 });
  const real = new AuthFailures(addresses, { log: silentLogger, metrics: { authFailed: () => {}, authRefused: (door) => void refused.push(door) }, events });
  // Recorded on the way, so that a test sees each wrong token as the door reported it.
  const authFailures = {
    refusal: (ip: string, door: AuthDoor) => real.refusal(ip, door),
    failed: (ip: string, door: AuthDoor, reason: string, address?: string) => {
      failures.push([ip, door, reason]);
      return real.failed(ip, door, reason, address);
    },
  };
  const host: DashboardHost = {
    log: silentLogger,
    events,
    relayName: 'test-relay',
    draining: false,
    inFlight: 0,
    directory: { all: () => [], size: 0 },
    registry: { size: 0 },
    cluster: undefined,
    limits: { slowConsumerTimeout: 60_000 },
    metrics: { slowConsumer: () => {} },
    authFailures,
    callerConnections: () => [],
    drainMarks: { has: () => false, list: () => [], size: 0 },
    drainNode: (name, reason) => {
      if (name === 'ghost') throw noNode(NoNodeReason.NODE_NOT_FOUND, `no node ${name}`);
      if (name === 'busy') throw new TunnelError(ErrorCode.BAD_REQUEST, `node ${name} is already drained`);
      actions.push(['drain-node', name, reason]);
    },
    undrainNode: (name, reason) => void actions.push(['undrain-node', name, reason]),
    disconnectNode: (name, reason) => void actions.push(['disconnect-node', name, reason]),
    disconnectCaller: (session, reason) => {
      if (session === 'gone') throw new TunnelError(ErrorCode.CONNECTION_CLOSED, `no caller session ${session}`);
      actions.push(['disconnect-caller', session, reason]);
    },
  };
  return { host, audits, actions, failures, refused };
}

const servers: Server[] = [];
const dashboards: Dashboard[] = [];
afterEach(async () => {
  for (const d of dashboards.splice(0)) d.close();
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

/** A dashboard behind a server on 127.0.0.1, every request seen at `door`. */
async function serve(door: DashboardDoor, options: Partial<DashboardOptions> = { dashboardToken: VIEWER, adminToken: ADMIN }) {
  const fake = fakeHost();
  const dashboard = new Dashboard(fake.host, { version: 'test', ...options });
  dashboards.push(dashboard);
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    void dashboard.handle(req, res, url, door);
  });
  servers.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    ...fake,
    dashboard,
    port,
    ask: (method: string, path: string, headers: Record<string, string> = {}, body?: string) => ask(port, method, path, headers, body),
  };
}

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

function ask(port: number, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, method, path, headers: { ...headers, ...(body === undefined ? {} : { 'content-length': String(Buffer.byteLength(body)) }) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

describe('dashboard routes: the page and its files', () => {
  it('on the admin listener the page needs no token, with headers that keep it out of frames and caches', async () => {
    const d = await serve('admin');
    const page = await d.ask('GET', '/dashboard');
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(page.headers['x-frame-options']).toBe('DENY');
    expect(page.headers['content-security-policy']).toContain("frame-ancestors 'none'");
    expect(page.headers['cache-control']).toBe('no-store');
    expect(page.body).toMatch(/<html/i);
    const js = await d.ask('GET', '/dashboard/app.js');
    expect(js.status).toBe(200);
    expect(js.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect((await d.ask('GET', '/dashboard/style.css')).headers['content-type']).toBe('text/css; charset=utf-8');
  });

  it('unknown files are 404; other methods than GET and HEAD 405; HEAD has no body', async () => {
    const d = await serve('admin');
    const missing = await d.ask('GET', '/dashboard/../../package.json');
    expect(missing.status).toBe(404);
    const secret = await d.ask('GET', '/dashboard/host.ts');
    expect(secret).toMatchObject({ status: 404, body: 'no such dashboard file: /dashboard/host.ts\n' });
    const post = await d.ask('POST', '/dashboard');
    expect(post.status).toBe(405);
    expect(post.headers.allow).toBe('GET, HEAD');
    const head = await d.ask('HEAD', '/dashboard');
    expect(head.status).toBe(200);
    expect(Number(head.headers['content-length'])).toBeGreaterThan(0);
    expect(head.body).toBe('');
  });

  it('on the public port the page answers 401 without the token, 200 with it (query, header or the admin token)', async () => {
    const d = await serve('public');
    expect((await d.ask('GET', '/dashboard')).status).toBe(401);
    expect((await d.ask('GET', `/dashboard?token=${VIEWER}`)).status).toBe(200);
    expect((await d.ask('GET', '/dashboard', bearer(VIEWER))).status).toBe(200);
    expect((await d.ask('GET', '/dashboard', bearer(ADMIN))).status).toBe(200);
    expect(d.failures).toEqual([]);
  });

  it('a wrong token is counted against the address, audited, and the connection closed', async () => {
    const d = await serve('public');
    const wrong = await d.ask('GET', '/dashboard?token=guess');
    expect(wrong.status).toBe(401);
    expect(wrong.headers.connection).toBe('close');
    expect(d.failures).toEqual([['127.0.0.1', 'dashboard', 'dashboard token refused']]);
    expect(d.audits).toEqual([expect.objectContaining({ kind: 'refused-request', door: 'dashboard', reason: 'dashboard token refused' })]);
  });

  it('an address that guessed too often is refused unchecked, with Retry-After, even with the right token', async () => {
    const d = await serve('public');
    for (let i = 0; i < 3; i++) expect((await d.ask('GET', '/dashboard/events', bearer(`guess-${i}`))).status).toBe(401);
    expect(d.refused).toEqual([]);
    expect(d.audits.map((a) => a.kind)).toContain('auth-backoff');
    const r = await d.ask('GET', '/dashboard/events', bearer(VIEWER));
    expect(r.status).toBe(401);
    expect(r.headers['retry-after']).toBe('7');
    expect(JSON.parse(r.body)).toEqual({ error: { code: 'UNAUTHORIZED', message: 'too many failed authentications from 127.0.0.1; retry in 7 s' } });
    expect(d.refused).toEqual(['dashboard']);
    // Every route a token guards is closed to that address now, the actions included.
    expect((await d.ask('POST', '/dashboard/actions/check', bearer(ADMIN))).status).toBe(401);
    expect(d.refused).toEqual(['dashboard', 'dashboard']);
    // Without a token presented there is nothing to refuse: the ordinary answer.
    const none = await d.ask('GET', '/dashboard/events');
    expect(none.headers['retry-after']).toBeUndefined();
  });
});

describe('dashboard routes: the feed and its acknowledgements', () => {
  it('the feed needs the token on the public port and opens with it', async () => {
    const d = await serve('public');
    const r = await d.ask('GET', '/dashboard/events');
    expect(r.status).toBe(401);
    expect(r.headers['www-authenticate']).toBe('Bearer realm="tunnel-relay dashboard"');
    expect(JSON.parse(r.body).error.code).toBe('UNAUTHORIZED');
    const opened = await new Promise<{ status: number; type: string | undefined }>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: d.port, path: '/dashboard/events', headers: bearer(VIEWER) }, (res) => {
        resolve({ status: res.statusCode!, type: res.headers['content-type'] });
        req.destroy();
      });
      req.on('error', (e) => (req.destroyed ? undefined : reject(e)));
      req.end();
    });
    expect(opened.status).toBe(200);
    expect(opened.type).toMatch(/^text\/event-stream/);
  });

  it('acknowledgements are POST only, need the token, and a stream that is not open is 404', async () => {
    const d = await serve('public');
    const get = await d.ask('GET', '/dashboard/events/ack?stream=x&seq=1', bearer(VIEWER));
    expect(get.status).toBe(405);
    expect(get.headers.allow).toBe('POST');
    expect((await d.ask('POST', '/dashboard/events/ack?stream=x&seq=1')).status).toBe(401);
    const gone = await d.ask('POST', '/dashboard/events/ack?stream=x&seq=1', bearer(VIEWER));
    expect(gone).toMatchObject({ status: 404, body: 'no such dashboard stream: it was closed; open /dashboard/events again\n' });
  });
});

describe('dashboard actions', () => {
  const json = (r: Answer) => JSON.parse(r.body) as { error?: { code: string; message: string }; ok?: boolean; action?: string; target?: string };

  it('runs an action for the admin token: the relay is asked, the action audited, the answer names it', async () => {
    const d = await serve('public');
    const r = await d.ask('POST', '/dashboard/actions/drain-node', bearer(ADMIN), JSON.stringify({ node: 'office-1' }));
    expect(r.status).toBe(200);
    expect(json(r)).toEqual({ ok: true, action: 'drain-node', target: 'office-1' });
    expect(d.actions).toEqual([['drain-node', 'office-1', 'drain-node by an operator from the dashboard']]);
    expect(d.audits).toEqual([expect.objectContaining({ kind: 'action', action: 'drain-node', target: 'office-1', by: 'admin', node: 'office-1' })]);
    const c = await d.ask('POST', '/dashboard/actions/disconnect-caller', bearer(ADMIN), JSON.stringify({ session: 's-1' }));
    expect(c.status).toBe(200);
    expect(d.audits[1]).toMatchObject({ kind: 'action', action: 'disconnect-caller', session: 's-1' });
  });

  it('check answers 204 for the admin token and does nothing', async () => {
    const d = await serve('public');
    const r = await d.ask('POST', '/dashboard/actions/check', bearer(ADMIN));
    expect(r.status).toBe(204);
    expect(d.actions).toEqual([]);
    expect(d.audits).toEqual([]);
  });

  it('refuses without the admin token (401, counted), the viewer token included', async () => {
    const d = await serve('public');
    const none = await d.ask('POST', '/dashboard/actions/drain-node', {}, '{"node":"office-1"}');
    expect(none.status).toBe(401);
    expect(none.headers['www-authenticate']).toBe('Bearer realm="tunnel-relay dashboard actions"');
    expect(json(none).error?.code).toBe('UNAUTHORIZED');
    expect(d.failures).toEqual([]);
    const viewer = await d.ask('POST', '/dashboard/actions/drain-node', bearer(VIEWER), '{"node":"office-1"}');
    expect(viewer.status).toBe(401);
    expect(d.failures).toEqual([['127.0.0.1', 'dashboard', 'admin token refused']]);
    expect(d.actions).toEqual([]);
  });

  it('actions are disabled (403) on a relay without an admin token', async () => {
    const d = await serve('admin', { dashboardToken: VIEWER });
    const r = await d.ask('POST', '/dashboard/actions/drain-node', bearer(VIEWER), '{"node":"office-1"}');
    expect(r.status).toBe(403);
    expect(json(r).error).toEqual({ code: 'FORBIDDEN', message: 'actions are disabled on this relay: start it with --admin-token (or TUNNEL_ADMIN_TOKEN)' });
  });

  it('refuses other methods (405) and requests from another origin or site (403)', async () => {
    const d = await serve('public');
    const get = await d.ask('GET', '/dashboard/actions/drain-node', bearer(ADMIN));
    expect(get.status).toBe(405);
    expect(get.headers.allow).toBe('POST');
    const foreign = await d.ask('POST', '/dashboard/actions/drain-node', { ...bearer(ADMIN), origin: 'http://evil.example' }, '{"node":"office-1"}');
    expect(foreign.status).toBe(403);
    expect(json(foreign).error?.message).toBe('origin "http://evil.example" may not act on this relay: actions come from the dashboard\'s own page');
    const site = await d.ask('POST', '/dashboard/actions/drain-node', { ...bearer(ADMIN), 'sec-fetch-site': 'cross-site' }, '{"node":"office-1"}');
    expect(site.status).toBe(403);
    const own = await d.ask(
      'POST',
      '/dashboard/actions/drain-node',
      { ...bearer(ADMIN), origin: `http://127.0.0.1:${d.port}`, 'sec-fetch-site': 'same-origin' },
      '{"node":"n"}',
    );
    expect(own.status).toBe(200);
    expect(d.actions.map((a) => a[1])).toEqual(['n']);
  });

  it('an unknown action is 404 listing the actions; a bad or too large body is 400', async () => {
    const d = await serve('public');
    const unknown = await d.ask('POST', '/dashboard/actions/explode', bearer(ADMIN), '{}');
    expect(unknown.status).toBe(404);
    expect(json(unknown).error?.message).toBe('no action "explode"; actions: drain-node, undrain-node, disconnect-node, disconnect-caller');
    const notJson = await d.ask('POST', '/dashboard/actions/drain-node', bearer(ADMIN), 'node=office-1');
    expect(notJson.status).toBe(400);
    expect(json(notJson).error?.message).toBe('the body must be JSON such as {"node": "..."}');
    const wrongField = await d.ask('POST', '/dashboard/actions/disconnect-caller', bearer(ADMIN), '{"node":"office-1"}');
    expect(json(wrongField).error?.message).toBe('the body must name the session: {"session": "..."}');
    const big = await d.ask('POST', '/dashboard/actions/drain-node', bearer(ADMIN), JSON.stringify({ node: 'x'.repeat(5000) }));
    expect(big.status).toBe(400);
    expect(json(big).error?.code).toBe('TOO_LARGE');
    expect(d.actions).toEqual([]);
  });

  it("the relay's refusal becomes 404 (no such node or session) or 409 (anything else)", async () => {
    const d = await serve('public');
    const ghost = await d.ask('POST', '/dashboard/actions/drain-node', bearer(ADMIN), '{"node":"ghost"}');
    expect(ghost.status).toBe(404);
    expect(json(ghost).error).toMatchObject({ code: 'NO_NODE', message: 'no node ghost' });
    const gone = await d.ask('POST', '/dashboard/actions/disconnect-caller', bearer(ADMIN), '{"session":"gone"}');
    expect(gone.status).toBe(404);
    const busy = await d.ask('POST', '/dashboard/actions/drain-node', bearer(ADMIN), '{"node":"busy"}');
    expect(busy.status).toBe(409);
    expect(d.audits).toEqual([]);
  });
});

describe('dashboard helpers', () => {
  it('tells dashboard URLs from others', () => {
    for (const u of ['/dashboard', '/dashboard/', '/dashboard?token=x', '/dashboard/app.js']) expect(isDashboardUrl(u), u).toBe(true);
    for (const u of [undefined, '/', '/dashboards', '/dashboard.html', '/x/dashboard']) expect(isDashboardUrl(u), String(u)).toBe(false);
  });

  it('checks the tokens it is given', () => {
    const { host } = fakeHost();
    expect(() => new Dashboard(host, { version: 'v', adminToken: 'has space' })).toThrow('Relay option adminToken must be a non-empty string without spaces');
    expect(() => new Dashboard(host, { version: 'v', dashboardToken: '' })).toThrow('Relay option dashboardToken must be a non-empty string without spaces');
  });

  it('same origin: the Origin names the host the request was sent to', () => {
    const req = (headers: Record<string, string>) => ({ headers }) as never;
    expect(sameOrigin(req({ origin: 'http://relay.example:9090', host: 'relay.example:9090' }))).toBe(true);
    expect(sameOrigin(req({ origin: 'https://relay.example', host: 'relay.example' }))).toBe(true);
    expect(sameOrigin(req({ origin: 'http://relay.example:9091', host: 'relay.example:9090' }))).toBe(false);
    expect(sameOrigin(req({ origin: 'file://relay.example', host: 'relay.example' }))).toBe(false);
    expect(sameOrigin(req({ origin: 'null', host: 'relay.example' }))).toBe(false);
    expect(sameOrigin(req({ host: 'relay.example' }))).toBe(false);
    expect(crossOrigin(req({}))).toBeUndefined();
    expect(crossOrigin(req({ 'sec-fetch-site': 'none' }))).toBeUndefined();
    expect(crossOrigin(req({ 'sec-fetch-site': 'same-site' }))).toBe(
      "a same-site request may not act on this relay: actions come from the dashboard's own page",
    );
  });
});
