import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  connect,
  credsAuthenticator,
  tokenAuthenticator,
  usernamePasswordAuthenticator,
  type Authenticator,
  type Msg,
  type NatsConnection,
} from '@nats-io/transport-node';
import { encode } from '../../wire/codec.js';
import { Backoff } from '../../util/backoff.js';
import type { Logger } from '../../util/logger.js';
import { ClusterKind, ClusterMessageError, pack, unpack, unpackBatch, type ClusterMessage } from './messages.js';
import { clusterServer, type ClusterOptions } from './options.js';
import { ClusterSeal, OpenSeal, readClusterKey, SealError, type Seal, type SealFailure } from './seal.js';

/** Largest batch of messages for one relay in one NATS message, bytes (NATS's default max_payload is 1 MB). */
const BATCH_LIMIT = 512 * 1024;
/** Batches of opens remembered for a "no responders" answer, which comes at once if it comes. */
export const OPEN_BATCHES = 4_096;
/** Subject tokens remembered (one per relay id): bounded, as relay ids come and go. */
const TOKENS = 4_000;
/** Refused cluster messages are logged once per reason in this long, with how many there were, ms. */
const REJECT_LOG_INTERVAL = 10_000;

/** A presence message, checked. */
export type PresenceMessage = Extract<ClusterMessage, { kind: typeof ClusterKind.PRESENCE }>;
/** A relay's inbox for calls: `open` (new calls), `m` (to the caller's relay), `s` (to the node's relay). */
export type Channel = 'open' | 'm' | 's';

/**
 * What the parts of a cluster (presence, calls out, calls in) need of NATS: sealed messages to one
 * relay or to all, sealed requests, and word of the connection going and coming. The parts register
 * what they handle; the link never calls into them by name.
 */
export interface ClusterLink {
  /** Random per process: this relay's inbox, and its epoch in presence. */
  readonly id: string;
  /** Connected to NATS now. */
  readonly connected: boolean;
  /** Our connections to NATS so far (RelayStamp.link): 1 on the first, one more at each reconnect. */
  readonly count: number;
  /** To every relay, on the presence subject. */
  publishPresence(message: unknown[]): void;
  /** To one relay, batched with the others queued for it in this turn; `callId` for opens ("no responders"). */
  send(relayId: string, channel: Channel, message: unknown[], callId?: number): void;
  /** A sealed request to another relay; resolves with its checked reply (undefined when refused), rejects as nats.js does. */
  request(relayId: string, message: unknown[], timeout: number, what: string): Promise<ClusterMessage | undefined>;
  /** Logs a warning once per key: a broken peer must not flood the log. */
  warnOnce(key: string, fields: Record<string, unknown>, message: string): void;
  /** The connection went up (true) or down (false, not at our own stop); handlers run in registration order. */
  onStatus(handler: (up: boolean) => void): void;
  /** Presence from another relay process (never our own). */
  onPresence(handler: (m: PresenceMessage) => void): void;
  /** Messages from relay `from` on one of our inboxes. */
  onMessage(channel: Channel, handler: (m: ClusterMessage, from: string) => void): void;
  /** A request from another relay; `answer` sends the reply. */
  onRequest(handler: (m: ClusterMessage, answer: (message: unknown[]) => void) => void): void;
  /** NATS said nobody listens on the relay a batch of opens went to: these calls were not delivered. */
  onUndelivered(handler: (callIds: number[]) => void): void;
}

/** What the link needs from the relay it belongs to. */
export interface LinkHost {
  readonly relayName: string;
  readonly log: Logger;
  /** For metrics: a presence event arrived `seconds` after it happened; the NATS connection went up or down. */
  presenceLag?(seconds: number): void;
  /** For metrics: a message from NATS was refused (not sealed with the cluster key, replayed, stale, malformed). */
  rejected?(reason: SealFailure): void;
}

