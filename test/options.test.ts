import { describe, expect, it } from 'vitest';
import { connect } from '../src/client/client.js';
import { CLIENT_DEFAULTS, resolveClientOptions } from '../src/client/options.js';
import { ForwardedService } from '../src/node/forward.js';
import { DirectListener } from '../src/node/direct.js';
import { TunnelNode } from '../src/node/node.js';
import { DIRECT_DEFAULTS, FORWARD_DEFAULTS, NODE_DEFAULTS, resolveDirectOptions, resolveForwardOptions, resolveNodeOptions } from '../src/node/options.js';
import { checkLimits, LIMIT_DEFAULTS } from '../src/relay/limits.js';
import { MsgpackRpcPort } from '../src/relay/msgpack-rpc-port.js';
import { MSGPACK_RPC_PORT_DEFAULTS, RELAY_DEFAULTS, resolveMsgpackRpcPortOptions, resolveRelayOptions } from '../src/relay/options.js';
import { Relay } from '../src/relay/relay.js';
import { ServiceRegistry } from '../src/rpc/registry.js';
import { registerExamples } from '../src/services/index.js';
import { silentLogger } from '../src/util/logger.js';
import { OptionError } from '../src/util/options.js';

/** The numeric options of a defaults object. */
function numericKeys(defaults: object): string[] {
  return Object.entries(defaults)
    .filter(([, v]) => typeof v === 'number')
    .map(([k]) => k);
}

/** Every key of `defaults` set to undefined. */
function allUndefined(defaults: object): Record<string, undefined> {
  return Object.fromEntries(Object.keys(defaults).map((k) => [k, undefined]));
}

const BAD_NUMBERS = [NaN, -1, Infinity, -Infinity, '30s'] as const;

/** Each bad number for each numeric option is refused with an OptionError naming owner and option. */
function refusesBadNumbers(owner: string, defaults: object, resolve: (o: Record<string, unknown>) => unknown): void {
  for (const key of numericKeys(defaults)) {
    for (const bad of BAD_NUMBERS) {
      let err: unknown;
      try {
        resolve({ [key]: bad });
      } catch (e) {
        err = e;
      }
      expect(err, `${owner} ${key}: ${String(bad)}`).toBeInstanceOf(OptionError);
      expect((err as OptionError).message).toMatch(
        new RegExp(`^${owner.replace(/[()]/g, '\\$&')} option ${key} must be .*, got ${bad === '30s' ? '"30s"' : String(bad)}$`),
      );
      expect((err as OptionError).options).toEqual([key]);
    }
  }
}

const services = () => registerExamples(new ServiceRegistry());

describe('resolveRelayOptions', () => {
  it('keeps every default when an option is given as undefined', () => {
    const o = resolveRelayOptions(allUndefined(RELAY_DEFAULTS));
    expect(o).toEqual(RELAY_DEFAULTS);
    const relay = new Relay({ listen: undefined, maxTimeout: undefined, heartbeatTimeout: undefined, maxMessage: undefined });
    expect(relay.limits.maxMessage).toBe(LIMIT_DEFAULTS.maxMessage);
  });

  it('refuses NaN, negative, infinite and non-number values, naming the option', () => {
    refusesBadNumbers('Relay', RELAY_DEFAULTS, resolveRelayOptions);
    expect(() => new Relay({ maxTimeout: NaN })).toThrow('Relay option maxTimeout must be a positive number of milliseconds, got NaN');
  });

  it('refuses 0 where it would mean nothing, and accepts it where it means off', () => {
    expect(() => resolveRelayOptions({ maxTimeout: 0 })).toThrow(/maxTimeout must be a positive number/);
    expect(() => resolveRelayOptions({ maxCallerInFlight: 0 })).toThrow('Relay option maxCallerInFlight must be a whole number, 1 or more, got 0');
    expect(() => resolveRelayOptions({ maxMessage: 1.5 })).toThrow('Relay option maxMessage must be a whole number of bytes, 1 or more, got 1.5');
    expect(resolveRelayOptions({ heartbeatTimeout: 0 }).heartbeatTimeout).toBe(0);
  });

  it('refuses durations past what Node timers can wait', () => {
    expect(() => resolveRelayOptions({ maxTimeout: 2 ** 31 })).toThrow(/maxTimeout must be at most 2147483647 milliseconds/);
  });

  it('names both options of a conflict', () => {
    const err = (() => {
      try {
        resolveRelayOptions({ defaultTimeout: 60_000, maxTimeout: 1_000 });
      } catch (e) {
        return e as OptionError;
      }
    })()!;
    expect(err.message).toBe('Relay option defaultTimeout (60000) must not exceed option maxTimeout (1000)');
    expect(err.options).toEqual(['defaultTimeout', 'maxTimeout']);
    expect(err.describe((o) => `--${o}`)).toBe('--defaultTimeout must not exceed --maxTimeout');
    expect(() => resolveRelayOptions({ maxMessage: 2048, maxReassembly: 1024 })).toThrow(
      /maxMessage \(2048\) must not exceed option maxReassembly \(1024\), or a body/,
    );
  });

  it('refuses an unknown selector and malformed addresses', () => {
    expect(() => resolveRelayOptions({ selector: 'fastest' as never })).toThrow(
      'Relay option selector must be one of round-robin, random, least-pending, got "fastest"',
    );
    expect(() => resolveRelayOptions({ listen: '127.1:0' })).toThrow(/^Relay option listen "127\.1:0": /);
    expect(() => resolveRelayOptions({ adminListen: 'x' })).toThrow(/^Relay option adminListen "x": /);
  });

  it('leaves checkLimits working for limits built elsewhere', () => {
    expect(() => checkLimits({ ...LIMIT_DEFAULTS, maxBacklog: NaN })).toThrow(/maxBacklog must be a positive number, got NaN/);
    expect(() => checkLimits(LIMIT_DEFAULTS)).not.toThrow();
  });
});

