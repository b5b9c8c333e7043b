// The relay's dashboard: reads its live feed (server-sent events over fetch, so that a token can go
// in a header, never in a URL) and keeps the page in step. Plain JavaScript, no build step.
'use strict';

const VIEW_KEY = 'tunnel-dashboard-token';
const ADMIN_KEY = 'tunnel-admin-token';
const MAX_EVENTS = 500;
/** Seconds averaged for the calls/s and errors/s columns. */
const RATE_SECONDS = 10;

const $ = (id) => document.getElementById(id);

const state = {
  nodes: new Map(),
  callers: new Map(),
  /** service -> { calls: number[], errors: number[], p50, p99 }, arrays aligned so that the last element is second `end - 1`. */
  services: new Map(),
  codes: {},
  codeMethods: {},
  end: 0,
  window: 300,
  relay: null,
  nodesTotal: 0,
  callersTotal: 0,
  clockSkew: 0,
};

// A token given once as ?token= is kept for this tab only and taken out of the address bar.
const params = new URLSearchParams(location.search);
if (params.has('token')) {
  sessionStorage.setItem(VIEW_KEY, params.get('token'));
  params.delete('token');
  const rest = params.toString();
  history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : '') + location.hash);
}
let viewToken = sessionStorage.getItem(VIEW_KEY);
let adminToken = sessionStorage.getItem(ADMIN_KEY);

// ---- the feed ----------------------------------------------------------------------------------

let retry = 0;
let retryTimer = null;
/** The open stream: its id (from the snapshot), the last frame read, and when it was last acknowledged. */
let stream = null;
/** The relay refused the feed: every dashboard stream is taken (the admin token opens one of its own). */
let feedFull = false;

async function connect() {
  clearTimeout(retryTimer);
  setFeed('connecting', retry === 0 ? 'Connecting…' : 'Reconnecting…');
  const headers = { accept: 'text/event-stream' };
  // The admin token opens the page too, and a stream even when the others are taken.
  const token = adminToken || viewToken;
  if (token) headers.authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch('/dashboard/events', { headers, cache: 'no-store', credentials: 'omit' });
  } catch {
    return later();
  }
  if (res.status === 401 && token === adminToken && adminToken) {
    forgetAdminToken('The admin token was refused; enter it again.');
    return connect();
  }
  if (res.status === 401) {
    sessionStorage.removeItem(VIEW_KEY);
    viewToken = null;
    setFeed('down', 'The dashboard token is needed');
    showLogin(true);
    return;
  }
  feedFull = res.status === 503;
  if (!res.ok || !res.body) {
    setFeed('down', feedFull ? 'Every dashboard stream is taken; retrying…' : `The relay answered ${res.status}`);
    renderActionsState();
    return later();
  }
  showLogin(false);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        onBlock(block);
      }
    }
  } catch {
    // the stream broke: reconnect below
  }
  later();
}

function later() {
  stream = null;
  if (!feedFull) setFeed('down', 'Disconnected from the relay; reconnecting…');
  const wait = Math.min(10_000, 500 * 2 ** retry++) * (0.5 + Math.random() / 2);
  retryTimer = setTimeout(connect, wait);
}

/** Tells the relay what this page has read, a few times within its slow-consumer timeout: a stream left unacknowledged is cut. */
function acknowledge() {
  const s = stream;
  if (!s || s.seq === s.ackedSeq || s.timer) return;
  const wait = s.ackedAt + s.every - Date.now();
  if (wait > 0) {
    // What arrives meanwhile is acknowledged with it.
    s.timer = setTimeout(() => {
      s.timer = null;
      if (stream === s) acknowledge();
    }, wait);
    return;
  }
  s.ackedSeq = s.seq;
  s.ackedAt = Date.now();
  const headers = {};
  const token = adminToken || viewToken;
  if (token) headers.authorization = `Bearer ${token}`;
  const q = `stream=${encodeURIComponent(s.id)}&seq=${s.seq}`;
  fetch(`/dashboard/events/ack?${q}`, { method: 'POST', headers, cache: 'no-store', credentials: 'omit' }).catch(() => undefined);
}

