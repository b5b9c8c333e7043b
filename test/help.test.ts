import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, killAll, Proc, runCall, startNode, startRelay, type RunningRelay } from './helpers/processes.js';

/** The commands' flag tables: docs/COMMANDS.md once the README's reference moves there, README.md before. */
const ROOT = new URL('../', import.meta.url);
const DOC = existsSync(new URL('docs/COMMANDS.md', ROOT)) ? 'docs/COMMANDS.md' : 'README.md';

const COMMANDS = ['tunnel-relay', 'tunnel-node', 'tunnel-call'] as const;
const bins: Record<(typeof COMMANDS)[number], string> = { 'tunnel-relay': BIN.relay, 'tunnel-node': BIN.node, 'tunnel-call': BIN.call };

/** Runs a command with --help to its end and returns what it printed. */
async function help(command: (typeof COMMANDS)[number]): Promise<string> {
  const proc = new Proc(bins[command], ['--help']);
  const { code } = await proc.exited;
  expect(code, proc.stderr).toBe(0);
  return proc.stdout;
}

/**
 * The flags --help lists: each option line's long name (`-h, --help` gives --help). yargs starts an
 * option line with two spaces and the alias column (`-h, ` or four spaces); a wrapped description
 * line is indented to the description column, further in.
 */
function helpFlags(text: string): Set<string> {
  return new Set([...text.matchAll(/^ {2}(?:-\w, | {4})(--[a-z][a-z0-9-]*)/gm)].map((m) => m[1]!));
}

/**
 * The flags of a command's table in the doc: the first table after the heading that names the
 * command, every `--flag` in its first column. `--no-x` beside `--x` is the same flag.
 */
function docFlags(command: string): Set<string> {
  const lines = readFileSync(new URL(DOC, ROOT), 'utf8').split('\n');
  const heading = lines.findIndex((l) => new RegExp(`^#{2,4} \`?${command}\`?\\s*$`).test(l));
  expect(heading, `a heading "${command}" in ${DOC}`).toBeGreaterThanOrEqual(0);
  let i = heading + 1;
  while (i < lines.length && !lines[i]!.startsWith('|')) {
    expect(lines[i]!.startsWith('#'), `a flag table under "${command}" in ${DOC}`).toBe(false);
    i++;
  }
  const flags = new Set<string>();
  for (i += 2; i < lines.length && lines[i]!.startsWith('|'); i++) {
    const first = lines[i]!.split('|')[1] ?? '';
    for (const m of first.matchAll(/--[a-z][a-z0-9-]*/g)) flags.add(m[0]);
  }
  for (const f of [...flags]) if (f.startsWith('--no-') && flags.has(`--${f.slice(5)}`)) flags.delete(f);
  return flags;
}

describe(`--help and the flag tables of ${DOC}`, () => {
  it.each(COMMANDS)('%s: every flag --help prints is in the table, and every table flag is in --help', async (command) => {
    const inHelp = helpFlags(await help(command));
    const inDoc = docFlags(command);
    expect(inHelp.size).toBeGreaterThan(10);
    expect([...inHelp].filter((f) => !inDoc.has(f)).sort(), `flags of ${command} --help missing from the table in ${DOC}`).toEqual([]);
    expect([...inDoc].filter((f) => !inHelp.has(f)).sort(), `flags in the table of ${command} in ${DOC} that --help does not know`).toEqual([]);
  });

  it.each([
    ['tunnel-relay', ['Listening:', 'Calls:', 'Authentication and TLS:', 'Limits:', 'Cluster:', 'Monitoring and dashboard:', 'Configuration and logging:']],
    ['tunnel-node', ['Relay:', 'Services:', 'Authentication and TLS:', 'Limits:', 'Configuration and logging:']],
    ['tunnel-call', ['Relay:', 'Choosing nodes:', 'Authentication and TLS:', 'Output:', 'Configuration and logging:']],
  ] as const)('%s --help groups every flag', async (command, groups) => {
    const text = await help(command);
    const titles = [...text.matchAll(/^([A-Z][A-Za-z ]+):$/gm)].map((m) => `${m[1]}:`).filter((t) => t !== 'Examples:' && t !== 'Positionals:');
    expect(titles).toEqual(groups);
    // yargs puts a flag that is in no group under "Options:".
    expect(text).not.toMatch(/^Options:$/m);
  });
});

describe('tunnel-call --pretty', () => {
  let relay: RunningRelay;
  const value = { v: [1, 2], name: 'config' };
  beforeAll(async () => {
    relay = await startRelay();
    await startNode(relay.addr, ['--name', 'kv-1']);
    const set = await runCall(relay.addr, ['KV.Set', 'config', JSON.stringify(value)]);
    expect(set).toMatchObject({ code: 0, stdout: 'true\n' });
  });
  afterAll(killAll);

  it('prints one line through a pipe, indented JSON with --pretty', async () => {
    expect(await runCall(relay.addr, ['KV.Get', 'config'])).toMatchObject({ code: 0, stdout: `${JSON.stringify(value)}\n` });
    expect(await runCall(relay.addr, ['--pretty', 'KV.Get', 'config'])).toMatchObject({ code: 0, stdout: `${JSON.stringify(value, null, 2)}\n` });
    expect(await runCall(relay.addr, ['--pretty', '--json', 'KV.Get', 'config'])).toMatchObject({
      code: 0,
      stdout: `${JSON.stringify({ result: value }, null, 2)}\n`,
    });
    // A string is printed as it is, --pretty or not.
    expect(await runCall(relay.addr, ['--pretty', 'Server.Ping'])).toMatchObject({ code: 0, stdout: 'pong\n' });
  });

  /** Runs tunnel-call with its stdout on a terminal (script(1) gives it a pseudo-terminal). */
  function onTerminal(args: string[]): Promise<{ code: number | null; stdout: string }> {
    const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
    const command = [process.execPath, BIN.call, '--relay', relay.addr, ...args].map(quote).join(' ');
    return new Promise((resolve) => {
      execFile('script', ['-qec', command, '/dev/null'], { timeout: 30_000 }, (err, stdout) => {
        resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout: stdout.replace(/\r\n/g, '\n') });
      });
    });
  }

  it('indents by default on a terminal, and --no-pretty turns it off', async () => {
    expect(await onTerminal(['KV.Get', 'config'])).toEqual({ code: 0, stdout: `${JSON.stringify(value, null, 2)}\n` });
    expect(await onTerminal(['--no-pretty', 'KV.Get', 'config'])).toEqual({ code: 0, stdout: `${JSON.stringify(value)}\n` });
  });
});
