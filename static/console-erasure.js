// Erasure from the console: an interview (DELETE /api/interviews/{id}) or its candidate
// with everything of theirs (DELETE /api/users/{id}), the operator token or an admin key
// only (docs/api.md, "Erasure"). Each asks first, in the console's dialog, saying exactly
// what goes; the relay answers 204 once the erasure is requested (the files and rows go
// then or in the background, `interview.deleted` telling when), and from then on the
// interview is in no list.

import { api } from "./console-api.js";
import { confirmAction } from "./console-confirm.js";
import { fmtDateTime, setStatus, showError } from "./console-core.js";

// A list page at most: "every one of their N interviews" is said up to this many.
const COUNT_LIMIT = 200;

function who(iv) {
  const c = iv.candidate || {};
  return c.name ? `${c.name} <${c.email}>` : (c.email || iv.id);
}

// How many interviews the candidate has, for the dialog to say; null when not known (the
// dialog then says "all their interviews", and the erasure takes them all anyway).
async function interviewCount(userId) {
  try {
    const page = await api("GET", `/api/interviews?user_id=${encodeURIComponent(userId)}&limit=${COUNT_LIMIT}`);
    return { n: page.items.length, more: Boolean(page.next_cursor) };
  } catch (_) {
    return null;
  }
}

function interviewsText(count) {
  if (!count) return "all their interviews (this one included)";
  if (count.more) return `all of their more than ${COUNT_LIMIT} interviews`;
  return count.n === 1 ? "their one interview (this one)" : `all ${count.n} of their interviews (this one included)`;
}

// The outcome of a confirmed erasure: "erased", "gone" (404: erased already), or "failed"
// (said in the error line with the relay's reference, through onError). The button that
// asked is off while the request runs.
async function erase(path, what, onError, button) {
  button.disabled = true;
  try {
    await api("DELETE", path);
    showError("");
    setStatus(`${what} is deleted.`);
    return "erased";
  } catch (err) {
    onError(err, `Could not delete ${what.charAt(0).toLowerCase()}${what.slice(1)}`);
    // 404: erased already (by someone else, or a first answer lost): it is gone all the same.
    return err.status === 404 ? "gone" : "failed";
  } finally {
    button.disabled = false;
  }
}

// "kept" when the person dismissed the dialog, else erase()'s outcome.
export async function eraseInterview(iv, onError, button) {
  const yes = await confirmAction({
    title: "Delete this interview?",
    message: `The interview with ${who(iv)} (created ${fmtDateTime(iv.created_at)}) is deleted for good, `
      + "with everything of it: its recordings (audio and transcripts), its sessions and their "
      + "transcripts, its candidate link and its webhook events. A live session of it ends now. "
      + "The candidate's other interviews stay. This cannot be undone.",
    confirm: "Delete interview",
  });
  if (!yes) return "kept";
  return erase(`/api/interviews/${encodeURIComponent(iv.id)}`, `The interview with ${who(iv)}`, onError, button);
}

export async function eraseCandidate(iv, onError, button) {
  const c = iv.candidate || {};
  const count = await interviewCount(c.user_id);
  const yes = await confirmAction({
    title: "Delete the candidate and all their data?",
    message: `${who(iv)} is deleted for good, with everything the relay holds about them: `
      + `${interviewsText(count)}, every recording of theirs (audio and transcripts), every session `
      + "and its transcript, their candidate links and token, and their e-mail address. Their live "
      + "sessions end now. This cannot be undone.",
    confirm: "Delete candidate and data",
  });
  if (!yes) return "kept";
  return erase(`/api/users/${encodeURIComponent(c.user_id)}`, `The candidate ${c.email || c.user_id}`, onError, button);
}
