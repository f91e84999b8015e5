// The candidate page: start an interview, talk, read the transcript.
// Flow: POST /api/realtime-session -> microphone -> RTCPeerConnection (audio + data
// channel "oai-events") -> POST /api/webrtc-exchange -> the relay's answer.
// Retryable errors (429/502/503/504 with retryable=true) are retried automatically,
// honouring Retry-After, a bounded number of times, with a clear message meanwhile.
"use strict";

const MAX_ATTEMPTS = 4;
const ICE_GATHER_TIMEOUT_MS = 3000;

const $ = (id) => document.getElementById(id);
const state = { pc: null, channel: null, sessionId: null, token: null, assistantLine: null, noticeShown: false };

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
  draining: "The service is restarting.",
  upstream_timeout: "The interviewer is taking too long to answer.",
  upstream_error: "The interviewer service had a problem.",
  invalid_offer: "Your browser's audio setup was not accepted.",
};

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

function addLine(who, text) {
  const li = document.createElement("li");
  li.className = who;
  li.textContent = `${who === "you" ? "You" : "Interviewer"}: ${text}`;
  $("transcript").appendChild(li);
  return li;
}

function onServerEvent(event) {
  switch (event.type) {
    case "conversation.item.input_audio_transcription.completed":
      addLine("you", event.transcript || "");
      break;
    case "response.output_audio_transcript.delta":
    case "response.audio_transcript.delta":
      if (!state.assistantLine) state.assistantLine = addLine("interviewer", "");
      state.assistantLine.textContent += event.delta || "";
      break;
    case "response.done":
      state.assistantLine = null;
      break;
    case "input_audio_buffer.speech_started":
      setStatus("Listening…");
      break;
    case "output_audio_buffer.started":
      setStatus("The interviewer is speaking…");
      break;
    case "error":
      if (event.error && event.error.code !== "event_not_allowed") showError(event.error.message || "Error.");
      break;
    default:
      break;
  }
}

async function start() {
  showError("");
  state.token = $("token").value.trim();
  if (!state.token) { showError(MESSAGES.missing_token); return; }
  localStorage.setItem("interviewToken", state.token);
  $("start").disabled = true;
  try {
    setStatus("Checking your access…");
    // Tells the relay whether the recording notice was on screen before Start.
    const body = { recording_notice_shown: state.noticeShown === true };
    const session = await withRetries("the session", () => api("POST", "/api/realtime-session", body));
    state.sessionId = session.session_id;

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
    setStatus("Not connected.");
    await stop();
  } finally {
    if (!state.pc) $("start").disabled = false;
  }
}

async function stop() {
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

$("token").value = new URLSearchParams(location.search).get("token") || localStorage.getItem("interviewToken") || "";
$("start").addEventListener("click", start);
// The recording notice (text from the relay's config), shown before Start.
fetch("/api/recording-notice").then((r) => (r.ok ? r.json() : null)).then((n) => {
  if (!n || !n.recording || !n.notice) return;
  $("recording-notice").textContent = n.notice;
  $("recording-notice").hidden = false;
  state.noticeShown = true;
}).catch(() => { /* no notice: the session says so */ });
$("stop").addEventListener("click", stop);
