// The candidate page: start an interview, talk, read the transcript.
// Flow: POST /api/realtime-session -> microphone -> RTCPeerConnection (audio + data
// channel "oai-events") -> POST /api/webrtc-exchange -> the relay's answer.
// Retryable errors (429/502/503/504 with retryable=true) are retried automatically,
// honouring Retry-After, a bounded number of times, with a clear message meanwhile.
"use strict";

const MAX_ATTEMPTS = 4;
const ICE_GATHER_TIMEOUT_MS = 3000;

const $ = (id) => document.getElementById(id);
const state = { pc: null, channel: null, sessionId: null, token: null, noticeShown: false };
// What the upstream is doing: generating a response (response.created .. response.done) and
// playing audio (output_audio_buffer.started .. stopped/cleared). On the real service a
// response is done long before its audio stops, so the two differ.
const reply = { responding: false, playing: false, bargeTimer: null };
// After speech_started, give the service this long to cancel/clear on its own (server VAD
// with interrupt_response does) before the page does it.
const BARGE_IN_GRACE_MS = 300;

const MESSAGES = {
  missing_token: "Please enter your interview token.",
  invalid_token: "This token is not valid. Check the link or token you were given.",
  user_inactive: "This account is not active. Please contact the recruiter.",
  no_credit: "No interview time is left on this account.",
  too_many_sessions: "An interview is already running for you. Close other tabs and retry.",
  rate_limited: "Too many attempts in a short time.",
  database_unavailable: "Our service is briefly unavailable.",
  database_timeout: "Our service is briefly slow.",
  over_capacity: "All interview rooms are busy.",
  overloaded: "The service is very busy right now.",
  draining: "The service is restarting.",
  upstream_timeout: "The interviewer is taking too long to answer.",
  upstream_error: "The interviewer service had a problem.",
  invalid_offer: "Your browser's audio setup was not accepted.",
  recording_notice_required: "Please read the recording notice above, then press Start again.",
  insecure_origin:
    "This page was opened over an insecure connection (plain http://), and browsers give " +
    "the microphone only to secure pages. Open it with an https:// address: ask whoever " +
    "sent you this link for one.",
  no_microphone_api: "This browser cannot use a microphone here. Please use a recent Chrome, " +
    "Edge, Firefox or Safari.",
};

// Browsers expose navigator.mediaDevices only in secure contexts (https://, or localhost on
// this computer): elsewhere getUserMedia does not exist and would fail with a raw
// TypeError, so say what is wrong, in plain words, before anything starts.
function microphoneUnavailable() {
  if (window.isSecureContext === false) return MESSAGES.insecure_origin;
  if (!navigator.mediaDevices || typeof navigator.mediaDevices.getUserMedia !== "function") {
    return MESSAGES.no_microphone_api;
  }
  return null;
}

function setStatus(text) { $("status").textContent = text; }
function showError(text) { const el = $("error"); el.textContent = text; el.hidden = !text; }
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class ApiFailure extends Error {
  constructor(status, body, retryAfter) {
    const err = (body && body.error) || {};
    super(MESSAGES[err.code] || err.message || `Request failed (${status}).`);
    this.status = status;
    this.code = err.code;
    this.retryable = Boolean(err.retryable);
    this.retryAfter = retryAfter;
    this.requestId = body && body.request_id;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (resp.status === 204) return null;
  let data = null;
  try { data = await resp.json(); } catch (_) { data = null; }
  if (!resp.ok) {
    const retryAfter = Number(resp.headers.get("Retry-After")) || 0;
    throw new ApiFailure(resp.status, data, retryAfter);
  }
  return data;
}

// Retry retryable failures with Retry-After (or exponential backoff), telling the candidate.
async function withRetries(label, fn) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof ApiFailure) || !err.retryable || attempt >= MAX_ATTEMPTS) throw err;
      const waitS = err.retryAfter || Math.min(8, 2 ** attempt);
      for (let left = waitS; left > 0; left--) {
        setStatus(`${err.message} Retrying ${label} in ${left} s (attempt ${attempt + 1} of ${MAX_ATTEMPTS})…`);
        await sleep(1000);
      }
    }
  }
}

function waitForIceGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    // The relay needs no trickle; a bounded wait keeps a slow STUN server from stalling us.
    setTimeout(done, ICE_GATHER_TIMEOUT_MS);
  });
}

// Transcript lines, one per conversation item, placed by the item order the service gives
// (previous_item_id), not by arrival: a candidate's transcription often lands after the
// interviewer's reply started.
const lines = new Map();

function lineFor(itemId, who, previousId) {
  let li = lines.get(itemId);
  if (li) return li;
  li = document.createElement("li");
  li.className = who;
  li.hidden = true; // until it has text
  li.dataset.text = "";
  const after = previousId ? lines.get(previousId) : null;
  if (after) after.after(li); else $("transcript").appendChild(li);
  lines.set(itemId, li);
  return li;
}

function setLineText(li, text) {
  li.dataset.text = text;
  li.textContent = `${li.className === "you" ? "You" : "Interviewer"}: ${text}`;
  li.hidden = !text;
}

function onItemAdded(event) {
  const item = event.item || {};
  if (!item.id || item.type !== "message") return;
  if (item.role === "user") lineFor(item.id, "you", event.previous_item_id);
  else if (item.role === "assistant") lineFor(item.id, "interviewer", event.previous_item_id);
}

function send(event) {
  const channel = state.channel;
  if (channel && channel.readyState === "open") channel.send(JSON.stringify(event));
}

// Stop the interviewer: cancel a response still being generated, then clear the audio still
// playing. Each only when it applies: response.cancel after response.done is an error on the
// real service, and clearing cancels nothing.
function interrupt() {
  clearTimeout(reply.bargeTimer);
  if (reply.responding) { send({ type: "response.cancel" }); reply.responding = false; }
  if (reply.playing) { send({ type: "output_audio_buffer.clear" }); reply.playing = false; }
}

function onServerEvent(event) {
  switch (event.type) {
    case "conversation.item.added":
    case "conversation.item.created":
      onItemAdded(event);
      break;
    case "conversation.item.input_audio_transcription.delta": {
      const li = lineFor(event.item_id, "you");
      setLineText(li, li.dataset.text + (event.delta || ""));
      break;
    }
    case "conversation.item.input_audio_transcription.completed":
      setLineText(lineFor(event.item_id, "you"), event.transcript || "");
      break;
    case "response.output_audio_transcript.delta":
    case "response.audio_transcript.delta": {
      const li = lineFor(event.item_id, "interviewer");
      setLineText(li, li.dataset.text + (event.delta || ""));
      break;
    }
    case "response.created":
      reply.responding = true;
      break;
    case "response.done":
      reply.responding = false;
      break;
    case "input_audio_buffer.speech_started":
      setStatus("Listening…");
      // Barge-in: if the service has not stopped the interviewer by itself, the page does.
      clearTimeout(reply.bargeTimer);
      if (reply.responding || reply.playing) reply.bargeTimer = setTimeout(interrupt, BARGE_IN_GRACE_MS);
      break;
    case "output_audio_buffer.started":
      reply.playing = true;
      setStatus("The interviewer is speaking…");
      break;
    case "output_audio_buffer.stopped":
    case "output_audio_buffer.cleared":
      reply.playing = false;
      break;
    case "error": {
      const code = event.error && event.error.code;
      // Not the candidate's concern: a refused browser event, or a cancel that raced the end.
      if (code !== "event_not_allowed" && code !== "response_cancel_not_active") {
        showError((event.error && event.error.message) || "Error.");
      }
      break;
    }
    default:
      break;
  }
}

