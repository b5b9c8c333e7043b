// The one dial of a relay (src/wire/dial.ts RelayDial), as the caller (client.ts) and the node
// (tunnel.ts) both use it, against real servers in this process on 127.0.0.1, port 0.
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { createServer as createTcpServer, type AddressInfo, type Server as TcpServer, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { WebSocketServer, type WebSocket } from 'ws';
import { CA_HINT, MAX_ADDRESSES, RelayDial, resolveAll, USE_WS, USE_WSS, type DialEnd, type DialOptions } from '../src/wire/dial.js';
import { CloseCode } from '../src/wire/close-codes.js';
import { certDir, makeCerts } from './helpers/certs.js';

const WAIT = 10_000;
const base: DialOptions = { maxMessage: 1 << 20, handshakeTimeout: WAIT };

/** How `dial` ends, as a role sees it: its Connection's close handler asks `ended`. */
function ending(dial: RelayDial): Promise<DialEnd> {
  // Not events.once: it rejects on the 'error' that comes before most of these closes.
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${dial.url} did not close within ${WAIT} ms`)), WAIT);
    dial.ws.once('close', (code: number, reason: Buffer) => {
      clearTimeout(timer);
      resolve(dial.ended(code, reason.toString()));
    });
  });
}

const portOf = (server: { address(): AddressInfo | string | null }) => (server.address() as AddressInfo).port;

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const f of cleanups.splice(0).reverse()) await f();
});

/** A ws server that refuses every upgrade it does not like with `status` and an X-Tunnel-Reason. */
async function refusingServer(status: number, reason: string | undefined, accept: (auth: string | undefined) => boolean = () => false) {
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    verifyClient: (info, cb) => {
      if (accept(info.req.headers.authorization)) cb(true);
      else cb(false, status, undefined, reason === undefined ? {} : { 'X-Tunnel-Reason': reason });
    },
  });
  await once(wss, 'listening');
  cleanups.push(() => new Promise((r) => wss.close(r)));
  return { wss, url: `ws://127.0.0.1:${portOf(wss)}/` };
}

/** A TCP server that accepts and never says a word. */
async function silentServer(): Promise<{ url: string; accepted: () => number }> {
  const sockets = new Set<Socket>();
  let count = 0;
  const server: TcpServer = createTcpServer((s) => {
    count++;
    sockets.add(s);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(() => {
    for (const s of sockets) s.destroy();
    return new Promise((r) => server.close(r));
  });
  return { url: `ws://127.0.0.1:${portOf(server)}/`, accepted: () => count };
}

describe('refusals at the upgrade', () => {
  it.each([
    [401, 'token refused', CloseCode.UNAUTHORIZED],
    [403, 'node may not serve Arith', CloseCode.UNAUTHORIZED],
    [429, 'too many connections from 127.0.0.1', CloseCode.ABNORMAL],
    [503, 'relay is full', CloseCode.ABNORMAL],
  ])('HTTP %i is "HTTP <status>: %s" and close code %i (401 and 403: the 4003 of a refused hello)', async (status, reason, code) => {
    const { url } = await refusingServer(status, reason);
    const end = await ending(new RelayDial(url, base));
    expect(end).toEqual({ code, reason: `HTTP ${status}: ${reason}`, mayBeTls: false });
  });

  it('without X-Tunnel-Reason the status text is the reason', async () => {
    const { url } = await refusingServer(503, undefined);
    expect((await ending(new RelayDial(url, base))).reason).toBe('HTTP 503: Service Unavailable');
  });

  it('sends the token as a bearer credential, and none without one', async () => {
    const seen: Array<string | undefined> = [];
    const { url } = await refusingServer(401, 'token refused', (auth) => {
      seen.push(auth);
      return auth === 'Bearer s3cret-token';
    });
    const right = new RelayDial(url, { ...base, token: 's3cret-token' });
    await once(right.ws, 'open', { signal: AbortSignal.timeout(WAIT) });
    right.ws.close();
    expect((await ending(new RelayDial(url, base))).reason).toBe('HTTP 401: token refused');
    expect(seen).toEqual(['Bearer s3cret-token', undefined]);
  });
});

describe('the close of a dial that was not refused', () => {
  it("is the relay's own code and reason", async () => {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await once(wss, 'listening');
    cleanups.push(() => new Promise((r) => wss.close(r)));
    wss.on('connection', (ws: WebSocket) => ws.close(CloseCode.UNAUTHORIZED, 'node token refused'));
    const end = await ending(new RelayDial(`ws://127.0.0.1:${portOf(wss)}/`, base));
    expect(end).toEqual({ code: CloseCode.UNAUTHORIZED, reason: 'node token refused', mayBeTls: false });
  });

  it('is the socket error when the connection never opened', async () => {
    // A port that was just free: nothing listens there.
    const server = createTcpServer().listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = portOf(server);
    await new Promise((r) => server.close(r));
    const end = await ending(new RelayDial(`ws://127.0.0.1:${port}/`, base));
    expect(end).toEqual({ code: CloseCode.ABNORMAL, reason: `connect ECONNREFUSED 127.0.0.1:${port}`, mayBeTls: false });
  });

  it('goes to the address given, keeping the name in the Host header', async () => {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await once(wss, 'listening');
    cleanups.push(() => new Promise((r) => wss.close(r)));
    const hosts: Array<string | undefined> = [];
    wss.on('connection', (ws: WebSocket, req) => {
      hosts.push(req.headers.host);
      ws.close(1000, 'bye');
    });
    const port = portOf(wss);
    // An .invalid name never resolves (RFC 6761): only the pinned address can reach the server.
    const dial = new RelayDial(`ws://relay.invalid:${port}/`, { ...base, address: { address: '127.0.0.1', family: 4 } });
    expect(await ending(dial)).toMatchObject({ code: 1000, reason: 'bye' });
    expect(hosts).toEqual([`relay.invalid:${port}`]);
  });
});

describe('the connect deadline', () => {
  it('a server that accepts TCP and never answers: no WebSocket handshake within the deadline', async () => {
    const silent = await silentServer();
    const dial = new RelayDial(silent.url, {
      ...base,
      connectTimeout: 300,
      onTimeout: (why) => {
        reasons.push(why);
        dial.ws.terminate();
      },
    });
    const reasons: string[] = [];
    const started = Date.now();
    await ending(dial);
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(silent.accepted()).toBe(1);
    expect(reasons).toEqual([
      'no WebSocket handshake within 300 ms (something accepts connections there but does not answer as a relay: a firewall, another program, or a TLS port dialled with ws://?)',
    ]);
  });

  it('fires at the deadline, not before; says so when the WebSocket opened; welcomed() stops it', async () => {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await once(wss, 'listening');
    cleanups.push(() => new Promise((r) => wss.close(r)));
    const url = `ws://127.0.0.1:${portOf(wss)}/`;
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const reasons: string[] = [];
    const silent = new RelayDial(url, { ...base, connectTimeout: 5_000, onTimeout: (why) => reasons.push(`silent: ${why}`) });
    const welcomed = new RelayDial(url, { ...base, connectTimeout: 5_000, onTimeout: (why) => reasons.push(`welcomed: ${why}`) });
    await Promise.all([once(silent.ws, 'open'), once(welcomed.ws, 'open')]);
    welcomed.welcomed();
    vi.advanceTimersByTime(4_999);
    expect(reasons).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(reasons).toEqual(['silent: the WebSocket opened but no welcome came within 5000 ms']);
    vi.advanceTimersByTime(60_000);
    expect(reasons).toHaveLength(1);
    vi.useRealTimers();
    silent.ws.close();
    welcomed.ws.close();
  });

  it('ended() stops it too', async () => {
    const { url } = await refusingServer(503, 'relay is full');
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const reasons: string[] = [];
    const dial = new RelayDial(url, { ...base, connectTimeout: 5_000, onTimeout: (why) => reasons.push(why) });
    await ending(dial);
    vi.advanceTimersByTime(60_000);
    expect(reasons).toEqual([]);
  });
});

describe('TLS mistakes', () => {
  const certs = certDir();
  let tls: HttpsServer;
  let tlsPort: number;

  beforeAll(async () => {
    makeCerts(certs.dir, []);
    tls = createHttpsServer({ cert: readFileSync(certs.file('relay.crt')), key: readFileSync(certs.file('relay.key')) });
    const wss = new WebSocketServer({ server: tls });
    wss.on('connection', (ws: WebSocket) => ws.close(1000, 'welcome over TLS'));
    tls.listen(0, '127.0.0.1');
    await once(tls, 'listening');
    tlsPort = portOf(tls);
  });
  afterAll(async () => {
    tls.closeAllConnections();
    await new Promise((r) => tls.close(r));
    certs.remove();
  });

  it('ws:// to a TLS port may be TLS, and the probe says use wss://', async () => {
    const dial = new RelayDial(`ws://127.0.0.1:${tlsPort}/`, base);
    const end = await ending(dial);
    expect(end.mayBeTls).toBe(true);
    expect(end.code).toBe(CloseCode.ABNORMAL);
    expect(end.reason).toMatch(/socket hang up|ECONNRESET/);
    expect(await dial.probeTls(WAIT)).toBe(USE_WSS);
  });

  it('ws:// to a port that hangs up but is not TLS: the probe says nothing', async () => {
    const server = createTcpServer((s) => s.destroy());
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanups.push(() => new Promise((r) => server.close(r)));
    const dial = new RelayDial(`ws://127.0.0.1:${portOf(server)}/`, base);
    expect((await ending(dial)).mayBeTls).toBe(true);
    expect(await dial.probeTls(WAIT)).toBeUndefined();
  });

  it('wss:// with a private CA and no --ca: the hint to pass it; a wrong --ca: that it is not the one', async () => {
    const url = `wss://127.0.0.1:${tlsPort}/`;
    const noCa = await ending(new RelayDial(url, { ...base, tls: { rejectUnauthorized: true } }));
    expect(noCa.reason).toMatch(new RegExp(`; ${escape(CA_HINT)}$`));
    expect(noCa.mayBeTls).toBe(false);
    const other = certDir();
    cleanups.push(() => other.remove());
    makeCerts(other.dir, []);
    const wrongCa = await ending(new RelayDial(url, { ...base, tls: { rejectUnauthorized: true, ca: readFileSync(other.file('ca.crt')) } }));
    expect(wrongCa.reason).toMatch(/; the --ca given is not the CA that signed the relay's certificate$/);
  });

  it('wss:// with the right CA opens', async () => {
    const dial = new RelayDial(`wss://127.0.0.1:${tlsPort}/`, { ...base, tls: { rejectUnauthorized: true, ca: readFileSync(certs.file('ca.crt')) } });
    expect(await ending(dial)).toEqual({ code: 1000, reason: 'welcome over TLS', mayBeTls: false });
  });

  it('wss:// to a plain port that hangs up on a ClientHello (what the relay does): use ws://', async () => {
    const server = createTcpServer((s) => s.once('data', () => s.destroy()));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanups.push(() => new Promise((r) => server.close(r)));
    const end = await ending(new RelayDial(`wss://127.0.0.1:${portOf(server)}/`, { ...base, tls: { rejectUnauthorized: true } }));
    expect(end.reason).toMatch(new RegExp(`; ${escape(USE_WS)}$`));
    expect(end.mayBeTls).toBe(false);
  });
});

describe('resolveAll', () => {
  type Found = Array<{ address: string; family: number }>;
  const lookup = (found: Found | Error) =>
    ((_host: string, _options: unknown, callback: (err: Error | null, found?: Found) => void) => {
      if (found instanceof Error) callback(found);
      else callback(null, found);
    }) as never;

  it('an IP literal is its own address, asking no resolver', async () => {
    const never = (() => expect.fail('asked the resolver')) as never;
    expect(await resolveAll('127.0.0.1', never)).toEqual([{ address: '127.0.0.1', family: 4 }]);
    expect(await resolveAll('::1', never)).toEqual([{ address: '::1', family: 6 }]);
  });

  it("every address of a name, in the resolver's order, at most MAX_ADDRESSES, dropping what is not an address", async () => {
    const many = Array.from({ length: MAX_ADDRESSES + 4 }, (_, i) => ({ address: `127.0.0.${i + 1}`, family: 4 }));
    const found = await resolveAll('relay.invalid', lookup([{ address: 'junk', family: 4 }, ...many]));
    expect(found).toEqual(many.slice(0, MAX_ADDRESSES));
  });

  it("a resolver's error, and a name with no usable address, reject", async () => {
    await expect(resolveAll('relay.invalid', lookup(new Error('getaddrinfo ENOTFOUND relay.invalid')))).rejects.toThrow('ENOTFOUND');
    await expect(resolveAll('relay.invalid', lookup([]))).rejects.toThrow('relay.invalid resolved to no address');
  });
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}
