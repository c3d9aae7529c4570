// OllamaMax dashboard: one JSON snapshot a second over server-sent events, drawn with the DOM
// and hand-made SVG charts. No framework, nothing fetched from elsewhere.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["var(--c0)", "var(--c1)", "var(--c2)", "var(--c3)", "var(--c4)"];
const WINDOW_S = 300; // the charts show the last five minutes

const $ = (id) => document.getElementById(id);

function fmt(v, digits = 1) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en");
  return Number(v).toFixed(digits);
}

function fmtBytes(n) {
  if (!n) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n >= 10 || i === 0 ? 0 : 1)} ${units[i]}`;
}

function fmtAgo(t) {
  if (!t) return "–";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(text, kind) { return el("span", { class: `badge ${kind || text}` }, text); }

function bar(used, total) {
  const share = total ? Math.min(1, used / total) : 0;
  const inner = el("span");
  inner.style.width = `${(share * 100).toFixed(0)}%`;
  return el("span", {}, el("span", { class: "bar" }, inner),
    el("span", { class: "bar-label" }, `${used} / ${total}`));
}

function fillTable(id, rows, makeRow) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(...rows.map(makeRow));
}

// -- sections ---------------------------------------------------------------------------------

function summary(s) {
  const g = s.gateway;
  $("s-strategy").textContent = g.strategy;
  $("s-nodes").textContent = `${g.nodes_healthy} / ${g.nodes}`;
  $("s-rps").textContent = fmt(g.requests_per_s);
  $("s-ttft").textContent = g.ttft_p95_ms === null ? "–" : `${fmt(g.ttft_p95_ms)} ms`;
  $("s-inflight").textContent = g.in_flight;
  $("s-queued").textContent = g.queued;
  $("s-mem").textContent = g.memory_mb === null ? "–" : `${fmt(g.memory_mb, 0)} MB`;
  $("s-cpu").textContent = g.cpu_percent === null ? "–" : `${fmt(g.cpu_percent, 0)} %`;
  $("version").textContent = s.version;
  $("updated").textContent = new Date(s.time * 1000).toLocaleTimeString();
}

function health(n) {
  if (!n.healthy) return badge("down");
  if (n.draining) return badge("draining");
  if (n.ejected) return badge("ejected");
  return badge("healthy");
}

function nodes(s) {
  $("nodes-count").textContent = `(${s.nodes.length})`;
  fillTable("nodes", s.nodes, (n) => {
    const loaded = n.loaded.length
      ? el("span", { class: "models-list" }, ...n.loaded.flatMap((m, i) => [
        i ? ", " : "", el("b", {}, m.name), m.loading ? " (loading)" : ` ${m.busy}/${m.slots}`]))
      : el("span", { class: "models-list" }, "none");
    const row = el("tr", { "data-node": n.id },
      el("td", { class: "node-name", title: n.url }, n.id), el("td", {}, health(n)),
      el("td", {}, n.engine || "–"), el("td", {}, loaded), el("td", {}, bar(n.slots_busy, n.slots)),
      el("td", {}, n.queue_depth), el("td", {}, n.in_flight), el("td", {}, n.served),
      el("td", {}, n.memory_mb === null ? "–" : `${fmt(n.memory_mb, 0)} MB`),
      el("td", {}, n.cpu_percent === null || n.cpu_percent === undefined ? "–" : `${fmt(n.cpu_percent, 0)} %`));
    if (!n.healthy) {
      row.classList.add("node-down");
      row.title = `last known state${n.last_error ? `; ${n.last_error}` : ""}`;
    }
    return row;
  });
}

function models(s) {
  fillTable("models", s.models, (m) => el("tr", { "data-model": m.name },
    el("td", {}, m.name), el("td", {}, fmtBytes(m.size)),
    el("td", {}, m.nodes.join(", ") || "–"), el("td", {}, m.loaded_on.join(", ") || "–")));
}

function transfers(s) {
  $("transfers-empty").hidden = s.transfers.length > 0;
  fillTable("transfers", s.transfers, (t) => el("tr", {},
    el("td", {}, t.model), el("td", {}, `${t.source} → ${t.target}`),
    el("td", {}, bar(Math.round(t.progress * 100), 100)),
    el("td", {}, `${fmtBytes(t.bytes_per_s)}/s`)));
}

function alerts(s) {
  $("alerts-empty").hidden = s.alerts_enabled;
  const firing = s.alerts.filter((a) => a.state === "firing").length;
  $("alerts-count").textContent = s.alerts_enabled ? `(${firing} firing)` : "";
  const order = { firing: 0, pending: 1, ok: 2 };
  const rows = [...s.alerts].sort((a, b) => order[a.state] - order[b.state]);
  fillTable("alerts", rows, (a) => el("tr",
    { class: `alert-row state-${a.state} sev-${a.severity || "none"}`, "data-rule": a.rule },
    el("td", {}, a.title), el("td", {}, badge(a.state)),
    el("td", {}, a.severity ? badge(a.severity) : "–"),
    el("td", {}, a.value === null ? "no data" : `${fmt(a.value, 2)} ${a.unit}`),
    el("td", {}, `${a.warning} / ${a.critical} ${a.unit}`), el("td", {}, `${a.for_s} s`),
    el("td", {}, a.since ? fmtAgo(a.since) : "–")));
}

function flags(s) {
  fillTable("flags", s.flags, (f) => {
    const setting = f.percent >= 100 || f.variant === f.base
      ? f.variant : `${f.variant} ${f.percent}%, else ${f.base}`;
    return el("tr", {}, el("td", {}, f.name), el("td", {}, setting), el("td", {}, f.default));
  });
}

// -- charts -----------------------------------------------------------------------------------

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// lines: [{values, color}] on one scale; times: seconds since the epoch, shared by every line
function drawChart(svg, times, lines) {
  const w = svg.clientWidth || 600, h = svg.clientHeight || 150;
  const left = 44, right = 8, top = 8, bottom = 18;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const end = times.length ? times[times.length - 1] : Date.now() / 1000;
  const start = end - WINDOW_S;
  const children = [];
  let points = 0;
  const max = niceMax(Math.max(0, ...lines.flatMap(
    (l) => l.values.filter((v, i) => v !== null && times[i] >= start))));
  for (let k = 0; k <= 4; k++) {
    const y = top + (h - top - bottom) * k / 4;
    children.push(svgEl("line", { class: "grid", x1: left, x2: w - right, y1: y, y2: y }));
    const label = svgEl("text", { class: "axis", x: left - 4, y: y + 4, "text-anchor": "end" });
    label.textContent = String(Number((max * (1 - k / 4)).toFixed(max < 100 ? 2 : 0)));
    children.push(label);
  }
  for (const [x, text] of [[left, "-5 min"], [w - right, "now"]]) {
    const label = svgEl("text", { class: "axis", x, y: h - 4, "text-anchor": x === left ? "start" : "end" });
    label.textContent = text;
    children.push(label);
  }
  lines.forEach((line) => {
    let run = [];
    const flush = () => {
      if (run.length > 1) children.push(svgEl("polyline", { points: run.join(" "), stroke: line.color }));
      else if (run.length === 1) {
        const [cx, cy] = run[0].split(",");
        children.push(svgEl("circle", { cx, cy, r: 2, fill: line.color }));
      }
      run = [];
    };
    line.values.forEach((v, i) => {
      if (v === null || times[i] < start) { flush(); return; }
      const x = left + (w - left - right) * (times[i] - start) / WINDOW_S;
      const y = top + (h - top - bottom) * (1 - Math.min(v, max) / max);
      run.push(`${x.toFixed(1)},${y.toFixed(1)}`);
      points++;
    });
    flush();
  });
  if (!points) {
    const none = svgEl("text", { class: "nodata", x: w / 2, y: h / 2, "text-anchor": "middle" });
    none.textContent = "no data yet";
    children.push(none);
  }
  svg.replaceChildren(...children);
  svg.dataset.points = String(points);
}

function charts(s) {
  const c = s.charts;
  if (!c) return;
  drawChart($("chart-rate"), c.t, [
    { values: c.requests_per_s, color: COLORS[0] }, { values: c.errors_per_s, color: COLORS[3] }]);
  drawChart($("chart-ttft"), c.t, [
    { values: c.ttft_p50_ms, color: COLORS[0] }, { values: c.ttft_p95_ms, color: COLORS[1] },
    { values: c.ttft_p99_ms, color: COLORS[2] }]);
  drawChart($("chart-errors"), c.t, [{ values: c.errors_per_s, color: COLORS[3] }]);
  drawChart($("chart-load"), c.t, [
    { values: c.in_flight, color: COLORS[0] }, { values: c.queued, color: COLORS[1] }]);
  drawChart($("chart-cpu"), c.t, [{ values: c.cpu_percent, color: COLORS[1] }]);
  drawChart($("chart-memory"), c.t, [{ values: c.memory_mb, color: COLORS[4] }]);
}

// -- wiring -----------------------------------------------------------------------------------

let last = null;
const MAX_POINTS = 300;

function appended(charts, point) {
  if (!point || point.t === undefined) return charts;
  for (const [name, values] of Object.entries(charts)) {
    values.push(point[name] === undefined ? null : point[name]);
    if (values.length > MAX_POINTS) values.splice(0, values.length - MAX_POINTS);
  }
  return charts;
}

function render(s) {
  last = s;
  for (const part of [summary, alerts, charts, nodes, models, transfers, flags]) {
    try { part(s); } catch (err) { console.error(part.name, err); }
  }
}

function connect() {
  const live = $("live");
  const source = new EventSource("/dashboard/events");
  const shown = () => { live.textContent = "live"; live.className = "pill on"; };
  source.addEventListener("snapshot", (event) => {
    shown();
    render(JSON.parse(event.data));
  });
  source.addEventListener("update", (event) => { // the newest chart point: append it
    shown();
    const s = JSON.parse(event.data);
    s.charts = last && last.charts ? appended(last.charts, s.point) : null;
    render(s);
  });
  source.onerror = () => {
    live.textContent = "reconnecting";
    live.className = "pill off";
  };
}

window.addEventListener("resize", () => { if (last) charts(last); });
connect();
