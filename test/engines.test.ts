import { readFileSync } from 'node:fs';
import semver from 'semver';
import { describe, expect, it } from 'vitest';

// package.json promises Node >= 20; `npm ci` on Node 20 warns EBADENGINE for every locked package
// whose engines.node leaves Node 20 out (as @nats-io/nuid 3 did with ">= 22.x").
const root = new URL('../', import.meta.url);
const ours = JSON.parse(readFileSync(new URL('package.json', root), 'utf8')) as { engines: { node: string } };
const lock = JSON.parse(readFileSync(new URL('package-lock.json', root), 'utf8')) as {
  packages: Record<string, { version?: string; engines?: { node?: string } | string[]; dev?: boolean }>;
};

/** The lowest Node version our engines range admits (20.19.0: yargs 18 and vite 7 want ^20.19). */
const oldest = semver.minVersion(ours.engines.node)!;

function excluding(nodeVersion: string): string[] {
  const out: string[] = [];
  for (const [path, entry] of Object.entries(lock.packages)) {
    if (path === '' || Array.isArray(entry.engines)) continue; // the root; an old array form npm ignores
    const range = entry.engines?.node;
    if (range === undefined) continue;
    // An unparseable range is reported too: npm warns for it all the same.
    if (semver.validRange(range) === null || !semver.satisfies(nodeVersion, range, { includePrerelease: true })) {
      out.push(`${path.replace(/^.*node_modules\//, '')}@${entry.version} wants node ${range}`);
    }
  }
  return out;
}

describe('package-lock.json engines', () => {
  it('our own range starts on the Node 20 line', () => {
    expect(oldest.major).toBe(20);
  });

  it('no locked dependency excludes the Node 20 line we support', () => {
    // The oldest Node 20 that package.json admits, and the one running the tests when it is a 20.
    const versions = [oldest.version, ...(process.versions.node.startsWith('20.') ? [process.versions.node] : [])];
    for (const v of versions) expect(excluding(v), `on Node ${v}`).toEqual([]);
  });

  it('the check sees a range that leaves Node 20 out', () => {
    // The check itself can fail: a range like the one that caused the warning is caught.
    expect(semver.satisfies('20.19.0', '>= 22.x')).toBe(false);
    expect(semver.satisfies('20.19.0', '>= 18.0.0')).toBe(true);
  });
});
