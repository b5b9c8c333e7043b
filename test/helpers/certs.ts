import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const SCRIPT = fileURLToPath(new URL('../../certs/make-certs.mjs', import.meta.url));

/** Runs certs/make-certs.mjs (the same script as `npm run certs`) into `dir`. */
export function makeCerts(dir: string, args: string[]): void {
  execFileSync(process.execPath, [SCRIPT, '--out', dir, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A temporary folder for certificates, removed by the returned function. */
export function certDir(): { dir: string; file(name: string): string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'tunnel-certs-'));
  return { dir, file: (name) => join(dir, name), remove: () => rmSync(dir, { recursive: true, force: true }) };
}