function onBlock(block) {
  let event = 'message';
  let data = '';
  let id = null;
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) event = line.slice(6).trim();
    else if (line.startsWith('data:')) data += line.slice(5).trimStart();
    else if (line.startsWith('id:')) id = Number(line.slice(3).trim());
  }
  if (!data) return;
  const message = JSON.parse(data);
  if (event === 'snapshot') {
    retry = 0;
    feedFull = false;
    stream = { id: message.stream.id, every: message.stream.ackEvery, seq: 0, ackedSeq: 0, ackedAt: 0, timer: null };
    setFeed('live', 'Live');
    onSnapshot(message);
  } else if (event === 'delta') onDelta(message);
  if (stream && id !== null) {
    stream.seq = id;
    acknowledge();
  }
}

function setFeed(kind, text) {
  const el = $('feed-state');
  el.dataset.state = kind;
  el.textContent = text;
}

function showLogin(show) {
  $('login').hidden = !show;
  $('main').hidden = show;
  if (show) $('login-token').focus();
}

$('login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  viewToken = $('login-token').value.trim();
  $('login-token').value = '';
  if (viewToken) sessionStorage.setItem(VIEW_KEY, viewToken);
  retry = 0;
  connect();
});

// ---- applying snapshots and deltas ---------------------------------------------------------------

function onSnapshot(s) {
  state.nodes = new Map(s.nodes.map((n) => [n.name, n]));
  state.callers = new Map(s.callers.map((c) => [c.session, c]));
  state.nodesTotal = s.nodesTotal;
  state.callersTotal = s.callersTotal;
  state.window = s.limits.window;
  state.services = new Map();
  state.end = s.traffic.end - s.traffic.seconds;
  applyTraffic(s.traffic);
  $('events').replaceChildren();
  for (const e of s.events) addEvent(e);
  applyRelay(s.relay);
  renderNodes(true);
  renderCallers(true);
}

function onDelta(d) {
  if (d.relay) applyRelay(d.relay);
  if (d.nodesTotal !== undefined) state.nodesTotal = d.nodesTotal;
  if (d.callersTotal !== undefined) state.callersTotal = d.callersTotal;
  if (d.nodes) {
    for (const n of d.nodes.upsert) state.nodes.set(n.name, n);
    for (const name of d.nodes.remove) state.nodes.delete(name);
  }
  if (d.callers) {
    for (const c of d.callers.upsert) state.callers.set(c.session, c);
    for (const session of d.callers.remove) state.callers.delete(session);
  }
  if (d.events) for (const e of d.events) addEvent(e);
  if (d.traffic) applyTraffic(d.traffic);
  if (d.nodes || d.relay) renderNodes(false);
  if (d.callers || d.relay) renderCallers(false);
}

/** Seconds [end - seconds, end) of each service: the arrays move on to `end`, then the values are written. */
function applyTraffic(t) {
  const shift = t.end - state.end;
  if (shift > 0) {
    for (const s of state.services.values()) {
      s.calls = s.calls.concat(new Array(Math.min(shift, state.window)).fill(0)).slice(-state.window);
      s.errors = s.errors.concat(new Array(Math.min(shift, state.window)).fill(0)).slice(-state.window);
    }
    state.end = t.end;
  }
  for (const [name, v] of Object.entries(t.services)) {
    let s = state.services.get(name);
    if (!s) {
      s = { calls: new Array(state.window).fill(0), errors: new Array(state.window).fill(0), p50: null, p99: null };
      state.services.set(name, s);
    }
    const offset = state.window - (state.end - (t.end - t.seconds));
    for (let i = 0; i < v.calls.length; i++) {
      const at = offset + i;
      if (at < 0 || at >= state.window) continue;
      s.calls[at] = v.calls[i];
      s.errors[at] = v.errors[i];
    }
    s.p50 = v.p50;
    s.p99 = v.p99;
  }
  state.codes = t.codes;
  state.codeMethods = t.codeMethods ?? {};
  renderTraffic();
}

