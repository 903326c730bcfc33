// deferd's status page. Plain JavaScript, no libraries: every chart is an
// inline SVG drawn by the small helpers below. Every value from deferd is
// put in the page as text (textContent, setAttribute), never as HTML.
'use strict';

const REFRESH_MS = 2000;
const RING = 150; // /stats samples kept: 5 minutes at 2 s
const PAGE = 20; // rows per /pending page
const SVGNS = 'http://www.w3.org/2000/svg';

const ring = []; // {t, accepted, published, nodes: {addr: {published, errors}}}
let info = null;
let lastStats = null;
let current = null; // the looked-up message: {ref: 'key=...', msg}
const pendingState = { topic: '', after: '', next: '', page: 1 };

const $ = (id) => document.getElementById(id);

// ---- formatting ----

function fmtNum(n) {
  if (n == null || isNaN(n)) return '–';
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(a >= 1e10 ? 0 : 1) + 'G';
  if (a >= 1e6) return (n / 1e6).toFixed(a >= 1e7 ? 0 : 1) + 'M';
  if (a >= 1e4) return (n / 1e3).toFixed(a >= 1e5 ? 0 : 1) + 'k';
  if (a >= 100 || Number.isInteger(n)) return String(Math.round(n));
  return n.toFixed(a >= 10 ? 1 : 2);
}

function fmtBytes(n) {
  if (n == null) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(n >= 100 ? 0 : 1)) + ' ' + u[i];
}

// fmtDur formats a duration in milliseconds, signed.
function fmtDur(ms) {
  if (ms == null || isNaN(ms)) return '–';
  const sign = ms < 0 ? '−' : '';
  ms = Math.abs(ms);
  if (ms < 1) return sign + ms.toFixed(ms < 0.1 ? 2 : 1) + ' ms';
  if (ms < 1000) return sign + Math.round(ms) + ' ms';
  const s = ms / 1000;
  if (s < 60) return sign + s.toFixed(s < 10 ? 2 : 1) + ' s';
  const m = Math.floor(s / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
  if (m < 60) return sign + m + 'm ' + Math.floor(s % 60) + 's';
  if (h < 24) return sign + h + 'h ' + (m % 60) + 'm';
  return sign + d + 'd ' + (h % 24) + 'h';
}

function pad(n, w) { return String(n).padStart(w || 2, '0'); }

// fmtTime formats unix ms as local time, with milliseconds.
function fmtTime(ms) {
  if (!ms) return '–';
  const d = new Date(ms);
  return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' +
    pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()) + '.' + pad(d.getMilliseconds(), 3);
}

function relTime(ms) {
  const d = ms - Date.now();
  return d >= 0 ? 'in ' + fmtDur(d) : fmtDur(-d) + ' ago';
}

// ---- DOM and SVG helpers ----

function h(tag, attrs, parent, text) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text != null) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function s(tag, attrs, parent, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text != null) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function tip(e, text) { s('title', {}, e, text); return e; }

// canvas clears svg and sizes its viewBox to its on-screen width and the
// given height; it returns the width.
function canvas(svg, height) {
  svg.replaceChildren();
  const w = Math.max(200, Math.round(svg.getBoundingClientRect().width) || 600);
  svg.setAttribute('viewBox', '0 0 ' + w + ' ' + height);
  svg.setAttribute('height', height);
  return w;
}

function emptyNote(svg, text, height) {
  const w = canvas(svg, height || 60);
  s('text', { x: w / 2, y: (height || 60) / 2, 'text-anchor': 'middle', class: 'axis' }, svg, text);
}

// niceTicks returns round tick values from 0 to at least max.
function niceTicks(max, n) {
  if (!(max > 0)) max = 1;
  const raw = max / (n || 4);
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * p).find((v) => v >= raw);
  const t = [];
  for (let v = 0; v < max + step * 0.999; v += step) t.push(v);
  return t;
}

// ---- charts ----

