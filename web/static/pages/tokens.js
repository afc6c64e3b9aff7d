// API tokens (admins): create (the secret is shown once), rotate, revoke.
import { get, post, del } from "../api.js";
import { h, clear, errorBox, field, confirmAction, ago } from "../dom.js";
import { can } from "../session.js";

export function tokensPage(main) {
  if (!can.admin()) {
    clear(main, h("h1", {}, "Tokens"), h("p", { class: "muted" }, "Only admins manage tokens."));
    return null;
  }
  const msg = h("div", { role: "status" });
  const tbody = h("tbody");
  const secret = (what, t) => clear(msg, h("div", { class: "notice" }, `${what}. Copy the secret now; it is not shown again:`,
    h("div", { class: "secret mono", id: "token-secret" }, t.token)));

  async function load() {
    try {
      const r = await get("/v1/tokens");
      clear(tbody, r.items.map((t) => h("tr", {},
        h("td", {}, t.owner), h("td", {}, t.role), h("td", {}, t.project), h("td", { class: "mono" }, t.prefix),
        h("td", {}, ago(t.created_at)), h("td", {}, t.last_used_at ? ago(t.last_used_at) : "never"),
        h("td", {}, t.revoked_at ? "revoked " + ago(t.revoked_at) : "active"),
        h("td", {}, t.revoked_at ? null : h("div", { class: "row" },
          h("button", { type: "button", onclick: async () => {
            if (!(await confirmAction(`Rotate ${t.owner}'s token? The old secret stops working at once.`, "Rotate"))) return;
            try { secret("Rotated", await post(`/v1/tokens/${t.id}/rotate`)); load(); } catch (e) { clear(msg, errorBox(e)); }
          } }, "Rotate"),
          h("button", { type: "button", class: "danger", onclick: async () => {
            if (!(await confirmAction(`Revoke ${t.owner}'s token? It stops working at once.`, "Revoke"))) return;
            try { await del(`/v1/tokens/${t.id}`); clear(msg); load(); } catch (e) { clear(msg, errorBox(e)); }
          } }, "Revoke"))))));
    } catch (e) {
      clear(msg, errorBox(e));
    }
  }
  const owner = h("input", { required: true, maxlength: 128 });
  const role = h("select", {}, ["viewer", "operator", "admin"].map((r) => h("option", { value: r }, r)));
  const project = h("input", { required: true, value: "default", maxlength: 63 });
  clear(main, h("h1", {}, "Tokens"), msg,
    h("form", { class: "card row", onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        secret("Token created", await post("/v1/tokens", { owner: owner.value.trim(), role: role.value, project: project.value.trim() }));
        load();
      } catch (e) {
        clear(msg, errorBox(e));
      }
    } }, field("Owner", owner), field("Role", role), field("Project (* for all)", project), h("button", { class: "primary", type: "submit" }, "Create token")),
    h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {},
      ["Owner", "Role", "Project", "Prefix", "Created", "Last used", "State", ""].map((c) => h("th", { scope: "col" }, c)))), tbody)));
  load();
  return null;
}
