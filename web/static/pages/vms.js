// The VM list: filters by project, state, host and tag (asked of the API)
// and by name (a substring, here), refreshed every 2 s so states change
// before the user's eyes. Rows are kept by VM id and only rows whose VM
// changed are redrawn, so a list of thousands stays cheap to refresh.
import { get, qs } from "../api.js";
import { h, clear, errorBox, stateBadge, poller, field, tagsText, ago } from "../dom.js";

const STATES = ["requested", "configured", "running", "paused", "stopping", "stopped", "failed", "deleting"];
// At most this many pages of 1,000 are read: the list shows 10,000 VMs at
// most and says so; narrower filters find the rest.
const MAX_PAGES = 10;

export function vmsPage(main) {
  const project = h("input", { id: "f-project", placeholder: "all" });
  const state = h("select", { id: "f-state" }, h("option", { value: "" }, "any"), STATES.map((s) => h("option", { value: s }, s)));
  const host = h("select", { id: "f-host" }, h("option", { value: "" }, "any"));
  const tag = h("input", { id: "f-tag", placeholder: "key=value" });
  const name = h("input", { id: "f-name", placeholder: "part of a name", type: "search" });
  const count = h("span", { class: "muted", id: "vm-count", "aria-live": "polite" });
  const err = h("div");
  const tbody = h("tbody");
  // Explicit roles: the list is styled as a grid (style.css), which would
  // otherwise cost it its table semantics.
  const table = h("table", { id: "vm-table", role: "table", "aria-label": "VMs" },
    h("thead", { role: "rowgroup" }, h("tr", { role: "row" },
      h("th", { role: "columnheader", scope: "col" }, "Name"), h("th", { role: "columnheader", scope: "col" }, "State"),
      h("th", { role: "columnheader", scope: "col", class: "hide-narrow" }, "Desired"), h("th", { role: "columnheader", scope: "col" }, "Host"),
      h("th", { role: "columnheader", scope: "col", class: "hide-narrow" }, "vCPU"), h("th", { role: "columnheader", scope: "col", class: "hide-narrow" }, "Memory"),
      h("th", { role: "columnheader", scope: "col" }, "Project"), h("th", { role: "columnheader", scope: "col", class: "hide-narrow" }, "Tags"),
      h("th", { role: "columnheader", scope: "col", class: "hide-narrow" }, "Created"))),
    tbody);
  tbody.setAttribute("role", "rowgroup");
  clear(main,
    h("div", { class: "row" }, h("h1", {}, "VMs"), count),
    h("form", { class: "card row", role: "search", onsubmit: (e) => { e.preventDefault(); refresh(); } },
      field("Project", project), field("State", state), field("Host", host), field("Tag", tag), field("Name", name)),
    err,
    h("div", { class: "table-wrap" }, table));

  const rows = new Map(); // vm id → {tr, sig}
  let order = "";
  let hostNames = new Map();
  let latest = [];
  let seq = 0;

  function rowFor(vm) {
    return h("tr", { role: "row", dataset: { vmId: vm.id, state: vm.state } },
      h("td", { role: "cell" }, h("a", { href: "#/vms/" + encodeURIComponent(vm.id) }, vm.name)),
      h("td", { role: "cell", class: "vm-state" }, stateBadge(vm.state)),
      h("td", { role: "cell", class: "hide-narrow" }, vm.desired_state),
      h("td", { role: "cell" }, hostNames.get(vm.host_id) || (vm.host_id ? vm.host_id.slice(0, 8) : "–")),
      h("td", { role: "cell", class: "hide-narrow" }, vm.vcpu),
      h("td", { role: "cell", class: "hide-narrow" }, vm.mem_mib + " MiB"),
      h("td", { role: "cell" }, vm.project),
      h("td", { role: "cell", class: "hide-narrow" }, tagsText(vm.tags)),
      h("td", { role: "cell", class: "hide-narrow" }, ago(vm.created_at)));
  }

  function render() {
    const needle = name.value.trim().toLowerCase();
    const items = needle ? latest.filter((vm) => vm.name.toLowerCase().includes(needle)) : latest;
    const seen = new Set();
    const trs = [];
    for (const vm of items) {
      seen.add(vm.id);
      const sig = [vm.state, vm.desired_state, vm.host_id, vm.name, vm.project, tagsText(vm.tags), hostNames.get(vm.host_id)].join("|");
      let r = rows.get(vm.id);
      if (!r) {
        r = { tr: rowFor(vm), sig };
        rows.set(vm.id, r);
      } else if (r.sig !== sig) {
        const tr = rowFor(vm);
        tr.classList.add("changed");
        r.tr.replaceWith(tr);
        r.tr = tr;
        r.sig = sig;
      }
      trs.push(r.tr);
    }
    for (const [id, r] of rows) {
      if (!seen.has(id)) { r.tr.remove(); rows.delete(id); }
    }
    const now = items.map((vm) => vm.id).join(",");
    if (now !== order) { tbody.replaceChildren(...trs); order = now; }
    count.textContent = `${items.length} VM${items.length === 1 ? "" : "s"}` + (latest.truncated ? ` (the first ${latest.length}; narrow the filters)` : "");
    table.dataset.loaded = "true";
  }

  async function load() {
    const mine = ++seq;
    const q = { project: project.value.trim(), state: state.value, host_id: host.value, tag: tag.value.trim() ? [tag.value.trim()] : [], limit: 1000 };
    try {
      const hosts = await get("/v1/hosts");
      hostNames = new Map(hosts.items.map((x) => [x.id, x.name]));
      if (host.options.length !== hosts.items.length + 1) {
        const cur = host.value;
        clear(host, h("option", { value: "" }, "any"), hosts.items.map((x) => h("option", { value: x.id }, x.name)));
        host.value = cur;
      }
      const items = [];
      let cursor = "";
      let pages = 0;
      for (;;) {
        const r = await get("/v1/vms" + qs({ ...q, cursor }));
        items.push(...r.items);
        pages++;
        if (!r.next_cursor) break;
        if (pages >= MAX_PAGES) { items.truncated = true; break; }
        cursor = r.next_cursor;
      }
      if (mine !== seq) return; // a newer load (filters changed) wins
      latest = items;
      clear(err);
      render();
      if (!performance.getEntriesByName("vms-rendered").length) {
        // Rows are in the DOM; with their layout done and the main thread
        // free for the next task, the list is interactive (make bench-ui).
        performance.mark("vms-rendered");
        void table.offsetHeight; // forces style and layout now
        setTimeout(() => performance.mark("vms-interactive"), 0);
      }
    } catch (e) {
      if (mine === seq) clear(err, errorBox(e));
    }
  }

  let debounce = null;
  function refresh() { clearTimeout(debounce); debounce = setTimeout(load, 250); }
  for (const el of [project, tag]) el.addEventListener("input", refresh);
  for (const el of [state, host]) el.addEventListener("change", load);
  name.addEventListener("input", render);

  const stop = poller(load, 2000);
  return () => { stop(); clearTimeout(debounce); };
}
