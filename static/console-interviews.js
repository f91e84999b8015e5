// The Interviews view: GET /api/interviews (candidate, status, created, started, time
// used, recording), the form that creates one (POST /api/interviews) and shows its
// candidate link, Copy link, New link (POST /api/interviews/{id}/invite: the old link stops
// working) and Cancel (POST /api/interviews/{id}/cancel), both after asking; Delete
// interview and Delete candidate (erasure: console-erasure.js) on every row.
//
// The candidate link is in the create answer only (the relay keeps the invite hashed), so
// the console keeps the links it created in this tab's sessionStorage, next to the token
// (which opens far more than a link does), and forgets them on sign-out.
//
// A list item carries no recording: the Recording column asks GET /api/recordings
// ?interview_id= for the interviews that have started, again only while the interview or
// its recording can still change.

import { credential, api, newIdempotencyKey } from "./console-api.js";
import { confirmAction } from "./console-confirm.js";
import { $, clearRefreshError, el, fmtDateTime, fmtSeconds, setStatus, showError, timeEl } from "./console-core.js";
import { eraseCandidate, eraseInterview } from "./console-erasure.js";
import { PagedList } from "./console-list.js";

const LINKS_KEY = "relayConsoleLinks";
// Whose failure the refresh line says when the Recording column's requests fail.
const RECORDINGS_REFRESHER = "interview-recordings";
const OPEN = new Set(["scheduled", "in_progress"]);
const SETTLED_RECORDING = new Set(["ready", "failed", "deleted"]);
const STATUS_TEXT = {
  scheduled: "scheduled", in_progress: "in progress", completed: "completed",
  expired: "expired", cancelled: "cancelled", failed: "failed",
};
// Where the API names a field of the form (error.errors[].field).
const FIELDS = {
  "candidate.email": "iv-email", "candidate.name": "iv-name", instructions: "iv-instructions",
  voice: "iv-voice", language: "iv-language", max_duration_s: "iv-minutes", expires_at: "iv-expires",
};

let list = null;
let onError = () => {};
const recordings = new Map(); // interview id -> {items, settled}
const asking = new Set();
let createKey = null;

// ------------------------------------------------------------------ links
function links() {
  try { return JSON.parse(sessionStorage.getItem(LINKS_KEY) || "{}") || {}; } catch (_) { return {}; }
}
function keepLink(id, url) { sessionStorage.setItem(LINKS_KEY, JSON.stringify({ ...links(), [id]: url })); }
export function forgetLinks() { sessionStorage.removeItem(LINKS_KEY); recordings.clear(); }

async function copyLink(url, what) {
  try {
    await navigator.clipboard.writeText(url);
    setStatus(`Link copied: ${what}.`);
  } catch (_) {
    // No clipboard (an insecure origin, a refusal): the link, selected, to copy by hand.
    showCreated(null, url);
    $("created-link").select();
    setStatus("Copying was refused by the browser: the link is selected, press Ctrl+C (⌘C) to copy it.");
  }
}

// ------------------------------------------------------------------ list
function candidateCell(iv) {
  const c = iv.candidate || {};
  return el("td", { className: "candidate" }, [
    c.name ? el("strong", { text: c.name }) : null,
    el("span", { className: "email", text: c.email || "–" }),
  ]);
}

function statusBadge(status, text) {
  return el("span", { className: `badge status-${status}`, text: text || STATUS_TEXT[status] || status });
}

function durationText(iv) {
  const budget = Math.round(iv.max_duration_s / 60);
  return `${fmtSeconds(iv.used_seconds)} of ${budget} min`;
}

function recordingCell(iv) {
  const td = el("td", { className: "recording" });
  if (!iv.recording) { td.textContent = "off"; return td; }
  const known = recordings.get(iv.id);
  if (!known || !known.items.length) { td.textContent = iv.started_at ? "–" : "not yet"; return td; }
  const email = (iv.candidate && iv.candidate.email) || "the candidate";
  known.items.forEach((r, i) => {
    if (i) td.append(el("br"));
    if (r.status === "ready") {
      td.append(el("a", {
        href: `#/recordings/${r.id}`, text: "Play",
        "aria-label": `Play the recording of ${email}, ${fmtDateTime(r.created_at)}`,
      }), ` ${fmtSeconds(r.duration_s)}`);
    } else {
      td.append(el("span", { className: "muted", text: r.status === "recording" || r.status === "rendering" ? `${r.status}…` : r.status }));
    }
  });
  return td;
}

