// The Recordings view: GET /api/recordings (each with its candidate's e-mail, its
// interview and its date), filters by e-mail and interview; Open (the recording page) and
// Delete (DELETE /api/recordings/{id}, after asking). A deleted recording stays listed,
// marked deleted, with nothing left to press.

import { credential, api } from "./console-api.js";
import { confirmAction } from "./console-confirm.js";
import { $, el, fmtBytes, fmtDateTime, fmtSeconds, setStatus, shortId, timeEl } from "./console-core.js";
import { recordingChanged } from "./console-interviews.js";
import { PagedList } from "./console-list.js";

// A recording still being written or rendered cannot be deleted yet (409 recording_busy).
const DELETABLE = new Set(["ready", "failed"]);

let list = null;
let onError = () => {};

function recordingRow(r) {
  const email = r.candidate_email || "unknown candidate";
  const when = fmtDateTime(r.created_at);
  const actions = el("td", { className: "actions" });
  if (r.status === "ready") {
    actions.append(el("a", {
      href: `#/recordings/${r.id}`, className: "button-link", text: "Open",
      "aria-label": `Open the recording of ${email}, ${when}`,
    }));
  }
  if (credential.canChange && DELETABLE.has(r.status)) {
    const del = el("button", {
      type: "button", className: "danger", text: "Delete",
      "aria-label": `Delete the recording of ${email}, ${when}`,
    });
    del.addEventListener("click", () => deleteRecording(r, del));
    actions.append(del);
  }
  return el("tr", { "data-recording": r.id, className: r.status === "deleted" ? "deleted" : "" }, [
    el("td", { text: email }),
    el("td", { className: "id", text: shortId(r.interview_id), title: r.interview_id || "" }),
    el("td", {}, [timeEl(r.created_at)]),
    el("td", { className: "num", text: fmtSeconds(r.duration_s) }),
    el("td", { className: "num", text: fmtBytes(r.bytes) }),
    el("td", {}, [el("span", { className: `badge rec-${r.status}`, text: r.status })]),
    actions,
  ]);
}

// Ask, delete, say so. True once deleted.
async function confirmAndDelete(r, button) {
  const email = r.candidate_email || "unknown candidate";
  const yes = await confirmAction({
    title: "Delete this recording?",
    message: `The recording of ${email} from ${fmtDateTime(r.created_at)} (${fmtSeconds(r.duration_s)}): its audio and transcript are removed for good. This cannot be undone.`,
    confirm: "Delete recording",
  });
  if (!yes) return false;
  button.disabled = true;
  try {
    await api("DELETE", `/api/recordings/${encodeURIComponent(r.id)}`);
    recordingChanged(r.interview_id);
    setStatus(`The recording of ${email} from ${fmtDateTime(r.created_at)} is deleted.`);
    return true;
  } catch (err) {
    button.disabled = false;
    onError(err, `Could not delete the recording of ${email}`);
    return false;
  }
}

async function deleteRecording(r, button) {
  if (!(await confirmAndDelete(r, button))) return;
  // The row at once (its buttons go), then the list as the relay has it.
  const row = button.closest("tr");
  if (row) {
    const fresh = recordingRow({ ...r, status: "deleted" });
    fresh.dataset.key = r.id;
    row.replaceWith(fresh);
    list.rows.set(r.id, { sig: null, tr: fresh });
  }
  list.refresh();
}

export function installRecordings({ handleError }) {
  onError = handleError;
  list = new PagedList({
    path: "/api/recordings",
    filters: () => ({
      email: $("re-filter-email").value.trim(),
      interview_id: $("re-filter-interview").value.trim(),
    }),
    tbody: $("recordings").tBodies[0],
    empty: $("recordings-empty"),
    more: $("recordings-more"),
    row: recordingRow,
    key: (r) => r.id,
    signature: (r) => JSON.stringify([r, credential.role]),
    onError: handleError,
  });
  $("recordings-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    list.reset();
    list.refresh();
  });
}

export function showRecordings() { list.start(); }
export function hideRecordings() { if (list) list.stop(); }
export function clearRecordings() { if (list) list.reset(); }
