// The Sessions view: GET /api/sessions (every session with its candidate's e-mail, its
// interview and when), filters by state, e-mail and interview; End on a live one
// (DELETE /api/sessions/{id}, the operator token or an admin key) after asking.

import { credential, api } from "./console-api.js";
import { confirmAction } from "./console-confirm.js";
import { $, el, fmtDateTime, fmtSeconds, setStatus, shortId, timeEl } from "./console-core.js";
import { PagedList } from "./console-list.js";

const LIVE = new Set(["pending", "connecting", "active"]);

let list = null;
let onError = () => {};
// Sessions this console asked to end: their End stays off until the list says so.
const ending = new Set();

function sessionRow(s) {
  const actions = el("td", { className: "actions" });
  if (credential.canChange && LIVE.has(s.state)) {
    const end = el("button", {
      type: "button", className: "end", text: ending.has(s.session_id) ? "Ending…" : "End",
      disabled: ending.has(s.session_id), "aria-label": `End session ${s.session_id}`,
    });
    end.addEventListener("click", () => endSession(s, end));
    actions.append(end);
  } else {
    ending.delete(s.session_id);
  }
  return el("tr", { "data-session": s.session_id, className: LIVE.has(s.state) ? "live" : "" }, [
    el("td", { className: "id", text: shortId(s.session_id), title: s.session_id }),
    el("td", { text: s.candidate_email }),
    el("td", { className: "id", text: shortId(s.interview_id), title: s.interview_id || "" }),
    el("td", {}, [el("span", { className: `badge state-${s.state}`, text: s.state })]),
    el("td", {}, [timeEl(s.created_at)]),
    el("td", { className: "num", text: fmtSeconds(s.duration_seconds) }),
    el("td", { text: s.end_reason || "–" }),
    el("td", { text: s.recording_status || "–" }),
    actions,
  ]);
}

async function endSession(s, button) {
  const yes = await confirmAction({
    title: "End this session?",
    message: `The session of ${s.candidate_email} (started ${fmtDateTime(s.connected_at || s.created_at)}) is live. Ending it hangs up both sides now.`,
    confirm: "End session",
  });
  if (!yes) return;
  ending.add(s.session_id);
  button.disabled = true;
  button.textContent = "Ending…";
  try {
    await api("DELETE", `/api/sessions/${encodeURIComponent(s.session_id)}`);
    setStatus(`The session of ${s.candidate_email} is ending.`);
    list.refresh();
  } catch (err) {
    ending.delete(s.session_id);
    button.disabled = false;
    button.textContent = "End";
    onError(err, `Could not end the session of ${s.candidate_email}`);
  }
}

export function installSessions({ handleError }) {
  onError = handleError;
  list = new PagedList({
    path: "/api/sessions",
    filters: () => ({
      status: $("se-filter-status").value,
      email: $("se-filter-email").value.trim(),
      interview_id: $("se-filter-interview").value.trim(),
    }),
    tbody: $("sessions").tBodies[0],
    empty: $("sessions-empty"),
    more: $("sessions-more"),
    row: sessionRow,
    key: (s) => s.session_id,
    signature: (s) => JSON.stringify([s, ending.has(s.session_id), credential.role]),
    onError: handleError,
  });
  $("sessions-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    list.reset();
    list.refresh();
  });
}

export function showSessions() { list.start(); }
export function hideSessions() { if (list) list.stop(); }
export function clearSessions() { if (list) list.reset(); ending.clear(); }
