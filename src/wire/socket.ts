import type { RawData } from 'ws';

/**
 * The part of a WebSocket that a {@link Connection} touches. ws's `WebSocket` has it as it is, and
 * so does `MemorySocket` (memory-socket.ts), whose peer is in the same process: tests hold a
 * connection in the hand with it, and an in-process peer needs no network.
 */
export interface SocketLike {
  binaryType: 'nodebuffer' | 'arraybuffer' | 'fragments';
  readonly readyState: 0 | 1 | 2 | 3;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  /** Bytes handed to `send` and not yet written out (the peer is not reading them). */
  readonly bufferedAmount: number;
  /** `cb` runs once the data is written out, or with an error if it never will be. */
  send(data: Buffer, options: { binary: boolean }, cb?: (err?: Error) => void): void;
  ping(): void;
  close(code: number, reason: string): void;
  terminate(): void;
  /** Stop and start emitting what the peer sends: its bytes wait, and its `bufferedAmount` grows. */
  pause(): void;
  resume(): void;
  on(event: 'message', listener: (data: RawData, isBinary: boolean) => void): this;
  on(event: 'pong', listener: () => void): this;
  on(event: 'close', listener: (code: number, reason: Buffer) => void): this;
  on(event: 'error', listener: (err: Error) => void): this;
  once(event: 'pong', listener: () => void): this;
  off(event: 'pong', listener: () => void): this;
}
