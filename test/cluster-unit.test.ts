import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { ErrorCode, type WireError } from '../src/errors.js';
import type { NodeRoute, RoutedCall } from '../src/relay/contracts.js';
import { NodeDirectory } from '../src/relay/directory.js';
import { OutCalls } from '../src/relay/cluster/calls-out.js';
import type { Channel, ClusterLink, PresenceMessage } from '../src/relay/cluster/link.js';
import { ClusterKind, pack, unpack, type ClusterMessage, type RemoteNodeInfo } from '../src/relay/cluster/messages.js';
import { digestOf } from '../src/relay/cluster/node-info.js';
import { HEARTBEAT_INTERVAL, PEER_EXPIRY, Peers, type PeersHost, type PeerWatcher } from '../src/relay/cluster/peers.js';
import type { RemoteRoute, RouteTransport } from '../src/relay/cluster/remote-route.js';
import { elapse, settle, useFakeClock } from './helpers/fake-clock.js';

/**
 * The cluster's parts held in the hand: presence (peers.ts) and the calls this relay sends
 * (calls-out.ts) over a fake NATS link, an in-memory bus that carries presence, inbox messages and
 * requests between links, and answers "no responders" for a relay that is not on it. The other relay
 * is played by the test: it publishes presence and answers snapshot requests by hand. Timers are
 * fake, so heartbeats and the 3 s expiry run in no time.
 */

const log = pino({ level: 'silent' });

useFakeClock();

/** A round trip through the wire format: what a link delivers is what NATS would carry, checked. */
const wire = (message: unknown[]): ClusterMessage => unpack(pack(message));

class FakeBus {
  readonly links = new Map<string, FakeLink>();

  link(): FakeLink {
    const l = new FakeLink(this);
    this.links.set(l.id, l);
    return l;
  }

  /** A connected link on the bus by id (NATS delivers to subscribers only). */
  reach(id: string): FakeLink | undefined {
    const l = this.links.get(id);
    return l?.connected ? l : undefined;
  }
}

/** An in-memory {@link ClusterLink}: no NATS, no seal, same delivery rules. */
class FakeLink implements ClusterLink {
  readonly id = randomBytes(8).toString('hex');
  connected = false;
  count = 0;
  /** Every request this link was sent, by kind. */
  readonly requests: ClusterMessage[] = [];
  /** Every message this link received on its inbox. */
  readonly received: Array<{ channel: Channel; m: ClusterMessage; from: string }> = [];
  private readonly status: Array<(up: boolean) => void> = [];
  private readonly presence: Array<(m: PresenceMessage) => void> = [];
  private readonly messages: Record<Channel, Array<(m: ClusterMessage, from: string) => void>> = { open: [], m: [], s: [] };
  private readonly requestHandlers: Array<(m: ClusterMessage, answer: (message: unknown[]) => void) => void> = [];
  private readonly undelivered: Array<(callIds: number[]) => void> = [];

  constructor(private readonly bus: FakeBus) {}

  /** NATS up (the count grows) or down, as the real link tells its parts. */
  up(up: boolean): void {
    if (up === this.connected) return;
    this.connected = up;
    if (up) this.count++;
    for (const h of this.status) h(up);
  }

  /** Leaves the bus, as a killed process leaves NATS: its requests and opens get "no responders". */
  kill(): void {
    this.connected = false;
    this.bus.links.delete(this.id);
  }

  publishPresence(message: unknown[]): void {
    if (!this.connected) return;
    const m = wire(message);
    if (m.kind !== ClusterKind.PRESENCE) throw new Error('not presence');
    for (const other of this.bus.links.values()) {
      if (other === this || !other.connected) continue;
      queueMicrotask(() => other.presence.forEach((h) => h(m)));
    }
  }

