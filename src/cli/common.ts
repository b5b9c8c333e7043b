import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { createLogger, LOG_LEVELS, type LogLevel, type Logger } from '../util/logger.js';
import { OptionError } from '../util/options.js';
import { parseDuration, parseSize } from '../util/units.js';
import { loadConfigFile, type FlagSchema } from './config-file.js';

/** Where a flag's value comes from, strongest first; yargs applies them in this order. */
export const PRECEDENCE = 'Precedence: command-line flags > TUNNEL_* environment variables > --config file > defaults.';

/**
 * The yargs setup every command shares: flags also from `TUNNEL_*` environment variables and from a
 * `--config` file (YAML or JSON, every key checked), unknown flags rejected, usage errors exit 2 with
 * the message and a pointer to --help.
 */
export function command(name: string, usage: string): Argv {
  const cli: Argv = yargs(hideBin(process.argv))
    .scriptName(name)
    .usage(usage)
    .env('TUNNEL')
    .parserConfiguration({ 'parse-positional-numbers': false })
    .option('log-level', {
      type: 'string',
      choices: LOG_LEVELS,
      default: 'info',
      describe: 'Least severe log level written to stderr (JSON lines; pretty on a terminal)',
    })
    .strict()
    .help()
    .alias('h', 'help')
    .version()
    .wrap(Math.min(110, process.stdout.columns ?? 100))
    .fail((msg, err) => {
      process.stderr.write(`${name}: ${msg ?? err?.message}\nRun ${name} --help for usage.\n`);
      process.exit(2);
    });
  // yargs-parser fills a key from the first source that has it: argv, then env, then this file,
  // then defaults; that is PRECEDENCE (test/config.test.ts checks it).
  return cli.config('config', `YAML (.yaml, .yml) or JSON (.json) file of flag: value pairs. ${PRECEDENCE}`, (path: string) =>
    loadConfigFile(path, flagSchema(cli), (flag, key, value) => fromFile.set(flag, { path, key, value })),
  );
}

/** Each flag read from the --config file: the file, the key as written there, the value. */
const fromFile = new Map<string, { path: string; key: string; value: unknown }>();

/** Where a flag's value came from, for messages. */
export interface FlagOrigin {
  /** The flag as the user wrote it: `--max-timeout`, `--maxTimeout`, or a config file's key. */
  flag: string;
  /** Undefined for the command line; else the variable, `config file PATH`, or `default`. */
  source: string | undefined;
  /** The value as written (undefined for a default). */
  raw: unknown;
}

const kebab = (name: string) => name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/**
 * Where `flag`'s value came from, found in the order yargs applies the sources (PRECEDENCE): the
 * command line (the last occurrence), then `TUNNEL_*`, then the --config file, else the default.
 */
export function flagOrigin(flag: string): FlagOrigin {
  const args = hideBin(process.argv);
  let found: FlagOrigin | undefined;
  for (let i = 0; i < args.length && args[i] !== '--'; i++) {
    const m = /^--([^=]+)(?:=(.*))?$/s.exec(args[i]!);
    if (!m || kebab(m[1]!).replace(/^no-/, '') !== flag) continue;
    found = { flag: `--${m[1]}`, source: undefined, raw: m[2] ?? args[i + 1] };
  }
  if (found) return found;
  const variable = `TUNNEL_${flag.toUpperCase().replace(/-/g, '_')}`;
  if (process.env[variable] !== undefined) return { flag: `--${flag}`, source: variable, raw: process.env[variable] };
  const file = fromFile.get(flag);
  if (file) return { flag: file.key === flag ? `--${flag}` : file.key, source: `config file ${file.path}`, raw: file.value };
  return { flag: `--${flag}`, source: 'default', raw: undefined };
}

/** `--max-timeout`, `--max-timeout (from TUNNEL_MAX_TIMEOUT)`, `maxTimeout (from config file relay.yaml)`. */
export function flagLabel(flag: string): string {
  const o = flagOrigin(flag);
  return o.source === undefined ? o.flag : o.source === 'default' ? `${o.flag} (default)` : `${o.flag} (from ${o.source})`;
}

/** The flag's text as written, or (for a default) as yargs holds it. */
function textOf(flag: string, value: unknown): string {
  const raw = flagOrigin(flag).raw ?? value;
  return typeof raw === 'string' ? raw : String(raw);
}

/** Reads a duration flag (500ms, 30s, 5m, or milliseconds); a bad one names the flag, its source and text. */
export function durationFlag(argv: Record<string, unknown>, flag: string): number {
  try {
    return parseDuration(argv[flag], flag);
  } catch {
    throw new Error(`${flagLabel(flag)}: must be a duration such as 500ms, 30s or 5m; got ${JSON.stringify(textOf(flag, argv[flag]))}`);
  }
}

/** Reads a size flag (16MiB, 512KiB, or bytes); a bad one names the flag, its source and text. */
export function sizeFlag(argv: Record<string, unknown>, flag: string): number {
  try {
    return parseSize(argv[flag], flag);
  } catch {
    throw new Error(`${flagLabel(flag)}: must be a size such as 16MiB, 512KiB or a number of bytes; got ${JSON.stringify(textOf(flag, argv[flag]))}`);
  }
}

/**
 * A start-up error in the user's terms: a library {@link OptionError} names the flags that set its
 * options (`flags` maps an option to its flag when the names differ), where each came from, and the
 * text given; any other error keeps its message.
 */
