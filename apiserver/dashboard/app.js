// The Skiff dashboard: plain JavaScript, no build step. Everything it shows comes from the
// Kubernetes API of the server that serves it, read with the caller's own credentials
// (the browser's, or a bearer token the user gives), kept current through watches.
'use strict';

// ---- helpers ---------------------------------------------------------------------------

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const enc = encodeURIComponent;

function headers(extra) {
  const h = Object.assign({ Accept: 'application/json' }, extra || {});
  const t = sessionStorage.getItem('skiff-token');
  if (t) h.Authorization = 'Bearer ' + t;
  return h;
}

async function request(path, opts) {
  const r = await fetch(path, Object.assign({}, opts, { headers: headers(opts && opts.headers), cache: 'no-store' }));
  const text = await r.text();
  if (!r.ok) {
    let msg = text;
    try { msg = JSON.parse(text).message || text; } catch (_) { /* not a Status */ }
    throw new Error(`${r.status}: ${msg}`);
  }
  return text;
}

const getJSON = async (path) => JSON.parse(await request(path));

function patch(path, body, type) {
  return request(path, { method: 'PATCH', body: JSON.stringify(body), headers: { 'Content-Type': type } });
}

function showMessage(text, isError) {
  const el = $('#error');
  el.textContent = text;
  el.className = isError ? 'error' : 'notice';
  el.hidden = !text;
}

// ---- formatting ------------------------------------------------------------------------

function age(ts) {
  if (!ts) return '';
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(ts)) / 1000));
  if (s < 120) return s + 's';
  if (s < 7200) return Math.floor(s / 60) + 'm';
  if (s < 172800) return Math.floor(s / 3600) + 'h';
  return Math.floor(s / 86400) + 'd';
}

// A Kubernetes quantity ("250m", "2", "64Mi") as a number.
function quantity(q) {
  const m = /^([0-9.+-]+)([a-zA-Z]*)$/.exec(String(q ?? ''));
  if (!m) return 0;
  const scale = { n: 1e-9, u: 1e-6, m: 1e-3, '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 1024, Mi: 1048576, Gi: 1073741824, Ti: 1099511627776 }[m[2]];
  return scale === undefined ? 0 : parseFloat(m[1]) * scale;
}

const fmtCpu = (milli) => (milli >= 1000 ? (milli / 1000).toFixed(2) + ' cores' : Math.round(milli) + 'm');
function fmtBytes(b) {
  if (b >= 1073741824) return (b / 1073741824).toFixed(2) + ' GiB';
  if (b >= 1048576) return (b / 1048576).toFixed(1) + ' MiB';
  if (b >= 1024) return (b / 1024).toFixed(0) + ' KiB';
  return b + ' B';
}

function bar(used, total) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  return `<svg class="bar" viewBox="0 0 100 6" preserveAspectRatio="none"><rect width="100" height="6" fill="#e4e7eb"/>` +
    `<rect width="${pct.toFixed(1)}" height="6" fill="${pct > 85 ? '#c1121f' : '#2a6fdb'}"/></svg>`;
}

function table(cols, rows, empty) {
  if (!rows.length) return `<p class="empty">${esc(empty || 'None.')}</p>`;
  return `<table><thead><tr>${cols.map((c) => `<th>${esc(c)}</th>`).join('')}</tr></thead><tbody>` +
    rows.map((r) => `<tr>${r.join('')}</tr>`).join('') + '</tbody></table>';
}

const td = (v, cls) => `<td${cls ? ` class="${cls}"` : ''}>${esc(v)}</td>`;
const tdHtml = (html) => `<td>${html}</td>`;

const COLORS = ['#2a6fdb', '#e07a1f', '#2a9d5c', '#b5179e', '#6c757d', '#c1121f', '#0096c7', '#8a5a00'];

