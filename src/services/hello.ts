import { ErrorCode, TunnelError } from '../errors.js';
import type { CallContext } from '../rpc/context.js';
import { passwordLogin } from '../rpc/login.js';

/** Example service showing the per-connection Login context. */
export function helloService(users: Record<string, string>) {
  return {
    Login: passwordLogin(users),
    /** Needs Login (declared with `requireLogin` where it is registered). */
    Hello(name: unknown, ctx: CallContext): string {
      if (typeof name !== 'string') throw new TunnelError(ErrorCode.BAD_REQUEST, 'Hello.Hello takes a name (string)');
      return `Hello ${name}, from ${ctx.caller.address}`;
    },
    /** Who this connection is logged in as. */
    WhoAmI(ctx: CallContext): string {
      return ctx.session.user!;
    },
    Logout(ctx: CallContext): boolean {
      ctx.session.logout();
      return true;
    },
  };
}
