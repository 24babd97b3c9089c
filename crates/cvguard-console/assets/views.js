// Keys (one key's windows, and the keys closest to a threshold), rules and the
// configuration, and the detector's own health.

import { ApiError, getJson, request } from "./api.js";
import { badge, facts, fill, fmtAgo, fmtDuration, fmtNumber, fmtTime, h, keyHref, message, percent, shareBar, table } from "./ui.js";

const KINDS = ["account", "org", "user", "ip"];

/** What a baseline rule says of the key: how it is judged, or why it is silent for it. */
function baselineNote(b) {
  if (!b) return null;
  if (!b.judged) return h("div.muted.silent-note", `silent for this key: needs ${b.min_history_days} days of history`);
  return h("span.muted", ` (${b.statistic} × ${b.factor})`);
}

function windowRows(windows) {
  return windows.map((w) =>
    h(
      "tr",
      { dataset: { rule: w.rule } },
      h("td", w.rule),
      h("td", `${w.measure} / ${w.window}`),
      h("td.bar-cell", shareBar(w.value, w.threshold, Boolean(w.baseline && !w.baseline.judged))),
      h("td.num.value", fmtNumber(w.value)),
      h("td.num.threshold", fmtNumber(w.threshold)),
      h("td.num", percent(w.value, w.threshold)),
      h("td", w.threshold_source, baselineNote(w.baseline)),
      h("td", w.response ? badge(w.response === "suspend" ? "suspend" : "alert", w.response) : "–"),
    ),
  );
}

async function keyView(kind, key) {
  let view;
  try {
    view = await getJson(`/v1/keys/${encodeURIComponent(kind)}/${encodeURIComponent(key)}`);
  } catch (e) {
    // Before /v1/keys existed, accounts had their own route.
    if (!(e instanceof ApiError && e.status === 404 && kind === "account")) throw e;
    view = await getJson(`/v1/accounts/${encodeURIComponent(key)}`);
  }
  const windows = view.windows || [];
  return h(
    "section.panel",
    { id: "key-view" },
    h("h2", h("span.kind", kind), " ", key),
    view.tracked === false || windows.length === 0
      ? message("info", "Not tracked now: no event of this key is inside any rule's window.")
      : table(["Rule", "Measure / window", "Share of threshold", "Value", "Threshold", "%", "Threshold from", "Response"], windowRows(windows), "windows"),
    view.answered_by ? h("p.muted", `Answered by ${view.answered_by}, the instance holding this key's partition.`) : null,
    h("p", h("a", { href: `#/incidents?key=${encodeURIComponent(key)}` }, "Incidents of this key")),
  );
}

export function keysPage(main, kind, key) {
  kind = KINDS.includes(kind) ? kind : "account";
  const kindSelect = h("select", { name: "kind", id: "key-kind" }, KINDS.map((k) => h("option", { value: k, selected: k === kind }, k)));
  const keyInput = h("input", { type: "search", name: "key", id: "key-input", value: key || "", placeholder: "an account, org, user id or IP", required: true });
  const result = h("div", { id: "key-result" });
  const closest = h("div", { id: "closest" }, h("p.muted", "Loading…"));
  fill(
    main,
    h("h1", "Keys"),
    h(
      "form.lookup",
      {
        onsubmit: (e) => {
          e.preventDefault();
          const k = keyInput.value.trim();
          if (k) location.hash = `#/keys/${kindSelect.value}/${encodeURIComponent(k)}`;
        },
      },
      h("label", "Kind", kindSelect),
      h("label", "Key", keyInput),
      h("button", { type: "submit" }, "Look up"),
    ),
    result,
    h("section.panel", h("h2", "Closest to a threshold now"), closest),
  );
  if (key) {
    fill(result, h("p.muted", "Loading…"));
    keyView(kind, key)
      .then((v) => fill(result, v))
      .catch((e) => fill(result, message("error", `Could not look up ${kind} ${key}: ${e.message}`)));
  }
  const loadClosest = () =>
    getJson("/v1/keys/closest?limit=20")
      .then((c) => {
        const keys = c.keys || [];
        fill(
          closest,
          keys.length
            ? table(
                ["Key", "Rule", "Share of threshold", "Value", "Threshold", "%", "Threshold from"],
                keys.map((k) =>
                  h(
                    "tr",
                    h("td.key", h("span.kind", k.key_kind), " ", h("a", { href: keyHref(k.key_kind, k.key) }, k.key)),
                    h("td", k.rule),
                    h("td.bar-cell", shareBar(k.value, k.threshold)),
                    h("td.num", fmtNumber(k.value)),
                    h("td.num", fmtNumber(k.threshold)),
                    h("td.num", typeof k.share === "number" ? `${Math.round(k.share * 100)} %` : percent(k.value, k.threshold)),
                    h("td", k.threshold_source),
                  ),
                ),
                "closest",
              )
            : message("info", "No key is being counted right now."),
        );
      })
      .catch((e) => fill(closest, message("error", `Unavailable: ${e.message}`)));
  loadClosest();
  const timer = setInterval(loadClosest, 15_000);
  return () => clearInterval(timer);
}

