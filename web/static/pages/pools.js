// Warm pools: the list (create, claim, delete) and one pool's page with its
// VMs and its newest rollout — progress, pause, resume, abort, promote —
// and a form to start the next one, with the template diff it would bring.
import { get, post, del, qs } from "../api.js";
import { h, clear, errorBox, field, confirmAction, stateBadge, poller, ago } from "../dom.js";
import { can } from "../session.js";

// A pool's name: what the API accepts (its pattern, "-" escaped for the v flag).
const NAME = "^[A-Za-z0-9][A-Za-z0-9._\\-]*$";
// A Go duration as the API takes it (30s, 5m, 1m30s).
const DURATION = "^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";
// The list asks for the newest rollout of at most this many template pools
// on each refresh; the rest say "see the pool".
const MAX_ROLLOUT_LOOKUPS = 20;
// A pool's page reads at most this many pages of 1,000 VMs of its project
// to find the pool's own (the API has no pool filter).
const MAX_VM_PAGES = 10;
// The version select offers the newest this many versions of the template.
const MAX_VERSIONS = 100;
// Rollout states in which the rollout is still under way (the next one
// cannot start). awaiting_promotion: canaries healthy, waiting for a person.
const ACTIVE = ["running", "paused", "reverting", "awaiting_promotion"];

const poolPath = (id) => "/v1/pools/" + encodeURIComponent(id);

// rolloutCell is a rollout's state and versions, in a list row.
function rolloutCell(r) {
  if (r === undefined) return h("span", { class: "muted" }, "see the pool");
  if (!r) return h("span", { class: "muted" }, "–");
  return h("span", { class: "rollout-cell", dataset: { state: r.state } }, stateBadge(r.state), ` v${r.from_version} → v${r.to_version}`);
}

function sourceText(p, templates) {
  if (p.snapshot_id) return "snapshot " + p.snapshot_id.slice(0, 8);
  const t = templates.get(p.template_id);
  return `${t ? t.name : p.template_id.slice(0, 8)} v${p.template_version}`;
}

function stateCell(p) {
  return h("span", {}, stateBadge(p.state), p.refill_lag_seconds > 0 ? h("span", { class: "muted" }, ` ${Math.round(p.refill_lag_seconds)}s short`) : null);
}

// claim takes a VM out of the pool after confirmation and says which.
async function claim(p, msg, after) {
  if (!(await confirmAction(`Claim a VM of pool ${p.name}? A warm VM is resumed and is yours; the pool makes another.`, "Claim"))) return;
  try {
    const r = await post(poolPath(p.id) + "/claim", {});
    clear(msg, h("div", { class: "notice", role: "status", id: "claim-result" }, "Claimed ",
      h("a", { href: "#/vms/" + encodeURIComponent(r.item.id) }, r.item.name),
      r.from_pool ? " — a warm VM, resumed." : " — the pool was empty, so it was made the normal way."));
    after();
  } catch (e) {
    clear(msg, errorBox(e));
  }
}