// drawTopics: one horizontal bar per topic, largest first, the overdue
// part of each in orange.
function drawTopics(st) {
  const svg = $('topics');
  const byTopic = st.pending_by_topic || {};
  const dueTopics = (st.due && st.due.topics) || {};
  const topics = Object.keys(byTopic).sort((a, b) => byTopic[b] - byTopic[a] || (a < b ? -1 : 1));
  if (topics.length === 0) { emptyNote(svg, 'nothing pending'); return; }
  const shown = topics.slice(0, 15);
  const rowH = 24, top = 4, hgt = top + shown.length * rowH + 20;
  const w = canvas(svg, hgt);
  const labelW = Math.min(180, Math.max(60, ...shown.map((t) => t.length * 6.6 + 8)));
  const numW = 64, x0 = labelW, x1 = w - numW;
  const max = Math.max(...shown.map((t) => byTopic[t]));
  const ticks = niceTicks(max, 4), tmax = ticks[ticks.length - 1];
  const X = (v) => x0 + (x1 - x0) * v / tmax;
  for (const v of ticks) {
    s('line', { x1: X(v), x2: X(v), y1: top, y2: hgt - 16, class: 'grid' }, svg);
    s('text', { x: X(v), y: hgt - 4, 'text-anchor': 'middle', class: 'axis' }, svg, fmtNum(v));
  }
  shown.forEach((t, i) => {
    const n = byTopic[t], od = (dueTopics[t] && dueTopics[t].overdue) || 0;
    const y = top + i * rowH;
    const g = s('g', { class: 'topic-row', 'data-topic': t, 'data-count': n }, svg);
    tip(g, t + ': ' + n + ' pending' + (od ? ', ' + od + ' overdue' : '') + ' (click: list them below)');
    s('text', { x: x0 - 6, y: y + rowH / 2 + 4, 'text-anchor': 'end', class: 'topic-name' }, g, t.length > 26 ? t.slice(0, 25) + '…' : t);
    s('rect', { x: x0, y: y + 4, width: Math.max(2, X(n) - x0), height: rowH - 8, rx: 2, class: 'bar' }, g);
    if (od > 0) s('rect', { x: x0, y: y + 4, width: Math.max(2, X(Math.min(od, n)) - x0), height: rowH - 8, rx: 2, class: 'bar warn' }, g);
    s('text', { x: X(n) + 6, y: y + rowH / 2 + 4, class: 'topic-count' }, g, fmtNum(n));
    g.addEventListener('click', () => { $('pending-topic').value = t; pendingFirst(); });
  });
  if (topics.length > shown.length) {
    s('text', { x: x1, y: hgt - 4, 'text-anchor': 'end', class: 'axis' }, svg, '+' + (topics.length - shown.length) + ' more topics');
  }
}

const DUE_BUCKETS = [
  ['overdue', null], ['<1s', '1s'], ['1–10s', '10s'], ['10s–1m', '1m'],
  ['1–10m', '10m'], ['10m–1h', '1h'], ['1h–1d', '1d'], ['later', 'later'],
];

// drawDue: pending messages by how far ahead they are due (the sampled
// estimate of /stats' due.due_within), overdue first.
function drawDue(st) {
  const svg = $('due');
  const d = st.due || {};
  const vals = DUE_BUCKETS.map(([, k]) => (k ? (d.due_within || {})[k] || 0 : d.overdue || 0));
  const total = vals.reduce((a, b) => a + b, 0);
  $('due-note').textContent = d.sampled != null && d.sampled < (st.pending || 0)
    ? 'estimated from a sample of ' + fmtNum(d.sampled) + ' of ' + fmtNum(st.pending) + ' pending' : '';
  if (total === 0) { emptyNote(svg, 'nothing pending'); return; }
  const hgt = 200, top = 18, bottom = hgt - 22, left = 44;
  const w = canvas(svg, hgt);
  const ticks = niceTicks(Math.max(...vals), 4), tmax = ticks[ticks.length - 1];
  const Y = (v) => bottom - (bottom - top) * v / tmax;
  for (const v of ticks) {
    s('line', { x1: left, x2: w, y1: Y(v), y2: Y(v), class: 'grid' }, svg);
    s('text', { x: left - 6, y: Y(v) + 4, 'text-anchor': 'end', class: 'axis' }, svg, fmtNum(v));
  }
  const bw = (w - left) / vals.length;
  vals.forEach((v, i) => {
    const x = left + i * bw + bw * 0.12, bh = v > 0 ? Math.max(2, bottom - Y(v)) : 0;
    const g = s('g', { class: 'due-bucket', 'data-bucket': DUE_BUCKETS[i][0], 'data-count': v }, svg);
    tip(g, DUE_BUCKETS[i][0] + ': ' + v);
    s('rect', { x, y: bottom - bh, width: bw * 0.76, height: bh, rx: 2, class: i === 0 ? 'bar bad' : 'bar' }, g);
    if (v > 0) s('text', { x: x + bw * 0.38, y: bottom - bh - 4, 'text-anchor': 'middle' }, g, fmtNum(v));
    s('text', { x: x + bw * 0.38, y: hgt - 6, 'text-anchor': 'middle', class: 'axis' }, g, DUE_BUCKETS[i][0]);
  });
}

