// The transcript: one line per conversation item, placed by the item order the service
// gives (previous_item_id), not by arrival: a candidate's transcription often lands after
// the interviewer's reply started. After a resume the relay sends the conversation so far
// (relay.transcript), which replaces what the page shows.

const WHO = { you: "You", interviewer: "Interviewer" };

export class Transcript {
  constructor(list) {
    this.list = list;
    this.lines = new Map();
  }

  lineFor(itemId, who, previousId) {
    let li = this.lines.get(itemId);
    if (li) return li;
    li = document.createElement("li");
    li.className = who;
    li.hidden = true; // until it has text
    li.dataset.text = "";
    const after = previousId ? this.lines.get(previousId) : null;
    if (after) after.after(li); else this.list.appendChild(li);
    this.lines.set(itemId, li);
    return li;
  }

  setText(li, text) {
    li.dataset.text = text;
    li.textContent = `${WHO[li.className]}: ${text}`;
    li.hidden = !text;
  }

  append(li, delta) { this.setText(li, li.dataset.text + (delta || "")); }

  onItemAdded(event) {
    const item = event.item || {};
    if (!item.id || item.type !== "message") return;
    if (item.role === "user") this.lineFor(item.id, "you", event.previous_item_id);
    else if (item.role === "assistant") this.lineFor(item.id, "interviewer", event.previous_item_id);
  }

  // relay.transcript {items: [{role, text, at_s}]}: the relay's own record, in order.
  restore(items) {
    this.list.replaceChildren();
    this.lines.clear();
    (items || []).forEach((item, index) => {
      const who = item.role === "user" ? "you" : item.role === "assistant" ? "interviewer" : null;
      if (!who || typeof item.text !== "string") return;
      this.setText(this.lineFor(`restored-${index}`, who), item.text);
    });
  }

  get empty() { return this.list.children.length === 0; }
}
