import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
export const LOG_LEVELS: LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Every field that may hold a secret, wherever it appears in a log line. */
const SECRET_FIELDS = ['token', 'nodeToken', 'callerToken', 'password', 'credentials', 'authorization', 'args', 'params'];
const REDACT = [...SECRET_FIELDS, ...SECRET_FIELDS.map((f) => `*.${f}`), ...SECRET_FIELDS.map((f) => `*.*.${f}`)];

/**
 * One JSON line per event on stderr (stdout belongs to command output), human-readable when stderr
 * is a terminal. Writes are synchronous so that the last lines before an exit are not lost.
 */
export function createLogger(name: string, level: LogLevel = 'info', prettyOutput = process.stderr.isTTY === true): Logger {
  const options = { name, level, redact: { paths: REDACT, censor: '[redacted]' } };
  if (prettyOutput) {
    return pino(options, pretty({ destination: 2, sync: true, colorize: true, ignore: 'pid,hostname' }));
  }
  return pino(options, pino.destination({ fd: 2, sync: true }));
}

/** A logger that drops everything: the library's default when the embedding program gives none. */
export const silentLogger: Logger = pino({ level: 'silent' });
