import { ErrorCode, TunnelError } from '../errors.js';
import { NAME_LIMITS, NODE_NAME, SERVICE_NAME } from '../wire/bounds.js';
import { ANY_METHOD } from '../wire/messages.js';
import { RELAY_SERVICE } from '../wire/presence.js';

/**
 * What each identity may do, beyond being admitted: the `serve=` and `call=` rules of the tokens
 * file, and the `permissions` option of the relay. Both are merged: the rules of one name are the
 * union of every source that gives that name rules.
 */
export interface Permissions {
  /**
   * By node name. `serve` lists the services the node may announce; a node without `serve` may
   * announce every service that no other node's `serve` lists. A service listed for any node is
   * reserved to the nodes that list it.
   */
  nodes?: Record<string, { serve?: string[] }>;
  /**
   * By caller identity (the name of its token). `call` lists patterns `[node/]Service[.Method]`
   * where `*` matches any run of characters within its part: `Arith` is every method of Arith,
   * no `node/` part is every node. A caller without `call` may call everything.
   */
  callers?: Record<string, { call?: string[] }>;
}

/** What a permission needs to know of a node: its name and what it announced (`*` for any method). */
export interface NodeView {
  readonly name: string;
  readonly services: ReadonlyMap<string, ReadonlySet<string>>;
}

type Matcher = (value: string) => boolean;

const ANY: Matcher = () => true;

/** One parsed `call=` pattern. */
export interface CallPattern {
  readonly text: string;
  readonly node: Matcher;
  readonly service: Matcher;
  readonly method: Matcher;
}

const NODE_GLOB = /^[\w.*-]+$/;
const SERVICE_GLOB = /^[\w.*-]+$/;
const METHOD_GLOB = /^[\w*]+$/;

function glob(part: string): Matcher {
  if (/^\*+$/.test(part)) return ANY;
  if (!part.includes('*')) return (value) => value === part;
  const re = new RegExp(
    `^${part
      .split('*')
      .map((s) => s.replace(/[.-]/g, '\\$&'))
      .join('.*')}$`,
  );
  return (value) => re.test(value);
}

/**
 * Parses `[node/]Service[.Method]`. The method is what follows the last dot, so a service whose
 * name has dots is written with its method part: `billing.v2.*`.
 */
export function parseCallPattern(text: string): CallPattern {
  if (text.length > NAME_LIMITS.method + NAME_LIMITS.name + 1) throw new Error(`call= pattern of ${text.length} characters is too long`);
  const slash = text.indexOf('/');
  if (slash !== text.lastIndexOf('/')) throw new Error(`call= pattern "${text}" has more than one /; want [node/]Service[.Method]`);
  const nodePart = slash >= 0 ? text.slice(0, slash) : undefined;
  const rest = slash >= 0 ? text.slice(slash + 1) : text;
  const dot = rest.lastIndexOf('.');
  const servicePart = dot >= 0 ? rest.slice(0, dot) : rest;
  const methodPart = dot >= 0 ? rest.slice(dot + 1) : undefined;
  if (nodePart !== undefined && !NODE_GLOB.test(nodePart)) throw new Error(`call= pattern "${text}": the node part must be letters, digits, _ . - and *`);
  if (!SERVICE_GLOB.test(servicePart)) throw new Error(`call= pattern "${text}": the service part must be letters, digits, _ . - and *`);
  if (methodPart !== undefined && !METHOD_GLOB.test(methodPart)) throw new Error(`call= pattern "${text}": the method part must be letters, digits, _ and *`);
  return {
    text,
    node: nodePart === undefined ? ANY : glob(nodePart),
    service: glob(servicePart),
    method: methodPart === undefined ? ANY : glob(methodPart),
  };
}

/** Throws when `name` cannot be a service a node announces. */
export function checkServiceName(name: string): void {
  if (!SERVICE_NAME.test(name))
    throw new Error(`serve= service "${name.slice(0, 40)}" must be a service name: a letter or _ first, then letters, digits, _ . -`);
  if (name === RELAY_SERVICE) throw new Error(`serve= cannot list ${RELAY_SERVICE}: it is the relay's own service`);
}

/**
 * The rules of one caller identity that has `call=` patterns. Callers without rules have no
 * CallerAccess at all ({@link PermissionTable.access} answers undefined): they may call everything.
 */
export class CallerAccess {
  constructor(
    readonly identity: string,
    private readonly patterns: readonly CallPattern[],
  ) {}

  /** May call `service.method` on the node named `node`. Runs once per call and per candidate node. */
  mayCall(node: string, service: string, method: string): boolean {
    for (const p of this.patterns) if (p.service(service) && p.method(method) && p.node(node)) return true;
    return false;
  }

  /** May call `service.method` on some node: when not, the call is FORBIDDEN whatever is online. */
  mayCallSomewhere(service: string, method: string): boolean {
    for (const p of this.patterns) if (p.service(service) && p.method(method)) return true;
    return false;
  }