export function explainStartError(err: unknown, argv: Record<string, unknown>, flags: Record<string, string> = {}): string {
  if (!(err instanceof OptionError)) return (err as Error).message;
  const flagOf = (option: string) => flags[option] ?? kebab(option);
  if (err.requirement !== undefined && err.options.length === 1) {
    const flag = flagOf(err.options[0]!);
    return `${flagLabel(flag)}: ${err.requirement}; got ${JSON.stringify(textOf(flag, argv[flag] ?? err.value))}`;
  }
  // A conflict: each flag with its text, e.g. "--default-timeout 10m must not exceed --max-timeout 5m (default)".
  return err.describe((option) => {
    const flag = flagOf(option);
    const o = flagOrigin(flag);
    const where = o.source === undefined ? '' : o.source === 'default' ? ' (default)' : ` (from ${o.source})`;
    return `${o.flag} ${textOf(flag, argv[flag])}${where}`;
  });
}

function flagSchema(cli: Argv): FlagSchema {
  const o = (cli as unknown as { getOptions(): { key: Record<string, unknown>; array: string[]; boolean: string[] } }).getOptions();
  return { flags: new Set(Object.keys(o.key)), arrays: new Set(o.array), booleans: new Set(o.boolean) };
}

export function logger(name: string, level: unknown): Logger {
  return createLogger(name, level as LogLevel);
}

/**
 * Parses the command line. `TUNNEL_*` variables meant for another command (TUNNEL_NAME is the node's,
 * TUNNEL_LOGIN the caller's) are set aside first, so that strict parsing does not reject them.
 */
export async function parse<T>(cli: Argv<T>) {
  const options = (cli as unknown as { getOptions(): { key: Record<string, unknown>; array: string[] } }).getOptions();
  const known = new Set(Object.keys(options.key).map((k) => `TUNNEL_${k.replace(/-/g, '_').toUpperCase()}`));
  for (const name of Object.keys(process.env)) {
    if (name.startsWith('TUNNEL_') && !known.has(name)) delete process.env[name];
  }
  const argv = await cli.parseAsync();
  // A repeated single-valued flag: the last one wins, as in most command-line tools.
  const arrays = new Set(options.array);
  for (const [key, value] of Object.entries(argv)) {
    if (key !== '_' && Array.isArray(value) && !arrays.has(key) && !arrays.has(key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)))
      (argv as Record<string, unknown>)[key] = value[value.length - 1];
  }
  return argv;
}

/**
 * Runs `fn` once on any of `signals`, or when the parent process goes away (see {@link onParentExit});
 * a second signal exits at once.
 */
export function onShutdown(log: Logger, fn: (signal: string) => Promise<void>, signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']): void {
  let stopping = false;
  const handler = (signal: string) => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(130);
    }
    stopping = true;
    log.info({ signal }, 'shutting down');
    fn(signal).then(
      () => process.exit(0),
      (err) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  for (const signal of signals) process.on(signal, handler);
  onParentExit(log, () => handler('parent exited'));
}

/**
 * Under `npx`, `npm exec` or `npm run` the command runs below `npm` and a shell, and a SIGTERM sent
 * to `npm` kills them without reaching us: the relay would keep its port, orphaned. There, and only there,
 * a change of parent process means whoever started us is gone, so `fn` runs as for SIGTERM. Started
 * any other way (systemd, where the parent is 1 from the start; a shell, `nohup`, `setsid`) nothing
 * is watched, so that a command meant to outlive its shell does.
 */
export function onParentExit(log: Logger, fn: () => void, env: NodeJS.ProcessEnv = process.env): void {
  // npm sets npm_command for what it runs: exec (npx), run, start, test, ...
  if (env.npm_command === undefined) return;
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(timer);
    log.warn({ parent, npm: env.npm_command }, 'the npm process that started this one is gone');
    fn();
  }, PARENT_POLL_MS);
  timer.unref();
}

const PARENT_POLL_MS = 500;

/**
 * Logs a fatal start-up error and exits 1. The line also goes to stderr as plain text when the log
 * level would hide it (`--log-level silent`): a command must never exit 1 without saying why.
 */
export async function fatal(log: Logger, name: string, fields: Record<string, unknown>, message: string): Promise<never> {
  log.fatal(fields, message);
  let text = '';
  if (!log.isLevelEnabled('fatal')) {
    const detail = Object.entries(fields)
      .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
      .join(' ');
    text = `${name}: ${message}${detail ? ` (${detail})` : ''}\n`;
  }
  return exitAfter(1, { stderr: text });
}

/** Writes `text` and resolves once it has been handed to the operating system (or failed). */
export function writeOut(text: string, stream: NodeJS.WriteStream = process.stdout): Promise<void> {
  if (text === '') return Promise.resolve();
  return new Promise((resolve) => {
    stream.write(text, () => resolve());
  });
}

/**
 * Writes `stdout` and `stderr`, waits until both are written, then exits with `code`. A pipe is
 * written asynchronously, so `process.exit()` right after `write()` cuts the output past 64 KiB.
 */
export async function exitAfter(code: number, output: { stdout?: string; stderr?: string } = {}): Promise<never> {
  await Promise.all([writeOut(output.stdout ?? '', process.stdout), writeOut(output.stderr ?? '', process.stderr)]);
  process.exit(code);
}

/** Parses repeated `key=value` flags into a map. */
export function keyValues(values: unknown, flag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of ([] as unknown[]).concat(values ?? [])) {
    const text = String(item);
    const i = text.indexOf('=');
    if (i <= 0) throw new Error(`--${flag} takes key=value, got "${text}"`);
    out[text.slice(0, i)] = text.slice(i + 1);
  }
  return out;
}

/** Fails the command with a usage error (exit 2). */
export function usageError(name: string, message: string): never {
  process.stderr.write(`${name}: ${message}\nRun ${name} --help for usage.\n`);
  process.exit(2);
}