/** The cluster's NATS connection: dialing and redialing, subjects, sealing, batching. */
export class NatsLink implements ClusterLink {
  readonly id = randomBytes(8).toString('hex');
  private linkCount = 0;
  private readonly prefix: string;
  private readonly servers: string[];
  private nc: NatsConnection | undefined;
  private connectedNow = false;
  private stopping = false;
  private readonly seal: Seal;
  private readonly tokens = new Map<string, string>();
  private readonly inbox: string;
  /** In the reply subject of our batches of opens, so that only who saw them can answer "no responders". */
  private readonly batchSecret = randomBytes(12).toString('hex');
  private readonly idBytes: Uint8Array;
  private readonly rejectLog = new Map<SealFailure, { count: number; loggedAt: number }>();
  private retryTimer: NodeJS.Timeout | undefined;
  /** Waits between refused connects: 1 s doubling to 30 s, unjittered (one relay, its own NATS). */
  private readonly retry = new Backoff(1_000, 30_000, { jitter: 'none' });
  private readonly badMessages = new Set<string>();
  /** Messages queued for other relays in this turn, by subject. */
  private readonly batches = new Map<string, { parts: Uint8Array[]; size: number; calls: number[] | undefined }>();
  private flushScheduled = false;
  private batchCounter = 0;
  /** The calls of recent batches of opens, by batch: NATS's "no responders" names the batch. */
  private readonly openBatches = new Map<number, number[]>();
  private readonly statusHandlers: Array<(up: boolean) => void> = [];
  private readonly presenceHandlers: Array<(m: PresenceMessage) => void> = [];
  private readonly messageHandlers: Record<Channel, Array<(m: ClusterMessage, from: string) => void>> = { open: [], m: [], s: [] };
  private readonly requestHandlers: Array<(m: ClusterMessage, answer: (message: unknown[]) => void) => void> = [];
  private readonly undeliveredHandlers: Array<(callIds: number[]) => void> = [];

  constructor(
    private readonly host: LinkHost,
    private readonly opts: ClusterOptions,
    private readonly log: Logger,
  ) {
    this.servers = opts.servers.map(clusterServer);
    this.prefix = opts.name ?? 'tunnel';
    if (opts.key !== undefined) {
      const { key, warning } = readClusterKey(opts.key);
      if (warning) this.log.warn(warning);
      this.seal = new ClusterSeal(key, this.prefix);
    } else {
      this.seal = new OpenSeal();
      this.log.warn(
        'cluster messages are neither encrypted nor authenticated (--cluster-insecure without --cluster-key): anyone who may publish on NATS can speak for a relay and read every call',
      );
    }
    this.inbox = `${this.prefix}.relay.${this.token(this.id)}.`;
    this.idBytes = encode(this.id);
  }

  get connected(): boolean {
    return this.connectedNow;
  }

  get count(): number {
    return this.linkCount;
  }

  onStatus(handler: (up: boolean) => void): void {
    this.statusHandlers.push(handler);
  }

  onPresence(handler: (m: PresenceMessage) => void): void {
    this.presenceHandlers.push(handler);
  }

  onMessage(channel: Channel, handler: (m: ClusterMessage, from: string) => void): void {
    this.messageHandlers[channel].push(handler);
  }

  onRequest(handler: (m: ClusterMessage, answer: (message: unknown[]) => void) => void): void {
    this.requestHandlers.push(handler);
  }

  onUndelivered(handler: (callIds: number[]) => void): void {
    this.undeliveredHandlers.push(handler);
  }

  /** The subject token of a relay: with a cluster key, an HMAC of its id, so that ids never travel in clear. */
  private token(relayId: string): string {
    let t = this.tokens.get(relayId);
    if (t === undefined) {
      t = this.seal.token(relayId);
      if (this.tokens.size > TOKENS) this.tokens.clear();
      this.tokens.set(relayId, t);
    }
    return t;
  }

  /** Connects in the background, forever: a relay without NATS keeps serving its own nodes and callers. */
  start(): void {
    this.dial();
  }

  /**
   * Connects. nats.js retries unreachable servers by itself; a refusal it gives up on (credentials
   * refused) is tried again here with backoff, so a fixed account or server brings the relay back.
   */
  private dial(): void {
    if (this.stopping) return;
    const authenticator = this.authenticator();
    void connect({
      servers: this.servers,
      name: `tunnel-relay ${this.host.relayName}`,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      waitOnFirstConnect: true,
      pingInterval: 5_000,
      maxPingOut: 2,
      // Replies to our requests come under the cluster's prefix too: one NATS permission covers everything.
      inboxPrefix: `${this.prefix}._INBOX`,
      ...(authenticator ? { authenticator } : {}),
      ...(this.opts.ca ? { tls: { caFile: this.opts.ca } } : {}),
    }).then(
      (nc) => this.onConnected(nc),
      (err: Error) => {
        const { delay: delayMs } = this.retry.next();
        this.log.error({ err: err.message, retryInMs: delayMs }, 'cannot connect to the cluster; serving local nodes and callers only');
        this.retryTimer = setTimeout(() => this.dial(), delayMs);
        this.retryTimer.unref();
      },
    );
  }

