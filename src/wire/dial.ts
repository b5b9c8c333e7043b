import { lookup as systemLookup, type LookupAddress } from 'node:dns';
import { readFileSync } from 'node:fs';
import { isIP, type LookupFunction } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { WebSocket } from 'ws';
import type { Logger } from '../util/logger.js';
import { CloseCode } from './close-codes.js';

/** TLS settings of a node or caller, the same names as their `--ca`, `--insecure`, `--cert`, `--key` flags. */
export interface ClientTlsOptions {
  /** PEM file of a CA to trust for the relay's certificate (a private CA); the system CAs otherwise. */
  ca?: string;
  /** Accept any relay certificate. For tests only: anyone on the path can then read and change the traffic. */
  insecure?: boolean;
  /** PEM client certificate (a node's, when the relay requires one). */
  cert?: string;
  /** PEM private key of `cert`. */
  key?: string;
}

/** A refusal at the HTTP upgrade: the status and the relay's reason (X-Tunnel-Reason). */
export interface Refusal {
  status: number;
  reason: string;
}

export interface DialOptions {
  /** Largest message accepted from the relay, bytes. */
  maxMessage: number;
  /** Milliseconds allowed for TCP, TLS and the WebSocket upgrade (ws's own timer). */
  handshakeTimeout: number;
  /** Sent as `Authorization: Bearer`: a node's or caller's token. */
  token?: string;
  /** Loaded by {@link loadClientTls}. */
  tls?: LoadedTls;
  /**
   * Connect to this address of the URL's host name (from {@link resolveAll}); the `Host` header and
   * the TLS server name stay the name. Without it the system resolver picks.
   */
  address?: LookupAddress;
  /**
   * Milliseconds from the dial to {@link RelayDial.welcomed}; past them `onTimeout` is told why
   * (the owner closes the connection). Without it only `handshakeTimeout` bounds the dial.
   */
  connectTimeout?: number;
  onTimeout?(reason: string): void;
}

/** How a dial ended, in the words both roles use. */
export interface DialEnd {
  /** The close code; an HTTP 401 or 403 at the upgrade is UNAUTHORIZED, the same refusal as a 4003 after the hello. */
  code: number;
  /**
   * `HTTP <status>: <reason>` for a refused upgrade; else the close reason; else the socket's last
   * error, with what to do when it was a TLS mistake ({@link tlsHint}); else ''.
   */
  reason: string;
  /** A `ws://` dial hung up without a word: maybe a TLS port; {@link RelayDial.probeTls} tells. */
  mayBeTls: boolean;
}

/** Addresses of one name tried in one round of dials, at most; more are not tried. */
export const MAX_ADDRESSES = 16;

/**
 * Every address of a relay's host name (at most {@link MAX_ADDRESSES}), by `lookup` (the shape of
 * Node's net `lookup` option; the system resolver by default), in the resolver's order. An IP
 * literal is its own single address.
 */
export function resolveAll(host: string, lookup: LookupFunction = systemLookup): Promise<LookupAddress[]> {
  const family = isIP(host);
  if (family !== 0) return Promise.resolve([{ address: host, family }]);
  return new Promise((resolve, reject) => {
    lookup(host, { all: true }, (err, found) => {
      if (err) return reject(err);
      const list = typeof found === 'string' ? [{ address: found, family: isIP(found) }] : found;
      const usable = list.filter((a) => isIP(a.address) !== 0).slice(0, MAX_ADDRESSES);
      if (usable.length === 0) return reject(new Error(`${host} resolved to no address`));
      resolve(usable);
    });
  });
}

/** A net `lookup` that answers one address whatever the name: the dial goes there, the name stays. */
function pinned(a: LookupAddress): LookupFunction {
  return (_host, options, callback) => {
    // Node asks for every address when it races IPv4 and IPv6 (autoSelectFamily).
    if (options.all) callback(null, [a]);
    else callback(null, a.address, a.family);
  };
}

export interface LoadedTls {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  rejectUnauthorized: boolean;
}

/** Reads the TLS files once, at start, with errors that name the flag; warns loudly about `insecure`. */
export function loadClientTls(opts: ClientTlsOptions, log: Logger): LoadedTls {
  if ((opts.cert === undefined) !== (opts.key === undefined)) throw new Error('--cert and --key go together: give both or neither');
  const read = (file: string, flag: string) => {
    try {
      return readFileSync(file);
    } catch (err) {
      throw new Error(`cannot read --${flag} ${file}: ${(err as Error).message}`, { cause: err });
    }
  };
  const tls: LoadedTls = { rejectUnauthorized: opts.insecure !== true };
  if (opts.ca !== undefined) tls.ca = read(opts.ca, 'ca');
  if (opts.cert !== undefined) tls.cert = read(opts.cert, 'cert');
  if (opts.key !== undefined) tls.key = read(opts.key, 'key');
  if (opts.insecure) {
    log.warn(
      { insecure: true },
      'INSECURE: the relay certificate is NOT verified (--insecure); anyone on the network path can impersonate the relay and read every call. Use --ca instead.',
    );
  }
  return tls;
}

/**
 * One WebSocket dial of a relay, with what every role says about it: the token, the refusal of the
 * upgrade (HTTP 401, 403, 429, 503 and their X-Tunnel-Reason), the last socket error and its TLS
 * hint, and the connect deadline. The owner wraps {@link ws} in its Connection and asks
 * {@link ended} when that closes. @internal
 */