// drawRates: accepted and published per second from consecutive /stats
// samples in the ring, over the last RING samples.
function drawRates() {
  const svg = $('rates');
  const pts = [];
  for (let i = 1; i < ring.length; i++) {
    const a = ring[i - 1], b = ring[i], dt = (b.t - a.t) / 1000;
    if (dt <= 0 || b.accepted < a.accepted || b.published < a.published) continue; // a restart
    pts.push({ t: b.t, in: (b.accepted - a.accepted) / dt, out: (b.published - a.published) / dt });
  }
  if (pts.length < 1) { emptyNote(svg, 'collecting samples…', 200); return; }
  const hgt = 200, top = 22, bottom = hgt - 22, left = 52, right = 12;
  const w = canvas(svg, hgt);
  const now = ring[ring.length - 1].t, span = RING * REFRESH_MS;
  const X = (t) => left + (w - left - right) * (1 - (now - t) / span);
  const ticks = niceTicks(Math.max(1, ...pts.map((p) => Math.max(p.in, p.out))), 4), tmax = ticks[ticks.length - 1];
  const Y = (v) => bottom - (bottom - top) * v / tmax;
  for (const v of ticks) {
    s('line', { x1: left, x2: w - right, y1: Y(v), y2: Y(v), class: 'grid' }, svg);
    s('text', { x: left - 6, y: Y(v) + 4, 'text-anchor': 'end', class: 'axis' }, svg, fmtNum(v) + '/s');
  }
  for (let m = 0; m <= span / 60000; m++) {
    const x = X(now - m * 60000);
    s('line', { x1: x, x2: x, y1: top, y2: bottom, class: 'grid' }, svg);
    s('text', { x, y: hgt - 6, 'text-anchor': 'middle', class: 'axis' }, svg, m === 0 ? 'now' : '−' + m + ' min');
  }
  for (const [k, cls] of [['in', 'in'], ['out', 'out']]) {
    const line = pts.map((p, i) => (i ? 'L' : 'M') + X(p.t).toFixed(1) + ',' + Y(p[k]).toFixed(1)).join('');
    if (pts.length > 1) {
      s('path', { d: line + 'L' + X(pts[pts.length - 1].t).toFixed(1) + ',' + bottom + 'L' + X(pts[0].t).toFixed(1) + ',' + bottom + 'Z', class: 'area-' + cls }, svg);
    }
    s('path', { d: line, class: 'line-' + cls }, svg);
    const last = pts[pts.length - 1];
    s('circle', { cx: X(last.t), cy: Y(last[k]), r: 3, class: 'dot-' + cls }, svg);
  }
  const last = pts[pts.length - 1];
  s('circle', { cx: left + 8, cy: 10, r: 5, class: 'dot-in' }, svg);
  s('text', { x: left + 18, y: 14 }, svg, 'accepted ' + fmtNum(last.in) + '/s');
  s('circle', { cx: left + 168, cy: 10, r: 5, class: 'dot-out' }, svg);
  s('text', { x: left + 178, y: 14 }, svg, 'published ' + fmtNum(last.out) + '/s');
}

