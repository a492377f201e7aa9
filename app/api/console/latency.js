// The Latency panel: request rate, p50 and p99 per model version over the last minutes,
// from periodic readings of /metrics (histograms aggregated over every worker), drawn in SVG.

import { call } from "./api.js";
import { byId, duration, errorBox, fill, h, s } from "./dom.js";
import { between, reading } from "./prometheus.js";

const SPAN_MS = 10 * 60 * 1000; // what the charts show
const POINT_MS = 30 * 1000; // what each point of a chart summarises
const HEADLINE_MS = 60 * 1000; // what the figures above a chart summarise
const WIDTH = 600;
const RATE_TOP = 8;
const RATE_HEIGHT = 44;
const LATENCY_TOP = 64;
const LATENCY_HEIGHT = 100;
const LEFT = 56;

export class Latency {
  constructor(models) {
    this.models = models;
    this.readings = [];
  }

  async read() {
    const status = byId("latency-status");
    let text;
    try {
      text = await call("metrics", { text: true });
    } catch (err) {
      fill(status, errorBox("Could not read /metrics:", err.message));
      return;
    }
    const now = Date.now();
    this.readings.push(reading(text, now));
    const oldest = now - SPAN_MS - POINT_MS;
    while (this.readings.length > 2 && this.readings[1].time < oldest) this.readings.shift();
    status.textContent = `Read /metrics at ${new Date(now).toLocaleTimeString()}` +
      (this.readings.length < 2 ? "; rates need a second reading." : ".");
    this.render();
  }

  /** The reading closest to ``ms`` before the latest (the oldest one if none is that old). */
  readingBefore(index, ms) {
    const target = this.readings[index].time - ms;
    let found = 0;
    for (let i = 0; i < index; i += 1) {
      if (this.readings[i].time <= target) found = i;
    }
    return this.readings[found];
  }

  render() {
    if (this.readings.length === 0) return;
    const latest = this.readings[this.readings.length - 1];
    const keys = new Set(latest.series.keys());
    for (const model of this.models.ready()) keys.add(`${model.name}/${model.version}`);
    const sorted = [...keys].sort();
    fill(byId("latency-list"), sorted.length
      ? sorted.map((key) => this.renderModel(key))
      : h("p", { class: "muted" }, "No model is being served."));
  }

  renderModel(key) {
    const last = this.readings.length - 1;
    const latest = this.readings[last];
    const [name, version] = [key.slice(0, key.lastIndexOf("/")), key.slice(key.lastIndexOf("/") + 1)];
    const headline = last > 0 ? between(this.readingBefore(last, HEADLINE_MS), latest, key) : null;
    const points = [];
    for (let i = 1; i <= last; i += 1) {
      const figures = between(this.readingBefore(i, POINT_MS), this.readings[i], key);
      if (figures) points.push({ time: this.readings[i].time, ...figures });
    }
    const total = latest.series.get(key);
    return h("article", { class: "chart", "data-model": name, "data-version": version },
      h("h3", {}, `${name} `, h("span", { class: "muted" }, `version ${version}`)),
      figuresLine(headline, total ? total.count : 0),
      legend(),
      chart(points, latest.time, `${name} version ${version}`));
  }
}

function figure(label, text, value, kind) {
  return h("span", {}, `${label} `, h("b", { "data-figure": kind, "data-value": value }, text));
}

function figuresLine(headline, total) {
  if (!headline) {
    return h("p", { class: "figures muted" },
      total ? `${total} requests so far; rates after the next reading` : "No requests yet");
  }
  // Until the page has read for a minute, the figures cover the time it has.
  const span = headline.seconds >= HEADLINE_MS / 1000 - 1
    ? "last minute" : `last ${Math.round(headline.seconds)} s`;
  return h("p", { class: "figures" },
    figure(`${span}:`, `${headline.rate.toFixed(headline.rate < 10 ? 2 : 1)} req/s`,
      headline.rate, "rate"),
    figure("p50", duration(headline.p50), headline.p50 ?? "", "p50"),
    figure("p99", duration(headline.p99), headline.p99 ?? "", "p99"),
    headline.failures ? figure("failed", String(headline.failures), headline.failures, "failed")
      : null,
    h("span", { class: "muted" }, `${total} requests in all`));
}

