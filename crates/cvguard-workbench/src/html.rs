//! The HTML reports: one self-contained file each (inline style and SVG; no script, no
//! network), drawn from the very values `-o json` serialises. Numbers a test compares with
//! the JSON carry `data-k` with their JSON path.

use std::fmt::Write;

use cvguard_core::{AlertAction, Measure};

use crate::backtest::{BacktestResult, ConfigResult, Incident, RuleFigures};
use crate::svg::{self, esc};
use crate::tune::TuneResult;

/// Incident charts drawn at most (the JSON lists them all).
const MAX_INCIDENT_CHARTS: usize = 40;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}\
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}figure{margin:8px 0 20px}\
figcaption{font-size:12px;color:#555}h2{margin-top:28px;border-bottom:1px solid #ddd}.plus{color:#1a7f37}.minus{color:#b42318}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\"><title>{}</title><style>{STYLE}</style></head><body><h1>{}</h1>{body}</body></html>\n",
        esc(title),
        esc(title)
    )
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |x| x.to_string())
}

fn share(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.2}"))
}

fn figures_row(s: &mut String, path: &str, f: &RuleFigures) {
    let sc = f.score.as_ref();
    let _ = write!(
        s,
        "<tr><td>{}</td><td data-k=\"{path}.alerts\">{}</td><td data-k=\"{path}.incidents\">{}</td><td data-k=\"{path}.keys_hit\">{}</td><td data-k=\"{path}.suspensions\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        esc(&f.rule),
        f.alerts,
        f.incidents,
        f.keys_hit,
        f.suspensions,
        f.suspension_limit,
        f.cooldown,
        f.dry_run,
        f.allowlisted,
        opt(f.median_time_to_decide_ms.map(cvguard_core::timefmt::format_duration_ms)),
        opt(f.median_cvs_exposed),
        share(sc.and_then(|s| s.precision)),
        share(sc.and_then(|s| s.recall)),
    );
}

fn config_table(s: &mut String, name: &str, r: &ConfigResult) {
    let _ = write!(
        s,
        "<h2>{name}: {}</h2><p>{} events read, {} accepted, {} .. {}; suspend webhook {}, max_per_hour {}, cooldown {}.</p>\
         <table><tr><th>rule</th><th>alerts</th><th>incidents</th><th>keys hit</th><th>suspensions</th><th>limited</th><th>cooldown</th><th>dry run</th><th>allowlisted</th><th>median time to decide</th><th>median CVs exposed</th><th>precision</th><th>recall</th></tr>",
        esc(&r.config),
        r.events.read,
        r.events.accepted,
        esc(r.events.first_event.as_deref().unwrap_or("-")),
        esc(r.events.last_event.as_deref().unwrap_or("-")),
        if r.webhook { "configured" } else { "not configured (suspensions recorded, never sent)" },
        r.max_per_hour,
        cvguard_core::timefmt::format_duration_ms(r.cooldown_ms),
    );
    for (i, f) in r.rules.iter().enumerate() {
        figures_row(s, &format!("{name}.rules.{i}"), f);
    }
    figures_row(s, &format!("{name}.total"), &r.total);
    s.push_str("</table>");
}