// drawLateness: the lateness percentiles on a logarithmic axis, each bar
// green under 100 ms, orange under 1 s, red beyond.
function drawLateness(st) {
  const svg = $('lateness');
  const l = st.lateness_ms || {};
  if (!st.published) { emptyNote(svg, 'nothing published yet'); return; }
  const rows = [['p50', l.p50], ['p90', l.p90], ['p99', l.p99], ['p99.9', l.p999], ['max', l.max]];
  const rowH = 28, top = 6, hgt = top + rows.length * rowH + 22, left = 50, right = 70;
  const w = canvas(svg, hgt);
  const lo = 0.1, hi = Math.max(1000, ...rows.map((r) => r[1] || 0)) * 1.2;
  const X = (v) => left + (w - left - right) * (Math.log10(Math.max(lo, v)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo));
  for (const [v, label] of [[0.1, '0.1 ms'], [1, '1 ms'], [10, '10 ms'], [100, '100 ms'], [1000, '1 s'], [10000, '10 s'], [60000, '1 min'], [600000, '10 min']]) {
    if (v > hi) break;
    s('line', { x1: X(v), x2: X(v), y1: top, y2: hgt - 18, class: 'grid' }, svg);
    s('text', { x: X(v), y: hgt - 4, 'text-anchor': 'middle', class: 'axis' }, svg, label);
  }
  rows.forEach(([name, v], i) => {
    const y = top + i * rowH;
    const g = s('g', { class: 'lateness-row', 'data-q': name, 'data-ms': v }, svg);
    tip(g, name + ' lateness ≤ ' + fmtDur(v));
    s('text', { x: left - 8, y: y + rowH / 2 + 4, 'text-anchor': 'end' }, g, name);
    const cls = v < 100 ? 'bar live' : v < 1000 ? 'bar warn' : 'bar bad';
    s('rect', { x: left, y: y + 5, width: Math.max(2, X(v || 0) - left), height: rowH - 10, rx: 2, class: cls }, g);
    s('text', { x: X(v || 0) + 6, y: y + rowH / 2 + 4 }, g, '≤ ' + fmtDur(v));
  });
}

// spark draws a sparkline of values, captioned, into parent.
function spark(parent, values, cls, label) {
  const box = h('div', { class: 'spark' }, parent);
  const svg = s('svg', { viewBox: '0 0 150 22', preserveAspectRatio: 'none' }, box);
  h('span', {}, box, label + ' ' + fmtNum(values.length ? values[values.length - 1] : 0));
  tip(svg, label + ', last 5 minutes');
  const max = Math.max(1e-9, ...values);
  s('line', { x1: 0, x2: 150, y1: 21, y2: 21, class: 'grid' }, svg);
  if (values.length > 1) {
    const d = values.map((v, i) => (i ? 'L' : 'M') + (150 * i / (values.length - 1)).toFixed(1) + ',' + (20 - 18 * v / max).toFixed(1)).join('');
    s('path', { d, class: cls }, svg);
  }
  return svg;
}

// drawEgress: one row per nsqd: up or down, a sparkline of its
// published/s and of its failed tries, in flight, the last error.
function drawEgress(st) {
  const box = $('egress');
  box.replaceChildren();
  const nodes = st.egress || [];
  if (nodes.length === 0) { h('p', { class: 'empty' }, box, 'no nsqd: this deferd publishes to a sink of its own (Options.Sink)'); return; }
  const series = (addr, k) => {
    const out = [];
    for (let i = 1; i < ring.length; i++) {
      const a = ring[i - 1].nodes[addr], b = ring[i].nodes[addr], dt = (ring[i].t - ring[i - 1].t) / 1000;
      out.push(a && b && dt > 0 && b[k] >= a[k] ? (b[k] - a[k]) / dt : 0);
    }
    return out;
  };
  for (const n of nodes) {
    const row = h('div', { class: 'node', 'data-addr': n.addr, 'data-up': String(n.up) }, box);
    tip(h('span', { class: n.up ? 'dot' : 'dot down' }, row), n.up ? 'up' : 'down');
    h('span', { class: 'addr' }, row, n.addr + (n.discovered ? ' (nsqlookupd)' : '') + (n.draining ? ' draining' : ''));
    const pub = series(n.addr, 'published');
    spark(row, pub, 'line-out', 'published/s');
    const err = series(n.addr, 'errors');
    spark(row, err, err.some((v) => v > 0) ? 'line-bad' : 'grid', 'failed tries/s');
    const sub = h('span', { class: 'sub' }, row,
      (n.up ? 'up' : 'DOWN') + ' · ' + (n.in_flight || 0) + ' batches in flight · ' + fmtNum(pub.length ? pub[pub.length - 1] : 0) +
      ' msg/s · ' + fmtNum(n.published) + ' published · ');
    h('span', { class: n.errors ? 'err' : '' }, sub, fmtNum(n.errors || 0) + ' failed tries');
    if (n.last_error) h('span', { class: 'err' }, sub, ' · last: ' + n.last_error + (n.last_error_at ? ' (' + relTime(Date.parse(n.last_error_at)) + ')' : ''));
  }
}

