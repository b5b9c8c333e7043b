import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { discoverMethods, ServiceRegistry } from '../src/rpc/registry.js';
import { BIN, killAll, Proc, runCall, startNode, startRelay, type RunningRelay } from './helpers/processes.js';

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

describe('tunnel-node --services: TypeScript modules, and modules outside the checkout', () => {
  /** Inside the checkout (dist/ is ignored by git), so that `import … from 'tunnel-rpc'` finds this package by name. */
  const inside = mkdtempSync(join(fileURLToPath(new URL('../dist/', import.meta.url)), 'services-ts-'));
  /** Outside it: no node_modules on the way up has tunnel-rpc. */
  const outside = mkdtempSync(join(tmpdir(), 'tunnel-services-outside-'));
  let relay: RunningRelay;
  beforeAll(async () => {
    relay = await startRelay();
  });
  afterAll(async () => {
    await killAll();
    rmSync(inside, { recursive: true, force: true });
    rmSync(outside, { recursive: true, force: true });
  });

  const write = (dir: string, name: string, source: string) => {
    const path = join(dir, name);
    writeFileSync(path, source);
    return path;
  };

  it('serves a TypeScript module (types and all) that imports tunnel-rpc', async () => {
    const path = write(
      inside,
      'greeter.ts',
      [
        "import { defineService, type CallContext } from 'tunnel-rpc';",
        'interface Greeting { text: string; length: number }',
        'const greet = (name: string): Greeting => ({ text: `hi ${name}`, length: name.length });',
        'export default { Greeter: defineService({ Greet: (name: string): Greeting => greet(name) }) } satisfies Record<string, unknown>;',
        'export type Unused = CallContext;',
        '',
      ].join('\n'),
    );
    const node = await startNode(relay.addr, ['--name', 'ts-1', '--services', path]);
    const r = await runCall(relay.addr, ['--json', 'Greeter.Greet', 'bob']);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({ result: { text: 'hi bob', length: 3 } });
    node.kill();
    await node.exited;
  });

  it('serves a .cts module (CommonJS TypeScript) and a .mts one', async () => {
    const cts = write(inside, 'count.cts', 'let n: number = 0;\nexport default { Count: { Next(): number { return ++n; } } };\n');
    const mts = write(inside, 'echo.mts', 'export default { Echo: { Say: (x: string): string => x } };\n');
    const a = await startNode(relay.addr, ['--name', 'cts-1', '--services', cts]);
    const b = await startNode(relay.addr, ['--name', 'mts-1', '--services', mts]);
    expect(await runCall(relay.addr, ['Count.Next'])).toMatchObject({ code: 0, stdout: '1\n' });
    expect(await runCall(relay.addr, ['Echo.Say', 'hey'])).toMatchObject({ code: 0, stdout: 'hey\n' });
    a.kill();
    b.kill();
    await Promise.all([a.exited, b.exited]);
  });

  it('a TypeScript syntax error names the file and line', async () => {
    const path = write(inside, 'broken.ts', 'export default {\n  X: { Get(): number { return 1 + ; } },\n};\n');
    const { code, stderr } = await startWith(path);
    expect(code).toBe(2);
    expect(stderr).toContain(`cannot load services module ${path}:`);
    expect(stderr).toMatch(/broken\.ts:2:/);
  });

  it.each(['outside.js', 'outside.ts'])('%s outside the checkout that imports tunnel-rpc says how to make it findable', async (name) => {
    const path = write(outside, name, "import { defineService } from 'tunnel-rpc';\nexport default { G: defineService({ Hi() { return 1; } }) };\n");
    const { code, stderr } = await startWith(path);
    expect(code).toBe(2);
    expect(stderr).toContain(`cannot load services module ${path}: Cannot find `);
    expect(stderr).toContain(`Node looks for tunnel-rpc in node_modules folders from ${outside} upward`);
    expect(stderr).toContain(`npm link tunnel-rpc in ${outside}`);
    expect(stderr).toContain('npm install /path/to/tunnel-rpc-0.1.0.tgz');
    expect(stderr).toContain('a module of plain objects of methods needs no import');
  });

  it('a module of plain objects outside the checkout needs no import and is served', async () => {
    const path = write(outside, 'plain.js', 'export default { Plain: { Add(a, b) { return a + b; } } };\n');
    const node = await startNode(relay.addr, ['--name', 'plain-1', '--services', path]);
    expect(await runCall(relay.addr, ['Plain.Add', '2', '3'])).toMatchObject({ code: 0, stdout: '5\n' });
    node.kill();
    await node.exited;
  });
});
