// The candidate page: check the microphone, start the interview, talk, read the transcript.
//
// Flow: pre-flight (the recording notice, the practice banner, the credential from the link,
// microphone permission, device and level) → POST /api/realtime-session → RTCPeerConnection
// (audio + data channel "oai-events") → POST /api/webrtc-exchange → the relay's answer; a
// lost connection (or a reload) resumes through POST /api/sessions/{id}/resume
// (page-interview.js). Retryable errors (429/502/503/504 with retryable=true) are retried
// automatically, honouring Retry-After, a bounded number of times, with a clear message
// meanwhile; 409 credit_in_use (the interview open in another tab) is waited out for up to
// 90 s (page-api.js WAIT_BOUND_S). An end that was not the interview's (the interviewer's
// service or the relay failed) is followed by a new session of it, by itself
// (page-interview.js rejoin()). A copy of a tab that runs the interview (Chrome's
// "Duplicate tab") asks before taking it over (page-tab.js).

import { ApiFailure } from "./page-api.js";
import { Interview } from "./page-interview.js";
import {
  API_MESSAGES, CREDIT_STILL_IN_USE, LINK_REFUSED, OPEN_ELSEWHERE_TEXT, OPEN_ELSEWHERE_TITLE,
  endMessage, mayGoOn, microphoneProblem,
} from "./page-messages.js";
import {
  LevelMeter, Microphone, microphonePermission, microphoneUnavailable,
} from "./page-microphone.js";
import { credentialFromAddress, forgetLegacyStorage, store } from "./page-storage.js";
import { Tabs } from "./page-tab.js";
import { Transcript } from "./page-transcript.js";
import * as view from "./page-view.js";

const { $ } = view;

// No sound this long after the check started: say what to try.
const NOT_HEARD_HINT_MS = 6000;
const NOT_HEARD = "We cannot hear you yet. Speak up, or choose another microphone.";

const page = {
  token: null, // the credential: a user token or an invite token
  fromLink: false, // it came with the link (no field to type it into)
  noticeShown: false, // the recording notice was on screen before Start
  heard: false,
  notHeardTimer: null,
  checking: null, // the microphone check in progress
};

const mic = new Microphone();
const meter = new LevelMeter($("level"), onHeard);
const transcript = new Transcript($("transcript"));
const interview = new Interview({
  mic,
  transcript,
  token: () => page.token,
  onCreated: (session) => {
    // Kept for this tab only (a reload), never in localStorage.
    store.setToken(page.token);
    store.clearEnded();
    $("simulated").hidden = !session.simulated;
    $("stop").disabled = false;
    $("mute").disabled = false;
  },
  onRemoteStream: playInterviewer,
  onEnded: () => { meter.detach(); $("stop").disabled = true; $("mute").disabled = true; },
});

// ------------------------------------------------------------------ microphone check

// The microphone's hint beside the meter is the check's one voice in the pre-flight (a
// live region there, page-view.js showScreen): each state of the check (checking, ready,
// heard, not heard yet) is said once, there, and the status line says nothing of it (the
// two together were read out one after the other, four announcements for one check). In
// the call the hint is on screen only.
function setHint(text, heard = false) {
  $("heard").dataset.heard = String(heard);
  $("heard").textContent = text;
}

function onHeard() {
  if (page.heard) return;
  page.heard = true;
  clearTimeout(page.notHeardTimer);
  setHint("We can hear you.", true);
}

// The microphone is ready (just opened, or unmuted): the hint asks for a few words.
function listenForVoice() {
  page.heard = false;
  setHint("Say a few words: the bar moves when we can hear you.");
  clearTimeout(page.notHeardTimer);
  page.notHeardTimer = setTimeout(() => {
    if (page.heard || mic.muted) return;
    setHint(NOT_HEARD);
    // In the interview the hint is not read out: this is, in the status line (after
    // "Microphone on."), as a candidate who cannot see the meter must know it.
    if (interview.phase === "live") view.setStatus(NOT_HEARD);
  }, NOT_HEARD_HINT_MS);
}

async function showDevices() {
  try {
    view.showDevices(await mic.devices(), mic.deviceId);
  } catch (_) {
    view.showDevices([], null);
  }
}

// Opens the microphone (the one chosen before, if any) and shows its level. True when it
// is ready; otherwise the problem is on screen with what to do.
function checkMicrophone(deviceId) {
  if (!page.checking) {
    page.checking = openMicrophone(deviceId).finally(() => { page.checking = null; });
  }
  return page.checking;
}