// drawCluster: with --cluster-peers, one bar per peer of its pending
// messages (from its last /stats), its reachability, shards and last
// error, and the hand-off; hidden without a cluster.
function drawCluster(st) {
  const card = $('cluster-card');
  const c = st.cluster;
  card.hidden = !c;
  if (!c) return;
  const peers = c.peers || [];
  const svg = $('cluster');
  const H = 24 * Math.max(peers.length, 1) + 24;
  const w = canvas(svg, H);
  const max = Math.max(1, ...peers.map((p) => Math.max(p.pending, 0)));
  const left = 150, right = 60, bw = w - left - right;
  peers.forEach((p, i) => {
    const y = 8 + i * 24;
    s('text', { x: left - 8, y: y + 14, 'text-anchor': 'end', class: 'axis' }, svg, p.address + (p.self ? ' (self)' : ''));
    const v = Math.max(p.pending, 0);
    tip(s('rect', { x: left, y: y, width: Math.max(1, bw * v / max), height: 16, class: p.reachable ? 'bar' : 'bar bad' }, svg),
      p.address + ': ' + (p.pending < 0 ? 'pending unknown' : fmtNum(p.pending) + ' pending'));
    s('text', { x: left + bw * v / max + 6, y: y + 13, class: 'axis' }, svg, p.pending < 0 ? '?' : fmtNum(p.pending));
  });
  const box = $('cluster-peers');
  box.replaceChildren();
  for (const p of peers) {
    const row = h('div', { class: 'node', 'data-peer': p.address, 'data-reachable': String(p.reachable) }, box);
    tip(h('span', { class: p.reachable ? 'dot' : 'dot down' }, row), p.reachable ? 'reachable' : 'unreachable');
    h('span', { class: 'addr' }, row, p.address + (p.self ? ' (self)' : ''));
    const sub = h('span', { class: 'sub' }, row, (p.reachable ? 'reachable' : 'UNREACHABLE') + ' · ' + (p.shards || []).length + ' shards');
    if (p.last_error) h('span', { class: 'err' }, sub, ' · last: ' + p.last_error);
  }
  const ho = c.handoff || {};
  h('p', { class: 'note' }, box, 'forwarded ' + fmtNum(c.forwarded || 0) + ' · owner unavailable ' + fmtNum(c.owner_unavailable || 0) +
    ' · hand-off: ' + fmtNum(ho.moved || 0) + ' moved, ' + (ho.done ? 'done' : fmtNum(ho.remaining || 0) + ' remaining'));
}

function facts(dl, pairs) {
  dl.replaceChildren();
  for (const [k, v, cls] of pairs) {
    h('dt', {}, dl, k);
    h('dd', cls ? { class: cls } : {}, dl, v);
  }
}

// drawJournal: a bar of the segments' bytes on disk with the live part in
// green (the rest is reclaimed as segments empty), and the figures.
function drawJournal(st) {
  const j = st.journal || {}, r = st.recovery || {};
  const svg = $('journal-bar');
  const w = canvas(svg, 46);
  const disk = j.disk_bytes || 0, live = Math.min(j.live_bytes || 0, disk || j.live_bytes || 0);
  const X = (v) => 4 + (w - 8) * (disk > 0 ? v / disk : 0);
  tip(s('rect', { x: 4, y: 4, width: w - 8, height: 18, rx: 3, class: 'disk' }, svg), fmtBytes(disk) + ' on disk');
  tip(s('rect', { x: 4, y: 4, width: Math.max(disk ? 2 : 0, X(live) - 4), height: 18, rx: 3, class: 'live' }, svg), fmtBytes(live) + ' live');
  s('text', { x: 4, y: 38, class: 'axis' }, svg, 'live ' + fmtBytes(live));
  s('text', { x: w - 4, y: 38, 'text-anchor': 'end', class: 'axis' }, svg, fmtBytes(disk) + ' in ' + (j.segments || 0) + ' segments');
  const fsync = info ? info.fsync + (info.fsync === 'interval' ? ' (every ' + info.fsync_interval + ')' : '') : '…';
  facts($('journal'), [
    ['writable', j.writable === false ? 'NO, read-only since ' + fmtTime(Date.parse(j.read_only_since)) : 'yes', j.writable === false ? 'err' : ''],
    ['fsync', fsync],
    ['segments', fmtNum(j.segments)],
    ['on disk', fmtBytes(j.disk_bytes)],
    ['live', fmtNum(j.live) + ' messages, ' + fmtBytes(j.live_bytes)],
    ['appends · fsyncs', fmtNum(j.appends) + ' · ' + fmtNum(j.fsyncs)],
    ['write errors · corrupt', fmtNum(j.write_errors) + ' · ' + fmtNum(j.corrupt), (j.write_errors || j.corrupt) ? 'err' : ''],
  ]);
  const corrupt = r.corrupt || [];
  facts($('recovery'), [
    ['replayed', fmtNum(r.segments) + ' segments, ' + fmtBytes(r.bytes) + ' in ' + fmtDur((r.duration_ns || 0) / 1e6)],
    ['records · live', fmtNum(r.records) + ' · ' + fmtNum(r.live)],
    ['torn tails', fmtNum(r.torn_tails) + (r.truncated_bytes ? ' (' + fmtBytes(r.truncated_bytes) + ' cut)' : '')],
    ['corrupt', corrupt.length ? corrupt.join('; ') : 'none', corrupt.length ? 'err' : ''],
  ]);
}

