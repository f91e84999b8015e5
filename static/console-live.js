// The Live view (the operator token only): polls /api/stats every 2 s and draws charts
// (plain SVG, history kept here for 15 minutes), the live and recently ended sessions and
// the state of the relay's dependencies. The cluster scope polls /api/stats?scope=cluster
// instead and draws the live members and the cluster's live sessions; the choice is kept
// in sessionStorage.

import { ApiFailure, api } from "./console-api.js";
import { confirmAction } from "./console-confirm.js";
import {
  $, clearRefreshError, el, fmtBytes, fmtMs, fmtNumber, fmtSeconds, fmtTime, setStatus, showError,
  showRefreshError,
} from "./console-core.js";

const POLL_MS = 2000;
const HISTORY_MS = 15 * 60 * 1000;
const SCOPE_KEY = "relayDashboardScope";
const SVG_NS = "http://www.w3.org/2000/svg";
const CHART_W = 300;
const CHART_H = 110;

// "generation" changes whenever polling restarts (sign-in, scope switch, refusal): an
// answer to an older request is dropped instead of drawing the other scope's data.
const state = {
  timer: null, history: [], lastErrors: null, scope: "instance", generation: 0, inFlight: null,
  onUnauthorized: () => {},
};

// Each chart: a title, a unit and the series it draws from one history sample.
const CHARTS = [
  { id: "sessions", title: "Live sessions", unit: "", series: [["live", (s) => s.live]] },
  {
    id: "admission", title: "Admission latency", unit: "ms",
    series: [["p50", (s) => s.admission_p50], ["p99", (s) => s.admission_p99]],
  },
  {
    id: "upstream", title: "Upstream latency (p50)", unit: "ms",
    series: [["mint", (s) => s.mint_p50], ["exchange", (s) => s.sdp_p50]],
  },
  { id: "cache", title: "Cache hit rate", unit: "%", series: [["hit rate", (s) => s.hit_rate]] },
  { id: "errors", title: "Errors per 2 s by code", unit: "", series: "errors" },
  { id: "cpu", title: "Relay CPU", unit: "%", series: [["cpu", (s) => s.cpu]] },
  {
    id: "lag", title: "Event-loop lag", unit: "ms",
    series: [["p99", (s) => s.lag_p99], ["max", (s) => s.lag_max]],
  },
];

// ------------------------------------------------------------------ scope and polling
function setScope(scope, { remember = true } = {}) {
  state.scope = scope === "cluster" ? "cluster" : "instance";
  if (remember) sessionStorage.setItem(SCOPE_KEY, state.scope);
  $(`scope-${state.scope}`).checked = true;
  $("instance-view").hidden = state.scope !== "instance";
  $("cluster-view").hidden = state.scope !== "cluster";
}

export function installLive({ onUnauthorized }) {
  state.onUnauthorized = onUnauthorized;
  setScope(sessionStorage.getItem(SCOPE_KEY), { remember: false });
  for (const radio of document.querySelectorAll('input[name="scope"]')) {
    // Arrow keys move through the radio group and fire "change": keyboard-usable as is.
    radio.addEventListener("change", () => {
      if (!radio.checked || radio.value === state.scope) return;
      setScope(radio.value);
      if (state.timer) startLive();
    });
  }
}

export function stopLive() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
  state.generation += 1;
  $("updated").textContent = "";
}

// The Live view refreshes every POLL_MS, and a live region whose text is replaced, even by
// the same words, is read out again: a screen reader would say the status (and, while the
// stats fail, the error) every 2 s. So each is set only when it says something new, and
// the refresh time goes in #updated, outside the live region.
function sayOnce(text) {
  if ($("status").textContent !== text) setStatus(text);
}

function showUpdated(at) {
  $("updated").textContent = `updated ${new Date(at).toLocaleTimeString("en-GB")}`;
}

export function startLive() {
  stopLive();
  state.history = [];
  state.lastErrors = null;
  setStatus("Loading…");
  poll();
  state.timer = setInterval(poll, POLL_MS);
}

export function clearLive() {
  stopLive();
  state.history = [];
  $("dashboard").hidden = true;
  for (const id of ["live", "ended", "instances", "cluster-sessions"]) $(id).tBodies[0].replaceChildren();
}

