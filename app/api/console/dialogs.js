// The API-key dialog, the confirmation dialog and the header's key state.

import { getKey, setKey } from "./api.js";
import { byId } from "./dom.js";

const listeners = [];

/** Call ``listener()`` whenever the keys change. */
export function onKeysChanged(listener) {
  listeners.push(listener);
}

function showKeyState() {
  const management = getKey("management");
  const inference = getKey("inference");
  const parts = [];
  if (management) parts.push("management");
  if (inference) parts.push("inference");
  byId("key-state").textContent = parts.length
    ? `Key${parts.length > 1 ? "s" : ""} kept for this tab: ${parts.join(", ")}`
    : "No API key";
  byId("key-set").textContent = parts.length ? "Change keys" : "Enter key";
  byId("key-forget").hidden = parts.length === 0;
}

let pending = null;

/** Ask for the API keys; resolves true when saved, false when cancelled. */
export function askKeys(message = "", focus = "management") {
  const dialog = byId("key-dialog");
  const note = byId("key-dialog-message");
  note.textContent = message;
  note.hidden = !message;
  byId("key-management").value = getKey("management");
  byId("key-inference").value = getKey("inference");
  if (!dialog.open) dialog.showModal();
  byId(`key-${focus}`).focus();
  return new Promise((resolve) => {
    if (pending) pending(false);
    pending = resolve;
  });
}

function closeKeys(saved) {
  const dialog = byId("key-dialog");
  if (saved) {
    setKey("management", byId("key-management").value.trim());
    setKey("inference", byId("key-inference").value.trim());
  }
  // The fields must not keep a key once the dialog is closed.
  byId("key-management").value = "";
  byId("key-inference").value = "";
  if (dialog.open) dialog.close();
  showKeyState();
  if (pending) {
    const resolve = pending;
    pending = null;
    resolve(saved);
  }
  if (saved) for (const listener of listeners) listener();
}

let confirming = null;

/** Ask to confirm ``text``; resolves true or false. */
export function confirmAction(title, text, action) {
  byId("confirm-title").textContent = title;
  byId("confirm-text").textContent = text;
  byId("confirm-yes").textContent = action;
  const dialog = byId("confirm-dialog");
  dialog.showModal();
  byId("confirm-no").focus();
  return new Promise((resolve) => {
    confirming = resolve;
  });
}

function closeConfirm(answer) {
  const dialog = byId("confirm-dialog");
  if (dialog.open) dialog.close();
  if (confirming) {
    const resolve = confirming;
    confirming = null;
    resolve(answer);
  }
}

export function setUpDialogs() {
  byId("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    closeKeys(true);
  });
  byId("key-cancel").addEventListener("click", () => closeKeys(false));
  byId("key-dialog").addEventListener("cancel", (event) => {
    event.preventDefault();
    closeKeys(false);
  });
  byId("key-set").addEventListener("click", () => askKeys());
  byId("key-forget").addEventListener("click", () => {
    setKey("management", "");
    setKey("inference", "");
    showKeyState();
    for (const listener of listeners) listener();
  });
  byId("confirm-form").addEventListener("submit", (event) => {
    event.preventDefault();
    closeConfirm(true);
  });
  byId("confirm-no").addEventListener("click", () => closeConfirm(false));
  byId("confirm-dialog").addEventListener("cancel", (event) => {
    event.preventDefault();
    closeConfirm(false);
  });
  showKeyState();
}
