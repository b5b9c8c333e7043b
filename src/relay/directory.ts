import { ErrorCode, TunnelError } from '../errors.js';
import type { NodeLink } from './node-link.js';

/** Marks a forwarded service whose methods the node cannot list in advance. */
export const ANY_METHOD = '*';

/**
 * The nodes attached to this relay, by name and by service, and the choice of a node for a call.
 * Error messages name what is online so that a caller can fix a typo without another tool.
 */
export class NodeDirectory {
  private readonly byName = new Map<string, NodeLink>();
  private readonly byService = new Map<string, NodeLink[]>();
  private readonly cursor = new Map<string, number>();

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
   * Picks the node for `service.method`: the named node, else the session's previous node for this
   * service while it can still serve it, else the next one in round-robin order.
   */
  route(service: string, method: string, nodeName: string | undefined, affinity: NodeLink | undefined): NodeLink {
    if (nodeName !== undefined) {
      const node = this.byName.get(nodeName);
      if (!node) throw new TunnelError(ErrorCode.NO_NODE, `no node named ${nodeName} is connected; nodes online: ${this.describe()}`);
      this.check(node, service, method);
      if (node.draining) throw new TunnelError(ErrorCode.NO_NODE, `node ${nodeName} is draining and takes no new calls`);
      return node;
    }
    if (affinity && !affinity.closed && !affinity.draining && affinity.hasMethod(service, method)) return affinity;
    const candidates = this.byService.get(service);
    if (!candidates) throw new TunnelError(ErrorCode.NO_SERVICE, `no node serves service ${service}; nodes online: ${this.describe()}`);
    const n = candidates.length;
    const start = this.cursor.get(service) ?? 0;
    let sawMethod = false;
    for (let i = 0; i < n; i++) {
      const node = candidates[(start + i) % n]!;
      if (!node.hasMethod(service, method)) continue;
      sawMethod = true;
      if (node.draining) continue;
      this.cursor.set(service, (start + i + 1) % n);
      return node;
    }
    if (!sawMethod) {
      const node = candidates[0]!;
      throw new TunnelError(ErrorCode.NO_METHOD, `service ${service} has no method ${method}; methods on ${node.name}: ${node.methods(service).join(', ')}`);
    }
    throw new TunnelError(ErrorCode.NO_NODE, `every node serving ${service} is draining; try again shortly`);
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
