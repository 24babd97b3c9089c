// The incidents list (live) and one incident's page.

import { ApiError, download, getJson, postJson, session, withQuery } from "./api.js";
import {
  KEY_KINDS,
  SEVERITIES,
  STATUSES,
  STATUS_LABEL,
  badge,
  facts,
  fill,
  fmtAgo,
  fmtDuration,
  fmtNumber,
  fmtTime,
  h,
  incidentChart,
  keyHref,
  message,
  severityBadge,
  statusBadge,
  table,
} from "./ui.js";

const FILTERS = ["status", "rule", "severity", "key_kind", "key", "from", "to"];
const PAGE = 100;

/** Does a streamed incident belong in a list with these filters? */
function matches(incident, f) {
  for (const k of ["status", "rule", "severity", "key_kind", "key"]) {
    if (f[k] && incident[k] !== f[k]) return false;
  }
  const opened = new Date(incident.opened_at).getTime();
  if (f.from && opened < new Date(f.from).getTime()) return false;
  if (f.to && opened >= new Date(f.to).getTime()) return false;
  return true;
}

/** A `datetime-local` value, read as UTC, as RFC 3339; and back. */
const toRfc3339 = (v) => (v ? `${v}:00Z` : "");
const fromRfc3339 = (v) => (v ? new Date(v).toISOString().slice(0, 16) : "");

function deadlineCell(incident) {
  if (incident.status === "false_positive") return h("span.muted", "not needed");
  if (!incident.notify_authority_by) return "–";
  const left = new Date(incident.notify_authority_by).getTime() - Date.now();
  const closed = incident.status === "resolved";
  return h(
    `span.${left < 0 && !closed ? "overdue" : "deadline"}`,
    { title: `Notify the authority by ${fmtTime(incident.notify_authority_by)}` },
    left < 0 ? `${fmtDuration(left)} past` : `${fmtDuration(left)} left`,
  );
}

function incidentRow(incident) {
  const href = `#/incidents/${encodeURIComponent(incident.id)}`;
  return h(
    "tr",
    { dataset: { id: incident.id, status: incident.status } },
    h("td.nowrap", h("a", { href }, fmtTime(incident.opened_at))),
    h("td", severityBadge(incident.severity)),
    h("td", h("a", { href }, incident.rule)),
    h("td.key", h("span.kind", incident.key_kind), " ", h("a", { href: keyHref(incident.key_kind, incident.key) }, incident.key)),
    h("td", statusBadge(incident.status)),
    h("td", incident.action === "suspend" ? badge(incident.suspended ? "suspended" : "suspend", incident.suspended ? "suspended" : "suspend") : badge("alert", incident.action), incident.reason && incident.reason !== "rule_response" ? h("span.muted", ` ${incident.reason}`) : null),
    h("td.num", fmtNumber(incident.latest_value), h("span.muted", ` / ${fmtNumber(incident.threshold)}`)),
    h("td.nowrap", deadlineCell(incident)),
  );
}