export class RelayDial {
  readonly ws: WebSocket;
  private refused: Refusal | undefined;
  private lastError: (Error & { code?: unknown }) | undefined;
  private opened = false;
  private readonly timer: NodeJS.Timeout | undefined;

  constructor(
    readonly url: string,
    private readonly options: DialOptions,
  ) {
    const ws = new WebSocket(url, {
      maxPayload: options.maxMessage,
      handshakeTimeout: options.handshakeTimeout,
      perMessageDeflate: false,
      headers: options.token ? { authorization: `Bearer ${options.token}` } : {},
      ...(options.tls ?? {}),
      ...(options.address ? { lookup: pinned(options.address) } : {}),
    });
    ws.on('unexpected-response', (_req, res) => {
      const header = res.headers['x-tunnel-reason'];
      const reason = (Array.isArray(header) ? header[0] : header) ?? res.statusMessage ?? '';
      res.resume();
      this.refused = { status: res.statusCode ?? 0, reason };
      ws.terminate();
    });
    ws.on('error', (err) => {
      this.lastError = err;
    });
    ws.on('open', () => {
      this.opened = true;
    });
    const ms = options.connectTimeout;
    if (ms !== undefined) this.timer = setTimeout(() => options.onTimeout?.(this.timeoutReason(ms)), ms);
    this.ws = ws;
  }

  /** The relay's welcome came: the connect deadline is met. */
  welcomed(): void {
    clearTimeout(this.timer);
  }

  /** The connection closed with `code` and `reason` (1006 and '' when the socket just went). */
  ended(code: number, reason: string): DialEnd {
    clearTimeout(this.timer);
    const refused = this.refused;
    if (refused) {
      const denied = refused.status === 401 || refused.status === 403;
      return { code: denied ? CloseCode.UNAUTHORIZED : code, reason: `HTTP ${refused.status}: ${refused.reason}`, mayBeTls: false };
    }
    const err = this.lastError;
    if (reason || !err) return { code, reason, mayBeTls: false };
    const hint = tlsHint(this.url, err, this.options.tls?.ca !== undefined);
    if (hint) return { code, reason: `${err.message}; ${hint}`, mayBeTls: false };
    return { code, reason: err.message, mayBeTls: mayBeTlsPort(this.url, err) };
  }

  /** For a {@link DialEnd} that `mayBeTls`: {@link USE_WSS} when the port speaks TLS, else undefined. */
  async probeTls(timeout?: number): Promise<string | undefined> {
    return (await speaksTls(this.url, timeout)) ? USE_WSS : undefined;
  }

  private timeoutReason(ms: number): string {
    return this.opened
      ? `the WebSocket opened but no welcome came within ${ms} ms`
      : `no WebSocket handshake within ${ms} ms (something accepts connections there but does not answer as a relay: a firewall, another program, or a TLS port dialled with ws://?)`;
  }
}

/** Errors of a certificate chain that does not lead to a trusted CA (OpenSSL's names, as Node gives them). */
const UNTRUSTED_CHAIN = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
]);

/** Errors of a TLS client whose server answered with something that is not TLS. */
const NOT_TLS = new Set(['ERR_SSL_WRONG_VERSION_NUMBER', 'ERR_SSL_PACKET_LENGTH_TOO_LONG', 'ERR_SSL_HTTP_REQUEST']);

export const CA_HINT = "pass --ca FILE (the CA that signed the relay's certificate)";
export const USE_WSS = 'the relay speaks TLS: use wss://';
export const USE_WS = 'the relay does not speak TLS on this port: use ws://';

/**
 * What to do about a failed dial of `url` that is a TLS mistake, or undefined when it is not one
 * (or it cannot be told from the error alone: see {@link mayBeTlsPort}). `hasCa`: a `--ca` was given.
 */
export function tlsHint(url: string, err: Error & { code?: unknown }, hasCa: boolean): string | undefined {
  const code = typeof err.code === 'string' ? err.code : '';
  if (url.startsWith('wss:')) {
    if (UNTRUSTED_CHAIN.has(code)) return hasCa ? "the --ca given is not the CA that signed the relay's certificate" : CA_HINT;
    if (NOT_TLS.has(code) || err.message.includes('before secure TLS connection was established')) return USE_WS;
  }
  return undefined;
}

/**
 * A plain `ws://` dial whose server hung up without a word: what a TLS port does to plain HTTP.
 * Only {@link speaksTls} can tell; it costs one more connection, so it is asked on such failures only.
 */
export function mayBeTlsPort(url: string, err: Error & { code?: unknown }): boolean {
  return url.startsWith('ws:') && (err.code === 'ECONNRESET' || err.message === 'socket hang up');
}

/** True when the server of `url` completes a TLS handshake (its certificate is not checked: only the protocol is asked). */
export function speaksTls(url: string, timeout = 2_000): Promise<boolean> {
  const { hostname, port } = new URL(url);
  const host = hostname.startsWith('[') ? hostname.slice(1, -1) : hostname;
  return new Promise((resolve) => {
    const socket = tlsConnect({ host, port: Number(port || 80), rejectUnauthorized: false, ...(isIP(host) === 0 ? { servername: host } : {}) });
    const done = (yes: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(yes);
    };
    const timer = setTimeout(() => done(false), timeout);
    socket.once('secureConnect', () => done(true));
    socket.once('error', () => done(false));
    socket.once('close', () => done(false));
  });
}
