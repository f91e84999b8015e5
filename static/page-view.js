// What the candidate sees: the page's three screens (pre-flight, call, ended), the
// connection state, the time left, and the status, error and microphone-problem lines.
// Text only ever goes in through textContent.

import { ELSEWHERE_NEXT, GO_ON_NEXT } from "./page-messages.js";

export const $ = (id) => document.getElementById(id);

// Which sections each screen shows.
const SCREENS = {
  preflight: { preflight: true, microphone: true, call: false, ended: false, elsewhere: false },
  call: { preflight: false, microphone: true, call: true, ended: false, elsewhere: false },
  ended: { preflight: false, microphone: false, call: false, ended: true, elsewhere: false },
  // A copy of a tab that runs the interview (page-tab.js): nothing but the question.
  elsewhere: { preflight: false, microphone: false, call: false, ended: false, elsewhere: true },
};

export const CONNECTION_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  ended: "Ended",
};

export function showScreen(name) {
  const from = document.body.dataset.screen;
  for (const [id, shown] of Object.entries(SCREENS[name])) $(id).hidden = !shown;
  const preflight = name === "preflight";
  $("check").hidden = !preflight;
  $("start").hidden = !preflight;
  // On the end screen only with something in it: after a reload the transcript is gone (it
  // is not kept), and a bare heading reads as if it were lost. In the call it is there from
  // the start, empty. It is no live region (see setActivity): a screen reader reads it when
  // the candidate goes there, not over the interviewer's voice.
  const transcriptEmpty = !$("transcript").querySelector("li:not([hidden])");
  $("transcript-section").hidden = preflight || name === "elsewhere" ||
    (name === "ended" && transcriptEmpty);
  $("connection").hidden = preflight || name === "elsewhere";
  if (preflight) setTitle(null);
  else if (name === "elsewhere") setTitle("open in another tab");
  // The microphone's hint ("We can hear you.") is read out in the pre-flight, where it is
  // the answer to the check. In the call it is not: Mute and Unmute say so themselves in the
  // status line, and a hint read out with it (then "Say a few words…", then "We can hear
  // you.") made two or three announcements of one press, over the interviewer's voice.
  $("heard").setAttribute("aria-live", name === "call" ? "off" : "polite");
  document.body.dataset.screen = name;
  // Into the interview: the focus went with the Start button (disabled, then hidden), and
  // left so, a screen reader says nothing and Tab starts again from the browser's toolbar.
  // The call's heading takes it: where the candidate is, then Tab to Mute and End. Not at
  // load (a rejoin): a screen reader reads a new page from its top.
  if (name === "call" && from && from !== name && focusLost()) {
    $("call-title").focus({ preventScroll: true });
  }
}

// Nothing on screen has the focus: the body has it, or what had it was hidden.
export function focusLost() {
  const el = document.activeElement;
  return !el || el === document.body || !shown(el);
}

// Whether an element is rendered. Element.checkVisibility is missing before Safari 17.4 and
// Firefox 106: there, an element that is not rendered has no boxes.
export function shown(el) {
  return el.checkVisibility ? el.checkVisibility() : el.getClientRects().length > 0;
}

// state: connecting | live | reconnecting | ended; detail: an optional second sentence.
export function setConnection(state, detail) {
  setTitle(TITLE_STATE[state]);
  const el = $("connection");
  el.dataset.state = state;
  el.textContent = detail ? `${CONNECTION_TEXT[state]} ${detail}` : CONNECTION_TEXT[state];
}

// The same text again is left alone: a live region whose text is replaced, even by the
// same words, may be read out again (a wait that says the same thing every few seconds).
export function setStatus(text) {
  $("activity").textContent = "";
  const el = $("status");
  if (el.textContent !== text) el.textContent = text;
}

// What the conversation is doing, turn by turn ("Listening…", "The interviewer is
// speaking…"): shown in the status's place, but outside its live region, and the status
// is emptied (a removal is not read out). Read out on every turn, it would talk over the
// interviewer (who is heard anyway), and a screen reader's voice from the speakers reaches
// the microphone, which sends it to the interviewer as the candidate speaking. The
// transcript is no live region for the same reason.
export function setActivity(text) {
  $("status").textContent = "";
  $("activity").textContent = text;
}