function applyRelay(r) {
  state.relay = r;
  state.clockSkew = Date.now() - r.now;
  $('relay-name').textContent = r.name;
  document.title = `${r.name} · tunnel-relay dashboard`;
  $('fact-state').textContent = r.draining ? 'draining' : 'serving';
  $('fact-version').textContent = r.version;
  $('fact-uptime').textContent = duration(r.uptimeSeconds);
  $('fact-nodes').textContent = r.nodes.total === r.nodes.local ? `${r.nodes.local}` : `${r.nodes.local} here, ${r.nodes.total} in the cluster`;
  const c = r.callers;
  $('fact-callers').textContent = `${c.websocket} WebSocket, ${c['msgpack-rpc']} msgpack-rpc, ${c.http} HTTP`;
  $('fact-inflight').textContent = String(r.inFlight);
  $('fact-memory').textContent = `${mib(r.memory.rss)} RSS, ${mib(r.memory.heapUsed)} heap`;
  const drained = r.drained.names.join(', ') + (r.drained.total > r.drained.names.length ? ` and ${r.drained.total - r.drained.names.length} more` : '');
  $('fact-drained').textContent = r.drained.total ? drained : 'none';
  $('fact-cluster').textContent = r.cluster
    ? `${r.cluster.state}${r.cluster.peers.length ? ` · peers: ${r.cluster.peers.join(', ')}` : ' · no peer relay'}${
        r.cluster.unreachable.length ? ` · unreachable: ${r.cluster.unreachable.join(', ')}` : ''
      }`
    : 'standalone';
  renderActionsState();
}

// ---- rendering -----------------------------------------------------------------------------------

function actionsUsable() {
  return Boolean(state.relay && state.relay.actions && adminToken);
}

/** Why the last admin token typed in was refused, shown until another is entered. */
let adminRefused = '';

function renderActionsState() {
  // Without the relay's state (every stream taken), the form is offered too: the admin token opens a stream of its own.
  const enabled = state.relay ? state.relay.actions : feedFull;
  $('admin-form').hidden = !enabled || Boolean(adminToken);
  $('admin-lock').hidden = !enabled || !adminToken;
  const el = $('actions-state');
  el.dataset.ok = adminRefused ? 'false' : 'true';
  el.textContent = adminRefused
    ? adminRefused
    : !state.relay
      ? feedFull
        ? 'Every dashboard stream is taken; the admin token opens one of its own:'
        : 'Actions: –'
      : !enabled
        ? 'Actions are disabled: start the relay with --admin-token to drain or disconnect nodes and callers.'
        : adminToken
          ? 'Actions are enabled in this tab.'
          : 'Actions need the admin token:';
}

/** Asks the relay whether `token` would be let through an action (POST /dashboard/actions/check): 204, or why not. */
async function checkAdminToken(token) {
  let res;
  try {
    res = await fetch('/dashboard/actions/check', { method: 'POST', headers: { authorization: `Bearer ${token}` }, cache: 'no-store', credentials: 'omit' });
  } catch (err) {
    return `The admin token could not be checked: ${err.message}`;
  }
  if (res.status === 204) return '';
  const answer = await res.json().catch(() => ({}));
  if (res.status === 401) return 'That admin token is wrong: actions stay disabled. Enter the value of --admin-token.';
  return `The admin token was refused (${res.status}): ${answer.error ? answer.error.message : res.statusText}`;
}

function adminTokenChanged() {
  renderActionsState();
  renderNodes(true);
  renderCallers(true);
}

function forgetAdminToken(why) {
  adminToken = null;
  sessionStorage.removeItem(ADMIN_KEY);
  adminRefused = why;
  adminTokenChanged();
}

$('admin-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const value = $('admin-token').value.trim();
  $('admin-token').value = '';
  if (!value) return;
  adminRefused = '';
  $('actions-state').textContent = 'Checking the admin token…';
  const refused = await checkAdminToken(value);
  if (refused) {
    adminRefused = refused;
    renderActionsState();
    $('admin-token').focus();
    return;
  }
  adminToken = value;
  sessionStorage.setItem(ADMIN_KEY, value);
  adminTokenChanged();
  if (!stream) {
    retry = 0;
    connect();
  }
});

$('admin-lock').addEventListener('click', () => {
  adminRefused = '';
  forgetAdminToken('');
});

/** Keeps one row per key, in order; `fill` (re)writes a row's cells. Rows are reused so focus stays put. */
function syncRows(tbody, items, keyOf, fill, force) {
  const rows = new Map([...tbody.rows].map((r) => [r.dataset.key, r]));
  let previous = null;
  for (const item of items) {
    const key = keyOf(item);
    let row = rows.get(key);
    const json = JSON.stringify(item);
    if (!row) {
      row = document.createElement('tr');
      row.dataset.key = key;
    }
    rows.delete(key);
    if (force || row.dataset.json !== json) {
      fill(row, item);
      row.dataset.json = json;
    }
    const want = previous ? previous.nextSibling : tbody.firstChild;
    if (want !== row) tbody.insertBefore(row, want);
    previous = row;
  }
  for (const row of rows.values()) row.remove();
}

