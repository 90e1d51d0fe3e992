// Register a worker, or edit one (a register with "replace": true). Messages are the API's
// own, shown as it wrote them; only what must be parsed here first (JSON, header lines) is
// checked here.

import * as api from "./api.js";
import { h } from "./dom.js";

// name, label, kind, hint
const FIELDS = [
  ["model_name", "Model name", "text", "the name clients ask for"],
  ["req_url_template", "URL template", "text", "e.g. http://10.0.0.5:8000/api/generate (a preset takes the server's base URL)"],
  ["preset", "Preset", "preset", "a known protocol: the paths and templates come from it"],
  ["req_type", "Method", "method", ""],
  ["body", "Body (JSON)", "json", 'with placeholders, e.g. {"input": "{USER_PROMPT}"}'],
  ["response_extract", "Response extract", "text", "e.g. data.items[].attributes.answer or $.choices[0].message.content"],
  ["header", "Headers", "headers", "one Name: value a line; values are never shown again"],
  ["upstream_model", "Upstream model", "text", "the name the worker knows the model by, if it differs"],
  ["health_url", "Health URL", "text", "probed with GET; without one, a TCP connect"],
  ["owner", "Owner", "text", ""],
  ["timeout_s", "Timeout (s)", "number", ""],
  ["weight", "Weight", "number", "for weighted balancing"],
  ["max_concurrency", "Max concurrency", "number", ""],
  ["is_stream", "Streams its answers", "checkbox", ""],
  ["extra", "More fields (JSON object)", "json", 'any other register field, e.g. {"stream_format": "ndjson"}'],
];
const IN_FORM = new Set(FIELDS.map(([name]) => name));
const NOT_SENT = new Set(["id", "registered_at"]);

export function mountRegister(root, _params, ctx) {
  root.append(h("h1", {}, "Register a worker"));
  root.append(workerForm(null, ctx));
}

export function mountEdit(root, [id], ctx) {
  const status = h("p", { class: "muted" }, "Loading…");
  root.append(h("h1", {}, "Edit a worker"), status);
  api.get(`api/server/fleet/${id}`).then(
    (doc) => {
      status.replaceChildren(
        "Saved as a replacement of the registered worker. Model name and URL are its identity: "
          + "to change them, register a new worker and take this one offline. Header values are "
          + "never shown: type them again.",
      );
      root.append(workerForm(doc.data.record, ctx));
    },
    (err) => ctx.failed(err, status),
  );
}

function workerForm(record, ctx) {
  const editing = record !== null;
  const message = h("p", { class: "error", role: "alert", id: "form-message" });
  const done = h("p", { class: "ok", id: "form-done" });
  const form = h("form", { class: "worker-form", id: "worker-form" });
  for (const [name, label, kind, hint] of FIELDS) {
    form.append(field(name, label, kind, hint, record));
  }
  form.append(h("button", { type: "submit" }, editing ? "Save" : "Register"), message, done);
  loadPresets(form.elements.preset, record?.preset);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.textContent = "";
    done.replaceChildren();
    let body;
    try {
      body = collect(form, editing);
    } catch (err) {
      message.textContent = err.message;
      return;
    }
    try {
      const doc = await api.post("api/server/register", body);
      done.replaceChildren(doc.msg, " ", h("a", { href: `#/worker/${doc.id}` }, "See the worker"));
      if (!editing) form.reset();
    } catch (err) {
      if (err instanceof api.ApiError && err.auth) ctx.failed(err, message);
      else message.textContent = err.message; // the API's own words
    }
  });
  return form;
}

function field(name, label, kind, hint, record) {
  const value = record?.[name];
  const identity = record !== null && (name === "model_name" || name === "req_url_template");
  let input;
  if (kind === "checkbox") {
    input = h("input", { type: "checkbox", name, checked: Boolean(value) });
    return h("label", { class: "check" }, input, ` ${label}`);
  }
  if (kind === "json" || kind === "headers") {
    input = h("textarea", { name, rows: kind === "json" ? 3 : 2 }, initialText(name, kind, record));
  } else if (kind === "method") {
    input = h("select", { name }, ...["POST", "GET"].map((m) => h("option", { value: m, selected: value === m }, m)));
  } else if (kind === "preset") {
    input = h("select", { name }, h("option", { value: "" }, "none (a template worker)"));
  } else {
    const attrs = { name, type: "text", value: value ?? "", readonly: identity };
    if (kind === "number") attrs.inputmode = "decimal";
    input = h("input", attrs);
  }
  return h("label", {}, label, input, hint ? h("small", {}, hint) : null);
}

function initialText(name, kind, record) {
  if (record === null) return "";
  if (kind === "headers") return Object.keys(record.header).map((key) => `${key}: ***`).join("\n");
  if (name === "extra") {
    const rest = Object.fromEntries(
      Object.entries(record).filter(([key, value]) => !IN_FORM.has(key) && !NOT_SENT.has(key) && value !== null && value !== ""),
    );
    return Object.keys(rest).length ? JSON.stringify(rest, null, 2) : "";
  }
  return record[name] === null || record[name] === undefined ? "" : JSON.stringify(record[name], null, 2);
}

async function loadPresets(select, current) {
  try {
    const doc = await api.get("api/server/presets");
    for (const preset of doc.data) {
      select.append(h("option", { value: preset.name, selected: preset.name === current, title: preset.description }, preset.name));
    }
  } catch {
    // the select keeps "none"; registering still works and says what is wrong
  }
}

// The register body from the form: empty fields are left out, so the API's defaults apply.
function collect(form, editing) {
  const body = {};
  for (const [name, label, kind] of FIELDS) {
    const input = form.elements[name];
    if (kind === "checkbox") {
      if (input.checked || editing) body[name] = input.checked;
      continue;
    }
    const text = input.value.trim();
    if (text === "") continue;
    if (kind === "json") body[name] = parseJson(text, label);
    else if (kind === "headers") body[name] = parseHeaders(text);
    else if (kind === "number") body[name] = Number.isFinite(Number(text)) ? Number(text) : text;
    else body[name] = text;
  }
  const extra = body.extra;
  delete body.extra;
  if (extra !== undefined) {
    if (extra === null || typeof extra !== "object" || Array.isArray(extra)) {
      throw new Error("More fields must be a JSON object, e.g. {\"ttl_s\": 30}");
    }
    Object.assign(body, extra);
  }
  if (editing) body.replace = true;
  return body;
}

function parseJson(text, label) {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${label} is not valid JSON: ${err.message}`);
  }
}

function parseHeaders(text) {
  const headers = {};
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const colon = line.indexOf(":");
    if (colon < 1) throw new Error(`Headers: write each line as Name: value (not ${JSON.stringify(line.trim())})`);
    const name = line.slice(0, colon).trim();
    const value = line.slice(colon + 1).trim();
    if (value === "***") {
      throw new Error(`Headers: type the value of ${name} again (the gateway never shows header values)`);
    }
    headers[name] = value;
  }
  return headers;
}
