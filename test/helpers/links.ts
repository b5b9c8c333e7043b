import { pino } from 'pino';
import { Connection } from '../../src/wire/connection.js';
import { MemorySocket } from '../../src/wire/memory-socket.js';
import type { Message } from '../../src/wire/messages.js';

/**
 * A connection between the relay and a peer held in the hand: two Connections over an in-memory
 * socket pair (memory-socket.ts), the relay's end as the relay makes it (chunks acknowledged once
 * passed on), the far end recording what it receives. Delivery runs on microtasks and nextTicks,
 * which {@link settle} lets finish.
 */

export const silent = pino({ level: 'silent' });

/** Lets every delivery, flush and callback that is due run (they chain on microtasks and nextTicks). */
export const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Settles until `pred` holds; throws after `turns` turns of the event loop, naming `what`. */
export async function settleUntil(pred: () => boolean, what: string, turns = 200): Promise<void> {
  for (let i = 0; i < turns; i++) {
    if (pred()) return;
    await settle();
  }
  if (!pred()) throw new Error(`not true after ${turns} turns: ${what}`);
}

export interface PeerPair {
  /** The relay's end. */
  relay: Connection;
  /** The peer's end. */
  peer: Connection;
  relaySocket: MemorySocket;
  peerSocket: MemorySocket;
  /** What the peer received, in order. */
  received: Message[];
  /** How the peer's end closed. */
  peerCloses: Array<[number, string]>;
  /** The peer's messages of one kind. */
  of<K extends Message['kind']>(kind: K): Array<Extract<Message, { kind: K }>>;
  /** Called for each message the peer receives, after it is recorded (the fake node's behaviour). */
  onPeerMessage: ((m: Message) => void) | undefined;
}

export function peerPair(): PeerPair {
  const [relaySocket, peerSocket] = MemorySocket.pair();
  const relay = new Connection(relaySocket, { message: () => undefined, close: () => undefined }, { log: silent, heartbeatTimeout: 0, autoAck: false });
  const pair: PeerPair = {
    relay,
    peer: undefined as unknown as Connection,
    relaySocket,
    peerSocket,
    received: [],
    peerCloses: [],
    of: (kind) => pair.received.filter((m) => m.kind === kind) as never,
    onPeerMessage: undefined,
  };
  pair.peer = new Connection(
    peerSocket,
    {
      message: (m) => {
        pair.received.push(m);
        pair.onPeerMessage?.(m);
      },
      close: (code, reason) => pair.peerCloses.push([code, reason]),
    },
    { log: silent, heartbeatTimeout: 0 },
  );
  return pair;
}