async function poll() {
  const gen = state.generation;
  if (state.inFlight === gen) return;
  state.inFlight = gen;
  const cluster = state.scope === "cluster";
  try {
    const stats = await api("GET", cluster ? "/api/stats?scope=cluster" : "/api/stats");
    if (gen !== state.generation) return;
    // Its own failure goes; a failed End's (the error line) stays until the next action.
    clearRefreshError("live");
    if (cluster) renderCluster(stats);
    else render(stats);
  } catch (err) {
    if (err instanceof ApiFailure && err.status === 401) state.onUnauthorized(err);
    else if (gen === state.generation) {
      // Said once while it keeps failing the same way (showRefreshError).
      showRefreshError("live", `Could not load ${cluster ? "cluster " : ""}stats: ${err.message} Retrying every ${POLL_MS / 1000} s.`);
      sayOnce("Stale: the last refresh failed.");
    }
  } finally {
    if (state.inFlight === gen) state.inFlight = null;
  }
}

// ------------------------------------------------------------------ this instance
function render(stats) {
  $("dashboard").hidden = false;
  const now = Date.now();
  sayOnce(`${stats.instance} · version ${stats.version}`);
  showUpdated(now);
  addSample(stats, now);
  renderHealth(stats);
  renderCharts();
  renderLive(stats.sessions || []);
  renderEnded(stats.recently_ended || []);
}

function addSample(stats, now) {
  const errors = stats.errors_by_code || {};
  const delta = {};
  if (state.lastErrors) {
    for (const [code, total] of Object.entries(errors)) {
      delta[code] = Math.max(0, total - (state.lastErrors[code] || 0));
    }
  }
  state.lastErrors = { ...errors };
  const up = stats.upstream || {};
  const proc = stats.process || {};
  const adm = stats.admission || {};
  const cache = stats.cache || {};
  state.history.push({
    t: now,
    live: (stats.sessions || []).length,
    admission_p50: adm.p50_ms, admission_p99: adm.p99_ms,
    mint_p50: up.mint ? up.mint.p50_ms : null, sdp_p50: up.sdp ? up.sdp.p50_ms : null,
    hit_rate: cache.hit_rate === null || cache.hit_rate === undefined ? null : cache.hit_rate * 100,
    errors: delta,
    cpu: proc.cpu_percent, lag_p99: proc.loop_lag_p99_ms, lag_max: proc.loop_lag_max_ms,
  });
  while (state.history.length && state.history[0].t < now - HISTORY_MS) state.history.shift();
}

function healthItem(name, value, level, detail) {
  return el("li", { className: `health-item ${level}`, "data-dep": name }, [
    el("span", { className: "dep", text: name }),
    el("strong", { text: value }),
    el("span", { className: "detail", text: detail || "" }),
  ]);
}

function renderHealth(stats) {
  const db = stats.database || {};
  const up = stats.upstream || {};
  const items = [
    healthItem("PostgreSQL", db.state || "unknown", db.state === "up" ? "ok" : "bad",
      db.error ? db.error : `p99 ${fmtMs(db.query && db.query.p99_ms)}`),
    healthItem("Redis", stats.redis, stats.redis === "up" ? "ok" : stats.redis === "disabled" ? "info" : "warn",
      stats.redis === "down" ? "local cache serving" : stats.redis === "disabled" ? "local cache only" : ""),
    healthItem("Upstream", up.state || "unknown",
      up.state === "down" ? "bad" : up.state === "degraded" ? "warn" : "ok",
      `${up.model} (${up.dialect}${up.simulated ? ", simulator" : ""})` +
      (up.last_outcome ? ` · last ${up.last_outcome.stage}: ${up.last_outcome.outcome}` : "")),
    healthItem("Draining", stats.draining ? "yes" : "no", stats.draining ? "warn" : "ok", ""),
  ];
  if (up.model_warning) items.push(healthItem("Model", "deprecated", "warn", up.model_warning));
  $("health").replaceChildren(...items);
}

// ------------------------------------------------------------------ charts
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function chartSeries(chart) {
  if (chart.series !== "errors") return chart.series;
  const codes = new Set();
  for (const s of state.history) for (const [code, n] of Object.entries(s.errors)) if (n > 0) codes.add(code);
  const list = [...codes].sort().slice(0, 6).map((code) => [code, (s) => s.errors[code] || 0]);
  return list.length ? list : [["none", () => 0]];
}

function ensureChart(chart) {
  let fig = $(`chart-${chart.id}`);
  if (fig) return fig;
  fig = el("figure", { id: `chart-${chart.id}`, className: "chart" });
  const caption = el("figcaption", {}, [el("span", { className: "title", text: chart.title }), el("span", { className: "now" })]);
  const plot = svg("svg", {
    viewBox: `0 0 ${CHART_W} ${CHART_H}`, preserveAspectRatio: "none", role: "img",
    "aria-label": `${chart.title}, last 15 minutes`,
  });
  fig.append(caption, plot, el("ul", { className: "legend" }));
  $("charts").append(fig);
  return fig;
}