export function incidentsPage(main, params) {
  const f = Object.fromEntries(FILTERS.map((k) => [k, params.get(k) || ""]));
  const counts = h("div.counts", { id: "counts" });
  const tbody = h("tbody", { id: "incident-rows" });
  const info = h("div");
  const more = h("button.quiet", { type: "button", hidden: true }, "More");
  const rows = new Map();
  let offset = 0;

  const go = (changes) => {
    const next = { ...f, ...changes };
    const q = new URLSearchParams();
    for (const k of FILTERS) if (next[k]) q.set(k, next[k]);
    const s = q.toString();
    location.hash = `#/incidents${s ? "?" + s : ""}`;
  };

  const select = (name, label, options, labels = {}) =>
    h(
      "label",
      label,
      h(
        "select",
        { name, id: `filter-${name}`, onchange: (e) => go({ [name]: e.target.value }) },
        h("option", { value: "" }, "any"),
        options.map((o) => h("option", { value: o, selected: f[name] === o }, labels[o] || o)),
      ),
    );
  const ruleSelect = select("rule", "Rule", f.rule ? [f.rule] : []);
  const timeInput = (name, label) =>
    h("label", label, h("input", { type: "datetime-local", name, value: fromRfc3339(f[name]), onchange: (e) => go({ [name]: toRfc3339(e.target.value) }) }));
  const keyInput = h("input", { type: "search", name: "key", value: f.key, placeholder: "exact key" });
  const filters = h(
    "form.filters",
    { onsubmit: (e) => (e.preventDefault(), go({ key: keyInput.value.trim() })) },
    select("status", "Status", STATUSES, STATUS_LABEL),
    ruleSelect,
    select("severity", "Severity", SEVERITIES),
    select("key_kind", "Key kind", KEY_KINDS),
    h("label", "Key", keyInput),
    timeInput("from", "Opened from (UTC)"),
    timeInput("to", "to"),
    h("button.quiet", { type: "button", onclick: () => (location.hash = "#/incidents") }, "Clear"),
  );

  fill(
    main,
    h("h1", "Incidents"),
    counts,
    filters,
    info,
    table(["Opened (UTC)", "Severity", "Rule", "Key", "Status", "Decision", "Value / threshold", "Art. 33 notice"], [], "incidents"),
    more,
  );
  main.querySelector("table.incidents").replaceChild(tbody, main.querySelector("table.incidents tbody"));

  getJson("/v1/rules")
    .then((r) => {
      const sel = ruleSelect.querySelector("select");
      for (const rule of r.rules || []) {
        if (rule.name !== f.rule) sel.append(h("option", { value: rule.name }, rule.name));
      }
    })
    .catch(() => {});

  async function loadCounts() {
    try {
      const c = await getJson("/v1/incidents/counts");
      fill(
        counts,
        STATUSES.map((s) =>
          h(
            `a.count.status-${s}`,
            { href: `#/incidents?status=${s}`, dataset: { status: s }, title: `Show ${STATUS_LABEL[s]} incidents` },
            h("span.n", fmtNumber(c[s] ?? 0)),
            h("span.what", STATUS_LABEL[s]),
          ),
        ),
      );
    } catch (e) {
      fill(counts, message("error", `Counts unavailable: ${e.message}`));
    }
  }

  async function load(append) {
    try {
      const list = await getJson(withQuery("/v1/incidents", { ...f, limit: PAGE, offset }));
      if (!append) {
        tbody.replaceChildren();
        rows.clear();
      }
      for (const incident of list.incidents || []) {
        const row = incidentRow(incident);
        rows.set(incident.id, row);
        tbody.append(row);
      }
      more.hidden = list.next_offset === null || list.next_offset === undefined;
      offset = list.next_offset ?? offset;
      fill(info, rows.size === 0 ? message("info", "No incidents match. New ones appear here as they are decided.") : null);
    } catch (e) {
      fill(info, message("error", `Could not list incidents: ${e.message}`));
    }
  }
  more.addEventListener("click", () => load(true));

  let countsTimer = null;
  session.listeners.add((incident) => {
    clearTimeout(countsTimer);
    countsTimer = setTimeout(loadCounts, 300);
    const old = rows.get(incident.id);
    if (!matches(incident, f)) {
      if (old) {
        old.remove();
        rows.delete(incident.id);
      }
      return;
    }
    const row = incidentRow(incident);
    row.classList.add("fresh");
    rows.set(incident.id, row);
    if (old) old.replaceWith(row);
    else tbody.prepend(row);
    fill(info);
  });

  loadCounts();
  load(false);
  // The Art. 33 column counts down.
  const tick = setInterval(() => {
    for (const row of tbody.children) row.classList.remove("fresh");
  }, 30_000);
  return () => {
    clearInterval(tick);
    clearTimeout(countsTimer);
  };
}

/** The Art. 33 clock: time left until the authority must be told. */
function art33(incident, el) {
  const by = new Date(incident.notify_authority_by).getTime();
  const render = () => {
    if (incident.status === "false_positive") {
      fill(el, h("div.clock.muted", "No notification: marked a false positive."));
      return;
    }
    if (Number.isNaN(by)) {
      fill(el, h("div.clock", "–"));
      return;
    }
    const left = by - Date.now();
    fill(
      el,
      h(`div.clock.${left < 0 ? "overdue" : left < 12 * 3600_000 ? "soon" : "ok"}`, { id: "art33" }, left < 0 ? `${fmtDuration(left)} overdue` : `${fmtDuration(left)} left`),
      h("div.muted", `Notify the authority by ${fmtTime(incident.notify_authority_by)} (72 h from detection, GDPR Art. 33).`),
    );
  };
  render();
  return setInterval(render, 1000);
}

function listOf(values) {
  if (!Array.isArray(values) || values.length === 0) return h("span.muted", "none");
  return h("ul.chips", values.map((v) => h("li", typeof v === "object" ? JSON.stringify(v) : String(v))));
}

