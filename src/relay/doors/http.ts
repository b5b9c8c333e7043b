import type { IncomingMessage, ServerResponse } from 'node:http';
import { ErrorCode, TunnelError } from '../../errors.js';
import { decodeResult, encodeParams } from '../../rpc/body.js';
import { peerAddress } from '../../util/address.js';
import { parseDuration } from '../../util/units.js';
import { Kind } from '../../wire/messages.js';
import type { CallerOutput, GatewaySession } from '../contracts.js';
import { headerSafe } from '../listener.js';
import type { Logger } from '../../util/logger.js';
import type { BrowserPolicy } from '../../util/browser-policy.js';
import type { NodeInfo } from '../../wire/presence.js';
import type { Credential } from '../auth.js';
import type { DashboardDoor } from '../dashboard/routes.js';
import type { MemoryBudget } from '../memory.js';
import { retryAfter } from '../auth-failures.js';

/** What the HTTP endpoints need from the relay. */
export interface HttpHost {
  readonly log: Logger;
  readonly metrics: { render(): Promise<string>; readonly contentType: string };
  readonly browsers: BrowserPolicy;
  readonly draining: boolean;
  /** Largest request body, bytes. */
  readonly maxBody: number;
  /** The relay's memory budget: bodies being read and answers not yet written count in it. */
  readonly memory?: Pick<MemoryBudget, 'pressed' | 'describe' | 'add'>;
  readiness(): { ready: boolean; reasons: string[] };
  nodes(): NodeInfo[];
  /** Caller sessions (sessions.ts): `admit` checks a caller's token (throws UNAUTHORIZED), `openGateway` opens one request's session. */
  readonly sessions: {
    admit(token: string | undefined, address: string, door: 'http'): { identity: string | null; credential: Credential };
    openGateway(address: string, identity: string | null, transport: CallerOutput, credential?: Credential): GatewaySession;
  };
  /** The live dashboard, when the relay serves one (dashboard/routes.ts). */
  readonly dashboard?: { handle(req: IncomingMessage, res: ServerResponse, url: URL, door: DashboardDoor): Promise<void> } | undefined;
}

/** Which endpoints a listener serves. */
export interface HttpRoutes {
  /** `POST /call/Service.Method`. */
  gateway: boolean;
  /** `/metrics` and `/nodes`; `/healthz` and `/readyz` are served everywhere. */
  admin: boolean;
  /** Answer for paths nobody serves: 426 on the WebSocket port, 404 on the admin port. */
  fallback: 'upgrade' | 'not-found';
  /** `/dashboard` and below, as the admin listener serves them or the public port (token required); absent: 404. */
  dashboard?: DashboardDoor | undefined;
}

/** HTTP status of each error code a gateway call can end with; anything else is 500. */
export const HTTP_STATUS: Record<string, number> = {
  [ErrorCode.BAD_REQUEST]: 400,
  [ErrorCode.UNAUTHORIZED]: 401,
  [ErrorCode.NOT_LOGGED_IN]: 401,
  [ErrorCode.LOGIN_FAILED]: 403,
  [ErrorCode.FORBIDDEN]: 403,
  [ErrorCode.NO_SERVICE]: 404,
  [ErrorCode.NO_METHOD]: 404,
  [ErrorCode.NO_NODE]: 404,
  [ErrorCode.TOO_LARGE]: 413,
  [ErrorCode.OVERLOADED]: 429,
  [ErrorCode.APP_ERROR]: 500,
  [ErrorCode.NODE_LOST]: 502,
  [ErrorCode.PROTOCOL_ERROR]: 502,
  [ErrorCode.CONNECTION_CLOSED]: 502,
  [ErrorCode.GOING_AWAY]: 503,
  [ErrorCode.TIMEOUT]: 504,
};

const JSON_TYPE = 'application/json; charset=utf-8';

