import { once } from 'node:events';
import { connect as dial, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Client } from '../src/index.js';
import { gatewayCall, http } from './helpers/http.js';
import { killAll, startNode, startRelay, type RunningRelay } from './helpers/processes.js';
import { openSse, type SseEvent, type SseStream } from './helpers/sse.js';

const SLOW = fileURLToPath(new URL('./fixtures/slow-services.js', import.meta.url));
const VIEW = 'view-token-0123456789';
const ADMIN = 'admin-token-0123456789';

interface Delta {
  events?: Array<{ kind: string; action?: string; target?: string; by?: string; address?: string; reason?: string; door?: string }>;
  nodes?: { upsert: Array<{ name: string; state: string; reconnects: number; draining: boolean }>; remove: string[] };
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
  const streams: SseStream[] = [];

  beforeAll(async () => {
    plain = await startRelay(['--admin-listen', '127.0.0.1:0']);
    relay = await startRelay(['--admin-listen', '127.0.0.1:0', '--admin-token', ADMIN, '--dashboard-token', VIEW]);
    admin = await adminPort(relay);
    await startNode(relay.addr, ['--name', 'office-1']);
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
    expect(unknown.json).toMatchObject({
      error: { code: 'NO_NODE', message: 'no node named nope is attached to this relay', data: { reason: 'node-not-found' } },
    });
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
    const act = (action: string, node: string) =>
      http(`http://127.0.0.1:${admin}/dashboard/actions/${action}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ node }),
      });
    expect((await act('drain-node', 'office-1')).status).toBe(200);
    const line = await relay.proc.waitForLog((l) => l.msg === 'dashboard action', 10_000, 'the action log line', from);
    expect(line).toMatchObject({ action: 'drain-node', target: 'office-1', by: 'admin', peer: expect.stringMatching(/^127\.0\.0\.1:\d+$/) });
    await s.waitFor(
      hasEvent((e) => e.kind === 'node-draining'),
      10_000,
      'the node draining',
    );
    const isState = (state: string) => (e: SseEvent) =>
      e.event === 'delta' && ((e.data as Delta).nodes?.upsert ?? []).some((n) => n.name === 'office-1' && n.state === state);
    await s.waitFor(isState('drained'), 10_000, 'office-1 drained');
    expect((await act('undrain-node', 'office-1')).status).toBe(200);
    await s.waitFor(isState('online'), 10_000, 'office-1 back in rotation');
    expect((await act('undrain-node', 'office-1')).status).toBe(404);
  });

  it('keeps a drained node out of rotation across its reconnect, until it is undrained', async () => {
    const s = await feed(`http://127.0.0.1:${admin}/dashboard/events`);
    const [w1, w2] = await Promise.all(['w-1', 'w-2'].map((name) => startNode(relay.addr, ['--name', name, '--services', SLOW])));
    const act = (action: string, node: string) =>
      http(`http://127.0.0.1:${admin}/dashboard/actions/${action}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN}` },
        body: JSON.stringify({ node }),
      });
    const servedBy = async () => {
      const answers = await Promise.all(Array.from({ length: 8 }, () => gatewayCall(relay.port, 'Slow.Where', [])));
      return new Set(answers.map((a) => (a.json as { result: string }).result));
    };
    const w1State = (state: string, reconnects?: number) => (e: SseEvent) =>
      e.event === 'delta' &&
      ((e.data as Delta).nodes?.upsert ?? []).some((n) => n.name === 'w-1' && n.state === state && (reconnects === undefined || n.reconnects === reconnects));
    try {
      expect(await servedBy()).toEqual(new Set(['w-1', 'w-2']));
      expect((await act('drain-node', 'w-1')).status).toBe(200);
      await s.waitFor(w1State('drained'), 10_000, 'w-1 drained');
      expect(await servedBy()).toEqual(new Set(['w-2']));
      // It stays connected and shows as draining in /nodes (and presence).
      const listed = (await http(`http://127.0.0.1:${admin}/nodes`)).json as Array<{ name: string; draining: boolean }>;
      expect(listed.find((n) => n.name === 'w-1')).toMatchObject({ draining: true });
      expect(w1!.logs.some((l) => l.msg === 'relay is going away')).toBe(false);

      // Its connection drops; it reconnects with its backoff and is still drained from its first moment.
      expect((await act('disconnect-node', 'w-1')).status).toBe(200);
      await s.waitFor(w1State('drained', 1), 15_000, 'w-1 back, still drained');
      expect(await servedBy()).toEqual(new Set(['w-2']));

      expect((await act('undrain-node', 'w-1')).status).toBe(200);
      await s.waitFor(w1State('online', 1), 10_000, 'w-1 undrained');
      expect(await servedBy()).toEqual(new Set(['w-1', 'w-2']));
    } finally {
      w1!.kill();
      w2!.kill();
    }
  });

  it('checks an admin token without acting (204, 401, 403), and takes acknowledgements only for open streams', async () => {
    const check = (port: number, headers: Record<string, string>) => http(`http://127.0.0.1:${port}/dashboard/actions/check`, { method: 'POST', headers });
    expect((await check(admin, { authorization: `Bearer ${ADMIN}` })).status).toBe(204);
    expect((await check(relay.port, { authorization: `Bearer ${ADMIN}` })).status).toBe(204);
    expect((await check(admin, { authorization: 'Bearer wrong' })).status).toBe(401);
    expect((await check(admin, { authorization: `Bearer ${VIEW}` })).status).toBe(401);
    expect((await check(await adminPort(plain), {})).status).toBe(403);
    const ack = `http://127.0.0.1:${relay.port}/dashboard/events/ack?stream=nope&seq=1`;
    expect((await http(ack, { method: 'POST' })).status).toBe(401);
    expect((await http(ack, { method: 'POST', headers: { authorization: `Bearer ${VIEW}` } })).status).toBe(404);
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
    // The admin token still opens one: operators are never locked out.
    const operator = await feed(`http://127.0.0.1:${admin}/dashboard/events`, { authorization: `Bearer ${ADMIN}` });
    expect(operator.status).toBe(200);
    await operator.waitFor((e) => e.event === 'snapshot');
    operator.close();
    for (const m of more) m.close();
  });

  it('cuts 8 paused readers within the slow-consumer timeout; a fresh operator then gets the page and a stream', async () => {
    const timeout = 2_000;
    const small = await startRelay(['--admin-listen', '127.0.0.1:0', '--slow-consumer-timeout', `${timeout}ms`]);
    const port = await adminPort(small);
    const sockets: Socket[] = [];
    try {
      const opened = Date.now();
      for (let i = 0; i < 8; i++) {
        const socket = dial(port, '127.0.0.1');
        sockets.push(socket);
        await once(socket, 'connect');
        socket.write(`GET /dashboard/events HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
        await once(socket, 'data');
        // Reads nothing more: a paused reader, sent a few hundred bytes a second.
        socket.pause();
      }
      const full = await http(`http://127.0.0.1:${port}/dashboard/events`);
      expect(full.status).toBe(503);
      let from = 0;
      for (let i = 0; i < 8; i++) {
        const cut = await small.proc.waitForLog((l) => l.msg === 'slow consumer: closing connection', timeout + 5_000, `cut ${i + 1}`, from);
        from = small.proc.logs.indexOf(cut) + 1;
      }
      const elapsed = Date.now() - opened;
      console.log(`8 paused readers cut ${elapsed} ms after the first connected (--slow-consumer-timeout ${timeout} ms)`);
      expect(elapsed).toBeLessThan(timeout + 3_000);
      const metrics = await http(`http://127.0.0.1:${port}/metrics`);
      expect(metrics.body).toMatch(/tunnel_relay_slow_consumers_total\{transport="http"\} 8/);
      const page = await http(`http://127.0.0.1:${port}/dashboard`);
      expect(page.status).toBe(200);
      const s = await feed(`http://127.0.0.1:${port}/dashboard/events`);
      expect(s.status).toBe(200);
      await s.waitFor((e) => e.event === 'snapshot');
      s.close();
    } finally {
      for (const so of sockets) so.destroy();
      small.proc.kill();
    }
  });
});
