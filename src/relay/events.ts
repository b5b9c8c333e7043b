import { EventEmitter } from 'node:events';

/** What happened: nodes coming and going, what the relay refused or cut, what an operator did. */
export type AuditKind =
  | 'node-join'
  | 'node-leave'
  | 'node-replaced'
  | 'node-draining'
  | 'refused-connection'
  | 'refused-request'
  | 'refused-call'
  | 'revoked'
  | 'slow-consumer'
  | 'auth-backoff'
  | 'action';

/** Which door of the relay a refusal or a cut happened at. */
export type AuditDoor = 'websocket' | 'http' | 'admin' | 'msgpack-rpc' | 'dashboard';

/**
 * One event of the relay, as the audit log lines say it (`refused hello`, `revoked connection`,
 * `slow consumer: closing connection`, `node connected`, ...). Fields that do not apply are absent.
 */
export interface AuditRecord {
  /** Increasing from 1 for each relay process: a reader that missed some can tell. */
  readonly seq: number;
  /** When, ms since the epoch. */
  readonly at: number;
  readonly kind: AuditKind;
  /** The node concerned (joins, leaves, refused node hellos, actions on a node). */
  readonly node?: string;
  /** The peer's address, `ip:port`. */
  readonly address?: string;
  /** The caller identity concerned (refused calls, revocations), null when anonymous. */
  readonly identity?: string | null;
  /** A caller session (refused calls, actions on a caller). */
  readonly session?: string;
  readonly door?: AuditDoor;
  /** The method of a refused call. */
  readonly method?: string;
  /** Why, in the words of the log line or of the close reason. */
  readonly reason?: string;
  /** Relays holding a joining node (in a cluster: where it is attached). */
  readonly relays?: readonly string[];
  /** An operator's action (`drain-node`, `disconnect-node`, `disconnect-caller`), its target, and who did it. */
  readonly action?: string;
  readonly target?: string;
  readonly by?: string;
}

/** What the relay gives {@link RelayEvents.audit}: the record without its sequence number and time. */
export type AuditInput = Omit<AuditRecord, 'seq' | 'at'>;

/** Events kept for a reader that arrives late (the dashboard's first snapshot). */
export const AUDIT_RING = 500;
/** Longest text field kept, characters: reasons can quote what a peer sent. */
const MAX_TEXT = 300;

/**
 * The relay's event bus: every {@link AuditRecord} is emitted as `audit` when it happens, and the
 * last {@link AUDIT_RING} are kept in a ring for {@link recent}. Listeners run synchronously inside
 * the relay's own code paths: they must be quick and must not throw.
 */
export class RelayEvents extends EventEmitter<{ audit: [AuditRecord] }> {
  private readonly ring: (AuditRecord | undefined)[];
  private seq = 0;

  constructor(readonly capacity = AUDIT_RING) {
    super();
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`RelayEvents capacity must be a positive integer; got ${capacity}`);
    this.ring = new Array<AuditRecord | undefined>(capacity);
  }

  /** Records one event and tells the listeners. */
  audit(input: AuditInput): AuditRecord {
    const record: AuditRecord = { ...bounded(input), seq: ++this.seq, at: Date.now() };
    this.ring[(record.seq - 1) % this.capacity] = record;
    this.emit('audit', record);
    return record;
  }

  /** The last events kept, oldest first. */
  recent(): AuditRecord[] {
    const out: AuditRecord[] = [];
    const first = Math.max(1, this.seq - this.capacity + 1);
    for (let s = first; s <= this.seq; s++) out.push(this.ring[(s - 1) % this.capacity]!);
    return out;
  }

  /** Events recorded since the relay started, including those no longer kept. */
  get total(): number {
    return this.seq;
  }
}

function bounded(input: AuditInput): AuditInput {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(input)) {
    if (value === undefined) continue;
    out[key] = typeof value === 'string' && value.length > MAX_TEXT ? `${value.slice(0, MAX_TEXT - 3)}...` : value;
  }
  return out as unknown as AuditInput;
}