export function poolsPage(main) {
  const msg = h("div", { id: "pools-msg" }); // what the user's actions did
  const err = h("div", { id: "pools-err" }); // why the list could not be read
  const count = h("span", { class: "muted", id: "pool-count", "aria-live": "polite" });
  const tbody = h("tbody");
  const table = h("table", { id: "pool-table" }, h("thead", {}, h("tr", {},
    ["Name", "Project", "Source", "Ready", "Min ready", "State", "Rollout", "Claims", ""].map((c, i) =>
      h("th", { scope: "col", class: [1, 4, 7].includes(i) ? "hide-narrow" : null }, c)))), tbody);
  clear(main, h("div", { class: "row" }, h("h1", {}, "Warm pools"), count), err, msg,
    can.operate() ? createForm(msg, () => load()) : null,
    h("div", { class: "table-wrap" }, table));

  const rows = new Map(); // pool id → {tr, sig}
  let seq = 0;

  function rowFor(p, r, templates) {
    return h("tr", { dataset: { poolId: p.id, state: p.state, ready: p.ready } },
      h("td", {}, h("a", { href: "#/pools/" + encodeURIComponent(p.id) }, p.name)),
      h("td", { class: "hide-narrow" }, p.project),
      h("td", { class: "mono" }, sourceText(p, templates)),
      h("td", { class: "pool-ready" }, `${p.ready} / ${p.size}`, p.creating ? h("span", { class: "muted" }, ` (+${p.creating} on the way)`) : null),
      h("td", { class: "hide-narrow" }, p.min_ready),
      h("td", {}, stateCell(p)),
      h("td", {}, rolloutCell(r)),
      h("td", { class: "hide-narrow" }, p.claims),
      h("td", {}, can.operate() ? h("div", { class: "row" },
        h("button", { type: "button", class: "claim", onclick: () => claim(p, msg, load) }, "Claim"),
        h("button", { type: "button", class: "danger delete", onclick: () => remove(p) }, "Delete")) : null));
  }

  async function remove(p) {
    if (!(await confirmAction(`Delete pool ${p.name}? Its unclaimed VMs are deleted; claimed ones stay.`, "Delete"))) return;
    try {
      await del(poolPath(p.id));
      clear(msg);
      load();
    } catch (e) {
      clear(msg, errorBox(e));
    }
  }

  async function load() {
    const mine = ++seq;
    try {
      const [pools, tl] = await Promise.all([get("/v1/pools"), get("/v1/templates")]);
      const templates = new Map(tl.items.map((t) => [t.id, t]));
      // The newest rollout of each template pool (404: it never had one).
      const rollouts = await Promise.all(pools.items.map((p, i) => (!p.template_id || i >= MAX_ROLLOUT_LOOKUPS
        ? Promise.resolve(p.template_id ? undefined : null)
        : get(poolPath(p.id) + "/rollout").then((x) => x.item, (e) => { if (e.status === 404) return null; throw e; }))));
      if (mine !== seq) return;
      const seen = new Set();
      const trs = pools.items.map((p, i) => {
        seen.add(p.id);
        const r = rollouts[i];
        const sig = JSON.stringify([p.name, p.ready, p.creating, p.size, p.min_ready, p.state, Math.round(p.refill_lag_seconds), p.claims,
          p.template_version, templates.get(p.template_id)?.name, r && [r.state, r.from_version, r.to_version], r === undefined]);
        let row = rows.get(p.id);
        if (!row || row.sig !== sig) {
          const tr = rowFor(p, r, templates);
          if (row) { tr.classList.add("changed"); row.tr.replaceWith(tr); }
          row = { tr, sig };
          rows.set(p.id, row);
        }
        return row.tr;
      });
      for (const [id, row] of rows) if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
      // Re-append only when the order changed: a focused button keeps its focus.
      if (trs.some((tr, i) => tbody.children[i] !== tr) || tbody.children.length !== trs.length) {
        tbody.replaceChildren(...(trs.length ? trs : [h("tr", {}, h("td", { colspan: 9 }, h("span", { class: "muted" }, "No pools yet.")))]));
      }
      count.textContent = `${pools.items.length} pool${pools.items.length === 1 ? "" : "s"}`;
      clear(err);
      table.dataset.loaded = "true";
    } catch (e) {
      if (mine === seq) clear(err, errorBox(e));
    }
  }
  return poller(load, 2000);
}

function createForm(msg, reload) {
  const name = h("input", { id: "p-name", required: true, pattern: NAME, maxlength: 40 });
  const source = h("select", { id: "p-source", required: true });
  const size = h("input", { id: "p-size", type: "number", min: 1, max: 100, value: 3, required: true });
  const minReady = h("input", { id: "p-min-ready", type: "number", min: 1, max: 100, placeholder: "size" });
  const onEmpty = h("select", { id: "p-on-empty" }, h("option", { value: "create" }, "create a VM (slower)"), h("option", { value: "fail" }, "fail (503)"));
  const project = h("input", { id: "p-project", placeholder: "your token's", maxlength: 63 });
  const submit = h("button", { class: "primary", type: "submit", id: "p-submit" }, "Create pool");
  Promise.all([get("/v1/templates"), get("/v1/snapshots")]).then(([t, s]) => {
    const opts = [
      ...t.items.map((x) => h("option", { value: "t:" + x.id }, `template ${x.name} v${x.version} (${x.project})`)),
      ...s.items.map((x) => h("option", { value: "s:" + x.id }, `snapshot ${x.id.slice(0, 8)} of ${x.vm_name || x.vm_id.slice(0, 8)} (${x.project})`)),
    ];
    clear(source, opts.length ? opts : h("option", { value: "" }, "no templates or snapshots yet"));
  }).catch((e) => clear(msg, errorBox(e)));
  return h("form", { class: "card", id: "pool-form", onsubmit: async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    const [kind, id] = [source.value.slice(0, 1), source.value.slice(2)];
    try {
      const r = await post("/v1/pools", {
        name: name.value.trim(), project: project.value.trim() || undefined, size: Number(size.value),
        min_ready: minReady.value ? Number(minReady.value) : undefined, on_empty: onEmpty.value,
        template_id: kind === "t" ? id : undefined, snapshot_id: kind === "s" ? id : undefined,
      });
      clear(msg, h("div", { class: "notice", role: "status" }, "Pool ", h("a", { href: "#/pools/" + encodeURIComponent(r.item.id) }, r.item.name),
        ` created; it fills with ${r.item.size} paused VMs.`));
      reload();
    } catch (e) {
      clear(msg, errorBox(e));
    } finally {
      submit.disabled = false;
    }
  } },
  h("h2", {}, "New pool"),
  h("div", { class: "row" }, field("Name", name), field("From", source), field("Size", size), field("Refill below (min ready)", minReady),
    field("When empty", onEmpty), field("Project", project)),
  h("div", { class: "row end" }, submit));
}

