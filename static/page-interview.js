// One interview, from Start to its end: the session, the WebRTC call, the relay's events, the
// time left, and the resume after a dropped connection or a reload.
//
// Phases: idle (pre-flight) → connecting → live ⇄ reconnecting → ended. "ending" is the short
// moment of the candidate's own hang-up (the DELETE) during which a drop means nothing.
// live → rejoining → live: an end that was not the interview's (page-messages.js mayGoOn:
// the interviewer's service or the relay failed, the connection could not be kept) is
// followed by a new session of the same interview, by itself (rejoin() below), a bounded
// number of times; only when those fail does the end screen offer "Go on with the interview".
//
// The relay speaks to the page in its own namespace on the events channel (relay.*, see
// docs/operations.md, "The candidate's page"): time left, wrap-up, ending with a reason
// (shown at once), reconnected, and the transcript so far after a resume. A resume is
// POST /api/sessions/{id}/resume with the credential and the session's current resume token
// (single use, rotated by every answer), kept in this tab's sessionStorage so a reload can
// resume too.

import { api, ApiFailure, NetworkFailure, once, sleep, withRetries } from "./page-api.js";
import { Call } from "./page-call.js";
import {
  ENDED_ELSEWHERE, SERVICE_HICCUP, UPSTREAM_RECONNECTED, UPSTREAM_RECONNECTING, endMessage,
  mayGoOn, rejoinMessage,
} from "./page-messages.js";
import { store } from "./page-storage.js";
import * as view from "./page-view.js";

// How long a new connection may take to come up before the page tries again.
const CONNECT_TIMEOUT_MS = 15000;
// How long a resume request may go unanswered.
const RESUME_REQUEST_TIMEOUT_MS = 15000;
// The relay keeps a dropped interview this long (session.reconnect_grace_s, default 30 s).
// An answer that says its own (reconnect_grace_s) is believed; otherwise the page counts
// down from the default, and the relay's 410 ends it sooner if it is set shorter.
const RECONNECT_GRACE_S = 30;

// How long after a network cut the relay may only notice that the page's leg is gone: it
// counts a leg lost when ICE consent fails (aiortc: about 30 s without an answer), and
// keeps the interview for its grace from then. A page that cannot reach the relay at all
// keeps trying that much longer: giving up after the grace alone lost interviews the relay
// still held (a 40 s cut). The relay's 410 ends the wait as soon as it has ended.
const LOSS_NOTICE_S = 30;

// Until when a page that lost its connection now keeps trying to resume.
function resumeDeadline(graceS) {
  return Date.now() + (graceFrom(null, graceS) + LOSS_NOTICE_S) * 1000;
}

function graceFrom(answer, previous) {
  const said = answer && answer.reconnect_grace_s;
  if (typeof said === "number" && Number.isFinite(said) && said >= 0) return said;
  return typeof previous === "number" ? previous : RECONNECT_GRACE_S;
}
// Waits between resume attempts: 1, 2, 4, 8, 8… s (the first attempt is immediate).
const BACKOFF_MAX_S = 8;
// Automatic rejoins after an end that was not the interview's: this many new sessions in
// a row, the first at once, then after these waits (s). A rejoined session that stays up
// REJOIN_SETTLED_MS starts the count afresh; one that fails sooner counts as an attempt
// (an interviewer's service that keeps failing must not be retried forever).
const REJOIN_ATTEMPTS = 4;
const REJOIN_BACKOFF_S = [2, 4, 8];
const REJOIN_SETTLED_MS = 60000;
// A rejoin refused 503 draining (the relay that just stopped the session) asks again this soon.
const DRAINING_POLL_S = 2;
// The candidate's End: the hang-up is sent again while the relay answers it with a
// retryable refusal (503 database_unavailable…) or not at all, after its Retry-After (at
// most HANGUP_WAIT_MAX_S), this many times in all; then the page closes its connection
// anyway (the relay then ends the session browser_gone after its grace).
const HANGUP_ATTEMPTS = 5;
const HANGUP_WAIT_MAX_S = 10;
const HANGUP_REQUEST_TIMEOUT_MS = 10000;
// After speech_started, give the service this long to cancel/clear on its own (server VAD
// with interrupt_response does) before the page does it.
const BARGE_IN_GRACE_MS = 300;

