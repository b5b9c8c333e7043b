import { ErrorCode, noNode, NoNodeReason, TunnelError } from '../errors.js';
import type { NodeMeta } from '../wire/messages.js';
import type { NodeRoute, RoutedCall } from './contracts.js';
import { PermissionTable, type CallerAccess } from './permissions.js';
import { eligible, formatLabels, matchesWhere, selectorNamed, type Selector, type Where } from './selectors.js';

/** What a call asks of the directory: {@link NodeDirectory.route}. */
export interface RouteRequest {
  service: string;
  /** The method's name within its service. */
  method: string;
  /** The node the caller named: only that one will do. */
  node?: string | undefined;
  /** The session's previous node for this service, kept while it still qualifies. */
  affinity?: NodeRoute | undefined;
  /** Labels the node must carry. */
  where?: Where | undefined;
  /** How to choose among the candidates; the directory's `selector` when undefined. */
  selector?: Selector | undefined;
  /** The caller's `call=` rules; undefined: it may call every node. */
  access?: CallerAccess | undefined;
}

/**
 * One node as routing sees it, whatever holds its tunnels: its own link on this relay, other relays
 * of the cluster, or both (a dual-homed node). Calls prefer the local route, then the routes in the
 * order they came; what the node serves is what its newest route says.
 */
export class DirectoryNode implements NodeRoute {
  /** Routes in the order they were added; the local one, if any, is tried first. */
  private readonly paths: NodeRoute[] = [];
  private turn = 0;

  constructor(readonly name: string) {}

  get routes(): readonly NodeRoute[] {
    return this.paths;
  }

  /** The route presence describes the node by: the local one, else the newest. */
  private get main(): NodeRoute {
    return this.paths.find((r) => r.local) ?? this.paths[this.paths.length - 1]!;
  }

  get instance(): string | undefined {
    return this.main.instance;
  }
  get services(): ReadonlyMap<string, ReadonlySet<string>> {
    return this.main.services;
  }
  get labels(): Readonly<Record<string, string>> {
    return this.main.labels;
  }
  get address(): string {
    return this.main.address;
  }
  get connectedAt(): Date {
    return this.main.connectedAt;
  }
  get relays(): readonly string[] {
    if (this.paths.length === 1) return this.paths[0]!.relays;
    return [...new Set(this.paths.flatMap((r) => r.relays))].sort();
  }
  get local(): boolean {
    return this.paths.some((r) => r.local);
  }
  get draining(): boolean {
    return this.paths.every((r) => r.draining);
  }
  get available(): boolean {
    for (const r of this.paths) if (r.available) return true;
    return false;
  }
  get inFlight(): number {
    let n = 0;
    for (const r of this.paths) n += r.inFlight;
    return n;
  }
  get served(): number {
    let n = 0;
    for (const r of this.paths) n += r.served;
    return n;
  }

  hasMethod(service: string, method: string): boolean {
    return this.main.hasMethod(service, method);
  }

  methods(service: string): string[] {
    return this.main.methods(service);
  }

  /** The route for a new call: the local one while it takes calls, else the others in turn. */
  pick(): NodeRoute | undefined {
    const n = this.paths.length;
    if (n === 1) return this.paths[0]!.available ? this.paths[0] : undefined;
    for (const r of this.paths) if (r.local && r.available) return r;
    for (let i = 0; i < n; i++) {
      const r = this.paths[(this.turn + i) % n]!;
      if (r.available) {
        this.turn = (this.turn + i + 1) % n;
        return r;
      }
    }
    return undefined;
  }

  forward(call: RoutedCall, params: Uint8Array, meta: NodeMeta, stream = 0): void {
    // The directory picked this node because a route was available; pick() only fails in a race.
    (this.pick() ?? this.main).forward(call, params, meta, stream);
  }

  forwardChunk(call: RoutedCall, final: boolean, bytes: Uint8Array, onSent: () => void): void {
    if (call.path && call.path !== this) call.path.forwardChunk(call, final, bytes, onSent);
    else onSent();
  }

  abandon(call: RoutedCall, tellNode: boolean): void {
    if (call.path && call.path !== this) call.path.abandon(call, tellNode);
  }

  /** Every route is told: the session's calls may have gone through any of them. */
  closeSession(session: string): void {
    for (const r of this.paths) r.closeSession(session);
  }

