// The audit trail: filter, and export what is shown as CSV.
import { get, qs } from "../api.js";
import { h, clear, errorBox, field } from "../dom.js";

const COLUMNS = ["id", "at", "actor", "action", "resource", "resource_id", "result", "request_id", "error"];

function csv(rows) {
  const cell = (v) => {
    const s = v === undefined || v === null ? "" : String(v);
    // Quote always; a leading = + - @ would be a formula in a spreadsheet.
    return '"' + (/^[=+\-@]/.test(s) ? "'" : "") + s.replace(/"/g, '""') + '"';
  };
  return [COLUMNS.join(","), ...rows.map((r) => COLUMNS.map((c) => cell(r[c])).join(","))].join("\r\n") + "\r\n";
}

export function auditPage(main) {
  const vmID = h("input", { id: "a-vm", placeholder: "VM id" });
  const actor = h("input", { id: "a-actor" });
  const since = h("input", { id: "a-since", type: "datetime-local" });
  const msg = h("div");
  const tbody = h("tbody");
  let rows = [];
  const exportBtn = h("button", { type: "button", id: "a-export", onclick: () => {
    const url = URL.createObjectURL(new Blob([csv(rows)], { type: "text/csv" }));
    const a = h("a", { href: url, download: "nexus-audit.csv" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } }, "Export CSV");

  async function load() {
    try {
      const r = await get("/v1/audit" + qs({ vm_id: vmID.value.trim(), actor: actor.value.trim(),
        since: since.value ? new Date(since.value).toISOString() : "", limit: 1000 }));
      rows = r.items.slice().reverse(); // newest first
      clear(msg);
      clear(tbody, rows.map((e) => h("tr", {},
        h("td", {}, e.id), h("td", {}, new Date(e.at).toLocaleString()), h("td", { class: "wrap" }, e.actor), h("td", {}, e.action),
        h("td", { class: "mono" }, `${e.resource} ${(e.resource_id || "").slice(0, 8)}`), h("td", {}, e.result),
        h("td", { class: "wrap" }, e.error || ""))));
    } catch (e) {
      rows = [];
      clear(tbody);
      clear(msg, errorBox(e));
    }
  }
  clear(main, h("h1", {}, "Audit log"),
    h("form", { class: "card row", onsubmit: (ev) => { ev.preventDefault(); load(); } },
      field("VM", vmID), field("Actor", actor), field("Since", since), h("button", { class: "primary", type: "submit" }, "Filter"), exportBtn),
    msg,
    h("div", { class: "table-wrap" }, h("table", { id: "audit-table" }, h("thead", {}, h("tr", {},
      ["Id", "At", "Actor", "Action", "Resource", "Result", "Error"].map((c) => h("th", { scope: "col" }, c)))), tbody)));
  load();
  return null;
}