// A line chart of up to the last hour: series = [{label, points: [[unixSeconds, value]]}].
// The time axis spans the samples there are (at least 5 minutes, at most an hour).
function chart(title, series, fmt) {
  const W = 600, H = 160, L = 70, B = 18, now = Date.now() / 1000;
  const first = Math.min(now, ...series.flatMap((s) => s.points.map((p) => p[0])));
  const span = Math.min(3600, Math.max(300, Math.ceil((now - first) / 300) * 300));
  const from = now - span;
  const max = Math.max(1, ...series.flatMap((s) => s.points.map((p) => p[1]))) * 1.1;
  const x = (t) => L + ((t - from) / span) * (W - L - 5);
  const y = (v) => H - B - (v / max) * (H - B - 8);
  const lines = series.map((s, i) => {
    const pts = s.points.filter((p) => p[0] >= from).map((p) => [x(p[0]).toFixed(1), y(p[1]).toFixed(1)]);
    const color = COLORS[i % COLORS.length];
    const last = pts[pts.length - 1];
    // The newest sample as a dot, so a series of one sample shows too.
    return `<polyline fill="none" stroke-width="2" stroke="${color}" points="${pts.map((p) => p.join(',')).join(' ')}"/>` +
      (last ? `<circle cx="${last[0]}" cy="${last[1]}" r="3" fill="${color}"/>` : '');
  }).join('');
  const grid = [0, 0.5, 1].map((f) => {
    const v = (max / 1.1) * f;
    const label = series.length ? `<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end" font-size="11" fill="#52606d">${esc(fmt(v))}</text>` : '';
    return `<line x1="${L}" x2="${W - 5}" y1="${y(v)}" y2="${y(v)}" stroke="#e4e7eb"/>${label}`;
  }).join('');
  const times = [[from, `-${span / 60} min`, 'start'], [from + span / 2, `-${span / 120} min`, 'middle'], [now, 'now', 'end']].map(([t, l, anchor]) =>
    `<text x="${x(t)}" y="${H - 4}" text-anchor="${anchor}" font-size="11" fill="#52606d">${l}</text>`).join('');
  const legend = series.map((s, i) => `<span><i class="c${i % COLORS.length}"></i>${esc(s.label)}</span>`).join('');
  return `<div class="chart"><h3>${esc(title)}</h3><svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">${grid}${times}${lines}</svg>` +
    `<div class="legend">${legend || '<span class="empty">no samples yet (one every 15 s)</span>'}</div></div>`;
}

// ---- live collections ------------------------------------------------------------------

// A list kept current by a watch: list, then watch from the list's resourceVersion; on
// any break (timeout, 410 Gone, network) list again.
class Collection {
  constructor(path, onChange) {
    this.path = path;
    this.onChange = onChange;
    this.items = new Map();
    this.live = false;
    this.stopped = false;
    this.run();
  }

  async run() {
    while (!this.stopped) {
      try {
        const list = await getJSON(this.path);
        if (this.stopped) return;
        this.items = new Map((list.items || []).map((o) => [key(o), o]));
        this.onChange();
        await this.watch(list.metadata.resourceVersion);
      } catch (e) {
        if (this.stopped) return;
        showMessage(`${this.path}: ${e.message}`, true);
      }
      this.live = false;
      this.onChange();
      if (!this.stopped) await sleep(1000);
    }
  }

  async watch(rv) {
    this.abort = new AbortController();
    const sep = this.path.includes('?') ? '&' : '?';
    const r = await fetch(`${this.path}${sep}watch=1&allowWatchBookmarks=true&resourceVersion=${enc(rv)}`,
      { headers: headers(), signal: this.abort.signal, cache: 'no-store' });
    if (!r.ok) throw new Error(`watch: ${r.status}`);
    this.live = true;
    this.onChange();
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line.trim()) continue;
        const ev = JSON.parse(line);
        if (ev.type === 'ERROR') return;
        if (ev.type === 'BOOKMARK') continue;
        if (ev.type === 'DELETED') this.items.delete(key(ev.object));
        else this.items.set(key(ev.object), ev.object);
        this.onChange();
      }
    }
  }

  list() {
    return [...this.items.values()].sort((a, b) => key(a).localeCompare(key(b)));
  }

  stop() {
    this.stopped = true;
    if (this.abort) this.abort.abort();
  }
}