  /** @internal */
  add(route: NodeRoute): void {
    if (route.local) this.paths.unshift(route);
    else this.paths.push(route);
  }

  /** @internal */
  remove(route: NodeRoute): boolean {
    const i = this.paths.indexOf(route);
    if (i < 0) return false;
    this.paths.splice(i, 1);
    return true;
  }
}

/**
 * The nodes this relay can reach, by name and by service, and the choice of a node for a call. A node
 * may be reached by several routes (its link here, other relays); routing works on the node and the
 * node picks the route. Error messages name what is online so that a caller can fix a typo without
 * another tool, but only what that caller may call: with a caller's `access`, the nodes it may not
 * call do not exist for it.
 */
export class NodeDirectory {
  private readonly byName = new Map<string, DirectoryNode>();
  private readonly byService = new Map<string, DirectoryNode[]>();
  private readonly cursor = new Map<string, number>();
  /** The selector of calls that name none (the relay's `selector` option). */
  selector: Selector = selectorNamed('round-robin');
  /** The permissions in force; the relay replaces the table when the tokens file is reloaded. */
  permissions: PermissionTable = PermissionTable.OPEN;

  /** Nodes reachable (by any route). */
  get size(): number {
    return this.byName.size;
  }

  get(name: string): DirectoryNode | undefined {
    return this.byName.get(name);
  }

  /** The node's route on this relay, if its tunnel ends here. */
  local(name: string): NodeRoute | undefined {
    return this.byName.get(name)?.routes.find((r) => r.local);
  }

  all(): IterableIterator<DirectoryNode> {
    return this.byName.values();
  }

  /**
   * Adds a route to its node. A local route replaces the node's previous local route (returned: the
   * caller closes it); a remote route is added beside the others.
   */
  add(route: NodeRoute): NodeRoute | undefined {
    let node = this.byName.get(route.name);
    let old: NodeRoute | undefined;
    if (!node) {
      node = new DirectoryNode(route.name);
      this.byName.set(route.name, node);
    } else {
      this.unindex(node);
      if (route.local) {
        old = node.routes.find((r) => r.local);
        if (old) node.remove(old);
      }
    }
    node.add(route);
    this.index(node);
    return old;
  }

  /**
   * Removes `route` only if it is still registered: a replaced link's late close is a no-op. The node
   * leaves the directory with its last route. Returns whether the route was registered.
   */
  remove(route: NodeRoute): boolean {
    const node = this.byName.get(route.name);
    if (!node || !node.routes.includes(route)) return false;
    this.unindex(node);
    node.remove(route);
    if (node.routes.length === 0) this.byName.delete(route.name);
    else this.index(node);
    return true;
  }

  private index(node: DirectoryNode): void {
    for (const service of node.services.keys()) {
      const list = this.byService.get(service);
      if (list) list.push(node);
      else this.byService.set(service, [node]);
    }
  }

  private unindex(node: DirectoryNode): void {
    for (const [service, list] of this.byService) {
      const i = list.indexOf(node);
      if (i < 0) continue;
      list.splice(i, 1);
      if (list.length === 0) {
        this.byService.delete(service);
        this.cursor.delete(service);
      }
    }
  }

  /**
   * Picks the node for `service.method`, in this order: the named node; else the session's previous
   * node for this service (`affinity`) while it can still serve it and matches `where`; else the
   * choice of `selector` (the relay's default when undefined) among the nodes matching `where`.
   * With `access`, only nodes the caller may call that method on are considered. Called once per
   * call: without `where` and `selector` it allocates nothing but its errors.
   */
  route(request: RouteRequest): NodeRoute {
    const { service, method, node: nodeName, affinity, where, selector = this.selector, access } = request;
    if (nodeName !== undefined) {
      const node = this.byName.get(nodeName);
      if (!node || (access && !access.canSee(node))) {
        throw noNode(NoNodeReason.NODE_NOT_FOUND, `no node named ${nodeName} is connected; nodes online: ${this.describe(access)}`);
      }
      if (access && !access.mayCall(node.name, service, method)) throw access.forbidden(service, method, node.name);
      this.check(node, service, method, access);
      if (!node.available) throw noNode(NoNodeReason.DRAINING, `node ${nodeName} is draining or disconnecting and takes no new calls`);
      if (!matchesWhere(node, where)) {
        throw noNode(NoNodeReason.NO_MATCH, `node ${nodeName} has labels ${formatLabels(node.labels)}, which do not match ${formatLabels(where!)}`);
      }
      return node;
    }
    if (affinity && eligible(affinity, service, method, where, access)) return affinity;
    const candidates = this.byService.get(service);
    if (!candidates) throw this.noService(service, access);
    const start = this.cursor.get(service) ?? 0;
    const at = selector(candidates, start, service, method, where, access);
    if (at < 0) throw this.whyNone(candidates, service, method, where, access);
    this.cursor.set(service, (at + 1) % candidates.length);
    return candidates[at]!;
  }