// A wait's seconds counting down (page-api.js withRetries), under the status line that
// said why, once: in the activity line, outside the live region, so that it is not read
// out every second. The next status replaces it.
export function setCountdown(text) {
  $("activity").textContent = text;
}

export function showError(text) {
  const el = $("error");
  el.textContent = text || "";
  el.hidden = !text;
}

export function showMicProblem(problem) {
  $("mic-problem").hidden = !problem;
  $("mic-problem").dataset.code = problem ? problem.code : "";
  $("mic-problem-title").textContent = problem ? problem.title : "";
  $("mic-problem-text").textContent = problem ? problem.text : "";
  const steps = $("mic-problem-steps");
  steps.replaceChildren(...(problem ? problem.steps : []).map((step) => {
    const li = document.createElement("li");
    li.textContent = step;
    return li;
  }));
  steps.hidden = !problem || problem.steps.length === 0;
}

export function formatSeconds(total) {
  const s = Math.max(0, Math.round(total));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

// "9 minutes 58 seconds": what a screen reader says for "9:58".
export function spokenSeconds(total) {
  const s = Math.max(0, Math.round(total));
  const [minutes, seconds] = [Math.floor(s / 60), s % 60];
  const unit = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  if (minutes === 0) return unit(seconds, "second");
  return seconds === 0 ? unit(minutes, "minute") :
    `${unit(minutes, "minute")} ${unit(seconds, "second")}`;
}

// Called four times a second: the text is only replaced when it changes.
export function setTimeLeft(seconds) {
  const shown = seconds === null ? "–" : formatSeconds(seconds);
  const words = seconds === null ? "" : spokenSeconds(seconds);
  if ($("time-left").textContent !== shown) $("time-left").textContent = shown;
  if ($("time-left-words").textContent !== words) $("time-left-words").textContent = words;
}

// The tab's title says where the interview is (a tab list, a window switcher), in a word.
const TITLE = "Voice interview";
const TITLE_STATE = {
  connecting: "connecting",
  live: "in progress",
  reconnecting: "reconnecting",
  ended: "ended",
};

export function setTitle(state) {
  document.title = state ? `${TITLE} — ${state}` : TITLE;
}

export function showWrapUp(text) {
  $("wrap-up").textContent = text || "";
  $("wrap-up").hidden = !text;
}

// goOn: the interview may go on (page-messages.js mayGoOn): say so and offer the button.
// next: what to say instead of the default second sentence (a refusal to go on).
export function showEnded(message, goOn = false, next = null) {
  // The question "End the interview?" has no object any more (the relay ended it, the
  // time is up…), and a modal dialog left open would keep the focus from the end screen.
  if ($("end-confirm").open) $("end-confirm").close("end");
  showScreen("ended");
  setConnection("ended");
  $("ended-title").textContent = "The interview has ended";
  $("end-reason").textContent = message;
  $("end-next").textContent = next || (goOn ? GO_ON_NEXT : "You can close this tab.");
  $("go-on").hidden = !goOn;
  $("ended-title").focus({ preventScroll: true });
}

// This tab handed the interview over to another tab (not an end of the interview).
export function showElsewhere(message) {
  showEnded(message, false, ELSEWHERE_NEXT);
  setTitle("moved to another tab");
  $("ended-title").textContent = "The interview moved to another tab";
}

// The microphone list: one option per device, the current one selected; `emptyText` says
// why there is none.
export function showDevices(devices, currentId, emptyText = "No microphone found") {
  const select = $("mic");
  select.replaceChildren(...devices.map((d, i) => {
    const option = document.createElement("option");
    option.value = d.deviceId;
    option.textContent = d.label || `Microphone ${i + 1}`;
    return option;
  }));
  if (devices.length === 0) {
    const option = document.createElement("option");
    option.value = "";
    option.textContent = emptyText;
    select.append(option);
  }
  if (currentId && devices.some((d) => d.deviceId === currentId)) select.value = currentId;
  select.disabled = devices.length === 0;
}

// The button says what it does next (a label that changes, rather than aria-pressed with a
// fixed one, reads plainly both on screen and in a screen reader).
export function setMuted(muted) {
  $("mute").dataset.muted = String(muted);
  $("mute").textContent = muted ? "Unmute microphone" : "Mute microphone";
  $("muted-note").hidden = !muted;
}
