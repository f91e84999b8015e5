// One recording's page (#/recordings/rec_…): the stereo player, the transcript as a
// conversation (a line plays the recording from where it was said), downloads named by the
// relay (Content-Disposition), the recording's details and its interview's, with Delete
// interview and Delete candidate (console-erasure.js) for the operator token or an admin key.
//
// An <audio> element cannot send the Authorization header, so the audio is fetched with
// the token (progress shown) and played from a blob URL (the CSP allows media from blob:);
// seeking then needs no further request. The download hands the same blob to the browser
// under the relay's file name.

import { api, attachmentName, credential, readWithProgress, saveBlob } from "./console-api.js";
import { $, el, fmtBytes, fmtClock, fmtDateTime, fmtSeconds, setStatus } from "./console-core.js";
import { eraseCandidate, eraseInterview } from "./console-erasure.js";

const SPEAKERS = { candidate: "Candidate", interviewer: "Interviewer" };

// What the page shows now; `generation` drops the answers of a page already left, and
// `aborter` stops its downloads.
const EMPTY = {
  id: null, interview: null, audio: null, audioName: null, objectUrl: null, lines: [],
  transcriptText: null, transcriptName: null, aborter: null,
};
const page = { generation: 0, ...EMPTY };
let onError = () => {};

function stale(gen) { return gen !== page.generation; }