/// The backtest's report: both configs' tables, the difference, alerts per day per rule,
/// and each incident's curve of distinct CVs with its threshold and decision.
pub fn backtest_report(r: &BacktestResult) -> String {
    let mut s = String::new();
    config_table(&mut s, "candidate", &r.candidate);
    if let Some(b) = &r.baseline {
        config_table(&mut s, "baseline", b);
    }
    if let Some(d) = &r.diff {
        let _ = write!(
            s,
            "<h2>Candidate against current</h2><table><tr><th>change</th><th>(rule, key) pairs</th></tr>\
             <tr><td>newly hit</td><td data-k=\"diff.newly_hit.length\">{}</td></tr><tr><td>no longer hit</td><td data-k=\"diff.no_longer_hit.length\">{}</td></tr>\
             <tr><td>decided earlier</td><td data-k=\"diff.decided_earlier.length\">{}</td></tr><tr><td>decided later</td><td data-k=\"diff.decided_later.length\">{}</td></tr>\
             <tr><td>unchanged</td><td>{}</td></tr></table><table><tr><th>rule</th><th>key</th><th>what</th><th>when / by how much</th><th>CVs</th></tr>",
            d.newly_hit.len(),
            d.no_longer_hit.len(),
            d.decided_earlier.len(),
            d.decided_later.len(),
            d.unchanged
        );
        for (h, sign) in d
            .newly_hit
            .iter()
            .map(|h| (h, "+ newly hit"))
            .chain(d.no_longer_hit.iter().map(|h| (h, "- no longer hit")))
        {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}:{}</td><td class=\"{}\">{sign} ({})</td><td>{}</td><td>{}</td></tr>",
                esc(&h.rule),
                h.key_kind.as_str(),
                esc(&h.key),
                if sign.starts_with('+') { "plus" } else { "minus" },
                h.action.as_str(),
                esc(&h.decided_at),
                opt(h.cvs_exposed)
            );
        }
        for sh in d.decided_earlier.iter().chain(&d.decided_later) {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}:{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&sh.rule),
                sh.key_kind.as_str(),
                esc(&sh.key),
                if sh.earlier_by_ms > 0 {
                    "decided earlier"
                } else {
                    "decided later"
                },
                cvguard_core::timefmt::format_duration_ms(sh.earlier_by_ms.abs()),
                sh.cvs_change().unwrap_or_else(|| "-".into()),
            );
        }
        s.push_str("</table>");
    }
    s.push_str("<h2>Alerts per day (candidate)</h2>");
    for (rule, days) in &r.candidate.alerts_per_day {
        let days: Vec<(String, u64)> = days.iter().map(|(d, n)| (d.clone(), *n)).collect();
        let _ = write!(
            s,
            "<figure>{}<figcaption>{}</figcaption></figure>",
            svg::per_day(&format!("{rule}: alerts per day"), &days),
            esc(rule)
        );
    }
    let shown = most_important(&r.candidate, r.labelled, MAX_INCIDENT_CHARTS);
    let total = r.candidate.incidents.len();
    let _ = write!(
        s,
        "<h2>Incidents (candidate): distinct CVs over time</h2><p>{total} incidents{}. A rule that counts something other than distinct CVs gets no chart: its value and threshold are not CVs.</p>",
        if total > shown.len() {
            format!(
                "; the {} most important drawn (suspensions first, then {}the most CVs exposed), {} not drawn",
                shown.len(),
                if r.labelled { "labelled attacks, then " } else { "" },
                total - shown.len()
            )
        } else {
            String::new()
        }
    );
    for i in shown {
        incident(&mut s, i, &r.candidate.incidents[i]);
    }
    page("cvguard backtest", &s)
}

/// The indices of at most `max` incidents, the most important first: suspensions, then
/// (with labels) the keys that are labelled attacks, then the most CVs exposed; ties by time.
fn most_important(r: &ConfigResult, labelled: bool, max: usize) -> Vec<usize> {
    // A key hit is a labelled attack unless the total's score lists it as a false positive.
    let false_positives: std::collections::HashSet<&str> = r
        .total
        .score
        .iter()
        .flat_map(|s| s.false_positive_keys.iter().map(String::as_str))
        .collect();
    let rank = |inc: &Incident| {
        let attack = labelled && !false_positives.contains(format!("{}:{}", inc.key_kind.as_str(), inc.key).as_str());
        (
            inc.action != AlertAction::Suspend,
            !attack,
            std::cmp::Reverse(inc.cvs_exposed.unwrap_or(0)),
            inc.decided_at_ms,
        )
    };
    let mut order: Vec<(_, usize)> = r.incidents.iter().enumerate().map(|(i, inc)| (rank(inc), i)).collect();
    order.sort_unstable();
    order.into_iter().take(max).map(|(_, i)| i).collect()
}

/// One incident: its CV curve against the threshold when its rule counts distinct CVs;
/// otherwise one line with what the rule counts and its value against the threshold, as
/// the SOC console says it.
fn incident(s: &mut String, i: usize, inc: &Incident) {
    let p = format!("candidate.incidents.{i}");
    let caption = format!(
        "{} {}:{} decided <span data-k=\"{p}.action\">{}</span> at {} ({}), value <span data-k=\"{p}.value\">{}</span> of threshold <span data-k=\"{p}.threshold\">{}</span>, <span data-k=\"{p}.cvs_exposed\">{}</span> CVs exposed, {} after the window's first event",
        esc(&inc.rule),
        inc.key_kind.as_str(),
        esc(&inc.key),
        inc.action.as_str(),
        esc(&inc.decided_at),
        serde_json::to_value(inc.reason).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        inc.value,
        inc.threshold,
        opt(inc.cvs_exposed),
        cvguard_core::timefmt::format_duration_ms(inc.time_to_decide_ms),
    );
    if inc.measure != Measure::DistinctCvs || inc.series.is_empty() {
        let _ = write!(
            s,
            "<p class=\"no-chart\">{caption}. No chart: this rule counts <span data-k=\"{p}.measure\">{}</span> in <span data-k=\"{p}.window\">{}</span>, not distinct CVs.</p>",
            inc.measure.as_str(),
            esc(&inc.window),
        );
        return;
    }
    let decided_cvs = inc
        .series
        .iter()
        .rev()
        .find(|p| p.0 <= inc.decided_at_ms)
        .map_or(inc.value, |p| p.1);
    let _ = write!(
        s,
        "<figure>{}<figcaption>{caption}</figcaption></figure>",
        svg::step_curve(
            &format!("{} {}", inc.rule, inc.key),
            &inc.series,
            inc.threshold,
            (inc.decided_at_ms, decided_cvs)
        ),
    );
}