const key = (o) => `${o.metadata.namespace || ''}/${o.metadata.name}`;

// Collections of the current view, and polls of the dashboard's own JSON documents.
let current = { stop() {} };

function view(setup) {
  current.stop();
  const colls = {};
  const timers = [];
  const polls = new AbortController();
  let scheduled = false;
  let active = true; // a view left behind must not draw over the next one
  let drawn = '';
  const state = { colls, data: {}, after() {} };
  const render = () => {
    if (scheduled || !active) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      if (!active) return;
      const live = Object.values(colls);
      const el = $('#live');
      el.textContent = live.every((c) => c.live) ? 'live' : 'reconnecting';
      el.className = live.every((c) => c.live) ? 'live ok' : 'live';
      // Only what changed is drawn again (a redraw closes open menus and can swallow a
      // click), and what the user is typing survives it.
      const html = state.draw(state);
      if (html === drawn) return;
      drawn = html;
      const focused = document.activeElement && document.activeElement.id;
      $('#view').innerHTML = html;
      if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
      state.after();
    });
  };
  state.watch = (name, path) => { colls[name] = new Collection(path, render); };
  // A document fetched again `ms` after each answer (never two at once), until the view goes.
  state.poll = async (name, path, ms) => {
    while (active) {
      try {
        const r = await fetch(path, { headers: headers(), signal: polls.signal, cache: 'no-store' });
        if (!r.ok) throw new Error(`${r.status}: ${await r.text()}`);
        state.data[name] = await r.json();
        render();
      } catch (e) {
        if (!active) return;
        showMessage(`${path}: ${e.message}`, true);
      }
      await sleep(ms);
    }
  };
  state.every = (fn, ms) => timers.push(setInterval(fn, ms));
  state.render = render;
  setup(state);
  current = {
    stop() {
      active = false;
      polls.abort();
      Object.values(colls).forEach((c) => c.stop());
      timers.forEach(clearInterval);
    },
  };
  render();
}

// ---- namespaces, paths -----------------------------------------------------------------

let namespace = sessionStorage.getItem('skiff-ns') || '';

function path(base, plural, ns) {
  const n = ns === undefined ? namespace : ns;
  return n ? `${base}/namespaces/${enc(n)}/${plural}` : `${base}/${plural}`;
}

const drafts = new Map(); // replica counts being typed, by input id

// ---- pods ------------------------------------------------------------------------------

function podStatus(p) {
  if (p.metadata.deletionTimestamp) return 'Terminating';
  let reason = (p.status && (p.status.reason || p.status.phase)) || 'Pending';
  for (const c of (p.status && p.status.containerStatuses) || []) {
    if (c.state && c.state.waiting && c.state.waiting.reason) reason = c.state.waiting.reason;
    else if (c.state && c.state.terminated) reason = c.state.terminated.reason || 'Error';
  }
  return reason;
}

function podReady(p) {
  const cs = (p.status && p.status.containerStatuses) || [];
  return `${cs.filter((c) => c.ready).length}/${(p.spec.containers || []).length}`;
}

const restarts = (p) => ((p.status && p.status.containerStatuses) || []).reduce((n, c) => n + (c.restartCount || 0), 0);

function statusClass(s) {
  if (s === 'Running' || s === 'Succeeded' || s === 'Completed' || s === 'True') return 'ok-text';
  if (s === 'Pending' || s === 'ContainerCreating' || s === 'Terminating') return 'warn-text';
  return 'bad-text';
}

function podsTable(pods) {
  return table(['name', 'namespace', 'status', 'ready', 'restarts', 'node', 'IP', 'age'], pods.map((p) => {
    const s = podStatus(p);
    const link = `#/pod/${enc(p.metadata.namespace)}/${enc(p.metadata.name)}`;
    return [tdHtml(`<a class="pod" href="${esc(link)}">${esc(p.metadata.name)}</a>`), td(p.metadata.namespace),
      td(s, `status ${statusClass(s)}`), td(podReady(p)), td(restarts(p)), td(p.spec.nodeName || ''),
      td((p.status && p.status.podIP) || ''), td(age(p.metadata.creationTimestamp))];
  }), 'No pods.');
}

