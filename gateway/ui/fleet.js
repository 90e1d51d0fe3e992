// The fleet: every model and its workers, refreshed every 2 s from GET /api/server/fleet.

import * as api from "./api.js";
import { badge, fmt, h, poll, processNote } from "./dom.js";

export function mount(root, _params, ctx) {
  const status = h("p", { class: "muted", id: "fleet-status" }, "Loading…");
  const body = h("div", { id: "fleet" });
  root.append(h("h1", {}, "Fleet"), status, body);
  return poll(2000, async () => {
    let doc;
    try {
      doc = await api.get("api/server/fleet");
    } catch (err) {
      ctx.failed(err, status);
      return;
    }
    render(body, status, doc.data);
  });
}

function render(body, status, data) {
  const workers = data.models.reduce((n, model) => n + model.workers.length, 0);
  const healthy = data.models.reduce((n, model) => n + model.healthy, 0);
  status.replaceChildren(
    `${data.models.length} models, ${healthy} of ${workers} workers up. `,
    processNote(data.process),
    ` Updated ${fmt.clock(data.now)}.`,
  );
  if (!data.registry.connected && data.registry.reason) {
    status.append(h("span", { class: "error" }, ` Redis: ${data.registry.reason}`));
  }
  if (data.models.length === 0) {
    body.replaceChildren(h("p", {}, "No worker is registered yet. ", h("a", { href: "#/register" }, "Register one.")));
    return;
  }
  body.replaceChildren(...data.models.map((model) => modelSection(model, data.now)));
}

function modelSection(model, now) {
  const live = model.live;
  const down = model.workers.length - model.healthy;
  return h(
    "section",
    { class: `model${down ? " degraded" : ""}`, "data-model": model.model_name },
    h("h2", {}, model.model_name, " ", h("span", { class: "count" }, `${model.healthy} of ${model.workers.length} up`)),
    h(
      "p",
      { class: "figures" },
      `Client requests, last minute: ${fmt.perS(live.per_s)}, 5xx ${fmt.ratio(live.error_rate)}, `
        + `p50 ${fmt.ms(live.p50_ms)}, p99 ${fmt.ms(live.p99_ms)}`,
    ),
    h(
      "table",
      { class: "workers" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...["State", "Worker", "Why", "Since"].map((t) => h("th", {}, t)),
          ...["Ejections", "In flight", "Calls/s", "Errors", "p50", "p99"].map((t) => h("th", { class: "num" }, t)),
        ),
      ),
      h("tbody", {}, ...model.workers.map((w) => workerRow(w, now))),
    ),
  );
}

function workerRow(worker, now) {
  const health = worker.health;
  const live = worker.live;
  const limit = worker.max_concurrency ? ` / ${worker.max_concurrency}` : "";
  return h(
    "tr",
    { "data-worker-id": worker.id, class: `state-${health.state}` },
    h("td", {}, badge(health.state)),
    h("td", {}, h("a", { href: `#/worker/${worker.id}` }, worker.label), worker.owner ? h("span", { class: "muted" }, ` ${worker.owner}`) : null),
    h("td", { class: "reason" }, health.reason),
    h("td", { class: "nowrap" }, fmt.ago(health.since, now)),
    h("td", { class: "num" }, String(worker.ejections)),
    h("td", { class: "num" }, `${worker.in_flight}${limit}`),
    h("td", { class: "num" }, fmt.perS(live.per_s)),
    h("td", { class: "num" }, fmt.ratio(live.error_rate)),
    h("td", { class: "num" }, fmt.ms(live.p50_ms)),
    h("td", { class: "num" }, fmt.ms(live.p99_ms)),
  );
}
