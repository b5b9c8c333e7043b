import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { parse as parseYaml } from 'yaml';

/** What a command accepts, read from its yargs schema. */
export interface FlagSchema {
  /** Flag names as typed on the command line (kebab-case). */
  flags: Set<string>;
  arrays: Set<string>;
  booleans: Set<string>;
}

/** Flags that make no sense in a file. */
const NOT_IN_FILE = new Set(['config', 'help', 'version']);

/**
 * Reads a `--config` file, YAML (`.yaml`, `.yml`) or JSON (`.json`), whose keys are flag names
 * (`heartbeat-timeout` or `heartbeatTimeout`). Every key and value is checked here, so that a typo
 * fails at start with the file and the key named instead of being ignored. `onValue` hears each
 * key, so that a value found bad later (a duration, a number) can be traced to this file.
 */
export function loadConfigFile(path: string, schema: FlagSchema, onValue?: (flag: string, key: string, value: unknown) => void): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read config file ${path}: ${(err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = extname(path).toLowerCase() === '.json' ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    const kind = extname(path).toLowerCase() === '.json' ? 'JSON' : 'YAML';
    throw new Error(`config file ${path} is not valid ${kind}: ${(err as Error).message}`);
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    throw new Error(`config file ${path} must hold a map of flag names to values, e.g. "listen: :9090"`);
  }
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(doc)) {
    const flag = key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
    if (!schema.flags.has(flag) || NOT_IN_FILE.has(flag)) {
      const known = [...schema.flags]
        .filter((f) => !NOT_IN_FILE.has(f))
        .sort()
        .join(', ');
      throw new Error(`config file ${path}: unknown key "${key}"; known keys: ${known}`);
    }
    out[flag] = checkValue(path, key, value, schema.arrays.has(flag), schema.booleans.has(flag));
    onValue?.(flag, key, value);
  }
  return out;
}

function checkValue(path: string, key: string, value: unknown, isArray: boolean, isBoolean: boolean): unknown {
  const bad = (want: string) => new Error(`config file ${path}: key "${key}" must be ${want}, got ${JSON.stringify(value)}`);
  if (isBoolean) {
    if (typeof value !== 'boolean') throw bad('true or false');
    return value;
  }
  const scalar = (v: unknown): string => {
    if (typeof v === 'string') return v;
    if (typeof v === 'number' || typeof v === 'boolean') return String(v);
    throw bad(isArray ? 'a list of strings or a map of key: value' : 'a string or a number');
  };
  if (!isArray) return scalar(value);
  if (Array.isArray(value)) return value.map(scalar);
  // Repeatable key=value flags (--label) read naturally as a map in a file.
  if (value !== null && typeof value === 'object') return Object.entries(value).map(([k, v]) => `${k}=${scalar(v)}`);
  return [scalar(value)];
}
