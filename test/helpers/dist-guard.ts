// Vitest global setup: the suite starts the commands from dist/, so nothing may rebuild dist/ while it
// runs (a half-written module fails whichever test is starting a command at that moment, at random).
// `npm exec`, `npm pack` and `npm install` in the checkout run `prepare` (tsc) first; a test that needs
// them passes --ignore-scripts. The teardown fails the run (exit 1), naming the files, if any changed.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const DIST = fileURLToPath(new URL('../../dist/src/', import.meta.url));

function stamps(): Map<string, number> {
  const out = new Map<string, number>();
  for (const entry of readdirSync(DIST, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() || !entry.name.endsWith('.js')) continue;
    const path = join(entry.parentPath, entry.name);
    out.set(path, statSync(path).mtimeMs);
  }
  return out;
}

export default function setup(): () => void {
  const before = stamps();
  return () => {
    const changed = [...stamps()].filter(([path, mtime]) => before.get(path) !== mtime).map(([path]) => path);
    if (changed.length > 0) {
      // Vitest logs an error thrown here but still exits 0, so set the exit code as well.
      process.exitCode = 1;
      throw new Error(
        `dist/ was rewritten while the tests ran (${changed.length} files, e.g. ${changed.slice(0, 3).join(', ')}): ` +
          'a test ran the build (npm exec, pack or install in the checkout run `prepare`; pass --ignore-scripts)',
      );
    }
  };
}