// The remaining time, counted down locally between the relay's relay.session.time_left
// events, and paused while the connection is lost (the relay does not charge that time).
class Clock {
  constructor() { this.left = null; this.since = 0; this.timer = null; }

  now() {
    if (this.left === null) return null;
    if (!this.timer) return this.left;
    return Math.max(0, this.left - (performance.now() - this.since) / 1000);
  }

  set(seconds) {
    this.left = seconds;
    this.since = performance.now();
    this.render();
  }

  run() {
    if (this.timer || this.left === null) return;
    this.since = performance.now();
    this.timer = setInterval(() => this.render(), 250);
  }

  pause() {
    this.left = this.now();
    clearInterval(this.timer);
    this.timer = null;
    this.render();
  }

  render() {
    const left = this.now();
    view.setTimeLeft(left === null ? null : Math.ceil(left));
  }
}

// A resume refused for good: the session ended (410), is unknown (404), the token is not
// the current one (409 resume_token_invalid), the credential was refused (401/403)… Not
// for good: no answer, a busy or failing relay (429, 5xx, or retryable), or another
// attempt still under way on the relay (409 resume_in_progress: an earlier attempt this
// page gave up on).
function refusedForGood(err) {
  return err instanceof ApiFailure && !err.retryable && err.status !== 429 && err.status < 500 &&
    err.code !== "resume_in_progress";
}

// [reason, the relay's message]: a session the relay ended says why (the ending event the
// page may have missed when its channel closed first); else it ended while the page was away.
function refusedResumeReason(err) {
  if (err.status === 410) {
    return err.ending ? [err.ending.reason, err.ending.message] : ["browser_gone", null];
  }
  return ["resume_refused", null];
}

export class Interview {
  // mic: the Microphone; transcript: the Transcript; token(): the credential;
  // onCreated(session): a session was created (the start, or a rejoin);
  // onRemoteStream(stream): the interviewer's audio; onEnded(): after the end screen.
  constructor({ mic, transcript, token, onCreated, onRemoteStream, onEnded }) {
    this.mic = mic;
    this.transcript = transcript;
    this.token = token;
    this.onCreated = onCreated;
    this.onRemoteStream = onRemoteStream;
    this.onEnded = onEnded;
    this.phase = "idle";
    // {session_id, resume_token, grace_s, ice_servers, time_left, notice_shown}
    this.session = null;
    // Whether the recording notice was on screen before the interview's first Start: a
    // rejoin goes on with the same interview, so it says the same.
    this.noticeShown = false;
    // The automatic rejoin under way or just done: {reason, message, attempts, settled,
    // sessionId (the session that ended, which an End meanwhile hangs up)}.
    this.rejoining = null;
    this.call = null;
    this.clock = new Clock();
    // What the upstream is doing: generating a response (response.created .. done) and
    // playing audio (output_audio_buffer.started .. stopped/cleared). On the real service a
    // response is done long before its audio stops, so the two differ.
    this.reply = { responding: false, playing: false, bargeTimer: null };
  }

  // The page must not be left without asking while an interview runs.
  get holdsPage() {
    return ["connecting", "live", "reconnecting", "rejoining"].includes(this.phase);
  }

  api(method, path, body, options) { return api(this.token(), method, path, body, options); }

  // The exchange and a resume: at most once, their answer recoverable (page-api.js once()).
  once(method, path, body, options) { return once(this.token(), method, path, body, options); }

  // ------------------------------------------------------------------ start and end

