import type { IncomingMessage, ServerResponse } from 'node:http';
import { ErrorCode, TunnelError } from '../../errors.js';
import { peerAddress } from '../../util/address.js';
import type { DashboardHost } from './host.js';

/** The operator actions, by the last segment of their path (`POST /dashboard/actions/<name>`). */
export const ACTIONS = {
  'drain-node': { field: 'node', run: (h: DashboardHost, target: string, reason: string) => h.drainNode(target, reason) },
  'undrain-node': { field: 'node', run: (h: DashboardHost, target: string, reason: string) => h.undrainNode(target, reason) },
  'disconnect-node': { field: 'node', run: (h: DashboardHost, target: string, reason: string) => h.disconnectNode(target, reason) },
  'disconnect-caller': { field: 'session', run: (h: DashboardHost, target: string, reason: string) => h.disconnectCaller(target, reason) },
} as const;

export type ActionName = keyof typeof ACTIONS;

/** Largest body of an action request, bytes: `{"node": "<a name of at most 128 characters>"}`. */
const MAX_BODY = 4 * 1024;

/** `POST /dashboard/actions/check`: 204 when an action would be let through (origin, admin token), else 401 or 403 as for one. */
const CHECK = 'check';

/** Who performs actions: the holder of the relay's one admin token. */
const ADMIN = 'admin';

/**
 * `POST /dashboard/actions/<name>` with `{"node": NAME}` or `{"session": ID}` (`check`: no body, 204 when
 * the token would be let through, nothing done). Refused cross-origin
 * (403), without the admin token (401), or when the relay has none (403: actions are disabled). Each
 * action is logged (`dashboard action`) and recorded on the relay's event bus.
 */
export async function runAction(
  host: DashboardHost,
  adminToken: ((token: string | undefined) => boolean) | undefined,
  name: string,
  req: IncomingMessage,
  res: ServerResponse,
  token: string | undefined,
): Promise<void> {
  if (req.method !== 'POST') {
    res.setHeader('allow', 'POST');
    return answer(res, 405, new TunnelError(ErrorCode.BAD_REQUEST, `actions are POST requests, not ${req.method}`));
  }
  const foreign = crossOrigin(req);
  if (foreign !== undefined) return answer(res, 403, new TunnelError(ErrorCode.FORBIDDEN, foreign));
  if (!adminToken)
    return answer(res, 403, new TunnelError(ErrorCode.FORBIDDEN, 'actions are disabled on this relay: start it with --admin-token (or TUNNEL_ADMIN_TOKEN)'));
  if (!adminToken(token)) {
    res.setHeader('www-authenticate', 'Bearer realm="tunnel-relay dashboard actions"');
    return answer(
      res,
      401,
      new TunnelError(ErrorCode.UNAUTHORIZED, 'actions need the admin token: send "Authorization: Bearer <token>" (the value of --admin-token)'),
    );
  }
  // The page checks a token as soon as it is typed in: the same checks as an action, nothing done.
  if (name === CHECK) {
    res.writeHead(204, { 'cache-control': 'no-store' }).end();
    return;
  }
  if (!Object.hasOwn(ACTIONS, name)) {
    return answer(
      res,
      404,
      new TunnelError(ErrorCode.BAD_REQUEST, `no action ${JSON.stringify(name.slice(0, 64))}; actions: ${Object.keys(ACTIONS).join(', ')}`),
    );
  }
  const action = ACTIONS[name as ActionName];
  let target: string;
  try {
    target = targetOf(await readBody(req), action.field);
  } catch (err) {
    return answer(res, 400, TunnelError.from(err));
  }
  const address = peerAddress(req.socket);
  try {
    action.run(host, target, `${name} by an operator from the dashboard`);
  } catch (err) {
    const e = TunnelError.from(err);
    return answer(res, e.code === ErrorCode.NO_NODE || e.code === ErrorCode.CONNECTION_CLOSED ? 404 : 409, e);
  }
  host.log.info({ action: name, target, by: ADMIN, peer: address }, 'dashboard action');
  host.events.audit({ kind: 'action', action: name, target, by: ADMIN, address, ...(action.field === 'node' ? { node: target } : { session: target }) });
  send(res, 200, { ok: true, action: name, target });
}

/** Why a request is not from the dashboard's own page, or undefined when it is (or comes from no browser). */
export function crossOrigin(req: IncomingMessage): string | undefined {
  const origin = req.headers.origin;
  if (origin !== undefined && !sameOrigin(req))
    return `origin ${JSON.stringify(origin.slice(0, 100))} may not act on this relay: actions come from the dashboard's own page`;
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none')
    return `a ${site} request may not act on this relay: actions come from the dashboard's own page`;
  return undefined;
}

/** The request's `Origin` names the host it was sent to: the relay's own page sent it. */
export function sameOrigin(req: IncomingMessage): boolean {
  const origin = req.headers.origin;
  const host = req.headers.host;
  if (origin === undefined || host === undefined) return false;
  try {
    const url = new URL(origin);
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.host === new URL(`http://${host}`).host;
  } catch {
    return false;
  }
}

function targetOf(body: string, field: 'node' | 'session'): string {
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    throw new TunnelError(ErrorCode.BAD_REQUEST, `the body must be JSON such as {"${field}": "..."}`);
  }
  const target = (value as Record<string, unknown> | null)?.[field];
  if (typeof target !== 'string' || target === '' || target.length > 256) {
    throw new TunnelError(ErrorCode.BAD_REQUEST, `the body must name the ${field}: {"${field}": "..."}`);
  }
  return target;
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        req.removeAllListeners('data');
        req.resume();
        reject(new TunnelError(ErrorCode.TOO_LARGE, `an action's body is at most ${MAX_BODY} bytes`));
        return;
      }
      chunks.push(chunk);
    });
    req.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.once('error', reject);
  });
}

function answer(res: ServerResponse, status: number, err: TunnelError): void {
  send(res, status, { error: err.toWire() });
}

function send(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent || res.destroyed) return;
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}
