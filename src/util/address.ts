import { isIPv6, type Server } from 'node:net';

/**
 * Every address a user or a program gives (flags, config file, library options) goes through this
 * parser. A bare number is a port on this host, never an IPv4 address: the C resolver and WHATWG URL
 * both read `9090` as 0.0.35.130 and `127.1` as 127.0.0.1, so a host that ends in a number must be a
 * plain dotted quad. Errors start with `what` (the flag or option) and the text as given.
 */

/** A parsed address. `host` has no brackets; '' means every interface when listening. */
export interface HostPort {
  host: string;
  port: number;
}

const DOTTED_QUAD = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;
const HOST_LABEL = /^(?=.{1,63}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?$/;
/** What the resolver or URL parser would take for a number: all digits, or 0x hex. */
const NUMERIC_LABEL = /^(?:\d+|0x[0-9a-f]*)$/i;
const PORT = /^\d{1,5}$/;

/** Thrown for an address that is not one of the accepted forms; the message names the flag or option. */
export class AddressError extends TypeError {
  override name = 'AddressError';
}

/**
 * Parses an address to listen on: `host:port`, `[v6]:port`, `:port` or `PORT` (the last two on
 * every interface, host ''). Port 0 picks a free port.
 */
export function listenAddress(text: string, what: string): HostPort {
  return parse(text, what, '', 0);
}

/**
 * Parses an address to connect to: `host:port`, `[v6]:port`, or `:port` / `PORT` on `localHost`
 * (this host). Port 0 is refused: nothing listens there. `shown` is what messages quote, when the
 * address is part of a longer value (`--forward Name=host:port`).
 */
export function dialAddress(text: string, what: string, localHost: string, shown = text): HostPort {
  return parse(text, what, localHost, 1, shown);
}

/**
 * Turns a relay address into a WebSocket URL: `host:port`, `[v6]:port`, `:port` or `PORT`
 * (localhost), or a `ws://` / `wss://` URL whose host is checked as written, before WHATWG URL
 * rewrites a numeric host.
 */
export function relayUrl(text: string, what = 'relay'): string {
  const input = checkText(text, what);
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(input);
  if (!scheme) {
    const { host, port } = dialAddress(input, what, 'localhost');
    return `ws://${inUrl(host)}:${port}/`;
  }
  const proto = scheme[1]!.toLowerCase();
  if (proto !== 'ws' && proto !== 'wss') throw fail(what, text, `unsupported scheme ${proto}://; use ws:// or wss://`);
  const rest = input.slice(scheme[0].length);
  const end = rest.search(/[/\\?#]/);
  const authority = end < 0 ? rest : rest.slice(0, end);
  const path = end < 0 ? '/' : rest.slice(end);
  if (authority.includes('@')) throw fail(what, text, 'no user or password in the URL; give a token with --token (or the token option)');
  if (!/^[\x21-\x7e]*$/.test(path) || path.includes('\\') || path.includes('#')) {
    throw fail(what, text, 'the path must be printable ASCII without \\ or a #fragment');
  }
  const { host, port } = splitHost(authority, text, what);
  if (host === '') throw fail(what, text, 'give the relay host in the URL, e.g. ws://relay.example:9090');
  checkHost(host, text, what);
  let portPart = '';
  if (port !== undefined) portPart = `:${checkPort(port, text, what, 1)}`;
  let url: URL;
  try {
    url = new URL(`${proto}://${inUrl(host)}${portPart}${path.startsWith('/') ? path : `/${path}`}`);
  } catch {
    throw fail(what, text, 'not a valid URL');
  }
  // Belt and braces: the URL must reach the host that was checked, whatever WHATWG made of it.
  const reached = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  if (isIPv6(host) ? !isIPv6(reached) : reached !== host.toLowerCase()) {
    throw fail(what, text, `the URL would reach ${url.hostname}, not ${host}`);
  }
  return url.toString();
}

/**
 * Parses the URL a relay advertises to nodes (`--advertise`): `ws://host[:port]` or
 * `wss://host[:port]` only, checked as {@link relayUrl} checks a relay address. A bare `host:port`
 * is refused: the scheme says whether nodes dial it with TLS, and a bare number would name this host.
 */
export function advertiseUrl(text: string, what: string): string {
  const input = checkText(text, what);
  if (!/^wss?:\/\//i.test(input)) throw fail(what, text, 'give the URL nodes dial to reach this relay: ws://host:port or wss://host:port');
  return relayUrl(input, what);
}

/**
 * The URL a relay advertises when not told (`--advertise`): its listen host when that names one
 * (`127.0.0.1:9090` → `ws://127.0.0.1:9090/`), else `hostName` (a wildcard or empty host says
 * nothing nodes could dial), with the bound `port`; `wss` with TLS. Undefined when that host is not
 * a valid host name (then nothing is advertised).
 */
export function defaultAdvertiseUrl(listen: string, port: number, secure: boolean, hostName: string): string | undefined {
  const { host } = listenAddress(listen, 'listen');
  const wildcard = host === '' || host === '0.0.0.0' || host === '::' || host === '0:0:0:0:0:0:0:0';
  try {
    return relayUrl(`${secure ? 'wss' : 'ws'}://${inUrl(wildcard ? hostName : host)}:${port}`, 'advertise');
  } catch {
    return undefined;
  }
}

/** Listens on a parsed address (host '': every interface), or an address text; rejects with the listen error. */
export function listenOn(server: Server, address: HostPort | string): Promise<void> {
  const { host, port } = typeof address === 'string' ? listenAddress(address, 'listen') : address;
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host === '' ? undefined : host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/**
 * Checks a host name without a port (`relay.example`, `10.0.0.5`, `[::1]` or `::1`) and returns it
 * lower-case, without brackets or a trailing dot.
 */
export function hostName(text: string, what: string): string {
  const input = checkText(text, what);
  const host = /^\[(.*)\]$/.exec(input)?.[1] ?? input;
  if (!isIPv6(host)) {
    if (host.includes(':')) throw fail(what, text, 'give the host name alone, without a port');
    checkHost(host, text, what);
  }
  return host.toLowerCase().replace(/\.$/, '');
}

/** Whether a listening address is loopback only: 127.0.0.0/8, ::1, localhost (and IPv4-mapped loopback). */
export function isLoopbackHost(host: string): boolean {
  const h = host
    .toLowerCase()
    .replace(/^\[(.*)\]$/, '$1')
    .replace(/\.$/, '');
  if (h === 'localhost' || h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  const v4 = h.startsWith('::ffff:') ? h.slice(7) : h;
  return DOTTED_QUAD.test(v4) && v4.startsWith('127.');
}

function parse(input0: string, what: string, localHost: string, minPort: number, text = input0): HostPort {
  const input = checkText(input0, what);
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(input)) {
    throw fail(what, text, minPort === 0 ? 'a listen address is host:port, :port or a port, not a URL' : 'a URL is not accepted here; give host:port');
  }
  if (/^\d+$/.test(input)) return { host: localHost, port: checkPort(input, text, what, minPort) };
  const { host, port } = splitHost(input, text, what);
  if (port === undefined) {
    throw fail(what, text, `give a port: ${JSON.stringify(`${inUrl(host)}:PORT`)}, ":PORT" or a bare port number`);
  }
  if (host !== '') checkHost(host, text, what);
  return { host: host === '' ? localHost : host, port: checkPort(port, text, what, minPort) };
}

function checkText(text: unknown, what: string): string {
  if (typeof text !== 'string') throw new AddressError(`${what} must be a string such as ":9090" or "relay.example:9090", got ${typeof text}`);
  const input = text.trim();
  if (input === '') throw new AddressError(`${what} is empty; give host:port, :port or a port number`);
  return input;
}

/** `[v6]`, `[v6]:port`, `host`, `host:port`, `:port`; the port text is checked later. */
function splitHost(authority: string, text: string, what: string): { host: string; port: string | undefined } {
  if (authority.startsWith('[')) {
    const m = /^\[([^\]]*)\](?::(.*))?$/.exec(authority);
    if (!m) throw fail(what, text, 'an IPv6 address goes in brackets followed by :port, e.g. [::1]:9090');
    if (!isIPv6(m[1]!)) throw fail(what, text, `${JSON.stringify(m[1])} is not an IPv6 address`);
    return { host: m[1]!, port: m[2] };
  }
  const first = authority.indexOf(':');
  if (first < 0) return { host: authority, port: undefined };
  if (authority.indexOf(':', first + 1) >= 0) throw fail(what, text, 'put IPv6 addresses in brackets, e.g. [::1]:9090');
  return { host: authority.slice(0, first), port: authority.slice(first + 1) };
}

function checkHost(host: string, text: string, what: string): void {
  if (isIPv6(host)) return;
  const labels = (host.endsWith('.') ? host.slice(0, -1) : host).split('.');
  if (NUMERIC_LABEL.test(labels[labels.length - 1]!)) {
    if (DOTTED_QUAD.test(host)) return;
    throw fail(
      what,
      text,
      `host ${JSON.stringify(host)} is neither a name nor an IPv4 address a.b.c.d (four parts 0-255, no leading zeros); a bare number is a port on this host, e.g. "9090"`,
    );
  }
  if (host.length > 253 || !labels.every((l) => HOST_LABEL.test(l))) {
    throw fail(what, text, `host ${JSON.stringify(host)} is not a host name (letters, digits, - _ .), an IPv4 address a.b.c.d or an [IPv6] address`);
  }
}

function checkPort(port: string, text: string, what: string, min: number): number {
  const n = Number(port);
  if (!PORT.test(port) || n < min || n > 65535) throw fail(what, text, `port must be a number ${min}..65535`);
  return n;
}

function fail(what: string, text: string, why: string): AddressError {
  const shown = text.length > 100 ? `${text.slice(0, 100)}...` : text;
  return new AddressError(`${what} ${JSON.stringify(shown)}: ${why}`);
}

/** A host as it goes in a URL: IPv6 in brackets. */
function inUrl(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/** A bound address as it goes in a URL: wildcard addresses become localhost, IPv6 gets brackets. */
export function urlHost(address: string): string {
  const host = address === '::' || address === '0.0.0.0' ? 'localhost' : address;
  return host.includes(':') ? `[${host}]` : host;
}

/** The IP of a connected peer, IPv4-mapped IPv6 addresses written as plain IPv4. */
export function peerIp(socket: { remoteAddress?: string | undefined }): string {
  const remote = socket.remoteAddress ?? 'unknown';
  return remote.startsWith('::ffff:') ? remote.slice(7) : remote;
}

/** `ip:port` of a connected peer, as logs and `ctx.caller.address` show it. */
export function peerAddress(socket: { remoteAddress?: string | undefined; remotePort?: number | undefined }): string {
  return `${peerIp(socket)}:${socket.remotePort ?? 0}`;
}
