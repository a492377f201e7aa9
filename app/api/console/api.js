// Calls to this server's own API. Every path is relative to the console's address, so the
// console keeps working behind a proxy that serves the server under a path prefix.

const ROOT = new URL(".", document.baseURI);
const KEYS = { management: "onnx-serve.management-key", inference: "onnx-serve.inference-key" };

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function apiUrl(path) {
  return new URL(path, ROOT).toString();
}

/** A model name or version as one URL path segment. */
export function segment(text) {
  return encodeURIComponent(String(text));
}

// Keys live in this tab's session storage only: never in a cookie, the URL or local storage.
export function getKey(kind) {
  return sessionStorage.getItem(KEYS[kind]) || "";
}

export function setKey(kind, value) {
  if (value) sessionStorage.setItem(KEYS[kind], value);
  else sessionStorage.removeItem(KEYS[kind]);
}

export function authHeaders(kind) {
  const key = getKey(kind);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function errorText(status, text) {
  try {
    const doc = JSON.parse(text);
    if (doc && typeof doc.error === "string") return doc.error;
  } catch {
    // Not JSON: the body as it came.
  }
  return text.trim() || `HTTP ${status}`;
}

/**
 * Fetch ``path``; the parsed JSON (or text), or an ApiError with the server's message.
 * ``auth`` ("management" or "inference") sends that key when one is kept.
 */
export async function call(path, { method = "GET", body, headers = {}, auth, text = false } = {}) {
  let response;
  try {
    response = await fetch(apiUrl(path), {
      method,
      body,
      headers: { ...(auth ? authHeaders(auth) : {}), ...headers },
      credentials: "omit",
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, `the server did not answer (${err.message})`);
  }
  const content = await response.text();
  if (!response.ok) throw new ApiError(response.status, errorText(response.status, content));
  if (text) return content;
  return content ? JSON.parse(content) : null;
}

/**
 * POST a multipart form with an XMLHttpRequest, whose upload events give real progress:
 * ``onProgress(loaded, total)``. Resolves with {status, body}; rejects only when no answer came.
 */
export function postForm(path, form, { auth, onProgress, onSent } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl(path));
    for (const [name, value] of Object.entries(authHeaders(auth))) {
      xhr.setRequestHeader(name, value);
    }
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    });
    xhr.upload.addEventListener("load", () => onSent && onSent());
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      const ok = xhr.status >= 200 && xhr.status < 300;
      resolve({
        status: xhr.status,
        body,
        error: ok ? null : errorText(xhr.status, xhr.responseText),
      });
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "the upload failed: no answer")));
    xhr.addEventListener("abort", () => reject(new ApiError(0, "the upload was aborted")));
    xhr.send(form);
  });
}
