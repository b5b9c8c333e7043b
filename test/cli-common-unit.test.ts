import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  command,
  durationFlag,
  exitAfter,
  explainStartError,
  fatal,
  flagLabel,
  flagOrigin,
  keyValues,
  onParentExit,
  parse,
  sizeFlag,
  usageError,
  writeOut,
} from '../src/cli/common.js';
import { loadConfigFile, type FlagSchema } from '../src/cli/config-file.js';
import { AddressError, dialAddress, listenAddress, relayUrl } from '../src/util/address.js';
import { OptionError } from '../src/util/options.js';

/**
 * The CLI's shared helpers in-process: the yargs setup and its precedence (flag > TUNNEL_* > --config
 * file > default), where a value came from, the config file reader, and the exits. process.argv and
 * process.env are set per test and put back after it; process.exit is stubbed to throw.
 */

const dir = mkdtempSync(join(tmpdir(), 'cli-common-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let fileCount = 0;
function file(ext: string, text: string): string {
  const path = join(dir, `c${++fileCount}${ext}`);
  writeFileSync(path, text);
  return path;
}

const savedArgv = process.argv;
const savedEnv = { ...process.env };
let stderr: string[];
let stdout: string[];

class Exit extends Error {
  constructor(readonly code: number | string | null | undefined) {
    super(`exit ${code}`);
  }
}

beforeEach(() => {
  for (const k of Object.keys(process.env)) if (k.startsWith('TUNNEL_') || k === 'npm_command') delete process.env[k];
  stderr = [];
  stdout = [];
  const capture = (into: string[]) => (chunk: unknown, encoding?: unknown, cb?: unknown) => {
    into.push(String(chunk));
    const done = typeof encoding === 'function' ? encoding : cb;
    if (typeof done === 'function') (done as () => void)();
    return true;
  };
  vi.spyOn(process.stderr, 'write').mockImplementation(capture(stderr) as typeof process.stderr.write);
  vi.spyOn(process.stdout, 'write').mockImplementation(capture(stdout) as typeof process.stdout.write);
  vi.spyOn(process, 'exit').mockImplementation((code) => {
    throw new Exit(code);
  });
});

afterEach(() => {
  vi.restoreAllMocks();
  vi.useRealTimers();
  process.argv = savedArgv;
  for (const k of Object.keys(process.env)) if (!(k in savedEnv)) delete process.env[k];
  Object.assign(process.env, savedEnv);
});

/** A command like tunnel-relay's, with a few flags of each kind, run on `args`. */
function testCommand(args: string[]) {
  process.argv = [process.execPath, 'tunnel-test', ...args];
  return command('tunnel-test', '$0 [options]')
    .option('listen', { type: 'string', default: ':9090' })
    .option('name', { type: 'string', default: 'relay' })
    .option('max-timeout', { type: 'string', default: '5m' })
    .option('default-timeout', { type: 'string', default: '30s' })
    .option('idle-timeout', { type: 'string', default: '1m' })
    .option('max-message', { type: 'string', default: '16MiB' })
    .option('verbose', { type: 'boolean', default: false })
    .option('label', { type: 'string', array: true, default: [] as string[] });
}

describe('command and parse: precedence flag > environment > file > default', () => {
  it('takes each value from the strongest source that has it, and says where it came from', async () => {
    const config = file('.yaml', 'listen: 127.0.0.1:7000\nname: file-name\nmaxTimeout: 2m\n');
    process.env.TUNNEL_LISTEN = '127.0.0.1:8000';
    process.env.TUNNEL_NAME = 'env-name';
    const argv = await parse(testCommand(['--listen', '127.0.0.1:9000', '--config', config]));
    expect(argv.listen).toBe('127.0.0.1:9000');
    expect(argv.name).toBe('env-name');
    expect(argv['max-timeout']).toBe('2m');
    expect(argv['default-timeout']).toBe('30s');
    expect(flagOrigin('listen')).toEqual({ flag: '--listen', source: undefined, raw: '127.0.0.1:9000' });
    expect(flagOrigin('name')).toEqual({ flag: '--name', source: 'TUNNEL_NAME', raw: 'env-name' });
    expect(flagOrigin('max-timeout')).toEqual({ flag: 'maxTimeout', source: `config file ${config}`, raw: '2m' });
    expect(flagOrigin('default-timeout')).toEqual({ flag: '--default-timeout', source: 'default', raw: undefined });
    expect(flagLabel('listen')).toBe('--listen');
    expect(flagLabel('name')).toBe('--name (from TUNNEL_NAME)');
    expect(flagLabel('max-timeout')).toBe(`maxTimeout (from config file ${config})`);
    expect(flagLabel('default-timeout')).toBe('--default-timeout (default)');
  });

  it('the config file may come from TUNNEL_CONFIG, in JSON', async () => {
    process.env.TUNNEL_CONFIG = file('.json', JSON.stringify({ name: 'from-json', verbose: true, label: { zone: 'a', tier: 2 } }));
    const argv = await parse(testCommand([]));
    expect(argv.name).toBe('from-json');
    expect(argv.verbose).toBe(true);
    expect(argv.label).toEqual(['zone=a', 'tier=2']);
  });

  it('a repeated single-valued flag: the last wins; a repeatable one keeps every value', async () => {
    const argv = await parse(testCommand(['--name', 'a', '--name=b', '--label', 'x=1', '--label', 'y=2']));
    expect(argv.name).toBe('b');
    expect(argv.label).toEqual(['x=1', 'y=2']);
    expect(flagOrigin('name')).toEqual({ flag: '--name', source: undefined, raw: 'b' });
  });

  it('sets aside TUNNEL_* variables of other commands instead of rejecting them; its own are read', async () => {
    process.env.TUNNEL_LOGIN = 'someone-else';
    process.env.TUNNEL_MAX_MESSAGE = '1MiB';
    const argv = await parse(testCommand([]));
    expect(argv['max-message']).toBe('1MiB');
    expect(process.env.TUNNEL_LOGIN).toBeUndefined();
  });

  it('a bare number stays text: a flag value never becomes a number', async () => {
    const argv = await parse(testCommand(['--listen', '9090', '--name', '0777']));
    expect(argv.listen).toBe('9090');
    expect(argv.name).toBe('0777');
  });

  it('an unknown flag is a usage error: exit 2 with the message and a pointer to --help', async () => {
    await expect(parse(testCommand(['--bogus', '1']))).rejects.toThrow(Exit);
    expect(process.exit).toHaveBeenCalledWith(2);
    expect(stderr.join('')).toMatch(/^tunnel-test: Unknown arguments?: bogus\nRun tunnel-test --help for usage\.\n$/);
  });

  it('a bad config file is a usage error naming the file and the key', async () => {
    const config = file('.yaml', 'nmae: typo\n');
    await expect(parse(testCommand(['--config', config]))).rejects.toThrow(Exit);
    expect(stderr.join('')).toContain(`config file ${config}: unknown key "nmae"; known keys: `);
  });
});

describe('reading flags: durations, sizes, start errors', () => {
  it('durations and sizes parse; a bad one names the flag, its source and its text', async () => {
    process.env.TUNNEL_MAX_TIMEOUT = 'soon';
    const argv = (await parse(testCommand(['--max-message', '2MiB']))) as Record<string, unknown>;
    expect(durationFlag(argv, 'default-timeout')).toBe(30_000);
    expect(sizeFlag(argv, 'max-message')).toBe(2 * 1024 * 1024);
    expect(() => durationFlag(argv, 'max-timeout')).toThrow('--max-timeout (from TUNNEL_MAX_TIMEOUT): must be a duration such as 500ms, 30s or 5m; got "soon"');
    const bad = (await parse(testCommand(['--max-message', 'lots']))) as Record<string, unknown>;
    expect(() => sizeFlag(bad, 'max-message')).toThrow('--max-message: must be a size such as 16MiB, 512KiB or a number of bytes; got "lots"');
  });

  it('explains an OptionError in flags: one option, or a conflict with each flag, its text and source', async () => {
    const argv = (await parse(testCommand(['--default-timeout', '10m']))) as Record<string, unknown>;
    // (Flags no --config file of this file sets: what a file set is remembered for the process.)
    const one = OptionError.invalid('Relay', 'idleTimeout', 'must be a positive duration', 0);
    expect(explainStartError(one, argv)).toBe('--idle-timeout (default): must be a positive duration; got "1m"');
    const conflict = OptionError.conflict(
      'Relay',
      { defaultTimeout: 600_000, idleTimeout: 60_000 },
      (l) => `${l('defaultTimeout')} must not exceed ${l('idleTimeout')}`,
    );
    expect(explainStartError(conflict, argv)).toBe('--default-timeout 10m must not exceed --idle-timeout 1m (default)');
    process.env.TUNNEL_IDLE_TIMEOUT = '0s';
    const fromEnv = (await parse(testCommand([]))) as Record<string, unknown>;
    expect(explainStartError(one, fromEnv)).toBe('--idle-timeout (from TUNNEL_IDLE_TIMEOUT): must be a positive duration; got "0s"');
    // An option whose flag has another name.
    const renamed = OptionError.invalid('Relay', 'maxBody', 'must be at least 1 KiB', 10);
    expect(explainStartError(renamed, argv, { maxBody: 'max-message' })).toBe('--max-message (default): must be at least 1 KiB; got "16MiB"');
    expect(explainStartError(new Error('port in use'), argv)).toBe('port in use');
  });

  it('keyValues reads repeated key=value flags and refuses anything else', () => {
    expect(keyValues(['zone=eu', 'expr=a=b'], 'label')).toEqual({ zone: 'eu', expr: 'a=b' });
    expect(keyValues('one=1', 'label')).toEqual({ one: '1' });
    expect(keyValues(undefined, 'label')).toEqual({});
    expect(() => keyValues(['novalue'], 'label')).toThrow('--label takes key=value, got "novalue"');
    expect(() => keyValues(['=v'], 'label')).toThrow('--label takes key=value, got "=v"');
  });
});

describe('exits', () => {
  it('fatal logs and exits 1; under --log-level silent it says why on stderr', async () => {
    const log = pino({ level: 'silent' });
    await expect(fatal(log, 'tunnel-test', { port: 9090, host: 'x' }, 'cannot listen')).rejects.toThrow(Exit);
    expect(process.exit).toHaveBeenCalledWith(1);
    expect(stderr.join('')).toBe('tunnel-test: cannot listen (port=9090 host=x)\n');
  });

  it('fatal with a logger that writes the line leaves stderr to the logger', async () => {
    const lines: string[] = [];
    const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(s) });
    await expect(fatal(log, 'tunnel-test', {}, 'boom')).rejects.toThrow(Exit);
    expect(stderr.join('')).toBe('');
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 60, msg: 'boom' });
  });

  it('exitAfter writes both streams before it exits', async () => {
    await expect(exitAfter(3, { stdout: 'out\n', stderr: 'err\n' })).rejects.toThrow('exit 3');
    expect(stdout.join('')).toBe('out\n');
    expect(stderr.join('')).toBe('err\n');
  });

  it('writeOut of nothing writes nothing', async () => {
    await writeOut('');
    expect(stdout).toEqual([]);
  });

  it('usageError exits 2 with the message and a pointer to --help', () => {
    expect(() => usageError('tunnel-call', 'give a method')).toThrow('exit 2');
    expect(stderr.join('')).toBe('tunnel-call: give a method\nRun tunnel-call --help for usage.\n');
  });

  it('onParentExit watches the parent only under npm, and not while the parent stays', () => {
    // (The parent going is covered end to end in signals.test.ts: process.ppid cannot be faked here.)
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    const log = pino({ level: 'silent' });
    const fired: string[] = [];
    onParentExit(log, () => fired.push('outside npm'), {});
    expect(vi.getTimerCount()).toBe(0);
    onParentExit(log, () => fired.push('under npm'), { npm_command: 'exec' });
    expect(vi.getTimerCount()).toBe(1);
    vi.advanceTimersByTime(10_000);
    expect(fired).toEqual([]);
    expect(vi.getTimerCount()).toBe(1);
    vi.clearAllTimers();
  });
});