async function openMicrophone(deviceId) {
  const unavailable = microphoneUnavailable();
  if (unavailable) { view.showMicProblem(microphoneProblem(unavailable)); return false; }
  clearTimeout(page.notHeardTimer);
  setHint("Checking your microphone…");
  let track;
  try {
    track = await mic.open(deviceId || store.microphone() || undefined);
  } catch (err) {
    meter.detach();
    const problem = microphoneProblem(err);
    // The problem's alert says it (with what to do); the hint, emptied, adds nothing (a
    // removal is not read out).
    view.showMicProblem(problem);
    setHint("");
    // Without the permission the browser lists devices without names: no choice to offer.
    if (problem.code === "denied") view.showDevices([], null, "Microphone blocked");
    else await showDevices();
    return false;
  }
  track.onended = onMicrophoneLost;
  view.showMicProblem(null);
  meter.attach(mic.stream);
  listenForVoice();
  await showDevices();
  return true;
}

function microphoneReady() {
  return Boolean(mic.track && mic.track.readyState === "live");
}

// The device went away (unplugged, or the permission withdrawn).
async function onMicrophoneLost() {
  if (interview.phase === "ended") return;
  meter.detach();
  if (await checkMicrophone("")) await interview.replaceTrack(mic.track);
}

async function chooseMicrophone() {
  const deviceId = $("mic").value;
  if (!deviceId || deviceId === mic.deviceId) return;
  store.setMicrophone(deviceId);
  if (await checkMicrophone(deviceId)) await interview.replaceTrack(mic.track);
}

function toggleMute() {
  const muted = !mic.muted;
  mic.setMuted(muted);
  view.setMuted(muted);
  view.setStatus(muted ? "Microphone muted." : "Microphone on.");
  if (muted) {
    clearTimeout(page.notHeardTimer);
    setHint("Muted: nothing you say is sent.");
  } else {
    listenForVoice();
  }
}

// ------------------------------------------------------------------ the end

// End asks first, the safe answer focused: a mistaken tap (on a phone Mute and End are
// stacked close together) would end the interview for good.
function askToEnd() {
  const confirm = $("end-confirm");
  if (!interview.holdsPage || confirm.open) return;
  confirm.returnValue = "";
  confirm.showModal();
  $("keep-talking").focus();
}

// ------------------------------------------------------------------ the interviewer's voice

const SOUND_BLOCKED =
  "Your browser blocked the interviewer’s voice: press “Play the interviewer’s voice” to hear it.";

function playInterviewer(stream) {
  const audio = $("remote");
  audio.srcObject = stream;
  // A browser that blocks sound until the candidate clicks (after a reload, say) gets a
  // button to click. It comes with a word why (its own live region: the status line is
  // replaced by "Reconnected." a moment later) and takes the focus, so that a keyboard or
  // screen reader user, who hears nothing either, is on it at once.
  audio.play().then(soundPlaying, () => {
    $("play").hidden = false;
    $("play-note").textContent = SOUND_BLOCKED;
    $("play").focus();
  });
}

function soundPlaying() {
  const had = document.activeElement === $("play");
  $("play").hidden = true;
  $("play-note").textContent = "";
  // The button went away with the focus: back to the call's heading (then Mute and End).
  if (had) $("call-title").focus({ preventScroll: true });
}

// ------------------------------------------------------------------ start

// The recording notice (text from the relay's config) and whether the interviewer is the
// simulator, both shown before Start. Fetched once at load; if that failed, again at Start.
// With an interview's invite the relay answers for that interview (one may be unrecorded),
// so the invite goes along; a user token is not needed there.
const INVITE_PREFIX = "ri_";
let noticeLoading = null;
function loadNotice() {
  if (!noticeLoading) {
    const invite = page.token && page.token.startsWith(INVITE_PREFIX) ? page.token : null;
    const headers = invite ? { Authorization: `Bearer ${invite}` } : {};
    noticeLoading = fetch("/api/recording-notice", { headers }).then((r) => {
      if (!r.ok) throw new Error(`recording notice: ${r.status}`);
      return r.json();
    }).then((n) => {
      if (n.simulated) $("simulated").hidden = false;
      if (n.recording && n.notice) {
        $("recording-notice").textContent = n.notice;
        $("recording-notice").hidden = false;
        page.noticeShown = true;
      }
      describeStart();
    }).catch(() => { noticeLoading = null; /* not shown: the relay refuses a recorded start */ });
  }
  return noticeLoading;
}

