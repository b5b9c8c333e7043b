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

/** A relay with no nodes and no callers: only its event bus moves. */
function fakeHost(): DashboardHost & { cuts: number } {
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
    limits: { slowConsumerTimeout: 60_000 },
    metrics: { slowConsumer: () => void host.cuts++ },
    callerConnections: () => [],
    drainNode: () => undefined,
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

  async function serve(feed: DashboardFeed): Promise<number> {
    server = createServer((req, res) => feed.open(res, `${req.socket.remoteAddress}:${req.socket.remotePort}`));
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
});
