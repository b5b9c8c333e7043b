import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ServiceRegistry } from '../rpc/registry.js';
import type { Logger } from '../util/logger.js';

const SHAPE = 'export default { Greeter: { Greet(name) { ... } } } or export default (registry) => registry.register(...)';

/**
 * Loads a user's services module. Its default export is either a map of service name to service
 * object, or a function that receives the registry (and a logger) and registers services itself.
 * Every mistake is refused with the module and the service named: a module that does not load (a
 * syntax error with its file:line), no default export, a default export of another shape, a service
 * that is not an object of methods.
 */
export async function loadServices(path: string, registry: ServiceRegistry, log: Logger): Promise<ServiceRegistry> {
  const file = resolve(path);
  let mod: { default?: unknown };
  try {
    mod = (await import(pathToFileURL(file).href)) as { default?: unknown };
  } catch (err) {
    const where = err instanceof SyntaxError ? syntaxErrorLocation(file, err) : '';
    throw new Error(`cannot load services module ${path}: ${(err as Error).message}${where}`, { cause: err });
  }
  const exported = mod.default;
  try {
    if (typeof exported === 'function') {
      await exported(registry, { log });
    } else if (exported !== null && typeof exported === 'object' && !Array.isArray(exported)) {
      for (const [name, impl] of Object.entries(exported)) registry.register(name, impl as object);
    } else if (exported === undefined) {
      throw new Error(`has no default export; write ${SHAPE}`);
    } else {
      throw new Error(
        `must export default a map of services or a function (registry) => void, not ${Array.isArray(exported) ? 'an array' : `the ${typeof exported} ${String(exported)}`}; e.g. ${SHAPE}`,
      );
    }
  } catch (err) {
    throw new Error(`services module ${path}: ${(err as Error).message}`, { cause: err });
  }
  if (registry.size === 0) throw new Error(`services module ${path} registered no service`);
  return registry;
}

/**
 * Node's SyntaxError from `import()` has no file or line; `node --check` on the same source has both.
 * Returns `\n  at FILE:LINE\n<the line>\n<a caret under the mistake>`, or '' when the check finds
 * another error or none (the mistake is then in a module this one imports).
 */
function syntaxErrorLocation(file: string, err: SyntaxError): string {
  let source: string;
  try {
    source = readFileSync(file, 'utf8');
  } catch {
    return '';
  }
  const type = file.endsWith('.cjs') ? 'commonjs' : 'module';
  const check = spawnSync(process.execPath, [`--input-type=${type}`, '--check'], { input: source, encoding: 'utf8', timeout: 10_000 });
  if (check.status === 0) return ' (in a module it imports; run node --check on each)';
  const lines = (check.stderr ?? '').split('\n');
  const at = /^\[stdin\]:(\d+)$/.exec(lines[0] ?? '');
  if (!at || !lines.includes(`SyntaxError: ${err.message}`)) return '';
  return `\n  at ${file}:${at[1]}\n${lines[1]}\n${lines[2]}`;
}
