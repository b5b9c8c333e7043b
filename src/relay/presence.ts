import { ErrorCode, TunnelError } from '../errors.js';
import { decodeParams, encodeResult } from '../rpc/body.js';
import type { Logger } from '../util/logger.js';
import { encode } from '../wire/codec.js';
import type { CallerOutput } from './contracts.js';
import { PRESENCE_NOTIFICATION, RelayMethod, type NodeInfo, type PresenceEvent } from '../wire/presence.js';
import { methodsOf, servicesOf, type NodeDirectory } from './directory.js';
import type { NodeRoute } from './contracts.js';
import type { CallerAccess } from './permissions.js';
import { matchesWhere, parseWhere, type Where } from './selectors.js';

/** `n` as presence shows it; with a caller's `access`, only the services and methods it may call. */
export function nodeInfo(n: NodeRoute, access?: CallerAccess): NodeInfo {
  return {
    name: n.name,
    labels: n.labels,
    services: Object.fromEntries(servicesOf(n, access).map((s) => [s, methodsOf(n, s, access)])),
    address: n.address,
    connectedAt: n.connectedAt.toISOString(),
    inFlight: n.inFlight,
    served: n.served,
    draining: n.draining,
    relays: [...n.relays],
  };
}

interface Watch {
  where: Where | undefined;
  /** The caller's identity: its permissions are looked up at each event, so a reload applies at once. */
  identity: string | null;
}

/**
 * The relay's own service `Relay`: the presence list (`Relay.List`) and a subscription to joins and
 * leaves (`Relay.Watch`, `Relay.Unwatch`). Watchers are caller connections; each gets a
 * `Relay.presence` notification per event that matches the `where` it watched with. A caller with
 * `call=` permissions sees only the nodes it may call.
 */
export class Presence {
  private readonly watchers = new Map<CallerOutput, Watch>();

  constructor(
    private readonly directory: NodeDirectory,
    private readonly log: Logger,
  ) {}

  /** The nodes matching `where` (every node without), those `access` sees when given. */
  list(where?: Where, access?: CallerAccess): NodeInfo[] {
    const out: NodeInfo[] = [];
    for (const n of this.directory.all()) if (matchesWhere(n, where) && (!access || access.canSee(n))) out.push(nodeInfo(n, access));
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  get watcherCount(): number {
    return this.watchers.size;
  }

  /** Tells every watcher that `link` joined or left. */
  announce(event: PresenceEvent['event'], link: NodeRoute): void {
    if (this.watchers.size === 0) return;
    const at = new Date().toISOString();
    let params: Uint8Array | undefined;
    for (const [out, { where, identity }] of this.watchers) {
      if (!matchesWhere(link, where)) continue;
      const access = this.directory.permissions.access(identity);
      if (access) {
        if (access.canSee(link)) out.notify?.(PRESENCE_NOTIFICATION, encode([{ event, node: nodeInfo(link, access), at } satisfies PresenceEvent]));
        continue;
      }
      params ??= encode([{ event, node: nodeInfo(link), at } satisfies PresenceEvent]);
      out.notify?.(PRESENCE_NOTIFICATION, params);
    }
  }

  /** The caller connection closed: it watches nothing any more. */
  forget(out: CallerOutput): void {
    this.watchers.delete(out);
  }

  /** Answers request `id` for a `Relay.*` method on the connection of caller `identity`. */
  answer(
    out: CallerOutput,
    session: string,
    id: number,
    method: string,
    params: Uint8Array,
    meta: Record<string, unknown>,
    identity: string | null = null,
  ): void {
    let result: unknown;
    try {
      decodeParams(params);
      const where = parseWhere(meta.where);
      const access = this.directory.permissions.access(identity);
      switch (method) {
        case RelayMethod.LIST:
          result = this.list(where, access);
          break;
        case RelayMethod.WATCH:
          // Subscribing and listing in the same turn: no join or leave can fall between the two.
          if (!out.notify)
            throw new TunnelError(ErrorCode.BAD_REQUEST, 'watching presence needs a connection that carries notifications (the WebSocket protocol)');
          this.watchers.set(out, { where, identity });
          this.log.debug({ session, where }, 'caller watches presence');
          result = this.list(where, access);
          break;
        case RelayMethod.UNWATCH:
          result = this.watchers.delete(out);
          break;
        default:
          throw new TunnelError(
            ErrorCode.NO_METHOD,
            `the relay's own service Relay has no method ${method.slice(method.indexOf('.') + 1)}; methods: List, Unwatch, Watch`,
          );
      }
    } catch (err) {
      out.respond(id, TunnelError.from(err).toWire(), null);
      return;
    }
    out.respond(id, null, encodeResult(result));
  }
}
