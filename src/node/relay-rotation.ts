import { advertiseUrl } from '../util/address.js';
import type { Logger } from '../util/logger.js';
import { WELCOME_RELAY_LIMITS } from '../wire/bounds.js';

/**
 * A tunnel gives up on the relay it dials after this many failed rounds of dials in a row (a round:
 * every address of the relay's name, see wire/dial.ts `resolveAll`)...
 */
export const FOLLOW_AFTER_FAILURES = 3;
/**
 * ...or once this long has passed, ms, since it was last connected (or since it started dialling
 * this relay) and at least one round failed: a relay whose address swallows packets makes each
 * attempt last the whole handshake timeout (10 s), and three of those would be too long to wait.
 */
export const FOLLOW_AFTER_MS = 10_000;

/**
 * Which relay one tunnel dials: its configured relay, or one of the relays of the cluster its
 * relays listed in their welcomes (`relays`). When the one it dials stays unreachable
 * ({@link FOLLOW_AFTER_FAILURES}, {@link FOLLOW_AFTER_MS}) it moves to the next of
 * [configured, ...learned] in turn, so the configured relay is tried again in every cycle. The
 * backoff is the tunnel's, unchanged by a move.
 */
export class RelayRotation {
  /** The URL dialled now. */
  current: string;
  /** What the configured relay calls itself (its welcome's `url`): the same relay under another spelling. */
  alias: string | undefined;
  /** What the relay of the current connection calls itself, while connected. */
  self: string | undefined;
  private failures = 0;
  private since: number;

  constructor(
    /** The relay given with `--relay` (the `relay` option). */
    readonly configured: string,
    /** The learned relays this tunnel may move to now. */
    private readonly candidates: () => readonly string[],
    private readonly now: () => number = Date.now,
  ) {
    this.current = configured;
    this.since = now();
  }

  /** The relay welcomed us: it said it is `self` (undefined: it did not say). */
  connected(self: string | undefined): void {
    this.failures = 0;
    this.self = self;
    if (this.current === this.configured && self !== undefined) this.alias = self;
  }

  /** The connection the relay welcomed closed: the clock of {@link FOLLOW_AFTER_MS} starts. */
  disconnected(): void {
    this.failures = 0;
    this.self = undefined;
    this.since = this.now();
  }

  /**
   * One round of dials to {@link current} failed. Returns the relay to dial instead when the current
   * one is given up and there is another to try, else undefined.
   */
  failed(): string | undefined {
    this.failures++;
    if (this.failures < FOLLOW_AFTER_FAILURES && this.now() - this.since < FOLLOW_AFTER_MS) return undefined;
    const order = [...new Set([this.configured, ...this.candidates()])];
    // The current relay may have left the list (a welcome no longer names it): start from the top.
    const next = order[(order.indexOf(this.current) + 1) % order.length]!;
    if (next === this.current) return undefined;
    this.current = next;
    this.failures = 0;
    this.since = this.now();
    return next;
  }
}

/**
 * The relays of the cluster, as a node's relays listed them in their welcomes: one list per tunnel
 * (the latest welcome that listed any), and which of them each tunnel may move to.
 */
export class LearnedRelays {
  private readonly lists = new Map<RelayRotation, string[]>();

  constructor(
    private readonly log: Logger,
    /** `followCluster`: off, nothing is learned and no tunnel moves. */
    private readonly enabled: boolean,
  ) {}

  /**
   * A welcome on a tunnel: its `url` and `relays`, checked as any relay address (a URL that does not
   * parse is ignored, with one debug line) and bounded as the relay bounds them. A welcome that
   * lists none (a relay that has not heard its peers yet, a standalone or older relay) leaves what
   * was known, so that a relay restarting alone does not make the node forget the cluster.
   * Returns the welcome's `url`, when it parses, and the relays it listed that parse.
   */
  welcome(rotation: RelayRotation, w: { url?: unknown; relays?: unknown }): { self: string | undefined; relays: string[] } {
    const self = typeof w.url === 'string' ? this.parse(w.url) : undefined;
    if (!this.enabled || !Array.isArray(w.relays)) return { self, relays: [] };
    const urls: string[] = [];
    for (const u of w.relays.slice(0, WELCOME_RELAY_LIMITS.count)) {
      const url = typeof u === 'string' ? this.parse(u) : undefined;
      if (url !== undefined && !urls.includes(url)) urls.push(url);
      else if (typeof u !== 'string') this.log.debug({ type: typeof u }, 'ignoring a relay in the welcome that is not a URL');
    }
    if (urls.length > 0) this.lists.set(rotation, urls);
    return { self, relays: urls };
  }

  /**
   * Where `rotation`'s tunnel may move: every relay learned, less those another tunnel of the node
   * holds (its configured relay, the relay it dials, what they call themselves), since two tunnels
   * of one process on one relay would replace each other; and, for a tunnel configured with
   * `wss://`, less every `ws://` URL (no downgrade to clear text on the word of a welcome).
   */
  candidates(rotation: RelayRotation, all: readonly RelayRotation[]): string[] {
    if (!this.enabled) return [];
    const held = new Set<string>();
    for (const other of all) {
      if (other === rotation) continue;
      for (const u of [other.configured, other.current, other.alias, other.self]) if (u !== undefined) held.add(u);
    }
    const secure = rotation.configured.startsWith('wss:');
    const out = new Set<string>();
    for (const list of this.lists.values()) {
      for (const url of list) {
        if (held.has(url) || url === rotation.alias || (secure && !url.startsWith('wss:'))) continue;
        out.add(url);
      }
    }
    return [...out].sort();
  }

  private parse(text: string): string | undefined {
    if (text.length > WELCOME_RELAY_LIMITS.url) {
      this.log.debug({ length: text.length }, 'ignoring a relay URL in the welcome: too long');
      return undefined;
    }
    try {
      return advertiseUrl(text, 'relay URL in the welcome');
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, 'ignoring a relay URL in the welcome');
      return undefined;
    }
  }
}
