// "Are you sure?" before anything that cannot be undone (delete a recording, end a live
// session, cancel an interview): a modal <dialog> (focus kept inside, Escape dismisses,
// focus returns to the button that asked), the safe choice focused first.

import { $ } from "./console-core.js";

let pending = null;

// Resolves true when the person confirms, false when they dismiss it.
export function confirmAction({ title, message, confirm, dismiss = "Keep it" }) {
  const dialog = $("confirm");
  if (pending) pending(false);
  const opener = document.activeElement;
  $("confirm-title").textContent = title;
  $("confirm-message").textContent = message;
  $("confirm-yes").textContent = confirm;
  $("confirm-no").textContent = dismiss;
  return new Promise((resolve) => {
    pending = (answer) => {
      pending = null;
      if (dialog.open) dialog.close();
      returnFocus(opener);
      resolve(answer);
    };
    dialog.showModal();
    $("confirm-no").focus();
  });
}

// Back to the button that asked; a table redrawn meanwhile has a new one with the same name.
function returnFocus(opener) {
  if (!opener || typeof opener.focus !== "function") return;
  if (opener.isConnected) { opener.focus(); return; }
  const label = opener.getAttribute && opener.getAttribute("aria-label");
  const twin = label && document.querySelector(`[aria-label="${CSS.escape(label)}"]`);
  if (twin) twin.focus();
}

export function installConfirm() {
  const dialog = $("confirm");
  $("confirm-yes").addEventListener("click", () => pending && pending(true));
  $("confirm-no").addEventListener("click", () => pending && pending(false));
  // Escape (or anything else that closes it) is a "no".
  dialog.addEventListener("close", () => pending && pending(false));
}
