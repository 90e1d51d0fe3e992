// Small helpers: build elements without innerHTML, format figures, poll.

export function h(tag, attrs = {}, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

const SVG = "http://www.w3.org/2000/svg";

export function s(tag, attrs = {}, ...children) {
  return fill(document.createElementNS(SVG, tag), attrs, children);
}

function fill(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function badge(state) {
  return h("span", { class: `badge state-${state}` }, state);
}

export const fmt = {
  ms: (value) => (value === null || value === undefined ? "–" : `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`),
  perS: (value) => (value ? `${value < 10 ? value.toFixed(2) : Math.round(value)}/s` : "0/s"),
  ratio: (value) => (value === null || value === undefined ? "–" : `${(value * 100).toFixed(value < 0.1 ? 1 : 0)}%`),
  clock: (at) => (at ? new Date(at * 1000).toLocaleTimeString() : "–"),
  // "3 min ago", with the exact time as the title.
  ago(at, now) {
    if (!at) return h("span", {}, "–");
    const seconds = Math.max(0, Math.round(now - at));
    let text = `${seconds} s ago`;
    if (seconds >= 86400) text = `${Math.floor(seconds / 86400)} d ago`;
    else if (seconds >= 3600) text = `${Math.floor(seconds / 3600)} h ago`;
    else if (seconds >= 120) text = `${Math.floor(seconds / 60)} min ago`;
    return h("time", { datetime: new Date(at * 1000).toISOString(), title: new Date(at * 1000).toLocaleString() }, text);
  },
};

// Run `task` now and again `everyMs` after each run ends; returns the function that stops it.
export function poll(everyMs, task) {
  let timer = null;
  let stopped = false;
  async function tick() {
    if (stopped) return;
    try {
      if (!document.hidden) await task(); // a tab in the background asks for nothing
    } finally {
      if (!stopped) timer = setTimeout(tick, everyMs);
    }
  }
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// What the live figures are: the view of the process that answered.
export function processNote(process) {
  const others = process.processes > 1
    ? `, one of ${process.processes} processes, each counting only the requests it serves`
    : "";
  return `Calls, errors, latency and ejections are those seen by gateway process ${process.pid}${others}; `
    + "up/down from the health probes is shared by every process.";
}
