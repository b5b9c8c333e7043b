import { describe, expect, it, vi } from 'vitest';
import { Heartbeat, probe } from '../src/wire/heartbeat.js';
import { MemorySocket } from '../src/wire/memory-socket.js';
import { elapse, settle, useFakeClock } from './helpers/fake-clock.js';

/**
 * Heartbeats over an in-memory socket pair (memory-socket.ts answers pings with pongs). Timers are
 * fake; setImmediate stays real so that `settle` lets deliveries run.
 */

useFakeClock();

const TIMEOUT = 3_000;

/** A heartbeat on one end; `seen` is wired to pongs as a connection does. */
function beating() {
  const [local, remote] = MemorySocket.pair();
  let deaths = 0;
  let pings = 0;
  remote.on('ping', () => pings++);
  // A connection terminates its socket when the peer is dead, and its close stops the heartbeat.
  const hb = new Heartbeat(local, TIMEOUT, () => {
    deaths++;
    hb.stop();
  });
  local.on('pong', () => hb.seen());
  return { local, remote, hb, deaths: () => deaths, pings: () => pings };
}

describe('Heartbeat', () => {
  it('pings every third of the timeout, and a peer that answers stays', async () => {
    const h = beating();
    await elapse(3 * TIMEOUT);
    expect(h.pings()).toBeGreaterThanOrEqual(8);
    expect(h.deaths()).toBe(0);
    h.hb.stop();
  });

  it('a peer silent for longer than the timeout is dead, once its pongs stop', async () => {
    const h = beating();
    h.remote.stopReading(); // our pings wait unread: no pong comes back
    await elapse(TIMEOUT - 100);
    expect(h.deaths()).toBe(0);
    await elapse(TIMEOUT);
    expect(h.deaths()).toBe(1);
    h.hb.stop();
  });

  it('seen keeps a peer that sends but does not answer pings', async () => {
    const h = beating();
    h.remote.stopReading();
    for (let i = 0; i < 10; i++) {
      await elapse(TIMEOUT / 2);
      h.hb.seen();
    }
    expect(h.deaths()).toBe(0);
    h.hb.stop();
  });

  it('after a freeze of this process, a silent peer gets a fresh timeout before it is dead', async () => {
    const h = beating();
    h.remote.stopReading();
    vi.setSystemTime(Date.now() + 60_000);
    await elapse(TIMEOUT / 3 + 10, TIMEOUT / 3 + 10);
    expect(h.deaths()).toBe(0);
    await elapse(TIMEOUT + 2 * (TIMEOUT / 3));
    expect(h.deaths()).toBe(1);
    h.hb.stop();
  });

  it('stop ends the pings', async () => {
    const h = beating();
    h.hb.stop();
    h.remote.stopReading();
    await elapse(3 * TIMEOUT);
    expect(h.pings()).toBe(0);
    expect(h.deaths()).toBe(0);
  });
});

describe('probe', () => {
  it('answers true when the pong comes, false when it does not come in time', async () => {
    const [local, remote] = MemorySocket.pair();
    const answered = probe(local, 1_000);
    await settle();
    await expect(answered).resolves.toBe(true);
    remote.stopReading();
    const unanswered = probe(local, 1_000);
    await elapse(1_100);
    await expect(unanswered).resolves.toBe(false);
  });
});
