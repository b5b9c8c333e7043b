/**
 * Size and count limits on names that peers choose: node, service and method names, labels, and the
 * hello that carries them. Every door checks what it receives against these before storing it, so
 * that no peer can make the relay (or a node, or /metrics) hold an unbounded string or table.
 * docs/PROTOCOL.md ("Limits") lists them.
 */
export const NAME_LIMITS = {
  /** Node names, service names and method names, characters. */
  name: 128,
  /** A request's method `Service.Method` (or `node/Service.Method` on the MessagePack-RPC port), characters. */
  method: 2 * 128 + 2,
  /** Services one node announces. */
  services: 256,
  /** Methods of one service in a hello. */
  methods: 1_024,
  /** Labels of one node, or keys of one `where`. */
  labels: 64,
  /** A label key, characters. */
  labelKey: 64,
  /** A label value, characters. */
  labelValue: 256,
  /** A node's `instance` id in its hello, characters. */
  instance: 64,
  /** The hello message, bytes as received. */
  hello: 64 * 1024,
} as const;

/**
 * The other relays a cluster relay lists in a node's welcome (`relays`): at most this many URLs, each
 * at most this many characters. The relay sends no more, and a node reads no more, whatever a peer
 * sends (docs/PROTOCOL.md, "Welcome").
 */
export const WELCOME_RELAY_LIMITS = {
  count: 32,
  url: 256,
} as const;

/** Node names: letters, digits, `_ . -`, starting with a letter or digit. */
export const NODE_NAME = /^[A-Za-z0-9][\w.-]{0,127}$/;

/** Service names: a letter or `_` first, then letters, digits, `_ . -`. */
export const SERVICE_NAME = /^[A-Za-z_][\w.-]{0,127}$/;

/** Method names: an identifier. */
export const METHOD_NAME = /^[A-Za-z_]\w{0,127}$/;

/**
 * Control characters: C0 (U+0000-U+001F), DEL (U+007F) and C1 (U+0080-U+009F). No name a peer
 * chooses may hold one: a NUL or a newline in a method would reach a `--forward` server, a log line
 * or a terminal as it was sent.
 */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/** The rule a refusal names. */
export const CONTROL_RULE = 'names may not contain control characters (C0, DEL or C1)';

/** `value` quoted for a message: at most 40 characters, every control character as `\uXXXX`. */
function shown(value: string): string {
  const cut = value.length > 40 ? `${value.slice(0, 40)}...` : value;
  // eslint-disable-next-line no-control-regex
  return `"${cut.replace(/[\u0000-\u001f\u007f-\u009f"\\]/g, (c) => (c === '"' || c === '\\' ? `\\${c}` : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`))}"`;
}

/**
 * Why `value`, a name of kind `what` (a method, a node name, a label, a session id), is refused for
 * holding a control character, or undefined. The rule comes first, so that it survives a close
 * reason's 123 bytes. Every check of a name below runs it; doors that take
 * other identifiers from peers call it directly.
 */
export function controlProblem(value: string, what: string): string | undefined {
  const m = CONTROL.exec(value);
  if (m === null) return undefined;
  const code = m[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, '0');
  return `${CONTROL_RULE}: ${what} ${shown(value)} has U+${code} at position ${m.index}`;
}

/** Why `name` is not a usable node name, or undefined when it is. */
export function nodeNameProblem(name: string): string | undefined {
  if (NODE_NAME.test(name)) return undefined;
  const control = controlProblem(name, 'node name');
  if (control !== undefined) return control;
  return `node name ${JSON.stringify(name.length > 40 ? `${name.slice(0, 40)}...` : name)} must be 1-${NAME_LIMITS.name} characters: letters, digits, _ . - (starting with a letter or digit)`;
}

/** Why a request's method string cannot be routed, or undefined when it can. */
export function methodProblem(method: string): string | undefined {
  if (method.length > NAME_LIMITS.method)
    return `method name of ${method.length} characters is over the limit of ${NAME_LIMITS.method} (Service.Method, each at most ${NAME_LIMITS.name})`;
  const control = controlProblem(method, 'method');
  if (control !== undefined) return control;
  const dot = method.lastIndexOf('.');
  if (dot <= 0 || dot === method.length - 1) return `method "${method}" must be Service.Method`;
  if (dot > NAME_LIMITS.name || method.length - dot - 1 > NAME_LIMITS.name) return `service and method names are at most ${NAME_LIMITS.name} characters each`;
  return undefined;
}

/** Why a label map (a hello's labels or a call's `where`) is refused, or undefined. */
export function labelsProblem(labels: Record<string, string>, what: string): string | undefined {
  const entries = Object.entries(labels);
  if (entries.length > NAME_LIMITS.labels) return `${what} has ${entries.length} labels; at most ${NAME_LIMITS.labels}`;
  for (const [k, v] of entries) {
    if (k.length === 0 || k.length > NAME_LIMITS.labelKey) return `${what}: label keys are 1-${NAME_LIMITS.labelKey} characters`;
    if (v.length > NAME_LIMITS.labelValue) return `${what}: label ${k} is ${v.length} characters; at most ${NAME_LIMITS.labelValue}`;
    const control = controlProblem(k, `${what}: label key`) ?? controlProblem(v, `${what}: label ${k}`);
    if (control !== undefined) return control;
  }
  return undefined;
}

/** Why a hello's services are refused, or undefined. `*` is allowed as a method (any method). */
export function servicesProblem(services: Record<string, string[]>): string | undefined {
  const names = Object.keys(services);
  if (names.length > NAME_LIMITS.services) return `a node may announce at most ${NAME_LIMITS.services} services; this one announced ${names.length}`;
  for (const s of names) {
    if (!SERVICE_NAME.test(s))
      return (
        controlProblem(s, 'service name') ??
        `service name ${JSON.stringify(s.slice(0, 40))} must be 1-${NAME_LIMITS.name} characters: a letter or _ first, then letters, digits, _ . -`
      );
    const methods = services[s]!;
    if (methods.length > NAME_LIMITS.methods) return `service ${s} announces ${methods.length} methods; at most ${NAME_LIMITS.methods}`;
    for (const m of methods) {
      if (m !== '*' && !METHOD_NAME.test(m))
        return (
          controlProblem(m, `method name of service ${s}`) ??
          `method name ${JSON.stringify(m.slice(0, 40))} of service ${s} must be an identifier of at most ${NAME_LIMITS.name} characters`
        );
    }
  }
  return undefined;
}
