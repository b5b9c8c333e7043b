import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

// tunnel-rpc is an ES module; its package.json `exports` has a `require` entry (cjs/index.cjs) for
// CommonJS projects. Scripts run from a folder inside the checkout, where 'tunnel-rpc' resolves to
// this package by its own name, through the same `exports` a user's node_modules copy has.
const dir = mkdtempSync(join(fileURLToPath(new URL('../dist/', import.meta.url)), 'commonjs-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function runCjs(name: string, source: string, nodeFlags: string[] = []): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const path = join(dir, name);
  writeFileSync(path, source);
  return new Promise((resolve) => {
    execFile(process.execPath, [...nodeFlags, path], { timeout: 30_000, env: { ...process.env, NODE_OPTIONS: '' } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr });
    });
  });
}

describe('tunnel-rpc from CommonJS', () => {
  it("require('tunnel-rpc') gives the same module import() does", async () => {
    const r = await runCjs(
      'require.cjs',
      [
        "const t = require('tunnel-rpc');",
        "import('tunnel-rpc').then((m) => console.log(typeof t.connect, typeof t.TunnelNode, t.TunnelError === m.TunnelError));",
        '',
      ].join('\n'),
    );
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('function function true\n');
    expect(r.code).toBe(0);
  });

  it('where Node cannot require() an ES module, the error says to use import', async () => {
    // What Node before 20.19 does; the flag turns require(esm) off on the Node running the tests.
    const r = await runCjs('old-node.cjs', "require('tunnel-rpc');\n", ['--no-experimental-require-module']);
    expect(r.code).toBe(1);
    // Ours is the error thrown; Node's ERR_REQUIRE_ESM is only its cause.
    expect(r.stderr).toMatch(/^Error: tunnel-rpc is an ES module: use import, or await import\('tunnel-rpc'\) from CommonJS/m);
    expect(r.stderr).toMatch(/\[cause\]: Error \[ERR_REQUIRE_ESM\]/);
  });

  it("await import('tunnel-rpc') works from CommonJS", async () => {
    const r = await runCjs(
      'import.cjs',
      "(async () => {\n  const { connect, ServiceRegistry } = await import('tunnel-rpc');\n  console.log(typeof connect, new ServiceRegistry().size);\n})();\n",
      ['--no-experimental-require-module'],
    );
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('function 0\n');
    expect(r.code).toBe(0);
  });
});
