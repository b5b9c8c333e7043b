import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/util/logger.js';
import { RelayEvents } from '../src/relay/events.js';
import { DashboardFeed } from '../src/relay/dashboard/feed.js';
import type { DashboardHost } from '../src/relay/dashboard/host.js';
import { TrafficStats } from '../src/relay/dashboard/traffic.js';
import { openSse } from './helpers/sse.js';
import { Wakeups } from './helpers/wait.js';

/** A relay with no nodes and no callers: only its event bus moves. */
function fakeHost(slowConsumerTimeout = 60_000): DashboardHost & { cuts: number } {
  const host = {
    cuts: 0,
    log: silentLogger,
    events: new RelayEvents(),
    relayName: 'test-relay',
    draining: false,
    inFlight: 0,
    directory: { all: () => [], size: 0 },
    registry: { size: 0 },
    cluster: undefined,
    limits: { slowConsumerTimeout },
    metrics: { slowConsumer: () => void host.cuts++ },
    callerConnections: () => [],
    drainMarks: { has: () => false, list: () => [], size: 0 },
    drainNode: () => undefined,
    undrainNode: () => undefined,
    disconnectNode: () => undefined,
    disconnectCaller: () => undefined,
  };
  return host;
}

describe('DashboardFeed', () => {
  let server: Server | undefined;
  const sockets: Socket[] = [];
  afterEach(async () => {
    for (const s of sockets) s.destroy();
    server?.closeAllConnections();
    if (server) await new Promise((r) => server!.close(r));
  });

  /** The feed at GET /, its acknowledgements at POST /dashboard/events/ack; `Bearer admin` is the admin token. */
  async function serve(feed: DashboardFeed): Promise<number> {
    server = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://127.0.0.1');
      if (req.method === 'POST') {
        const ok = feed.ack(url.searchParams.get('stream') ?? '', Number(url.searchParams.get('seq')));
        res.writeHead(ok ? 204 : 404).end();
        return;
      }
      feed.open(res, `${req.socket.remoteAddress}:${req.socket.remotePort}`, req.headers.authorization === 'Bearer admin');
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return (server.address() as AddressInfo).port;
  }

  it('sends a snapshot with the recent events, then the new ones in deltas', async () => {
    const host = fakeHost();
    host.events.audit({ kind: 'node-join', node: 'before-1' });
    const feed = new DashboardFeed(host, new TrafficStats(), { version: 'v', actions: false, tickMs: 200 });
    const port = await serve(feed);
    const s = await openSse(`http://127.0.0.1:${port}/`);
    try {
      const snap = (await s.waitFor((e) => e.event === 'snapshot')).data as { events: Array<{ node: string }>; relay: { name: string; actions: boolean } };
      expect(snap.events.map((e) => e.node)).toEqual(['before-1']);
      expect(snap.relay).toMatchObject({ name: 'test-relay', actions: false });
      host.events.audit({ kind: 'node-join', node: 'after-1' });
      await s.waitFor((e) => e.event === 'delta' && JSON.stringify(e.data).includes('after-1'), 5_000, 'the new event');
      await s.waitFor((e) => e.event === 'delta' && (e.data as { relay?: unknown }).relay !== undefined, 5_000, 'a tick');
      expect(feed.streams).toBe(1);
    } finally {
      s.close();
    }
  });

  it('cuts a stream whose reader does not read, as a slow consumer', async () => {
    const host = fakeHost();
    const feed = new DashboardFeed(host, new TrafficStats(), { version: 'v', actions: false, maxBacklog: 64 * 1024 });
    const port = await serve(feed);
    const socket = connect(port, '127.0.0.1');
    sockets.push(socket);
    await once(socket, 'connect');
    socket.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    // Read the answer's head, then nothing more.
    await once(socket, 'data');
    socket.pause();
    const closed = once(socket, 'close');
    const reason = 'r'.repeat(290);
    const deadline = Date.now() + 20_000;
    while (host.cuts === 0 && Date.now() < deadline) {
      for (let i = 0; i < 2_000; i++) host.events.audit({ kind: 'refused-request', door: 'http', address: '192.0.2.1:1', reason });
      await new Promise((r) => setTimeout(r, 150));
    }
    expect(host.cuts).toBe(1);
    expect(feed.streams).toBe(0);
    const cut = host.events.recent().filter((e) => e.kind === 'slow-consumer');
    expect(cut).toHaveLength(1);
    expect(cut[0]).toMatchObject({ door: 'dashboard', reason: expect.stringContaining('slow consumer') });
    socket.resume();
    await closed;
  });

  /** A raw connection that reads the answer's head, then nothing more. */
  async function pausedReader(port: number): Promise<Socket> {
    const socket = connect(port, '127.0.0.1');
    sockets.push(socket);
    await once(socket, 'connect');
    socket.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    await once(socket, 'data');
    socket.pause();
    return socket;
  }

  it('cuts 8 paused readers within the slow-consumer timeout, though the feed sends them little; a reader that acknowledges stays', async () => {
    const timeout = 1_500;
    const host = fakeHost(timeout);
    const feed = new DashboardFeed(host, new TrafficStats(), { version: 'v', actions: false, tickMs: 200 });
    const port = await serve(feed);
    const opened = Date.now();
    const paused = await Promise.all(Array.from({ length: 8 }, () => pausedReader(port)));
    expect(feed.streams).toBe(8);
    // The kernel takes megabytes before the socket backs up; the feed sends these readers a few
    // hundred bytes a tick. They are cut because they acknowledge nothing.
    const audits = new Wakeups();
    host.events.on('audit', () => audits.wake());
    await audits.until(
      () => host.cuts === 8,
      timeout + 5_000,
      'the 8 paused readers cut',
      () => `${host.cuts} cut`,
    );
    const elapsed = Date.now() - opened;
    console.log(`8 paused readers cut ${elapsed} ms after they connected (slow-consumer timeout ${timeout} ms)`);
    expect(elapsed).toBeLessThan(timeout + 2_000);
    expect(feed.streams).toBe(0);
    const events = host.events.recent().filter((e) => e.kind === 'slow-consumer');
    expect(events).toHaveLength(8);
    expect(events[0]!.reason).toContain('acknowledged nothing');
    await Promise.all(paused.map((s) => (s.destroyed ? undefined : once(s.resume(), 'close'))));

    // A fresh reader gets a stream, and keeps it past the timeout by acknowledging what it reads.
    const s = await openSse(`http://127.0.0.1:${port}/`);
    try {
      const snap = (await s.waitFor((e) => e.event === 'snapshot')).data as { relay: { now: number }; stream: { id: string; ackEvery: number } };
      expect(snap.stream.ackEvery).toBeLessThan(timeout);
      const since = snap.relay.now;
      await s.waitFor(
        (e) => e.event === 'delta' && ((e.data as { relay?: { now: number } }).relay?.now ?? 0) > since + 2 * timeout,
        4 * timeout + 5_000,
        'a delta two timeouts later',
      );
      expect(host.cuts).toBe(8);
      expect(feed.streams).toBe(1);
    } finally {
      s.close();
    }
  });

  it('keeps 2 streams for the admin token when the 8 public ones are taken', async () => {
    const host = fakeHost();
    const feed = new DashboardFeed(host, new TrafficStats(), { version: 'v', actions: true });
    const port = await serve(feed);
    const url = `http://127.0.0.1:${port}/`;
    const open: Array<{ close(): void }> = [];
    try {
      for (let i = 0; i < 8; i++) open.push(await pausedReader(port).then((s) => ({ close: () => s.destroy() })));
      const refused = await fetch(url, { signal: AbortSignal.timeout(5_000) });
      expect(refused.status).toBe(503);
      expect(await refused.text()).toContain('admin token');
      for (let i = 0; i < 2; i++) {
        const admin = await openSse(url, { authorization: 'Bearer admin' });
        open.push(admin);
        expect(admin.status).toBe(200);
        await admin.waitFor((e) => e.event === 'snapshot');
      }
      expect(feed.streams).toBe(10);
      const third = await fetch(url, { headers: { authorization: 'Bearer admin' }, signal: AbortSignal.timeout(5_000) });
      expect(third.status).toBe(503);
      await third.body?.cancel();
    } finally {
      for (const o of open) o.close();
    }
  });
});