function drawSummary(st, rate) {
  const d = st.due || {};
  $('sum-pending').textContent = fmtNum(st.pending);
  $('sum-overdue').textContent = fmtNum(d.overdue || 0);
  $('sum-overdue').classList.toggle('warn', (d.overdue || 0) > 0);
  $('sum-oldest').textContent = d.oldest_overdue_seconds ? fmtDur(d.oldest_overdue_seconds * 1000) : '–';
  $('sum-oldest').classList.toggle('warn', d.oldest_overdue_seconds > 1);
  $('sum-in').textContent = fmtNum(rate ? rate.in : d.accepted_per_second);
  $('sum-out').textContent = fmtNum(rate ? rate.out : d.published_per_second);
  $('sum-uptime').textContent = fmtDur((st.uptime_seconds || 0) * 1000);
}

function syncTopicSelect(st) {
  const sel = $('pending-topic');
  const want = Object.keys(st.pending_by_topic || {}).sort();
  const have = Array.from(sel.options).slice(1).map((o) => o.value);
  if (sel.value && !want.includes(sel.value)) want.push(sel.value);
  want.sort();
  if (want.join('\n') === have.join('\n')) return;
  const keep = sel.value;
  sel.replaceChildren();
  h('option', { value: '' }, sel, 'all topics');
  for (const t of want) h('option', { value: t }, sel, t);
  sel.value = keep;
}

// ---- requests ----

// api sends a request to deferd; state-changing ones carry X-Deferd-UI: 1,
// which deferd asks of every browser's POST /cancel and /reschedule.
async function api(method, path) {
  const opts = { method, cache: 'no-store', credentials: 'omit' };
  if (method !== 'GET') opts.headers = { 'X-Deferd-UI': '1' };
  const r = await fetch(path, opts);
  const text = await r.text();
  let body = text;
  try { body = JSON.parse(text); } catch (e) { /* "OK" */ }
  return { status: r.status, body, message: (body && body.message) || text };
}

async function tick() {
  try {
    if (!info) {
      const r = await api('GET', '/info');
      if (r.status === 200) {
        info = r.body;
        $('version').textContent = 'v' + info.version + ' · ' + (info.http_address || location.host);
      }
    }
    const r = await api('GET', '/stats');
    if (r.status !== 200) throw new Error('/stats: ' + r.status + ' ' + r.message);
    const st = r.body;
    lastStats = st;
    const nodes = {};
    for (const n of st.egress || []) nodes[n.addr] = { published: n.published, errors: n.errors };
    ring.push({ t: Date.now(), accepted: st.accepted, published: st.published, nodes });
    while (ring.length > RING + 1) ring.shift();
    let rate = null;
    if (ring.length > 1) {
      const a = ring[ring.length - 2], b = ring[ring.length - 1], dt = (b.t - a.t) / 1000;
      if (dt > 0 && b.accepted >= a.accepted) rate = { in: (b.accepted - a.accepted) / dt, out: (b.published - a.published) / dt };
    }
    const conn = $('conn');
    conn.textContent = 'live · ' + new Date().toLocaleTimeString();
    conn.className = 'pill ok';
    drawAll(st, rate);
    syncTopicSelect(st);
    await loadPending();
  } catch (e) {
    const conn = $('conn');
    conn.textContent = 'unreachable: ' + e.message;
    conn.className = 'pill bad';
  }
}