/** Whatever the incident's evidence holds: lists as chips, counts as numbers, windows as a table. */
function evidence(ev) {
  if (!ev || typeof ev !== "object") return h("p.muted", "No evidence recorded.");
  const parts = [];
  const pairs = [];
  for (const [k, v] of Object.entries(ev)) {
    if (k === "windows" && Array.isArray(v)) {
      parts.push(
        h("h3", "Every window of the key at the decision"),
        table(
          ["Rule", "Measure", "Window", "Value", "Threshold", "Source"],
          v.map((w) => h("tr", h("td", w.rule), h("td", w.measure), h("td", w.window), h("td.num", fmtNumber(w.value)), h("td.num", fmtNumber(w.threshold)), h("td", w.threshold_source))),
        ),
      );
    } else if (Array.isArray(v)) {
      pairs.push([k.replace(/_/g, " "), listOf(v)]);
    } else if (v && typeof v === "object") {
      pairs.push([k.replace(/_/g, " "), Object.entries(v).map(([a, b]) => `${a}: ${fmtNumber(b)}`).join(" · ")]);
    } else {
      pairs.push([k.replace(/_/g, " "), typeof v === "number" ? fmtNumber(v) : String(v)]);
    }
  }
  return h("div", facts(pairs), parts);
}

/**
 * The responder's panel. Built once per page, so a live update never takes the note being
 * typed or its focus: `update(incident)` redraws only the buttons its status allows.
 */
function actionsPanel(id, reload) {
  const note = h("textarea", { id: "note", rows: 2, placeholder: "A note for the record (optional for a status change)", maxlength: 4000 });
  const out = h("div", { id: "action-result" });
  const buttons = h("div.buttons");
  const base = `/v1/incidents/${encodeURIComponent(id)}`;
  const run = async (button, verb, done) => {
    button.disabled = true;
    try {
      await postJson(`${base}/${verb}`, { note: note.value });
      note.value = "";
      fill(out, message("ok", done));
      await reload();
    } catch (e) {
      fill(out, message("error", e instanceof ApiError && e.status === 403 ? "Your role may not do that." : e.message));
      button.disabled = false;
    }
  };
  const update = (incident) => {
    const can = (...statuses) => statuses.includes(incident.status);
    const button = (cls, attrs, label) => h(`button${cls}`, { type: "button", ...attrs }, label);
    const confirmFp = button(
      ".danger",
      {
        id: "confirm-false-positive",
        hidden: true,
        onclick: (e) => run(e.target, "false-positive", incident.suspended ? "Marked a false positive; the account is being unsuspended." : "Marked a false positive."),
      },
      incident.suspended ? `Confirm: unsuspend ${(incident.accounts || []).join(", ")}` : "Confirm",
    );
    fill(
      buttons,
      can("open") ? button("", { id: "act-ack", onclick: (e) => run(e.target, "ack", "Acknowledged.") }, "Acknowledge") : null,
      can("open", "acknowledged") ? button("", { id: "act-resolve", onclick: (e) => run(e.target, "resolve", "Resolved.") }, "Resolve") : null,
      can("open", "acknowledged") ? button(".warn", { id: "act-false-positive", onclick: () => (confirmFp.hidden = false) }, "Mark false positive") : null,
      can("open", "acknowledged") ? confirmFp : null,
      button(
        ".quiet",
        {
          id: "act-note",
          onclick: (e) => (note.value.trim() ? run(e.target, "note", "Note added.") : fill(out, message("error", "Write a note first."))),
        },
        "Add note",
      ),
    );
  };
  return { panel: h("section.panel.actions", h("h2", "Act"), note, buttons, out), update };
}

/** What became of the decision: suspended, unsuspended, a suspension not (yet) delivered, or an alert. */
function decisionBadge(d) {
  if (d.action !== "suspend") return badge("alert", d.action);
  if (d.suspended) return badge("suspended", "suspended");
  const delivered = (call) => (d.actions || []).some((a) => a.action === call && a.outcome === "delivered");
  if (delivered("unsuspend")) return badge("suspend", "unsuspended");
  return badge("suspend", delivered("suspend") ? "suspend" : "suspend (not delivered)");
}

