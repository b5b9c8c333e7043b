import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Duplex } from 'node:stream';

export interface TlsOptions {
  /** PEM certificate chain of the relay; with `tlsKey` the relay serves `wss://`. */
  tlsCert?: string;
  /** PEM private key of `tlsCert`. */
  tlsKey?: string;
  /** PEM CA certificates that sign node client certificates; nodes must then present one. */
  tlsCa?: string;
}

export interface Listener {
  server: Server;
  secure: boolean;
  /** The event that hands over each connected socket, the one later seen as `req.socket`. */
  socketEvent: 'connection' | 'secureConnection';
}

/**
 * The relay's HTTP or HTTPS server. With a client CA it asks every peer for a certificate but does
 * not reject those without one: callers authenticate with tokens, and the relay decides per role.
 */
export function createListener(opts: TlsOptions, handshakeTimeout: number, onRequest: (req: IncomingMessage, res: ServerResponse) => void): Listener {
  if ((opts.tlsCert === undefined) !== (opts.tlsKey === undefined)) {
    throw new Error('tlsCert and tlsKey go together: give both to serve wss://, or neither');
  }
  if (opts.tlsCa !== undefined && opts.tlsCert === undefined) {
    throw new Error('tlsCa (node client certificates) needs TLS: give tlsCert and tlsKey as well');
  }
  // A socket that never finishes its request headers (slowloris) is dropped after the same bound;
  // request bodies keep Node's own requestTimeout, since HTTP calls may upload large params slowly.
  const httpOptions = { headersTimeout: handshakeTimeout, connectionsCheckingInterval: Math.min(handshakeTimeout, 1_000) };
  if (opts.tlsCert === undefined) {
    return { server: createHttpServer(httpOptions, onRequest), secure: false, socketEvent: 'connection' };
  }
  const server = createHttpsServer(
    {
      ...httpOptions,
      cert: readPem(opts.tlsCert, 'tlsCert'),
      key: readPem(opts.tlsKey!, 'tlsKey'),
      ...(opts.tlsCa === undefined ? {} : { ca: readPem(opts.tlsCa, 'tlsCa'), requestCert: true }),
      rejectUnauthorized: false,
      handshakeTimeout,
      minVersion: 'TLSv1.2',
    },
    onRequest,
  );
  return { server, secure: true, socketEvent: 'secureConnection' };
}

function readPem(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new Error(`cannot read ${what} ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Answers an upgrade request with an HTTP error and closes the socket. The reason goes in the
 * X-Tunnel-Reason header and the body, where a node or caller that is refused can read and log it;
 * `retryAfter` (seconds) goes in Retry-After.
 */
export function refuseUpgrade(socket: Duplex, status: number, reason: string, retryAfter?: number): void {
  const safe = headerSafe(reason);
  const body = `${safe}\n`;
  const retry = retryAfter === undefined ? '' : `Retry-After: ${retryAfter}\r\n`;
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nConnection: close\r\nContent-Type: text/plain\r\n${retry}` +
      `X-Tunnel-Reason: ${safe}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
  // A peer that does not close its side must not keep the socket.
  setTimeout(() => socket.destroy(), 1_000).unref();
}

/** A reason as it may go in an HTTP header: printable ASCII, anything else as `?`. */
export function headerSafe(reason: string): string {
  return reason.replace(/[^\x20-\x7e]/g, '?');
}
