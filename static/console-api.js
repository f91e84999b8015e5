// The console's credential and its calls to the relay's API (fetch with the bearer token).
//
// The credential is the operator token or an API key (rk_…, admin or read), typed in or
// given as "/stats#token=…" (then removed from the address bar), and kept in this tab's
// sessionStorage only. What it may do is asked once at sign-in (GET /api/keys/current);
// the operator token alone also opens /api/stats, the Live view.

const TOKEN_KEY = "relayOperatorToken";

export const credential = {
  token: null,
  // "operator" | "admin" | "read"; null until checked.
  role: null,
  get canChange() { return this.role === "operator" || this.role === "admin"; },
  get isOperator() { return this.role === "operator"; },
};

export function storedToken() { return sessionStorage.getItem(TOKEN_KEY); }

export function setToken(token) {
  credential.token = token;
  credential.role = null;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// "#token=…" in the address: read once, then out of the address bar and the history (no
// token in bookmarks or screenshots). The rest of the fragment (a view) stays.
export function tokenFromFragment() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = params.get("token");
  if (token) history.replaceState(null, "", location.pathname + location.search);
  return token ? token.trim() : null;
}

export class ApiFailure extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `Request failed (${status}).`);
    this.status = status;
    this.code = err.code;
    this.errors = err.errors || [];
    this.requestId = body && body.request_id;
  }
}

// A key for a POST's Idempotency-Key header: a retry of the same request is answered
// with the first answer, never done twice.
export function newIdempotencyKey() {
  if (crypto.randomUUID) return `console-${crypto.randomUUID()}`;
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `console-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

// JSON in, JSON out; `raw` hands back the Response of a success (files). A failure throws
// ApiFailure with the relay's error code and request id.
// `signal` aborts the request (and the reading of its body).
export async function api(method, path, { body, idempotencyKey, raw = false, signal } = {}) {
  const sent = { Authorization: `Bearer ${credential.token}` };
  if (body !== undefined) sent["Content-Type"] = "application/json";
  if (idempotencyKey) sent["Idempotency-Key"] = idempotencyKey;
  const resp = await fetch(path, {
    method, headers: sent, cache: "no-store", signal,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.ok && raw) return resp;
  if (resp.status === 204) return null;
  let answer = null;
  try { answer = await resp.json(); } catch (_) { answer = null; }
  if (!resp.ok) throw new ApiFailure(resp.status, answer);
  return answer;
}

// What the credential may do (GET /api/keys/current): "operator", "admin" or "read";
// ApiFailure 401 when it is none of them. Only the operator token opens /api/stats, so a
// key never asks for it (it would get 403 insufficient_scope).
export async function checkRole() {
  const me = await api("GET", "/api/keys/current");
  credential.role = me.kind === "operator" ? "operator" : me.scope === "admin" ? "admin" : "read";
  return credential.role;
}

// A list endpoint's path with its filters (empty ones left out) and page position.
export function listPath(base, params) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== "") query.set(k, String(v));
  }
  const text = query.toString();
  return text ? `${base}?${text}` : base;
}

// ------------------------------------------------------------------ downloads
// The name the relay gave a file (Content-Disposition: attachment; filename="…").
export function attachmentName(resp, fallback) {
  const header = resp.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(header) || /filename=([^;\s]+)/.exec(header);
  return match ? match[1] : fallback;
}

// Hand a blob to the browser as a download named `name`.
export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  // The download has its own copy once started; the URL is not needed past this task.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// A body read with progress: onProgress(received, total or null).
export async function readWithProgress(resp, onProgress) {
  const total = Number(resp.headers.get("Content-Length")) || null;
  if (!resp.body || !resp.body.getReader) return resp.blob();
  const reader = resp.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    onProgress(received, total);
  }
  return new Blob(chunks, { type: resp.headers.get("Content-Type") || "" });
}