// progress is the rollout's bar: new VMs (of to_version, ready) and old
// ones against the pool's size; during a surge both may be on the way.
function progress(r, size) {
  const total = Math.max(size, r.new + r.old, 1);
  const pct = (n) => ((100 * Math.min(n, total)) / total).toFixed(1) + "%";
  const newSpan = h("span", { class: "new" });
  const oldSpan = h("span", { class: "old" });
  newSpan.style.width = pct(r.new); // CSSOM, allowed by the content security policy
  oldSpan.style.left = pct(r.new);
  oldSpan.style.width = pct(r.old);
  return h("div", {},
    h("div", { class: "bar split", id: "rollout-bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": size, "aria-valuenow": Math.min(r.new, size),
      "aria-label": "VMs on the new version" }, newSpan, oldSpan),
    h("div", { class: "bar-label", id: "rollout-counts" }, `${r.new} of ${size} ready on v${r.to_version} · ${r.old} not on v${r.to_version}`));
}

const ACTIONS = [
  { id: "pause", label: "Pause", when: ["running"], confirm: null },
  { id: "resume", label: "Resume", when: ["paused"], confirm: null },
  { id: "promote", label: "Promote", when: ["awaiting_promotion"], only: true, confirm: "Promote the rollout? The canaries are healthy; the rest of the pool moves to the new version." },
  { id: "abort", label: "Abort", when: ["running", "paused", "awaiting_promotion"], danger: true, confirm: "Abort the rollout? The pool goes back to the version it had before, at full size." },
];