// The x axis spans the history kept (at least a minute), up to 15 minutes: a freshly
// opened console fills its charts instead of drawing a sliver at the right edge.
const MIN_SPAN_MS = 60 * 1000;

function renderCharts() {
  const now = Date.now();
  const first = state.history.length ? state.history[0].t : now;
  const span = Math.min(HISTORY_MS, Math.max(MIN_SPAN_MS, now - first));
  const t0 = now - span;
  for (const chart of CHARTS) {
    const fig = ensureChart(chart);
    const plot = fig.querySelector("svg");
    const series = chartSeries(chart);
    let max = 0;
    for (const s of state.history) for (const [, get] of series) { const v = get(s); if (v !== null && v !== undefined) max = Math.max(max, v); }
    const top = chart.unit === "%" ? Math.max(100, max) : niceCeil(max);
    const children = [
      svg("line", { x1: 0, y1: CHART_H - 0.5, x2: CHART_W, y2: CHART_H - 0.5, class: "axis" }),
      svg("line", { x1: 0, y1: 0.5, x2: CHART_W, y2: 0.5, class: "grid" }),
    ];
    const legend = [];
    series.forEach(([name, get], i) => {
      const points = [];
      for (const s of state.history) {
        const v = get(s);
        if (v === null || v === undefined) continue;
        const x = ((s.t - t0) / span) * CHART_W;
        const y = CHART_H - (top ? (v / top) * (CHART_H - 4) : 0) - 1;
        points.push([x, y]);
      }
      const text = points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
      children.push(svg("polyline", { points: text, class: `line s${i}`, "data-series": name }));
      if (points.length) {
        const [x, y] = points[points.length - 1];
        children.push(svg("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 2.5, class: `dot s${i}` }));
      }
      const last = state.history.length ? get(state.history[state.history.length - 1]) : null;
      legend.push(el("li", { className: `s${i}` }, [el("span", { className: "swatch" }), `${name}: ${fmtNumber(last, 1)}${chart.unit ? ` ${chart.unit}` : ""}`]));
    });
    plot.replaceChildren(...children);
    plot.setAttribute("data-samples", String(state.history.length));
    const minutes = Math.max(1, Math.round(span / 60000));
    fig.querySelector(".now").textContent = `last ${minutes} min · 0–${fmtNumber(top, 1)}${chart.unit ? ` ${chart.unit}` : ""}`;
    fig.querySelector(".legend").replaceChildren(...legend);
  }
}

function niceCeil(v) {
  if (!v || v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// ------------------------------------------------------------------ sessions
function legCells(leg, dir, quality) {
  const d = dir || {};
  const q = quality || {};
  const drops = d.dropped ? Object.values(d.dropped).reduce((a, b) => a + b, 0) : null;
  return [
    el("td", { text: leg }),
    el("td", { className: "num", text: fmtNumber(d.packets_in) }),
    el("td", { className: "num", text: fmtBytes(d.bytes_in) }),
    el("td", { className: "num", text: q.packets_lost === undefined ? "–" : fmtNumber(q.packets_lost) }),
    el("td", { className: "num", text: fmtMs(q.jitter_ms) }),
    el("td", { className: "num", text: fmtMs(q.rtt_ms) }),
    el("td", { className: "num", text: fmtNumber(d.queue_depth) }),
    el("td", { className: "num", text: fmtNumber(drops) }),
    el("td", { className: "num", text: d.last_media_age_s === null || d.last_media_age_s === undefined ? "–" : fmtSeconds(d.last_media_age_s) }),
  ];
}

function endButton(s) {
  const end = el("button", { type: "button", className: "end", text: "End", "aria-label": `End session ${s.session_id}` });
  end.addEventListener("click", () => endLiveSession(s, end));
  return end;
}

function renderLive(sessions) {
  const rows = [];
  for (const s of sessions) {
    const m = s.media || {};
    const legs = m.legs || {};
    const first = [
      el("td", { rowSpan: 2, className: "id", text: s.session_id, "data-session": s.session_id }),
      el("td", { rowSpan: 2, text: s.user || "–" }),
      el("td", { rowSpan: 2, text: s.state }),
      el("td", { rowSpan: 2, className: "num", text: fmtSeconds(s.age_s) }),
      ...legCells("browser → relay", m.browser_to_upstream, legs.browser),
      el("td", { rowSpan: 2, className: "num", text: fmtMs(m.time_to_first_upstream_audio_ms) }),
      el("td", { rowSpan: 2, className: "actions" }, [endButton(s)]),
    ];
    rows.push(el("tr", { className: "session", "data-session": s.session_id }, first));
    rows.push(el("tr", { className: "leg2", "data-session": s.session_id }, legCells("upstream → relay", m.upstream_to_browser, legs.upstream)));
  }
  $("live").tBodies[0].replaceChildren(...rows);
  $("live-empty").hidden = sessions.length > 0;
  $("live-count").textContent = `(${sessions.length})`;
}

async function endLiveSession(s, button) {
  const yes = await confirmAction({
    title: "End this session?",
    message: `Session ${s.session_id} (${s.user || "unknown user"}) is live. Ending it hangs up both sides now.`,
    confirm: "End session",
  });
  if (!yes) return;
  button.disabled = true;
  try {
    await api("DELETE", `/api/sessions/${encodeURIComponent(s.session_id)}`);
    // In cluster mode the member holding the media hangs up when the command reaches it.
    setStatus(state.scope === "cluster" ? `Session ${s.session_id}: ending on its instance.` : `Session ${s.session_id} ended.`);
    poll();
  } catch (err) {
    if (err instanceof ApiFailure && err.status === 401) { state.onUnauthorized(err); return; }
    const reference = err instanceof ApiFailure && err.requestId ? ` (reference ${err.requestId})` : "";
    // On the action line: the next refresh, 2 s later, leaves it there.
    showError(`Could not end ${s.session_id}: ${err.message}${reference}`);
    button.disabled = false;
  }
}

function renderEnded(ended) {
  $("ended").tBodies[0].replaceChildren(...ended.map((e) => el("tr", { "data-session": e.session_id }, [
    el("td", { className: "id", text: e.session_id }),
    el("td", { text: e.user || "–" }),
    el("td", { text: e.state }),
    el("td", { text: e.reason }),
    el("td", { className: "num", text: fmtSeconds(e.duration_s) }),
    el("td", { text: fmtTime(e.ended_at) }),
  ])));
  $("ended-empty").hidden = ended.length > 0;
}

// ------------------------------------------------------------------ cluster
// From the members' heartbeats (relay/cluster/members.py): each instance's id, address,
// version, pid, start, draining flag, live session count, load (live / global cap) and
// heartbeat age by the database's clock; each session's id, member, masked user, state
// and age as of its member's last heartbeat.
function renderCluster(body) {
  $("dashboard").hidden = false;
  const instances = body.instances || [];
  const sessions = body.sessions || [];
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  sayOnce(`Cluster · ${plural(instances.length, "instance")} · ${plural(sessions.length, "live session")} · ` +
    `via ${body.member}`);
  showUpdated(Date.now());
  renderInstances(instances, body.member);
  renderClusterSessions(sessions);
}

function renderInstances(instances, self) {
  $("instances").tBodies[0].replaceChildren(...instances.map((m) => {
    const id = el("td", { className: "id", text: m.id });
    if (m.id === self) id.append(" ", el("span", { className: "tag", text: "this page" }));
    return el("tr", { "data-member": m.id, className: m.draining ? "draining" : "" }, [
      id,
      el("td", { text: m.address || "–" }),
      el("td", { text: m.version || "–" }),
      el("td", { className: "num", text: m.pid === null || m.pid === undefined ? "–" : String(m.pid) }),
      el("td", { className: "num", text: fmtNumber(m.live_sessions) }),
      el("td", { className: "num", text: m.load === null || m.load === undefined ? "–" : `${fmtNumber(m.load * 100, 1)} %` }),
      el("td", { text: m.draining ? "yes" : "no" }),
      el("td", { className: "num", text: m.heartbeat_age_s === undefined ? "–" : `${fmtSeconds(m.heartbeat_age_s)} ago` }),
      el("td", { text: m.started_at ? new Date(m.started_at).toLocaleString("en-GB") : "–" }),
    ]);
  }));
  $("instances-empty").hidden = instances.length > 0;
  $("instances-count").textContent = `(${instances.length})`;
}

function renderClusterSessions(sessions) {
  $("cluster-sessions").tBodies[0].replaceChildren(...sessions.map((s) => el("tr", { "data-session": s.session_id, "data-member": s.member }, [
    el("td", { className: "id", text: s.session_id }),
    el("td", { className: "id", text: s.member }),
    el("td", { text: s.user || "–" }),
    el("td", { text: s.state }),
    el("td", { className: "num", text: fmtSeconds(s.age_s) }),
    // The DELETE reaches whichever member holds the media (a cluster command).
    el("td", { className: "actions" }, [endButton(s)]),
  ])));
  $("cluster-sessions-empty").hidden = sessions.length > 0;
  $("cluster-sessions-count").textContent = `(${sessions.length})`;
}
