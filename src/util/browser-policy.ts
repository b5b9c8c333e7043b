import type { IncomingHttpHeaders } from 'node:http';
import { AddressError, hostName, isLoopbackHost } from './address.js';

/**
 * Which web pages may reach the relay. Browsers are hostile callers: a page on any site can POST to
 * the gateway (CSRF), open a WebSocket, or rebind its own DNS name to 127.0.0.1 and read what a
 * loopback relay answers. Browsers always send `Origin` on those requests and the page's own name in
 * `Host`; other clients (ws, curl, Go, Python) send no `Origin` and are never refused here.
 */
export interface BrowserOptions {
  /**
   * Origins (`scheme://host[:port]`, e.g. `https://app.example`) whose pages may call through the
   * gateway and open WebSockets; `*` allows every origin. A request carrying any other `Origin`
   * header is refused with 403 (default: none, so every browser request is refused).
   */
  allowOrigin?: string[];
  /**
   * `Host` header names accepted besides the loopback ones (localhost, 127.x.x.x, [::1]). A relay
   * listening on loopback accepts only loopback names unless this names more (DNS rebinding); on
   * other addresses `Host` is not checked unless this is given (default: none).
   */
  allowHost?: string[];
}

/** Why a request was refused, and the metric label it is counted under. */
export interface BrowserRefusal {
  reason: string;
  metric: 'forbidden_origin' | 'forbidden_host';
}

/** The option names used in messages: the library's, or the CLI's flags. */
const OPTION_NAMES = { allowOrigin: 'Relay option allowOrigin', allowHost: 'Relay option allowHost' };

export class BrowserPolicy {
  private readonly anyOrigin: boolean;
  private readonly origins: Set<string>;
  private readonly hosts: Set<string> | undefined;

  constructor(options: BrowserOptions, names = OPTION_NAMES) {
    const origins = listOption(options.allowOrigin, names.allowOrigin).map((o) => originKey(o, names.allowOrigin));
    this.anyOrigin = origins.includes('*');
    this.origins = new Set(origins);
    const hosts = listOption(options.allowHost, names.allowHost);
    this.hosts = hosts.length === 0 ? undefined : new Set(hosts.map((h) => hostName(h, names.allowHost)));
  }

  /** Whether a page from `origin` (the header as received) may call. */
  allowsOrigin(origin: string): boolean {
    if (this.anyOrigin) return true;
    const key = receivedOrigin(origin);
    return key !== undefined && this.origins.has(key);
  }

  /**
   * Why a request is refused, or undefined when it may go on. `loopbackListener`: the listener it
   * arrived on is bound to a loopback address, where only loopback `Host` names are accepted.
   */
  check(headers: IncomingHttpHeaders, loopbackListener: boolean): BrowserRefusal | undefined {
    const origin = headers.origin;
    if (origin !== undefined && !this.allowsOrigin(origin)) {
      return { metric: 'forbidden_origin', reason: `origin ${quote(origin)} is not allowed on this relay; its operator can allow it with --allow-origin` };
    }
    const host = headers.host;
    if (host === undefined || (!loopbackListener && this.hosts === undefined)) return undefined;
    const name = receivedHost(host);
    if (name !== undefined && (isLoopbackHost(name) || this.hosts?.has(name))) return undefined;
    const accepted = loopbackListener
      ? 'this relay listens on loopback and accepts only localhost, 127.x.x.x and [::1]'
      : 'this relay accepts only loopback names';
    return { metric: 'forbidden_host', reason: `host ${quote(host)} is not allowed: ${accepted}, and the names given with --allow-host` };
  }
}

/** `scheme://host[:port]` lower-case, default port left out, as browsers send it; or `*`. */
export function originKey(text: string, what: string): string {
  if (text === '*') return '*';
  const bad = (why: string) => new AddressError(`${what} ${quote(text)}: ${why}; give scheme://host[:port], e.g. https://app.example, or * for any origin`);
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw bad('not an origin');
  }
  if (url.host === '') throw bad('no host');
  if (url.username !== '' || url.password !== '' || (url.pathname !== '' && url.pathname !== '/') || url.search !== '' || url.hash !== '') {
    throw bad('an origin has no path, query or user');
  }
  return `${url.protocol}//${url.host}`.toLowerCase();
}

function receivedOrigin(origin: string): string | undefined {
  try {
    return originKey(origin, 'Origin');
  } catch {
    return undefined;
  }
}

/** The name in a `Host` header (`name[:port]` or `[v6][:port]`), or undefined when malformed. */
function receivedHost(host: string): string | undefined {
  const m = /^\[([^\]]+)\](?::\d*)?$/.exec(host) ?? /^([^:[\]]+)(?::\d*)?$/.exec(host);
  return m ? m[1]!.toLowerCase().replace(/\.$/, '') : undefined;
}

function listOption(value: unknown, what: string): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) throw new TypeError(`${what} must be an array of strings`);
  return value as string[];
}

/** A peer's header value in a message: quoted, bounded. */
function quote(text: string): string {
  return JSON.stringify(text.length > 100 ? `${text.slice(0, 100)}...` : text);
}