// ---- overview --------------------------------------------------------------------------

function latest(series) {
  return series && series.length ? series[series.length - 1] : null;
}

function overview() {
  view((st) => {
    st.watch('nodes', '/api/v1/nodes');
    st.watch('pods', path('/api/v1', 'pods'));
    st.watch('deployments', path('/apis/apps/v1', 'deployments'));
    st.poll('store', '/dashboard/api/store', 5000);
    st.poll('usage', '/dashboard/api/usage?pods=false', 15000);
    st.draw = ({ colls, data }) => {
      const nodes = colls.nodes.list();
      const pods = colls.pods.list();
      const deps = colls.deployments.list();
      const usage = (data.usage && data.usage.nodes) || {};
      const ready = (n) => ((n.status && n.status.conditions) || []).some((c) => c.type === 'Ready' && c.status === 'True');
      const members = (data.store && data.store.members) || [];
      const cards = [
        ['Nodes ready', `${nodes.filter(ready).length}/${nodes.length}`],
        ['Pods running', `${pods.filter((p) => podStatus(p) === 'Running').length}/${pods.length}`],
        ['Deployments available', `${deps.filter((d) => (d.status && d.status.availableReplicas || 0) >= (d.spec.replicas ?? 1)).length}/${deps.length}`],
        ['Store members', `${members.filter((m) => !m.error).length}/${members.length}`],
      ].map(([k, v]) => `<div class="card" id="card-${esc(k.split(' ')[0].toLowerCase())}">${esc(k)}<b>${esc(v)}</b></div>`).join('');
      const nodeRows = nodes.map((n) => {
        const alloc = (n.status && n.status.allocatable) || {};
        const u = latest(usage[n.metadata.name]);
        const cpuCap = quantity(alloc.cpu) * 1000, memCap = quantity(alloc.memory);
        const onNode = pods.filter((p) => p.spec.nodeName === n.metadata.name).length;
        const r = ready(n) ? 'Ready' : 'NotReady';
        return [td(n.metadata.name), td(r, `${r === 'Ready' ? 'ok-text' : 'bad-text'}`),
          tdHtml(u ? `${bar(u[1], cpuCap)}${esc(fmtCpu(u[1]))} / ${esc(fmtCpu(cpuCap))}` : `${esc(fmtCpu(cpuCap))}`),
          tdHtml(u ? `${bar(u[2], memCap)}${esc(fmtBytes(u[2]))} / ${esc(fmtBytes(memCap))}` : `${esc(fmtBytes(memCap))}`),
          td(`${onNode} / ${alloc.pods || '?'}`), td((n.status && n.status.nodeInfo && n.status.nodeInfo.kubeletVersion) || ''),
          td(age(n.metadata.creationTimestamp))];
      });
      const storeRows = members.map((m) => [td(m.name), td(m.endpoint),
        td(m.error ? 'unreachable' : m.isLeader ? 'leader' : m.isLearner ? 'learner' : 'follower', m.error ? 'bad-text' : 'role'),
        td(m.revision ?? ''), td(m.raftTerm ?? ''), td(m.raftIndex ?? ''), td(m.dbSize != null ? fmtBytes(m.dbSize) : ''),
        td(m.error || '', 'msg')]);
      const names = Object.keys(usage).slice(0, COLORS.length);
      const cpuSeries = names.map((n) => ({ label: n, points: usage[n].map((s) => [s[0], s[1]]) }));
      const memSeries = names.map((n) => ({ label: n, points: usage[n].map((s) => [s[0], s[2]]) }));
      return `<div class="cards">${cards}</div>` +
        `<section id="nodes"><h2>Nodes</h2>${table(['name', 'status', 'CPU used / allocatable', 'memory used / allocatable', 'pods', 'version', 'age'], nodeRows, 'No nodes.')}</section>` +
        `<section id="usage"><h2>Node usage, last hour</h2><div class="charts">${chart('CPU', cpuSeries, fmtCpu)}${chart('Memory', memSeries, fmtBytes)}</div></section>` +
        `<section id="store"><h2>Store members</h2>${table(['name', 'endpoint', 'role', 'revision', 'raft term', 'raft index', 'db size', 'error'], storeRows, data.store ? 'No members.' : 'Loading.')}</section>`;
    };
  });
}

