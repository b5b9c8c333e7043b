import { ErrorCode, TunnelError } from '../errors.js';
import { withContext } from '../rpc/context.js';
import { passwordLogin } from '../rpc/login.js';
import { defineService } from '../rpc/registry.js';

/** Example service showing the per-connection Login context. Every method but Login needs a login. */
export function helloService(users: Record<string, string>) {
  return defineService(
    {
      Login: passwordLogin(users),
      Hello: withContext((ctx, name: string): string => {
        if (typeof name !== 'string') throw new TunnelError(ErrorCode.BAD_REQUEST, 'Hello.Hello takes a name (string)');
        return `Hello ${name}, from ${ctx.caller.address}`;
      }),
      /** Who this connection is logged in as. */
      WhoAmI: withContext((ctx): string => ctx.session.user!),
      Logout: withContext((ctx): boolean => {
        ctx.session.logout();
        return true;
      }),
    },
    { requireLogin: true },
  );
}
