import { ErrorCode, TunnelError } from '../errors.js';
import type { CallContext } from '../rpc/context.js';

/**
 * The two operands: `(a, b)` from TypeScript and JSON callers, or one struct `{X, Y}` (also `{A, B}`,
 * `{x, y}`) from Go's net/rpc, which always sends a single argument and encodes a struct as a map
 * keyed by its field names.
 */
function numbers(method: string, a: unknown, b: unknown): [number, number] {
  if (b === undefined && a !== null && typeof a === 'object' && !Array.isArray(a)) {
    const o = a as Record<string, unknown>;
    [a, b] = 'X' in o || 'Y' in o ? [o.X, o.Y] : 'A' in o || 'B' in o ? [o.A, o.B] : [o.x, o.y];
  }
  if (typeof a !== 'number' || typeof b !== 'number') {
    throw new TunnelError(ErrorCode.BAD_REQUEST, `Arith.${method} takes two numbers, or one struct {X, Y} of numbers; got ${typeof a} and ${typeof b}`);
  }
  return [a, b];
}

/** Example service: arithmetic on two numbers. */
export const Arith = {
  Multiply(a: unknown, b: unknown, _ctx: CallContext): number {
    const [x, y] = numbers('Multiply', a, b);
    return x * y;
  },
  Divide(a: unknown, b: unknown, _ctx: CallContext): number {
    const [x, y] = numbers('Divide', a, b);
    if (y === 0) throw new TunnelError(ErrorCode.APP_ERROR, 'divide by zero');
    return x / y;
  },
};
