import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { AddressTable, LIMIT_DEFAULTS } from '../src/relay/limits.js';
import { decode, encode } from '../src/wire/codec.js';
import { MessagePackFramer } from '../src/wire/framer.js';
import { gatewayCall, http, metric, scrape } from './helpers/http.js';
import { killAll, startNode, startRelay, type RunningRelay } from './helpers/processes.js';
import { RawPeer } from './helpers/raw.js';

/** Credential guessing is limited on every door, per address (issue 19, item 1). */

const CALLER_TOKEN = 'caller-token-0123456789abcdef';
const NODE_TOKEN = 'node-token-0123456789abcdef';
const DASHBOARD_TOKEN = 'dashboard-token-0123456789abcdef';
const ADMIN_TOKEN = 'admin-token-0123456789abcdef';
const BACKOFF_LINE = 'too many failed authentications from one address; backing off';

interface RpcOutcome {
  replies: unknown[][];
  /** The relay closed the connection. */
  closed: boolean;
}

/**
 * One TCP connection to the msgpack-rpc port from `localAddress`: sends `requests` at once and
 * collects replies until the relay closes it or `want` replies came (then it is closed here).
 */
async function rpc(port: number, requests: unknown[][], want: number, localAddress = '127.0.0.1', timeout = 5_000): Promise<RpcOutcome> {
  const socket = connect({ port, host: '127.0.0.1', localAddress });
  const framer = new MessagePackFramer(1 << 20);
  const replies: unknown[][] = [];
  return new Promise<RpcOutcome>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`timed out after ${timeout} ms with ${JSON.stringify(replies)}`));
    }, timeout);
    socket.on('connect', () => socket.write(Buffer.concat(requests.map((r) => encode(r)))));
    socket.on('data', (d: Buffer) => {
      for (const f of framer.push(d)) replies.push(decode(f) as unknown[]);
      if (replies.length >= want && want > 0) {
        // Give a close that follows the reply in the same write the chance to arrive: wait for it or for a probe's answer.
        socket.write(encode([0, 999_999, 'Server.Ping', []]));
      }
      if (replies.some((r) => r[1] === 999_999)) {
        clearTimeout(timer);
        socket.destroy();
        resolve({ replies: replies.filter((r) => r[1] !== 999_999), closed: false });
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ replies: replies.filter((r) => r[1] !== 999_999), closed: true });
    });
  });
}

/** An HTTP request from `localAddress` (fetch cannot choose it), bounded in time. */
function httpFrom(
  localAddress: string,
  port: number,
  path: string,
  method: string,
  headers: Record<string, string>,
  body = '',
): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method, headers, localAddress, timeout: 5_000 }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text, headers: res.headers }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** A WebSocket upgrade with `token` as its bearer from `localAddress`: the HTTP status of a refusal, or 101. */
function upgrade(port: number, token: string, localAddress = '127.0.0.1'): Promise<{ status: number; reason: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers: { authorization: `Bearer ${token}` }, localAddress, perMessageDeflate: false });
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error('upgrade timed out'));
    }, 5_000);
    ws.on('unexpected-response', (_req, res) => {
      clearTimeout(timer);
      resolve({ status: res.statusCode ?? 0, reason: String(res.headers['x-tunnel-reason'] ?? '') });
      ws.terminate();
    });
    ws.on('open', () => {
      clearTimeout(timer);
      resolve({ status: 101, reason: '' });
      ws.terminate();
    });
    ws.on('error', () => undefined);
  });
}

const authRequest = (msgid: number, token: unknown) => [0, msgid, 'Relay.Auth', [token]];
const REFUSED = 'UNAUTHORIZED: Relay.Auth takes one string, a caller token the relay accepts; this one was refused';

describe('back-off per address, in a table of its own (fast, with a clock in the hand)', () => {
  it('backs off after the limit, doubles at each failure after a back-off, caps it, and forgives a clean window', () => {
    let now = 0;
    const limits = { ...LIMIT_DEFAULTS, maxAuthFailuresPerAddress: 3, authFailureWindow: 60_000, authBackoff: 1_000, maxAuthBackoff: 4_000 };
    const table = new AddressTable(limits, () => now);
    expect(table.authFailed('10.0.0.1')).toEqual({ firstOfBurst: true, backoff: 0, failures: 1 });
    expect(table.authFailed('10.0.0.1')).toMatchObject({ firstOfBurst: false, backoff: 0 });
    expect(table.authFailed('10.0.0.1')).toMatchObject({ backoff: 1_000, failures: 3 });
    expect(table.authBackedOff('10.0.0.1')).toBe(1_000);
    expect(table.authBackedOff('10.0.0.2')).toBe(0);
    const backoffs: number[] = [];
    for (let i = 0; i < 5; i++) {
      now += table.authBackedOff('10.0.0.1');
      expect(table.authBackedOff('10.0.0.1')).toBe(0);
      backoffs.push(table.authFailed('10.0.0.1').backoff);
    }
    expect(backoffs).toEqual([2_000, 4_000, 4_000, 4_000, 4_000]);
    // A window without failures after the back-off ends: forgiven, and forgotten once it has no connection.
    now += 4_000 + 60_000;
    table.prune();
    expect(table.size).toBe(0);
    expect(table.authFailed('10.0.0.1')).toMatchObject({ firstOfBurst: true, backoff: 0, failures: 1 });
  });
});

