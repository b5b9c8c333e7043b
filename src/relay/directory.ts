import { ErrorCode, TunnelError } from '../errors.js';
import type { NodeLink } from './node-link.js';
import { PermissionTable, type CallerAccess } from './permissions.js';
import { eligible, formatLabels, matchesWhere, selectorNamed, type Selector, type Where } from './selectors.js';

/**
 * The nodes attached to this relay, by name and by service, and the choice of a node for a call.
 * Error messages name what is online so that a caller can fix a typo without another tool, but only
 * what that caller may call: with a caller's `access`, the nodes it may not call do not exist for it.
 */
export class NodeDirectory {
  private readonly byName = new Map<string, NodeLink>();
  private readonly byService = new Map<string, NodeLink[]>();
  private readonly cursor = new Map<string, number>();
  /** The selector of calls that name none (the relay's `selector` option). */
  selector: Selector = selectorNamed('round-robin');
  /** The permissions in force; the relay replaces the table when the tokens file is reloaded. */
  permissions: PermissionTable = PermissionTable.OPEN;

  get size(): number {
    return this.byName.size;
  }

  get(name: string): NodeLink | undefined {
    return this.byName.get(name);
  }

  all(): IterableIterator<NodeLink> {
    return this.byName.values();
  }

  /** Registers `link`, returning the link it replaces under the same name, if any. */
  add(link: NodeLink): NodeLink | undefined {
    const old = this.byName.get(link.name);
    if (old) this.remove(old);
    this.byName.set(link.name, link);
    for (const service of link.services.keys()) {
      const list = this.byService.get(service);
      if (list) list.push(link);
      else this.byService.set(service, [link]);
    }
    return old;
  }

  /** Removes `link` only if it is still the registered one: a replaced link's late close is a no-op. */
  remove(link: NodeLink): boolean {
    if (this.byName.get(link.name) !== link) return false;
    this.byName.delete(link.name);
    for (const service of link.services.keys()) {
      const list = this.byService.get(service);
      if (!list) continue;
      const rest = list.filter((l) => l !== link);
      if (rest.length > 0) this.byService.set(service, rest);
      else {
        this.byService.delete(service);
        this.cursor.delete(service);
      }
    }
    return true;
  }

  /**
   * Picks the node for `service.method`, in this order: the named node; else the session's previous
   * node for this service (`affinity`) while it can still serve it and matches `where`; else the
   * choice of `selector` (the relay's default when undefined) among the nodes matching `where`.
   * With `access`, only nodes the caller may call that method on are considered. Called once per
   * call: without `where` and `selector` it allocates nothing.
   */
  route(
    service: string,
    method: string,
    nodeName: string | undefined,
    affinity: NodeLink | undefined,
    where?: Where,
    selector: Selector = this.selector,
    access?: CallerAccess,
  ): NodeLink {
    if (nodeName !== undefined) {
      const node = this.byName.get(nodeName);
      if (!node || (access && !access.canSee(node))) {
        throw new TunnelError(ErrorCode.NO_NODE, `no node named ${nodeName} is connected; nodes online: ${this.describe(access)}`);
      }
      if (access && !access.mayCall(node.name, service, method)) throw access.forbidden(service, method, node.name);
      this.check(node, service, method, access);
      if (!node.available) throw new TunnelError(ErrorCode.NO_NODE, `node ${nodeName} is draining or disconnecting and takes no new calls`);
      if (!matchesWhere(node, where)) {
        throw new TunnelError(ErrorCode.NO_NODE, `node ${nodeName} has labels ${formatLabels(node.labels)}, which do not match ${formatLabels(where!)}`);
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
  targets(service: string, method: string, where: Where | undefined, access?: CallerAccess): NodeLink[] {
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
  private whyNone(all: readonly NodeLink[], service: string, method: string, where: Where | undefined, access: CallerAccess | undefined): TunnelError {
    // Nodes the caller may not call do not exist for it: if that leaves none, the service does not either.
    const candidates = access ? all.filter((n) => access.mayCall(n.name, service, method)) : all;
    if (candidates.length === 0) return this.noService(service, access);
    const withMethod = candidates.filter((n) => n.hasMethod(service, method));
    if (withMethod.length === 0) {
      const node = candidates[0]!;
      return new TunnelError(ErrorCode.NO_METHOD, `service ${service} has no method ${method}; methods on ${node.name}: ${methodsOf(node, service, access).join(', ')}`);
    }
    const matching = withMethod.filter((n) => matchesWhere(n, where));
    if (matching.length === 0) {
      const seen = withMethod.slice(0, 10).map((n) => `${n.name} (${formatLabels(n.labels)})`).join(', ');
      return new TunnelError(ErrorCode.NO_NODE, `no node serving ${service}.${method} has labels ${formatLabels(where!)}; nodes serving it: ${seen}`);
    }
    return new TunnelError(ErrorCode.NO_NODE, `every node serving ${service}${where ? ` with labels ${formatLabels(where)}` : ''} is draining; try again shortly`);
  }

  private check(node: NodeLink, service: string, method: string, access: CallerAccess | undefined): void {
    if (!node.services.has(service)) {
      throw new TunnelError(ErrorCode.NO_SERVICE, `node ${node.name} does not serve ${service}; it serves ${servicesOf(node, access).join(', ')}`);
    }
    if (!node.hasMethod(service, method)) {
      throw new TunnelError(ErrorCode.NO_METHOD, `service ${service} on node ${node.name} has no method ${method}; methods: ${methodsOf(node, service, access).join(', ')}`);
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

/** The services of `node` that `access` may call something of (every service without access). */
export function servicesOf(node: NodeLink, access: CallerAccess | undefined): string[] {
  return access ? access.servicesOf(node) : [...node.services.keys()];
}

/** The methods of `service` on `node` that `access` may call, sorted. */
export function methodsOf(node: NodeLink, service: string, access: CallerAccess | undefined): string[] {
  return access ? access.methodsOf(node, service) : node.methods(service);
}
