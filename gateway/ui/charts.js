// Requests and latency per model over the last hour, per minute, drawn as inline SVG from
// GET /api/server/history (refreshed every 15 s).

import * as api from "./api.js";
import { fmt, h, poll, processNote, s } from "./dom.js";

const WIDTH = 540;
const HEIGHT = 150;
const LEFT = 64; // room for the axis labels
const BOTTOM = 18;

export function mount(root, _params, ctx) {
  const status = h("p", { class: "muted" }, "Loading…");
  const body = h("div", { id: "charts" });
  root.append(h("h1", {}, "Last hour"), status, body);
  return poll(15000, async () => {
    let doc;
    try {
      doc = await api.get("api/server/history");
    } catch (err) {
      ctx.failed(err, status);
      return;
    }
    const data = doc.data;
    status.replaceChildren(
      "Requests answered to clients per minute (5xx in red) and their latency, per model. ",
      processNote(data.process),
      ` Updated ${fmt.clock(data.now)}.`,
    );
    if (!data.models.length) {
      body.replaceChildren(h("p", {}, "No request has been answered by this process yet."));
      return;
    }
    body.replaceChildren(...data.models.map((model) => h(
      "section",
      { class: "chart", "data-model": model.model_name },
      h("h2", {}, model.model_name, " ", h("span", { class: "count" }, `${sum(model.calls)} requests, ${sum(model.failures)} 5xx`)),
      h(
        "div",
        { class: "plots" },
        h("div", {}, h("h3", {}, "Requests per minute (", h("span", { class: "legend-failed" }, "5xx"), ")"), requestsChart(model, data)),
        h(
          "div",
          {},
          h("h3", {}, "Latency: ", h("span", { class: "legend-p50" }, "p50"), ", ", h("span", { class: "legend-p99" }, "p99")),
          latencyChart(model, data),
        ),
      ),
    )));
  });
}

const sum = (values) => values.reduce((a, b) => a + b, 0);

function minuteLabel(data, index) {
  return fmt.clock(data.first_minute_at + index * data.minute_s);
}

function frame(label, top) {
  const plot = HEIGHT - BOTTOM;
  const svg = s("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "plot", role: "img", "aria-label": label });
  svg.append(
    s("line", { x1: LEFT, y1: plot, x2: WIDTH, y2: plot, class: "axis" }),
    s("line", { x1: LEFT, y1: 4, x2: LEFT, y2: plot, class: "axis" }),
    s("text", { x: LEFT - 6, y: 14, class: "tick end" }, top),
    s("text", { x: LEFT - 6, y: plot, class: "tick end" }, "0"),
    s("text", { x: LEFT, y: HEIGHT - 4, class: "tick" }, "60 min ago"),
    s("text", { x: (LEFT + WIDTH) / 2, y: HEIGHT - 4, class: "tick middle" }, "30 min ago"),
    s("text", { x: WIDTH, y: HEIGHT - 4, class: "tick end" }, "now"),
  );
  return svg;
}

function requestsChart(model, data) {
  const top = Math.max(1, ...model.calls);
  const svg = frame(`requests per minute of ${model.model_name}`, `${top}/min`);
  const plot = HEIGHT - BOTTOM - 6;
  const step = (WIDTH - LEFT) / model.calls.length;
  model.calls.forEach((calls, i) => {
    if (!calls) return;
    const x = LEFT + i * step + 1;
    const tall = (calls / top) * plot;
    const failed = (model.failures[i] / top) * plot;
    const bar = s("g", {}, s("title", {}, `${minuteLabel(data, i)}: ${calls} requests, ${model.failures[i]} 5xx`));
    bar.append(s("rect", { x, y: HEIGHT - BOTTOM - tall, width: step - 2, height: tall - failed, class: "bar" }));
    if (failed) bar.append(s("rect", { x, y: HEIGHT - BOTTOM - failed, width: step - 2, height: failed, class: "bar failed" }));
    svg.append(bar);
  });
  return svg;
}

function latencyChart(model, data) {
  const known = [...model.p50_ms, ...model.p99_ms].filter((v) => v !== null);
  const top = Math.max(1, ...known);
  const svg = frame(`latency per minute of ${model.model_name}`, fmt.ms(top));
  const plot = HEIGHT - BOTTOM - 6;
  const step = (WIDTH - LEFT) / model.calls.length;
  for (const [series, cls] of [[model.p99_ms, "line p99"], [model.p50_ms, "line p50"]]) {
    // A line through the minutes that had requests; a minute alone is a dot.
    const points = series.map((v, i) => (v === null ? null : [LEFT + (i + 0.5) * step, HEIGHT - BOTTOM - (v / top) * plot]));
    let run = [];
    const flush = () => {
      if (run.length > 1) svg.append(s("polyline", { points: run.map((p) => p.join(",")).join(" "), class: cls }));
      run = [];
    };
    points.forEach((p) => (p === null ? flush() : run.push(p)));
    flush();
    points.forEach((p, i) => {
      if (p !== null) {
        svg.append(s("circle", { cx: p[0], cy: p[1], r: 2.5, class: cls }, s("title", {}, `${minuteLabel(data, i)}: ${cls.slice(5)} ${fmt.ms(series[i])}`)));
      }
    });
  }
  return svg;
}