  // Creates the session and connects. Throws (back in pre-flight, nothing left open) if it
  // could not; once the exchange succeeded, a lost connection is resumed instead.
  async start({ noticeShown }) {
    this.phase = "connecting";
    this.noticeShown = noticeShown;
    try {
      this.awaitConnection(await this.openSession("Checking your access…"));
    } catch (err) {
      // The candidate's End, or the relay's, came first: that is the outcome, not this.
      if (this.phase !== "connecting") return;
      await this.abandon(this.session && this.session.session_id);
      throw err;
    }
  }

  // A new session of the interview, exchanged: the start's, or a rejoin's. Returns its
  // call, not connected yet.
  async openSession(status) {
    this.session = null;
    view.setStatus(status);
    // A rejoin may find the session that just failed still holding the interview for a
    // moment (credit_in_use, until the relay has closed it): asked again every second,
    // and not worded as another tab. After relay_shutdown it may reach the relay that is
    // stopping, still answering while it closes its sessions (503 draining): asked again
    // every 2 s rather than after its Retry-After (server.drain_retry_after_s, 30 s by
    // default), as the next request reaches another member or the restarted relay.
    const rejoin = this.phase === "rejoining";
    // Tells the relay whether the recording notice was on screen before Start.
    const created = await withRetries(
      "the session",
      () => this.api("POST", "/api/realtime-session", { recording_notice_shown: this.noticeShown }),
      (text, err) => view.setStatus(rejoin && err && err.code === "credit_in_use" ? status : text),
      { pollS: rejoin ? { credit_in_use: 1, draining: DRAINING_POLL_S } : {}, onCountdown: view.setCountdown },
    );
    const sessionId = created.session_id;
    if (!this.opening) {
      // The candidate's End (or the relay's) came while it was being created: not wanted.
      this.api("DELETE", `/api/sessions/${sessionId}`).catch(() => {});
      throw new Error("ended meanwhile");
    }
    this.session = {
      session_id: sessionId,
      resume_token: null,
      ice_servers: created.ice_servers || [],
      time_left: Number.isFinite(created.max_duration_seconds) ? created.max_duration_seconds : null,
      notice_shown: this.noticeShown,
    };
    this.onCreated(created);
    this.clock.left = this.session.time_left;
    this.clock.render();
    view.showScreen("call");
    if (this.phase === "connecting") {
      view.setConnection("connecting");
      view.setStatus("Connecting…");
    }
    const call = this.newCall();
    const sdp = await call.offer();
    // A session id is usable once: the exchange is only sent again, with the same
    // Idempotency-Key, when its answer was lost.
    const answer = await this.once("POST", "/api/webrtc-exchange", {
      session_id: sessionId, type: "offer", sdp,
    });
    this.session.resume_token = answer.resume_token || null;
    this.session.grace_s = graceFrom(answer, null);
    this.save();
    await call.answer(answer.sdp);
    return call;
  }

  // Still starting or rejoining: nothing else (an End, an end) came meanwhile.
  get opening() { return this.phase === "connecting" || this.phase === "rejoining"; }

  // A start that failed before the exchange: hang the session up (if any) and go back.
  async abandon(sessionId) {
    const call = this.call;
    this.call = null;
    if (call) call.close();
    this.phase = "idle";
    this.session = null;
    store.clearSession();
    this.clock.pause();
    this.clock.left = null;
    if (sessionId) {
      try { await this.api("DELETE", `/api/sessions/${sessionId}`); } catch (_) { /* gone */ }
    }
    view.showScreen("preflight");
  }

