// The dashboard: log in, then one page per hash route (#/fleet, #/worker/ID, ...).

import * as api from "./api.js";
import * as charts from "./charts.js";
import { h } from "./dom.js";
import * as fleet from "./fleet.js";
import * as forms from "./forms.js";
import * as keys from "./keys.js";
import * as worker from "./worker.js";

const PAGES = [
  [/^(#\/?|#\/fleet)?$/, "fleet", fleet.mount],
  [/^#\/worker\/([0-9a-f]+)$/, "fleet", worker.mount],
  [/^#\/register$/, "register", forms.mountRegister],
  [/^#\/edit\/([0-9a-f]+)$/, "register", forms.mountEdit],
  [/^#\/keys$/, "keys", keys.mount],
  [/^#\/charts$/, "charts", charts.mount],
];

const page = document.getElementById("page");
const notice = document.getElementById("notice");
const login = document.getElementById("login");
let unmount = null;

const ctx = {
  // An error from a call: a refused token sends the user back to the login form.
  failed(err, where) {
    if (err instanceof api.ApiError && err.auth) {
      api.token.clear();
      showLogin(err.message);
      return;
    }
    where.replaceChildren(h("span", { class: "error", role: "alert" }, err.message));
  },
  // Go to another page, with a message shown there (e.g. "remove llm worker ... succeed!").
  go(hash, message = null) {
    pending = message;
    if (location.hash !== hash) {
      location.hash = hash; // the hashchange shows the page and its message
      return;
    }
    showNotice();
    route();
  },
};

let pending = null; // the message for the next page
let standing = null; // the message every page shows (an open gateway)

function showNotice() {
  const text = pending ?? standing;
  pending = null;
  notice.textContent = text ?? "";
  notice.hidden = !text;
}

function route() {
  if (unmount) unmount();
  unmount = null;
  page.replaceChildren();
  const hash = location.hash;
  for (const [pattern, section, mount] of PAGES) {
    const match = hash.match(pattern);
    if (match) {
      for (const link of document.querySelectorAll("nav a")) {
        link.classList.toggle("current", link.dataset.page === section);
      }
      unmount = mount(page, match.slice(1), ctx) ?? null;
      return;
    }
  }
  page.append(h("p", {}, "There is no such page. ", h("a", { href: "#/fleet" }, "See the fleet")));
}

function showApp(open) {
  login.hidden = true;
  document.getElementById("top").hidden = false;
  document.getElementById("logout").hidden = open;
  if (open) {
    standing = "This gateway has no admin token: anyone who can reach it can use this dashboard "
      + "and change the registry. Set admin_token (GATEWAY_ADMIN_TOKEN) to close it.";
  }
  window.addEventListener("hashchange", () => {
    showNotice();
    route();
  });
  showNotice();
  route();
}

function showLogin(message = "") {
  if (unmount) unmount();
  unmount = null;
  page.replaceChildren();
  document.getElementById("top").hidden = true;
  login.hidden = false;
  login.querySelector(".error").textContent = message;
  login.elements.token.focus();
}

login.addEventListener("submit", async (event) => {
  event.preventDefault(); // never a real submit: the token must not reach a URL
  const given = login.elements.token.value.trim();
  api.token.set(given);
  try {
    await api.get("api/server/fleet");
  } catch (err) {
    api.token.clear();
    login.querySelector(".error").textContent = err.message;
    return;
  }
  login.reset();
  location.reload(); // a fresh start with the token in place
});

document.getElementById("logout").addEventListener("click", () => {
  api.token.clear();
  location.reload();
});

async function boot() {
  try {
    await api.get("api/server/fleet");
  } catch (err) {
    if (err instanceof api.ApiError && err.auth) {
      api.token.clear();
      showLogin(err.status === 403 ? err.message : "");
      return;
    }
    page.replaceChildren(h("p", { class: "error", role: "alert" }, err.message));
    return;
  }
  showApp(api.token.get() === null);
}

boot();
