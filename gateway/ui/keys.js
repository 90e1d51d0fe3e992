// Inference API keys: create (the key is shown once, here), list, revoke.

import * as api from "./api.js";
import { fmt, h } from "./dom.js";

export function mount(root, _params, ctx) {
  const list = h("div", { id: "keys" });
  const listStatus = h("p", { class: "muted" });
  root.append(h("h1", {}, "API keys"), createForm(ctx, () => refresh()), h("h2", {}, "Keys"), listStatus, list);

  async function refresh(message = "") {
    let doc;
    try {
      doc = await api.get("api/server/keys");
    } catch (err) {
      ctx.failed(err, listStatus);
      return;
    }
    listStatus.textContent = message;
    if (!doc.data.length) {
      list.replaceChildren(h("p", {}, "No API key yet."));
      return;
    }
    const now = Date.now() / 1000;
    list.replaceChildren(
      h(
        "table",
        { class: "keys" },
        h("thead", {}, h("tr", {}, ...["Name", "Id", "Created", "Requests/min", "Concurrent", ""].map((t, i) => h("th", { class: i === 3 || i === 4 ? "num" : null }, t)))),
        h("tbody", {}, ...doc.data.map((key) => h(
          "tr",
          { "data-key-id": key.id },
          h("td", {}, key.name),
          h("td", {}, h("code", {}, key.id)),
          h("td", {}, fmt.ago(key.created_at, now)),
          h("td", { class: "num" }, key.requests_per_minute ?? "no limit"),
          h("td", { class: "num" }, key.max_concurrent ?? "no limit"),
          h("td", {}, revokeButton(key, ctx, listStatus, refresh)),
        ))),
      ),
    );
  }
  refresh();
}

function createForm(ctx, refresh) {
  const message = h("p", { class: "error", role: "alert", id: "key-message" });
  const shown = h("div", { id: "new-key" });
  const form = h(
    "form",
    { class: "key-form", id: "key-form" },
    h("label", {}, "Name", h("input", { name: "name", type: "text", required: true })),
    h("label", {}, h("span", {}, "Requests per minute ", h("small", {}, "(empty: no limit)")), h("input", { name: "requests_per_minute", type: "text", inputmode: "numeric" })),
    h("label", {}, h("span", {}, "Max concurrent ", h("small", {}, "(empty: no limit)")), h("input", { name: "max_concurrent", type: "text", inputmode: "numeric" })),
    h("button", { type: "submit" }, "Create key"),
    message,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.textContent = "";
    shown.replaceChildren();
    const body = { name: form.elements.name.value.trim() };
    for (const name of ["requests_per_minute", "max_concurrent"]) {
      const text = form.elements[name].value.trim();
      if (text) body[name] = Number.isInteger(Number(text)) ? Number(text) : text;
    }
    try {
      const doc = await api.post("api/server/keys", body);
      shown.replaceChildren(
        h("p", { class: "ok" }, doc.msg),
        h("p", {}, "The key (copy it now: it is not kept, and cannot be shown again):"),
        h("pre", { class: "secret", id: "new-key-value" }, doc.data.key),
      );
      form.reset();
      refresh();
    } catch (err) {
      if (err instanceof api.ApiError && err.auth) ctx.failed(err, message);
      else message.textContent = err.message;
    }
  });
  return h("div", {}, form, shown);
}

function revokeButton(key, ctx, status, refresh) {
  const button = h("button", { type: "button", class: "danger" }, "Revoke");
  button.addEventListener("click", async () => {
    if (button.dataset.armed !== "yes") {
      button.dataset.armed = "yes";
      button.textContent = "Click again to revoke";
      return;
    }
    button.disabled = true;
    try {
      const doc = await api.del(`api/server/keys/${key.id}`);
      refresh(doc.msg);
    } catch (err) {
      button.disabled = false;
      ctx.failed(err, status);
    }
  });
  return button;
}
