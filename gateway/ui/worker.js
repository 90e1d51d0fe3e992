// One worker: health, live figures, recent errors, probe history, its record, a test prompt,
// and the way to take it offline. Refreshed every 2 s from GET /api/server/fleet/{id}.

import * as api from "./api.js";
import { badge, fmt, h, poll, processNote } from "./dom.js";

export function mount(root, [id], ctx) {
  const title = h("h1", {}, "Worker");
  const status = h("p", { class: "muted" }, "Loading…");
  const live = h("section", { id: "worker-live" });
  const errors = h("section", { id: "worker-errors" });
  const probes = h("section", { id: "worker-probes" });
  const record = h("section", { id: "worker-record" });
  const actions = h("p", { class: "actions" });
  const prompt = promptBox();
  root.append(title, status, actions, live, prompt.box, errors, probes, record);
  let shown = null;
  return poll(2000, async () => {
    let doc;
    try {
      doc = await api.get(`api/server/fleet/${id}`);
    } catch (err) {
      ctx.failed(err, status);
      return;
    }
    const data = doc.data;
    if (shown === null) {
      actions.replaceChildren(
        h("a", { href: `#/edit/${id}`, class: "button" }, "Edit"),
        " ",
        offlineButton(data.record, ctx),
      );
    }
    shown = data;
    prompt.model = data.model_name;
    render({ title, status, live, errors, probes, record }, data);
  });
}

function render(parts, data) {
  const health = data.health;
  parts.title.replaceChildren(badge(health.state), " ", data.label, " ", h("span", { class: "muted" }, data.model_name));
  parts.status.replaceChildren(
    health.reason ? `${health.reason}. ` : "",
    health.since ? h("span", {}, "Since ", fmt.ago(health.since, data.now), ". ") : "",
    processNote(data.process),
  );
  const liveFigures = data.live;
  parts.live.replaceChildren(
    h("h2", {}, "Last minute"),
    table([
      ["Calls", `${liveFigures.calls} (${fmt.perS(liveFigures.per_s)})`],
      ["Errors", `${liveFigures.failures} (${fmt.ratio(liveFigures.error_rate)})`],
      ["Latency p50 / p99", `${fmt.ms(liveFigures.p50_ms)} / ${fmt.ms(liveFigures.p99_ms)} (${liveFigures.samples} calls)`],
      ["In flight", String(data.in_flight)],
      ["Ejections (this process)", String(data.ejections)],
      ["Successes / failures since start", `${data.successes} / ${data.failures}`],
    ]),
  );
  parts.errors.replaceChildren(
    h("h2", {}, "Recent errors"),
    data.recent_errors.length
      ? h("ul", { class: "errors" }, ...data.recent_errors.map((e) => h("li", {}, fmt.ago(e.at, data.now), " ", h("span", {}, e.reason))))
      : h("p", { class: "muted" }, "None seen by this process."),
  );
  parts.probes.replaceChildren(h("h2", {}, "Probe history"), probeHistory(data));
  parts.record.replaceChildren(
    h("h2", {}, "Record"),
    h("p", { class: "muted" }, "As GET /api/server/workers shows it: header values are never shown."),
    table(Object.entries(data.record).map(([key, value]) => [key, key.endsWith("_at") ? stamp(value) : show(value)])),
  );
}

function probeHistory(data) {
  const note = data.process.probing
    ? `Probes of ${data.probe_target}, kept by this process (it holds the probe lease).`
    : `This process (${data.process.pid}) does not run the health probes now; the process `
      + "holding the probe lease keeps the history. Shown: what this process kept, if anything.";
  if (!data.probes.length) return h("div", {}, h("p", { class: "muted" }, note), h("p", {}, "No probe yet."));
  const rows = data.probes.map((run) => h(
    "tr",
    { class: run.ok ? "state-up" : "state-down" },
    h("td", {}, badge(run.ok ? "ok" : "failed")),
    h("td", {}, run.reason || "–"),
    h("td", { class: "num" }, String(run.count)),
    h("td", { class: "nowrap" }, fmt.clock(run.first_at), " – ", fmt.clock(run.last_at)),
    h("td", { class: "num" }, fmt.ms(run.last_ms)),
  ));
  return h(
    "div",
    {},
    h("p", { class: "muted" }, note),
    h(
      "table",
      { class: "probes" },
      h("thead", {}, h("tr", {}, ...["Outcome", "Reason", "Probes", "From – to", "Last took"].map((t, i) => h("th", { class: i === 2 || i === 4 ? "num" : null }, t)))),
      h("tbody", {}, ...rows),
    ),
  );
}

function stamp(at) {
  return at ? `${new Date(at * 1000).toLocaleString()} (${at})` : show(at);
}

function show(value) {
  if (value === null || value === undefined) return h("span", { class: "muted" }, "–");
  if (typeof value === "object") return h("pre", {}, JSON.stringify(value, null, 2));
  return String(value);
}

function table(rows) {
  return h("table", { class: "pairs" }, h("tbody", {}, ...rows.map(([key, value]) => h("tr", {}, h("th", {}, key), h("td", {}, value)))));
}

// Taking a worker offline asks for a second click, so one slip does not remove it.
function offlineButton(record, ctx) {
  const result = h("span", { class: "error", role: "alert" });
  const button = h("button", { type: "button", class: "danger", id: "offline" }, "Take offline");
  button.addEventListener("click", async () => {
    if (button.dataset.armed !== "yes") {
      button.dataset.armed = "yes";
      button.textContent = "Click again to take it offline";
      return;
    }
    button.disabled = true;
    try {
      const doc = await api.post("api/server/offline", { model_name: record.model_name, req_url_template: record.req_url_template });
      ctx.go("#/fleet", doc.msg);
    } catch (err) {
      button.disabled = false;
      ctx.failed(err, result);
    }
  });
  return h("span", {}, button, " ", result);
}

// A prompt sent through the inference API (POST /api/v1/chat/completions) to this model:
// the gateway picks the worker, as it would for a client.
function promptBox() {
  const state = { model: null };
  const answer = h("pre", { class: "answer", id: "prompt-answer" });
  const form = h(
    "form",
    { id: "prompt" },
    h("label", {}, "Prompt", h("textarea", { name: "input", rows: 2, required: true }, "Say hello in five words.")),
    h("label", {}, "API key (only if the gateway requires keys; not kept)", h("input", { name: "api_key", type: "password", autocomplete: "off" })),
    h("button", { type: "submit" }, "Send test prompt"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    answer.className = "answer";
    answer.textContent = "…";
    const key = form.elements.api_key.value.trim();
    try {
      const doc = await api.post(
        "api/v1/chat/completions",
        { input: form.elements.input.value, model_name: state.model },
        { bearer: key || null },
      );
      answer.textContent = doc.result;
    } catch (err) {
      answer.className = "answer error";
      answer.textContent = err.message;
    }
  });
  const box = h(
    "section",
    { id: "worker-prompt" },
    h("h2", {}, "Test prompt"),
    h("p", { class: "muted" }, "Sent to this worker's model through the inference API; the gateway picks the worker as for any client."),
    form,
    answer,
  );
  return {
    box,
    set model(name) {
      state.model = name;
    },
  };
}