  /** May call some method of `service` on `node` (what counts for a forwarded service announced with `*`). */
  mayCallService(node: string, service: string): boolean {
    for (const p of this.patterns) if (p.service(service) && p.node(node)) return true;
    return false;
  }

  /** The methods of `service` on `node` this caller may call, sorted (`*` when it forwards any method). */
  methodsOf(node: NodeView, service: string): string[] {
    const out: string[] = [];
    for (const m of node.services.get(service) ?? []) {
      if (m === ANY_METHOD ? this.mayCallService(node.name, service) : this.mayCall(node.name, service, m)) out.push(m);
    }
    return out.sort();
  }

  /** The services of `node` with at least one method this caller may call. */
  servicesOf(node: NodeView): string[] {
    return [...node.services.keys()].filter((s) => this.methodsOf(node, s).length > 0);
  }

  /** Sees `node` in presence, in messages and among broadcast targets: may call one of its methods. */
  canSee(node: NodeView): boolean {
    for (const [service, methods] of node.services) {
      if (!this.mayCallService(node.name, service)) continue;
      for (const m of methods) if (m === ANY_METHOD || this.mayCall(node.name, service, m)) return true;
    }
    return false;
  }

  /** The refusal of `service.method`, naming what was denied and the rule, never what exists. */
  forbidden(service: string, method: string, node?: string): TunnelError {
    const where = node === undefined ? 'on any node it can see' : `on node ${node}`;
    return new TunnelError(ErrorCode.FORBIDDEN, `caller ${this.identity} may not call ${service}.${method} ${where} (call= in the tokens file)`);
  }
}

/**
 * Every rule in force: which services are reserved to which nodes, and what each limited caller may
 * call. Built once per load of the tokens file; the relay swaps the whole table on reload.
 */
export class PermissionTable {
  /** No rules: every node may serve anything, every caller may call everything. */
  static readonly OPEN = new PermissionTable();

  private readonly serve = new Map<string, Set<string>>();
  /** Service → the nodes whose `serve` lists it. */
  private readonly reserved = new Map<string, Set<string>>();
  private readonly callers = new Map<string, CallerAccess>();

  /** Merges `sources`; throws an Error naming the entry for a bad name or pattern. */
  constructor(...sources: Permissions[]) {
    const calls = new Map<string, CallPattern[]>();
    for (const source of sources) {
      for (const [node, rules] of Object.entries(source.nodes ?? {})) {
        if (!NODE_NAME.test(node)) throw new Error(`permissions: "${node.slice(0, 40)}" is not a node name`);
        if (rules.serve === undefined) continue;
        if (!Array.isArray(rules.serve)) throw new Error(`permissions: serve of node ${node} must be a list of service names`);
        const set = this.serve.get(node) ?? new Set<string>();
        this.serve.set(node, set);
        for (const service of rules.serve) {
          checkServiceName(String(service));
          set.add(service);
          const owners = this.reserved.get(service) ?? new Set<string>();
          owners.add(node);
          this.reserved.set(service, owners);
        }
      }
      for (const [identity, rules] of Object.entries(source.callers ?? {})) {
        if (rules.call === undefined) continue;
        if (!Array.isArray(rules.call)) throw new Error(`permissions: call of caller ${identity} must be a list of patterns`);
        const list = calls.get(identity) ?? [];
        calls.set(identity, list);
        for (const text of rules.call) list.push(parseCallPattern(String(text)));
      }
    }
    for (const [identity, patterns] of calls) this.callers.set(identity, new CallerAccess(identity, patterns));
  }

  /** The rules of caller `identity`, or undefined when it may call everything (anonymous callers too). */
  access(identity: string | null): CallerAccess | undefined {
    return identity === null ? undefined : this.callers.get(identity);
  }

  /**
   * May node `node` announce `service`? `proven` is false when nothing proved the name (a node
   * admitted by the shared node token may take any name): such a node has no `serve` of its own and
   * may announce only services nobody reserved.
   */
  mayServe(node: string, service: string, proven = true): boolean {
    const own = proven ? this.serve.get(node) : undefined;
    return own !== undefined ? own.has(service) : !this.reserved.has(service);
  }

  /** Why node `node` may not announce one of `services`, or undefined when it may announce them all. */
  serveRefusal(node: string, services: Iterable<string>, proven = true): string | undefined {
    for (const service of services) {
      if (this.mayServe(node, service, proven)) continue;
      if (!proven && this.serve.get(node)?.has(service)) {
        return `node ${node} may not serve ${service} with the shared node token: it is reserved to nodes with their own token line (serve=)`;
      }
      if (this.reserved.has(service)) {
        return `node ${node} may not serve ${service}: it is reserved to nodes whose tokens list it (serve= in the tokens file)`;
      }
      return `node ${node} may not serve ${service}: its serve= in the tokens file does not list it`;
    }
    return undefined;
  }
}
