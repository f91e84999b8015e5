// Which tab runs the interview. Chrome's "Duplicate tab" copies a tab's sessionStorage into
// the new tab: the copy would find the interview kept there for a reload and resume it,
// silently taking it from the original tab (the relay drops the older leg for the newer
// one, and the original, its resume token spent, loses the interview). So each tab marks
// itself: an id in sessionStorage and a Web Lock of that name held for the page's life. A
// copy finds the id copied and its lock held by a live tab: it is a copy, takes an id of
// its own, and asks the candidate before taking the interview over (takeOver below). A
// reload finds its lock free: the page it replaces is gone (or goes within RELOAD_WAIT_MS).
//
// The take-over goes over a BroadcastChannel: the copy asks the tab of the copied id to let
// go; that tab closes its connection (the relay counts its leg lost at once) and answers
// with the session as it holds it now (its current resume token: the copy's is the one of
// the moment it was copied, possibly spent since).

import { store } from "./page-storage.js";

const LOCK_PREFIX = "interview-relay-tab:";
const CHANNEL = "interview-relay-tabs";
const RELOAD_WAIT_MS = 2000;
const HANDOVER_WAIT_MS = 3000;

export class Tabs {
  // onTakeOver(): another tab takes the interview over; returns what this tab hands over
  // (the saved session, or null when it holds none).
  constructor(onTakeOver) {
    this.onTakeOver = onTakeOver;
    this.id = null;
    this.copyOf = null; // the id of the tab this one is a copy of
    this.channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(CHANNEL) : null;
  }

  // Resolves once this tab knows whether it is a copy (this.copyOf).
  async claim() {
    if (!navigator.locks || !this.channel) return; // no way to tell: as before, no prompt
    let id = store.tab();
    if (id && !(await hold(id, RELOAD_WAIT_MS))) {
      this.copyOf = id;
      id = null;
    }
    if (!id) {
      id = crypto.randomUUID();
      store.setTab(id);
      await hold(id, 0);
    }
    this.id = id;
    this.channel.addEventListener("message", (e) => this.onMessage(e.data || {}));
  }

  onMessage(msg) {
    if (msg.type !== "take" || msg.tab !== this.id) return;
    const session = this.onTakeOver();
    this.channel.postMessage({ type: "handed", nonce: msg.nonce, session });
  }

  // Asks the tab this one was copied from to let the interview go: its session (null when
  // it held none, or did not answer within HANDOVER_WAIT_MS: a frozen or closed tab).
  takeOver() {
    if (!this.copyOf) return Promise.resolve(null);
    const nonce = crypto.randomUUID();
    return new Promise((resolve) => {
      const done = (session) => {
        clearTimeout(timer);
        this.channel.removeEventListener("message", onReply);
        resolve(session);
      };
      const onReply = (e) => {
        const msg = e.data || {};
        if (msg.type === "handed" && msg.nonce === nonce) done(msg.session || null);
      };
      const timer = setTimeout(() => done(null), HANDOVER_WAIT_MS);
      this.channel.addEventListener("message", onReply);
      this.channel.postMessage({ type: "take", tab: this.copyOf, nonce });
    });
  }
}

// Holds the lock of tab `id` for the rest of the page's life, waiting up to `waitMs` for
// it (0: only if free now). True when it is this page's.
function hold(id, waitMs) {
  return new Promise((resolve) => {
    const options = waitMs ? { signal: AbortSignal.timeout(waitMs) } : { ifAvailable: true };
    navigator.locks.request(`${LOCK_PREFIX}${id}`, options, (lock) => {
      resolve(Boolean(lock));
      return lock ? new Promise(() => {}) : undefined; // released when the page goes
    }).catch(() => resolve(false)); // the wait timed out: another page holds it
  });
}