function drawAll(st, rate) {
  for (const f of [() => drawSummary(st, rate), () => drawTopics(st), () => drawDue(st), drawRates,
    () => drawLateness(st), () => drawEgress(st), () => drawCluster(st), () => drawJournal(st)]) {
    try { f(); } catch (e) { console.error(e); }
  }
  if (current) drawTimeline(current.msg);
}

// ---- lookup, cancel, reschedule ----

function status(el, text, ok) {
  el.textContent = text;
  el.className = 'status ' + (ok === true ? 'ok' : ok === false ? 'bad' : '');
}

async function lookup(kind, value, note) {
  const msgStatus = $('msg-status');
  value = value.trim();
  if (!value) { status(msgStatus, 'enter an id or a key', false); return; }
  const r = await api('GET', '/message?' + kind + '=' + encodeURIComponent(value));
  if (r.status !== 200) {
    $('msg').hidden = true;
    current = null;
    status(msgStatus, (note ? note + '; ' : '') + kind + ' ' + value + ': ' + (r.status === 404 ? 'no such message pending (404 NOT_FOUND)' : r.status + ' ' + r.message), note ? true : false);
    return;
  }
  const m = r.body;
  current = { ref: m.key ? 'key=' + encodeURIComponent(m.key) : kind + '=' + encodeURIComponent(value), msg: m };
  $('msg').hidden = false;
  $('msg-topic').textContent = m.topic;
  const st = $('msg-state');
  st.replaceChildren();
  h('span', { class: 'state ' + m.state }, st, m.state);
  const due = $('msg-due');
  due.textContent = fmtTime(m.due_ms) + ' (' + relTime(m.due_ms) + ')';
  due.setAttribute('data-due-ms', m.due_ms);
  $('msg-accepted').textContent = m.accepted_ms ? fmtTime(m.accepted_ms) + ' (' + relTime(m.accepted_ms) + ')' : 'unknown';
  $('msg-key').textContent = m.key;
  $('msg-id').textContent = m.id || '(none)';
  $('msg-size').textContent = fmtBytes(m.size);
  $('msg-attempts').textContent = String(m.attempts);
  const pendingNow = m.state === 'pending';
  for (const b of ['btn-runnow', 'btn-cancel', 'btn-resched']) $(b).disabled = !pendingNow;
  $('confirm-cancel').hidden = true;
  drawTimeline(m);
  status(msgStatus, note || '', note ? true : undefined);
}

// drawTimeline: accepted, now and due on one line.
function drawTimeline(m) {
  const svg = $('msg-timeline');
  const w = canvas(svg, 40);
  const now = Date.now();
  const pts = [['accepted', m.accepted_ms], ['now', now], ['due', m.due_ms]].filter((p) => p[1]);
  const lo = Math.min(...pts.map((p) => p[1])), hi = Math.max(...pts.map((p) => p[1]));
  const X = (t) => 40 + (w - 80) * (hi > lo ? (t - lo) / (hi - lo) : 0.5);
  s('line', { x1: 40, x2: w - 40, y1: 14, y2: 14, class: 'track' }, svg);
  for (const [name, t] of pts) {
    s('circle', { cx: X(t), cy: 14, r: 5, class: name === 'due' ? (t < now ? 'dot-warn' : 'dot-out') : name === 'now' ? 'dot-in' : 'dot-grey' }, svg);
    // accepted below, starting at its dot; due below, ending at it; now
    // above, so that close ones do not overlap.
    const anchor = name === 'accepted' ? 'start' : name === 'due' ? 'end' : 'middle';
    s('text', { x: X(t) + (name === 'accepted' ? -5 : name === 'due' ? 5 : 0), y: name === 'now' ? 7 : 34, 'text-anchor': anchor, class: 'axis' }, svg, name);
  }
}

async function act(method, path, done) {
  const msgStatus = $('msg-status');
  const r = await api(method, path);
  if (r.status !== 200) { status(msgStatus, path.split('?')[0] + ': ' + r.status + ' ' + r.message, false); return false; }
  await lookup(current.ref.split('=')[0], decodeURIComponent(current.ref.slice(current.ref.indexOf('=') + 1)), done);
  tick();
  return true;
}

