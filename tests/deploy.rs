//! The deployment assets are real: the alerting rules pass promtool, every metric the
//! dashboard and the rules use is one a running cvguard exports (or documents), and the
//! Kubernetes config passes check-config.

use std::collections::BTreeSet;
use std::time::Duration;

use cvguard_tests::kafka::harvest_batch;
use cvguard_tests::service::{free_port, http, Service};
use cvguard_tests::{cvguard_ok, root};

fn metric_names(text: &str) -> BTreeSet<String> {
    // Identifiers that start with cvguard_ in PromQL expressions.
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("cvguard_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].trim_end_matches("_bucket").to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn alerting_rules_pass_promtool() {
    let rules = root().join("deploy/prometheus/cvguard-alerts.yml");
    match std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
    {
        Err(_) => {
            eprintln!("SKIPPED: promtool not installed (scripts/prometheus-tools.sh installs Debian's prometheus)")
        }
        Ok(out) => assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn dashboards_and_rules_use_only_metrics_cvguard_exports() {
    let dashboard = std::fs::read_to_string(root().join("deploy/grafana/cvguard-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(parsed["panels"].as_array().unwrap().len() >= 8);
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/cvguard-alerts.yml")).unwrap();
    let used: BTreeSet<String> = metric_names(&dashboard).union(&metric_names(&rules)).cloned().collect();

    // A running service, after some traffic, is the authority on what exists.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let shipped = std::fs::read_to_string(root().join("config/cvguard.toml")).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n[state]\ndir = \"{d}/s\"\n[store]\nurl = \"sqlite://{d}/db\"\n[[sinks]]\nkind = \"jsonl\"\npath = \"{d}/a.jsonl\"\n{}",
            &shipped[shipped.find("[allowlist]").unwrap()..],
            d = dir.path().display()
        ),
    )
    .unwrap();
    let mut svc = Service::start(&cfg, port, &dir.path().join("log"));
    svc.wait_ready(Duration::from_secs(30));
    let body: String = (0..21).map(|i| harvest_batch("h", i) + "\n").collect::<String>() + "{bad\n";
    assert_eq!(http(port, "POST", "/v1/events", body.as_bytes()).unwrap().0, 202);
    std::thread::sleep(Duration::from_secs(1));
    let (_, scraped) = http(port, "GET", "/metrics", b"").unwrap();
    let exported = metric_names(&scraped);
    let documented = metric_names(&std::fs::read_to_string(root().join("docs/METRICS.md")).unwrap());
    for name in &used {
        let base = name.trim_end_matches("_count").trim_end_matches("_sum");
        assert!(
            exported.contains(name.as_str()) || exported.contains(base) || documented.contains(name.as_str()),
            "{name} is used by deploy/ but neither exported nor documented"
        );
    }
    assert!(used.len() >= 10, "{used:?}");
}

#[test]
fn the_kubernetes_config_passes_check_config() {
    let out = cvguard_ok(&["check-config", "deploy/k8s/cvguard.toml"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}
