/**
 * Library options in three steps, as nats.js `parseOptions` does: the defaults, then the options
 * given (an explicit `undefined` keeps the default), then checks of the merged result, each naming
 * its option. Every role has its resolver (relay/options.ts, node/options.ts, client/options.ts);
 * this file holds what they share.
 */

/** Node's timers fire at once for a longer delay, so no duration option may exceed it. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * A library option whose value cannot work, or two options that contradict each other. `options`
 * names them as the library does (`maxTimeout`), so that the CLI can name its flags instead.
 */
export class OptionError extends RangeError {
  override readonly name = 'OptionError';

  private constructor(
    /** Whose option it is: `Relay`, `TunnelNode`, `connect()`, … */
    readonly owner: string,
    readonly options: readonly string[],
    /** For one option: what it must be (`must be a positive number of milliseconds`). */
    readonly requirement: string | undefined,
    /** For one option: the value given. */
    readonly value: unknown,
    private readonly explain: (label: (option: string) => string) => string,
    values: Readonly<Record<string, unknown>> = {},
  ) {
    super(`${owner} ${explain((o) => (o in values ? `option ${o} (${show(values[o])})` : `option ${o}`))}`);
  }

  /** One option whose value is not what it `requirement`s. */
  static invalid(owner: string, option: string, requirement: string, value: unknown): OptionError {
    return new OptionError(owner, [option], requirement, value, (label) => `${label(option)} ${requirement}, got ${show(value)}`);
  }

  /**
   * Options that contradict each other, with their `values`; `explain` words the conflict with a
   * label for each option (in the message: the option and its value).
   */
  static conflict(owner: string, values: Readonly<Record<string, unknown>>, explain: (label: (option: string) => string) => string): OptionError {
    return new OptionError(owner, Object.keys(values), undefined, undefined, explain, values);
  }

  /**
   * The same problem with each option named by `label`: for the CLI, the flag that set it, its text
   * and where it came from.
   */
  describe(label: (option: string) => string): string {
    return this.explain(label);
  }
}

function show(value: unknown): string {
  return typeof value === 'string' ? JSON.stringify(value) : String(value);
}

/**
 * The defaults, overridden by every option that is not `undefined`: `{ maxTimeout: undefined }`
 * keeps the default maxTimeout instead of erasing it.
 */
export function withDefaults<D extends object, O extends object>(defaults: D, options: O): D & O {
  const out: Record<string, unknown> = { ...(defaults as Record<string, unknown>) };
  for (const [key, value] of Object.entries(options)) if (value !== undefined) out[key] = value;
  return out as D & O;
}

/** Checks the merged options of one owner; each check throws an {@link OptionError} naming the option. */
export class OptionChecks {
  constructor(
    private readonly owner: string,
    private readonly values: object,
  ) {}

  private get(name: string): unknown {
    return (this.values as Record<string, unknown>)[name];
  }

  /** Milliseconds, more than 0 (or 0 too, when `zero` says what 0 means), within Node's timers. */
  duration(name: string, zero?: string): this {
    const v = this.get(name);
    const min = zero === undefined ? 'a positive number of milliseconds' : `a number of milliseconds, 0 or more (0 ${zero})`;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (v === 0 && zero === undefined))
      throw OptionError.invalid(this.owner, name, `must be ${min}`, v);
    if (v > MAX_TIMER_MS) throw OptionError.invalid(this.owner, name, `must be at most ${MAX_TIMER_MS} milliseconds (about 24 days)`, v);
    return this;
  }

  /** A whole number, `min` or more. */
  count(name: string, min = 1, unit = ''): this {
    const v = this.get(name);
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min)
      throw OptionError.invalid(this.owner, name, `must be a whole number${unit}, ${min} or more`, v);
    return this;
  }

  /** A whole number of bytes, 1 or more. */
  bytes(name: string): this {
    return this.count(name, 1, ' of bytes');
  }

  /** One of `choices`. */
  oneOf(name: string, choices: readonly string[]): this {
    const v = this.get(name);
    if (typeof v !== 'string' || !choices.includes(v)) throw OptionError.invalid(this.owner, name, `must be one of ${choices.join(', ')}`, v);
    return this;
  }

  /** true or false. */
  boolean(name: string): this {
    const v = this.get(name);
    if (typeof v !== 'boolean') throw OptionError.invalid(this.owner, name, 'must be true or false', v);
    return this;
  }

  /** A function, when given. */
  optionalFunction(name: string, what: string): this {
    const v = this.get(name);
    if (v !== undefined && typeof v !== 'function') throw OptionError.invalid(this.owner, name, `must be a function (${what})`, typeof v);
    return this;
  }

  /** A list of strings. */
  strings(name: string): this {
    const v = this.get(name);
    if (!Array.isArray(v) || v.some((s) => typeof s !== 'string'))
      throw OptionError.invalid(this.owner, name, 'must be a list of strings', Array.isArray(v) ? JSON.stringify(v) : v);
    return this;
  }

  /** `small` must not be larger than `large` (both already checked to be numbers). */
  notAbove(small: string, large: string, why = ''): this {
    const a = this.get(small) as number;
    const b = this.get(large) as number;
    if (a > b) {
      throw OptionError.conflict(this.owner, { [small]: a, [large]: b }, (label) => `${label(small)} must not exceed ${label(large)}${why}`);
    }
    return this;
  }
}
