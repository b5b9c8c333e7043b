import { ErrorCode, TunnelError } from '../errors.js';
import type { NodeLink } from './node-link.js';
import { eligible, formatLabels, matchesWhere, selectorNamed, type Selector, type Where } from './selectors.js';


/**
 * The nodes attached to this relay, by name and by service, and the choice of a node for a call.
 * Error messages name what is online so that a caller can fix a typo without another tool.
 */
export class NodeDirectory {
  private readonly byName = new Map<string, NodeLink>();
  private readonly byService = new Map<string, NodeLink[]>();
  private readonly cursor = new Map<string, number>();
  /** The selector of calls that name none (the relay's `selector` option). */
  selector: Selector = selectorNamed('round-robin');

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
   * Called once per call: without `where` and `selector` it allocates nothing.
   */
  route(
    service: string,
    method: string,
    nodeName: string | undefined,
    affinity: NodeLink | undefined,
    where?: Where,
    selector: Selector = this.selector,
  ): NodeLink {
    if (nodeName !== undefined) {
      const node = this.byName.get(nodeName);
      if (!node) throw new TunnelError(ErrorCode.NO_NODE, `no node named ${nodeName} is connected; nodes online: ${this.describe()}`);
      this.check(node, service, method);
      if (!node.available) throw new TunnelError(ErrorCode.NO_NODE, `node ${nodeName} is draining or disconnecting and takes no new calls`);
      if (!matchesWhere(node, where)) {
        throw new TunnelError(ErrorCode.NO_NODE, `node ${nodeName} has labels ${formatLabels(node.labels)}, which do not match ${formatLabels(where!)}`);
      }
      return node;
    }
    if (affinity && eligible(affinity, service, method, where)) return affinity;
    const candidates = this.byService.get(service);
    if (!candidates) throw new TunnelError(ErrorCode.NO_SERVICE, `no node serves service ${service}; nodes online: ${this.describe()}`);
    const start = this.cursor.get(service) ?? 0;
    const at = selector(candidates, start, service, method, where);
    if (at < 0) throw this.whyNone(candidates, service, method, where);
    this.cursor.set(service, (at + 1) % candidates.length);
    return candidates[at]!;
  }

  /** Every node that can take `service.method` now and matches `where` (the targets of a broadcast). */
  targets(service: string, method: string, where: Where | undefined): NodeLink[] {
    const candidates = this.byService.get(service);
    if (!candidates) throw new TunnelError(ErrorCode.NO_SERVICE, `no node serves service ${service}; nodes online: ${this.describe()}`);
    const nodes = candidates.filter((n) => eligible(n, service, method, where));
    if (nodes.length === 0) throw this.whyNone(candidates, service, method, where);
    return nodes;
  }

  /** The error for "no candidate qualified", naming the first reason that rules them all out. */
  private whyNone(candidates: readonly NodeLink[], service: string, method: string, where: Where | undefined): TunnelError {
    const withMethod = candidates.filter((n) => n.hasMethod(service, method));
    if (withMethod.length === 0) {
      const node = candidates[0]!;
      return new TunnelError(ErrorCode.NO_METHOD, `service ${service} has no method ${method}; methods on ${node.name}: ${node.methods(service).join(', ')}`);
    }
    const matching = withMethod.filter((n) => matchesWhere(n, where));
    if (matching.length === 0) {
      const seen = withMethod.slice(0, 10).map((n) => `${n.name} (${formatLabels(n.labels)})`).join(', ');
      return new TunnelError(ErrorCode.NO_NODE, `no node serving ${service}.${method} has labels ${formatLabels(where!)}; nodes serving it: ${seen}`);
    }
    return new TunnelError(ErrorCode.NO_NODE, `every node serving ${service}${where ? ` with labels ${formatLabels(where)}` : ''} is draining; try again shortly`);
  }

  private check(node: NodeLink, service: string, method: string): void {
    if (!node.services.has(service)) {
      throw new TunnelError(ErrorCode.NO_SERVICE, `node ${node.name} does not serve ${service}; it serves ${[...node.services.keys()].join(', ')}`);
    }
    if (!node.hasMethod(service, method)) {
      throw new TunnelError(ErrorCode.NO_METHOD, `service ${service} on node ${node.name} has no method ${method}; methods: ${node.methods(service).join(', ')}`);
    }
  }

  /** "office-1 (Arith, Hello), lab-2 (KV)"; at most ten nodes are named. */
  describe(): string {
    if (this.byName.size === 0) return 'none';
    const parts: string[] = [];
    for (const node of this.byName.values()) {
      if (parts.length === 10) {
        parts.push(`and ${this.byName.size - 10} more`);
        break;
      }
      parts.push(`${node.name} (${[...node.services.keys()].join(', ')})`);
    }
    return parts.join(', ');
  }
}