describe('credential guessing on every door of one relay', () => {
  let relay: RunningRelay;
  let rpcPort: number;
  let adminPort: number;

  beforeAll(async () => {
    relay = await startRelay(
      ['--msgpack-rpc-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--max-auth-failures-per-address', '8', '--auth-backoff', '60s'],
      0,
      { TUNNEL_CALLER_TOKEN: CALLER_TOKEN, TUNNEL_NODE_TOKEN: NODE_TOKEN, TUNNEL_DASHBOARD_TOKEN: DASHBOARD_TOKEN, TUNNEL_ADMIN_TOKEN: ADMIN_TOKEN },
    );
    rpcPort = (await relay.proc.waitForMsg('msgpack-rpc port listening')).port as number;
    adminPort = (await relay.proc.waitForMsg('admin listening')).port as number;
    await startNode(relay.addr, ['--name', 'office-1'], { TUNNEL_TOKEN: NODE_TOKEN });
  });
  afterAll(killAll);

  it('closes a msgpack-rpc connection at its first wrong Relay.Auth: the right token sent after it is never read', async () => {
    const guess = await rpc(rpcPort, [authRequest(1, 'wrong-token-000000000000'), authRequest(2, CALLER_TOKEN), [0, 3, 'Server.Ping', []]], 1, '127.0.0.9');
    expect(guess).toEqual({ replies: [[1, 1, REFUSED, null]], closed: true });
    // A connection that authenticates first is served as before.
    const right = await rpc(rpcPort, [authRequest(1, CALLER_TOKEN), [0, 2, 'Server.Ping', []]], 2, '127.0.0.9');
    expect(right.replies).toEqual([
      [1, 1, null, true],
      [1, 2, null, 'pong'],
    ]);
  });

  it('counts wrong tokens from one address on every door together, then refuses even the right one there, and only there', async () => {
    const from = relay.proc.logs.length;
    // Eight wrong credentials from 127.0.0.1, spread over the doors.
    expect((await gatewayCall(relay.port, 'Server.Ping', [], '', { authorization: 'Bearer wrong-gateway-0000000000' })).status).toBe(401);
    expect((await gatewayCall(relay.port, 'Server.Ping', [], '', { authorization: 'Bearer wrong-gateway-1111111111' })).status).toBe(401);
    expect(await upgrade(relay.port, 'wrong-upgrade-000000000')).toMatchObject({ status: 401, reason: expect.stringMatching(/^token refused/) });
    const hello = new RawPeer(`ws://${relay.addr}/`);
    await hello.open();
    hello.send([4, { version: 2, role: 'caller', token: 'wrong-hello-0000000000' }]);
    expect(await hello.waitClosed()).toEqual({ code: 4003, reason: 'caller token refused' });
    expect((await rpc(rpcPort, [authRequest(1, 'wrong-rpc-000000000000')], 1)).closed).toBe(true);
    const feed = await http(`http://${relay.addr}/dashboard/events`, { headers: { authorization: 'Bearer wrong-dashboard-000000000' } });
    expect(feed.status).toBe(401);
    const action = (port: number, token: string) =>
      http(`http://127.0.0.1:${port}/dashboard/actions/drain-node`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ node: 'office-1' }),
      });
    expect((await action(relay.port, 'wrong-admin-0000000000')).status).toBe(401);
    // The eighth, on the admin listener, starts the back-off.
    expect((await action(adminPort, 'wrong-admin-1111111111')).status).toBe(401);
    await relay.proc.waitForMsg(BACKOFF_LINE, 5_000, from);

    // Now the right credentials from 127.0.0.1 are refused unchecked, on every door, saying why and for how long.
    const backedOff = /^too many failed authentications from 127\.0\.0\.1; retry in (\d+) s$/;
    const rpcRefusal = await rpc(rpcPort, [authRequest(1, CALLER_TOKEN), [0, 2, 'Server.Ping', []]], 1);
    expect(rpcRefusal.closed).toBe(true);
    expect(rpcRefusal.replies).toHaveLength(1);
    expect(String(rpcRefusal.replies[0]![2])).toMatch(/^UNAUTHORIZED: too many failed authentications from 127\.0\.0\.1; retry in \d+ s$/);
    const gateway = await httpFrom('127.0.0.1', relay.port, '/call/Server.Ping', 'POST', { authorization: `Bearer ${CALLER_TOKEN}` }, '[]');
    expect(gateway.status).toBe(401);
    expect((JSON.parse(gateway.body) as { error: { message: string } }).error.message).toMatch(backedOff);
    expect(Number(gateway.headers['retry-after'])).toBeGreaterThan(0);
    expect(gateway.headers.connection).toBe('close');
    expect(await upgrade(relay.port, CALLER_TOKEN)).toMatchObject({ status: 401, reason: expect.stringMatching(backedOff) });
    const helloAgain = new RawPeer(`ws://${relay.addr}/`);
    await helloAgain.open();
    helloAgain.send([4, { version: 2, role: 'caller', token: CALLER_TOKEN }]);
    expect(await helloAgain.waitClosed()).toMatchObject({ code: 4003, reason: expect.stringMatching(backedOff) });
    const page = await http(`http://${relay.addr}/dashboard/events`, { headers: { authorization: `Bearer ${DASHBOARD_TOKEN}` } });
    expect(page.status).toBe(401);
    expect(page.body).toMatch(/too many failed authentications from 127\.0\.0\.1/);

    // Another address is not affected, on any door.
    const other = await rpc(rpcPort, [authRequest(1, CALLER_TOKEN), [0, 2, 'Server.Ping', []]], 2, '127.0.0.2');
    expect(other.replies).toEqual([
      [1, 1, null, true],
      [1, 2, null, 'pong'],
    ]);
    const otherGateway = await httpFrom('127.0.0.2', relay.port, '/call/Server.Ping', 'POST', { authorization: `Bearer ${CALLER_TOKEN}` }, '[]');
    expect(otherGateway).toMatchObject({ status: 200, body: '{"result":"pong"}\n' });
    expect(await upgrade(relay.port, CALLER_TOKEN, '127.0.0.2')).toMatchObject({ status: 101 });

    // The metrics count failures per door and the refusals of the back-off.
    const samples = await scrape(adminPort);
    const failures = (door: string) => metric(samples, 'tunnel_relay_auth_failures_total', { door });
    expect([failures('http'), failures('websocket'), failures('msgpack-rpc'), failures('dashboard'), failures('admin')]).toEqual([2, 2, 1 + 1, 2, 1]);
    const refusals = (door: string) => metric(samples, 'tunnel_relay_auth_backoff_refusals_total', { door });
    expect([refusals('msgpack-rpc'), refusals('http'), refusals('websocket'), refusals('dashboard')]).toEqual([1, 1, 2, 1]);
    // One back-off line for the burst, naming the address.
    const lines = relay.proc.logs.slice(from).filter((l) => l.msg === BACKOFF_LINE);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 40, ip: '127.0.0.1', failures: 8, backoffMs: 60_000 });
  });
});

