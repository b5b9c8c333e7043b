import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { discoverMethods, ServiceRegistry } from '../src/rpc/registry.js';
import { BIN, Proc } from './helpers/processes.js';

const dir = mkdtempSync(join(tmpdir(), 'tunnel-services-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A services module written to the temporary directory; returns its path. */
function module(name: string, source: string): string {
  const path = join(dir, name);
  writeFileSync(path, source);
  return path;
}

/** Starts tunnel-node with `--services path` and returns its exit code and stderr. */
async function startWith(path: string): Promise<{ code: number | null; stderr: string }> {
  const node = new Proc(BIN.node, ['--relay', '127.0.0.1:1', '--services', path]);
  const { code } = await node.exited;
  return { code, stderr: node.stderr };
}

describe('ServiceRegistry.register: what a service may be', () => {
  it('refuses values that are not objects of methods, naming the service', () => {
    const r = new ServiceRegistry();
    expect(() => r.register('Greeter', 42 as never)).toThrow(
      'service Greeter must be an object of methods (e.g. { Greet(name) { return `hi ${name}`; } }), got the number 42',
    );
    expect(() => r.register('Greeter', 'hi' as never)).toThrow(/service Greeter must be an object of methods .*, got the string "hi"$/);
    expect(() => r.register('Greeter', null as never)).toThrow(/^service Greeter is null; give an object of methods/);
    expect(() => r.register('Greeter', [() => 1])).toThrow(/service Greeter must be an object of methods .*, got an array$/);
    expect(() => r.register('Greeter', class Greeter {})).toThrow('service Greeter is a class; give an instance (new Greeter()) or an object of methods');
    expect(() => r.register('Greeter', () => 1)).toThrow(/^service Greeter is a function; give an object of methods/);
    expect(() => r.register('Greeter', new Map())).toThrow(
      "service Greeter has no methods (a Map: its built-in methods are not served); give an object whose own or class methods are the service's",
    );
    expect(r.size).toBe(0);
  });

  it('never serves methods inherited from built-in prototypes', () => {
    expect(discoverMethods(Object.assign(Object.create(Number.prototype) as object, { Get() {} }))).toEqual(['Get']);
    expect(discoverMethods(Object.assign(new Date(), { Now() {} }))).toEqual(['Now']);
    class Base {
      Hello() {}
    }
    class Child extends Base {
      Bye() {}
    }
    expect(discoverMethods(new Child())).toEqual(['Bye', 'Hello']);
    expect(new ServiceRegistry().register('Svc', new Child()).describe()).toEqual({ Svc: ['Bye', 'Hello'] });
  });
});

describe('tunnel-node --services: a module of the wrong shape fails at start', () => {
  it.each([
    ['number.js', 'export default { Greeter: 42 };\n', /services module .*number\.js: service Greeter must be an object of methods .*, got the number 42/],
    ['array.js', 'export default { Greeter: ["Greet"] };\n', /service Greeter must be an object of methods .*, got an array/],
    ['class.js', 'export default { Greeter: class Greeter { Greet() {} } };\n', /service Greeter is a class; give an instance \(new Greeter\(\)\)/],
    ['no-default.js', 'export const Greeter = { Greet() {} };\n', /services module .*no-default\.js: has no default export; write export default \{ Greeter/],
    ['seven.js', 'export default 7;\n', /must export default a map of services or a function \(registry\) => void, not the number 7/],
    ['map.js', 'export default { Store: new Map() };\n', /service Store has no methods \(a Map: its built-in methods are not served\)/],
  ])('%s', async (name, source, message) => {
    const { code, stderr } = await startWith(module(name, source));
    expect(code).toBe(2);
    expect(stderr).toMatch(message);
  });

  it('shows file:line of a syntax error, with the line and a caret', async () => {
    const path = module(
      'syntax.js',
      ['// a services module with a mistake on line 4', 'export default {', '  Greeter: {', '    Greet(name) { return name + ; },', '  },', '};', ''].join(
        '\n',
      ),
    );
    const { code, stderr } = await startWith(path);
    expect(code).toBe(2);
    expect(stderr).toContain(`cannot load services module ${path}: Unexpected token ';'\n  at ${path}:4\n    Greet(name) { return name + ; },\n`);
  });

  it('says when the syntax error is in a module it imports', async () => {
    module('broken.js', 'export const x = ;\n');
    const { code, stderr } = await startWith(module('importer.js', "import { x } from './broken.js';\nexport default { X: { Get() { return x; } } };\n"));
    expect(code).toBe(2);
    expect(stderr).toMatch(/cannot load services module .*importer\.js: Unexpected token ';' \(in a module it imports; run node --check on each\)/);
  });
});
