// Plots as inline SVG built with createElementNS (no library, nothing fetched).
import { h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function fmt(x) {
  if (Math.abs(x) >= 1000) return x.toFixed(0);
  if (Math.abs(x) >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

// Bars: groups = [{label, a, b}] drawn as two stacked series (a below b).
export function bars(groups, { title, aLabel, bLabel, width = 560, height = 200 } = {}) {
  const left = 40, bottom = 34, top = 10, right = 10;
  const svg = s("svg", { class: "plot", viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
  svg.append(s("title", {}, title || "bar chart"));
  const max = Math.max(1, ...groups.map((g) => (g.a || 0) + (g.b || 0)));
  const plotW = width - left - right, plotH = height - top - bottom;
  const bw = groups.length ? plotW / groups.length : plotW;
  svg.append(s("line", { class: "axis", x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH }));
  svg.append(s("line", { class: "axis", x1: left, y1: top, x2: left, y2: top + plotH }));
  svg.append(s("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, String(max)));
  svg.append(s("text", { x: left - 4, y: top + plotH, "text-anchor": "end" }, "0"));
  const every = Math.max(1, Math.ceil(groups.length / 8));
  groups.forEach((g, i) => {
    const x = left + i * bw + bw * 0.1;
    const ha = ((g.a || 0) / max) * plotH, hb = ((g.b || 0) / max) * plotH;
    const a = s("rect", { class: "bar-a", x, y: top + plotH - ha, width: bw * 0.8, height: ha });
    a.append(s("title", {}, `${g.label}: ${g.a || 0} ${aLabel || ""}`));
    svg.append(a);
    if (hb) {
      const b = s("rect", { class: "bar-b", x, y: top + plotH - ha - hb, width: bw * 0.8, height: hb });
      b.append(s("title", {}, `${g.label}: ${g.b} ${bLabel || ""}`));
      svg.append(b);
    }
    if (i % every === 0) {
      svg.append(s("text", { x: x + bw * 0.4, y: top + plotH + 14, "text-anchor": "middle" }, g.label));
    }
  });
  const legend = h(
    "div",
    { class: "legend" },
    aLabel ? [h("span", { class: "swatch-a" }), aLabel] : null,
    bLabel ? [h("span", { class: "swatch-b" }), bLabel] : null,
  );
  return h("figure", {}, svg, legend);
}

// Histogram of values in [lo, hi] with n bins; labels (0/1 or null) split defaults out.
export function histogram(values, { bins = 20, lo, hi, labels = null, title } = {}) {
  const min = lo ?? Math.min(...values), max = hi ?? Math.max(...values);
  const span = max - min || 1;
  const groups = Array.from({ length: bins }, (_, i) => ({ label: fmt(min + (i * span) / bins), a: 0, b: 0 }));
  values.forEach((v, i) => {
    const k = Math.min(bins - 1, Math.max(0, Math.floor(((v - min) / span) * bins)));
    if (labels && labels[i] === 1) groups[k].b += 1;
    else groups[k].a += 1;
  });
  return bars(groups, {
    title: title || "score distribution",
    aLabel: labels ? "no default (or unknown)" : "entities",
    bLabel: labels ? "defaulted" : null,
  });
}

// Score bands: count and default rate (where labels are known) per band of equal width.
export function bandRows(values, labels, edges) {
  const rows = [];
  for (let i = 0; i < edges.length - 1; i += 1) {
    const lo = edges[i], hi = edges[i + 1];
    const idx = values.map((v, j) => j).filter((j) => values[j] >= lo && (values[j] < hi || (i === edges.length - 2 && values[j] <= hi)));
    const known = idx.filter((j) => labels && (labels[j] === 0 || labels[j] === 1));
    const defaults = known.filter((j) => labels[j] === 1).length;
    rows.push({
      band: `${fmt(lo)} – ${fmt(hi)}`,
      count: idx.length,
      known: known.length,
      rate: known.length ? `${((100 * defaults) / known.length).toFixed(1)} %` : "–",
    });
  }
  return rows;
}

// A horizontal meter: used of limit.
export function meter(used, limit) {
  const w = 160;
  const svg = s("svg", { width: w, height: 10, role: "img" });
  const frac = limit ? Math.min(1, used / limit) : 0;
  svg.append(s("title", {}, limit ? `${used} of ${limit} used` : `${used} used (no limit)`));
  svg.append(s("rect", { x: 0, y: 0, width: w, height: 10, fill: "#e6ecf3" }));
  svg.append(s("rect", { x: 0, y: 0, width: w * frac, height: 10, fill: frac > 0.8 ? "#c4503a" : "#3a78c2" }));
  return h("span", { class: "meter" }, svg);
}
