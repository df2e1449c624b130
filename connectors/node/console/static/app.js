// The console's shell: sign-in, sign-out, and one page per role this node plays.
import { api, setCsrf } from "./api.js";
import { clear, errorText, h } from "./dom.js";
import { renderNode } from "./node.js";
import { renderOperator } from "./operator.js";
import { renderProvider } from "./provider.js";
import { renderAnalyst } from "./analyst.js";
import { renderAuditor } from "./auditor.js";

const PAGES = [
  { id: "operator", label: "Operator", role: "operator", render: renderOperator },
  { id: "provider", label: "Provider", role: "provider", render: renderProvider },
  { id: "analyst", label: "Analyst", role: "consumer", render: renderAnalyst },
  { id: "auditor", label: "Auditor", role: null, render: renderAuditor },
  { id: "node", label: "Node", role: null, render: renderNode },
];

const state = { me: null };
const $ = (id) => document.getElementById(id);

function pagesFor(me) {
  return PAGES.filter((p) => p.role === null || me.roles.includes(p.role));
}

function showSignIn(message) {
  state.me = null;
  setCsrf(null);
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  clear($("nav"));
  clear($("view"));
  $("whoami").textContent = "";
  $("sign-in-error").textContent = message || "";
  $("token").focus();
}

async function route() {
  if (!state.me) return;
  const pages = pagesFor(state.me);
  const wanted = location.hash.slice(1);
  const page = pages.find((p) => p.id === wanted) || pages[0];
  for (const a of $("nav").querySelectorAll("a")) {
    if (a.dataset.page === page.id) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const view = clear($("view"));
  document.title = `${page.label} · ${state.me.node} · trusted-space console`;
  const container = h("div", { "data-page": page.id });
  view.append(container);
  try {
    await page.render(container, state.me);
  } catch (err) {
    container.append(h("p", { class: "error", role: "alert" }, errorText(err)));
  }
  container.dataset.ready = "true";
}

function showConsole(me) {
  state.me = me;
  setCsrf(me.csrf);
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
  $("whoami").textContent = `${me.node} · ${me.roles.join(", ")}${me.admitted ? "" : " · not admitted"}`;
  const nav = clear($("nav"));
  for (const p of pagesFor(me)) nav.append(h("a", { href: `#${p.id}`, "data-page": p.id }, p.label));
  route();
}

async function boot() {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("token");
    try {
      const me = await api("POST", "/console/session", { token: input.value });
      input.value = "";
      showConsole(me);
    } catch (err) {
      input.value = "";
      showSignIn(err.status === 401 ? "That is not this node's admin token." : errorText(err));
    }
  });
  $("sign-out").addEventListener("click", async () => {
    try {
      await api("DELETE", "/console/session");
    } finally {
      showSignIn("Signed out.");
    }
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("ts-signed-out", () => showSignIn("Your session ended: sign in again."));
  try {
    showConsole(await api("GET", "/console/session"));
  } catch {
    showSignIn("");
  }
}

boot();
