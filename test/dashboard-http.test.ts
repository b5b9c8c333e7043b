import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Client } from '../src/index.js';
import { http } from './helpers/http.js';
import { killAll, startNode, startRelay, type Proc, type RunningRelay } from './helpers/processes.js';
import { openSse, type SseEvent, type SseStream } from './helpers/sse.js';

const VIEW = 'view-token-0123456789';
const ADMIN = 'admin-token-0123456789';

interface Delta {
  events?: Array<{ kind: string; action?: string; target?: string; by?: string; address?: string; reason?: string; door?: string }>;
  nodes?: { upsert: Array<{ name: string; state: string; reconnects: number }>; remove: string[] };
  callers?: { upsert: Array<{ session: string }>; remove: string[] };
}
interface Snapshot {
  nodes: Array<{ name: string; state: string; local: boolean; services: Record<string, string[]> }>;
  callers: Array<{ session: string; transport: string; identity: string | null }>;
  relay: { actions: boolean; nodes: { local: number } };
  events: Array<{ kind: string; node?: string }>;
}

const hasEvent = (pred: (e: NonNullable<Delta['events']>[number]) => boolean) => (e: SseEvent) =>
  e.event === 'delta' && ((e.data as Delta).events ?? []).some(pred);

async function adminPort(relay: RunningRelay): Promise<number> {
  return (await relay.proc.waitForMsg('admin listening')).port as number;
}

