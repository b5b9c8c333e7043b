import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
export const LOG_LEVELS: LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Every field that may hold a secret, wherever it appears in a log line. */
const SECRET_FIELDS = ['token', 'nodeToken', 'callerToken', 'dashboardToken', 'adminToken', 'password', 'credentials', 'authorization', 'args', 'params'];
const REDACT = [...SECRET_FIELDS, ...SECRET_FIELDS.map((f) => `*.${f}`), ...SECRET_FIELDS.map((f) => `*.*.${f}`)];

/**
 * One JSON line per event on stderr (stdout belongs to command output), human-readable when stderr
 * is a terminal. Writes are synchronous so that the last lines before an exit are not lost.
 */
export function createLogger(name: string, level: LogLevel = 'info', prettyOutput = process.stderr.isTTY === true): Logger {
  const options = { name, level, redact: { paths: REDACT, censor: '[redacted]' }, hooks: { logMethod: noDuplicateKeys } };
  if (prettyOutput) {
    // One line per event on a terminal too: fields inline, not one line each.
    return pino(options, pretty({ destination: 2, sync: true, colorize: true, ignore: 'pid,hostname', singleLine: true }));
  }
  return pino(options, pino.destination({ fd: 2, sync: true }));
}

/** Keys pino writes itself on every line. */
const PINO_KEYS = new Set(['level', 'time', 'pid', 'hostname', 'msg']);

/**
 * pino writes a line's bindings (`name`, a child logger's `node` or `peer`) and the event's fields
 * side by side, so a field named like a binding appears twice in one JSON object, which parsers
 * resolve differently. A field equal to its binding is dropped; a different one is kept as
 * `eventName`, `eventPort`, ….
 */
function noDuplicateKeys(this: Logger, args: unknown[], method: (...args: unknown[]) => void): void {
  const fields = args[0];
  if (fields === null || typeof fields !== 'object' || fields instanceof Error || args.length < 1) return method.apply(this, args);
  const bindings = this.bindings() as Record<string, unknown>;
  let copy: Record<string, unknown> | undefined;
  for (const key of Object.keys(fields)) {
    if (!(key in bindings) && !PINO_KEYS.has(key)) continue;
    copy ??= { ...(fields as Record<string, unknown>) };
    const value = copy[key];
    delete copy[key];
    if (!(key in bindings && JSON.stringify(bindings[key]) === JSON.stringify(value))) copy[`event${key[0]!.toUpperCase()}${key.slice(1)}`] = value;
  }
  return method.apply(this, copy ? [copy, ...args.slice(1)] : args);
}

/** A logger that drops everything: the library's default when the embedding program gives none. */
export const silentLogger: Logger = pino({ level: 'silent' });
