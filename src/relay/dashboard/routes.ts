import { createHash, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { fileURLToPath } from 'node:url';
import { peerAddress, peerIp } from '../../util/address.js';
import { retryAfter } from '../auth-failures.js';
import { runAction } from './actions.js';
import { DashboardFeed, type FeedOptions } from './feed.js';
import type { DashboardHost } from './host.js';
import { TrafficStats, type TrafficOptions } from './traffic.js';

/** Settings of the {@link Dashboard}. */
export interface DashboardOptions {
  /** The relay's version, shown in the page. */
  version: string;
  /** Opens the page and its feed on the public port; without it they are served on the admin listener only. */
  dashboardToken?: string;
  /** Enables the actions (drain, disconnect) for whoever presents it; without it they are disabled. */
  adminToken?: string;
  feed?: Omit<FeedOptions, 'version' | 'actions'>;
  traffic?: TrafficOptions;
}

/** Where a request arrived: the admin listener (operators only) or the public port (the dashboard token is required). */
export type DashboardDoor = 'admin' | 'public';

/** Whether a request URL is the dashboard's: the same-origin requests of its page are let through (relay.ts). */
export function isDashboardUrl(url: string | undefined): boolean {
  return url !== undefined && /^\/dashboard(?:[/?#]|$)/.test(url);
}

/** The files of the page, served as they are: no build step, no CDN. */
const FILES: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
};

/** The page's own scripts, styles and feed; nothing from elsewhere, and never in a frame. */
const PAGE_HEADERS = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'referrer-policy': 'no-referrer',
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'cache-control': 'no-store',
};

/**
 * tsc does not copy the static files: running from dist/, they are read where the package ships
 * them, under src/ (package.json `files`); running from the sources, they are beside this module.
 */
function staticDir(): string | undefined {
  for (const rel of ['./static/', '../../../../src/relay/dashboard/static/']) {
    const dir = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(`${dir}index.html`)) return dir;
  }
  return undefined;
}

/**
 * The relay's live dashboard: `GET /dashboard` (the page), its static files, `GET /dashboard/events`
 * (the live feed, server-sent events) and `POST /dashboard/actions/*`. It counts traffic from the
 * relay's call observer ({@link callEnded}) and reads everything else from its {@link DashboardHost}.
 */
export class Dashboard {
  readonly traffic: TrafficStats;
  readonly feed: DashboardFeed;
  private readonly viewerDigests: Buffer[];
  private readonly adminDigest: Buffer | undefined;
  private files: Map<string, Buffer> | undefined;

  constructor(
    private readonly host: DashboardHost,
    options: DashboardOptions,
  ) {
    for (const key of ['dashboardToken', 'adminToken'] as const) {
      const token = options[key];
      if (token !== undefined && (typeof token !== 'string' || !/^\S{1,4096}$/.test(token))) {
        throw new TypeError(`Relay option ${key} must be a non-empty string without spaces`);
      }
    }
    this.adminDigest = options.adminToken === undefined ? undefined : digest(options.adminToken);
    // The admin token opens the page too: whoever may act may look.
    this.viewerDigests = [options.dashboardToken, options.adminToken].filter((t): t is string => t !== undefined).map(digest);
    this.traffic = new TrafficStats(options.traffic);
    this.feed = new DashboardFeed(host, this.traffic, { ...options.feed, version: options.version, actions: this.adminDigest !== undefined });
  }

  /** A call ended: see {@link TrafficStats.record}. */
  callEnded(method: string, code: string, seconds: number | undefined, known: boolean): void {
    this.traffic.record(method, code, seconds, known);
  }

