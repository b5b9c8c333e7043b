import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ServiceRegistry } from '../rpc/registry.js';
import type { Logger } from '../util/logger.js';

/**
 * Loads a user's services module. Its default export is either a map of service name to service
 * object, or a function that receives the registry (and a logger) and registers services itself.
 */
export async function loadServices(path: string, registry: ServiceRegistry, log: Logger): Promise<ServiceRegistry> {
  const url = pathToFileURL(resolve(path)).href;
  let mod: { default?: unknown };
  try {
    mod = (await import(url)) as { default?: unknown };
  } catch (err) {
    throw new Error(`cannot load services module ${path}: ${(err as Error).message}`, { cause: err });
  }
  const exported = mod.default;
  if (typeof exported === 'function') {
    await exported(registry, { log });
  } else if (exported !== null && typeof exported === 'object') {
    for (const [name, impl] of Object.entries(exported)) registry.register(name, impl as object);
  } else {
    throw new Error(`services module ${path} must export default a map of services or a function (registry) => void`);
  }
  if (registry.size === 0) throw new Error(`services module ${path} registered no service`);
  return registry;
}
