import { ErrorCode, TunnelError } from '../errors.js';
import type { CallContext } from '../rpc/context.js';

function numbers(method: string, a: unknown, b: unknown): [number, number] {
  if (typeof a !== 'number' || typeof b !== 'number') {
    throw new TunnelError(ErrorCode.BAD_REQUEST, `Arith.${method} takes two numbers, got ${typeof a} and ${typeof b}`);
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