function segmentsText(segments) {
  const entries = Object.entries(segments || {});
  return entries.length ? entries.map(([s, t]) => `${s}: ${fmtNumber(t)}`).join(" · ") : "–";
}

export function rulesPage(main) {
  const rules = h("div", { id: "rules" }, h("p.muted", "Loading…"));
  const config = h("div", { id: "config" }, h("p.muted", "Loading…"));
  fill(main, h("h1", "Rules"), rules, h("section.panel", h("h2", "Configuration"), config));
  getJson("/v1/rules")
    .then((r) =>
      fill(
        rules,
        r.dry_run ? message("warn", "Dry run is on for every rule: nothing is suspended, decisions say “would suspend”.") : null,
        table(
          ["Rule", "Counts", "Window", "Threshold", "By segment", "Per vacancy", "Response", "Severity", "Dry run", "Alerts"],
          (r.rules || []).map((rule) =>
            h(
              "tr",
              { dataset: { rule: rule.name } },
              h("td", h("strong", rule.name), rule.description ? h("div.muted", rule.description) : null),
              h("td", `${rule.measure} of ${(rule.actions || []).join(", ") || "any action"} by ${rule.group_by}`),
              h("td", rule.window),
              h("td.num", fmtNumber(rule.threshold), rule.baseline ? h("div.muted", `baseline: ${rule.baseline.statistic} × ${rule.baseline.factor} of ${rule.baseline.history_days} days`) : null),
              h("td", segmentsText(rule.segments)),
              h("td.num", rule.per_vacancy ? fmtNumber(rule.per_vacancy) : "–"),
              h("td", badge(rule.response === "suspend" ? "suspend" : "alert", rule.response)),
              h("td", badge(`sev-${rule.severity}`, rule.severity)),
              h("td", rule.dry_run ? badge("dry", "dry run") : "no"),
              h("td.num", rule.alerts_total === undefined ? "–" : fmtNumber(rule.alerts_total)),
            ),
          ),
          "rules",
        ),
        h("p.muted", "Alerts: decided since this process started (cvguard_alerts_total)."),
      ),
    )
    .catch((e) => fill(rules, message("error", `Could not read the rules: ${e.message}`)));
  getJson("/v1/config")
    .then((c) =>
      fill(
        config,
        facts([
          ["version", h("code", c.version)],
          ["file", c.source],
          ["loaded", `${fmtTime(c.loaded_at)} (${fmtAgo(c.loaded_at)})`],
        ]),
        h("h3", "Reloads"),
        (c.reloads || []).length
          ? table(
              ["At (UTC)", "Trigger", "Result", "Problems"],
              c.reloads
                .slice()
                .reverse()
                .map((r) =>
                  h(
                    "tr",
                    h("td.nowrap", fmtTime(r.at)),
                    h("td", r.trigger),
                    h("td", badge(r.result === "success" ? "ok" : "bad", r.result)),
                    h("td", (r.problems || []).length ? h("ul.problems", r.problems.map((p) => h("li", h("code", p)))) : "–"),
                  ),
                ),
              "reloads",
            )
          : h("p.muted", "No reload since start."),
      ),
    )
    .catch((e) => fill(config, message("error", `Unavailable: ${e.message}`)));
}

