// The console's only way to the manager: its JSON API, with the bearer
// token the user signed in with. The token is kept in session storage (gone
// when the tab closes) and sent as a header, never as a cookie, so no other
// site can make the browser use it.

const KEY = "nexus.token";

export const token = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

// ApiError carries the error contract: error, status, message, suggestion,
// fault_message, request_id, log_tail.
export class ApiError extends Error {
  constructor(body, status) {
    super(body.message || body.error || `HTTP ${status}`);
    this.status = body.status || status;
    this.code = body.error || "";
    this.suggestion = body.suggestion || "";
    this.fault = body.fault_message || "";
    this.requestId = body.request_id || "";
    this.logTail = body.log_tail || [];
  }
}

async function toError(res) {
  let body = {};
  try { body = await res.json(); } catch { body = { message: res.statusText }; }
  return new ApiError(body, res.status);
}

// onUnauthorized is called when the token stopped working (revoked,
// rotated): the app goes back to the sign-in page.
export let onUnauthorized = () => {};
export function setOnUnauthorized(f) { onUnauthorized = f; }

// api calls the manager and returns the decoded JSON, or throws ApiError.
export async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + token.get(), Accept: "application/json" };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (!res.ok) {
    const e = await toError(res);
    if (res.status === 401) onUnauthorized(e);
    throw e;
  }
  if (res.status === 204) return null;
  return res.json();
}

export const get = (p) => api("GET", p);
export const post = (p, b) => api("POST", p, b === undefined ? {} : b);
export const del = (p) => api("DELETE", p);

// qs builds a query string from the non-empty fields of o (arrays repeat).
export function qs(o) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(o)) {
    if (Array.isArray(v)) v.filter(Boolean).forEach((x) => p.append(k, x));
    else if (v !== undefined && v !== null && v !== "") p.set(k, v);
  }
  const s = p.toString();
  return s ? "?" + s : "";
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// follow reads a Server-Sent Events stream with the bearer header (which
// EventSource cannot send) and reconnects after a drop with Last-Event-ID,
// so no line is lost or shown twice. onEvent(data, id) gets each line;
// onState("live" | "reconnecting" | "error", err) the connection's state.
// It returns a function that stops following.
export function follow(path, onEvent, onState) {
  let stopped = false;
  let ctrl = null;
  let lastId = "";
  (async () => {
    let backoff = 500;
    while (!stopped) {
      ctrl = new AbortController();
      try {
        const headers = { Authorization: "Bearer " + token.get(), Accept: "text/event-stream" };
        if (lastId) headers["Last-Event-ID"] = lastId;
        const res = await fetch(path, { headers, signal: ctrl.signal, cache: "no-store" });
        if (!res.ok) {
          const e = await toError(res);
          onState("error", e);
          if (res.status === 401) { onUnauthorized(e); return; }
          if (res.status !== 429 && res.status < 500) return; // retrying will not help
        } else {
          onState("live");
          backoff = 500;
          const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
          let buf = "";
          let ev = {};
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += value;
            let i;
            while ((i = buf.indexOf("\n")) >= 0) {
              const line = buf.slice(0, i).replace(/\r$/, "");
              buf = buf.slice(i + 1);
              if (line === "") {
                if (ev.data !== undefined) {
                  if (ev.id) lastId = ev.id;
                  onEvent(ev.data, ev.id);
                }
                ev = {};
                continue;
              }
              if (line.startsWith(":")) continue; // keep-alive
              const c = line.indexOf(":");
              const field = c < 0 ? line : line.slice(0, c);
              let v = c < 0 ? "" : line.slice(c + 1);
              if (v.startsWith(" ")) v = v.slice(1);
              if (field === "data") ev.data = ev.data === undefined ? v : ev.data + "\n" + v;
              else if (field === "id") ev.id = v;
              else if (field === "event") ev.event = v;
            }
          }
        }
      } catch (e) {
        if (stopped) return;
      }
      if (stopped) return;
      onState("reconnecting");
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 10000);
    }
  })();
  return () => { stopped = true; if (ctrl) ctrl.abort(); };
}