  send(relayId: string, channel: Channel, message: unknown[], callId?: number): void {
    if (!this.connected) return;
    const m = wire(message);
    const target = this.bus.reach(relayId);
    queueMicrotask(() => {
      if (target) {
        target.received.push({ channel, m, from: this.id });
        target.messages[channel].forEach((h) => h(m, this.id));
      } else if (callId !== undefined) this.undelivered.forEach((h) => h([callId]));
    });
  }

  request(relayId: string, message: unknown[], timeout: number): Promise<ClusterMessage | undefined> {
    const target = this.bus.reach(relayId);
    if (!target) return Promise.reject(Object.assign(new Error('503'), { isNoResponders: () => true }));
    const m = wire(message);
    target.requests.push(m);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('TIMEOUT')), timeout);
      queueMicrotask(() =>
        target.requestHandlers.forEach((h) =>
          h(m, (reply) => {
            clearTimeout(timer);
            resolve(wire(reply));
          }),
        ),
      );
    });
  }

  warnOnce(): void {}

  onStatus(handler: (up: boolean) => void): void {
    this.status.push(handler);
  }

  onPresence(handler: (m: PresenceMessage) => void): void {
    this.presence.push(handler);
  }

  onMessage(channel: Channel, handler: (m: ClusterMessage, from: string) => void): void {
    this.messages[channel].push(handler);
  }

  onRequest(handler: (m: ClusterMessage, answer: (message: unknown[]) => void) => void): void {
    this.requestHandlers.push(handler);
  }

  onUndelivered(handler: (callIds: number[]) => void): void {
    this.undelivered.push(handler);
  }
}

function node(name: string, connectedAt = 1_000): RemoteNodeInfo {
  return { name, instance: null, services: { svc: ['echo'] }, labels: {}, address: '127.0.0.1', connectedAt, draining: false };
}

/**
 * Another relay, played by hand on the bus: it says what the test tells it to, and answers snapshot
 * requests with `nodes`.
 */
class PuppetRelay {
  readonly link: FakeLink;
  nodes: RemoteNodeInfo[] = [];
  private seq = 0;

  constructor(
    bus: FakeBus,
    readonly name: string,
    readonly started = Date.now(),
  ) {
    this.link = bus.link();
    this.link.up(true);
    this.link.onRequest((m, answer) => {
      if (m.kind === ClusterKind.SNAPSHOT) answer([ClusterKind.SNAPSHOT_PAGE, this.nodes.length, this.nodes.slice(m.offset)]);
      if (m.kind === ClusterKind.PING) answer([ClusterKind.PONG]);
    });
  }

  get id(): string {
    return this.link.id;
  }

  /** Snapshot requests it was sent so far. */
  get snapshots(): number {
    return this.link.requests.filter((m) => m.kind === ClusterKind.SNAPSHOT).length;
  }

  say(event: string, payload: unknown, link = this.link.count): void {
    const stamp = { name: this.name, id: this.id, started: this.started, seq: ++this.seq, link };
    this.link.publishPresence([ClusterKind.PRESENCE, stamp, event, payload]);
  }

  /** A heartbeat that tells its node list as it is (`nodes`), or a lie (`digest`). */
  heartbeat(opts: { link?: number; digest?: string } = {}): void {
    this.say('heartbeat', { count: this.nodes.length, digest: opts.digest ?? digestOf(this.nodes) }, opts.link);
  }
}

/** This relay's presence over the bus, with its host's directory and events recorded. */
function ourRelay(bus: FakeBus, transport?: RouteTransport) {
  const link = bus.link();
  const directory = new NodeDirectory();
  const added: string[] = [];
  const removed: Array<[string, string]> = [];
  const host: PeersHost = {
    relayName: 'ours',
    directory,
    localLinks: () => [],
    allowedServices: (_node, services) => services,
    routeAdded: (route: NodeRoute) => added.push(route.name),
    routeRemoved: (route: NodeRoute, why) => removed.push([route.name, why]),
    yieldName: () => undefined,
  };
  const noTransport: RouteTransport = { reachable: () => false, open: () => {}, chunk: () => {}, abandon: () => {}, closeSession: () => {} };
  const peers = new Peers(host, link, log, transport ?? noTransport);
  const gone: string[] = [];
  const watcher: PeerWatcher = { peerGone: (id) => gone.push(id) };
  peers.watch(watcher);
  link.up(true);
  peers.start();
  return { link, peers, directory, added, removed, gone };
}

