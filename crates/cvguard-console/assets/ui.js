// Building the page: elements from data (text only, never parsed as HTML), formatting,
// the threshold bars and the incident chart (inline SVG).

/**
 * An element: `h("td.num", {title: "x"}, "text", child, ...)`. Strings become text
 * nodes, so nothing that comes from events or the API is ever read as HTML.
 */
export function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

// Bidirectional overrides and isolates in text from outside (an account id such as
// "x\u202etxt.exe" shows as "xexe.txt") and other invisible controls are shown as
// escapes, as the CLI's tables do.
const HIDDEN = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

/** Text as it may be shown: invisible and direction-changing characters escaped. */
export function visible(text) {
  return String(text).replace(HIDDEN, (c) => `\\u{${c.codePointAt(0).toString(16)}}`);
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(visible(c)));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function fmtNumber(n) {
  return typeof n === "number" ? n.toLocaleString("en-GB") : n === undefined || n === null ? "–" : String(n);
}

/** An RFC 3339 time in UTC, to the second: `2024-05-04 05:01:46Z`. */
export function fmtTime(t) {
  if (!t) return "–";
  const d = new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

/** A duration in ms: `3 d 4 h`, `1 h 2 min`, `45 s`. */
export function fmtDuration(ms) {
  const s = Math.round(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400);
  const hr = Math.floor((s % 86400) / 3600);
  const min = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${hr} h`;
  if (hr) return `${hr} h ${min} min`;
  if (min) return `${min} min ${s % 60} s`;
  return `${s} s`;
}

/** `5 min ago`, or `in 5 min`. */
export function fmtAgo(t, now = Date.now()) {
  const ms = now - new Date(t).getTime();
  if (Number.isNaN(ms)) return "";
  return ms >= 0 ? `${fmtDuration(ms)} ago` : `in ${fmtDuration(ms)}`;
}

export const STATUSES = ["open", "acknowledged", "resolved", "false_positive"];
export const STATUS_LABEL = {
  open: "open",
  acknowledged: "acknowledged",
  resolved: "resolved",
  false_positive: "false positive",
};
export const KEY_KINDS = ["account_id", "org_id", "user_id", "ip"];
export const SEVERITIES = ["info", "low", "medium", "high", "critical"];

export function badge(kind, text) {
  return h(`span.badge.${kind}`, text);
}

export function statusBadge(status) {
  return badge(`status-${status}`, STATUS_LABEL[status] || status);
}

export function severityBadge(severity) {
  return badge(`sev-${severity}`, severity);
}

/** A bar for `value` of `threshold`: its width set through the CSSOM (allowed by the CSP). */
export function shareBar(value, threshold, silent = false) {
  const share = threshold > 0 ? value / threshold : 0;
  const fillEl = h("span.fill");
  fillEl.style.width = `${Math.min(share, 1) * 100}%`;
  // A baseline rule that does not judge the key yet cannot fire for it: never red.
  const level = silent ? "silent" : share >= 1 ? "over" : share >= 0.8 ? "near" : "ok";
  return h(
    `span.bar.${level}`,
    { role: "meter", "aria-valuenow": value, "aria-valuemin": 0, "aria-valuemax": threshold, title: `${Math.round(share * 100)} % of the threshold` },
    fillEl,
  );
}

export function percent(value, threshold) {
  return threshold > 0 ? `${Math.round((value / threshold) * 100)} %` : "–";
}

/** A key's page: kind as in incidents (`account_id`) or routes (`account`). */
export function keyHref(kind, key) {
  const route = String(kind).replace(/_id$/, "");
  return `#/keys/${encodeURIComponent(route)}/${encodeURIComponent(key)}`;
}

/** A definition list from [label, value] pairs; values may be nodes. */
export function facts(pairs) {
  return h(
    "dl.facts",
    pairs.filter((p) => p).map(([k, v]) => [h("dt", k), h("dd", v === undefined || v === null || v === "" ? "–" : v)]),
  );
}

/** A table from column heads and rows of cells. */
export function table(heads, rows, cls = "") {
  return h(
    `table${cls ? "." + cls : ""}`,
    h("thead", h("tr", heads.map((c) => h("th", c)))),
    h("tbody", rows),
  );
}

export function message(kind, text) {
  return h(`p.msg.${kind}`, { role: kind === "error" ? "alert" : "status" }, text);
}

const SVG = "http://www.w3.org/2000/svg";

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(visible(c)));
  return el;
}

/** Round numbers for an axis from 0 to max: about `count` of them. */
function ticks(max, count) {
  if (max <= 0) return [0];
  const raw = max / count;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((v) => v >= raw);
  const out = [];
  for (let v = 0; v <= max + step / 2; v += step) out.push(v);
  return out;
}