// ---- workloads -------------------------------------------------------------------------

function scalable(kind, plural, items, cols, row) {
  return table([...cols, 'scale', ''], items.map((o) => {
    const id = `replicas/${plural}/${o.metadata.namespace}/${o.metadata.name}`; // '/' is in no name
    const value = drafts.has(id) ? drafts.get(id) : (o.spec.replicas ?? 1);
    const data = `data-plural="${esc(plural)}" data-ns="${esc(o.metadata.namespace)}" data-name="${esc(o.metadata.name)}"`;
    return [...row(o),
      tdHtml(`<input class="replicas" type="number" min="0" id="${esc(id)}" value="${esc(value)}" ${data}>` +
        `<button class="scale" ${data}>Scale</button>`),
      tdHtml(`<button class="restart" ${data}>Restart</button>`)];
  }), `No ${kind}.`);
}

function workloads() {
  view((st) => {
    st.watch('deployments', path('/apis/apps/v1', 'deployments'));
    st.watch('statefulsets', path('/apis/apps/v1', 'statefulsets'));
    st.watch('replicasets', path('/apis/apps/v1', 'replicasets'));
    st.watch('pods', path('/api/v1', 'pods'));
    st.draw = ({ colls }) => {
      const s = (o) => o.status || {};
      const deps = scalable('deployments', 'deployments', colls.deployments.list(), ['name', 'namespace', 'ready', 'up-to-date', 'available', 'age'],
        (d) => [td(d.metadata.name), td(d.metadata.namespace), td(`${s(d).readyReplicas || 0}/${d.spec.replicas ?? 1}`, 'ready'),
          td(s(d).updatedReplicas || 0), td(s(d).availableReplicas || 0), td(age(d.metadata.creationTimestamp))]);
      const sts = scalable('statefulsets', 'statefulsets', colls.statefulsets.list(), ['name', 'namespace', 'ready', 'age'],
        (o) => [td(o.metadata.name), td(o.metadata.namespace), td(`${s(o).readyReplicas || 0}/${o.spec.replicas ?? 1}`, 'ready'),
          td(age(o.metadata.creationTimestamp))]);
      const rs = table(['name', 'namespace', 'desired', 'current', 'ready', 'age'], colls.replicasets.list().map((o) =>
        [td(o.metadata.name), td(o.metadata.namespace), td(o.spec.replicas ?? 1), td(s(o).replicas || 0), td(s(o).readyReplicas || 0),
          td(age(o.metadata.creationTimestamp))]), 'No replica sets.');
      return `<section id="deployments"><h2>Deployments</h2>${deps}</section>` +
        `<section id="statefulsets"><h2>StatefulSets</h2>${sts}</section>` +
        `<section id="replicasets"><h2>ReplicaSets</h2>${rs}</section>` +
        `<section id="pods"><h2>Pods</h2>${podsTable(colls.pods.list())}</section>`;
    };
  });
}

async function scale(b) {
  const { plural, ns, name } = b.dataset;
  const id = `replicas/${plural}/${ns}/${name}`;
  const n = parseInt(document.getElementById(id).value, 10);
  if (!(n >= 0)) { showMessage('The replica count must be a number of at least 0.', true); return; }
  try {
    await patch(`/apis/apps/v1/namespaces/${enc(ns)}/${plural}/${enc(name)}/scale`, { spec: { replicas: n } }, 'application/merge-patch+json');
    drafts.delete(id);
    showMessage(`Scaled ${plural.replace(/s$/, '')} ${name} to ${n}.`, false);
  } catch (e) { showMessage(`Scaling ${name}: ${e.message}`, true); }
}