/** GET /readyz: 200 with its checks, or a 503 problem with them and why. */
async function readiness() {
  try {
    const r = await request("/readyz");
    return { ready: true, body: await r.json() };
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 503) throw e;
    return { ready: false, body: { detail: e.message } };
  }
}

function dot(ok) {
  return h(`span.dot.${ok ? "green" : "red"}`, { title: ok ? "ok" : "needs attention" });
}

function lagText(seconds) {
  return typeof seconds === "number" ? fmtDuration(seconds * 1000) : "–";
}

export function healthPage(main) {
  const ready = h("div", { id: "readiness" });
  const alarms = h("div", { id: "alarms" });
  const sources = h("div", { id: "sources" });
  const rate = h("div");
  fill(
    main,
    h("h1", "Health"),
    h("div.grid2", h("section.panel", h("h2", "Readiness"), ready, rate), h("section.panel", h("h2", "Alarms"), alarms)),
    h("section.panel", h("h2", "Sources: watermark and event-time lag"), sources),
  );
  const load = async () => {
    try {
      const r = await readiness();
      const checks = Object.entries(r.body).filter(([k]) => !["type", "title", "status", "detail", "error"].includes(k));
      fill(
        ready,
        h("p.big", dot(r.ready), r.ready ? " Ready: detecting." : " Not ready."),
        r.body.detail ? h("p", r.body.detail) : null,
        facts(checks.map(([k, v]) => [k.replace(/_/g, " "), String(v)])),
      );
    } catch (e) {
      fill(ready, message("error", `No answer: ${e.message}`));
    }
    try {
      const hl = await getJson("/v1/health");
      const list = Array.isArray(hl.alarms) ? hl.alarms : [];
      const firing = list.filter((a) => a.firing);
      fill(
        alarms,
        h("p.big", dot(firing.length === 0), firing.length ? ` ${firing.length} firing` : " None firing"),
        list.length
          ? table(
              ["", "Alarm", "State", "Since", "Detail"],
              list.map((a) =>
                h(
                  `tr.${a.firing ? "firing" : "quiet"}`,
                  { dataset: { alarm: a.alarm } },
                  h("td", dot(!a.firing)),
                  h("td", a.alarm),
                  h("td", a.firing ? "firing" : "ok"),
                  h("td.nowrap", a.since ? `${fmtTime(a.since)} (${fmtAgo(a.since)})` : "–"),
                  h("td", a.detail || ""),
                ),
              ),
              "alarms",
            )
          : null,
      );
      fill(rate, h("p", "Events accepted in the last minute: ", h("strong", fmtNumber(hl.events_accepted_last_minute))));
      const src = (Array.isArray(hl.sources) ? hl.sources : []).slice().sort((a, b) => String(a.source).localeCompare(String(b.source), "en", { numeric: true }));
      fill(
        sources,
        src.length
          ? table(
              ["", "Source", "Watermark (UTC)", "Event-time lag", "Last event", "Lag"],
              src.map((s) => {
                // Red when an alarm names this source (a stalled watermark, lag, silence).
                const stale = firing.some((a) => a.source === s.source || (a.detail || "").includes(s.source));
                return h(
                  "tr",
                  h("td", dot(!stale)),
                  h("td", s.source),
                  h("td.nowrap", fmtTime(s.watermark)),
                  h("td.num", lagText(s.event_time_lag_seconds)),
                  h("td.nowrap", s.last_event_at ? `${fmtTime(s.last_event_at)} (${fmtAgo(s.last_event_at)})` : "–"),
                  h("td.num", s.lag === undefined || s.lag === null ? "–" : fmtNumber(s.lag)),
                );
              }),
              "sources",
            )
          : message("info", "No source has reported yet."),
      );
    } catch (e) {
      fill(alarms, message("error", `Detector health unavailable: ${e.message}`));
      fill(sources);
    }
  };
  load();
  const timer = setInterval(load, 5000);
  return () => clearInterval(timer);
}