describe('dashboard over HTTP: where it is served, tokens, actions', () => {
  let plain: RunningRelay;
  let relay: RunningRelay;
  let admin: number;
  let node: Proc;
  const streams: SseStream[] = [];

  beforeAll(async () => {
    plain = await startRelay(['--admin-listen', '127.0.0.1:0']);
    relay = await startRelay(['--admin-listen', '127.0.0.1:0', '--admin-token', ADMIN, '--dashboard-token', VIEW]);
    admin = await adminPort(relay);
    node = await startNode(relay.addr, ['--name', 'office-1']);
  });
  afterAll(async () => {
    for (const s of streams) s.close();
    await killAll();
  });

  async function feed(url: string, headers: Record<string, string> = {}): Promise<SseStream> {
    const s = await openSse(url, headers);
    streams.push(s);
    return s;
  }

  it('is never on the public port without --dashboard-token, and on the admin listener without a token', async () => {
    for (const path of ['/dashboard', '/dashboard/events', '/dashboard/app.js']) {
      const r = await http(`http://127.0.0.1:${plain.port}${path}`);
      expect({ path, status: r.status }).toEqual({ path, status: 404 });
      expect(r.body).toContain('--admin-listen');
    }
    const page = await http(`http://127.0.0.1:${await adminPort(plain)}/dashboard`);
    expect(page.status).toBe(200);
    expect(page.body).toContain('<table id="nodes">');
  });

  it('asks for the dashboard token on the public port (page and feed)', async () => {
    const base = `http://127.0.0.1:${relay.port}`;
    expect((await http(`${base}/dashboard`)).status).toBe(401);
    expect((await http(`${base}/dashboard`, { headers: { authorization: 'Bearer wrong' } })).status).toBe(401);
    expect((await http(`${base}/dashboard?token=${VIEW}`)).status).toBe(200);
    expect((await http(`${base}/dashboard`, { headers: { authorization: `Bearer ${VIEW}` } })).status).toBe(200);
    // The admin token opens the page too; the static files carry no data and need no token.
    expect((await http(`${base}/dashboard`, { headers: { authorization: `Bearer ${ADMIN}` } })).status).toBe(200);
    const js = await http(`${base}/dashboard/app.js`);
    expect(js.status).toBe(200);
    expect(js.body).toContain('text/event-stream');
    expect((await http(`${base}/dashboard/../package.json`)).status).toBe(426);
    expect((await http(`${base}/dashboard/relay.js`)).status).toBe(404);

    const refused = await http(`${base}/dashboard/events?token=${VIEW}`);
    expect(refused.status).toBe(401);
    const s = await feed(`${base}/dashboard/events`, { authorization: `Bearer ${VIEW}` });
    expect(s.status).toBe(200);
    expect(s.headers['content-type']).toMatch(/^text\/event-stream/);
    const snap = (await s.waitFor((e) => e.event === 'snapshot')).data as Snapshot;
    expect(snap.nodes.map((n) => n.name)).toEqual(['office-1']);
    expect(snap.nodes[0]).toMatchObject({ state: 'online', local: true, services: { Arith: ['Divide', 'Multiply'] } });
    expect(snap.relay).toMatchObject({ actions: true, nodes: { local: 1 } });
    expect(snap.events.some((e) => e.kind === 'node-join' && e.node === 'office-1')).toBe(true);
  });

  it('serves the page with a strict content security policy', async () => {
    const res = await fetch(`http://127.0.0.1:${admin}/dashboard`, { signal: AbortSignal.timeout(10_000) });
    expect(res.headers.get('content-security-policy')).toContain("script-src 'self'");
    expect(res.headers.get('referrer-policy')).toBe('no-referrer');
    expect(res.headers.get('x-frame-options')).toBe('DENY');
  });

  it('refuses actions without the admin token (401) and from another origin (403)', async () => {
    const url = `http://127.0.0.1:${admin}/dashboard/actions/drain-node`;
    const body = JSON.stringify({ node: 'office-1' });
    const post = (headers: Record<string, string>) => http(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });
    expect((await post({})).status).toBe(401);
    expect((await post({ authorization: `Bearer ${VIEW}` })).status).toBe(401);
    const foreign = await post({ authorization: `Bearer ${ADMIN}`, origin: 'http://evil.example' });
    expect(foreign.status).toBe(403);
    const crossSite = await post({ authorization: `Bearer ${ADMIN}`, origin: `http://127.0.0.1:${admin}`, 'sec-fetch-site': 'cross-site' });
    expect(crossSite.status).toBe(403);
    expect(crossSite.body).toContain("dashboard's own page");
    // The page's own same-origin request passes the relay's browser rules.
    const unknown = await http(url, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN}`, origin: `http://127.0.0.1:${admin}`, 'sec-fetch-site': 'same-origin' },
      body: JSON.stringify({ node: 'nope' }),
    });
    expect(unknown.status).toBe(404);
    expect(unknown.json).toMatchObject({ error: { code: 'NO_NODE', message: 'no node named nope is attached to this relay' } });
    expect((await http(url, { headers: { authorization: `Bearer ${ADMIN}` } })).status).toBe(405);
    const disabled = await http(`http://127.0.0.1:${await adminPort(plain)}/dashboard/actions/drain-node`, { method: 'POST', body });
    expect(disabled.status).toBe(403);
    expect(disabled.body).toContain('--admin-token');
  });

  it('drains a node and disconnects a caller; each action is logged and shown as an event', async () => {
    const s = await feed(`http://127.0.0.1:${admin}/dashboard/events`);
    let client: Client | undefined;
    try {
      client = await connect(relay.addr);
      const withCaller = await s.waitFor(
        (e) =>
          (e.event === 'snapshot' && (e.data as Snapshot).callers.length > 0) || (e.event === 'delta' && ((e.data as Delta).callers?.upsert.length ?? 0) > 0),
        10_000,
        'the caller in the feed',
      );
      const session =
        withCaller.event === 'snapshot' ? (withCaller.data as Snapshot).callers[0]!.session : (withCaller.data as Delta).callers!.upsert[0]!.session;
      const closed = new Promise<void>((resolve) => client!.once('close', () => resolve()));
      const r = await http(`http://127.0.0.1:${admin}/dashboard/actions/disconnect-caller`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN}` },
        body: JSON.stringify({ session }),
      });
      expect(r).toMatchObject({ status: 200, json: { ok: true, action: 'disconnect-caller', target: session } });
      await closed;
      await s.waitFor(
        hasEvent((e) => e.kind === 'action' && e.action === 'disconnect-caller' && e.target === session),
        10_000,
        'the disconnect-caller event',
      );
      await s.waitFor((e) => e.event === 'delta' && ((e.data as Delta).callers?.remove ?? []).includes(session), 10_000, 'the caller removed');
    } finally {
      client?.close();
    }

    const from = relay.proc.logs.length;
    const drained = await http(`http://127.0.0.1:${admin}/dashboard/actions/drain-node`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ node: 'office-1' }),
    });
    expect(drained.status).toBe(200);
    const line = await relay.proc.waitForLog((l) => l.msg === 'dashboard action', 10_000, 'the action log line', from);
    expect(line).toMatchObject({ action: 'drain-node', target: 'office-1', by: 'admin', peer: expect.stringMatching(/^127\.0\.0\.1:\d+$/) });
    await node.waitForMsg('relay is going away');
    await s.waitFor(
      hasEvent((e) => e.kind === 'node-draining'),
      10_000,
      'the node draining',
    );
    await s.waitFor(
      hasEvent((e) => e.kind === 'node-leave'),
      10_000,
      'the node leaving',
    );
    // A drained node reconnects with its backoff, as after a relay's drain: it is back, one reconnect more.
    await s.waitFor(
      (e) => e.event === 'delta' && ((e.data as Delta).nodes?.upsert ?? []).some((n) => n.name === 'office-1' && n.state === 'online' && n.reconnects === 1),
      10_000,
      'office-1 back online',
    );
  });

  it('shows a node that leaves as leaving, then removes it', async () => {
    const s = await feed(`http://127.0.0.1:${admin}/dashboard/events`);
    const temp = await startNode(relay.addr, ['--name', 'temp-1']);
    await s.waitFor(
      (e) => e.event === 'delta' && ((e.data as Delta).nodes?.upsert ?? []).some((n) => n.name === 'temp-1' && n.state === 'online'),
      10_000,
      'temp-1 joining',
    );
    temp.kill();
    await s.waitFor(
      (e) => e.event === 'delta' && ((e.data as Delta).nodes?.upsert ?? []).some((n) => n.name === 'temp-1' && n.state === 'leaving'),
      10_000,
      'temp-1 leaving',
    );
    await s.waitFor((e) => e.event === 'delta' && ((e.data as Delta).nodes?.remove ?? []).includes('temp-1'), 10_000, 'temp-1 removed');
  });

  it('records refused requests, and serves at most 8 streams', async () => {
    const s = await feed(`http://127.0.0.1:${admin}/dashboard/events`);
    await s.waitFor((e) => e.event === 'snapshot');
    const refused = await http(`http://127.0.0.1:${relay.port}/call/Arith.Multiply`, {
      method: 'POST',
      headers: { origin: 'http://evil.example' },
      body: '[2,3]',
    });
    expect(refused.status).toBe(403);
    await s.waitFor(
      hasEvent((e) => e.kind === 'refused-request' && e.door === 'http' && /evil\.example/.test(e.reason ?? '')),
      10_000,
      'the refused request',
    );

    for (const other of streams) if (other !== s) other.close();
    // Once the others are closed, a delta says this is the only dashboard left.
    await s.waitFor((e) => e.event === 'delta' && (e.data as { relay?: { dashboards: number } }).relay?.dashboards === 1, 10_000, 'the other streams closed');
    const more: SseStream[] = [];
    for (let i = 1; i < 8; i++) more.push(await feed(`http://127.0.0.1:${admin}/dashboard/events`));
    expect(more.map((m) => m.status)).toEqual([200, 200, 200, 200, 200, 200, 200]);
    const over = await http(`http://127.0.0.1:${admin}/dashboard/events`);
    expect(over.status).toBe(503);
    expect(over.body).toContain('at most 8 dashboard streams');
    for (const m of more) m.close();
  });
});
