//! `/metrics` at start-up against docs/METRICS.md (#15): every documented series is there
//! before the first event, at zero, with the label values the page lists; and every
//! `cvguard_` series exported is documented.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cvguard_tests::service::{free_port, http, Service};

/// A documented metric: its names and, per label, the values the page enumerates (empty
/// when it names the label without values).
struct Documented {
    names: Vec<String>,
    labels: BTreeMap<String, Vec<String>>,
    later: bool,
}

fn documented() -> Vec<Documented> {
    let page = std::fs::read_to_string(cvguard_tests::root().join("docs/METRICS.md")).unwrap();
    let ticked = |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_string).collect() };
    page.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            // | metric | type | labels | meaning |
            // `a`, `b`; `c` = x, y: labels a and b, and c with its values x and y.
            let labels = cells[3]
                .split(';')
                .flat_map(|part| match part.split_once('=') {
                    Some((name, values)) => {
                        let values = values
                            .split(',')
                            .map(|v| v.trim().to_string())
                            .filter(|v| !v.is_empty());
                        ticked(name)
                            .into_iter()
                            .map(|n| (n, values.clone().collect()))
                            .collect::<Vec<_>>()
                    }
                    None => ticked(part).into_iter().map(|n| (n, Vec::new())).collect(),
                })
                .collect();
            Documented {
                names: ticked(cells[1]),
                labels,
                later: cells[4].contains("Kafka source only")
                    || cells[4].contains("once the partition or part has taken in an event"),
            }
        })
        .collect()
}

/// Series of the exposition: name (histograms by their base name) to the label sets seen.
fn exported(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, _value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| text.contains(&format!("# TYPE {b} histogram")))
            .unwrap_or(name);
        let labels = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once("=\""))
            .map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string()))
            .collect();
        out.entry(base.to_string()).or_default().push(labels);
    }
    out
}

#[test]
fn every_documented_series_is_exported_at_zero_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let shipped = std::fs::read_to_string(cvguard_tests::root().join("config/cvguard.toml")).unwrap();
    let rules = &shipped[shipped.find("[allowlist]").unwrap()..];
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n[state]\ndir = \"{d}/state\"\n[store]\nurl = \"sqlite://{d}/cvguard.db\"\n\
             [[sinks]]\nkind = \"jsonl\"\npath = \"{d}/alerts.jsonl\"\n{rules}",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let mut svc = Service::start(&cfg, port, &dir.path().join("serve.log"));
    svc.wait_ready(Duration::from_secs(30));
    let (code, text) = http(port, "GET", "/metrics", b"").unwrap();
    assert_eq!(code, 200);
    let series = exported(&text);

    let docs = documented();
    assert!(docs.len() >= 20, "the page's table was not read: {} rows", docs.len());
    let mut missing = Vec::new();
    for d in docs.iter().filter(|d| !d.later) {
        for name in &d.names {
            let Some(seen) = series.get(name) else {
                missing.push(format!("{name}: not exported"));
                continue;
            };
            for (label, values) in &d.labels {
                let have: BTreeSet<&str> = seen.iter().filter_map(|s| s.get(label).map(String::as_str)).collect();
                if have.is_empty() {
                    missing.push(format!("{name}: no `{label}` label"));
                }
                for v in values {
                    if !have.contains(v.as_str()) {
                        missing.push(format!("{name}{{{label}=\"{v}\"}}: not exported"));
                    }
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}\n---\n{text}", missing.join("\n"));

    // One series per rule for what rules feed: every shipped rule's alerts and time to detect.
    let config = cvguard_tests::cvguard_ok(&["check-config", cfg.to_str().unwrap()]);
    let listed = String::from_utf8_lossy(&config.stdout).to_string();
    let rule_names: Vec<&str> = listed
        .lines()
        .skip_while(|l| !l.starts_with("rule "))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(rule_names.len() >= 10, "{listed}");
    for rule in &rule_names {
        for name in ["cvguard_alerts_total", "cvguard_time_to_detect_seconds"] {
            assert!(
                series[name]
                    .iter()
                    .any(|s| s.get("rule").map(String::as_str) == Some(*rule)),
                "{name} has no series for rule {rule}"
            );
        }
    }
    // Nothing counted yet: every counter of ours is at zero.
    for line in text
        .lines()
        .filter(|l| l.starts_with("cvguard_") && l.contains("_total"))
    {
        assert!(line.ends_with(" 0"), "{line}");
    }

    // And the page documents every cvguard series exported.
    let named: BTreeSet<&String> = docs.iter().flat_map(|d| &d.names).collect();
    let undocumented: Vec<&String> = series
        .keys()
        .filter(|n| n.starts_with("cvguard_") && !named.contains(n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/METRICS.md: {undocumented:?}"
    );
    assert!(svc.sigterm(Duration::from_secs(30)).success());
}