// Start is described by what the candidate should know before pressing it (the practice
// banner, the recording notice): text a screen reader user who goes from control to control
// with Tab would pass by otherwise, and the relay counts the notice as seen at Start.
function describeStart() {
  const shown = ["simulated", "recording-notice"].filter((id) => !$(id).hidden);
  if (shown.length > 0) $("start").setAttribute("aria-describedby", shown.join(" "));
  else $("start").removeAttribute("aria-describedby");
}

function setStartEnabled(enabled) {
  $("start").disabled = !enabled;
  $("check").disabled = !enabled;
}

// The relay refused the credential itself (not the candidate's account or time).
function tokenRefused(err) {
  return err instanceof ApiFailure && (err.status === 401 || err.code === "insufficient_scope");
}

// A typed token that is missing or refused: the field says so (aria-invalid, described by
// the error line) and takes the focus, to be typed again; typing clears the mark.
function markTokenField(invalid) {
  const field = $("token");
  if (!invalid) {
    field.removeAttribute("aria-invalid");
    field.removeAttribute("aria-describedby");
    return;
  }
  field.setAttribute("aria-invalid", "true");
  field.setAttribute("aria-describedby", "error");
  field.focus();
}

async function start() {
  const unavailable = microphoneUnavailable();
  if (unavailable) { view.showMicProblem(microphoneProblem(unavailable)); return; }
  if (interview.phase !== "idle") return;
  view.showError("");
  const typed = !page.token;
  if (typed) {
    page.token = $("token").value.trim();
    if (!page.token) {
      page.token = null;
      view.showError(API_MESSAGES.missing_token);
      markTokenField(true);
      return;
    }
  }
  // A recorded interview starts only once its notice was on screen before Start (the relay
  // refuses it otherwise): if the notice is still loading, or appears only now, the
  // candidate reads it and presses Start again.
  const shownBefore = page.noticeShown;
  await loadNotice();
  if (page.noticeShown && !shownBefore) {
    if (typed) page.token = null;
    view.showError(API_MESSAGES.recording_notice_required);
    return;
  }
  setStartEnabled(false);
  try {
    if (!microphoneReady() && !(await checkMicrophone())) return;
    await interview.start({ noticeShown: page.noticeShown === true });
  } catch (err) {
    const refusedLink = page.fromLink && err instanceof ApiFailure && err.status === 401;
    const ref = err.requestId ? ` (reference ${err.requestId})` : "";
    let text = err.message;
    if (refusedLink) text = LINK_REFUSED;
    else if (typed && tokenRefused(err)) markTokenField(true);
    // Refused after the page's wait for the other session (or at the exchange, when two
    // pages pressed Start together, which is not waited out): the candidate decides.
    else if (err instanceof ApiFailure && err.code === "credit_in_use") text = CREDIT_STILL_IN_USE;
    view.showError(`${text}${ref}`);
    view.setStatus("Not connected.");
    $("stop").disabled = true;
    $("mute").disabled = true;
  } finally {
    if (interview.phase === "idle") {
      if (typed) page.token = null; // read from the field again next time
      setStartEnabled(true);
      // Back where it was (it went with Start, disabled meanwhile, or hidden with the call):
      // a keyboard or screen reader user is left on Start, with the error read out.
      if (view.focusLost()) $("start").focus();
    }
  }
}

// ------------------------------------------------------------------ load

// Another tab (a copy of this one) takes the interview over: this one lets it go.
const tabs = new Tabs(() => interview.handOver());

// The interview kept for a reload, after a reload: rejoin it.
function rejoinSaved(saved) {
  loadNotice();
  view.setStatus("Rejoining your interview…");
  view.showScreen("call");
  $("stop").disabled = false;
  $("mute").disabled = false;
  checkMicrophone().then((ready) => {
    if (ready) { interview.resumeStored(saved); return; }
    // The connection waits for a while: allowing the microphone and reloading rejoins it.
    view.showScreen("preflight");
    setStartEnabled(false);
    view.showError("Your interview is waiting: allow the microphone, then reload this page to rejoin it.");
  });
}