function setup() {
  $('lookup-form').addEventListener('submit', (e) => {
    e.preventDefault();
    lookup($('lookup-kind').value, $('lookup-input').value);
  });
  $('btn-runnow').addEventListener('click', () => {
    if (current) act('POST', '/reschedule?' + current.ref + '&defer=0', 'sent to run now');
  });
  $('btn-cancel').addEventListener('click', () => { $('confirm-cancel').hidden = false; });
  $('btn-cancel-no').addEventListener('click', () => { $('confirm-cancel').hidden = true; });
  $('btn-cancel-yes').addEventListener('click', () => {
    $('confirm-cancel').hidden = true;
    if (current) act('POST', '/cancel?' + current.ref, 'cancelled');
  });
  $('resched-kind').addEventListener('change', () => {
    const at = $('resched-kind').value === 'at';
    $('resched-defer').hidden = at;
    $('resched-at').hidden = !at;
    if (at && !$('resched-at').value && current) {
      const d = new Date(Math.max(current.msg.due_ms, Date.now()));
      $('resched-at').value = d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + 'T' + pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
    }
  });
  $('resched-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (!current) return;
    let q;
    if ($('resched-kind').value === 'at') {
      const t = new Date($('resched-at').value).getTime();
      if (isNaN(t)) { status($('msg-status'), 'pick a time', false); return; }
      q = 'at=' + t;
    } else {
      const v = $('resched-defer').value.trim();
      if (!/^\d+$/.test(v)) { status($('msg-status'), 'defer is whole milliseconds, 0 or more', false); return; }
      q = 'defer=' + v;
    }
    act('POST', '/reschedule?' + current.ref + '&' + q, 'rescheduled');
  });
  $('pending-topic').addEventListener('change', pendingFirst);
  $('pending-first').addEventListener('click', pendingFirst);
  $('pending-next').addEventListener('click', () => {
    if (!pendingState.next) return;
    pendingState.after = pendingState.next;
    pendingState.page++;
    loadPending();
  });
  window.addEventListener('resize', () => { if (lastStats) drawAll(lastStats, null); });
  tick();
  setInterval(tick, REFRESH_MS);
}

// ---- next due (GET /pending, paged by its cursor) ----

function pendingFirst() {
  pendingState.topic = $('pending-topic').value;
  pendingState.after = '';
  pendingState.page = 1;
  loadPending();
}

async function loadPending() {
  const ps = pendingState;
  let q = '/pending?limit=' + PAGE;
  if (ps.topic) q += '&topic=' + encodeURIComponent(ps.topic);
  if (ps.after) q += '&after=' + encodeURIComponent(ps.after);
  const r = await api('GET', q);
  const tbody = $('pending-table').tBodies[0];
  if (r.status !== 200) {
    status($('pending-status'), '/pending: ' + r.status + ' ' + r.message, false);
    if (r.status === 400 && ps.after) { ps.after = ''; ps.page = 1; } // a cursor of an earlier process
    return;
  }
  const msgs = r.body.messages || [];
  ps.next = r.body.cursor || '';
  tbody.replaceChildren();
  const now = Date.now();
  for (const m of msgs) {
    const tr = h('tr', { class: 'click', 'data-key': m.key }, tbody);
    tr.title = 'look up ' + m.key;
    h('td', {}, tr, fmtTime(m.due_ms));
    h('td', { class: m.due_ms < now ? 'err' : '' }, tr, m.due_ms < now ? 'overdue ' + fmtDur(now - m.due_ms) : fmtDur(m.due_ms - now));
    h('td', {}, tr, m.topic);
    h('td', {}, tr, m.key);
    h('td', {}, tr, m.id || '');
    h('td', { class: 'num' }, tr, fmtBytes(m.size));
    tr.addEventListener('click', () => {
      $('lookup-kind').value = 'key';
      $('lookup-input').value = m.key;
      lookup('key', m.key);
    });
  }
  $('pending-next').disabled = !ps.next;
  $('pending-page').textContent = 'page ' + ps.page + (ps.topic ? ' of ' + ps.topic : '') + ' · ' + msgs.length + ' shown' + (ps.next ? ', more after' : ', the end');
  status($('pending-status'), msgs.length ? '' : 'nothing pending' + (ps.topic ? ' in ' + ps.topic : ''));
}

document.addEventListener('DOMContentLoaded', setup);