function interviewRow(iv) {
  const email = (iv.candidate && iv.candidate.email) || iv.id;
  const actions = el("td", { className: "actions" });
  const url = links()[iv.id];
  if (url && OPEN.has(iv.status)) {
    const copy = el("button", { type: "button", className: "quiet", text: "Copy link", "aria-label": `Copy link for ${email}` });
    copy.dataset.link = url;
    copy.addEventListener("click", () => copyLink(url, email));
    actions.append(copy);
  }
  if (credential.canChange && OPEN.has(iv.status)) {
    const renew = el("button", { type: "button", className: "quiet", text: "New link", "aria-label": `New link for ${email}` });
    renew.addEventListener("click", () => newLink(iv, renew));
    actions.append(renew);
    const cancel = el("button", { type: "button", className: "danger", text: "Cancel", "aria-label": `Cancel the interview with ${email}` });
    cancel.addEventListener("click", () => cancelInterview(iv, cancel));
    actions.append(cancel);
  }
  if (credential.canChange) {
    const del = el("button", { type: "button", className: "danger", text: "Delete interview…", "aria-label": `Delete interview with ${email}` });
    del.addEventListener("click", () => deleteInterview(iv, del));
    actions.append(del);
    if (iv.candidate && iv.candidate.user_id !== undefined) {
      const erase = el("button", {
        type: "button", className: "danger", text: "Delete candidate…",
        "aria-label": `Delete candidate ${email} and all their data`,
      });
      erase.addEventListener("click", () => deleteCandidate(iv, erase));
      actions.append(erase);
    }
  }
  return el("tr", { "data-interview": iv.id, className: OPEN.has(iv.status) ? "" : "settled" }, [
    candidateCell(iv),
    el("td", {}, [statusBadge(iv.status)]),
    el("td", {}, [timeEl(iv.created_at)]),
    el("td", {}, [timeEl(iv.started_at)]),
    el("td", { className: "num", text: durationText(iv) }),
    recordingCell(iv),
    actions,
  ]);
}

// The recordings of the interviews on screen that may have (or still change) one.
function askRecordings(items) {
  for (const iv of items) {
    if (!iv.recording || !iv.started_at || asking.has(iv.id)) continue;
    const known = recordings.get(iv.id);
    if (known && known.settled) continue;
    asking.add(iv.id);
    api("GET", `/api/recordings?interview_id=${encodeURIComponent(iv.id)}&limit=10`)
      .then((page) => {
        const before = JSON.stringify(known ? known.items : null);
        const settled = !OPEN.has(iv.status) && page.items.every((r) => SETTLED_RECORDING.has(r.status));
        recordings.set(iv.id, { items: page.items, settled });
        clearRefreshError(RECORDINGS_REFRESHER);
        if (JSON.stringify(page.items) !== before) list.redraw();
      })
      .catch((err) => onError(err, "Could not refresh the Recording column", RECORDINGS_REFRESHER))
      .finally(() => asking.delete(iv.id));
  }
}

// A recording deleted elsewhere in the console: ask again.
export function recordingChanged(interviewId) { if (interviewId) recordings.delete(interviewId); }

async function cancelInterview(iv, button) {
  const email = (iv.candidate && iv.candidate.email) || iv.id;
  const live = iv.status === "in_progress" ? " Its live session ends now." : "";
  const yes = await confirmAction({
    title: "Cancel this interview?",
    message: `The interview with ${email} (created ${fmtDateTime(iv.created_at)}) is cancelled and its link stops working.${live} This cannot be undone.`,
    confirm: "Cancel interview",
    dismiss: "Keep it",
  });
  if (!yes) return;
  button.disabled = true;
  try {
    await api("POST", `/api/interviews/${encodeURIComponent(iv.id)}/cancel`, { idempotencyKey: newIdempotencyKey() });
    setStatus(`The interview with ${email} is cancelled.`);
    list.refresh();
  } catch (err) {
    button.disabled = false;
    onError(err, `Could not cancel the interview with ${email}`);
  }
}

// Erased: its row goes at once (the relay's lists no longer have it), its kept link and
// known recordings with it. A 404 (erased already) takes it off the screen too.
function forgetInterviews(gone) {
  const kept = links();
  for (const iv of list.items.filter(gone)) { delete kept[iv.id]; recordings.delete(iv.id); }
  sessionStorage.setItem(LINKS_KEY, JSON.stringify(kept));
  list.forget(gone);
}

async function deleteInterview(iv, button) {
  const outcome = await eraseInterview(iv, onError, button);
  if (outcome === "erased" || outcome === "gone") forgetInterviews((item) => item.id === iv.id);
}

// Every interview of the candidate goes with them.
async function deleteCandidate(iv, button) {
  const userId = iv.candidate.user_id;
  const outcome = await eraseCandidate(iv, onError, button);
  if (outcome === "erased" || outcome === "gone") {
    forgetInterviews((item) => Boolean(item.candidate) && item.candidate.user_id === userId);
  }
}

