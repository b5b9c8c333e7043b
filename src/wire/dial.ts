import { WebSocket } from 'ws';

export interface DialOptions {
  /** Largest message accepted from the relay, bytes. */
  maxMessage: number;
  /** Milliseconds allowed for TCP, TLS and the WebSocket upgrade. */
  handshakeTimeout: number;
  headers?: Record<string, string>;
}

/** Opens a WebSocket to the relay with the settings every role shares. */
export function dial(url: string, options: DialOptions): WebSocket {
  return new WebSocket(url, {
    maxPayload: options.maxMessage,
    handshakeTimeout: options.handshakeTimeout,
    perMessageDeflate: false,
    headers: options.headers ?? {},
  });
}