/** Returns the request handler of one listener of `relay`. */
export function httpHandler(relay: HttpHost, routes: HttpRoutes): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    route(relay, routes, req, res).catch((err: unknown) => {
      relay.log.error({ err, url: req.url?.replace(/([?&]token=)[^&#]*/gi, '$1[redacted]') }, 'http handler failed');
      if (!res.headersSent) sendError(res, new TunnelError(ErrorCode.APP_ERROR, 'internal error in the relay; see its log'));
      else res.destroy();
    });
  };
}

async function route(relay: HttpHost, routes: HttpRoutes, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://relay');
  const path = url.pathname;
  if (routes.gateway && path.startsWith('/call/')) {
    if (cors(relay, req, res)) return;
    return gatewayCall(relay, req, res, url);
  }
  if (path === '/healthz') return send(res, 200, 'text/plain; charset=utf-8', 'ok\n');
  if (path === '/readyz') {
    const r = relay.readiness();
    return send(res, r.ready ? 200 : 503, JSON_TYPE, `${JSON.stringify(r)}\n`);
  }
  if (routes.admin && path === '/metrics') {
    const text = await relay.metrics.render();
    return send(res, 200, relay.metrics.contentType, text);
  }
  if (routes.admin && path === '/nodes') return send(res, 200, JSON_TYPE, `${JSON.stringify(relay.nodes())}\n`);
  if (path === '/dashboard' || path.startsWith('/dashboard/')) {
    if (routes.dashboard && relay.dashboard) return relay.dashboard.handle(req, res, url, routes.dashboard);
    return send(
      res,
      404,
      'text/plain; charset=utf-8',
      'the dashboard is served on the admin listener (--admin-listen), and on this port only with --dashboard-token\n',
    );
  }
  if (!routes.admin && (path === '/metrics' || path === '/nodes')) {
    return send(res, 404, 'text/plain; charset=utf-8', `${path} is served on the admin listener (--admin-listen), not on this port\n`);
  }
  if (routes.fallback === 'not-found')
    return send(res, 404, 'text/plain; charset=utf-8', `no such endpoint: ${path}; try /healthz, /readyz, /metrics, /nodes, /dashboard\n`);
  res.writeHead(426, { 'content-type': 'text/plain; charset=utf-8', upgrade: 'websocket' });
  res.end('This is a tunnel relay. Connect with tunnel-node or tunnel-call (WebSocket), ' + 'or POST a JSON array of arguments to /call/Service.Method.\n');
}

/**
 * One gateway call: one HTTP request is one session, routed through the same CallerLink code as a
 * WebSocket caller. The session ends with the response, so a Login does not carry over to the next request.
 */
async function gatewayCall(relay: HttpHost, req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
  if (req.method !== 'POST') {
    res.setHeader('allow', 'POST');
    return sendError(res, new TunnelError(ErrorCode.BAD_REQUEST, `use POST with a JSON array of arguments, not ${req.method}`), 405);
  }
  let method: string;
  try {
    method = decodeURIComponent(url.pathname.slice('/call/'.length));
  } catch {
    return sendError(res, new TunnelError(ErrorCode.BAD_REQUEST, 'the method in the path is not valid percent-encoding'));
  }
  if (relay.draining) {
    return sendError(res, new TunnelError(ErrorCode.GOING_AWAY, 'the relay is going away and takes no new calls; try again on another relay'));
  }
  const address = peerAddress(req.socket);
  let admitted: { identity: string | null; credential: Credential };
  let meta: { timeout?: number; node?: string };
  let params: Buffer;
  try {
    admitted = relay.sessions.admit(bearerToken(req.headers.authorization), address, 'http');
    meta = callMeta(url);
    if (relay.memory?.pressed) throw new TunnelError(ErrorCode.OVERLOADED, relay.memory.describe());
    params = encodeParams(parseArgs(await readBody(req, relay.maxBody, relay.memory)));
  } catch (err) {
    const e = TunnelError.from(err);
    if (e.code === ErrorCode.UNAUTHORIZED) refuseCredential(res, e);
    return sendError(res, e);
  }
  const transport: CallerOutput = {
    respond(_id, error, bytes) {
      session.close();
      if (error) return sendError(res, TunnelError.fromWire(error));
      let result: unknown;
      try {
        result = decodeResult(bytes);
      } catch (err) {
        return sendError(res, TunnelError.from(err));
      }
      send(res, 200, JSON_TYPE, `${toJson({ result })}\n`);
      // An answer the client does not read stays charged to the relay's budget until written.
      if (relay.memory && res.writableLength > 0) {
        const release = relay.memory.add({ held: () => res.writableLength, shed: () => res.destroy(), who: { door: 'http', address } });
        res.once('close', release);
        res.once('finish', release);
      }
    },
  };
  if (req.socket.destroyed) return;
  // With the credential, a reload that revokes the token answers this call UNAUTHORIZED.
  const session = relay.sessions.openGateway(address, admitted.identity, transport, admitted.credential);
  // The HTTP client gave up: the session closes, which aborts the call on the node.
  res.once('close', () => session.close());
  session.link.onMessage({ kind: Kind.REQUEST, id: 1, method, params, meta, stream: 0 });
}

/**
 * CORS for pages from allowed origins (a foreign origin never gets here: the relay refused it):
 * answers the preflight, and lets the page read the answer. Returns true when it answered.
 */
function cors(relay: HttpHost, req: IncomingMessage, res: ServerResponse): boolean {
  res.setHeader('vary', 'Origin');
  const origin = req.headers.origin;
  if (origin === undefined || !relay.browsers.allowsOrigin(origin)) return false;
  res.setHeader('access-control-allow-origin', origin);
  if (req.method !== 'OPTIONS') return false;
  res.writeHead(204, {
    'access-control-allow-methods': 'POST',
    'access-control-allow-headers': 'authorization, content-type',
    'access-control-max-age': '600',
  });
  res.end();
  return true;
}

/**
 * Before an answer that refuses a credential: the connection closes after it (a guesser pays a new
 * connection per try, as on the other doors), and a back-off says when to come back.
 */
export function refuseCredential(res: ServerResponse, err: TunnelError): void {
  res.setHeader('connection', 'close');
  const after = retryAfter(err);
  if (after !== undefined) res.setHeader('retry-after', String(after));
}

/** Answers a request the relay refuses with 403 FORBIDDEN, the reason also in X-Tunnel-Reason. */
export function refuseRequest(res: ServerResponse, reason: string): void {
  if (res.headersSent || res.destroyed) return;
  res.setHeader('x-tunnel-reason', headerSafe(reason));
  sendError(res, new TunnelError(ErrorCode.FORBIDDEN, reason));
}

function bearerToken(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (!m) throw new TunnelError(ErrorCode.UNAUTHORIZED, 'the Authorization header must be "Bearer <token>"');
  return m[1];
}

function callMeta(url: URL): { timeout?: number; node?: string } {
  const meta: { timeout?: number; node?: string } = {};
  const timeout = url.searchParams.get('timeout');
  if (timeout !== null) {
    let ms: number;
    try {
      ms = parseDuration(timeout, 'timeout');
    } catch {
      throw new TunnelError(ErrorCode.BAD_REQUEST, `?timeout= must be a duration such as 500ms, 30s or a number of milliseconds; got "${timeout}"`);
    }
    if (!(ms > 0)) throw new TunnelError(ErrorCode.BAD_REQUEST, '?timeout= must be more than 0');
    meta.timeout = ms;
  }
  const node = url.searchParams.get('node');
  if (node !== null) meta.node = node;
  return meta;
}

function parseArgs(body: string): unknown[] {
  if (body.trim() === '') return [];
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch (err) {
    throw new TunnelError(ErrorCode.BAD_REQUEST, `the body is not valid JSON (${(err as Error).message}); send a JSON array of arguments such as [2,3]`);
  }
  if (!Array.isArray(value)) throw new TunnelError(ErrorCode.BAD_REQUEST, 'the body must be a JSON array of arguments, e.g. [2,3]; send [] for none');
  return value;
}

function readBody(req: IncomingMessage, limit: number, memory?: Pick<MemoryBudget, 'add'>): Promise<string> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > limit) {
    req.resume();
    return Promise.reject(new TunnelError(ErrorCode.TOO_LARGE, `the body is ${declared} bytes; this relay accepts at most ${limit}`));
  }
  let size = 0;
  // A body arriving slowly is memory held for that client: it counts in the budget while it is read.
  const release = memory?.add({ held: () => size, shed: () => req.destroy(), who: { door: 'http', address: peerAddress(req.socket) } });
  return new Promise<string>((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.removeAllListeners('data');
        req.resume();
        reject(new TunnelError(ErrorCode.TOO_LARGE, `the body is over ${limit} bytes, the most this relay accepts`));
        return;
      }
      chunks.push(chunk);
    });
    req.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.once('error', reject);
    req.once('close', () => reject(new TunnelError(ErrorCode.CANCELLED, 'the HTTP client went away before sending the whole body')));
  }).finally(() => release?.());
}

/** JSON with the two MessagePack values JSON lacks: 64-bit integers as strings, bytes as base64. */
function toJson(value: unknown): string {
  return JSON.stringify(value, function (this: Record<string, unknown>, key, v: unknown) {
    const original = this[key];
    if (original instanceof Uint8Array) return Buffer.from(original.buffer, original.byteOffset, original.byteLength).toString('base64');
    return typeof v === 'bigint' ? v.toString() : v;
  });
}

function sendError(res: ServerResponse, err: TunnelError, status = HTTP_STATUS[err.code] ?? 500): void {
  send(res, status, JSON_TYPE, `${toJson({ error: err.toWire() })}\n`);
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}
