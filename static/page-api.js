// The relay's HTTP API as the candidate page calls it: a Bearer credential (a user token or
// an interview's invite token, both the same to the candidate endpoints), JSON in and out,
// and the relay's JSON errors turned into ApiFailure.

import { API_MESSAGES } from "./page-messages.js";

const MAX_ATTEMPTS = 4;

export class ApiFailure extends Error {
  constructor(status, body, retryAfter) {
    const err = (body && body.error) || {};
    super(API_MESSAGES[err.code] || err.message || `Request failed (${status}).`);
    this.status = status;
    this.code = err.code;
    this.retryable = Boolean(err.retryable);
    this.retryAfter = retryAfter;
    this.requestId = body && body.request_id;
    // A 410 session_ended's relay.session.ending ({reason, message}) when the relay ended it.
    this.ending = err.ending || null;
  }
}

// A request that never got an answer (the network is down, the relay unreachable).
export class NetworkFailure extends Error {
  constructor(cause) {
    super("The connection to the interview service failed.");
    this.cause = cause;
  }
}

// options.timeoutMs: give up on a request left unanswered that long (a NetworkFailure).
// options.idempotencyKey: sent as Idempotency-Key, so the same request sent again gets the
// relay's first answer instead of being done twice (see once()).
export async function api(token, method, path, body, options = {}) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (options.idempotencyKey) headers["Idempotency-Key"] = options.idempotencyKey;
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: options.timeoutMs ? AbortSignal.timeout(options.timeoutMs) : undefined,
    });
  } catch (err) {
    throw new NetworkFailure(err);
  }
  if (resp.status === 204) return null;
  let data = null;
  try { data = await resp.json(); } catch (_) { data = null; }
  if (!resp.ok) {
    const retryAfter = Number(resp.headers.get("Retry-After")) || 0;
    throw new ApiFailure(resp.status, data, retryAfter);
  }
  return data;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const ONCE_ATTEMPTS = 3;

// A request that must take effect at most once (the exchange spends the session id, a
// resume its resume token) but whose answer can be lost on the way back: sent with an
// Idempotency-Key, and sent again, the same, when no answer came, so the relay hands back
// the answer it gave the first time. A refusal is final here: the caller decides.
export async function once(token, method, path, body, options = {}) {
  const idempotencyKey = crypto.randomUUID();
  for (let attempt = 1; ; attempt++) {
    try {
      return await api(token, method, path, body, { ...options, idempotencyKey });
    } catch (err) {
      const unanswered = err instanceof NetworkFailure ||
        (err instanceof ApiFailure && err.code === "idempotency_key_in_use");
      if (!unanswered || attempt >= ONCE_ATTEMPTS) throw err;
      await sleep(500 * attempt);
    }
  }
}

// How long a refusal with one of these codes is waited out, in seconds of waiting, instead
// of MAX_ATTEMPTS attempts: the answer changes only when something else ends.
// credit_in_use: the candidate's time is held by another session of theirs, typically the
// interview still open in another tab (or one closed a moment ago). A closed page tells the
// relay at once (page.js, on pagehide), but a crashed browser or a lost network is noticed
// only when ICE consent fails (about 30 s), and then the relay keeps the session for a
// resume for session.reconnect_grace_s (30 s by default): 90 s covers both with room for
// the requests themselves. A relay configured with a longer grace outlasts it: the
// candidate presses Start again.
export const WAIT_BOUND_S = { credit_in_use: 90 };

// Retry retryable failures with Retry-After (or exponential backoff), MAX_ATTEMPTS in all,
// or for up to WAIT_BOUND_S for the codes there. `onWait(text)` tells the candidate, once
// per refusal, what went wrong and that it is retried (the status line: a live region, read
// out); `onCountdown(text)` shows the seconds until the next attempt, then that it is under
// way (a request may take a while to answer), each second: outside the live region, since
// a screen reader would read out a live line that changed every second. A wait bounded by
// time says its message once, without a countdown.
// `pollS` ({code: seconds}) asks again sooner than Retry-After for a code the caller
// expects to clear within moments (a rejoin's credit_in_use: the session that just failed
// is still being closed; its draining: the relay that just stopped it still answers, and
// the next request reaches another member or the restarted relay); onWait then gets the
// failure too, to say something else.
export async function withRetries(label, fn, onWait, { pollS = {}, onCountdown = () => {} } = {}) {
  let waitedS = 0; // waiting for the codes of WAIT_BOUND_S
  for (let attempt = 1; ; ) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof ApiFailure) || !err.retryable) throw err;
      const bound = WAIT_BOUND_S[err.code];
      if (bound !== undefined) {
        const waitS = pollS[err.code] || err.retryAfter || 5;
        if (waitedS + waitS > bound) throw err;
        onWait(err.message, err);
        await sleep(waitS * 1000);
        waitedS += waitS;
        continue;
      }
      if (attempt >= MAX_ATTEMPTS) throw err;
      attempt++;
      const waitS = pollS[err.code] || err.retryAfter || Math.min(8, 2 ** (attempt - 1));
      onWait(`${err.message} Retrying ${label} (attempt ${attempt} of ${MAX_ATTEMPTS})…`, err);
      for (let left = waitS; left > 0; left--) {
        onCountdown(`Next attempt in ${left} s.`);
        await sleep(1000);
      }
      onCountdown(`Trying again now (attempt ${attempt} of ${MAX_ATTEMPTS})…`);
    }
  }
}
