import { lookup as systemLookup, type LookupAddress } from 'node:dns';
import { readFileSync } from 'node:fs';
import { isIP, type LookupFunction } from 'node:net';
import { WebSocket } from 'ws';
import type { Logger } from '../util/logger.js';

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
  /** Milliseconds allowed for TCP, TLS and the WebSocket upgrade. */
  handshakeTimeout: number;
  headers?: Record<string, string>;
  /** Loaded by {@link loadClientTls}. */
  tls?: LoadedTls;
  /** Called when the relay answers the upgrade with an HTTP error instead of a WebSocket. */
  onRefused?(refusal: Refusal): void;
  /**
   * Connect to this address of the URL's host name (from {@link resolveAll}); the `Host` header and
   * the TLS server name stay the name. Without it the system resolver picks.
   */
  address?: LookupAddress;
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

/** Opens a WebSocket to the relay with the settings every role shares. @internal */
export function dial(url: string, options: DialOptions): WebSocket {
  const ws = new WebSocket(url, {
    maxPayload: options.maxMessage,
    handshakeTimeout: options.handshakeTimeout,
    perMessageDeflate: false,
    headers: options.headers ?? {},
    ...(options.tls ?? {}),
    ...(options.address ? { lookup: pinned(options.address) } : {}),
  });
  ws.on('unexpected-response', (_req, res) => {
    const header = res.headers['x-tunnel-reason'];
    const reason = (Array.isArray(header) ? header[0] : header) ?? res.statusMessage ?? '';
    res.resume();
    options.onRefused?.({ status: res.statusCode ?? 0, reason });
    ws.terminate();
  });
  return ws;
}
