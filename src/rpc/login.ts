import { createHash, timingSafeEqual } from 'node:crypto';
import { ErrorCode, TunnelError } from '../errors.js';
import { withContext, type ContextHandler } from './context.js';

/** Compares secrets in constant time: both sides are hashed to a fixed length first. */
export function secretsEqual(a: string, b: string): boolean {
  const da = createHash('sha256').update(a).digest();
  const db = createHash('sha256').update(b).digest();
  return timingSafeEqual(da, db);
}

/** Parses `user:password` (the password may itself contain colons). */
export function parseCredentials(text: string): { user: string; password: string } {
  const i = text.indexOf(':');
  if (i <= 0) throw new TunnelError(ErrorCode.BAD_REQUEST, 'credentials must be "user:password"');
  return { user: text.slice(0, i), password: text.slice(i + 1) };
}

/** Checks one user's password, for {@link passwordLogin}; resolve true to let them in. */
export type PasswordCheck = (user: string, password: string) => boolean | Promise<boolean>;

/** Options of {@link passwordLogin}. */
export interface PasswordLoginOptions {
  /** Failed attempts allowed on one caller connection; after them every attempt fails without a check (default 5). */
  maxFailures?: number;
}

/** The relay's default for closing a caller connection after failed Logins (limits.ts); the same number here. */
export const DEFAULT_MAX_LOGIN_FAILURES = 5;

/** What a caller passes to a {@link passwordLogin} method: `"user:password"`, or the two apart. */
export type LoginArgs = [credentials: string] | [user: string, password: string];

/**
 * Makes a `Login` method for a service (a {@link withContext} handler): accepts `Login("user:password")` or `Login(user, password)`,
 * checks the password, and puts the user on the caller's session. Wrong credentials are LOGIN_FAILED
 * with the same message whether the user exists or not.
 *
 * After `maxFailures` failed attempts on one connection the helper stops checking passwords for it:
 * guessing must cost a new connection, and the relay closes the connection anyway once it has passed
 * back that many LOGIN_FAILED answers (its `maxLoginFailures`), and limits failures per address.
 */
export function passwordLogin(users: Record<string, string> | PasswordCheck, options: PasswordLoginOptions = {}): ContextHandler<LoginArgs, Promise<string>> {
  const maxFailures = options.maxFailures ?? DEFAULT_MAX_LOGIN_FAILURES;
  const check: PasswordCheck =
    typeof users === 'function'
      ? users
      : (user, password) => {
          const expected = Object.hasOwn(users, user) ? users[user]! : undefined;
          // Compare against something even for unknown users so that timing does not reveal them.
          return secretsEqual(password, expected ?? '\0unknown') && expected !== undefined;
        };
  return withContext(async function Login(ctx, ...args: LoginArgs): Promise<string> {
    // Typed for callers; checked here because the bytes come from anyone.
    const given: unknown[] = args;
    let user: string;
    let password: string;
    if (given.length === 1 && typeof given[0] === 'string') {
      ({ user, password } = parseCredentials(given[0]));
    } else if (given.length === 2 && typeof given[0] === 'string' && typeof given[1] === 'string') {
      [user, password] = given as [string, string];
    } else {
      throw new TunnelError(ErrorCode.BAD_REQUEST, 'Login takes "user:password" or (user, password)');
    }
    if (ctx.session.failedLogins >= maxFailures) {
      throw new TunnelError(ErrorCode.LOGIN_FAILED, `too many failed Login attempts (${ctx.session.failedLogins}) on this connection; reconnect to try again`);
    }
    if (!(await check(user, password))) {
      ctx.session.failedLogins++;
      throw new TunnelError(ErrorCode.LOGIN_FAILED, 'username or password incorrect');
    }
    ctx.session.failedLogins = 0;
    ctx.session.login(user);
    return user;
  });
}
