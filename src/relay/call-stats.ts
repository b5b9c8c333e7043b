import type { Socket } from 'node:net';
import type { CallObserver } from './contracts.js';
import type { AuditInput } from './events.js';

/** What {@link CallStats} reports to: the metrics, the dashboard's traffic, the audit trail. */
export interface CallStatsHost {
  /** A call answered through a local route (`local`) or another relay's. */
  routed(local: boolean): void;
  /** A call ended; `seconds` is undefined for one refused before it reached a node, `known` false for a method no node serves. */
  callEnded(method: string, code: string, seconds: number | undefined, known: boolean): void;
  readonly events: { audit(record: AuditInput): void };
  readonly directory: { all(): Iterable<{ hasMethod(service: string, method: string): boolean }> };
  draining(): boolean;
  /** No call is in flight any more while draining. */
  idle(): void;
}

/**
 * The relay's call observer and its counts: calls in flight (routed to a node, not answered yet)
 * and the bytes of every socket of the main port, open and closed.
 */
export class CallStats {
  private callsInFlight = 0;
  private readonly sockets = new Set<Socket>();
  private readonly closedBytes = { received: 0, sent: 0 };
  /** Given to every caller link. */
  readonly observer: CallObserver;

  constructor(host: CallStatsHost) {
    this.observer = {
      started: () => {
        this.callsInFlight++;
      },
      ended: (method, code, call) => {
        if (call) {
          this.callsInFlight--;
          if (call.path) host.routed(call.path.local);
          host.callEnded(method, code, (performance.now() - call.started) / 1_000, true);
          if (this.callsInFlight === 0 && host.draining()) host.idle();
        } else {
          host.callEnded(method, code, undefined, isServed(host.directory.all(), method));
        }
      },
      refused: (who, method, reason) => {
        host.events.audit({ kind: 'refused-call', session: who.session, address: who.address, identity: who.identity, method, reason });
      },
    };
  }

  /** Calls routed to a node and not answered yet. */
  get inFlight(): number {
    return this.callsInFlight;
  }

  /** Counts the bytes of `socket`, while it is open and after. */
  track(socket: Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => {
      this.sockets.delete(socket);
      this.closedBytes.received += socket.bytesRead;
      this.closedBytes.sent += socket.bytesWritten;
    });
  }

  /** Bytes received and sent on the main port's sockets since the start. */
  bytes(): { received: number; sent: number } {
    let { received, sent } = this.closedBytes;
    for (const socket of this.sockets) {
      received += socket.bytesRead;
      sent += socket.bytesWritten;
    }
    return { received, sent };
  }
}

/** Whether some node serves `method` (`Service.Method`): a refused call of an unknown method is not labelled by name. */
function isServed(nodes: Iterable<{ hasMethod(service: string, method: string): boolean }>, method: string): boolean {
  const dot = method.lastIndexOf('.');
  if (dot <= 0) return false;
  const service = method.slice(0, dot);
  const name = method.slice(dot + 1);
  for (const node of nodes) if (node.hasMethod(service, name)) return true;
  return false;
}
