// One VM: its configuration (and how it differs from its template), its
// history, its console and firecracker log live, charts of its metrics,
// and the actions its state and the user's role allow.
import { get, post, del, follow, qs } from "../api.js";
import { h, clear, errorBox, stateBadge, poller, confirmAction, bytes, tagsText, ago } from "../dom.js";
import { can } from "../session.js";
import { chart } from "./chart.js";

// Log panes keep this many lines; older ones scroll away.
const MAX_LOG_LINES = 1000;

// Which actions make sense in which observed state.
const ACTIONS = [
  { id: "start", label: "Start", when: ["stopped", "failed"], confirm: "Start this VM?" },
  { id: "stop", label: "Stop", when: ["running", "paused"], confirm: "Stop this VM? Its guest is shut down." },
  { id: "pause", label: "Pause", when: ["running"], confirm: "Pause this VM's vCPUs?" },
  { id: "resume", label: "Resume", when: ["paused"], confirm: "Resume this VM?" },
  { id: "snapshot", label: "Snapshot", when: ["running", "paused"], confirm: "Take a snapshot? The guest is paused while its memory is written." },
  { id: "delete", label: "Delete", when: null, confirm: "Delete this VM? Its process, TAP and run dir go; its snapshots stay.", danger: true },
];

export function vmPage(main, id) {
  const base = "/v1/vms/" + encodeURIComponent(id);
  const title = h("h1", {}, "VM");
  const badge = h("span", { id: "vm-state" });
  const actions = h("div", { class: "row", id: "vm-actions" });
  const msg = h("div", { id: "vm-msg" });
  const config = h("div", { class: "card" });
  const diff = h("div");
  const events = h("div", { class: "card" });
  const charts = h("div", { class: "grid", id: "vm-charts" });
  const consolePane = logPane("console", "Console");
  const fcPane = logPane("fc", "Firecracker log");
  clear(main,
    h("p", {}, h("a", { href: "#/vms" }, "← VMs")),
    h("div", { class: "row title-row" }, title, badge),
    actions, msg,
    h("h2", {}, "Metrics"), charts,
    h("div", { class: "grid" }, consolePane.el, fcPane.el),
    h("div", { class: "grid" }, h("div", {}, h("h2", {}, "Configuration"), config), h("div", {}, h("h2", {}, "Events"), events)),
    diff);

  let vm = null;
  let streams = [];
  let busy = false;

  function renderActions() {
    if (!can.operate() || !vm) { clear(actions); return; }
    clear(actions, ACTIONS.map((a) => h("button", {
      type: "button", id: "act-" + a.id, class: a.danger ? "danger" : "",
      disabled: busy || (a.when && !a.when.includes(vm.state)),
      onclick: () => act(a),
    }, a.label)));
  }

  async function act(a) {
    if (!(await confirmAction(a.confirm, a.label))) return;
    busy = true;
    renderActions();
    clear(msg);
    try {
      if (a.id === "delete") {
        await del(base);
        location.hash = "#/vms";
        return;
      }
      if (a.id === "snapshot") {
        const r = await post(base + "/snapshots", {});
        clear(msg, h("div", { class: "notice" }, `Snapshot ${r.snapshot_id} written (${bytes(r.allocated_bytes)} on disk, guest paused ${r.paused_ms} ms). `,
          h("a", { href: "#/snapshots" }, "Snapshots")));
      } else {
        await post(base + "/" + a.id);
      }
      await loadVM();
    } catch (e) {
      clear(msg, errorBox(e));
    } finally {
      busy = false;
      renderActions();
    }
  }

  function renderConfig() {
    const kv = [
      ["id", vm.id], ["project", vm.project], ["desired state", vm.desired_state], ["host", vm.host_addr || vm.host_id || "–"],
      ["vCPU", vm.vcpu], ["memory", vm.mem_mib + " MiB"], ["kernel", vm.kernel_image_id || vm.kernel_path],
      ["rootfs", vm.rootfs_image_id || vm.rootfs_path], ["boot args", vm.boot_args], ["tap", vm.tap], ["mac", vm.mac],
      ["tags", tagsText(vm.tags)], ["template", vm.template_id], ["created", new Date(vm.created_at).toLocaleString()],
      ["updated", ago(vm.updated_at)], ["last error", vm.last_error],
    ];
    clear(config, h("dl", { class: "kv" }, kv.filter(([, v]) => v !== undefined && v !== "" && v !== null).map(([k, v]) => [h("dt", {}, k), h("dd", { class: k === "last error" ? "" : "mono" }, String(v))])));
    if (vm.template_id && vm.template_config) {
      const t = vm.template_config || {};
      const o = vm.overrides || {};
      const keys = [...new Set([...Object.keys(t), ...Object.keys(o)])].sort();
      const show = (v) => (v === undefined ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v));
      clear(diff, h("h2", {}, "Template and overrides"),
        h("div", { class: "table-wrap" }, h("table", { id: "template-diff" },
          h("thead", {}, h("tr", {}, h("th", {}, "field"), h("th", {}, "template"), h("th", {}, "override"))),
          h("tbody", {}, keys.map((k) => h("tr", { class: k in o ? "changed-field" : "" },
            h("td", {}, k), h("td", { class: "mono wrap" }, show(t[k])), h("td", { class: "mono wrap" }, k in o ? show(o[k]) : "(template)")))))));
    }
  }

  async function loadVM() {
    try {
      const r = await get(base);
      const first = !vm;
      vm = r.item;
      title.textContent = vm.name;
      clear(badge, stateBadge(vm.state));
      badge.dataset.state = vm.state;
      renderActions();
      renderConfig();
      if (first) openStreams();
    } catch (e) {
      clear(msg, errorBox(e));
      if (e.status === 404) stopAll();
    }
  }

  async function loadEvents() {
    try {
      const r = await get(base + "/events");
      clear(events, r.items.length ? h("ol", { class: "mono", id: "vm-events" }, r.items.slice(-50).map((ev) =>
        h("li", {}, `${new Date(ev.at).toLocaleTimeString()} [${ev.level}] ${ev.message}`))) : h("p", { class: "muted" }, "No events yet."));
    } catch (e) {
      clear(events, errorBox(e));
    }
  }

  function openStreams() {
    for (const p of [consolePane, fcPane]) {
      streams.push(follow(base + "/logs/stream" + qs({ source: p.source, tail: 100 }), p.add, p.status));
    }
  }

  // Charts: the agent's series for this VM, counters turned into rates.
  const defs = [
    { title: "Console output (bytes/s)", series: [["uart", "nexus_fc_uart_writes_total", "rate"]], fmt: rate },
    { title: "Disk (bytes/s)", series: [["read", "nexus_fc_block_read_bytes_total", "rate"], ["write", "nexus_fc_block_write_bytes_total", "rate"]], fmt: rate },
    { title: "Network (bytes/s)", series: [["rx", "nexus_fc_net_rx_bytes_total", "rate"], ["tx", "nexus_fc_net_tx_bytes_total", "rate"]], fmt: rate },
    { title: "VMM CPU (%)", series: [["cpu", "nexus_vmm_cpu_seconds_total", "rate", 100]], fmt: (v) => v.toFixed(1) + "%" },
    { title: "VMM memory", series: [["rss", "nexus_vmm_resident_memory_bytes", "value"]], fmt: bytes },
  ];
  function rate(v) { return bytes(v) + "/s"; }
  let plots = null;
  let prev = null;
  async function loadStats() {
    if (!vm || !vm.host_id) return;
    let st;
    try {
      st = await get(base + "/stats");
    } catch {
      return; // the VM page says what is wrong; charts just pause
    }
    if (!st.samples.length) return;
    const t = new Date(st.at).getTime() / 1000;
    const vals = Object.fromEntries(st.samples.map((s) => [s.name, s.value]));
    if (!plots) plots = defs.map((d) => chart(charts, d.title, d.series.map((s) => s[0]), d.fmt));
    if (prev && t > prev.t) {
      defs.forEach((d, i) => plots[i].push(t, d.series.map(([, name, kind, scale = 1]) => {
        if (kind === "value") return vals[name] ?? null;
        if (vals[name] === undefined || prev.vals[name] === undefined) return null;
        return Math.max(0, (vals[name] - prev.vals[name]) / (t - prev.t)) * scale;
      })));
    }
    prev = { t, vals };
  }

  const stops = [poller(loadVM, 2000), poller(loadEvents, 5000), poller(loadStats, 2000)];
  const onResize = () => plots && plots.forEach((p) => p.resize());
  window.addEventListener("resize", onResize);
  function stopAll() {
    stops.forEach((s) => s());
    streams.forEach((s) => s());
    streams = [];
  }
  return () => {
    stopAll();
    window.removeEventListener("resize", onResize);
    if (plots) plots.forEach((p) => p.destroy());
  };
}

// logPane is a live, bounded view of one log.
function logPane(source, label) {
  const pre = h("pre", { class: "log", id: "log-" + source, tabindex: "0", "aria-label": label });
  const state = h("span", { class: "stream-state muted", id: "log-" + source + "-state" }, "connecting…");
  const err = h("div");
  let count = 0;
  const el = h("div", {}, h("div", { class: "row" }, h("h2", {}, label), state), err, pre);
  return {
    el, source,
    add: (line) => {
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(line + "\n");
      if (++count > MAX_LOG_LINES) { pre.firstChild.remove(); count--; }
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    },
    status: (s, e) => {
      state.textContent = s === "live" ? "live" : s === "reconnecting" ? "reconnecting…" : "stopped";
      state.dataset.state = s;
      clear(err, e ? errorBox(e) : null);
    },
  };
}
