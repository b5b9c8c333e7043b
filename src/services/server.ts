import { defineService } from '../rpc/registry.js';

/** Example service: a liveness probe that answers through the whole tunnel. */
export const Server = defineService({
  Ping(): string {
    return 'pong';
  },
});