export function poolPage(main, id) {
  const base = poolPath(id);
  const title = h("h1", {}, "Pool");
  const badge = h("span", { id: "pool-state" });
  const msg = h("div", { id: "pool-msg" }); // what the user's actions did
  const err = h("div", { id: "pool-err" }); // why the pool could not be read
  const details = h("div", { class: "card", id: "pool-details" });
  const poolActions = h("div", { class: "row", id: "pool-actions" });
  const rolloutBox = h("div", { class: "card", id: "rollout", "aria-live": "polite" });
  const rolloutMsg = h("div", { id: "rollout-msg" });
  const buttons = h("div", { class: "row", id: "rollout-actions" });
  const startBox = h("div", { id: "rollout-start" });
  const vmsBody = h("tbody");
  const vmsNote = h("p", { class: "muted", id: "pool-vms-note" });
  clear(main,
    h("p", {}, h("a", { href: "#/pools" }, "← Pools")),
    h("div", { class: "row title-row" }, title, badge), poolActions, err, msg,
    h("div", { class: "grid two" },
      h("div", {}, h("h2", {}, "Pool"), details),
      h("div", {}, h("h2", {}, "Rollout"), rolloutMsg, rolloutBox, buttons)),
    startBox,
    h("h2", {}, "VMs"), vmsNote,
    h("div", { class: "table-wrap" }, h("table", { id: "pool-vms" }, h("thead", {}, h("tr", {},
      ["Name", "State", "Version", "Host", "Created"].map((c, i) => h("th", { scope: "col", class: i >= 3 ? "hide-narrow" : null }, c)))), vmsBody)));

  let pool = null;
  let rollout = null;
  let busy = false;
  let stopped = false;
  let vmsAt = 0;
  let templateName = "";
  let rolloutSig = "";
  let vmsSig = "";

  // The rollout buttons are made once and only enabled or disabled, so a
  // keyboard user's focus stays where it is across refreshes.
  const btns = can.operate() ? ACTIONS.map((a) => {
    const b = h("button", { type: "button", id: "rollout-" + a.id, class: a.danger ? "danger" : a.id === "promote" ? "primary" : "", onclick: () => act(a) }, a.label);
    return [a, b];
  }) : [];
  clear(buttons, btns.map(([, b]) => b));
  function renderButtons() {
    for (const [a, b] of btns) {
      const on = !!rollout && a.when.includes(rollout.state);
      b.hidden = !!a.only && !on;
      b.disabled = busy || !on;
    }
  }

  async function act(a) {
    if (a.confirm && !(await confirmAction(a.confirm, a.label))) return;
    busy = true;
    renderButtons();
    clear(rolloutMsg);
    try {
      rollout = (await post(base + "/rollout/" + a.id)).item;
      renderRollout();
      await load();
    } catch (e) {
      clear(rolloutMsg, errorBox(e));
    } finally {
      busy = false;
      renderButtons();
    }
  }

  function renderDetails() {
    const kv = [
      ["id", pool.id], ["project", pool.project],
      pool.template_id ? ["template", `${templateName || pool.template_id} v${pool.template_version}`] : ["snapshot", pool.snapshot_id],
      ["size", pool.size], ["ready", pool.ready], ["on the way", pool.creating], ["min ready", pool.min_ready],
      ["when empty", pool.on_empty], ["short for", pool.refill_lag_seconds > 0 ? `${Math.round(pool.refill_lag_seconds)}s` : "–"],
      ["claims", pool.claims], ["created", new Date(pool.created_at).toLocaleString()],
    ];
    clear(details, h("dl", { class: "kv" }, kv.map(([k, v]) => [h("dt", {}, k), h("dd", { class: "mono", dataset: { k } }, String(v))])));
    title.textContent = pool.name;
    clear(badge, stateBadge(pool.state));
    badge.dataset.state = pool.state;
    badge.dataset.ready = pool.ready;
    badge.dataset.version = pool.template_version || "";
  }

  function renderRollout() {
    renderButtons();
    if (!pool) return;
    if (!pool.template_id) {
      clear(rolloutBox, h("p", { class: "muted" }, "This pool is made from a snapshot: only template pools have versions to roll out."));
      return;
    }
    if (!rollout) {
      rolloutSig = "";
      clear(rolloutBox, h("p", { class: "muted", id: "rollout-none" }, "No rollout yet."));
      rolloutBox.dataset.state = "";
      return;
    }
    const r = rollout;
    // Redrawn only when something changed: the box is a live region, read
    // out on each change, and a keyboard user's place is kept.
    const sig = JSON.stringify([r, pool.size]);
    if (sig === rolloutSig) return;
    rolloutSig = sig;
    const strategy = [`canary ${r.canary}`, `max parallel ${r.max_parallel}`, `min healthy ${r.min_healthy_time}`, `deadline ${r.progress_deadline}`,
      r.auto_revert ? "auto revert" : "no auto revert", r.auto_promote === undefined ? null : r.auto_promote ? "auto promote" : "promote by hand"].filter(Boolean).join(" · ");
    rolloutBox.dataset.state = r.state;
    rolloutBox.dataset.toVersion = r.to_version;
    clear(rolloutBox,
      h("div", { class: "row title-row" }, h("span", { id: "rollout-state" }, stateBadge(r.state)), h("span", {}, "phase ", h("strong", { id: "rollout-phase" }, r.phase)),
        h("span", { class: "mono", id: "rollout-versions" }, `v${r.from_version} → v${r.to_version}`)),
      progress(r, pool.size),
      r.message ? h("p", { id: "rollout-message" }, r.message) : null,
      h("dl", { class: "kv" },
        h("dt", {}, "strategy"), h("dd", { id: "rollout-strategy", class: "text" }, strategy),
        h("dt", {}, "started"), h("dd", { class: "text" }, `${new Date(r.created_at).toLocaleString()}${r.actor ? " by " + r.actor : ""}`),
        h("dt", {}, "last change"), h("dd", { class: "text" }, new Date(r.updated_at).toLocaleString())));
  }

  async function loadVMs() {
    const items = [];
    let cursor = "";
    for (let page = 0; page < MAX_VM_PAGES; page++) {
      const r = await get("/v1/vms" + qs({ project: pool.project, limit: 1000, cursor }));
      items.push(...r.items.filter((vm) => vm.pool_id === pool.id));
      if (!r.next_cursor) break;
      cursor = r.next_cursor;
      if (page === MAX_VM_PAGES - 1) vmsNote.textContent = `Only the first ${MAX_VM_PAGES * 1000} VMs of project ${pool.project} were searched.`;
    }
    items.sort((a, b) => a.name.localeCompare(b.name));
    vmsAt = Date.now();
    const sig = JSON.stringify(items.map((vm) => [vm.id, vm.name, vm.state, vm.template_version, vm.host_id]));
    if (sig === vmsSig) return; // unchanged: the rows (and focus on a link) stay
    vmsSig = sig;
    clear(vmsBody, items.length ? items.map((vm) => h("tr", { dataset: { vmId: vm.id, state: vm.state, version: vm.template_version || "" } },
      h("td", {}, h("a", { href: "#/vms/" + encodeURIComponent(vm.id) }, vm.name)),
      h("td", {}, stateBadge(vm.state)),
      h("td", {}, vm.template_version ? "v" + vm.template_version : "–"),
      h("td", { class: "hide-narrow mono" }, vm.host_id ? vm.host_id.slice(0, 8) : "–"),
      h("td", { class: "hide-narrow" }, new Date(vm.created_at).toLocaleTimeString()))) : h("tr", {}, h("td", { colspan: 5 }, h("span", { class: "muted" }, "No VMs yet."))));
  }

  async function load() {
    if (stopped) return;
    try {
      pool = (await get(base)).item;
      if (pool.template_id && !templateName) templateName = (await get("/v1/templates/" + encodeURIComponent(pool.template_id))).item.name;
      if (pool.template_id) {
        try {
          rollout = (await get(base + "/rollout")).item;
        } catch (e) {
          if (e.status !== 404) throw e;
          rollout = null;
        }
      }
      renderDetails();
      renderRollout();
      renderPoolActions();
      if (pool.template_id && can.operate()) start.update();
      // While something moves, the VMs are read on every refresh; when the
      // pool is full and no rollout runs, every 10 s.
      const moving = pool.state !== "ready" || pool.creating > 0 || (rollout && ACTIVE.includes(rollout.state));
      if (moving || Date.now() - vmsAt > 10000) await loadVMs();
      clear(err);
    } catch (e) {
      clear(err, errorBox(e));
      if (e.status === 404) stop(); // the pool is gone
    }
  }

  let poolButtonsMade = false;
  function renderPoolActions() {
    if (poolButtonsMade || !can.operate()) return;
    poolButtonsMade = true;
    clear(poolActions,
      h("button", { type: "button", id: "pool-claim", onclick: () => claim(pool, msg, load) }, "Claim a VM"),
      h("button", { type: "button", id: "pool-delete", class: "danger", onclick: async () => {
        if (!(await confirmAction(`Delete pool ${pool.name}? Its unclaimed VMs are deleted; claimed ones stay.`, "Delete"))) return;
        try {
          await del(base);
          location.hash = "#/pools";
        } catch (e) {
          clear(msg, errorBox(e));
        }
      } }, "Delete pool"));
  }

  const start = startForm(base, () => pool, () => rollout, startBox, async (r) => { rollout = r; renderRollout(); await load(); });
  const stopPoll = poller(load, 2000);
  function stop() { stopped = true; stopPoll(); start.stop(); }
  return stop;
}

