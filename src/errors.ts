/**
 * The one error type of the project. Every failure that crosses the wire or reaches a user has a
 * stable `code` (see docs/PROTOCOL.md, "Errors"); messages say what happened and what to do.
 */
export const ErrorCode = {
  NO_SERVICE: 'NO_SERVICE',
  NO_METHOD: 'NO_METHOD',
  NO_NODE: 'NO_NODE',
  NODE_LOST: 'NODE_LOST',
  TIMEOUT: 'TIMEOUT',
  CANCELLED: 'CANCELLED',
  NOT_LOGGED_IN: 'NOT_LOGGED_IN',
  LOGIN_FAILED: 'LOGIN_FAILED',
  BAD_REQUEST: 'BAD_REQUEST',
  TOO_LARGE: 'TOO_LARGE',
  OVERLOADED: 'OVERLOADED',
  UNAUTHORIZED: 'UNAUTHORIZED',
  /** Authenticated, but this identity may not do that (a `serve=` or `call=` rule of the tokens file). */
  FORBIDDEN: 'FORBIDDEN',
  APP_ERROR: 'APP_ERROR',
  CONNECTION_CLOSED: 'CONNECTION_CLOSED',
  PROTOCOL_ERROR: 'PROTOCOL_ERROR',
  GOING_AWAY: 'GOING_AWAY',
} as const;

/**
 * Why a call or an action found no node: `data.reason` of every `NO_NODE` error. The message says
 * it in words (and may change); the reason is stable, for programs (docs/PROTOCOL.md, "Errors").
 */
export const NoNodeReason = {
  /** The node named (`node:` option, `--node`, or a dashboard action) is not connected, or left before the call reached it. */
  NODE_NOT_FOUND: 'node-not-found',
  /** The node named is attached to another relay of the cluster; act on that relay. */
  NODE_ELSEWHERE: 'node-elsewhere',
  /** The node named, or every node that could serve the call, is draining or disconnecting and takes no new calls. */
  DRAINING: 'draining',
  /** No node that serves the method carries the `where` labels asked for. */
  NO_MATCH: 'no-match',
  /** The node is attached to another relay of the cluster, which cannot be reached now. */
  RELAY_UNREACHABLE: 'relay-unreachable',
  /** Undrain of a name that is not drained on this relay. */
  NOT_DRAINED: 'not-drained',
} as const;

export type NoNodeReason = (typeof NoNodeReason)[keyof typeof NoNodeReason];

/** A `NO_NODE` error with its stable {@link NoNodeReason} in `data.reason`. */
export function noNode(reason: NoNodeReason, message: string): TunnelError {
  return new TunnelError(ErrorCode.NO_NODE, message, { data: { reason } });
}

/** The codes the project itself uses: a string-literal union (`'NO_SERVICE' | 'NO_METHOD' | …`). */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * The code of a {@link TunnelError}: one of the project's {@link ErrorCode}s, or a code of a
 * handler's own (`throw new TunnelError('OUT_OF_STOCK', …)`). `string & {}` keeps editors
 * suggesting the known codes while any string is accepted.
 */
export type TunnelErrorCode = ErrorCode | (string & {});

/** The shape of an error on the wire: `{ code, message, data? }`. */
export interface WireError {
  code: TunnelErrorCode;
  message: string;
  data?: unknown;
}

/**
 * An error with a stable {@link TunnelErrorCode}; every failure a caller or handler sees is one. A
 * handler may throw one with a code of its own, which the caller receives unchanged.
 */
export class TunnelError extends Error {
  override name = 'TunnelError';
  /** A known {@link ErrorCode}, or a handler's own code. Narrow it with {@link isTunnelError}. */
  readonly code: TunnelErrorCode;
  /** Whatever the thrower attached (`{ data }`), as it came over the wire. */
  readonly data: unknown;

  constructor(code: TunnelErrorCode, message: string, options: { data?: unknown; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.data = options.data;
  }

  /** The error as it travels: `{ code, message, data? }`. */
  toWire(): WireError {
    return this.data === undefined ? { code: this.code, message: this.message } : { code: this.code, message: this.message, data: this.data };
  }

  /** Rebuilds an error received from the wire; tolerates foreign shapes (plain strings). */
  static fromWire(value: unknown): TunnelError {
    if (typeof value === 'string') return new TunnelError(ErrorCode.APP_ERROR, value);
    if (value !== null && typeof value === 'object') {
      const v = value as Record<string, unknown>;
      const code = typeof v.code === 'string' ? v.code : ErrorCode.APP_ERROR;
      const message = typeof v.message === 'string' ? v.message : JSON.stringify(value);
      return new TunnelError(code, message, v.data === undefined ? {} : { data: v.data });
    }
    return new TunnelError(ErrorCode.APP_ERROR, String(value));
  }

  /** Any thrown value as a TunnelError: user code throwing a plain Error becomes APP_ERROR. */
  static from(err: unknown): TunnelError {
    if (err instanceof TunnelError) return err;
    if (err instanceof Error) return new TunnelError(ErrorCode.APP_ERROR, err.message, { cause: err });
    return new TunnelError(ErrorCode.APP_ERROR, String(err));
  }

  override toString(): string {
    return `${this.code}: ${this.message}`;
  }
}

/**
 * True when `err` is a {@link TunnelError}, and, given a `code`, one with that code; the type of
 * `err.code` then narrows to it:
 *
 * ```ts
 * if (isTunnelError(err, 'NODE_LOST')) err.code;   // 'NODE_LOST'
 * ```
 */
export function isTunnelError(err: unknown): err is TunnelError;
export function isTunnelError<C extends TunnelErrorCode>(err: unknown, code: C): err is TunnelError & { readonly code: C };
export function isTunnelError(err: unknown, code?: string): err is TunnelError {
  return err instanceof TunnelError && (code === undefined || err.code === code);
}