  /** Closes the NATS connection; `farewell` runs first while connected (our goodbye), and is flushed. */
  async stop(farewell: () => void): Promise<void> {
    this.stopping = true;
    clearTimeout(this.retryTimer);
    const nc = this.nc;
    if (!nc) return;
    if (this.connectedNow) {
      farewell();
      await nc.flush().catch(() => undefined);
    }
    await nc.close().catch(() => undefined);
  }

  private authenticator(): Authenticator | undefined {
    const o = this.opts;
    if (o.creds !== undefined) return credsAuthenticator(readFileSync(o.creds));
    if (o.token !== undefined) return tokenAuthenticator(o.token);
    if (o.user !== undefined) return usernamePasswordAuthenticator(o.user, o.password);
    return undefined;
  }

  private onConnected(nc: NatsConnection): void {
    if (this.stopping) {
      void nc.close();
      return;
    }
    this.nc = nc;
    nc.subscribe(`${this.prefix}.presence`, {
      callback: (err, msg) => {
        if (!err) this.onPresenceMessage(msg);
      },
    });
    nc.subscribe(`${this.inbox}>`, {
      callback: (err, msg) => {
        if (!err) this.onInbox(msg);
      },
    });
    this.setConnected(true);
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'disconnect') this.setConnected(false);
        else if (s.type === 'reconnect') this.setConnected(true);
      }
    })().catch(() => undefined);
    void nc.closed().then(() => this.setConnected(false));
  }

  private setConnected(up: boolean): void {
    if (up === this.connectedNow) return;
    this.connectedNow = up;
    this.host.presenceLag?.(-1);
    if (up) {
      this.linkCount++;
      this.log.info({ server: this.nc?.getServer(), secure: this.seal.secure }, 'connected to the cluster');
      for (const h of this.statusHandlers) h(true);
      return;
    }
    if (this.stopping) return;
    this.log.warn('lost the cluster (NATS); serving local nodes and callers only until it is back');
    for (const h of this.statusHandlers) h(false);
  }

  publishPresence(message: unknown[]): void {
    const subject = `${this.prefix}.presence`;
    this.publish(subject, this.seal.seal(subject, pack(message)));
  }

  private onPresenceMessage(msg: Msg): void {
    if (this.seal.own(msg.data)) return;
    const m = this.parse(msg, 'presence');
    if (!m || m.kind !== ClusterKind.PRESENCE) return;
    for (const h of this.presenceHandlers) h(m);
  }

  async request(relayId: string, message: unknown[], timeout: number, what: string): Promise<ClusterMessage | undefined> {
    const subject = `${this.prefix}.relay.${this.token(relayId)}.q`;
    const msg = await this.nc!.request(subject, this.seal.seal(subject, pack(message)), { timeout });
    return this.parse(msg, what);
  }

  private onRequestMessage(msg: Msg): void {
    const m = this.parse(msg, 'request');
    if (!m || !msg.reply) return;
    const reply = msg.reply;
    const answer = (message: unknown[]) => this.publish(reply, this.seal.seal(reply, pack(message)));
    for (const h of this.requestHandlers) h(m, answer);
  }

  private onInbox(msg: Msg): void {
    // ${prefix}.relay.${token}.${what}[.${secret}.${batch}]
    const rest = msg.subject.slice(this.inbox.length);
    const dot = rest.indexOf('.');
    const what = dot < 0 ? rest : rest.slice(0, dot);
    if (what === 'q') return this.onRequestMessage(msg);
    if (what === 'r') {
      // Only NATS writes here, and only to the reply subject of a batch we sent: the secret says so.
      const tail = dot < 0 ? '' : rest.slice(dot + 1);
      const at = tail.indexOf('.');
      if (at < 0 || tail.slice(0, at) !== this.batchSecret) return;
      return this.onNoResponders(msg, Number(tail.slice(at + 1)));
    }
    if (what !== 'open' && what !== 'm' && what !== 's') return;
    let plain: Uint8Array;
    try {
      plain = this.seal.open(msg.subject, msg.data);
    } catch (err) {
      return this.refuse(err, msg.subject);
    }
    // The sender's id comes first, inside the seal: subjects can be written by anyone on NATS.
    let batch: ReturnType<typeof unpackBatch>;
    try {
      batch = unpackBatch(plain);
    } catch (err) {
      return this.warnOnce(`bad:${what}`, { subject: msg.subject, reason: (err as Error).message }, 'ignoring a malformed cluster message');
    }
    const { from } = batch;
    const handlers = this.messageHandlers[what];
    for (const m of batch.messages) {
      if (m instanceof ClusterMessageError) {
        this.warnOnce(`bad:${what}`, { subject: msg.subject, reason: m.message }, 'ignoring a malformed cluster message');
        continue;
      }
      for (const h of handlers) h(m, from);
    }
  }

  /** NATS says nobody listens on the relay a batch of calls went to: none of them was delivered. */
  private onNoResponders(msg: Msg, batch: number): void {
    if (msg.headers?.code !== 503) return;
    const ids = this.openBatches.get(batch);
    this.openBatches.delete(batch);
    if (!ids) return;
    for (const h of this.undeliveredHandlers) h(ids);
  }

  /**
   * Messages for one relay queued in one turn of the event loop leave as one NATS message, values
   * back to back, as a WebSocket writer coalesces: at many calls in flight NATS carries a few large
   * messages instead of many small ones. Opens carry the batch's reply subject, where NATS says "no
   * responders" when the relay is gone.
   */
  send(relayId: string, what: Channel, message: unknown[], callId?: number): void {
    const subject = `${this.prefix}.relay.${this.token(relayId)}.${what}`;
    let b = this.batches.get(subject);
    const bytes = pack(message);
    if (b && b.size + bytes.length > BATCH_LIMIT) {
      this.flushBatch(subject, b);
      b = undefined;
    }
    if (!b) {
      b = { parts: [this.idBytes], size: this.idBytes.length, calls: what === 'open' ? [] : undefined };
      this.batches.set(subject, b);
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        process.nextTick(this.flushAll);
      }
    }
    b.parts.push(bytes);
    b.size += bytes.length;
    if (callId !== undefined) b.calls?.push(callId);
  }

  private readonly flushAll = (): void => {
    this.flushScheduled = false;
    const batches = [...this.batches];
    this.batches.clear();
    for (const [subject, b] of batches) this.flushBatch(subject, b);
  };

  private flushBatch(subject: string, b: { parts: Uint8Array[]; size: number; calls: number[] | undefined }): void {
    if (this.batches.get(subject) === b) this.batches.delete(subject);
    const data = this.seal.seal(subject, Buffer.concat(b.parts, b.size));
    if (!b.calls) return this.publish(subject, data);
    const batch = ++this.batchCounter;
    this.openBatches.set(batch, b.calls);
    if (this.openBatches.size > OPEN_BATCHES) this.openBatches.delete(this.openBatches.keys().next().value!);
    this.publish(subject, data, `${this.inbox}r.${this.batchSecret}.${batch}`);
  }

  private publish(subject: string, data: Uint8Array, reply?: string): void {
    if (!this.nc || !this.connectedNow) return;
    try {
      this.nc.publish(subject, data, reply ? { reply } : undefined);
    } catch (err) {
      this.log.debug({ subject, err: (err as Error).message }, 'cluster publish failed');
    }
  }

  private parse(msg: Msg, what: string): ClusterMessage | undefined {
    let plain: Uint8Array;
    try {
      plain = this.seal.open(msg.subject, msg.data);
    } catch (err) {
      this.refuse(err, msg.subject);
      return undefined;
    }
    try {
      return unpack(plain);
    } catch (err) {
      if (err instanceof ClusterMessageError)
        this.warnOnce(`bad:${what}`, { subject: msg.subject, reason: err.message }, 'ignoring a malformed cluster message');
      return undefined;
    }
  }

  /**
   * A message that is not sealed with our key, or a copy of one already seen: dropped, counted, and
   * logged once per reason in {@link REJECT_LOG_INTERVAL} with how many came meanwhile.
   */
  private refuse(err: unknown, subject: string): void {
    const reason: SealFailure = err instanceof SealError ? err.reason : 'malformed';
    this.host.rejected?.(reason);
    const now = Date.now();
    let entry = this.rejectLog.get(reason);
    if (!entry) {
      entry = { count: 0, loggedAt: 0 };
      this.rejectLog.set(reason, entry);
    }
    entry.count++;
    if (now - entry.loggedAt < REJECT_LOG_INTERVAL) return;
    this.log.warn({ reason, subject, count: entry.count, err: (err as Error).message }, 'refused a cluster message');
    entry.count = 0;
    entry.loggedAt = now;
  }

  warnOnce(key: string, fields: Record<string, unknown>, message: string): void {
    if (this.badMessages.has(key)) return;
    if (this.badMessages.size < 1_000) this.badMessages.add(key);
    this.log.warn(fields, message);
  }
}