/**
 * The incident chart: the rule's window value for the key (a step line) against its
 * threshold (a dashed line), the crossing and the decision marked.
 */
export function incidentChart(timeline) {
  const W = 880;
  const H = 300;
  const pad = { l: 64, r: 20, t: 16, b: 40 };
  const points = (timeline.points || [])
    .map((p) => ({ t: new Date(p.at).getTime(), v: Number(p.value) }))
    .filter((p) => !Number.isNaN(p.t) && !Number.isNaN(p.v))
    .sort((a, b) => a.t - b.t);
  const threshold = Number(timeline.threshold) || 0;
  const crossed = timeline.crossed_at ? new Date(timeline.crossed_at).getTime() : NaN;
  const decided = timeline.decided_at ? new Date(timeline.decided_at).getTime() : NaN;
  // The axis is event time: the points and the crossing. The decision is processing time:
  // live, moments after the crossing; in a replay of old events it can be years later, and
  // is then named at the edge rather than squeezing the story into a sliver.
  const times = points.map((p) => p.t).concat(Number.isNaN(crossed) ? [] : [crossed]);
  if (times.length === 0) return h("p.muted", "No points recorded for this key.");
  let t0 = Math.min(...times);
  let t1 = Math.max(...times);
  const decidedOnAxis = !Number.isNaN(decided) && decided >= t0 && decided <= t1 + Math.max((t1 - t0) * 0.25, 15 * 60_000);
  if (decidedOnAxis) t1 = Math.max(t1, decided);
  if (t1 === t0) {
    t0 -= 60_000;
    t1 += 60_000;
  }
  const vmax = Math.max(threshold, ...points.map((p) => p.v), Number(timeline.value_at_detection) || 0) * 1.1 || 1;
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (W - pad.l - pad.r);
  const y = (v) => H - pad.b - (v / vmax) * (H - pad.t - pad.b);
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${H}`,
    class: "chart",
    role: "img",
    "aria-label": `Distinct CVs over time against the threshold of ${threshold}`,
  });
  for (const v of ticks(vmax, 5)) {
    svg.append(s("line", { x1: pad.l, x2: W - pad.r, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(s("text", { x: pad.l - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, v.toLocaleString("en-GB")));
  }
  const span = t1 - t0;
  for (let i = 0; i <= 4; i++) {
    const t = t0 + (span * i) / 4;
    const label = new Date(t).toISOString().slice(span > 2 * 86400_000 ? 5 : 11, span > 2 * 86400_000 ? 16 : 19).replace("T", " ");
    svg.append(s("text", { x: x(t), y: H - pad.b + 18, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle", class: "axis" }, label));
  }
  svg.append(s("text", { x: W - pad.r, y: H - 4, "text-anchor": "end", class: "axis" }, "UTC"));
  if (points.length) {
    let d = `M${x(points[0].t)},${y(points[0].v)}`;
    for (let i = 1; i < points.length; i++) d += `H${x(points[i].t)}V${y(points[i].v)}`;
    svg.append(s("path", { d, class: "series", fill: "none" }));
  }
  if (threshold > 0) {
    svg.append(s("line", { x1: pad.l, x2: W - pad.r, y1: y(threshold), y2: y(threshold), class: "threshold" }));
    svg.append(
      s("text", { x: pad.l + 6, y: y(threshold) - 6, class: "label threshold-label" }, `threshold ${threshold.toLocaleString("en-GB")} (${timeline.threshold_source || "rule"})`),
    );
  }
  const mark = (t, cls, text, row) => {
    if (Number.isNaN(t)) return;
    svg.append(s("line", { x1: x(t), x2: x(t), y1: pad.t, y2: H - pad.b, class: `mark ${cls}` }));
    const anchor = x(t) > W - 180 ? "end" : "start";
    svg.append(s("text", { x: x(t) + (anchor === "end" ? -6 : 6), y: pad.t + 12 + row * 16, "text-anchor": anchor, class: `label ${cls}` }, text));
  };
  mark(crossed, "crossing", `crossed ${fmtTime(timeline.crossed_at)}`, 0);
  if (decidedOnAxis) mark(decided, "decision", `decided ${fmtTime(timeline.decided_at)}`, 1);
  else if (!Number.isNaN(decided)) {
    svg.append(s("text", { x: W - pad.r, y: pad.t + 28, "text-anchor": "end", class: "label decision" }, `decided ${fmtTime(timeline.decided_at)} (processing time, off this axis)`));
  }
  if (!Number.isNaN(crossed) && threshold > 0) {
    svg.append(s("circle", { cx: x(crossed), cy: y(threshold), r: 5, class: "crossing-dot" }));
  }
  return svg;
}
