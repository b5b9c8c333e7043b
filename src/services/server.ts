import type { CallContext } from '../rpc/context.js';

/** Example service: a liveness probe that answers through the whole tunnel. */
export const Server = {
  Ping(_ctx: CallContext): string {
    return 'pong';
  },
};