// A copy of a tab that runs the interview: it says so, and takes the interview over only
// when the candidate presses "Continue here".
function offerToContinueHere(saved) {
  view.showScreen("elsewhere");
  $("elsewhere-title").textContent = OPEN_ELSEWHERE_TITLE;
  $("elsewhere-text").textContent = OPEN_ELSEWHERE_TEXT;
  view.setStatus(OPEN_ELSEWHERE_TITLE);
  $("elsewhere-title").focus({ preventScroll: true });
  $("continue-here").addEventListener("click", async () => {
    $("continue-here").disabled = true;
    view.setStatus("Moving the interview to this tab…");
    const handed = await tabs.takeOver();
    // The other tab's session is the current one (its resume token); without an answer
    // (that tab was closed or frozen) the copy's own is tried, and the relay decides.
    const session = handed || saved;
    store.setSession(session);
    rejoinSaved(session);
  }, { once: true });
}

function init() {
  forgetLegacyStorage();
  // Decided in the background: only an interview to rejoin waits for it (below).
  const claimed = tabs.claim();
  const linked = credentialFromAddress();
  if (linked) {
    store.startOver(linked);
    page.token = linked;
    page.fromLink = true;
  } else {
    page.token = store.token();
    page.fromLink = Boolean(page.token);
  }
  $("token-field").hidden = page.fromLink;

  $("check").addEventListener("click", () => checkMicrophone());
  $("token").addEventListener("input", () => markTokenField(false));
  $("token-field").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!$("start").disabled) start();
  });
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", askToEnd);
  $("keep-talking").addEventListener("click", () => $("end-confirm").close());
  $("end-now").addEventListener("click", () => {
    $("end-confirm").close("end");
    // Ended for the candidate: the microphone is muted at once (hangUp) and stays so while
    // the hang-up may be sent again; Mute would unmute it, End would ask again.
    $("mute").disabled = true;
    $("stop").disabled = true;
    interview.hangUp();
  });
  $("end-confirm").addEventListener("close", () => {
    // Kept talking (the button, or Escape): back on End, where the candidate was.
    const stop = $("stop");
    if ($("end-confirm").returnValue !== "end" && !stop.disabled && view.shown(stop)) {
      stop.focus();
    }
  });
  // An end that was not the interview's (page-messages.js mayGoOn): back to pre-flight with
  // the same credential; Start then asks the relay for a new session of the interview.
  $("go-on").addEventListener("click", () => {
    store.clearEnded();
    location.reload();
  });
  $("mute").addEventListener("click", toggleMute);
  $("mic").addEventListener("change", chooseMicrophone);
  $("play").addEventListener("click", () => { $("remote").play().then(soundPlaying, () => {}); });
  if (navigator.mediaDevices) navigator.mediaDevices.addEventListener("devicechange", showDevices);
  window.addEventListener("beforeunload", (e) => {
    if (!interview.holdsPage) return;
    e.preventDefault();
    e.returnValue = ""; // older browsers ask only when this is set
  });
  window.addEventListener("pagehide", (e) => {
    // leave() saves too; a page kept in the back/forward cache only saves.
    if (e.persisted) interview.save();
    else interview.leave(); // tells the relay now, not ~30 s later
  });
  // A link opened in this tab while the page is already there changes only the fragment
  // (no new page load): take its credential and start afresh, unless an interview runs.
  window.addEventListener("hashchange", () => {
    if (interview.holdsPage) return;
    const token = credentialFromAddress();
    if (!token) return;
    store.startOver(token);
    location.reload();
  });

  const unavailable = microphoneUnavailable();
  if (unavailable) {
    view.showScreen("preflight");
    view.showMicProblem(microphoneProblem(unavailable));
    setStartEnabled(false);
    view.setStatus("Not available on this address.");
    loadNotice();
    return;
  }

  const saved = !linked && page.token ? store.session() : null;
  const ended = !linked ? store.ended() : null;
  if (saved) {
    // A reload during the interview: rejoin it. A copy of the tab that runs it (Chrome's
    // "Duplicate tab"): ask first. (The lock is free at once but for a copy, or for a
    // reload whose page has not quite gone yet.)
    claimed.then(() => (tabs.copyOf ? offerToContinueHere(saved) : rejoinSaved(saved)));
    return;
  }
  if (ended) {
    view.showEnded(endMessage(ended.reason, ended.message), mayGoOn(ended.reason));
    view.setStatus("Interview ended.");
    return;
  }

  view.showScreen("preflight");
  // Start waits for the notice (index.html has it disabled), so it is on screen first.
  loadNotice().then(() => { if (interview.phase === "idle") setStartEnabled(true); });
  // A microphone this site may already use is checked at once; otherwise the browser's
  // question waits for the candidate's "Check microphone" (or Start).
  microphonePermission().then((state) => {
    if (state === "granted" && interview.phase === "idle" && !mic.stream) checkMicrophone();
  });
}

init();