describe('many connections guessing from one address', () => {
  let relay: RunningRelay;
  let rpcPort: number;
  beforeAll(async () => {
    relay = await startRelay(['--msgpack-rpc-listen', '127.0.0.1:0'], 0, { TUNNEL_CALLER_TOKEN: CALLER_TOKEN });
    rpcPort = (await relay.proc.waitForMsg('msgpack-rpc port listening')).port as number;
  });
  afterAll(killAll);

  it('checks only as many tokens as the limit allows, whatever the number of connections, and writes two lines for the burst', async () => {
    const from = relay.proc.logs.length;
    const started = Date.now();
    const outcomes: RpcOutcome[] = [];
    // 5 waves of 40 connections at once, each guessing once and then (were it still open) again.
    for (let wave = 0; wave < 5; wave++) {
      const batch = Array.from({ length: 40 }, (_, i) =>
        rpc(rpcPort, [authRequest(1, `guess-${wave}-${i}-000000000000`), authRequest(2, `guess-${wave}-${i}-111111111111`)], 1),
      );
      outcomes.push(...(await Promise.all(batch)));
    }
    const seconds = (Date.now() - started) / 1_000;
    expect(outcomes.every((o) => o.closed && o.replies.length === 1)).toBe(true);
    const checked = outcomes.filter((o) => o.replies[0]![2] === REFUSED).length;
    // The default limit: 10 tokens checked from this address; the other 190 refused unchecked.
    expect(checked).toBe(LIMIT_DEFAULTS.maxAuthFailuresPerAddress);
    expect(outcomes.filter((o) => /^UNAUTHORIZED: too many failed authentications from 127\.0\.0\.1/.test(String(o.replies[0]![2]))).length).toBe(190);
    // The first failure of the burst and the start of the back-off: two lines for 200 attempts.
    const lines = relay.proc.logs.slice(from).filter((l) => l.level !== undefined && l.level >= 30 && l.door === 'msgpack-rpc');
    expect(lines.map((l) => l.msg)).toEqual(['refused caller token', BACKOFF_LINE]);
    process.stderr.write(`guessing: 200 connections from one address in ${seconds.toFixed(2)} s, ${checked} tokens checked\n`);
    // Another address still gets in.
    const other = await rpc(rpcPort, [authRequest(1, CALLER_TOKEN)], 1, '127.0.0.2');
    expect(other.replies).toEqual([[1, 1, null, true]]);
  }, 30_000);
});
