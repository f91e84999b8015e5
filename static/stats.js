// The relay's console (/stats): sign-in, the views and which one shows.
//
// Views, by the address's fragment: #/live (the operator token only: /api/stats),
// #/interviews, #/sessions, #/recordings and #/recordings/rec_… (one recording). All data
// comes from the relay's API with the bearer token (console-api.js); nothing is in the
// page itself. A refused token (401) ends the sign-in and clears whatever was on screen.

import { ApiFailure, checkRole, credential, setToken, storedToken, tokenFromFragment } from "./console-api.js";
import { installConfirm } from "./console-confirm.js";
import { $, clearRefreshError, setStatus, showError, showRefreshError } from "./console-core.js";
import { clearInterviews, forgetLinks, hideInterviews, installInterviews, showInterviews } from "./console-interviews.js";
import { clearLive, installLive, startLive, stopLive } from "./console-live.js";
import { hideRecording, installRecording, showRecording } from "./console-recording.js";
import { clearRecordings, hideRecordings, installRecordings, showRecordings } from "./console-recordings.js";
import { clearSessions, hideSessions, installSessions, showSessions } from "./console-sessions.js";

const VIEWS = ["live", "interviews", "sessions", "recordings", "recording"];
const RECORDING_ROUTE = /^#\/recordings\/(rec_[0-9a-f]{16})$/;
const ROLE_TEXT = {
  operator: "Signed in with the operator token",
  admin: "Signed in with an admin key",
  read: "Signed in with a read key",
};

let current = null;

// ------------------------------------------------------------------ routing
function route() {
  const hash = location.hash;
  const recording = RECORDING_ROUTE.exec(hash);
  if (recording) return { view: "recording", id: recording[1] };
  const name = hash.replace(/^#\//, "");
  if (VIEWS.includes(name) && name !== "recording") return { view: name };
  return { view: credential.isOperator ? "live" : "interviews" };
}

function leave(view) {
  if (view === "live") stopLive();
  else if (view === "interviews") hideInterviews();
  else if (view === "sessions") hideSessions();
  else if (view === "recordings") hideRecordings();
  else if (view === "recording") hideRecording();
}

function show() {
  if (!credential.role) return;
  let target = route();
  if (target.view === "live" && !credential.isOperator) target = { view: "interviews" };
  if (current) leave(current);
  current = target.view;
  showError("");
  clearRefreshError();
  for (const view of VIEWS) $(`view-${view}`).hidden = view !== target.view;
  // The navigation marks where you are (a recording belongs to Recordings).
  const section = target.view === "recording" ? "recordings" : target.view;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.id === `nav-${section}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (target.view === "live") startLive();
  else if (target.view === "interviews") { showInterviews(); setStatus("Interviews, newest first."); }
  else if (target.view === "sessions") { showSessions(); setStatus("Sessions, newest first."); }
  else if (target.view === "recordings") { showRecordings(); setStatus("Recordings, newest first."); }
  else showRecording(target.id);
}

// ------------------------------------------------------------------ errors
// Any view's failure: a refused token signs out; anything else is said with the relay's
// request id (the reference to look up in its logs): an action's on the error line, a
// background refresh's (`refresher` names it) on the refresh line, which the same refresher
// clears when it works again (console-core.js).
function handleError(err, context, refresher) {
  if (err instanceof ApiFailure && err.status === 401) { refuse(err); return; }
  const reference = err instanceof ApiFailure && err.requestId ? ` (reference ${err.requestId})` : "";
  const said = `${context ? `${context}: ` : ""}${err.message}`;
  if (refresher) showRefreshError(refresher, `${said}${reference}`, said);
  else showError(`${said}${reference}`);
}

// ------------------------------------------------------------------ sign-in
function signedOut() {
  if (current) leave(current);
  current = null;
  clearLive();
  clearInterviews();
  clearSessions();
  clearRecordings();
  forgetLinks();
  clearRefreshError();
  for (const view of VIEWS) $(`view-${view}`).hidden = true;
  $("nav").hidden = true;
  $("signed-in").hidden = true;
  $("token-form").hidden = false;
}

function refuse(err) {
  // A wrong token shows no data at all: whatever was on screen goes.
  setToken(null);
  signedOut();
  const why = err.code === "missing_token" ? "No token was sent." : "The token was refused.";
  showError(`${why} Enter the operator token or an API key (reference ${err.requestId || "none"}).`);
  setStatus("Not signed in.");
  $("op-token").focus();
}

async function signIn(token) {
  setToken(token);
  setStatus("Checking the token…");
  try {
    await checkRole();
  } catch (err) {
    // 403: a valid credential that is not the console's (a candidate's token).
    if (err instanceof ApiFailure && (err.status === 401 || err.status === 403)) refuse(err);
    else {
      showError(`Could not reach the relay: ${err.message}`);
      setStatus("Not signed in.");
    }
    return;
  }
  showError("");
  $("token-form").hidden = true;
  $("nav").hidden = false;
  $("nav-live-item").hidden = !credential.isOperator;
  $("role").textContent = ROLE_TEXT[credential.role];
  $("signed-in").hidden = false;
  show();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("op-token").value.trim();
  $("op-token").value = "";
  if (!token) { showError("Enter the operator token or an API key."); return; }
  signIn(token);
});

$("forget").addEventListener("click", () => {
  setToken(null);
  signedOut();
  showError("");
  setStatus("Signed out: the token is forgotten. Enter the operator token or an API key.");
  $("op-token").focus();
});

window.addEventListener("hashchange", () => {
  const token = tokenFromFragment();
  if (token) signIn(token);
  else show();
});

installConfirm();
installLive({ onUnauthorized: refuse });
installInterviews({ handleError });
installSessions({ handleError });
installRecordings({ handleError });
installRecording({ handleError });

function start() {
  const token = tokenFromFragment() || storedToken();
  if (token) signIn(token);
}
start();
