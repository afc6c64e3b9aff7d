// Templates, images and snapshots: list, create, delete, restore.
import { get, post, del, qs } from "../api.js";
import { h, clear, errorBox, field, confirmAction, bytes, ago } from "../dom.js";
import { can } from "../session.js";

// A name: what the API accepts (its pattern, with "-" escaped for the v flag).
const NAME = "^[A-Za-z0-9][A-Za-z0-9._\\-]*$";

// listPage renders a title, an optional form, and a table that reloads.
function listPage(main, title, { form, load, columns, row }) {
  const msg = h("div", { role: "status" });
  const tbody = h("tbody");
  const reload = async () => {
    try {
      const items = await load();
      clear(tbody, items.length ? items.map((it) => row(it, reload, msg)) : h("tr", {}, h("td", { colspan: columns.length }, h("span", { class: "muted" }, "None yet."))));
    } catch (e) {
      clear(msg, errorBox(e));
    }
  };
  clear(main, h("h1", {}, title), msg, form ? form(reload, msg) : null,
    h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))), tbody)));
  reload();
  return null;
}

// removeButton deletes after confirmation and reloads.
function removeButton(what, path, reload, msg) {
  if (!can.operate()) return null;
  return h("button", { type: "button", class: "danger", onclick: async () => {
    if (!(await confirmAction(`Delete ${what}?`, "Delete"))) return;
    try {
      await del(path);
      clear(msg);
      reload();
    } catch (e) {
      clear(msg, errorBox(e));
    }
  } }, "Delete");
}

export function templatesPage(main) {
  return listPage(main, "Templates", {
    columns: ["Name", "Project", "vCPU", "Memory", "Kernel", "Rootfs", "Created", ""],
    load: async () => (await get("/v1/templates")).items,
    row: (t, reload, msg) => h("tr", { dataset: { templateId: t.id } },
      h("td", {}, t.name), h("td", {}, t.project), h("td", {}, t.config.vcpu || 1), h("td", {}, (t.config.mem_mib || 128) + " MiB"),
      h("td", { class: "mono" }, t.config.kernel_image_id), h("td", { class: "mono" }, t.config.rootfs_image_id || "–"),
      h("td", {}, ago(t.created_at)), h("td", {}, removeButton(`template ${t.name}`, "/v1/templates/" + t.id, reload, msg))),
    form: can.operate() ? (reload, msg) => {
      const name = h("input", { required: true, pattern: NAME });
      const kernel = h("select", { required: true });
      const rootfs = h("select", {}, h("option", { value: "" }, "none"));
      const vcpu = h("input", { type: "number", min: 1, max: 32, value: 1 });
      const mem = h("input", { type: "number", min: 16, value: 128 });
      const bootArgs = h("input", { placeholder: "console=ttyS0 reboot=k panic=1" });
      for (const [kind, sel] of [["kernel", kernel], ["rootfs", rootfs]]) {
        get("/v1/images" + qs({ kind })).then((r) => sel.append(...r.items.map((i) => h("option", { value: i.id }, i.name)))).catch((e) => clear(msg, errorBox(e)));
      }
      return h("form", { class: "card", onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await post("/v1/templates", { name: name.value.trim(), config: {
            vcpu: Number(vcpu.value), mem_mib: Number(mem.value), kernel_image_id: kernel.value,
            rootfs_image_id: rootfs.value || undefined, boot_args: bootArgs.value.trim() || undefined } });
          clear(msg, h("div", { class: "notice" }, `Template ${name.value} saved.`));
          reload();
        } catch (e) {
          clear(msg, errorBox(e));
        }
      } }, h("div", { class: "row" }, field("Name", name), field("Kernel image", kernel), field("Rootfs image", rootfs),
        field("vCPU", vcpu), field("Memory (MiB)", mem), field("Boot args", bootArgs), h("button", { class: "primary", type: "submit" }, "Save template")));
    } : null,
  });
}

export function imagesPage(main) {
  return listPage(main, "Images", {
    columns: ["Name", "Kind", "Project", "Size", "Path", "sha256", ""],
    load: async () => (await get("/v1/images")).items,
    row: (i, reload, msg) => h("tr", {},
      h("td", {}, i.name), h("td", {}, i.kind), h("td", {}, i.project), h("td", {}, bytes(i.size)),
      h("td", { class: "mono wrap" }, i.host_path), h("td", { class: "mono" }, i.sha256.slice(0, 12) + "…"),
      h("td", {}, removeButton(`image ${i.name} (the file stays)`, "/v1/images/" + i.id, reload, msg))),
    form: can.operate() ? (reload, msg) => {
      const kind = h("select", {}, h("option", { value: "kernel" }, "kernel"), h("option", { value: "rootfs" }, "rootfs"));
      const name = h("input", { required: true, pattern: NAME });
      const path = h("input", { required: true, placeholder: "vmlinux (under FC_IMAGES_DIR)" });
      const project = h("input", { placeholder: can.admin() ? "your token's; * shares it" : "your token's" });
      return h("form", { class: "card", onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await post("/v1/images", { kind: kind.value, name: name.value.trim(), host_path: path.value.trim(), project: project.value.trim() || undefined });
          clear(msg, h("div", { class: "notice" }, `Image ${name.value} registered.`));
          reload();
        } catch (e) {
          clear(msg, errorBox(e));
        }
      } }, h("div", { class: "row" }, field("Kind", kind), field("Name", name), field("Host path", path), field("Project", project),
        h("button", { class: "primary", type: "submit" }, "Register")));
    } : null,
  });
}

export function snapshotsPage(main) {
  return listPage(main, "Snapshots", {
    columns: ["Id", "VM", "Project", "Host", "On disk", "Paused", "Created", ""],
    load: async () => (await get("/v1/snapshots")).items,
    row: (s, reload, msg) => h("tr", { dataset: { snapshotId: s.id } },
      h("td", { class: "mono" }, s.id.slice(0, 8)), h("td", {}, s.vm_name || s.vm_id.slice(0, 8)), h("td", {}, s.project),
      h("td", { class: "mono" }, s.host_id.slice(0, 8)), h("td", {}, bytes(s.allocated_bytes)), h("td", {}, s.paused_ms + " ms"),
      h("td", {}, ago(s.created_at)),
      h("td", {}, can.operate() ? h("div", { class: "row" },
        h("button", { type: "button", onclick: async () => {
          const name = prompt("Name of the restored VM", (s.vm_name || "vm") + "-restored");
          if (!name) return;
          try {
            const vm = await post("/v1/snapshots/" + s.id + "/instantiate", { name });
            clear(msg, h("div", { class: "notice" }, "Restored as ", h("a", { href: "#/vms/" + vm.id }, vm.name), ". ", (vm.notices || []).join(" ")));
          } catch (e) {
            clear(msg, errorBox(e));
          }
        } }, "Restore"),
        removeButton(`snapshot ${s.id.slice(0, 8)}`, "/v1/snapshots/" + s.id, reload, msg)) : null)),
  });
}