export function incidentPage(main, id) {
  const timers = [];
  const timelineBox = h("div", { id: "chart" }, h("p.muted", "Loading the chart…"));
  const head = h("div");
  const grid = h("div.grid3");
  const evidenceBox = h("div");
  const callsBox = h("div");
  const historyBox = h("div");
  const act = session.canAct() ? actionsPanel(id, () => render()) : null;
  let shown = false;

  async function loadTimeline() {
    try {
      const t = await getJson(`/v1/incidents/${encodeURIComponent(id)}/timeline`);
      if (!t.points || t.points.length === 0) {
        // A rule that counts events or addresses: the exposure record has no such line.
        fill(
          timelineBox,
          message("info", `This rule counts ${t.measure} (${t.window || "its window"}): no CV line to draw. Value at detection: ${fmtNumber(t.value_at_detection)} of ${fmtNumber(t.threshold)}.`),
        );
        return;
      }
      fill(
        timelineBox,
        incidentChart(t),
        h(
          "p.muted",
          `${t.rule}: distinct CVs first read inside its ${t.window || ""} window by its actions, from the exposure record, against the threshold of ${fmtNumber(t.threshold)} (${t.threshold_source}). Value at detection: ${fmtNumber(t.value_at_detection)}.`,
        ),
      );
    } catch (e) {
      fill(timelineBox, message("info", `No chart: ${e.message}`));
    }
  }

  async function render() {
    let d;
    try {
      d = await getJson(`/v1/incidents/${encodeURIComponent(id)}`);
    } catch (e) {
      if (!shown) fill(main, h("p", h("a", { href: "#/incidents" }, "← Incidents")), message("error", e.status === 404 ? `No incident ${id}.` : e.message));
      return;
    }
    if (!shown) {
      shown = true;
      fill(
        main,
        h("p", h("a", { href: "#/incidents" }, "← Incidents")),
        head,
        grid,
        act ? act.panel : null,
        h("section.panel", h("h2", "Distinct CVs against the threshold"), timelineBox),
        h("section.panel", h("h2", "Evidence"), evidenceBox),
        h("section.panel", h("h2", "Platform calls (suspend / unsuspend)"), callsBox),
        h("section.panel", h("h2", "Status history and notes"), historyBox),
      );
    }
    for (const t of timers.splice(0)) clearInterval(t);
    const clock = h("div");
    timers.push(art33(d, clock));
    const vis = d.cvs_by_visibility || {};
    const csvMsg = h("div");
    const csvButton = h(
      "button.quiet",
      {
        type: "button",
        id: "download-csv",
        onclick: async (e) => {
          e.target.disabled = true;
          try {
            await download(`/v1/incidents/${encodeURIComponent(d.id)}/affected.csv`, `affected-${d.id}.csv`);
          } catch (err) {
            fill(csvMsg, message("error", err.message));
          }
          e.target.disabled = false;
        },
      },
      "Download affected CVs (CSV)",
    );
    fill(
      head,
      h("h1", { id: "incident-title" }, d.rule, " · ", h("span.kind", d.key_kind), " ", h("a", { href: keyHref(d.key_kind, d.key) }, d.key)),
      h("p.badges", statusBadge(d.status), " ", severityBadge(d.severity), " ", decisionBadge(d), " ", h("span.muted", `reason: ${d.reason}`), " ", h("code.muted", d.id)),
    );
    fill(
      grid,
      h(
        "section.panel",
        h("h2", "Decision"),
        facts([
          ["opened", fmtTime(d.opened_at)],
          ["value at detection", fmtNumber(d.value_at_detection)],
          ["latest value", fmtNumber(d.latest_value)],
          ["threshold", `${fmtNumber(d.threshold)} (${d.threshold_source})`],
          ["first event", fmtTime(d.first_event_time)],
          ["last event", fmtTime(d.last_event_time)],
          ["time to detect", fmtDuration(d.time_to_detect_ms || 0)],
          ["accounts", (d.accounts || []).join(", ")],
        ]),
      ),
      h(
        "section.panel",
        h("h2", "CVs exposed so far"),
        h("div.vis", { id: "visibility" }, ["named", "anonymous", "unknown"].map((k) => h(`div.vis-${k}`, h("span.n", fmtNumber(vis[k] ?? 0)), h("span.what", k)))),
        h("p.muted", "Named CVs' owners are told by name; anonymous ones through the platform."),
        csvButton,
        csvMsg,
      ),
      h("section.panel", h("h2", "Art. 33 clock"), clock),
    );
    if (act) act.update(d);
    fill(evidenceBox, evidence(d.evidence));
    fill(
      callsBox,
      (d.actions || []).length
        ? table(
            ["At (UTC)", "Call", "Account", "Outcome", "Detail"],
            d.actions.map((a) => h("tr", h("td.nowrap", fmtTime(a.at)), h("td", a.action), h("td", a.target), h("td", badge(`outcome-${a.outcome}`, a.outcome)), h("td", a.detail))),
            "actions",
          )
        : h("p.muted", "No call to the platform for this incident."),
    );
    fill(
      historyBox,
      (d.history || []).length
        ? table(
            ["At (UTC)", "Who", "Change", "Note"],
            d.history.map((r) => h("tr", h("td.nowrap", fmtTime(r.at), h("div.muted", fmtAgo(r.at))), h("td", r.actor), h("td", r.change), h("td.note", r.note))),
            "history",
          )
        : h("p.muted", "Nothing yet."),
    );
  }

  render().then(loadTimeline);
  let pending = null;
  session.listeners.add((incident) => {
    if (incident.id !== id) return;
    clearTimeout(pending);
    pending = setTimeout(() => render().then(loadTimeline), 300);
  });
  return () => {
    for (const t of timers) clearInterval(t);
    clearTimeout(pending);
  };
}
