import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { createLogger, LOG_LEVELS, type LogLevel, type Logger } from '../util/logger.js';
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
    loadConfigFile(path, flagSchema(cli)),
  );
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
    if (key !== '_' && Array.isArray(value) && !arrays.has(key) && !arrays.has(key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`))) (argv as Record<string, unknown>)[key] = value[value.length - 1];
  }
  return argv;
}

/** Runs `fn` once on SIGINT/SIGTERM; a second signal exits at once. */
export function onShutdown(log: Logger, fn: (signal: string) => Promise<void>): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
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
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
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
