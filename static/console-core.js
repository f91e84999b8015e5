// What every part of the console shares: element lookup and creation, the status line and
// the error banner, and how numbers, durations and times are written.

export const $ = (id) => document.getElementById(id);

// el("td", {className: "num", text: "3"}, [children]): properties, "data-*" and "aria-*"
// attributes, text; never innerHTML (what the API returns is data, not markup).
export function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === "text") node.textContent = v;
    else if (k === "className") node.className = v;
    else if (k.startsWith("data-") || k.startsWith("aria-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

export function setStatus(text) { $("status").textContent = text; }

// Two error lines (both alerts). #error says what an action could not do (a Cancel, a
// Delete, a form): it stays until the next action or view, so a refresh working again
// never takes away a failure the operator has not read. #refresh-error says what a
// background refresh could not do (a list, the Live view's stats), and goes as soon as the
// refresh that failed works again.
export function showError(text) {
  const box = $("error");
  box.textContent = text || "";
  box.hidden = !text;
}

// Who said what on #refresh-error: {owner, said}.
let refreshShown = null;

// `owner` names the refresher ("/api/interviews", "live"); `said` is the failure without
// its reference: said again the same way (every few seconds while the relay is down), it
// is not written again, since an alert is read out by a screen reader at every change
// (the reference changes each time). The first failure's text stays.
export function showRefreshError(owner, text, said = text) {
  if (refreshShown && refreshShown.owner === owner && refreshShown.said === said) return;
  refreshShown = { owner, said };
  const box = $("refresh-error");
  box.textContent = text;
  box.hidden = false;
}

// The refresher `owner` worked: its failure goes (another's stays). No owner: any (a new
// view, a sign-out).
export function clearRefreshError(owner) {
  if (owner !== undefined && (!refreshShown || refreshShown.owner !== owner)) return;
  refreshShown = null;
  const box = $("refresh-error");
  box.textContent = "";
  box.hidden = true;
}

// ------------------------------------------------------------------ numbers and times
const missing = (v) => v === null || v === undefined || Number.isNaN(v);

export function fmtNumber(v, digits = 0) {
  if (missing(v)) return "–";
  return Number(v).toLocaleString("en", { maximumFractionDigits: digits });
}

export function fmtBytes(v) {
  if (missing(v)) return "–";
  const units = ["B", "kB", "MB", "GB"];
  let n = v; let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${fmtNumber(n, i ? 1 : 0)} ${units[i]}`;
}

export function fmtSeconds(v) {
  if (missing(v)) return "–";
  if (v < 60) return `${fmtNumber(v, 1)} s`;
  const m = Math.floor(v / 60);
  return `${m} min ${Math.round(v - m * 60)} s`;
}

export function fmtMs(v) { return missing(v) ? "–" : `${fmtNumber(v, 1)} ms`; }

// A position in a recording: 1:05, 1:02:03.
export function fmtClock(seconds) {
  const s = Math.max(0, Math.floor(seconds || 0));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

// Unix seconds (the stats) as a local time of day.
export function fmtTime(unix) { return new Date(unix * 1000).toLocaleTimeString("en-GB"); }

// An ISO 8601 time (the management API) as a local date and time: "2 Jul 2026, 09:30".
export function fmtDateTime(iso) {
  if (!iso) return "–";
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return "–";
  return at.toLocaleString("en-GB", {
    day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit",
  });
}

// A <time> element: the local text, the exact instant in its datetime attribute.
export function timeEl(iso) {
  if (!iso) return document.createTextNode("–");
  return el("time", { dateTime: iso, text: fmtDateTime(iso), title: iso });
}

// Ids are long: the table shows their start, the whole id stays in the title and for copying.
export function shortId(id) {
  if (!id) return "–";
  const cut = id.indexOf("_") + 9;
  return id.length > cut + 1 ? `${id.slice(0, cut)}…` : id;
}
