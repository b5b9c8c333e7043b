import type { ServiceRegistry } from '../rpc/registry.js';
import { Arith } from './arith.js';
import { helloService } from './hello.js';
import { kvService } from './kv.js';
import { Server } from './server.js';

export const DEMO_USERS = { alice: 'secret' };

/** The example services a node serves when it is given no `--services` module. */
export function registerExamples(registry: ServiceRegistry, users: Record<string, string> = DEMO_USERS): ServiceRegistry {
  return registry.register('Arith', Arith).register('Hello', helloService(users)).register('KV', kvService()).register('Server', Server);
}