  // The candidate's End.
  async hangUp() {
    if (!this.holdsPage) return;
    this.interrupt(); // End while the interviewer speaks: stop it before hanging up
    // The call may stay up a while yet (the hang-up sent again): from now on it carries
    // silence, not what the candidate says after ending (to the interviewer, who would
    // answer it, and to the recording).
    this.mic.setMuted(true);
    // Between two rejoin attempts there is no live session to hang up: the session that
    // ended (failed, or its connection lost) is hung up instead, and the relay records the
    // interview as ended by the candidate, not failed when its rejoin window has passed.
    const ended = this.phase === "rejoining" && this.rejoining ? this.rejoining.sessionId : null;
    this.phase = "ending";
    this.stopRejoining();
    // Over for this tab from now on: a reload while the hang-up is sent (again) shows the
    // end, rather than resuming what the candidate ended or, the relay having ended it
    // (its 410 then reads like a lost connection), starting a new session by itself.
    store.clearSession();
    store.setEnded({ reason: "hangup", message: null });
    // Hang up through the API before closing the connection: otherwise the relay sees the
    // connection drop first and records a lost browser instead of the candidate's hang-up.
    // A rejoin attempt's session first (it never carried media: its hang-up changes
    // nothing of the interview, but a live one would keep the relay from recording the
    // next), then the session that ended.
    if (this.session) await this.hangUpOnRelay(this.session.session_id);
    if (ended && this.phase === "ending" && !(this.session && this.session.session_id === ended)) {
      await this.hangUpOnRelay(ended);
    }
    this.finish("hangup");
  }

