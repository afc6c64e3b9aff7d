// Small DOM helpers. Text always goes in as text nodes (never as HTML), so
// names, tags and log lines from the API cannot inject markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value") el.value = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// errorBox shows an API error with its suggestion and request id.
export function errorBox(e) {
  return h("div", { class: "alert", role: "alert" },
    h("strong", {}, e.code ? `${e.message} (${e.code})` : String(e.message || e)),
    e.fault ? h("div", {}, "Firecracker: ", e.fault) : null,
    e.suggestion ? h("div", { class: "suggestion" }, "What to do: ", e.suggestion) : null,
    e.logTail && e.logTail.length ? h("pre", { class: "mono" }, e.logTail.join("\n")) : null,
    e.requestId ? h("div", { class: "rid" }, "request id ", e.requestId) : null);
}

export function stateBadge(s) {
  return h("span", { class: "state state-" + s }, s);
}

// confirmAction asks in a modal dialog; it resolves to true on Confirm.
// The dialog's close event comes in a later task: one of a question just
// cancelled (Escape) may arrive after the next question opened, so each
// question waits for a close that leaves the dialog closed, and only the
// newest question can be confirmed.
let asked = 0;
export function confirmAction(text, okLabel = "Confirm") {
  const d = document.getElementById("confirm");
  const mine = ++asked;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    const onClose = () => {
      if (d.open) return; // an earlier question's late event
      d.removeEventListener("close", onClose);
      resolve(mine === asked && d.returnValue === "ok");
    };
    d.addEventListener("close", onClose);
    d.returnValue = "";
    d.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

export function bytes(n) {
  if (!Number.isFinite(n)) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n.toFixed(0)) + " " + u[i];
}

export function ago(t) {
  if (!t) return "–";
  const s = (Date.now() - new Date(t).getTime()) / 1000;
  if (s < 60) return Math.max(0, Math.round(s)) + "s ago";
  if (s < 3600) return Math.round(s / 60) + "m ago";
  if (s < 86400) return Math.round(s / 3600) + "h ago";
  return new Date(t).toLocaleString();
}

// parseTags reads "k=v, k2=v2" into an object (undefined when empty).
export function parseTags(s) {
  const out = {};
  for (const part of (s || "").split(",").map((x) => x.trim()).filter(Boolean)) {
    const i = part.indexOf("=");
    if (i <= 0) throw new Error(`tag "${part}" must be key=value`);
    out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return Object.keys(out).length ? out : undefined;
}

export function tagsText(tags) {
  return Object.entries(tags || {}).map(([k, v]) => `${k}=${v}`).join(", ");
}

// field is a labelled form control.
export function field(label, control) {
  return h("label", {}, label, control);
}

// poller runs f now and every ms while the tab is visible; stop() ends it.
export function poller(f, ms) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try { await f(); } catch { /* f shows its own errors */ }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}
