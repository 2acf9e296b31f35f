// The web console's live parts, on a job's page: its log tail and its GPU charts. No framework and no build
// step: the coordinator serves this file as it is. Text from the job goes in as text (textContent), never as
// HTML. It reads the user API with the session's cookie and CSRF token (GET: a job's log and its readings).
"use strict";

const LOG_KEEP_CHARS = 200000; // the page keeps the end of a long log
const READINGS_EVERY_MS = 10000;
const RETRY_MS = 3000;
const TERMINAL = new Set(["done", "failed", "stopped", "lost"]);
const SVG = "http://www.w3.org/2000/svg";

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function jobUrl(job, what) {
  return `/api/v1/jobs/${encodeURIComponent(job)}/${what}`;
}

// A read of the user API with the session's cookie carries the session's CSRF token, from the page: the
// coordinator takes the cookie alone from no one (a service's page on this origin sends it too).
function readApi(url) {
  const csrf = document.querySelector('meta[name="gpuctl-csrf"]')?.content || "";
  return fetch(url, { headers: { "X-Gpuctl-Csrf": csrf } });
}

// The status beside the job's name, as the log's answers tell it; the Stop button goes once it has ended.
function showStatus(status) {
  const span = document.getElementById("job-status");
  if (!status || !span || span.dataset.status === status) return;
  span.dataset.status = status;
  span.textContent = status;
  span.className = `status s-${status}`;
  if (TERMINAL.has(status)) {
    for (const form of document.querySelectorAll(".actions form")) form.remove();
  }
}

async function followLog(pre) {
  const job = pre.dataset.job;
  let offset = Number(pre.dataset.offset) || 0;
  let partial = offset > 0; // the tail starts mid-line: drop up to the first line break
  const decoder = new TextDecoder();
  for (;;) {
    let response;
    try {
      response = await readApi(`${jobUrl(job, "logs")}?offset=${offset}&follow=1`);
    } catch {
      await sleep(RETRY_MS);
      continue;
    }
    if (!response.ok) {
      pre.dataset.note = `the log cannot be read (${response.status})`;
      if (response.status < 500) return; // logged out, or the job is gone: reloading the page says which
      await sleep(RETRY_MS);
      continue;
    }
    const bytes = new Uint8Array(await response.arrayBuffer());
    offset = Number(response.headers.get("X-Next-Offset")) || offset + bytes.length;
    let text = decoder.decode(bytes, { stream: true });
    if (partial && text) {
      const cut = text.indexOf("\n");
      partial = cut < 0;
      text = partial ? "" : text.slice(cut + 1);
    }
    appendLog(pre, text);
    showStatus(response.headers.get("X-Job-Status"));
    if (response.headers.get("X-Complete") === "1") {
      pre.dataset.note = "end of the log";
      return;
    }
  }
}

function appendLog(pre, text) {
  if (!text) return;
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  let all = pre.textContent + text;
  if (all.length > LOG_KEEP_CHARS) all = all.slice(all.length - LOG_KEEP_CHARS);
  pre.textContent = all;
  delete pre.dataset.note;
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

// --- GPU charts: one small SVG per GPU of the job, utilization and memory in percent ------------------------

async function followReadings(box) {
  const job = box.dataset.job;
  for (;;) {
    let view = null;
    try {
      const response = await readApi(jobUrl(job, "metrics"));
      if (response.ok) view = await response.json();
    } catch {
      view = null;
    }
    drawCharts(box, view);
    const status = document.getElementById("job-status")?.dataset.status;
    if (TERMINAL.has(status)) return;
    await sleep(READINGS_EVERY_MS);
  }
}

function drawCharts(box, view) {
  const series = (view && view.gpus) || [];
  const withSamples = series.filter((s) => s.samples && s.samples.length);
  const legend = document.getElementById("gpu-legend");
  if (legend) legend.hidden = !withSamples.length;
  if (!withSamples.length) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "no readings yet";
    box.replaceChildren(p);
    return;
  }
  box.replaceChildren(...withSamples.map(chart));
}

function memoryPct(reading) {
  const used = reading.memory_used_mib;
  const total = reading.memory_total_mib;
  return used == null || !total ? null : (100 * used) / total;
}

function chart(series) {
  const figure = document.createElement("figure");
  figure.className = "chart";
  const width = 300;
  const height = 80;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  for (const pct of [0, 50, 100]) {
    const y = height - (pct / 100) * height;
    svg.append(line(0, y, width, y, "grid"));
  }
  const samples = series.samples;
  const first = samples[0].at;
  const span = Math.max(samples[samples.length - 1].at - first, 1);
  const x = (s) => ((s.at - first) / span) * width;
  svg.append(polyline(samples, x, (r) => r.utilization_pct, width, height, "util"));
  svg.append(polyline(samples, x, memoryPct, width, height, "mem"));
  const caption = document.createElement("figcaption");
  const last = samples[samples.length - 1].reading;
  caption.textContent = `${series.host} · GPU ${series.gpu}: ${describe(last)}`;
  figure.append(svg, caption);
  return figure;
}

function line(x1, y1, x2, y2, cls) {
  const el = document.createElementNS(SVG, "line");
  for (const [k, v] of Object.entries({ x1, y1, x2, y2, class: cls })) el.setAttribute(k, v);
  return el;
}

function polyline(samples, x, value, width, height, cls) {
  const points = [];
  let y = null;
  for (const s of samples) {
    const v = value(s.reading);
    if (v == null) continue;
    y = (height - (Math.min(v, 100) / 100) * height).toFixed(1);
    points.push(`${x(s).toFixed(1)},${y}`);
  }
  // one reading so far (a job's first ten seconds) is a point, which a polyline does not draw: hold it across
  if (points.length === 1) points.push(`${width},${y}`);
  const el = document.createElementNS(SVG, "polyline");
  el.setAttribute("points", points.join(" "));
  el.setAttribute("class", cls);
  return el;
}

function describe(r) {
  const parts = [];
  if (r.utilization_pct != null) parts.push(`${Math.round(r.utilization_pct)}% busy`);
  if (r.memory_used_mib != null) {
    const total = r.memory_total_mib ? ` of ${(r.memory_total_mib / 1024).toFixed(0)} GiB` : "";
    parts.push(`${(r.memory_used_mib / 1024).toFixed(1)} GiB${total}`);
  }
  if (r.temperature_c != null) parts.push(`${Math.round(r.temperature_c)} °C`);
  if (r.power_w != null) parts.push(`${Math.round(r.power_w)} W`);
  return parts.join(", ") || "no values";
}

document.addEventListener("DOMContentLoaded", () => {
  const status = document.getElementById("job-status");
  if (status) status.dataset.status = status.className.replace(/.*\bs-(\S+).*/, "$1");
  const pre = document.getElementById("log");
  if (pre) followLog(pre);
  const charts = document.getElementById("gpu-charts");
  if (charts) followReadings(charts);
});
