// Create VMs: from a template (with a count), or from registered images.
import { get, post, qs } from "../api.js";
import { h, clear, errorBox, field, parseTags } from "../dom.js";
import { can } from "../session.js";

// A name: what the API accepts (its pattern, with "-" escaped for the v flag).
const NAME = "^[A-Za-z0-9][A-Za-z0-9._\\-]*$";

export function createPage(main) {
  if (!can.operate()) {
    clear(main, h("h1", {}, "Create"), h("p", { class: "muted" }, "Your token's role may read but not create VMs; ask an admin for an operator token."));
    return null;
  }
  const out = h("div", { id: "create-result" });
  const body = h("div");
  const tabT = h("button", { type: "button", role: "tab", id: "tab-template", onclick: () => show("template") }, "From a template");
  const tabI = h("button", { type: "button", role: "tab", id: "tab-images", onclick: () => show("images") }, "From images");
  clear(main, h("h1", {}, "Create VMs"), h("div", { class: "tabs", role: "tablist" }, tabT, tabI), out, body);

  function show(which) {
    tabT.setAttribute("aria-selected", which === "template");
    tabI.setAttribute("aria-selected", which === "images");
    clear(out);
    clear(body, which === "template" ? fromTemplate(out) : fromImages(out));
  }
  show("template");
  return null;
}

function created(out, items) {
  clear(out, h("div", { class: "notice", role: "status" }, `Created ${items.length} VM${items.length === 1 ? "" : "s"}: `,
    items.map((vm, i) => [i ? ", " : "", h("a", { href: "#/vms/" + encodeURIComponent(vm.id) }, vm.name)])));
}

function fromTemplate(out) {
  const tmpl = h("select", { id: "c-template", required: true });
  const name = h("input", { id: "c-name", required: true, pattern: NAME, maxlength: 63 });
  const count = h("input", { id: "c-count", type: "number", min: 1, max: 100, value: 1 });
  const tags = h("input", { id: "c-tags", placeholder: "team=web, env=dev" });
  const submit = h("button", { class: "primary", type: "submit", id: "c-submit" }, "Create");
  get("/v1/templates").then((r) => {
    clear(tmpl, r.items.length ? r.items.map((t) => h("option", { value: t.id }, `${t.name} (${t.project}, ${t.config.vcpu || 1} vCPU, ${t.config.mem_mib || 128} MiB)`))
      : h("option", { value: "" }, "no templates yet"));
  }).catch((e) => clear(out, errorBox(e)));
  return h("form", { class: "card", onsubmit: async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    try {
      const n = Number(count.value) || 1;
      const r = await post("/v1/templates/" + encodeURIComponent(tmpl.value) + "/instantiate" + qs({ wait: "false" }),
        { name: name.value.trim(), count: n > 1 ? n : undefined, tags: parseTags(tags.value) });
      created(out, r.items);
    } catch (e) {
      clear(out, errorBox(e));
    } finally {
      submit.disabled = false;
    }
  } },
  h("div", { class: "row" }, field("Template", tmpl), field("Name (with a count: name-1 … name-N)", name), field("Count", count), field("Tags", tags)),
  h("div", { class: "row end" }, submit));
}

function fromImages(out) {
  const kernel = h("select", { id: "c-kernel", required: true });
  const rootfs = h("select", { id: "c-rootfs" }, h("option", { value: "" }, "none"));
  const name = h("input", { id: "c-vm-name", required: true, pattern: NAME, maxlength: 63 });
  const vcpu = h("input", { id: "c-vcpu", type: "number", min: 1, max: 32, value: 1 });
  const mem = h("input", { id: "c-mem", type: "number", min: 16, value: 128 });
  const bootArgs = h("input", { id: "c-boot-args", placeholder: "console=ttyS0 reboot=k panic=1" });
  const project = h("input", { id: "c-project", placeholder: "your token's" });
  const tags = h("input", { placeholder: "team=web" });
  const submit = h("button", { class: "primary", type: "submit" }, "Create");
  for (const [kind, sel] of [["kernel", kernel], ["rootfs", rootfs]]) {
    get("/v1/images" + qs({ kind })).then((r) => {
      sel.append(...r.items.map((i) => h("option", { value: i.id }, `${i.name} (${i.project})`)));
    }).catch((e) => clear(out, errorBox(e)));
  }
  return h("form", { class: "card", onsubmit: async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    try {
      const vm = await post("/v1/vms" + qs({ wait: "false" }), {
        name: name.value.trim(), vcpu: Number(vcpu.value), mem_mib: Number(mem.value),
        kernel_image_id: kernel.value, rootfs_image_id: rootfs.value || undefined,
        boot_args: bootArgs.value.trim() || undefined, project: project.value.trim() || undefined, tags: parseTags(tags.value),
      });
      created(out, [vm]);
    } catch (e) {
      clear(out, errorBox(e));
    } finally {
      submit.disabled = false;
    }
  } },
  h("div", { class: "row" }, field("Name", name), field("Kernel image", kernel), field("Rootfs image", rootfs),
    field("vCPU", vcpu), field("Memory (MiB)", mem), field("Boot args", bootArgs), field("Project", project), field("Tags", tags)),
  h("div", { class: "row end" }, submit));
}