// A lost or leaked link: a new one, shown once like a created interview's.
async function newLink(iv, button) {
  const email = (iv.candidate && iv.candidate.email) || iv.id;
  const live = iv.status === "in_progress" ? " A session under way keeps running." : "";
  const yes = await confirmAction({
    title: "Make a new candidate link?",
    message: `The link of the interview with ${email} stops working at once: only the new one opens it.${live}`,
    confirm: "Make new link",
    dismiss: "Keep it",
  });
  if (!yes) return;
  button.disabled = true;
  try {
    const renewed = await api("POST", `/api/interviews/${encodeURIComponent(iv.id)}/invite`, { idempotencyKey: newIdempotencyKey() });
    showError("");
    keepLink(renewed.id, renewed.candidate_url);
    showCreated(renewed, renewed.candidate_url, "New candidate link");
    $("created").focus();
    setStatus(`New link made for ${email}; the old one no longer works.`);
    list.refresh();
  } catch (err) {
    onError(err, `Could not make a new link for ${email}`);
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ create
function fieldError(inputId, message) {
  const input = $(inputId);
  const box = $(`${inputId}-error`);
  if (message) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
  if (box) { box.textContent = message || ""; box.hidden = !message; }
}

function clearFieldErrors() { for (const id of Object.values(FIELDS)) fieldError(id, ""); }

function formBody() {
  const value = (id) => $(id).value.trim();
  const body = {
    candidate: { email: value("iv-email") },
    instructions: $("iv-instructions").value.trim(),
    recording: $("iv-recording").checked,
  };
  if (value("iv-name")) body.candidate.name = value("iv-name");
  if (value("iv-voice")) body.voice = value("iv-voice");
  if (value("iv-language")) body.language = value("iv-language");
  if (value("iv-minutes")) body.max_duration_s = Math.round(Number(value("iv-minutes")) * 60);
  // datetime-local is the person's local time; the API takes an instant.
  if (value("iv-expires")) body.expires_at = new Date(value("iv-expires")).toISOString();
  return body;
}

function checkForm() {
  clearFieldErrors();
  let first = null;
  for (const id of Object.values(FIELDS)) {
    const input = $(id);
    if (!input.checkValidity()) {
      fieldError(id, input.validationMessage);
      first = first || input;
    }
  }
  const expires = $("iv-expires").value;
  if (expires && new Date(expires).getTime() <= Date.now()) {
    fieldError("iv-expires", "Choose a time in the future.");
    first = first || $("iv-expires");
  }
  if (first) first.focus();
  return !first;
}

function showCreated(iv, url, title = "Interview created") {
  if (iv) {
    $("created-title").textContent = title;
    const c = iv.candidate || {};
    $("created-for").textContent = `For ${c.name ? `${c.name} <${c.email}>` : c.email}, until ${fmtDateTime(iv.expires_at)}.`;
  }
  $("created-link").value = url;
  $("created").hidden = false;
}

async function createInterview(event) {
  event.preventDefault();
  if (!checkForm()) return;
  const submit = $("create-submit");
  submit.disabled = true;
  // The same key while the form is unchanged: a retried submit creates nothing twice.
  createKey = createKey || newIdempotencyKey();
  try {
    const iv = await api("POST", "/api/interviews", { body: formBody(), idempotencyKey: createKey });
    createKey = null;
    showError("");
    keepLink(iv.id, iv.candidate_url);
    $("create-form").reset();
    $("create").open = false;
    showCreated(iv, iv.candidate_url);
    $("created").focus();
    setStatus(`Interview created for ${iv.candidate.email}.`);
    list.refresh();
  } catch (err) {
    const named = (err.errors || []).filter((e) => FIELDS[e.field]);
    for (const e of named) fieldError(FIELDS[e.field], e.message);
    if (named.length) $(FIELDS[named[0].field]).focus();
    onError(err, "Could not create the interview");
  } finally {
    submit.disabled = false;
  }
}

// ------------------------------------------------------------------ the view
export function installInterviews({ handleError }) {
  onError = handleError;
  list = new PagedList({
    path: "/api/interviews",
    filters: () => ({ status: $("iv-filter-status").value, email: $("iv-filter-email").value.trim() }),
    tbody: $("interviews").tBodies[0],
    empty: $("interviews-empty"),
    more: $("interviews-more"),
    row: interviewRow,
    key: (iv) => iv.id,
    // A row depends on its item, its recordings, whether its link is here, and the role.
    signature: (iv) => JSON.stringify([iv, recordings.get(iv.id), Boolean(links()[iv.id]), credential.role]),
    onError: handleError,
    afterRender: askRecordings,
  });
  $("interviews-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    list.reset();
    list.refresh();
  });
  $("create-form").addEventListener("submit", createInterview);
  // Another request: a changed form gets a new Idempotency-Key.
  $("create-form").addEventListener("input", () => { createKey = null; });
  $("created-copy").addEventListener("click", () => copyLink($("created-link").value, "the new interview"));
}

export function showInterviews() {
  $("create").hidden = !credential.canChange;
  $("read-only-note").hidden = credential.canChange;
  list.start();
}

export function hideInterviews() { if (list) list.stop(); }

export function clearInterviews() {
  if (list) list.reset();
  $("created").hidden = true;
  $("created-link").value = "";
  $("create-form").reset();
}
