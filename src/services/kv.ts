import { EventEmitter, once } from 'node:events';
import { ErrorCode, TunnelError } from '../errors.js';
import { withContext } from '../rpc/context.js';
import { defineService } from '../rpc/registry.js';

/** Example service: a key-value store on the node, shared by every caller, with a long-poll Watch. */
export function kvService() {
  const store = new Map<string, unknown>();
  const changes = new EventEmitter();
  changes.setMaxListeners(0);

  const checkKey = (method: string, key: unknown): string => {
    if (typeof key !== 'string' || key === '') throw new TunnelError(ErrorCode.BAD_REQUEST, `KV.${method} takes a non-empty string key`);
    return key;
  };

  return defineService({
    Get(key: string): unknown {
      return store.get(checkKey('Get', key)) ?? null;
    },
    Set(key: string, value: unknown): boolean {
      const k = checkKey('Set', key);
      store.set(k, value ?? null);
      changes.emit('change', { key: k, value: value ?? null });
      return true;
    },
    Keys(): string[] {
      return [...store.keys()].sort();
    },
    /**
     * Waits for the next Set (of `key`, or of any key when it is empty or nil) and returns
     * `{ key, value }`; fails with TIMEOUT after `waitMs` (default 25 s).
     */
    Watch: withContext(async (ctx, key?: string | null, waitMs?: number): Promise<{ key: string; value: unknown }> => {
      const wanted = key === null || key === undefined || key === '' ? undefined : checkKey('Watch', key);
      const wait = typeof waitMs === 'number' && waitMs > 0 ? waitMs : 25_000;
      const timeout = AbortSignal.timeout(wait);
      const signal = AbortSignal.any([ctx.signal, timeout]);
      try {
        for (;;) {
          const [change] = (await once(changes, 'change', { signal })) as [{ key: string; value: unknown }];
          if (wanted === undefined || change.key === wanted) return change;
        }
      } catch (err) {
        if (timeout.aborted && !ctx.signal.aborted) {
          throw new TunnelError(ErrorCode.TIMEOUT, `no change${wanted ? ` to ${wanted}` : ''} within ${wait} ms`);
        }
        throw ctx.signal.aborted ? ctx.signal.reason : err;
      }
    }),
  });
}