async function restart(b) {
  const { plural, ns, name } = b.dataset;
  const at = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  const body = { spec: { template: { metadata: { annotations: { 'kubectl.kubernetes.io/restartedAt': at } } } } };
  try {
    await patch(`/apis/apps/v1/namespaces/${enc(ns)}/${plural}/${enc(name)}`, body, 'application/strategic-merge-patch+json');
    showMessage(`Restarting ${plural.replace(/s$/, '')} ${name}.`, false);
  } catch (e) { showMessage(`Restarting ${name}: ${e.message}`, true); }
}

// ---- services, events ------------------------------------------------------------------

function services() {
  view((st) => {
    st.watch('services', path('/api/v1', 'services'));
    st.watch('endpoints', path('/api/v1', 'endpoints'));
    st.draw = ({ colls }) => {
      const svc = table(['name', 'namespace', 'type', 'cluster IP', 'ports', 'selector', 'age'], colls.services.list().map((s) => [
        td(s.metadata.name), td(s.metadata.namespace), td(s.spec.type || 'ClusterIP'), td(s.spec.clusterIP || ''),
        td((s.spec.ports || []).map((p) => `${p.port}${p.nodePort ? ':' + p.nodePort : ''}/${p.protocol || 'TCP'}`).join(', ')),
        td(Object.entries(s.spec.selector || {}).map(([k, v]) => `${k}=${v}`).join(',')), td(age(s.metadata.creationTimestamp))]), 'No services.');
      const eps = table(['name', 'namespace', 'endpoints', 'age'], colls.endpoints.list().map((e) => {
        const addrs = (e.subsets || []).flatMap((ss) => (ss.addresses || []).flatMap((a) => (ss.ports || [{}]).map((p) => a.ip + (p.port ? ':' + p.port : ''))));
        return [td(e.metadata.name), td(e.metadata.namespace), td(addrs.join(', ') || '<none>', 'msg'), td(age(e.metadata.creationTimestamp))];
      }), 'No endpoints.');
      return `<section id="services"><h2>Services</h2>${svc}</section><section id="endpoints"><h2>Endpoints</h2>${eps}</section>`;
    };
  });
}

function events() {
  view((st) => {
    st.watch('events', path('/api/v1', 'events'));
    st.draw = ({ colls }) => {
      const when = (e) => e.lastTimestamp || e.eventTime || e.metadata.creationTimestamp || '';
      const evs = colls.events.list().sort((a, b) => when(b).localeCompare(when(a))).slice(0, 300);
      return `<section id="events"><h2>Events</h2>${table(['last seen', 'type', 'reason', 'object', 'message', 'count'], evs.map((e) => [
        td(age(when(e))), td(e.type || '', e.type === 'Warning' ? 'bad-text' : ''), td(e.reason || ''),
        td(`${(e.involvedObject && e.involvedObject.kind || '').toLowerCase()}/${e.involvedObject && e.involvedObject.name || ''}`),
        td(e.message || '', 'msg'), td(e.count || 1)]), 'No events.')}</section>`;
    };
  });
}

// ---- one pod: containers, usage, logs ----------------------------------------------------

