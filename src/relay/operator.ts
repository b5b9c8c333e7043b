import { ErrorCode, noNode, NoNodeReason, TunnelError } from '../errors.js';
import type { Logger } from '../util/logger.js';
import { CloseCode } from '../wire/close-codes.js';
import { goaway } from '../wire/messages.js';
import type { NodeDirectory } from './directory.js';
import { DrainMarks } from './drain-marks.js';
import type { NodeLink } from './node-link.js';
import type { NodeRegistry } from './node-registry.js';
import type { CallerSessions } from './sessions.js';

/** What {@link Operator} acts on. */
export interface OperatorParts {
  readonly log: Logger;
  readonly registry: Pick<NodeRegistry, 'all'>;
  readonly directory: Pick<NodeDirectory, 'get'>;
  readonly sessions: Pick<CallerSessions, 'find' | 'end' | 'goAway'>;
  /** Calls in flight (call-stats.ts). */
  inFlight(): number;
  /** Resolves when no call is in flight any more (the relay's `idle`), or rejects when `signal` aborts. */
  idle(signal: AbortSignal): Promise<unknown>;
  /** Closes everything at once (`Relay.close`). */
  close(): Promise<void>;
}

/**
 * An operator's actions on one node or caller of this relay (the dashboard's actions, the library's
 * `Relay.drainNode` and the others): drain, undrain, disconnect. A node is acted on through its
 * link's own methods; drained names are kept here across reconnects.
 */
export class Operator {
  /** Node names drained here: kept out of rotation across reconnects. */
  readonly marks = new DrainMarks();

  private drainPromise: Promise<void> | undefined;

  constructor(private readonly parts: OperatorParts) {}

  /** True from the start of {@link drain}: no new connections or calls are accepted. */
  get draining(): boolean {
    return this.drainPromise !== undefined;
  }

  /**
   * Drains the relay, then closes it: refuses new connections (503) and new calls (GOING_AWAY),
   * sends GOAWAY to every node and caller, waits up to `timeout` ms for the calls in flight.
   */
  drain(timeout: number, reason: string): Promise<void> {
    this.drainPromise ??= this.runDrain(timeout, reason);
    return this.drainPromise;
  }

  private async runDrain(timeout: number, reason: string): Promise<void> {
    const { log, registry, sessions } = this.parts;
    log.info({ inFlight: this.parts.inFlight(), drainTimeoutMs: timeout, reason }, 'draining: refusing new connections and calls');
    const message = goaway(reason);
    for (const link of registry.all()) link.conn.send(message);
    sessions.goAway(reason);
    if (this.parts.inFlight() > 0) {
      const idle = await this.parts.idle(AbortSignal.timeout(timeout)).then(
        () => true,
        () => false,
      );
      if (idle) log.info('drained: no call in flight');
      else log.warn({ inFlight: this.parts.inFlight(), drainTimeoutMs: timeout }, 'drain timeout: closing with calls in flight');
    }
    await this.parts.close();
  }

  /** A node joined: a drained name takes no call from its first moment back, before anyone hears of it. */
  joined(link: NodeLink): void {
    link.drain(this.marks.has(link.name), true);
  }

  /**
   * Drains one node attached here, as a Kubernetes cordon does: it stays connected, finishes its calls
   * in flight and takes no new ones, and its name stays drained on this relay across reconnects until
   * {@link undrainNode}. Throws NO_NODE for a node that is not attached to this relay, OVERLOADED when
   * 1 000 names are drained already (drain-marks.ts).
   */
  drainNode(name: string, reason: string): void {
    const link = this.localLink(name);
    this.marks.add(name);
    if (link.drained) return;
    this.parts.log.info({ node: name, reason, inFlight: link.inFlight }, 'draining node');
    link.drain(true);
  }

  /** Puts a drained node name back in rotation. Throws NO_NODE for a name that is not drained here. */
  undrainNode(name: string, reason: string): void {
    if (!this.marks.delete(name)) throw noNode(NoNodeReason.NOT_DRAINED, `node ${name} is not drained on this relay`);
    this.parts.log.info({ node: name, reason }, 'undraining node');
    for (const link of this.parts.registry.all()) if (link.name === name) link.drain(false);
  }

  /** Closes the connection of a node attached here (1008, `reason`); its calls in flight fail NODE_LOST. Throws NO_NODE. */
  disconnectNode(name: string, reason: string): void {
    const link = this.localLink(name);
    this.parts.log.info({ node: name, reason, inFlight: link.inFlight }, 'closing node connection');
    link.disconnect(reason);
  }

  /**
   * Closes one caller connection (1008, `reason`; an HTTP request is answered CANCELLED): its calls
   * are cancelled on the nodes. Throws CONNECTION_CLOSED for a session that is not open.
   */
  disconnectCaller(session: string, reason: string): void {
    const link = this.parts.sessions.find(session);
    if (!link) throw new TunnelError(ErrorCode.CONNECTION_CLOSED, `no caller connection has session ${session} on this relay; it may have closed already`);
    this.parts.log.info({ session, identity: link.identity, peer: link.address, reason }, 'closing caller connection');
    this.parts.sessions.end(link, CloseCode.POLICY, ErrorCode.CANCELLED, reason);
  }

  private localLink(name: string): NodeLink {
    for (const link of this.parts.registry.all()) if (link.name === name && !link.closed) return link;
    const remote = this.parts.directory.get(name);
    if (remote) throw noNode(NoNodeReason.NODE_ELSEWHERE, `node ${name} is attached to relay ${remote.relays.join(', ')}, not to this one; act on that relay`);
    throw noNode(NoNodeReason.NODE_NOT_FOUND, `no node named ${name} is attached to this relay`);
  }
}