function dl(target, pairs) {
  const items = [];
  for (const [term, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    items.push(el("div", {}, [el("dt", { text: term }), el("dd", {}, [value])]));
  }
  target.replaceChildren(...items);
}

// ------------------------------------------------------------------ details
function showRecordingDetails(r) {
  const email = r.candidate_email || "unknown candidate";
  $("recording-title").textContent = `Interview with ${email}`;
  $("recording-subtitle").textContent = `Recorded ${fmtDateTime(r.created_at)} · ${fmtSeconds(r.duration_s)}`;
  document.title = `Recording of ${email} · Relay console`;
  dl($("recording-meta"), [
    ["Candidate", email],
    ["Recorded", fmtDateTime(r.created_at)],
    ["Length", fmtSeconds(r.duration_s)],
    ["Status", r.status_reason ? `${r.status} (${r.status_reason})` : r.status],
    ["File", `${r.format} · ${fmtBytes(r.bytes)}`],
    ["Recording", el("code", { text: r.id })],
    ["Session", el("code", { text: r.session_id })],
    ["Interview", r.interview_id ? el("code", { text: r.interview_id }) : "none (a user token)"],
  ]);
}

// "es" → "Spanish (es)", as far as the browser knows the language's name.
function languageName(code) {
  if (!code) return "the relay's default";
  try {
    const name = new Intl.DisplayNames(["en"], { type: "language" }).of(code);
    return name && name !== code ? `${name} (${code})` : code;
  } catch (_) { return code; }
}

function metadataValue(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

function showInterview(iv) {
  const c = iv.candidate || {};
  $("interview-meta-title").hidden = false;
  $("interview-meta").hidden = false;
  dl($("interview-meta"), [
    ["Candidate", c.name ? `${c.name} <${c.email}>` : c.email],
    ["Status", iv.end_reason ? `${iv.status.replace("_", " ")} (${iv.end_reason})` : iv.status.replace("_", " ")],
    ["Created", fmtDateTime(iv.created_at)],
    ["Started", iv.started_at ? fmtDateTime(iv.started_at) : null],
    ["Ended", iv.ended_at ? fmtDateTime(iv.ended_at) : null],
    ["Time used", `${fmtSeconds(iv.used_seconds)} of ${Math.round(iv.max_duration_s / 60)} min`],
    ["Voice", iv.voice || "the relay's default"],
    ["Language", languageName(iv.language)],
    ["Link until", fmtDateTime(iv.expires_at)],
    ["Created by", iv.created_by],
    ...Object.entries(iv.metadata || {}).map(([k, v]) => [k, metadataValue(v)]),
  ]);
  $("interview-instructions").hidden = !iv.instructions;
  $("interview-instructions-text").textContent = iv.instructions || "";
  page.interview = iv;
  $("interview-erase").hidden = !credential.canChange;
  $("erase-candidate").hidden = c.user_id === undefined;
}

// Erased from this page: the recording went with the interview, so nothing of it stays on
// screen (its audio and transcript least of all); the way back to Recordings is above.
async function erase(which, button) {
  const iv = page.interview;
  if (!iv) return;
  const gen = page.generation;
  const outcome = await which(iv, onError, button);
  if (stale(gen) || (outcome !== "erased" && outcome !== "gone")) return;
  reset();
  const email = (iv.candidate && iv.candidate.email) || iv.id;
  $("recording-title").textContent = "Deleted";
  $("recording-subtitle").textContent = which === eraseCandidate
    ? `The candidate ${email} is deleted, with all their interviews and recordings, this one included.`
    : `The interview with ${email} is deleted, with its recordings, this one included.`;
  setPlayerState("Deleted: there is nothing to play.");
  $("recording-back").focus();
}

// ------------------------------------------------------------------ audio
function setPlayerState(text) { $("player-state").textContent = text; }

async function loadAudio(r, gen) {
  setPlayerState("Loading the audio…");
  const resp = await api("GET", `/api/recordings/${encodeURIComponent(r.id)}/audio`, {
    raw: true, signal: page.aborter.signal,
  });
  const blob = await readWithProgress(resp, (got, total) => {
    if (!stale(gen)) setPlayerState(total ? `Loading the audio… ${Math.floor((got / total) * 100)} %` : `Loading the audio… ${fmtBytes(got)}`);
  });
  if (stale(gen)) return;
  page.audio = blob;
  page.audioName = attachmentName(resp, `${r.id}.${r.format}`);
  page.objectUrl = URL.createObjectURL(blob);
  const player = $("player");
  player.src = page.objectUrl;
  setPlayerState(`${fmtBytes(blob.size)} · ${fmtSeconds(r.duration_s)}`);
  $("download-audio").disabled = false;
}

// ------------------------------------------------------------------ transcript
function parseTranscript(text) {
  const lines = [];
  for (const raw of text.split("\n")) {
    if (!raw.trim()) continue;
    try {
      const line = JSON.parse(raw);
      if (line && typeof line.text === "string") lines.push(line);
    } catch (_) { /* a damaged line is skipped, the others still show */ }
  }
  return lines.sort((a, b) => (a.start || 0) - (b.start || 0));
}

function seek(start) {
  const player = $("player");
  if (!player.src) return;
  player.currentTime = start;
  player.play().catch(() => {});
}

function transcriptLine(line, index) {
  const speaker = SPEAKERS[line.speaker] || line.speaker || "Unknown";
  const start = Number(line.start) || 0;
  const at = el("button", { type: "button", className: "at" }, [
    el("span", { className: "sr-only", text: "Play from " }), fmtClock(start),
  ]);
  const item = el("li", {
    className: `turn ${line.speaker === "candidate" ? "candidate" : "interviewer"}`,
    "data-start": String(start), "data-index": String(index),
  }, [
    el("p", { className: "who" }, [
      el("span", { className: "speaker", text: speaker }), " ", at,
      // Cut short by the candidate: its text may run past what was heard (written ahead).
      ...(line.interrupted ? [" ", el("span", { className: "cut", text: "(interrupted)" })] : []),
    ]),
    el("p", { className: "text", text: line.text }),
  ]);
  // The whole line answers a click; its time is the button keyboards reach.
  item.addEventListener("click", () => seek(start));
  return item;
}

async function loadTranscript(r, gen) {
  const resp = await api("GET", `/api/recordings/${encodeURIComponent(r.id)}/transcript`, {
    raw: true, signal: page.aborter.signal,
  });
  const text = await resp.text();
  if (stale(gen)) return;
  page.transcriptName = attachmentName(resp, `${r.id}.jsonl`);
  page.transcriptText = text;
  page.lines = parseTranscript(text);
  $("transcript").replaceChildren(...page.lines.map(transcriptLine));
  $("transcript-empty").hidden = page.lines.length > 0;
  $("download-transcript").disabled = false;
}

// The line being said now is marked while the recording plays.
function markCurrent() {
  const t = $("player").currentTime;
  let current = -1;
  page.lines.forEach((line, i) => { if ((Number(line.start) || 0) <= t + 0.05) current = i; });
  for (const item of $("transcript").children) {
    const on = Number(item.dataset.index) === current;
    item.classList.toggle("current", on);
    if (on) item.setAttribute("aria-current", "true");
    else item.removeAttribute("aria-current");
  }
}

// ------------------------------------------------------------------ the page
function reset() {
  page.generation += 1;
  if (page.aborter) page.aborter.abort();
  if (page.objectUrl) URL.revokeObjectURL(page.objectUrl);
  Object.assign(page, { ...EMPTY, lines: [] });
  const player = $("player");
  player.pause();
  player.removeAttribute("src");
  player.load();
  for (const id of ["recording-meta", "interview-meta", "transcript"]) $(id).replaceChildren();
  $("interview-meta-title").hidden = true;
  $("interview-meta").hidden = true;
  $("interview-instructions").hidden = true;
  $("interview-erase").hidden = true;
  $("transcript-empty").hidden = true;
  $("download-audio").disabled = true;
  $("download-transcript").disabled = true;
  $("recording-title").textContent = "Recording";
  $("recording-subtitle").textContent = "";
  setPlayerState("");
}

export async function showRecording(id) {
  reset();
  page.id = id;
  page.aborter = new AbortController();
  const gen = page.generation;
  try {
    const r = await api("GET", `/api/recordings/${encodeURIComponent(id)}`);
    if (stale(gen)) return;
    showRecordingDetails(r);
    setStatus(`Recording of ${r.candidate_email || "unknown candidate"}, ${fmtDateTime(r.created_at)}.`);
    if (r.interview_id) {
      api("GET", `/api/interviews/${encodeURIComponent(r.interview_id)}`)
        .then((iv) => { if (!stale(gen)) showInterview(iv); })
        .catch((err) => { if (!stale(gen)) onError(err, "Could not load the interview"); });
    }
    if (r.status !== "ready") {
      setPlayerState(`This recording is ${r.status}: there is nothing to play.`);
      $("transcript-empty").hidden = false;
      return;
    }
    await Promise.all([loadAudio(r, gen), loadTranscript(r, gen)]);
  } catch (err) {
    if (!stale(gen)) onError(err, "Could not load the recording");
  }
}

export function hideRecording() { reset(); document.title = "Relay console"; }

export function installRecording({ handleError }) {
  onError = handleError;
  $("erase-interview").addEventListener("click", (event) => erase(eraseInterview, event.currentTarget));
  $("erase-candidate").addEventListener("click", (event) => erase(eraseCandidate, event.currentTarget));
  $("player").addEventListener("timeupdate", markCurrent);
  $("player").addEventListener("seeked", markCurrent);
  $("download-audio").addEventListener("click", () => {
    if (page.audio) saveBlob(page.audio, page.audioName);
  });
  $("download-transcript").addEventListener("click", () => {
    if (page.transcriptText !== null) {
      saveBlob(new Blob([page.transcriptText], { type: "application/x-ndjson" }), page.transcriptName);
    }
  });
}