function podPage(ns, name) {
  const logs = { text: 'Loading logs.', container: '' };
  view((st) => {
    st.watch('pod', `/api/v1/namespaces/${enc(ns)}/pods?fieldSelector=${enc('metadata.name=' + name)}`);
    st.poll('usage', `/dashboard/api/usage?namespace=${enc(ns)}`, 15000);
    const loadLogs = async () => {
      const pod = st.colls.pod.list()[0];
      if (!pod) return;
      const c = logs.container || pod.spec.containers[0].name;
      try {
        logs.text = await request(`/api/v1/namespaces/${enc(ns)}/pods/${enc(name)}/log?container=${enc(c)}&tailLines=500`);
      } catch (e) { logs.text = e.message; }
      st.after();
    };
    setTimeout(loadLogs, 300);
    st.every(loadLogs, 5000);
    st.draw = ({ colls, data }) => {
      const pod = colls.pod.list()[0];
      if (!pod) return `<section><h2>Pod ${esc(ns)}/${esc(name)}</h2><p class="empty">No such pod (or not yet).</p></section>`;
      const series = ((data.usage && data.usage.pods) || {})[`${ns}/${name}`] || [];
      const cs = (pod.status && pod.status.containerStatuses) || [];
      const rows = pod.spec.containers.map((c) => {
        const s = cs.find((x) => x.name === c.name) || {};
        const state = s.state ? Object.keys(s.state)[0] : 'waiting';
        return [td(c.name), td(c.image), td(state), td(s.ready ? 'yes' : 'no'), td(s.restartCount || 0)];
      });
      const options = pod.spec.containers.map((c) => `<option${c.name === logs.container ? ' selected' : ''}>${esc(c.name)}</option>`).join('');
      const st2 = podStatus(pod);
      return `<section id="pod"><h2>Pod ${esc(ns)}/${esc(name)}</h2>` +
        `<p>Status <b class="${statusClass(st2)}">${esc(st2)}</b> on node <b>${esc(pod.spec.nodeName || '(not scheduled)')}</b>, IP ${esc((pod.status && pod.status.podIP) || '-')}, age ${esc(age(pod.metadata.creationTimestamp))}</p>` +
        table(['container', 'image', 'state', 'ready', 'restarts'], rows) + '</section>' +
        `<section><h2>Usage, last hour</h2><div class="charts">${chart('CPU', series.length ? [{ label: name, points: series.map((s) => [s[0], s[1]]) }] : [], fmtCpu)}` +
        `${chart('Memory', series.length ? [{ label: name, points: series.map((s) => [s[0], s[2]]) }] : [], fmtBytes)}</div></section>` +
        `<section><h2>Logs <select id="log-container">${options}</select></h2><pre class="logs" id="logs"></pre></section>`;
    };
    // The logs go in as text after each draw and each fetch, following the end unless
    // the reader scrolled up.
    st.after = () => {
      const el = document.getElementById('logs');
      if (!el || el.textContent === logs.text) return;
      const following = el.textContent === '' || el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
      el.textContent = logs.text;
      if (following) el.scrollTop = el.scrollHeight;
    };
    st.onContainer = (c) => { logs.container = c; logs.text = 'Loading logs.'; loadLogs(); };
    podPage.state = st;
  });
}

// ---- routing and events ----------------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const page = parts[0] || 'overview';
  document.querySelectorAll('nav a').forEach((a) => a.classList.toggle('active', a.dataset.view === page));
  showMessage('', false);
  if (page === 'workloads') workloads();
  else if (page === 'services') services();
  else if (page === 'events') events();
  else if (page === 'pod' && parts[2]) podPage(parts[1], parts[2]);
  else overview();
}

function namespaces() {
  const sel = $('#namespace');
  const c = new Collection('/api/v1/namespaces', () => {
    const names = c.list().map((n) => n.metadata.name);
    if (namespace && !names.includes(namespace)) names.push(namespace);
    sel.innerHTML = '<option value="">all namespaces</option>' +
      names.map((n) => `<option value="${esc(n)}"${n === namespace ? ' selected' : ''}>${esc(n)}</option>`).join('');
  });
  sel.addEventListener('change', () => {
    namespace = sel.value;
    sessionStorage.setItem('skiff-ns', namespace);
    route();
  });
}

document.addEventListener('DOMContentLoaded', () => {
  $('#view').addEventListener('click', (ev) => {
    const b = ev.target.closest('button');
    if (!b) return;
    if (b.classList.contains('scale')) scale(b);
    else if (b.classList.contains('restart')) restart(b);
  });
  $('#view').addEventListener('input', (ev) => {
    if (ev.target.classList.contains('replicas')) drafts.set(ev.target.id, ev.target.value);
  });
  $('#view').addEventListener('change', (ev) => {
    if (ev.target.id === 'log-container' && podPage.state) podPage.state.onContainer(ev.target.value);
  });
  $('#token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem('skiff-token', $('#token').value.trim());
    $('#token').value = '';
    location.reload();
  });
  $('#token-clear').addEventListener('click', () => { sessionStorage.removeItem('skiff-token'); location.reload(); });
  window.addEventListener('hashchange', route);
  namespaces();
  route();
});