  /** Answers a request for `/dashboard` or below. */
  async handle(req: IncomingMessage, res: ServerResponse, url: URL, door: DashboardDoor): Promise<void> {
    const path = url.pathname;
    const token = bearer(req.headers.authorization);
    const name = path === '/dashboard' ? 'index.html' : path.slice('/dashboard/'.length);
    const actions = path.startsWith('/dashboard/actions/');
    const ack = path === '/dashboard/events/ack';
    // Where a token decides the answer, it is a credential: guessed ones count against the address on every door.
    const guarded = actions || (door === 'public' && (path === '/dashboard/events' || ack || name === 'index.html'));
    const presented = [token, name === 'index.html' ? (url.searchParams.get('token') ?? undefined) : undefined].filter((t) => t !== undefined);
    const authDoor = door === 'admin' ? 'admin' : 'dashboard';
    const backedOff = guarded && presented.length > 0 ? this.host.authFailures?.refusal(peerIp(req.socket), authDoor) : undefined;
    if (backedOff) return unauthorized(res, backedOff.message, retryAfter(backedOff));
    const wrong = (what: string) => this.wrongToken(req, res, authDoor, what);
    if (actions) {
      const admin = this.adminDigest && ((t: string | undefined) => matches(t, [this.adminDigest!]) || (t !== undefined && wrong('admin token refused')));
      return runAction(this.host, admin, path.slice('/dashboard/actions/'.length), req, res, token);
    }
    const viewer = door === 'admin' || presented.some((t) => matches(t, this.viewerDigests));
    if (guarded && !viewer && presented.length > 0) wrong('dashboard token refused');
    if (ack) return this.ack(req, res, url, viewer);
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      return text(res, 405, `${path} answers GET\n`);
    }
    if (path === '/dashboard/events') {
      if (!viewer) return unauthorized(res, 'the dashboard feed needs the dashboard token: send "Authorization: Bearer <token>"');
      // The admin token holder gets a stream even when the public ones are taken.
      const operator = this.adminDigest !== undefined && matches(token, [this.adminDigest]);
      return this.feed.open(res, peerAddress(req.socket), operator);
    }
    if (!Object.hasOwn(FILES, name)) return text(res, 404, `no such dashboard file: ${path}\n`);
    const files = this.load();
    const body = files?.get(name);
    if (!body) {
      this.host.log.error({ file: name }, 'dashboard files are missing from the package');
      return text(res, 500, `the dashboard's files are missing from this installation (${name}); reinstall tunnel-rpc\n`);
    }
    // On the public port the page itself needs the token too (a ?token= on the first load, which the
    // page then keeps in sessionStorage and removes from the address bar). Without it, the same page
    // answers 401 and asks for the token; it shows no data until the feed accepts one.
    const status = name === 'index.html' && !viewer ? 401 : 200;
    res.writeHead(status, { 'content-type': FILES[name]!, 'content-length': body.length, ...PAGE_HEADERS });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  /** `POST /dashboard/events/ack?stream=ID&seq=N`: 204, or 404 for a stream that is not open (it was cut: reconnect). */
  private ack(req: IncomingMessage, res: ServerResponse, url: URL, viewer: boolean): void {
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST');
      return text(res, 405, `${url.pathname} answers POST\n`);
    }
    if (!viewer) return unauthorized(res, 'acknowledging the dashboard feed needs the dashboard token: send "Authorization: Bearer <token>"');
    const seq = Number(url.searchParams.get('seq'));
    if (!this.feed.ack(url.searchParams.get('stream') ?? '', seq))
      return text(res, 404, 'no such dashboard stream: it was closed; open /dashboard/events again\n');
    res.writeHead(204, { 'cache-control': 'no-store' }).end();
  }

  /** Counts a wrong token from the request's address; always false (the token opens nothing). The first of a burst is logged. */
  private wrongToken(req: IncomingMessage, res: ServerResponse, door: 'dashboard' | 'admin', reason: string): false {
    const address = peerAddress(req.socket);
    if (this.host.authFailures?.failed(peerIp(req.socket), door, reason, address)) {
      this.host.log.warn({ peer: address, door, reason }, 'refused dashboard token');
      this.host.events.audit({ kind: 'refused-request', door, address, reason });
    }
    // The connection closes after the answer, as on the other doors.
    res.setHeader('connection', 'close');
    return false;
  }

  /** Ends the live streams. */
  close(): void {
    this.feed.close();
  }

  private load(): Map<string, Buffer> | undefined {
    if (this.files) return this.files;
    const dir = staticDir();
    if (dir === undefined) return undefined;
    this.files = new Map(Object.keys(FILES).map((f) => [f, readFileSync(`${dir}${f}`)]));
    return this.files;
  }
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}

/** Compares digests in constant time, so that the time taken tells nothing of the token. */
function matches(token: string | undefined, digests: Buffer[]): boolean {
  if (token === undefined || token.length > 4096) return false;
  const d = digest(token);
  let ok = false;
  for (const want of digests) ok = timingSafeEqual(d, want) || ok;
  return ok;
}

function bearer(header: string | undefined): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  return m ? m[1] : undefined;
}

function unauthorized(res: ServerResponse, message: string, retry?: number): void {
  res.setHeader('www-authenticate', 'Bearer realm="tunnel-relay dashboard"');
  if (retry !== undefined) res.setHeader('retry-after', String(retry));
  const body = `${JSON.stringify({ error: { code: 'UNAUTHORIZED', message } })}\n`;
  res.writeHead(401, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(body);
}

function text(res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(body);
}