async function start() {
  const unavailable = microphoneUnavailable();
  if (unavailable) { showError(unavailable); return; }
  showError("");
  state.token = $("token").value.trim();
  if (!state.token) { showError(MESSAGES.missing_token); return; }
  // Kept for this tab only (a reload), never in localStorage: a shared computer must not
  // hand the next person this candidate's token.
  sessionStorage.setItem("interviewToken", state.token);
  // A recorded interview starts only once its notice was on screen before Start (the relay
  // refuses it otherwise): if the notice is still loading, or appears only now, the
  // candidate reads it and presses Start again.
  const shownBefore = state.noticeShown;
  await loadNotice();
  if (state.noticeShown && !shownBefore) { showError(MESSAGES.recording_notice_required); return; }
  $("start").disabled = true;
  try {
    setStatus("Checking your access…");
    // Tells the relay whether the recording notice was on screen before Start.
    const body = { recording_notice_shown: state.noticeShown === true };
    const session = await withRetries("the session", () => api("POST", "/api/realtime-session", body));
    state.sessionId = session.session_id;
    $("simulated").hidden = !session.simulated;

    setStatus("Asking for your microphone…");
    const mic = await navigator.mediaDevices.getUserMedia({ audio: true });

    const pc = new RTCPeerConnection({ iceServers: session.ice_servers || [] });
    state.pc = pc;
    pc.addTrack(mic.getAudioTracks()[0], mic);
    pc.ontrack = (e) => { $("remote").srcObject = e.streams[0] || new MediaStream([e.track]); };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "connected") setStatus("Connected. Say hello when you are ready.");
      if (pc.connectionState === "failed") { showError("The connection was lost."); stop(); }
    };
    const channel = pc.createDataChannel("oai-events");
    state.channel = channel;
    channel.onmessage = (msg) => { try { onServerEvent(JSON.parse(msg.data)); } catch (_) { /* ignore non-JSON */ } };

    setStatus("Connecting…");
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    // A session id is usable once, so the exchange itself is not retried.
    const answer = await api("POST", "/api/webrtc-exchange", {
      session_id: state.sessionId, type: "offer", sdp: pc.localDescription.sdp,
    });
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    $("stop").disabled = false;
  } catch (err) {
    const ref = err.requestId ? ` (reference ${err.requestId})` : "";
    showError(`${err.message}${ref}`);
    await stop();
    setStatus("Not connected.");  // after stop(): nothing was running, so nothing "ended"
  } finally {
    if (!state.pc) $("start").disabled = false;
  }
}

async function stop() {
  interrupt(); // End while the interviewer speaks: stop it before hanging up
  const { pc, sessionId } = state;
  state.pc = null; state.channel = null; state.sessionId = null;
  if (pc) pc.getSenders().forEach((s) => s.track && s.track.stop());
  // Hang up through the API before closing the connection: otherwise the relay sees the
  // connection drop first and records a lost browser instead of the candidate's hang-up.
  if (sessionId) { try { await api("DELETE", `/api/sessions/${sessionId}`); } catch (_) { /* already gone */ } }
  if (pc) pc.close();
  $("stop").disabled = true;
  $("start").disabled = false;
  setStatus("Interview ended.");
}

// The token arrives in the link's fragment (#token=…), which browsers never send to a
// server; ?token=… still works for old links. Either way it is read once and removed from
// the address bar (and so from the history and from anything copied off the screen).
function tokenFromAddress() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  const token = fragment.get("token") || query.get("token");
  if (fragment.has("token") || query.has("token")) {
    fragment.delete("token");
    query.delete("token");
    const search = query.toString() ? `?${query}` : "";
    const hash = fragment.toString() ? `#${fragment}` : "";
    history.replaceState(null, "", `${location.pathname}${search}${hash}`);
  }
  return token;
}

localStorage.removeItem("interviewToken"); // written by earlier versions of this page
$("token").value = tokenFromAddress() || sessionStorage.getItem("interviewToken") || "";
$("start").addEventListener("click", start);
// The recording notice (text from the relay's config), shown before Start. Fetched once
// at load; if that failed, again at Start.
let noticeLoading = null;
function loadNotice() {
  if (!noticeLoading) {
    noticeLoading = fetch("/api/recording-notice").then((r) => {
      if (!r.ok) throw new Error(`recording notice: ${r.status}`);
      return r.json();
    }).then((n) => {
      if (!n.recording || !n.notice) return;
      $("recording-notice").textContent = n.notice;
      $("recording-notice").hidden = false;
      state.noticeShown = true;
    }).catch(() => { noticeLoading = null; /* not shown: the relay refuses a recorded start */ });
  }
  return noticeLoading;
}
// Start waits for the notice (index.html has it disabled), so it is on screen first.
loadNotice().then(() => { if (!microphoneUnavailable()) $("start").disabled = false; });
$("stop").addEventListener("click", stop);
if (microphoneUnavailable()) {
  showError(microphoneUnavailable());
  $("start").disabled = true;
  setStatus("Not available on this address.");
}
