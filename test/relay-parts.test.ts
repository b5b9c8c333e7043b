import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/util/logger.js';
import { Authenticator } from '../src/relay/auth.js';
import { NodeDirectory } from '../src/relay/directory.js';
import { doorEvents } from '../src/relay/doors/door-events.js';
import { ConnectionGate } from '../src/relay/doors/gate.js';
import { RelayEvents } from '../src/relay/events.js';
import { MemoryBudget } from '../src/relay/memory.js';
import { resolveRelayOptions } from '../src/relay/options.js';
import { Presence } from '../src/relay/presence.js';
import { CallerSessions } from '../src/relay/sessions.js';
import type { CallerOutput } from '../src/relay/contracts.js';

/** The relay's parts on their own, over plain objects: no socket, no Relay. */
function counting() {
  const rejected: string[] = [];
  const slow: string[] = [];
  const metrics = {
    connectionRejected: (reason: string) => rejected.push(reason),
    slowConsumer: (transport: string) => slow.push(transport),
    authFailed: () => undefined,
    authRefused: () => undefined,
  };
  return { rejected, slow, metrics };
}

describe('door events', () => {
  it('count a refusal, and write its audit record only with who and why', () => {
    const { rejected, slow, metrics } = counting();
    const events = new RelayEvents();
    const door = doorEvents(metrics, events);
    door.refused('draining');
    door.refused(undefined, { door: 'msgpack-rpc', address: '10.0.0.1:5' }, 'caller token refused');
    door.slowConsumer({ door: 'websocket', address: '10.0.0.2:6', node: 'n1' }, 'too slow');
    expect(rejected).toEqual(['draining']);
    expect(slow).toEqual(['websocket']);
    expect(events.recent().map((r) => [r.kind, r.door, r.address, r.node, r.reason])).toEqual([
      ['refused-connection', 'msgpack-rpc', '10.0.0.1:5', undefined, 'caller token refused'],
      ['slow-consumer', 'websocket', '10.0.0.2:6', 'n1', 'too slow'],
    ]);
  });
});

describe('connection gate', () => {
  const gates: ConnectionGate[] = [];
  afterEach(() => gates.splice(0).forEach((g) => g.close()));

  it('counts the connections of another door against the per-address limit, and releases each once', () => {
    const settings = resolveRelayOptions({ maxConnectionsPerAddress: 2 });
    const { metrics } = counting();
    const gate = new ConnectionGate({ limits: settings, log: silentLogger, metrics, events: new RelayEvents() });
    gates.push(gate);
    const a = gate.admitSocket('10.0.0.1');
    const b = gate.admitSocket('10.0.0.1');
    expect('release' in a && 'release' in b).toBe(true);
    expect(gate.admitSocket('10.0.0.1')).toEqual({ refused: 'too many connections from 10.0.0.1 (limit 2)' });
    expect('release' in gate.admitSocket('10.0.0.2')).toBe(true);
    if ('release' in a) {
      a.release();
      a.release();
    }
    const c = gate.admitSocket('10.0.0.1');
    expect('release' in c).toBe(true);
    expect('refused' in gate.admitSocket('10.0.0.1')).toBe(true);
  });
});

describe('caller sessions', () => {
  function sessions() {
    const settings = resolveRelayOptions({});
    const { metrics } = counting();
    const events = new RelayEvents();
    const gate = new ConnectionGate({ limits: settings, log: silentLogger, metrics, events });
    const directory = new NodeDirectory();
    const auth = new Authenticator({}, silentLogger);
    const hub = new CallerSessions({
      limits: settings,
      log: silentLogger,
      auth,
      authFailures: gate.authFailures,
      addresses: gate.addresses,
      memory: new MemoryBudget(settings.maxMemory, silentLogger),
      directory,
      presence: new Presence(directory, silentLogger),
      observer: { started: () => undefined, ended: () => undefined },
      events,
      revoked: () => undefined,
    });
    return { hub, gate };
  }

  it('keeps one record per session with its door, and ends a session once', () => {
    const { hub, gate } = sessions();
    const closed: Array<[number, string]> = [];
    const out: CallerOutput = { respond: () => undefined, close: (code, reason) => closed.push([code, reason]) };
    const ws = hub.open(out, '10.0.0.1:1', null, silentLogger, undefined, 'websocket');
    hub.open(out, '10.0.0.1:2', 'alice', silentLogger);
    const gateway = hub.openGateway('10.0.0.1:3', null, { respond: () => undefined });
    expect(hub.describe().map((c) => [c.transport, c.identity])).toEqual([
      ['websocket', null],
      ['msgpack-rpc', 'alice'],
      ['http', null],
    ]);
    expect([hub.connectionCount, hub.gatewayCount]).toEqual([2, 1]);
    expect(hub.find(ws.session)).toBe(ws);
    hub.end(ws, 1008, 'CANCELLED', 'operator said so');
    hub.close(ws);
    expect(closed).toEqual([[1008, 'operator said so']]);
    expect(hub.find(ws.session)).toBeUndefined();
    gateway.close();
    gateway.close();
    expect([hub.connectionCount, hub.gatewayCount]).toEqual([1, 0]);
    hub.stop();
    gate.close();
  });

  it('tells open connections the relay goes away, and sessions opened afterwards too', () => {
    const { hub, gate } = sessions();
    const told: string[] = [];
    const before = hub.open({ respond: () => undefined, goaway: (reason) => told.push(reason) }, '10.0.0.1:1', null, silentLogger);
    hub.goAway('relay is shutting down');
    const after = hub.open({ respond: () => undefined }, '10.0.0.1:2', null, silentLogger);
    expect(told).toEqual(['relay is shutting down']);
    expect([before.goingAway, after.goingAway]).toEqual(['relay is shutting down', 'relay is shutting down']);
    hub.stop();
    gate.close();
  });
});