  /** Every node that can take `service.method` now and matches `where` (the targets of a broadcast). */
  targets(service: string, method: string, where: Where | undefined, access?: CallerAccess): NodeRoute[] {
    const candidates = this.byService.get(service);
    if (!candidates) throw this.noService(service, access);
    const nodes = candidates.filter((n) => eligible(n, service, method, where, access));
    if (nodes.length === 0) throw this.whyNone(candidates, service, method, where, access);
    return nodes;
  }

  private noService(service: string, access: CallerAccess | undefined): TunnelError {
    return new TunnelError(ErrorCode.NO_SERVICE, `no node serves service ${service}; nodes online: ${this.describe(access)}`);
  }

  /** The error for "no candidate qualified", naming the first reason that rules them all out. */
  private whyNone(all: readonly NodeRoute[], service: string, method: string, where: Where | undefined, access: CallerAccess | undefined): TunnelError {
    // Nodes the caller may not call do not exist for it: if that leaves none, the service does not either.
    const candidates = access ? all.filter((n) => access.mayCall(n.name, service, method)) : all;
    if (candidates.length === 0) return this.noService(service, access);
    const withMethod = candidates.filter((n) => n.hasMethod(service, method));
    if (withMethod.length === 0) {
      const node = candidates[0]!;
      return new TunnelError(
        ErrorCode.NO_METHOD,
        `service ${service} has no method ${method}; methods on ${node.name}: ${methodsOf(node, service, access).join(', ')}`,
      );
    }
    const matching = withMethod.filter((n) => matchesWhere(n, where));
    if (matching.length === 0) {
      const seen = withMethod
        .slice(0, 10)
        .map((n) => `${n.name} (${formatLabels(n.labels)})`)
        .join(', ');
      return noNode(NoNodeReason.NO_MATCH, `no node serving ${service}.${method} has labels ${formatLabels(where!)}; nodes serving it: ${seen}`);
    }
    return noNode(NoNodeReason.DRAINING, `every node serving ${service}${where ? ` with labels ${formatLabels(where)}` : ''} is draining; try again shortly`);
  }

  private check(node: NodeRoute, service: string, method: string, access: CallerAccess | undefined): void {
    if (!node.services.has(service)) {
      throw new TunnelError(ErrorCode.NO_SERVICE, `node ${node.name} does not serve ${service}; it serves ${servicesOf(node, access).join(', ')}`);
    }
    if (!node.hasMethod(service, method)) {
      throw new TunnelError(
        ErrorCode.NO_METHOD,
        `service ${service} on node ${node.name} has no method ${method}; methods: ${methodsOf(node, service, access).join(', ')}`,
      );
    }
  }

  /** "office-1 (Arith, Hello), lab-2 (KV)": the nodes `access` sees, at most ten named. */
  describe(access?: CallerAccess): string {
    const parts: string[] = [];
    let more = 0;
    for (const node of this.byName.values()) {
      if (access && !access.canSee(node)) continue;
      if (parts.length === 10 && !access) {
        more = this.byName.size - 10;
        break;
      }
      if (parts.length === 10) more++;
      else parts.push(`${node.name} (${servicesOf(node, access).join(', ')})`);
    }
    if (more > 0) parts.push(`and ${more} more`);
    return parts.length > 0 ? parts.join(', ') : 'none';
  }
}

/** The services of `node` that `access` may call something of (every service without access), sorted. */
export function servicesOf(node: NodeRoute, access: CallerAccess | undefined): string[] {
  return (access ? access.servicesOf(node) : [...node.services.keys()]).sort();
}

/** The methods of `service` on `node` that `access` may call, sorted. */
export function methodsOf(node: NodeRoute, service: string, access: CallerAccess | undefined): string[] {
  return access ? access.methodsOf(node, service) : node.methods(service);
}
