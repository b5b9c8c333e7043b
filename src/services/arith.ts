import { ErrorCode, TunnelError } from '../errors.js';
import { defineService } from '../rpc/registry.js';

/** The one struct a Go net/rpc client sends instead of two numbers (its field names as keys). */
export type Operands = { X: number; Y: number } | { A: number; B: number } | { x: number; y: number };

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

/** Example service: arithmetic on two numbers, `Multiply(2, 3)` or `Multiply({X: 2, Y: 3})`. */
export const Arith = defineService({
  Multiply(a: number | Operands, b?: number): number {
    const [x, y] = numbers('Multiply', a, b);
    return x * y;
  },
  Divide(a: number | Operands, b?: number): number {
    const [x, y] = numbers('Divide', a, b);
    if (y === 0) throw new TunnelError(ErrorCode.APP_ERROR, 'divide by zero');
    return x / y;
  },
});