/// The tune report: per rule and segment the peaks' distribution with the current and
/// proposed thresholds, and the proposal as TOML.
pub fn tune_report(r: &TuneResult) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<p>{} events over {:.1} days ({} .. {}); {} keys excluded from the fit.</p>\
         <table><tr><th>rule</th><th>segment</th><th>keys</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>current</th><th>proposed</th><th>hit now</th><th>hit by proposal</th></tr>",
        r.events,
        r.history_days,
        esc(r.first_event.as_deref().unwrap_or("-")),
        esc(r.last_event.as_deref().unwrap_or("-")),
        r.excluded_keys
    );
    for (i, g) in r.groups.iter().enumerate() {
        let p = format!("groups.{i}");
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td data-k=\"{p}.peaks.n\">{}</td><td data-k=\"{p}.peaks.p50\">{}</td><td data-k=\"{p}.peaks.p90\">{}</td><td data-k=\"{p}.peaks.p99\">{}</td><td data-k=\"{p}.peaks.p999\">{}</td><td data-k=\"{p}.peaks.max\">{}</td><td data-k=\"{p}.current\">{}</td><td data-k=\"{p}.proposed\">{}</td><td>{}</td><td data-k=\"{p}.hit_by_proposal.length\">{}</td></tr>",
            esc(&g.rule),
            esc(&g.segment),
            g.peaks.n,
            opt(g.peaks.p50),
            opt(g.peaks.p90),
            opt(g.peaks.p99),
            opt(g.peaks.p999),
            opt(g.peaks.max),
            g.current,
            g.proposed,
            g.hit_now,
            g.hit_by_proposal.len()
        );
    }
    s.push_str("</table><h2>Peak values per rule and segment</h2>");
    for (i, g) in r.groups.iter().enumerate() {
        let p = format!("groups.{i}");
        let lines = [(g.current, "current", "#c0392b"), (g.proposed, "proposed", "#1a7f37")];
        let hits: Vec<String> = g
            .hit_by_proposal
            .iter()
            .rev()
            .take(12)
            .map(|h| {
                format!(
                    "{} ({}{})",
                    esc(&h.key),
                    h.peak,
                    if h.excluded { ", excluded" } else { "" }
                )
            })
            .collect();
        let factor = match (g.current_factor, g.proposed_factor) {
            (Some(c), Some(p)) => format!(" Baseline factor {c} -> {p}."),
            _ => String::new(),
        };
        let _ = write!(
            s,
            "<figure>{}<figcaption>{} / {} ({} window): {}.{factor} The histogram draws every key's peak \
             (<span data-k=\"{p}.all_peaks.length\">{}</span> keys); the proposal is fitted on \
             <span data-k=\"{p}.peaks.n\">{}</span> of them (not excluded, not allowed their peak by their \
             vacancies). Would hit: {}</figcaption></figure>",
            svg::peak_histogram(&format!("{} {}", g.rule, g.segment), &g.all_peaks, &lines),
            esc(&g.rule),
            esc(&g.segment),
            esc(&g.window),
            esc(&g.why),
            g.all_peaks.len(),
            g.peaks.n,
            if hits.is_empty() {
                "nothing".to_string()
            } else {
                hits.join(", ")
            }
        );
    }
    let _ = write!(s, "<h2>The proposal</h2><pre>{}</pre>", esc(&r.toml));
    page("cvguard tune", &s)
}

#[cfg(test)]
mod tests {
    use cvguard_core::{AlertAction, AlertReason, KeyKind};

    use super::*;
    use crate::backtest::Incident;

    pub(crate) fn incident(rule: &str, measure: Measure, window: &str, value: u64, threshold: u64) -> Incident {
        let series = if measure == Measure::DistinctCvs {
            vec![(1_000, value / 2), (2_000, value)]
        } else {
            Vec::new()
        };
        Incident {
            id: format!("{rule}-1"),
            rule: rule.into(),
            key_kind: KeyKind::AccountId,
            key: "acct-1".into(),
            decided_at: "2025-01-01T00:00:02.000Z".into(),
            decided_at_ms: 2_000,
            action: AlertAction::Alert,
            reason: AlertReason::RuleResponse,
            measure,
            window: window.into(),
            suspended: Vec::new(),
            already_suspended: Vec::new(),
            value,
            threshold,
            first_seen: "2025-01-01T00:00:00.000Z".into(),
            time_to_decide_ms: 2_000,
            cvs_exposed: Some(148_000),
            joined: 0,
            series,
        }
    }

