// A table of one of the management API's lists (interviews, sessions, recordings): newest
// first, a page at a time through the API's cursors ("Show more" follows next_cursor),
// refreshed every few seconds while its view is shown.
//
// A refresh asks for the items on screen again (and those that arrived since), so the pages
// already shown stay; rows whose item did not change are kept as they are (a focused
// button keeps its focus), the others are rebuilt, and a control focused in a rebuilt row
// hands its focus to the same control of the new row (a live session's item changes while
// it runs, its recording and connection, and a keyboard user on its End must stay there).

import { api, listPath } from "./console-api.js";
import { clearRefreshError } from "./console-core.js";

const PAGE = 50;
const MAX_LIMIT = 200;
const REFRESH_MS = 5000;
// Items a refresh asks for beyond those on screen: what may arrive between two refreshes.
const SLACK = 20;

export class PagedList {
  // path: "/api/interviews"; filters(): the query's filters; row(item): its <tr>;
  // key(item): its id; signature(item): what, changed, redraws its row;
  // onError(err, context, refresher) (stats.js, handleError);
  // afterRender(items): called after each draw.
  constructor({ path, filters, tbody, empty, more, row, key, signature, onError, afterRender }) {
    Object.assign(this, { path, filters, tbody, empty, more, row, key, onError });
    this.signature = signature || ((item) => JSON.stringify(item));
    this.afterRender = afterRender || (() => {});
    this.items = [];
    this.cursor = null;
    this.rows = new Map(); // key -> {sig, tr}
    this.generation = 0;
    this.timer = null;
    this.busy = false;
    more.addEventListener("click", () => this.loadMore());
  }

  start() {
    this.stop();
    this.reset();
    this.refresh();
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.generation += 1;
    this.busy = false;
  }

  // New filters: start again from the first page.
  reset() {
    this.generation += 1;
    this.busy = false;
    this.items = [];
    this.cursor = null;
    this.rows.clear();
    this.tbody.replaceChildren();
    this.empty.hidden = true;
    this.more.hidden = true;
  }

  // The head of the list again, down to the last row on screen (and a few more, for the
  // items that arrived meanwhile). The cursor of "Show more" is a position after that
  // row, which new items do not move, so it stays; only when more arrived than the slack
  // covers does the list start again from this answer.
  async refresh() {
    if (this.busy) return;
    const shown = this.items.length;
    const last = shown ? this.key(this.items[shown - 1]) : null;
    const page = await this.fetch({ limit: shown ? Math.min(MAX_LIMIT, shown + SLACK) : PAGE }, true);
    if (!page) return;
    const at = last === null ? -1 : page.items.findIndex((item) => this.key(item) === last);
    if (at >= 0) {
      this.items = page.items.slice(0, at + 1);
    } else {
      this.items = page.items;
      this.cursor = page.next_cursor;
    }
    this.render();
  }

  async loadMore() {
    if (this.busy || !this.cursor) return;
    const page = await this.fetch({ limit: PAGE, cursor: this.cursor }, false);
    if (!page) return;
    const seen = new Set(this.items.map(this.key));
    this.items = this.items.concat(page.items.filter((item) => !seen.has(this.key(item))));
    this.cursor = page.next_cursor;
    this.render();
  }

  // Redraw what changed (the row function may depend on more than the item).
  redraw() { this.render(); }

  // Items erased through the console: off the screen at once, then the list as the relay
  // has it. A refresh already under way may have read them before the erasure: its
  // answer is dropped (a new generation), so they do not come back for one refresh.
  forget(gone) {
    this.generation += 1;
    this.busy = false;
    this.items = this.items.filter((item) => !gone(item));
    this.render();
    this.refresh();
  }

  // A refresh's failure goes to the refresh line, under this list's path: said once while
  // it keeps failing the same way, and cleared by the next refresh that works (an action's
  // failure on the other line stays). "Show more" is the operator's own action.
  async fetch(position, refreshing) {
    const gen = this.generation;
    this.busy = true;
    try {
      const page = await api("GET", listPath(this.path, { ...this.filters(), ...position }));
      if (gen !== this.generation) return null;
      if (refreshing) clearRefreshError(this.path);
      return page;
    } catch (err) {
      if (gen !== this.generation) return null;
      if (refreshing) this.onError(err, `Could not refresh the ${this.path.split("/").pop()}`, this.path);
      else this.onError(err, "Could not show more");
      return null;
    } finally {
      if (gen === this.generation) this.busy = false;
    }
  }

  render() {
    const next = new Map();
    const order = [];
    const focused = document.activeElement;
    let refocus = null;
    for (const item of this.items) {
      const key = this.key(item);
      const sig = this.signature(item);
      const old = this.rows.get(key);
      const tr = old && old.sig === sig ? old.tr : this.row(item);
      if (old && tr !== old.tr && focused && old.tr.contains(focused)) refocus = { tr, focused };
      tr.dataset.key = key;
      next.set(key, { sig, tr });
      order.push(tr);
    }
    const current = [...this.tbody.children];
    const sameOrder = current.length === order.length
      && current.every((tr, i) => tr.dataset.key === order[i].dataset.key);
    if (sameOrder) {
      current.forEach((tr, i) => { if (tr !== order[i]) tr.replaceWith(order[i]); });
    } else {
      this.tbody.replaceChildren(...order);
    }
    this.rows = next;
    this.empty.hidden = this.items.length > 0;
    this.more.hidden = !this.cursor;
    if (refocus) focusLike(refocus.tr, refocus.focused);
    this.afterRender(this.items);
  }
}

// The control of a rebuilt row that stands where the focused one stood (the same element
// and accessible name, else the same text), focused if it can be.
function focusLike(tr, old) {
  const label = old.getAttribute("aria-label");
  const match = [...tr.querySelectorAll(old.tagName)].find((candidate) => (label !== null
    ? candidate.getAttribute("aria-label") === label
    : candidate.textContent === old.textContent));
  if (match && !match.disabled) match.focus({ preventScroll: true });
}