describe('presence over a fake link', () => {
  it('admits a relay on its first heartbeat and takes its nodes from a snapshot', async () => {
    const bus = new FakeBus();
    const us = ourRelay(bus);
    const b = new PuppetRelay(bus, 'b');
    b.nodes = [node('n1'), node('n2')];
    b.heartbeat();
    await settle();
    await settle();
    expect(us.peers.peerNames).toEqual(['b']);
    expect(b.snapshots).toBe(1);
    expect(us.added.sort()).toEqual(['n1', 'n2']);
    expect(us.directory.get('n1')?.routes[0]?.relays).toEqual(['b']);
    expect(us.peers.state).toBe('connected');
    us.peers.stop();
  });

  it('asks a relay first heard by a join for its whole list: the nodes it announced before are learnt too', async () => {
    const bus = new FakeBus();
    const us = ourRelay(bus);
    const b = new PuppetRelay(bus, 'b');
    b.nodes = [node('n1'), node('n2')];
    b.say('join', node('n2'));
    await elapse(100);
    expect(b.snapshots).toBe(1);
    expect(us.added.sort()).toEqual(['n1', 'n2']); // n2 once: the snapshot's n2 is the route the join made
    us.peers.stop();
  });

  it('asks for a snapshot when a heartbeat digest differs from what it knows, and only then', async () => {
    const bus = new FakeBus();
    const us = ourRelay(bus);
    const b = new PuppetRelay(bus, 'b');
    b.nodes = [node('n1')];
    b.heartbeat();
    await elapse(100);
    expect(b.snapshots).toBe(1);
    // A heartbeat that matches our view asks nothing.
    b.heartbeat();
    await elapse(100);
    expect(b.snapshots).toBe(1);
    // The same count, another node (a restart of n1): the digest differs, a snapshot is asked.
    b.nodes = [node('n1', 2_000)];
    b.heartbeat();
    await elapse(100);
    expect(b.snapshots).toBe(2);
    expect(us.directory.get('n1')?.routes[0]?.connectedAt.getTime()).toBe(2_000);
    expect(us.removed).toEqual([['n1', 'left']]);
    us.peers.stop();
  });

  it('makes a relay unreachable 3 s after its last heartbeat, and admits it again when it is heard', async () => {
    const bus = new FakeBus();
    const us = ourRelay(bus);
    const b = new PuppetRelay(bus, 'b');
    b.nodes = [node('n1')];
    b.heartbeat();
    await elapse(100);
    expect(us.added).toEqual(['n1']);
    await elapse(PEER_EXPIRY - 500);
    expect(us.peers.peerNames).toEqual(['b']);
    await elapse(1_000);
    expect(us.peers.peerNames).toEqual([]);
    expect(us.peers.unreachable).toEqual(['b']);
    expect(us.peers.state).toBe('split');
    expect(us.removed).toEqual([['n1', 'relay-gone']]);
    expect(us.gone).toEqual([b.id]);
    expect(us.directory.get('n1')).toBeUndefined();
    // Heard again (not a tombstone): back, with a fresh snapshot and its nodes.
    b.heartbeat();
    await elapse(100);
    expect(us.peers.peerNames).toEqual(['b']);
    expect(us.peers.unreachable).toEqual([]);
    expect(us.peers.state).toBe('connected');
    expect(b.snapshots).toBe(2);
    expect(us.added).toEqual(['n1', 'n1']);
    us.peers.stop();
  });

  it('keeps a relay that heartbeats', async () => {
    const bus = new FakeBus();
    const us = ourRelay(bus);
    const b = new PuppetRelay(bus, 'b');
    b.heartbeat();
    for (let i = 0; i < 10; i++) {
      await elapse(HEARTBEAT_INTERVAL);
      b.heartbeat();
    }
    await settle();
    expect(us.peers.peerNames).toEqual(['b']);
    expect(us.gone).toEqual([]);
    us.peers.stop();
  });

  it('buries a relay that said goodbye: its late messages never bring it back', async () => {
    const bus = new FakeBus();
    const us = ourRelay(bus);
    const b = new PuppetRelay(bus, 'b');
    b.nodes = [node('n1')];
    b.heartbeat();
    await elapse(100);
    b.say('bye', null);
    await elapse(100);
    expect(us.peers.peerNames).toEqual([]);
    expect(us.peers.unreachable).toEqual([]); // gone for good, not lost
    expect(us.removed).toEqual([['n1', 'relay-gone']]);
    b.heartbeat();
    b.say('join', node('n1'));
    await elapse(5_000);
    expect(us.peers.peerNames).toEqual([]);
    expect(us.directory.get('n1')).toBeUndefined();
    us.peers.stop();
  });

  it('replaces an older process of a name by the newer, and buries the older', async () => {
    const bus = new FakeBus();
    const us = ourRelay(bus);
    const old = new PuppetRelay(bus, 'b', 1_000);
    old.nodes = [node('n1')];
    old.heartbeat();
    await elapse(100);
    const restarted = new PuppetRelay(bus, 'b', 2_000);
    restarted.heartbeat();
    await elapse(100);
    expect(us.peers.peerNames).toEqual(['b']);
    expect(us.gone).toEqual([old.id]);
    expect(us.removed).toEqual([['n1', 'relay-gone']]);
    expect(us.peers.unreachable).toEqual([]);
    // A late announcement of the old process is not taken.
    old.say('join', node('n1'));
    await elapse(100);
    expect(us.directory.get('n1')).toBeUndefined();
    expect(us.peers.peerNames).toEqual(['b']);
    us.peers.stop();
  });
});

