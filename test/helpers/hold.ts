import { once } from 'node:events';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { Wakeups } from './wait.js';

/**
 * The test's end of `Slow.Hold(port)` (test/fixtures/slow-services.js): each running Hold call is one
 * connection to this loopback server, and returns when {@link release} ends it. A test that needs
 * calls running while something happens holds them here for exactly as long as it needs, whatever
 * the machine's speed, instead of sleeping a duration and hoping it covers the steps in between.
 */
export class Holds {
  private readonly sockets = new Set<Socket>();
  private readonly wakeups = new Wakeups();
  private accepted = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {
    server.on('connection', (socket) => {
      this.accepted++;
      this.sockets.add(socket);
      socket.on('error', () => {});
      socket.once('close', () => {
        this.sockets.delete(socket);
        this.wakeups.wake();
      });
      this.wakeups.wake();
    });
  }

  static async open(): Promise<Holds> {
    const server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return new Holds(server, (server.address() as AddressInfo).port);
  }

  /** Calls holding a connection now. */
  get held(): number {
    return this.sockets.size;
  }

  /** Waits until `n` calls have connected in all, bounded by `timeout` ms. */
  waitHeld(n: number, timeout = 10_000): Promise<void> {
    return this.wakeups.until(
      () => this.accepted >= n,
      timeout,
      `${n} held calls`,
      () => `${this.accepted} connected, ${this.held} still held`,
    );
  }

  /** Lets every held call return. */
  release(): void {
    for (const s of this.sockets) s.end();
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
