import { once } from 'node:events';
import { WebSocket } from 'ws';
import { decodeAll, encode } from '../../src/wire/codec.js';
import { Wakeups } from './wait.js';

/**
 * A bare WebSocket peer speaking our framing by hand, for tests that must misbehave in ways the real
 * node and client never do (stay silent, send garbage, flood).
 */
export class RawPeer {
  readonly ws: WebSocket;
  readonly received: unknown[] = [];
  closed: { code: number; reason: string } | undefined;
  /** Our end of the connection, `host:port`, once the handshake is answered (how the relay names this peer). */
  localAddress = '';
  private readonly wakeups = new Wakeups();

  constructor(url: string, headers: Record<string, string> = {}) {
    this.ws = new WebSocket(url, { headers, perMessageDeflate: false });
    this.ws.on('message', (data) => {
      try {
        this.received.push(...decodeAll(data as Buffer));
      } catch {
        this.received.push({ undecodable: true });
      }
      this.wake();
    });
    this.ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.wake();
    });
    this.ws.on('upgrade', (res) => (this.localAddress = `${res.socket.localAddress}:${res.socket.localPort}`));
    this.ws.on('open', () => this.wake());
    this.ws.on('error', () => this.wake());
  }

  async open(timeout = 5_000): Promise<void> {
    if (this.ws.readyState === WebSocket.OPEN) return;
    await once(this.ws, 'open', { signal: AbortSignal.timeout(timeout) });
  }

  send(value: unknown): void {
    this.ws.send(encode(value));
  }

  sendBytes(bytes: Uint8Array): void {
    this.ws.send(bytes);
  }

  /** Waits until `pred` holds, bounded by `timeout` ms. */
  until(pred: () => boolean, timeout = 5_000, what = 'condition'): Promise<void> {
    return this.wakeups.until(pred, timeout, what, () => `received ${JSON.stringify(this.received.slice(-3))}, closed ${JSON.stringify(this.closed)}`);
  }

  /** The response to request `id`, once it arrives. */
  async response(id: number, timeout = 5_000): Promise<unknown[]> {
    const find = () => this.received.find((m) => Array.isArray(m) && m[0] === 1 && m[1] === id) as unknown[] | undefined;
    await this.until(() => find() !== undefined || this.closed !== undefined, timeout, `response ${id}`);
    const r = find();
    if (!r) throw new Error(`connection closed before response ${id}: ${JSON.stringify(this.closed)}`);
    return r;
  }

  async waitClosed(timeout = 5_000): Promise<{ code: number; reason: string }> {
    await this.until(() => this.closed !== undefined, timeout, 'close');
    return this.closed!;
  }

  close(): void {
    this.ws.terminate();
  }

  private wake(): void {
    this.wakeups.wake();
  }
}

/** `[0, id, method, encode(args), meta]` */
export function req(id: number, method: string, args: unknown[], meta: Record<string, unknown> = {}): unknown[] {
  return [0, id, method, encode(args), meta];
}