describe('calls out, told by presence', () => {
  /** A call as a caller's link would route it, with its outcome recorded. */
  function fakeCall(route: RemoteRoute) {
    const outcome: { error?: WireError | null } = {};
    const call = {
      caller: {
        complete: (_c: RoutedCall, error: WireError | null) => (outcome.error = error),
        streamStart: () => {},
        streamChunk: () => {},
      },
      callerId: 1,
      method: 'svc.echo',
      timeout: 10_000,
      node: route,
      path: undefined,
      tunnelId: 0,
      uploadLeft: 0,
      uploading: false,
      streaming: false,
      started: 0,
      abandon: () => {},
    } as unknown as RoutedCall;
    return { call, outcome };
  }

  async function setup() {
    const bus = new FakeBus();
    // The routes presence makes send through the calls part, made after it (as the facade does).
    const parts: { out?: OutCalls } = {};
    const transport: RouteTransport = {
      reachable: (id) => parts.out!.reachable(id),
      open: (...a) => parts.out!.open(...a),
      chunk: (...a) => parts.out!.chunk(...a),
      abandon: (...a) => parts.out!.abandon(...a),
      closeSession: (...a) => parts.out!.closeSession(...a),
    };
    const us = ourRelay(bus, transport);
    const out = new OutCalls(us.link, us.peers);
    parts.out = out;
    us.peers.watch(out);
    const b = new PuppetRelay(bus, 'b');
    b.nodes = [node('n1')];
    b.heartbeat();
    await elapse(100);
    const route = us.directory.get('n1')!.routes[0] as RemoteRoute;
    const meta = { session: 's1', address: '127.0.0.1', identity: null, timeout: 10_000 };
    const send = () => {
      const c = fakeCall(route);
      out.open(route, c.call, new Uint8Array([1]), meta, 0);
      return c;
    };
    return { us, b, out, route, send };
  }

  it('fails the calls sent before a relay reconnected (its link count grew) with NODE_LOST', async () => {
    const { us, b, out, route, send } = await setup();
    const before = send();
    await settle();
    expect(b.link.received.filter((r) => r.channel === 'open')).toHaveLength(1);
    expect(route.inFlight).toBe(1);
    // A heartbeat with the same count fails nothing.
    b.heartbeat();
    await settle();
    expect(before.outcome.error).toBeUndefined();
    // b reconnected to NATS: its count is 2 now.
    b.link.up(false);
    b.link.up(true);
    b.heartbeat();
    await settle();
    expect(before.outcome.error?.code).toBe(ErrorCode.NODE_LOST);
    expect(before.outcome.error?.message).toMatch(/relay b lost its connection to the cluster/);
    expect(route.inFlight).toBe(0);
    // A call sent since is an ordinary call.
    const after = send();
    b.heartbeat();
    await settle();
    expect(after.outcome.error).toBeUndefined();
    expect(route.inFlight).toBe(1);
    out.stop();
    us.peers.stop();
  });

  it('takes a grown count heard first after our own reconnect as it is: what we sent since is not failed', async () => {
    const { us, b, out, send } = await setup();
    // NATS restarts: both relays lose it and come back, b first; our calls went when we lost it.
    us.link.up(false);
    b.link.up(false);
    b.link.up(true);
    us.link.up(true);
    const since = send();
    await settle();
    b.heartbeat();
    await settle();
    expect(since.outcome.error).toBeUndefined();
    // From now on a growth of b's count is news again.
    b.link.up(false);
    b.link.up(true);
    b.heartbeat();
    await settle();
    expect(since.outcome.error?.code).toBe(ErrorCode.NODE_LOST);
    out.stop();
    us.peers.stop();
  });

  it('fails the calls through a node that left its relay', async () => {
    const { us, b, out, route, send } = await setup();
    const c = send();
    b.nodes = [];
    b.say('leave', 'n1');
    await settle();
    expect(c.outcome.error?.code).toBe(ErrorCode.NODE_LOST);
    expect(c.outcome.error?.message).toMatch(/node n1 left relay b/);
    expect(route.inFlight).toBe(0);
    out.stop();
    us.peers.stop();
  });

  it('fails every call out when our own NATS connection goes', async () => {
    const { us, out, send } = await setup();
    const c = send();
    await settle();
    us.link.up(false);
    expect(c.outcome.error?.code).toBe(ErrorCode.NODE_LOST);
    expect(c.outcome.error?.message).toMatch(/connection to the cluster \(NATS\) was lost/);
    out.stop();
    us.peers.stop();
  });

  it('an open to a relay gone from NATS comes back undelivered, and the relay is not used until heard again', async () => {
    const { us, b, out, send } = await setup();
    b.link.kill();
    const c = send();
    await settle();
    expect(c.outcome.error?.code).toBe(ErrorCode.NO_NODE);
    expect(c.outcome.error?.message).toMatch(/not reachable; the call was not delivered/);
    expect(us.peers.reachable(b.id)).toBe(false);
    expect(us.peers.peerNames).toEqual(['b']); // suspect, not gone yet
    const d = send();
    expect(d.outcome.error?.message).toMatch(/not reachable; the call was not sent/);
    out.stop();
    us.peers.stop();
  });

  it('pings the relay of a call in flight: "no responders" expires it within a ping, not at 3 s', async () => {
    const { us, b, out, route, send } = await setup();
    out.start();
    const c = send();
    await settle();
    expect(b.link.received.filter((r) => r.channel === 'open')).toHaveLength(1);
    await elapse(500);
    expect(us.gone).toEqual([]); // it answers its pings
    b.link.kill();
    await elapse(500);
    expect(us.gone).toEqual([b.id]);
    expect(us.peers.unreachable).toEqual(['b']);
    expect(c.outcome.error?.code).toBe(ErrorCode.NODE_LOST);
    expect(route.inFlight).toBe(0);
    out.stop();
    us.peers.stop();
  });
});