function cell(row, i, tag = 'td') {
  while (row.cells.length <= i) row.appendChild(document.createElement(row.cells.length === 0 && tag === 'th' ? 'th' : 'td'));
  return row.cells[i];
}

function renderNodes(force) {
  const nodes = [...state.nodes.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const usable = actionsUsable();
  syncRows(
    $('nodes').tBodies[0],
    nodes,
    (n) => n.name,
    (row, n) => {
      row.dataset.node = n.name;
      row.dataset.state = n.state;
      const name = cell(row, 0, 'th');
      name.scope = 'row';
      name.textContent = n.name;
      const st = cell(row, 1);
      st.className = `state state-${n.state}`;
      st.textContent = n.state;
      st.dataset.col = 'state';
      const labels = cell(row, 2);
      labels.replaceChildren(...Object.entries(n.labels).map(([k, v]) => tag(`${k}=${v}`)));
      const services = cell(row, 3);
      services.replaceChildren(
        ...Object.entries(n.services).map(([s, methods]) => {
          const el = document.createElement('span');
          el.className = 'svc';
          const b = document.createElement('b');
          b.textContent = s;
          const m = document.createElement('span');
          m.textContent = ` ${methods.join(', ')}`;
          el.append(b, m);
          return el;
        }),
      );
      const address = cell(row, 4);
      address.className = 'mono';
      address.textContent = n.address;
      const since = cell(row, 5);
      since.replaceChildren(timeElement(Date.parse(n.connectedAt)));
      cell(row, 6).textContent = n.relays.join(', ');
      numberCell(row, 7, n.inFlight, 'inflight');
      numberCell(row, 8, n.served, 'served');
      numberCell(row, 9, n.reconnects, 'reconnects');
      const actions = cell(row, 10);
      actions.className = 'actions';
      const live = n.state !== 'leaving' && n.local;
      const why = !n.local ? 'attached to another relay' : !usable ? 'actions need the admin token' : '';
      const drain =
        n.state === 'drained'
          ? button('Undrain', `Undrain node ${n.name}`, usable && live, why, () => act('undrain-node', { node: n.name }), 'undrain')
          : button('Drain', `Drain node ${n.name}`, usable && live && n.state === 'online', why, () => act('drain-node', { node: n.name }), 'drain');
      actions.replaceChildren(
        drain,
        button(
          'Disconnect',
          `Disconnect node ${n.name}`,
          usable && live,
          why,
          () => act('disconnect-node', { node: n.name }, `Disconnect node ${n.name}? Its calls in flight fail with NODE_LOST; it reconnects with its backoff.`),
          'disconnect',
          true,
        ),
      );
    },
    force,
  );
  $('nodes-empty').hidden = nodes.length > 0;
  const shown = nodes.length;
  $('nodes-count').textContent = state.nodesTotal > shown ? `(${shown} of ${state.nodesTotal} shown)` : `(${state.nodesTotal})`;
}

function renderCallers(force) {
  const callers = [...state.callers.values()].sort((a, b) => a.since - b.since);
  const usable = actionsUsable();
  syncRows(
    $('callers').tBodies[0],
    callers,
    (c) => c.session,
    (row, c) => {
      row.dataset.session = c.session;
      const s = cell(row, 0, 'th');
      s.scope = 'row';
      s.className = 'mono';
      s.textContent = c.session;
      cell(row, 1).textContent = c.transport;
      const a = cell(row, 2);
      a.className = 'mono';
      a.textContent = c.address;
      cell(row, 3).textContent = c.identity ?? 'anonymous';
      numberCell(row, 4, c.inFlight, 'inflight');
      cell(row, 5).replaceChildren(timeElement(c.since));
      const actions = cell(row, 6);
      actions.className = 'actions';
      actions.replaceChildren(
        button(
          'Disconnect',
          `Disconnect caller session ${c.session}`,
          usable,
          usable ? '' : 'actions need the admin token',
          () => act('disconnect-caller', { session: c.session }, `Disconnect caller session ${c.session}? Its calls are cancelled on the nodes.`),
          'disconnect',
          true,
        ),
      );
    },
    force,
  );
  $('callers-empty').hidden = callers.length > 0;
  $('callers-count').textContent = state.callersTotal > callers.length ? `(${callers.length} of ${state.callersTotal} shown)` : `(${state.callersTotal})`;
}

function renderTraffic() {
  const names = [...state.services.keys()].sort();
  $('traffic-window').textContent = `(last ${Math.round(state.window / 60)} minutes)`;
  syncRows(
    $('services').tBodies[0],
    names.map((name) => ({ name, ...state.services.get(name) })),
    (s) => s.name,
    (row, s) => {
      row.dataset.service = s.name;
      const th = cell(row, 0, 'th');
      th.scope = 'row';
      th.textContent = s.name;
      const recentCalls = s.calls.slice(-RATE_SECONDS).reduce((a, b) => a + b, 0);
      const recentErrors = s.errors.slice(-RATE_SECONDS).reduce((a, b) => a + b, 0);
      textCell(row, 1, rate(recentCalls / RATE_SECONDS), 'rate');
      textCell(row, 2, rate(recentErrors / RATE_SECONDS), 'error-rate');
      numberCell(
        row,
        3,
        s.calls.reduce((a, b) => a + b, 0),
        'calls',
      );
      numberCell(
        row,
        4,
        s.errors.reduce((a, b) => a + b, 0),
        'errors',
      );
      textCell(row, 5, ms(s.p50), 'p50');
      textCell(row, 6, ms(s.p99), 'p99');
      cell(row, 7).replaceChildren(sparkline(s));
    },
    false,
  );
  $('services-empty').hidden = names.length > 0;
  const codes = Object.entries(state.codes).sort((a, b) => b[1] - a[1]);
  syncRows(
    $('codes').tBodies[0],
    codes,
    ([code]) => code,
    (row, [code, n]) => {
      row.dataset.code = code;
      const th = cell(row, 0, 'th');
      th.scope = 'row';
      th.className = 'mono';
      th.textContent = code;
      numberCell(row, 1, n, 'count');
      const methods = Object.entries(state.codeMethods[code] ?? {}).sort((a, b) => b[1] - a[1]);
      const by = cell(row, 2);
      by.dataset.col = 'methods';
      by.className = 'mono';
      by.textContent = methods.map(([m, k]) => `${m} ${k}`).join(', ');
    },
    false,
  );
  $('codes-empty').hidden = codes.length > 0;
}

function sparkline(s) {
  const ns = 'http://www.w3.org/2000/svg';
  const width = state.window;
  const height = 40;
  const max = Math.max(1, ...s.calls);
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  const total = s.calls.reduce((a, b) => a + b, 0);
  const errors = s.errors.reduce((a, b) => a + b, 0);
  svg.setAttribute(
    'aria-label',
    `${s.name}: ${total} calls and ${errors} errors in the last ${Math.round(width / 60)} minutes, at most ${max} calls in one second`,
  );
  const base = document.createElementNS(ns, 'line');
  base.setAttribute('class', 'base');
  base.setAttribute('x1', '0');
  base.setAttribute('x2', String(width));
  base.setAttribute('y1', String(height - 0.5));
  base.setAttribute('y2', String(height - 0.5));
  svg.append(base);
  for (const [key, cls] of [
    ['calls', 'calls'],
    ['errors', 'errors'],
  ]) {
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('class', cls);
    line.setAttribute('vector-effect', 'non-scaling-stroke');
    line.setAttribute('points', s[key].map((v, i) => `${i},${(height - 1 - (v / max) * (height - 3)).toFixed(1)}`).join(' '));
    svg.append(line);
  }
  return svg;
}

// ---- events --------------------------------------------------------------------------------------

const KIND = {
  'node-join': 'node joined',
  'node-leave': 'node left',
  'node-replaced': 'node replaced',
  'node-draining': 'node draining',
  'refused-connection': 'refused connection',
  'refused-request': 'refused request',
  'refused-call': 'refused call',
  revoked: 'revoked',
  'slow-consumer': 'slow consumer cut',
  action: 'operator action',
};

function describe(e) {
  const parts = [];
  if (e.action) parts.push(`${e.action} ${e.target}`);
  else if (e.node) parts.push(`node ${e.node}`);
  if (e.method) parts.push(e.method);
  if (e.identity !== undefined) parts.push(`identity ${e.identity ?? 'anonymous'}`);
  if (e.session && !e.action) parts.push(`session ${e.session}`);
  if (e.by) parts.push(`by ${e.by}`);
  if (e.address) parts.push(`from ${e.address}`);
  if (e.door) parts.push(`(${e.door})`);
  if (e.relays && e.relays.length) parts.push(`via ${e.relays.join(', ')}`);
  let text = parts.join(' ');
  if (e.reason) text += `: ${e.reason}`;
  return text;
}

function addEvent(e) {
  const list = $('events');
  const li = document.createElement('li');
  li.dataset.kind = e.kind;
  li.dataset.seq = String(e.seq);
  const time = document.createElement('time');
  time.dateTime = new Date(e.at).toISOString();
  time.textContent = new Date(e.at).toLocaleTimeString();
  const kind = document.createElement('span');
  kind.className = `kind kind-${e.kind}`;
  kind.textContent = KIND[e.kind] ?? e.kind;
  const detail = document.createElement('span');
  detail.className = 'detail';
  detail.textContent = describe(e);
  li.append(time, kind, detail);
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

// ---- actions -------------------------------------------------------------------------------------

async function act(action, body, confirmation) {
  if (confirmation && !window.confirm(confirmation)) return;
  const result = $('action-result');
  result.dataset.ok = 'true';
  result.textContent = `${action} ${body.node ?? body.session}…`;
  let res;
  try {
    res = await fetch(`/dashboard/actions/${action}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${adminToken}` },
      body: JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (err) {
    result.dataset.ok = 'false';
    result.textContent = `${action} failed: ${err.message}`;
    return;
  }
  const answer = await res.json().catch(() => ({}));
  if (res.ok) {
    result.textContent = `${action} ${answer.target}: done`;
    return;
  }
  result.dataset.ok = 'false';
  result.textContent = `${action} refused (${res.status}): ${answer.error ? answer.error.message : res.statusText}`;
  if (res.status === 401) forgetAdminToken('The admin token was refused; enter it again.');
}

// ---- small helpers -------------------------------------------------------------------------------

function button(text, label, enabled, why, onClick, action, danger = false) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = text;
  b.setAttribute('aria-label', label);
  b.dataset.action = action;
  if (danger) b.className = 'danger';
  b.disabled = !enabled;
  if (why) b.title = why;
  b.addEventListener('click', onClick);
  return b;
}

function tag(text) {
  const el = document.createElement('span');
  el.className = 'tag';
  el.textContent = text;
  return el;
}

function numberCell(row, i, value, col) {
  textCell(row, i, String(value), col);
}

function textCell(row, i, text, col) {
  const c = cell(row, i);
  c.className = 'num';
  c.dataset.col = col;
  c.textContent = text;
}

function timeElement(ms) {
  const t = document.createElement('time');
  const d = new Date(ms);
  t.dateTime = d.toISOString();
  t.title = d.toISOString();
  t.textContent = d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
  return t;
}

function rate(v) {
  return v === 0 ? '0' : v < 10 ? v.toFixed(1) : String(Math.round(v));
}

function ms(v) {
  if (v === null || v === undefined) return '–';
  return v < 1 ? `${v.toFixed(2)} ms` : v < 100 ? `${v.toFixed(1)} ms` : v < 10_000 ? `${Math.round(v)} ms` : `${(v / 1000).toFixed(1)} s`;
}

function mib(bytes) {
  return `${(bytes / 1024 / 1024).toFixed(0)} MiB`;
}

function duration(seconds) {
  const d = Math.floor(seconds / 86_400);
  const h = Math.floor((seconds % 86_400) / 3_600);
  const m = Math.floor((seconds % 3_600) / 60);
  const s = seconds % 60;
  if (d > 0) return `${d}d ${h}h ${m}m`;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${s}s`;
  return `${s}s`;
}

// A token kept from before (the relay may have restarted with another) is checked before it is trusted.
if (adminToken) {
  checkAdminToken(adminToken).then((refused) => {
    if (refused) forgetAdminToken(refused);
  });
}
connect();
