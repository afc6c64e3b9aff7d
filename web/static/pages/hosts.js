// Hosts: capacity and allocation bars, state, drain and undrain (admins).
import { get, post } from "../api.js";
import { h, clear, errorBox, stateBadge, poller, confirmAction, ago, bytes } from "../dom.js";
import { can } from "../session.js";

function bar(used, total, label, fmt = String) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  const span = h("span");
  span.style.width = pct.toFixed(1) + "%"; // CSSOM, allowed by the content security policy
  return h("div", {},
    h("div", { class: "bar" + (pct > 90 ? " hot" : ""), role: "meter", "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": used, "aria-label": label }, span),
    h("div", { class: "bar-label" }, `${fmt(used)} of ${fmt(total)} ${label}`));
}

export function hostsPage(main) {
  const msg = h("div");
  const tbody = h("tbody");
  clear(main, h("h1", {}, "Hosts"), msg,
    h("div", { class: "table-wrap" }, h("table", { id: "host-table" }, h("thead", {}, h("tr", {},
      ["Name", "State", "vCPU", "Memory", "VMMs", "VMM", "Last seen", ""].map((c) => h("th", { scope: "col" }, c)))), tbody)));

  async function setDrain(host, drain) {
    if (!(await confirmAction(drain ? `Drain ${host.name}? New VMs go elsewhere; its VMs keep running.` : `Place new VMs on ${host.name} again?`, drain ? "Drain" : "Undrain"))) return;
    try {
      await post(`/v1/hosts/${host.id}/${drain ? "drain" : "undrain"}`);
      clear(msg);
      load();
    } catch (e) {
      clear(msg, errorBox(e));
    }
  }

  async function load() {
    try {
      const r = await get("/v1/hosts");
      clear(tbody, r.items.map((x) => h("tr", { dataset: { hostId: x.id } },
        h("td", {}, x.name, x.simulated ? h("span", { class: "muted" }, " (simulated)") : null),
        h("td", {}, stateBadge(x.state)),
        h("td", {}, bar(x.allocated.vcpu, x.capacity.vcpu, "vCPU")),
        h("td", {}, bar(x.allocated.mem_mib, x.capacity.mem_mib, "memory", (mib) => bytes(mib * 1048576))),
        h("td", {}, x.vms), h("td", { class: "mono" }, x.vmm || "–"), h("td", {}, ago(x.last_seen_at)),
        h("td", {}, can.admin() ? (x.state === "draining"
          ? h("button", { type: "button", class: "undrain", onclick: () => setDrain(x, false) }, "Undrain")
          : h("button", { type: "button", class: "drain", onclick: () => setDrain(x, true) }, "Drain")) : null))));
    } catch (e) {
      clear(msg, errorBox(e));
    }
  }
  return poller(load, 5000);
}
