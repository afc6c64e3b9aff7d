// Nexus console: a hash router over a few pages. Each page renders into
// <main> and returns a cleanup function (stop polling, close streams) that
// runs when the user leaves it.
import { api, token, setOnUnauthorized } from "./api.js";
import { h, clear, errorBox, field } from "./dom.js";
import { session, can } from "./session.js";
import { vmsPage } from "./pages/vms.js";
import { vmPage } from "./pages/vm.js";
import { createPage } from "./pages/create.js";
import { templatesPage, imagesPage, snapshotsPage } from "./pages/catalog.js";
import { hostsPage } from "./pages/hosts.js";
import { auditPage } from "./pages/audit.js";
import { tokensPage } from "./pages/tokens.js";
import { poolsPage, poolPage } from "./pages/pools.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");


const sections = [
  ["vms", "VMs"], ["create", "Create"], ["pools", "Pools"], ["templates", "Templates"], ["images", "Images"],
  ["snapshots", "Snapshots"], ["hosts", "Hosts"], ["audit", "Audit"], ["tokens", "Tokens", () => can.admin()],
];

let cleanup = null;

function renderChrome(active) {
  clear(nav, sections.filter(([, , show]) => !show || show()).map(([id, label]) =>
    h("a", { href: "#/" + id, "aria-current": id === active ? "page" : false }, label)));
  const me = session.me;
  clear(who, me ? [
    h("span", { id: "who-role", "data-role": me.role }, `${me.owner} · ${me.role} · project ${me.project}`),
    h("button", { type: "button", onclick: signOut }, "Sign out"),
  ] : []);
}

function signOut() {
  token.clear();
  session.me = null;
  location.hash = "#/signin";
}

function signInPage(reason) {
  renderChrome("");
  const input = h("input", { type: "password", id: "token", autocomplete: "off", required: true, placeholder: "nxs_…" });
  const msg = h("div");
  const form = h("form", { class: "card signin", onsubmit: async (ev) => {
    ev.preventDefault();
    token.set(input.value.trim());
    try {
      session.me = await api("GET", "/v1/whoami");
      location.hash = "#/vms";
    } catch (e) {
      token.clear();
      clear(msg, errorBox(e));
    }
  } },
  h("h1", {}, "Sign in"),
  h("p", { class: "muted" }, "Paste an API token. `nexus up` printed an admin token and wrote it to <data-dir>/admin.token; admins make more with `nexus token create`. The token stays in this tab only."),
  reason ? errorBox(reason) : null,
  msg,
  field("API token", input),
  h("div", { class: "row end" }, h("button", { class: "primary", type: "submit" }, "Sign in")));
  clear(main, form);
  input.focus();
  return null;
}

const routes = {
  vms: () => vmsPage(main),
  create: () => createPage(main),
  pools: () => poolsPage(main),
  templates: () => templatesPage(main),
  images: () => imagesPage(main),
  snapshots: () => snapshotsPage(main),
  hosts: () => hostsPage(main),
  audit: () => auditPage(main),
  tokens: () => tokensPage(main),
};

async function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  const [, section = "vms", ...rest] = location.hash.replace(/^#/, "").split("/");
  if (section === "signin" || !token.get()) {
    signInPage();
    return;
  }
  if (!session.me) {
    try {
      session.me = await api("GET", "/v1/whoami");
    } catch (e) {
      token.clear();
      signInPage(e);
      return;
    }
  }
  renderChrome(section);
  let page = routes[section];
  if (section === "vms" && rest[0]) page = () => vmPage(main, decodeURIComponent(rest[0]));
  if (section === "pools" && rest[0]) page = () => poolPage(main, decodeURIComponent(rest[0]));
  if (!page) {
    clear(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/vms" }, "Back to the VMs")));
    return;
  }
  cleanup = page() || null;
  main.focus({ preventScroll: true });
}

setOnUnauthorized((e) => {
  token.clear();
  session.me = null;
  if (cleanup) { cleanup(); cleanup = null; }
  signInPage(e);
});
window.addEventListener("hashchange", route);
route();