describe('resolveMsgpackRpcPortOptions', () => {
  const limits = { helloTimeout: 1_234, maxBacklog: 4_096, slowConsumerTimeout: 5_678 };

  it('takes its defaults, some from the relay limits, when options are undefined', () => {
    const o = resolveMsgpackRpcPortOptions({ ...allUndefined(MSGPACK_RPC_PORT_DEFAULTS), firstRequestTimeout: undefined, maxBacklog: undefined }, limits);
    expect(o).toMatchObject({ ...MSGPACK_RPC_PORT_DEFAULTS, firstRequestTimeout: 1_234, maxBacklog: 4_096, slowConsumerTimeout: 5_678 });
  });

  it('refuses bad numbers, naming the option, also from the constructor', () => {
    refusesBadNumbers('MsgpackRpcPort', { ...MSGPACK_RPC_PORT_DEFAULTS, firstRequestTimeout: 1, maxBacklog: 1, slowConsumerTimeout: 1 }, (o) =>
      resolveMsgpackRpcPortOptions(o, limits),
    );
    const relay = new Relay({ listen: '127.0.0.1:0' });
    expect(() => new MsgpackRpcPort(relay, { listen: '127.0.0.1:0', idleTimeout: -5 })).toThrow(
      'MsgpackRpcPort option idleTimeout must be a positive number of milliseconds, got -5',
    );
  });
});

describe('resolveNodeOptions', () => {
  it('keeps every default when an option is given as undefined', () => {
    const registry = services();
    expect(resolveNodeOptions({ ...allUndefined(NODE_DEFAULTS), services: registry })).toEqual({ ...NODE_DEFAULTS, services: registry });
    expect(() => new TunnelNode({ relay: '9090', name: 'n1', services: registry, heartbeatTimeout: undefined, reconnectCap: undefined })).not.toThrow();
  });

  it('refuses bad numbers, naming the option', () => {
    refusesBadNumbers('TunnelNode', NODE_DEFAULTS, (o) => resolveNodeOptions({ ...o, services: services() }));
    expect(() => new TunnelNode({ relay: '9090', name: 'n1', services: services(), heartbeatTimeout: NaN })).toThrow(
      'TunnelNode option heartbeatTimeout must be a number of milliseconds, 0 or more (0 turns heartbeats off), got NaN',
    );
  });

  it('refuses a backoff whose base is above its cap, a message too small for the envelope, and no registry', () => {
    expect(() => resolveNodeOptions({ services: services(), reconnectBase: 5_000, reconnectCap: 1_000 })).toThrow(
      'TunnelNode option reconnectBase (5000) must not exceed option reconnectCap (1000)',
    );
    expect(() => resolveNodeOptions({ services: services(), maxMessage: 1_024 })).toThrow(/maxMessage must be a whole number of bytes, 65537 or more/);
    expect(() => new TunnelNode({ relay: '9090', services: undefined as never })).toThrow(/TunnelNode option services must be a ServiceRegistry/);
  });
});

describe('resolveForwardOptions and resolveDirectOptions', () => {
  it('keep their defaults for undefined options', () => {
    expect(resolveForwardOptions(allUndefined(FORWARD_DEFAULTS))).toEqual(FORWARD_DEFAULTS);
    expect(resolveDirectOptions(allUndefined(DIRECT_DEFAULTS))).toEqual(DIRECT_DEFAULTS);
    expect(() => new ForwardedService('Arith', { host: '127.0.0.1', port: 1 }, { connections: undefined })).not.toThrow();
  });

  it('refuse bad numbers, naming the option', () => {
    refusesBadNumbers('ForwardedService', FORWARD_DEFAULTS, resolveForwardOptions);
    refusesBadNumbers('DirectListener', DIRECT_DEFAULTS, resolveDirectOptions);
    expect(() => new ForwardedService('Arith', { host: '127.0.0.1', port: 1 }, { connections: 0 })).toThrow(
      'ForwardedService option connections must be a whole number, 1 or more, got 0',
    );
    const node = new TunnelNode({ relay: '9090', name: 'n1', services: services() });
    expect(() => new DirectListener(node, silentLogger, { maxMessage: NaN })).toThrow(
      'DirectListener option maxMessage must be a whole number of bytes, 1 or more, got NaN',
    );
  });
});

describe('resolveClientOptions', () => {
  it('keeps every default for undefined options; connectTimeout follows a shorter timeout', () => {
    expect(resolveClientOptions({ ...allUndefined(CLIENT_DEFAULTS), connectTimeout: undefined })).toEqual({ ...CLIENT_DEFAULTS, connectTimeout: 10_000 });
    expect(resolveClientOptions({ timeout: 3_000 }).connectTimeout).toBe(3_000);
    expect(resolveClientOptions({ timeout: 60_000 }).connectTimeout).toBe(10_000);
    expect(resolveClientOptions({ timeout: 3_000, connectTimeout: 20_000 }).connectTimeout).toBe(20_000);
  });

  it('refuses bad numbers, naming the option; connect() rejects with it', async () => {
    refusesBadNumbers('connect()', { ...CLIENT_DEFAULTS, connectTimeout: 1 }, resolveClientOptions);
    await expect(connect('127.0.0.1:1', { timeout: NaN })).rejects.toThrow('connect() option timeout must be a positive number of milliseconds, got NaN');
  });
});