  // DELETE /api/sessions/{id}, sent again while the relay cannot record it yet (its
  // database briefly down: 503 database_unavailable with Retry-After; no answer): the end
  // is then the candidate's (hangup), not a lost browser's. A refusal for good (401 after
  // a new link, 404, 410: already over) is not retried.
  async hangUpOnRelay(sessionId) {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.api("DELETE", `/api/sessions/${sessionId}`, undefined,
          { timeoutMs: HANGUP_REQUEST_TIMEOUT_MS });
        return;
      } catch (err) {
        if (this.phase !== "ending") return; // the relay ended it first (relay.session.ending)
        const again = err instanceof NetworkFailure ||
          (err instanceof ApiFailure && (err.retryable || err.status === 429 || err.status >= 500));
        if (!again || attempt >= HANGUP_ATTEMPTS) {
          console.info(`hang-up not recorded: ${err.message}`);
          return;
        }
        const waitS = Math.min(HANGUP_WAIT_MAX_S, (err.retryAfter || 0) || 2 ** (attempt - 1));
        view.setStatus(`Ending the interview… ${err.message} Trying again in ${waitS} s.`);
        await sleep(waitS * 1000);
        if (this.phase !== "ending") return;
        view.setStatus("Ending the interview…");
      }
    }
  }

  // The end, whatever its reason: shown at once, nothing left open, nothing to resume.
  // An end that was not the interview's is followed by a rejoin instead (rejoin() below),
  // unless the automatic attempts are spent (auto: false).
  finish(reason, relayMessage, { auto = true, next = null } = {}) {
    if (this.phase === "ended") return;
    if (auto && mayGoOn(reason) && this.phase !== "ending") {
      this.rejoin(reason, relayMessage);
      return;
    }
    this.letGo();
    store.clearSession();
    store.setEnded({ reason, message: relayMessage || null });
    view.showEnded(endMessage(reason, relayMessage), mayGoOn(reason) && !next, next);
    view.setStatus("Interview ended.");
    this.onEnded();
  }

  // Over for this page, whether ended or handed to another tab: no rejoin, no barge-in
  // timer, the clock stopped, the call and the microphone closed.
  letGo() {
    this.phase = "ended";
    this.stopRejoining();
    clearTimeout(this.reply.bargeTimer);
    this.clock.pause();
    const call = this.call;
    this.call = null;
    if (call) call.close();
    this.mic.close();
  }

  // Another tab of this browser took the interview over (page-tab.js): this one lets go
  // of it without ending it; the relay counts this leg lost at once and the other tab
  // resumes. What is handed over: the session as saved for a reload (its current resume
  // token), or null when this tab holds none (not started, ended, or between sessions).
  handOver() {
    const state = this.session && this.phase !== "ended" && this.phase !== "idle" &&
      this.session.resume_token ? { ...this.session } : null;
    if (state) {
      const left = this.clock.now();
      state.time_left = left === null ? state.time_left : Math.ceil(left);
    }
    if (this.phase !== "idle" && this.phase !== "ended") {
      this.letGo();
      // A reload of this tab then shows the pre-flight: its Start waits for the other tab
      // (credit_in_use) rather than taking the interview back by itself.
      store.clearSession();
      store.clearEnded();
      view.showElsewhere(ENDED_ELSEWHERE);
      view.setStatus(ENDED_ELSEWHERE);
      this.onEnded();
    }
    return state;
  }

  // ------------------------------------------------------------------ rejoining

  // An end that was not the interview's: a new session of the same interview, by itself
  // (the relay keeps an interview in progress for interviews.rejoin_window_s after such an
  // end, and seeds the new session with the conversation so far, so the interviewer goes
  // on rather than greeting the candidate again). The call screen stays, with what
  // happened and the attempts in the status and connection lines; after REJOIN_ATTEMPTS
  // the end screen with its "Go on with the interview" button, or at once the refusal of
  // a relay that will not have it (the interview closed, the credential refused…).
  async rejoin(reason, relayMessage) {
    const r = this.rejoining || { attempts: 0, settled: null, sessionId: null };
    clearTimeout(r.settled);
    r.reason = reason;
    r.message = relayMessage;
    this.rejoining = r;
    const again = this.phase === "rejoining"; // an attempt's session ended as it started
    // The session that ended, which the candidate's End meanwhile hangs up (hangUp()): the
    // last that went live, not an attempt's that never came up.
    if (!again && this.session) r.sessionId = this.session.session_id;
    this.phase = "rejoining";
    this.dropSession();
    // A reload meanwhile shows this end and its button, rather than a lost interview.
    store.setEnded({ reason, message: relayMessage || null });
    if (again) return; // the attempt's own loop goes on (its call was just closed)
    view.setConnection("reconnecting");
    view.setStatus(rejoinMessage(reason));
    while (this.phase === "rejoining" && this.rejoining === r) {
      if (r.attempts >= REJOIN_ATTEMPTS) break;
      r.attempts++;
      if (r.attempts > 1) {
        await this.rejoinCountdown(REJOIN_BACKOFF_S[Math.min(r.attempts - 2, REJOIN_BACKOFF_S.length - 1)], r);
        if (this.phase !== "rejoining" || this.rejoining !== r) return;
      }
      view.setConnection("reconnecting", `Trying now (attempt ${r.attempts} of ${REJOIN_ATTEMPTS}).`);
      try {
        const call = await this.openSession(rejoinMessage(r.reason));
        await call.waitConnected(CONNECT_TIMEOUT_MS);
        if (this.phase !== "rejoining" || call !== this.call) throw new Error("ended meanwhile");
        this.goLive(call, true);
        // Up that long: the next failure is a new one, with its attempts afresh.
        r.settled = setTimeout(() => { if (this.rejoining === r) this.rejoining = null; },
          REJOIN_SETTLED_MS);
        return;
      } catch (err) {
        if (this.phase !== "rejoining" || this.rejoining !== r) return;
        console.info(`rejoin attempt ${r.attempts} failed: ${err.message}`);
        const sessionId = this.session && this.session.session_id;
        this.dropSession();
        // A session created (or exchanged) that did not come up: hang it up, so the
        // next attempt is not refused because this one still holds the interview.
        if (sessionId) this.api("DELETE", `/api/sessions/${sessionId}`).catch(() => {});
        if (!rejoinMayRetry(err)) {
          this.rejoining = null;
          this.finish(r.reason, r.message, { auto: false, next: err.message });
          return;
        }
      }
    }
    if (this.phase !== "rejoining" || this.rejoining !== r) return;
    this.rejoining = null;
    this.finish(r.reason, r.message, { auto: false });
  }

  // Waits `seconds` before the next rejoin attempt, saying so each second in the
  // connection line (not the status line: a live region read out every second).
  async rejoinCountdown(seconds, r) {
    for (let left = seconds; left > 0; left--) {
      if (this.phase !== "rejoining" || this.rejoining !== r) return;
      view.setConnection("reconnecting",
        `Trying again in ${left} s (attempt ${r.attempts} of ${REJOIN_ATTEMPTS}).`);
      await sleep(1000);
    }
  }

  stopRejoining() {
    if (this.rejoining) clearTimeout(this.rejoining.settled);
    this.rejoining = null;
  }

  // The session is over for this page: its call closed, nothing kept for a reload.
  dropSession() {
    clearTimeout(this.reply.bargeTimer);
    this.resetReply();
    this.clock.pause();
    const call = this.call;
    this.call = null;
    if (call) call.close();
    this.session = null;
    store.clearSession();
  }

  // ------------------------------------------------------------------ the connection

  newCall() {
    if (this.call) this.call.close();
    const call = new Call({
      iceServers: this.session.ice_servers,
      track: this.mic.track,
      stream: this.mic.stream,
      onEvent: (event) => { if (call === this.call) this.onServerEvent(event); },
      onRemoteStream: (stream) => { if (call === this.call) this.onRemoteStream(stream); },
      onDrop: (why) => this.lost(call, why),
    });
    this.call = call;
    return call;
  }

  awaitConnection(call) {
    call.waitConnected(CONNECT_TIMEOUT_MS).then(
      () => this.goLive(call, false),
      () => call.drop("the connection did not come up"),
    );
  }

  goLive(call, resumed) {
    if (call !== this.call || this.phase === "ended" || this.phase === "ending") return;
    this.phase = "live";
    view.setConnection("live");
    view.setStatus(resumed ? "Reconnected." : "Connected. Say hello when you are ready.");
    this.clock.run();
  }

  // The microphone changed (another device chosen): the call sends the new track.
  async replaceTrack(track) {
    if (this.call) await this.call.replaceTrack(track);
  }

  lost(call, why) {
    if (call !== this.call) return;
    if (this.phase === "reconnecting") return; // the attempt in progress failed: its loop retries
    if (this.phase !== "connecting" && this.phase !== "live") return;
    if (!this.session || !this.session.resume_token) {
      // A relay that does not offer resuming: the interview is over.
      this.finish("connection_lost");
      return;
    }
    console.info(`connection lost (${why}): resuming`);
    this.reconnect(resumeDeadline(this.session.grace_s));
  }

  // After a reload: the interview of this tab, if it was still going.
  resumeStored(saved) {
    this.session = saved;
    // Saved by a page from before notice_shown was kept: the interview was started, so
    // its notice (if any) was on screen then.
    this.noticeShown = saved.notice_shown !== false;
    if (typeof saved.time_left === "number") this.clock.set(saved.time_left);
    view.showScreen("call");
    this.reconnect(resumeDeadline(this.session.grace_s), "Rejoining your interview…");
  }

  // Resume attempts until one connects, the relay refuses for good, or the grace is over.
  async reconnect(deadline, status = "The connection was lost. Reconnecting…") {
    this.phase = "reconnecting";
    this.clock.pause();
    this.save();
    this.resetReply();
    if (this.call) { this.call.close(); this.call = null; }
    view.setConnection("reconnecting");
    view.setStatus(status);
    for (let attempt = 0; this.phase === "reconnecting"; attempt++) {
      if (attempt > 0) {
        await this.countdown(Math.min(BACKOFF_MAX_S, 2 ** (attempt - 1)), deadline);
        if (this.phase !== "reconnecting") return;
      }
      if (Date.now() >= deadline) { this.finish("browser_gone"); return; }
      view.setConnection("reconnecting", `Trying now (${secondsUntil(deadline)} s left to rejoin).`);
      try {
        await this.resumeOnce();
        return;
      } catch (err) {
        if (this.phase !== "reconnecting") return;
        if (refusedForGood(err)) {
          this.finish(...refusedResumeReason(err));
          return;
        }
        // Anything else, or a connection that did not come up: again.
      }
    }
  }

  async resumeOnce() {
    const call = this.newCall();
    const sdp = await call.offer();
    if (call !== this.call) throw new Error("superseded");
    let answer;
    try {
      answer = await this.once("POST", `/api/sessions/${this.session.session_id}/resume`, {
        resume_token: this.session.resume_token, type: "offer", sdp,
      }, { timeoutMs: RESUME_REQUEST_TIMEOUT_MS });
    } catch (err) {
      call.close();
      throw err;
    }
    // The token just used is spent: the answer's is the one for the next attempt.
    this.session.resume_token = answer.resume_token || null;
    this.session.grace_s = graceFrom(answer, this.session.grace_s);
    this.save();
    await call.answer(answer.sdp);
    await call.waitConnected(CONNECT_TIMEOUT_MS);
    this.goLive(call, true);
  }

  // Waits `seconds` before the next attempt, saying so each second; a network that comes
  // back cuts the wait short.
  async countdown(seconds, deadline) {
    let online = false;
    const onOnline = () => { online = true; };
    window.addEventListener("online", onOnline, { once: true });
    try {
      for (let left = seconds; left > 0 && !online && this.phase === "reconnecting"; left--) {
        if (Date.now() >= deadline) return;
        view.setConnection("reconnecting",
          `Trying again in ${left} s (${secondsUntil(deadline)} s left to rejoin).`);
        await sleep(1000);
      }
    } finally {
      window.removeEventListener("online", onOnline);
    }
  }

  // The page is going away for good (closed, reloaded, navigated away; not a page the
  // browser keeps in its back/forward cache): close the connection now, while the page can
  // still send. Chromium then sends SCTP ABORT and DTLS close_notify, and the relay knows
  // the leg is lost at once; a tab closed without that is noticed only when ICE consent
  // fails, about 30 s later, and a reopened link is refused credit_in_use for that long on
  // top of the grace. The
  // session stays saved: to the relay a closed leg is a lost one, kept for its grace, so
  // a reload still rejoins it.
  leave() {
    this.save();
    if (!this.holdsPage || !this.call) return;
    const call = this.call;
    this.call = null;
    call.close();
  }

  // Kept for a reload: the session, its current resume token, and the time left.
  save() {
    if (!this.session || this.phase === "ended" || this.phase === "ending") return;
    const left = this.clock.now();
    this.session.time_left = left === null ? null : Math.ceil(left);
    store.setSession(this.session);
  }

  // ------------------------------------------------------------------ events

  send(event) { if (this.call) this.call.send(event); }

  resetReply() {
    clearTimeout(this.reply.bargeTimer);
    this.reply.responding = false;
    this.reply.playing = false;
  }

  // Stop the interviewer: cancel a response still being generated, then clear the audio
  // still playing. Each only when it applies: response.cancel after response.done is an
  // error on the real service, and clearing cancels nothing.
  interrupt() {
    clearTimeout(this.reply.bargeTimer);
    if (this.reply.responding) { this.send({ type: "response.cancel" }); this.reply.responding = false; }
    if (this.reply.playing) { this.send({ type: "output_audio_buffer.clear" }); this.reply.playing = false; }
  }

  onServerEvent(event) {
    const t = this.transcript;
    switch (event.type) {
      case "relay.session.time_left":
        if (typeof event.seconds === "number") this.onTimeLeft(event.seconds);
        break;
      case "relay.session.wrap_up":
        view.showWrapUp("The interview is ending soon: the interviewer will wrap up now.");
        view.setStatus("The interview is ending soon.");
        break;
      case "relay.session.ending":
        this.finish(event.reason || "ended", event.message);
        break;
      case "relay.session.reconnected":
        if (this.phase === "live") view.setStatus("Reconnected.");
        break;
      case "relay.upstream.reconnecting":
        // The interviewer's side dropped; the relay opens a new one under this same
        // connection. Its reply in progress was cut: nothing of it is left to cancel.
        this.resetReply();
        if (this.phase === "live") view.setStatus(UPSTREAM_RECONNECTING);
        break;
      case "relay.upstream.reconnected":
        if (this.phase === "live") view.setStatus(UPSTREAM_RECONNECTED);
        break;
      case "relay.transcript":
        t.restore(event.items);
        break;
      case "conversation.item.added":
      case "conversation.item.created":
        t.onItemAdded(event);
        break;
      case "conversation.item.input_audio_transcription.delta":
        t.append(t.lineFor(event.item_id, "you"), event.delta);
        break;
      case "conversation.item.input_audio_transcription.completed":
        t.setText(t.lineFor(event.item_id, "you"), event.transcript || "");
        break;
      case "response.output_audio_transcript.delta":
      case "response.audio_transcript.delta":
        t.append(t.lineFor(event.item_id, "interviewer"), event.delta);
        break;
      case "response.created":
        this.reply.responding = true;
        break;
      case "response.done":
        this.reply.responding = false;
        break;
      case "input_audio_buffer.speech_started":
        view.setActivity("Listening…");
        // Barge-in: if the service has not stopped the interviewer by itself, the page does.
        clearTimeout(this.reply.bargeTimer);
        if (this.reply.responding || this.reply.playing) {
          this.reply.bargeTimer = setTimeout(() => this.interrupt(), BARGE_IN_GRACE_MS);
        }
        break;
      case "output_audio_buffer.started":
        this.reply.playing = true;
        view.setActivity("The interviewer is speaking…");
        break;
      case "output_audio_buffer.stopped":
      case "output_audio_buffer.cleared":
        this.reply.playing = false;
        break;
      case "error": {
        const code = event.error && event.error.code;
        // Not the candidate's concern at all: a refused browser event, or a cancel that
        // raced the end.
        if (code === "event_not_allowed" || code === "response_cancel_not_active") break;
        // Anything else the service reports ("Item with item_id not found: item_0", an event
        // it could not take…) is nothing the candidate can act on, and the interview mostly
        // goes on: no alert (role=alert, left on screen, would say something went wrong for
        // the rest of the interview), but a calm word in the status line, which the next
        // turn replaces. What it was goes to the console, for whoever helps the candidate.
        // An error that ends the interview arrives as relay.session.ending, with its reason.
        console.warn(`interviewer service error ${code || ""}: ${event.error && event.error.message}`);
        view.setStatus(SERVICE_HICCUP);
        break;
      }
      default:
        break;
    }
  }

  onTimeLeft(seconds) {
    this.clock.set(seconds);
    if (this.phase === "live") this.clock.run();
    this.save();
    // Said aloud (the status is a live region) near the end only: every minute would be noise.
    if (seconds <= 60 && seconds > 0) {
      view.setStatus(seconds === 60 ? "One minute left." : `${seconds} seconds left.`);
    }
  }
}

// A failed rejoin attempt worth another: no answer, a relay failing or busy (5xx, 429,
// retryable refusals the page's own retries gave up on), a connection that did not come up.
// Not a refusal for good (the interview closed, the credential refused, no time left).
function rejoinMayRetry(err) {
  if (err instanceof NetworkFailure) return true;
  if (err instanceof ApiFailure) return err.retryable || err.status === 429 || err.status >= 500;
  return true;
}

function secondsUntil(deadline) { return Math.max(0, Math.ceil((deadline - Date.now()) / 1000)); }