// startForm is the form that starts a rollout, with the diff between the
// pool's version and the one chosen. update() follows the pool.
function startForm(base, getPool, getRollout, box, started) {
  const version = h("select", { id: "r-version", required: true });
  const canary = h("input", { id: "r-canary", type: "number", min: 0, max: 100, value: 1 });
  const maxParallel = h("input", { id: "r-max-parallel", type: "number", min: 1, max: 100, value: 1 });
  const minHealthy = h("input", { id: "r-min-healthy", placeholder: "0s", pattern: DURATION, maxlength: 16 });
  const deadline = h("input", { id: "r-deadline", placeholder: "5m", pattern: DURATION, maxlength: 16 });
  const autoRevert = h("input", { id: "r-auto-revert", type: "checkbox" });
  const autoPromote = h("input", { id: "r-auto-promote", type: "checkbox", checked: true });
  const submit = h("button", { class: "primary", type: "submit", id: "r-submit" }, "Start rollout");
  const note = h("span", { class: "muted", id: "r-note" });
  const out = h("div", { id: "r-msg" });
  const diff = h("div", { id: "r-diff" });
  let versions = [];
  let versionsAt = 0;
  let diffKey = "";
  let made = false;
  let stopped = false;

  const form = h("form", { class: "card", id: "rollout-form", onsubmit: async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    const body = {
      template_version: Number(version.value),
      canary: canary.value === "" ? undefined : Number(canary.value),
      max_parallel: maxParallel.value === "" ? undefined : Number(maxParallel.value),
      min_healthy_time: minHealthy.value.trim() || undefined,
      progress_deadline: deadline.value.trim() || undefined,
      auto_revert: autoRevert.checked || undefined,
    };
    // Sent only when unchecked: true is the API's default.
    if (!autoPromote.checked) body.auto_promote = false;
    try {
      const r = await post(base + "/rollout", body);
      clear(out, h("div", { class: "notice", role: "status" }, `Rollout to v${r.item.to_version} started.`));
      await started(r.item);
    } catch (e) {
      clear(out, errorBox(e));
    } finally {
      update();
    }
  } },
  h("h2", {}, "Start a rollout"),
  out,
  h("div", { class: "row" }, field("To version", version), field("Canary VMs", canary), field("Max parallel", maxParallel),
    field("Min healthy time", minHealthy), field("Progress deadline", deadline),
    h("label", { class: "check" }, h("span", {}, autoRevert, " Auto revert on failure")),
    h("label", { class: "check" }, h("span", {}, autoPromote, " Auto promote after the canaries"))),
  h("div", { class: "row end" }, note, submit),
  diff);

  async function loadVersions(pool) {
    const r = await get(`/v1/templates/${encodeURIComponent(pool.template_id)}/versions` + qs({ limit: MAX_VERSIONS }));
    versionsAt = Date.now();
    const sig = r.items.map((v) => v.version).join(",") + "@" + pool.template_version;
    if (sig === versions.sig) return;
    const keep = version.value;
    versions = r.items;
    versions.sig = sig;
    clear(version, versions.map((v) => h("option", { value: v.version, disabled: v.version === pool.template_version },
      `v${v.version}${v.version === pool.template_version ? " (the pool's)" : ""} · ${ago(v.created_at)}${v.owner ? " by " + v.owner : ""}`)));
    const first = versions.find((v) => v.version !== pool.template_version);
    version.value = keep && versions.some((v) => String(v.version) === keep && v.version !== pool.template_version) ? keep : first ? String(first.version) : "";
  }

  async function showDiff(pool) {
    const to = Number(version.value);
    const key = `${pool.template_version}>${to}`;
    if (!to || key === diffKey || !versions.some((v) => v.version === to)) return;
    diffKey = key;
    try {
      const d = await get(`/v1/templates/${encodeURIComponent(pool.template_id)}/diff` + qs({ from: pool.template_version, to }));
      const show = (v) => (v === undefined ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v));
      clear(diff, h("h3", {}, `What changes from v${d.from} to v${d.to}`),
        d.changes.length ? h("div", { class: "table-wrap" }, h("table", { id: "r-diff-table" },
          h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "field"), h("th", { scope: "col" }, `v${d.from}`), h("th", { scope: "col" }, `v${d.to}`))),
          h("tbody", {}, d.changes.map((c) => h("tr", { dataset: { field: c.field } },
            h("td", {}, c.field), h("td", { class: "mono wrap" }, show(c.from)), h("td", { class: "mono wrap" }, show(c.to)))))))
          : h("p", { class: "muted" }, "No config field differs."));
    } catch (e) {
      diffKey = "";
      clear(diff, errorBox(e));
    }
  }
  version.addEventListener("change", () => { const p = getPool(); if (p) showDiff(p); });

  async function update() {
    const pool = getPool();
    if (stopped || !pool) return;
    if (!made) { clear(box, form); made = true; }
    const r = getRollout();
    const active = !!r && ACTIVE.includes(r.state);
    submit.disabled = active;
    note.textContent = active ? `A rollout is ${r.state.replace("_", " ")}; the next starts when it ends.` : "";
    canary.max = maxParallel.max = pool.size;
    try {
      // The template may get new versions meanwhile: asked again every 10 s.
      if (versions.sig === undefined || !versions.sig.endsWith("@" + pool.template_version) || Date.now() - versionsAt > 10000) await loadVersions(pool);
      await showDiff(pool);
    } catch (e) {
      clear(out, errorBox(e));
    }
  }
  return { update, stop: () => { stopped = true; } };
}