function legend() {
  return h("p", { class: "legend", "aria-hidden": "true" },
    h("span", {}, h("span", { class: "swatch rate" }), "requests/s"),
    h("span", {}, h("span", { class: "swatch p50" }), "p50"),
    h("span", {}, h("span", { class: "swatch p99" }), "p99"));
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

function chart(points, now, title) {
  const start = now - SPAN_MS;
  const x = (time) => LEFT + ((time - start) / SPAN_MS) * (WIDTH - LEFT - 4);
  const rateMax = niceMax(Math.max(0, ...points.map((p) => p.rate)));
  const latencies = points.flatMap((p) => [p.p50, p.p99]).filter((v) => v !== null);
  const latencyMax = niceMax(Math.max(0, ...latencies));
  const yRate = (rate) => RATE_TOP + RATE_HEIGHT - (rate / rateMax) * RATE_HEIGHT;
  const yLatency = (seconds) =>
    LATENCY_TOP + LATENCY_HEIGHT - (seconds / latencyMax) * LATENCY_HEIGHT;
  const barWidth = Math.max(2, ((WIDTH - LEFT) * 4000) / SPAN_MS);
  // A point without requests has no latency: the line stops there and starts again after.
  const line = (pick) => {
    let move = "M";
    const parts = [];
    for (const p of points) {
      if (pick(p) === null) {
        move = "M";
        continue;
      }
      parts.push(`${move}${x(p.time).toFixed(1)},${yLatency(pick(p)).toFixed(1)}`);
      move = "L";
    }
    return parts.join(" ");
  };
  const bottom = LATENCY_TOP + LATENCY_HEIGHT;
  return s("svg", {
    class: "plot",
    viewBox: `0 0 ${WIDTH} ${bottom + 20}`,
    role: "img",
    "aria-label": `Requests per second, p50 and p99 of ${title} over the last 10 minutes`,
  },
  s("title", {}, `${title}: requests per second (bars), p50 and p99 latency (lines)`),
  s("line", { class: "axis", x1: LEFT, x2: WIDTH, y1: RATE_TOP + RATE_HEIGHT, y2: RATE_TOP + RATE_HEIGHT }),
  s("line", { class: "axis", x1: LEFT, x2: WIDTH, y1: bottom, y2: bottom }),
  s("text", { class: "tick", x: LEFT - 6, y: RATE_TOP + 9, "text-anchor": "end" },
    `${rateMax}/s`),
  s("text", { class: "tick", x: LEFT - 6, y: LATENCY_TOP + 9, "text-anchor": "end" },
    duration(latencyMax)),
  s("text", { class: "tick", x: LEFT - 6, y: bottom, "text-anchor": "end" }, "0"),
  s("text", { class: "tick", x: LEFT, y: bottom + 16 }, "−10 min"),
  s("text", { class: "tick", x: x(now - SPAN_MS / 2), y: bottom + 16, "text-anchor": "middle" },
    "−5 min"),
  s("text", { class: "tick", x: WIDTH - 2, y: bottom + 16, "text-anchor": "end" }, "now"),
  points.filter((p) => p.rate > 0).map((p) => s("rect", {
    class: "rate",
    x: (x(p.time) - barWidth).toFixed(1),
    y: yRate(p.rate).toFixed(1),
    width: barWidth.toFixed(1),
    height: (RATE_TOP + RATE_HEIGHT - yRate(p.rate)).toFixed(1),
  })),
  s("path", { class: "p50", d: line((p) => p.p50) || "M0,0" }),
  s("path", { class: "p99", d: line((p) => p.p99) || "M0,0" }),
  // Dots too, so that a lone point between gaps shows.
  ["p50", "p99"].map((kind) => points.filter((p) => p[kind] !== null).map((p) => s("circle", {
    class: `${kind} dot`, cx: x(p.time).toFixed(1), cy: yLatency(p[kind]).toFixed(1), r: 2,
  }))));
}
