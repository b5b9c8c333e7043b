import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
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
  if (TYPESCRIPT.test(file)) await loadTypeScript(path);
  let mod: { default?: unknown };
  try {
    mod = (await import(pathToFileURL(file).href)) as { default?: unknown };
  } catch (err) {
    const where = err instanceof SyntaxError && !TYPESCRIPT.test(file) ? syntaxErrorLocation(file, err) : '';
    throw new Error(`cannot load services module ${path}: ${(err as Error).message}${where}${howToFindUs(err, file)}`, { cause: err });
  }
  // A CommonJS module compiled from `export default` (a .cts, or a .ts outside a "type": "module"
  // package) has its default export one level down.
  let exported = mod.default;
  if (exported !== null && typeof exported === 'object' && (exported as { __esModule?: unknown }).__esModule === true && 'default' in exported) {
    exported = (exported as { default: unknown }).default;
  }
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

/** Services modules written in TypeScript; Node 20 cannot strip types, so tsx loads them. */
const TYPESCRIPT = /\.[cm]?ts$/;

let typeScriptLoaded = false;

/**
 * Registers tsx's loaders (esbuild: types are stripped, not checked) for the TypeScript files this
 * process imports from now on. Only done when a TypeScript module is given, so that a JavaScript one
 * loads exactly as Node loads it.
 */
async function loadTypeScript(path: string): Promise<void> {
  if (typeScriptLoaded) return;
  try {
    // Both hooks, as the tsx command sets them: a .ts file outside a "type": "module" package, and
    // every .cts, is CommonJS, which Node loads through require(), not the ES module loader.
    const [esm, cjs] = await Promise.all([import('tsx/esm/api'), import('tsx/cjs/api')]);
    esm.register();
    cjs.register();
    typeScriptLoaded = true;
  } catch (err) {
    throw new Error(
      `cannot load TypeScript services module ${path}: the TypeScript loader (tsx, a dependency of tunnel-rpc) failed: ${(err as Error).message}. ` +
        "Reinstall tunnel-rpc's dependencies (npm ci), or compile the module to JavaScript (tsc) and give the .js file",
      { cause: err },
    );
  }
}

const PACKAGE = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { name: string; version: string };

/**
 * When the module imports tunnel-rpc and Node cannot find it from the module's folder (a module kept
 * outside any project that installs it), the ways to make it findable; '' for any other error.
 */
function howToFindUs(err: unknown, file: string): string {
  const message = err instanceof Error ? err.message : '';
  // The ES module loader says "Cannot find package 'tunnel-rpc'"; require() (a TypeScript module
  // that tsx loads as CommonJS) says "Cannot find module 'tunnel-rpc'".
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const missing =
    (code === 'ERR_MODULE_NOT_FOUND' && message.includes(`Cannot find package '${PACKAGE.name}'`)) ||
    (code === 'MODULE_NOT_FOUND' && message.startsWith(`Cannot find module '${PACKAGE.name}'`));
  if (!missing) return '';
  const dir = dirname(file);
  return (
    `\n  Node looks for ${PACKAGE.name} in node_modules folders from ${dir} upward, and it is not installed there. Either:` +
    `\n  - link it: run npm link in the ${PACKAGE.name} folder (the checkout or the installed package), then npm link ${PACKAGE.name} in ${dir}` +
    `\n  - install it there: npm install /path/to/${PACKAGE.name}-${PACKAGE.version}.tgz (made by npm pack in the checkout)` +
    `\n  - or import nothing: a module of plain objects of methods needs no import, e.g. export default { Greeter: { Greet(name) { return \`hi \${name}\`; } } }`
  );
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