    pub(crate) fn result(incidents: Vec<Incident>) -> BacktestResult {
        let mut r = BacktestResult::default();
        r.candidate.incidents = incidents;
        r
    }

    #[test]
    fn a_rule_that_does_not_count_cvs_gets_no_cv_chart_against_its_threshold() {
        let html = backtest_report(&result(vec![
            incident("ips-per-account-1h", Measure::DistinctIps, "1h", 31, 30),
            incident("search-scraping-1h", Measure::Events, "1h", 1201, 1200),
            incident("mass-harvest-24h", Measure::DistinctCvs, "24h", 4001, 4000),
        ]));
        let charts: Vec<&str> = html.split("<svg").skip(1).collect();
        assert_eq!(charts.len(), 1, "only the distinct-CV rule is drawn: {html}");
        assert!(charts[0].contains("threshold 4000"), "{}", charts[0]);
        for (i, rule, measure, threshold) in [
            (0, "ips-per-account-1h", "distinct_ips", 30),
            (1, "search-scraping-1h", "events", 1200),
        ] {
            assert!(
                !charts.iter().any(|c| c.contains(&format!("threshold {threshold}<"))),
                "{rule}'s threshold on a CV chart"
            );
            let line = html
                .split("<p class=\"no-chart\">")
                .find(|p| p.starts_with(rule))
                .unwrap_or_else(|| panic!("no line for {rule}: {html}"));
            let k = format!("candidate.incidents.{i}");
            let counts = format!(
                "counts <span data-k=\"{k}.measure\">{measure}</span> in <span data-k=\"{k}.window\">1h</span>"
            );
            assert!(line.contains(&counts), "{line}");
            assert!(line.contains(&format!(">{threshold}</span>")), "{line}");
        }
    }

    #[test]
    fn the_charts_go_to_suspensions_then_labelled_attacks_then_the_most_cvs_exposed() {
        let mut incidents: Vec<Incident> = (0..45)
            .map(|n| {
                let mut inc = incident("mass-harvest-24h", Measure::DistinctCvs, "24h", 4001, 4000);
                inc.key = format!("employer-{n:02}");
                inc.decided_at_ms = 1_000 * n;
                inc.cvs_exposed = Some(4001);
                inc
            })
            .collect();
        incidents[44].action = AlertAction::Suspend;
        incidents[43].cvs_exposed = Some(90_000);
        let mut r = result(incidents);
        r.labelled = true;
        // Every key but employer-42 is a false positive: employer-42 is a labelled attack.
        r.candidate.total.score = Some(crate::backtest::Score {
            false_positive_keys: (0..45)
                .filter(|&n| n != 42)
                .map(|n| format!("account_id:employer-{n:02}"))
                .collect(),
            ..Default::default()
        });
        let html = backtest_report(&r);
        let drawn = |key: &str| html.contains(&format!("<title>mass-harvest-24h {key}</title>"));
        assert_eq!(html.matches("<svg").count(), MAX_INCIDENT_CHARTS);
        for key in ["employer-44", "employer-42", "employer-43", "employer-00"] {
            assert!(drawn(key), "{key} not drawn");
        }
        assert!(!drawn("employer-39"), "the latest of the ordinary ones make room");
        assert!(html.contains("5 not drawn"), "{html}");
        let first = |key: &str| html.find(&format!("<title>mass-harvest-24h {key}</title>")).unwrap();
        assert!(first("employer-44") < first("employer-42") && first("employer-42") < first("employer-43"));
    }

    #[test]
    fn a_later_decision_with_more_cvs_says_more_as_the_terminal_does() {
        let mut r = result(Vec::new());
        let shift = |earlier_by_ms: i64, fewer_cvs: i64| crate::backtest::Shift {
            rule: "mass-harvest-24h".into(),
            key_kind: KeyKind::AccountId,
            key: "harvester-1".into(),
            candidate_at: "2025-01-01T01:00:00.000Z".into(),
            baseline_at: "2025-01-01T00:00:00.000Z".into(),
            earlier_by_ms,
            candidate_cvs: None,
            baseline_cvs: None,
            fewer_cvs: Some(fewer_cvs),
        };
        r.diff = Some(crate::backtest::Diff {
            decided_earlier: vec![shift(60_000, 1500)],
            decided_later: vec![shift(-3_600_000, -1940)],
            ..Default::default()
        });
        let html = backtest_report(&r);
        assert!(html.contains("<td>1940 more CVs exposed</td>"), "{html}");
        assert!(html.contains("<td>1500 fewer CVs exposed</td>"), "{html}");
        assert!(!html.contains("-1940"), "{html}");
    }
}
