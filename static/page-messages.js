// Every sentence the candidate page shows, in one place: the relay's error codes, the reasons
// an interview ends, and what to do about a microphone problem.

// The relay's JSON error codes (relay/errors.py and the routes), in the candidate's words.
export const API_MESSAGES = {
  missing_token: "Please enter your interview token.",
  invalid_token: "This token is not valid. Check the link or token you were given.",
  // A valid credential that is not a candidate's (an API key, the operator token).
  insufficient_scope: "This is not an interview token. Check the link or token you were given.",
  user_inactive: "This account is not active. Please contact the recruiter.",
  no_credit: "No interview time is left on this account.",
  // Waited out (page-api.js WAIT_BOUND_S): the time is held by another session of the same
  // candidate, typically this interview open in another tab or window.
  credit_in_use:
    "This interview is already open in another tab or window. Close it there, or wait: it " +
    "starts here once that one has ended.",
  interview_closed:
    "This interview is no longer open (it is finished, expired or cancelled). If that seems " +
    "wrong, contact whoever sent you the link.",
  too_many_failed_authentications: "Too many attempts with a wrong token. Wait a minute, then retry.",
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
};

// credit_in_use still, once the page has stopped waiting for the other session to end.
export const CREDIT_STILL_IN_USE =
  "This interview is still open in another tab or window. Close it there, then press Start " +
  "again.";

// The status line after an error event from the interviewer's service during the interview
// (page-interview.js): nothing the candidate can act on but repeating themselves.
export const SERVICE_HICCUP =
  "The interviewer had a brief problem. If you get no answer, say it again.";

// The interviewer's side dropped and the relay is reconnecting it under the same
// connection (relay.upstream.reconnecting): the candidate waits; nothing to do.
export const UPSTREAM_RECONNECTING = "Reconnecting the interviewer…";
export const UPSTREAM_RECONNECTED = "The interviewer is back.";

// The link carried a credential that the relay refused: there is no field to type another
// one into, so say where a good one comes from.
export const LINK_REFUSED =
  "This interview link is not valid (or no longer valid). Ask whoever sent it for a new one.";

// Why the interview ended: the reasons of relay.session.ending (design: relay events), the
// candidate's own End, and the page's own conclusions when a lost connection could not be
// restored.
export const END_MESSAGES = {
  hangup: "You ended the interview. Thank you!",
  time_up: "The time for this interview is up. Thank you!",
  operator: "The interview was ended by the team running it.",
  revoked: "Your access to this interview was withdrawn.",
  cancelled: "This interview was cancelled by the team running it.",
  relay_shutdown: "The interview service is restarting, so the interview had to stop.",
  upstream_error: "The interviewer service had a problem, so the interview had to stop.",
  idle: "The interview ended because nothing was heard for a long time.",
  connect_timeout: "The connection could not be set up in time.",
  browser_gone: "The connection was lost for too long, so the interview ended.",
  event_flood: "Your browser sent too many messages, so the interview had to stop.",
  internal_error: "Something went wrong on our side, so the interview had to stop.",
  connection_lost: "The connection was lost, so the interview ended.",
  resume_refused: "The connection was lost and the interview could not be resumed.",
};

// Ends that were no choice of the candidate's nor the end of their time: the interview may
// go on with a new connection (the relay keeps an interview's link open for
// interviews.rejoin_window_s after them, and a candidate's own seconds are still theirs).
const MAY_GO_ON = new Set([
  "upstream_error", "relay_shutdown", "internal_error", "connect_timeout", "browser_gone",
  "connection_lost", "resume_refused",
]);

export const GO_ON_NEXT =
  "Your interview may not be over: if you still have time, you can go on with it.";

export function mayGoOn(reason) { return MAY_GO_ON.has(reason); }

// While the page rejoins by itself after such an end (page-interview.js rejoin()): what
// happened, and that it is being taken care of.
const REJOIN_MESSAGES = {
  upstream_error: "The interviewer's connection dropped. Reconnecting…",
  relay_shutdown: "The interview service restarted. Reconnecting…",
  internal_error: "Something went wrong on our side. Reconnecting…",
};
const REJOIN_DEFAULT = "The connection was lost. Reconnecting…";

export function rejoinMessage(reason) { return REJOIN_MESSAGES[reason] || REJOIN_DEFAULT; }

// This tab let another tab of the same browser take the interview over (page-tab.js).
export const ENDED_ELSEWHERE = "This interview continued in another tab.";
export const ELSEWHERE_NEXT =
  "Nothing was lost: go on in that tab. You can close this one.";

// A copy of a tab that runs the interview (Chrome's "Duplicate tab" copies what the tab
// kept): it does not take the interview over unless the candidate asks.
export const OPEN_ELSEWHERE_TITLE = "This interview is open in another tab";
export const OPEN_ELSEWHERE_TEXT =
  "Go on in that tab, or continue here: the interview then moves to this tab and stops " +
  "in the other one.";

export function endMessage(reason, relayMessage) {
  return END_MESSAGES[reason] || relayMessage || "The interview has ended.";
}

export const INSECURE_ORIGIN =
  "This page was opened over an insecure connection (plain http://), and browsers give " +
  "the microphone only to secure pages. Open it with an https:// address: ask whoever " +
  "sent you this link for one.";

// A microphone problem: {code, title, text, steps}. `error` is what getUserMedia rejected
// with (a DOMException), or a code of the page's own ("insecure", "no_api", "no_device").
export function microphoneProblem(error) {
  const name = typeof error === "string" ? error : (error && error.name) || "";
  switch (name) {
    case "insecure":
      return {
        code: "insecure",
        title: "This link must start with https://",
        text: INSECURE_ORIGIN,
        steps: [],
      };
    case "no_api":
      return {
        code: "no_api",
        title: "This browser cannot use a microphone here",
        text: "Please open the link in a recent Chrome, Edge, Firefox or Safari.",
        steps: [],
      };
    case "NotAllowedError":
    case "PermissionDeniedError":
    case "SecurityError":
      return {
        code: "denied",
        title: "The browser is blocking your microphone",
        text: "The interview needs your microphone. To allow it:",
        steps: [
          "Click the icon at the left of the address bar (a padlock or two sliders), find " +
            "Microphone and choose Allow. In Safari: Safari menu › Settings for this website › " +
            "Microphone › Allow.",
          "Then press “Check microphone” again (reload the page if the browser does not ask).",
          "Still blocked? Your computer may block the browser itself: on a Mac, System " +
            "Settings › Privacy & Security › Microphone; on Windows, Settings › Privacy › " +
            "Microphone.",
        ],
      };
    case "no_device":
    case "NotFoundError":
    case "DevicesNotFoundError":
    case "OverconstrainedError":
      return {
        code: "no_device",
        title: "No microphone was found",
        text: "Your browser sees no microphone on this device.",
        steps: [
          "Plug in a headset or a microphone, or switch the built-in one on.",
          "Then press “Check microphone” again.",
        ],
      };
    case "NotReadableError":
    case "TrackStartError":
    case "AbortError":
      return {
        code: "busy",
        title: "Your microphone could not be started",
        text: "Another program may be using it, or it stopped working.",
        steps: [
          "Close other programs that use the microphone (video calls, recorders).",
          "Then press “Check microphone” again, or choose another microphone.",
        ],
      };
    default:
      return {
        code: "other",
        title: "Your microphone could not be started",
        text: `The browser said: ${(error && error.message) || name || "unknown error"}.`,
        steps: ["Press “Check microphone” again, or try another browser."],
      };
  }
}