describe('config files', () => {
  const schema: FlagSchema = {
    flags: new Set(['listen', 'relay', 'name', 'label', 'verbose', 'config', 'help', 'version', 'heartbeat-timeout']),
    arrays: new Set(['label']),
    booleans: new Set(['verbose']),
  };

  it('reads kebab-case and camelCase keys, numbers as text, booleans as they are, and reports each key', () => {
    const seen: Array<[string, string, unknown]> = [];
    const out = loadConfigFile(file('.yml', 'heartbeatTimeout: 15000\nverbose: true\nlabel:\n  - a=1\n  - b=2\n'), schema, (f, k, v) => seen.push([f, k, v]));
    expect(out).toEqual({ 'heartbeat-timeout': '15000', verbose: true, label: ['a=1', 'b=2'] });
    expect(seen).toEqual([
      ['heartbeat-timeout', 'heartbeatTimeout', 15000],
      ['verbose', 'verbose', true],
      ['label', 'label', ['a=1', 'b=2']],
    ]);
  });

  it('a repeatable flag takes a map (key=value each) or a single value', () => {
    expect(loadConfigFile(file('.yaml', 'label:\n  zone: eu\n  n: 3\n'), schema)).toEqual({ label: ['zone=eu', 'n=3'] });
    expect(loadConfigFile(file('.yaml', 'label: zone=eu\n'), schema)).toEqual({ label: ['zone=eu'] });
  });

  it('an empty file is no settings', () => {
    expect(loadConfigFile(file('.yaml', ''), schema)).toEqual({});
    expect(loadConfigFile(file('.yaml', '# only a comment\n'), schema)).toEqual({});
  });

  it('refuses unknown keys (listing the known ones), and the keys that make no sense in a file', () => {
    const typo = file('.yaml', 'lisen: :1\n');
    expect(() => loadConfigFile(typo, schema)).toThrow(
      `config file ${typo}: unknown key "lisen"; known keys: heartbeat-timeout, label, listen, name, relay, verbose`,
    );
    const nested = file('.yaml', 'config: other.yaml\n');
    expect(() => loadConfigFile(nested, schema)).toThrow(`config file ${nested}: unknown key "config"`);
  });

  it('refuses values of the wrong kind, naming the key', () => {
    const b = file('.yaml', 'verbose: "yes"\n');
    expect(() => loadConfigFile(b, schema)).toThrow(`config file ${b}: key "verbose" must be true or false, got "yes"`);
    const o = file('.yaml', 'name:\n  first: x\n');
    expect(() => loadConfigFile(o, schema)).toThrow(`config file ${o}: key "name" must be a string or a number, got {"first":"x"}`);
    const l = file('.yaml', 'label:\n  - [1, 2]\n');
    expect(() => loadConfigFile(l, schema)).toThrow(`config file ${l}: key "label" must be a list of strings or a map of key: value`);
  });

  it('refuses a file that is missing, broken, or not a map', () => {
    const missing = join(dir, 'nope.yaml');
    expect(() => loadConfigFile(missing, schema)).toThrow(`cannot read config file ${missing}: `);
    const json = file('.json', '{"listen": ');
    expect(() => loadConfigFile(json, schema)).toThrow(`config file ${json} is not valid JSON: `);
    const yaml = file('.yaml', 'listen: [unclosed\n');
    expect(() => loadConfigFile(yaml, schema)).toThrow(`config file ${yaml} is not valid YAML: `);
    const list = file('.yaml', '- listen\n');
    expect(() => loadConfigFile(list, schema)).toThrow(`config file ${list} must hold a map of flag names to values, e.g. "listen: :9090"`);
  });

  it('a bare-number host stays text (YAML 1.2, not base 60) and the address parser refuses to dial it', () => {
    // YAML 1.1 would read 9090:9090 as the sexagesimal number 554490.
    const out = loadConfigFile(file('.yaml', 'relay: 9090:9090\nlisten: 9090\nname: 127.1\n'), schema);
    expect(out).toEqual({ relay: '9090:9090', listen: '9090', name: '127.1' });
    expect(() => dialAddress(out.relay as string, '--relay', 'localhost')).toThrow(AddressError);
    expect(() => dialAddress(out.relay as string, '--relay', 'localhost')).toThrow(
      /host "9090" is neither a name nor an IPv4 address.*a bare number is a port on this host/,
    );
    expect(() => relayUrl(out.relay as string, '--relay')).toThrow(AddressError);
    // A bare number alone is a port on this host, never the address 0.0.35.130.
    expect(listenAddress(out.listen as string, '--listen')).toEqual({ host: '', port: 9090 });
    expect(dialAddress(out.listen as string, '--relay', 'localhost')).toEqual({ host: 'localhost', port: 9090 });
    expect(relayUrl('9090')).toBe('ws://localhost:9090/');
    for (const numeric of ['127.1:9090', '0x7f000001:80', '2130706433:80', 'ws://9090:9090/', 'ws://127.1/']) {
      expect(() => relayUrl(numeric, '--relay'), numeric).toThrow(AddressError);
    }
  });
});
