import { ErrorCode, TunnelError } from '../errors.js';
import { controlProblem, labelsProblem, methodProblem, NAME_LIMITS } from '../wire/bounds.js';
import type { Kind, Message } from '../wire/messages.js';
import { RELAY_SERVICE } from '../wire/presence.js';
import type { CallerLimits, NodeRoute } from './contracts.js';
import { UNKNOWN as UNKNOWN_METHOD } from './metrics.js';
import type { CallerAccess } from './permissions.js';
import { parseWhere, selectorNamed, type Selector, type Where } from './selectors.js';

/** Params of a call to the relay's own service are ignored; anything bigger than this is refused. */
export const RELAY_PARAMS_LIMIT = 64 * 1024;

/** A caller's request as the relay reads it off the wire. */
export type CallRequest = Extract<Message, { kind: typeof Kind.REQUEST }>;

/** What admission reads of the caller's connection at the moment a request arrives. */
export interface AdmissionState {
  /** The request's id is taken by a call or a streamed upload of this connection. */
  readonly idInUse: boolean;
  /** Calls of this connection in flight. */
  readonly inFlight: number;
  /** Streamed requests whose body the relay is still collecting. */
  readonly uploads: number;
  /** Set while the relay drains: why. */
  readonly goingAway: string | undefined;
  readonly limits: CallerLimits;
  /** The Login lockout of the caller's address (limits.ts `LoginFailures`). */
  readonly logins?: { refuse(method: string): TunnelError | undefined } | undefined;
  /** The caller's `call=` rules; undefined: it may call everything. */
  readonly access: CallerAccess | undefined;
}

/** A request refused before it reaches a node: `error` goes back to the caller, `method` is what metrics count it under. */
export interface Refusal {
  readonly ok: false;
  readonly method: string;
  readonly error: TunnelError;
}

/** Where an admitted request goes next. */
export type Destination =
  /** A streamed broadcast: the relay collects the whole body first, then admits it again. */
  | 'upload'
  /** The relay's own service (presence.ts). */
  | 'relay'
  /** Every matching node (broadcast.ts). */
  | 'broadcast'
  /** One node, chosen by the directory. */
  | 'call';

export interface Admitted {
  readonly ok: true;
  readonly to: Destination;
  readonly service: string;
  /** The method's name within its service (after the last dot). */
  readonly method: string;
  /** ms the relay waits for the answer: the caller's timeout, capped, or the default. */
  readonly timeout: number;
  /** The node the caller named. */
  readonly node: string | undefined;
  /** Parsed only for `broadcast` and `call`. */
  readonly where: Where | undefined;
  readonly selector: Selector | undefined;
}

export type Admission = Refusal | Admitted;

const refuse = (method: string, code: ErrorCode, message: string): Refusal => ({ ok: false, method, error: new TunnelError(code, message) });

/**
 * The checks a request passes before the relay routes it, cheapest and most general first: the
 * first that fails is the answer (tests pin the order). Pure: it reads `request` and `state` and
 * changes nothing; the caller link does whatever follows.
 */
export function admit(request: CallRequest, state: AdmissionState): Admission {
  const { id, method, meta } = request;
  const { limits } = state;
  if (state.idInUse) return refuse(method, ErrorCode.BAD_REQUEST, `request id ${id} is already in flight on this connection`);
  if (state.goingAway !== undefined) {
    return refuse(method, ErrorCode.GOING_AWAY, `the relay is going away (${state.goingAway}) and takes no new calls; reconnect and call again`);
  }
  const badName = methodProblem(method);
  if (badName !== undefined) return refuse(UNKNOWN_METHOD, ErrorCode.BAD_REQUEST, badName);
  if (limits.memory?.pressed) return refuse(method, ErrorCode.OVERLOADED, limits.memory.describe());
  if (state.inFlight + state.uploads >= limits.maxCallerInFlight) {
    return refuse(
      method,
      ErrorCode.OVERLOADED,
      `this connection already has ${state.inFlight} calls in flight (the limit); wait for answers before sending more`,
    );
  }
  const size = request.stream > 0 ? request.stream : request.params.length;
  if (size > limits.maxMessage) {
    return refuse(method, ErrorCode.TOO_LARGE, `params of ${method} are ${size} bytes; this relay accepts at most ${limits.maxMessage}`);
  }
  const dot = method.lastIndexOf('.');
  const service = method.slice(0, dot);
  const name = method.slice(dot + 1);
  if (service === RELAY_SERVICE && size > RELAY_PARAMS_LIMIT) {
    return refuse(method, ErrorCode.TOO_LARGE, `params of ${method} are ${size} bytes; the relay's own methods take at most ${RELAY_PARAMS_LIMIT}`);
  }
  const locked = state.logins?.refuse(method);
  if (locked) return { ok: false, method, error: locked };
  const { access } = state;
  if (access && service !== RELAY_SERVICE && !access.mayCallSomewhere(service, name)) return { ok: false, method, error: access.forbidden(service, name) };
  let timeout = limits.defaultTimeout;
  if (meta.timeout !== undefined) {
    if (typeof meta.timeout !== 'number' || !(meta.timeout > 0)) {
      return refuse(method, ErrorCode.BAD_REQUEST, 'metadata timeout must be a positive number of milliseconds');
    }
    timeout = Math.min(meta.timeout, limits.maxTimeout);
  }
  if (meta.node !== undefined && (typeof meta.node !== 'string' || meta.node.length > NAME_LIMITS.name)) {
    return refuse(method, ErrorCode.BAD_REQUEST, `metadata node must be a node name (a string of at most ${NAME_LIMITS.name} characters)`);
  }
  const node = meta.node as string | undefined;
  const badNode = node === undefined ? undefined : controlProblem(node, 'metadata node');
  if (badNode !== undefined) return refuse(method, ErrorCode.BAD_REQUEST, badNode);
  if (request.stream > 0 && meta.broadcast === true) return admitted('upload', service, name, timeout, node, undefined, undefined);
  if (service === RELAY_SERVICE) return admitted('relay', service, name, timeout, node, undefined, undefined);
  let where: Where | undefined;
  let selector: Selector | undefined;
  try {
    if (meta.where !== undefined) where = parseWhere(meta.where);
    const badWhere = where === undefined ? undefined : labelsProblem(where, 'metadata where');
    if (badWhere !== undefined) return refuse(method, ErrorCode.BAD_REQUEST, badWhere);
    if (meta.selector !== undefined) selector = selectorNamed(meta.selector);
  } catch (err) {
    return { ok: false, method, error: err as TunnelError };
  }
  if (meta.broadcast === true) {
    if (node !== undefined) return refuse(method, ErrorCode.BAD_REQUEST, 'a broadcast goes to every matching node; drop node or broadcast');
    return admitted('broadcast', service, name, timeout, node, where, selector);
  }
  return admitted('call', service, name, timeout, node, where, selector);
}

/** Every admission has this one shape (one hidden class on the hot path: no spread copies). */
function admitted(
  to: Destination,
  service: string,
  method: string,
  timeout: number,
  node: string | undefined,
  where: Where | undefined,
  selector: Selector | undefined,
): Admitted {
  return { ok: true, to, service, method, timeout, node, where, selector };
}

/** The refusal of a call to `node` when it already has as many calls in flight as it may, else undefined. */
export function nodeBusy(node: NodeRoute, maxNodeInFlight: number): TunnelError | undefined {
  if (node.inFlight < maxNodeInFlight) return undefined;
  return new TunnelError(ErrorCode.OVERLOADED, `node ${node.name} already has ${node.inFlight} calls in flight (the limit); try again shortly`);
}
