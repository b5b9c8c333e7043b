// One node tunnel (src/node/tunnel.ts RelayTunnel) against an in-process Relay on 127.0.0.1: what it
// tells its node when the relay goes and comes back, or refuses it, and the backoff between dials.
import { afterEach, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { connect } from '../src/client/client.js';
import type { RunningCall } from '../src/node/dispatcher.js';
import { SessionTable } from '../src/node/sessions.js';
import { RelayTunnel, type TunnelHost, type TunnelOptions } from '../src/node/tunnel.js';
import { Relay } from '../src/relay/relay.js';
import { DeadlineWheel } from '../src/rpc/deadlines.js';
import { ServiceRegistry } from '../src/rpc/registry.js';
import { CloseCode } from '../src/wire/close-codes.js';
import { PROTOCOL_VERSION } from '../src/wire/messages.js';
import { waitUntil } from './helpers/wait.js';

const WAIT = 10_000;
type LogLine = { level: number; msg: string; [k: string]: unknown };

/** A tunnel with the node around it reduced to what the tunnel asks: every event it reports is recorded. */
function tunnelTo(url: string, options: Partial<TunnelOptions> = {}) {
  const lines: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line) as LogLine) });
  const services = new ServiceRegistry().register('Echo', { Say: (s: string) => `echo ${s}` });
  const deadlines = new DeadlineWheel<RunningCall>((call) => call.dispatcher.expire(call));
  const welcomes: string[] = [];
  const losses: Array<{ code: number; reason: string }> = [];
  const host: TunnelHost = {
    dispatch: {
      name: 'tunnel-1',
      log,
      services,
      forwarded: new Map(),
      deadlines,
      defaultTimeout: 5_000,
      maxMessage: 1 << 20,
      maxReassembly: 1 << 20,
      maxBacklog: 1 << 20,
      maxInFlight: 16,
      callFinished: () => {},
      served: 0,
    },
    sessions: new SessionTable(),
    hello: () => ({
      version: PROTOCOL_VERSION,
      role: 'node',
      name: 'tunnel-1',
      instance: 'i-1',
      services: services.describe(),
      labels: {},
      ...(options.token ? { token: options.token } : {}),
    }),
    welcomed: (t) => {
      welcomes.push(t.current);
      return { self: undefined, relays: [] };
    },
    candidates: () => [],
    lost: (_t, code, reason) => losses.push({ code, reason }),
    sessionClosed: () => {},
  };
  const tunnel = new RelayTunnel(url, host, {
    token: undefined,
    tls: { rejectUnauthorized: true },
    maxMessage: 1 << 20,
    heartbeatTimeout: 0,
    reconnectBase: 20,
    reconnectCap: 200,
    reconnectReset: 60_000,
    lookup: undefined,
    ...options,
  });
  cleanups.push(() => tunnel.close('test over'));
  return { tunnel, lines, welcomes, losses, logged: (msg: string) => lines.filter((l) => l.msg === msg) };
}

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

async function startRelay(listen = '127.0.0.1:0', options: ConstructorParameters<typeof Relay>[0] = {}) {
  const relay = new Relay({ ...options, listen });
  const { port } = await relay.listen();
  return { relay, port };
}

async function echoThrough(port: number): Promise<unknown> {
  const client = await connect(`127.0.0.1:${port}`, { timeout: 5_000 });
  try {
    return await client.call('Echo.Say', 'hi');
  } finally {
    await client.close();
  }
}

describe('RelayTunnel', () => {
  it('reconnects after the relay restarts on the same port, backing off between failed dials, and serves again', async () => {
    const first = await startRelay();
    const port = first.port;
    const t = tunnelTo(`ws://127.0.0.1:${port}/`);
    t.tunnel.start();
    await waitUntil(() => t.tunnel.connected, WAIT, 'the first welcome');
    expect(await echoThrough(port)).toBe('echo hi');

    await first.relay.close();
    await waitUntil(
      () => t.logged('could not connect to relay').length >= 2,
      WAIT,
      () => `two failed dials; log: ${JSON.stringify(t.lines)}`,
    );
    expect(t.tunnel.connected).toBe(false);
    expect(t.logged('disconnected from relay')).toHaveLength(1);
    expect(t.logged('could not connect to relay')[0]).toMatchObject({
      code: CloseCode.ABNORMAL,
      reason: `connect ECONNREFUSED 127.0.0.1:${port}`,
      address: '127.0.0.1',
    });
    expect(t.losses[0]?.code).toBe(t.logged('disconnected from relay')[0]?.code);

    const second = await startRelay(`127.0.0.1:${port}`);
    cleanups.push(() => second.relay.close());
    await waitUntil(() => t.tunnel.connected, WAIT, 'the welcome of the restarted relay');
    expect(t.welcomes).toEqual([`ws://127.0.0.1:${port}/`, `ws://127.0.0.1:${port}/`]);
    expect(await echoThrough(port)).toBe('echo hi');

    // One wait per failed round, each drawn under a ceiling that doubles from the base to the cap.
    const waits = t.logged('reconnecting');
    expect(waits.length).toBeGreaterThanOrEqual(2);
    waits.forEach((w, i) => {
      expect(w.attempt).toBe(i + 1);
      expect(w.ceilingMs).toBe(Math.min(200, 20 * 2 ** i));
      expect(w.delayMs).toBeGreaterThanOrEqual(0);
      expect(w.delayMs).toBeLessThanOrEqual(w.ceilingMs as number);
    });
  });

  it('a refused token is the HTTP 401 of the upgrade as close code 4003, and the next wait is at the cap', async () => {
    const { relay, port } = await startRelay('127.0.0.1:0', { nodeToken: 'right-token-0123456789' });
    cleanups.push(() => relay.close());
    const t = tunnelTo(`ws://127.0.0.1:${port}/`, { token: 'wrong-token-0123456789', reconnectCap: 60_000 });
    t.tunnel.start();
    await waitUntil(
      () => t.logged('reconnecting').length >= 1,
      WAIT,
      () => `a reconnect; log: ${JSON.stringify(t.lines)}`,
    );
    expect(t.losses[0]).toEqual({ code: CloseCode.UNAUTHORIZED, reason: 'HTTP 401: token refused: it matches no node or caller token' });
    expect(t.logged('relay refused our credentials; retrying at the longest backoff')).toHaveLength(1);
    expect(t.logged('reconnecting')[0]).toMatchObject({ attempt: 1, ceilingMs: 60_000 });
    expect(t.tunnel.connected).toBe(false);
  });

  it('stops dialling once closed: no reconnect is scheduled after close()', async () => {
    const { relay, port } = await startRelay();
    const t = tunnelTo(`ws://127.0.0.1:${port}/`);
    t.tunnel.start();
    await waitUntil(() => t.tunnel.connected, WAIT, 'the welcome');
    await t.tunnel.close('node is shutting down');
    await waitUntil(() => t.losses.length === 1, WAIT, 'the loss of the closed tunnel');
    await relay.close();
    expect(t.logged('reconnecting')).toEqual([]);
    expect(t.tunnel.connected).toBe(false);
  });
});
