//! `cvguard backtest`: the service's rails in event time, matched against the real service
//! on the same events; and the difference of two configs, matched against per-key values
//! worked out here from the events themselves.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cvguard_tests::receiver::Receiver;
use cvguard_tests::service::{free_port, http, Service};
use cvguard_tests::{cvguard, cvguard_ok, list_incidents};

const SECRET: &str = "test-secret-backtest";
const WAIT: Duration = Duration::from_secs(30);

fn view(ts: &str, account: &str, cv: &str) -> String {
    format!(r#"{{"ts":"{ts}","account_id":"{account}","action":"cv_view","cv_id":"{cv}"}}"#)
}

/// `cvguard backtest ARGS -o json`, parsed.
fn backtest(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["backtest"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    json(&cvguard_ok(&all))
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// (rule, key, action, reason) of each incident, sorted.
fn decisions<'a>(incidents: impl Iterator<Item = &'a serde_json::Value>) -> Vec<(String, String, String, String)> {
    let mut v: Vec<_> = incidents
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap_or_default().to_string();
            (s("rule"), s("key"), s("action"), s("reason"))
        })
        .collect();
    v.sort();
    v
}

/// Five accounts cross a suspend rule within seconds under `max_per_hour = 2`; the
/// first is then marked a false positive (the service unsuspends it and starts its
/// cooldown) and crosses again two hours later. The service and the backtest (given that
/// unsuspension) must suspend the same two accounts, limit the same three, raise one
/// limit alert, and turn the second crossing into a cooldown alert.
#[test]
fn the_backtests_blast_radius_limit_and_cooldown_are_what_the_service_does_on_the_same_events() {
    let receiver = Receiver::start(0, SECRET, vec![]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = dir.path().display();
    let config = dir.path().join("cvguard.toml");
    std::fs::write(
        &config,
        format!(
            r#"[http]
listen = "127.0.0.1:{port}"
[state]
dir = "{d}/state"
[store]
url = "sqlite://{d}/cvguard.db"
[suspend]
url = "{url}"
secret_env = "CVGUARD_TEST_SUSPEND_SECRET"
timeout = "1s"
max_attempts = 6
max_per_hour = 2
cooldown = "24h"
[[sinks]]
kind = "jsonl"
path = "{d}/alerts.jsonl"
[[rules]]
name = "everyone"
actions = ["cv_view"]
group_by = "account_id"
measure = "events"
window = "1h"
threshold = 1
response = "suspend"
severity = "critical"
"#,
            url = receiver.url("/s")
        ),
    )
    .unwrap();
    let first: Vec<String> = (0..5)
        .map(|i| {
            view(
                &format!("2024-05-04T06:00:0{i}Z"),
                &format!("acc-{i}"),
                &format!("cv-{i}"),
            )
        })
        .collect();
    let again = vec![view("2024-05-04T08:00:00Z", "acc-0", "cv-9")];

    let mut svc = Service::start_env(
        &config,
        port,
        &dir.path().join("serve.log"),
        &[("CVGUARD_TEST_SUSPEND_SECRET", SECRET)],
    );
    svc.wait_ready(WAIT);
    let post = |lines: &[String]| {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let (code, text) = http(port, "POST", "/v1/events", body.as_bytes()).unwrap();
        assert_eq!(code, 202, "{text}");
    };
    let wait_incidents = |n: usize| {
        for _ in 0..300 {
            if list_incidents(&config).len() >= n {
                return list_incidents(&config);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("fewer than {n} incidents: {:?}", list_incidents(&config));
    };
    // One request per event, as a platform sending each as it happens: the service's
    // parts decide a request's keys in parallel, and the limit is first come, first served.
    for line in &first {
        post(std::slice::from_ref(line));
    }
    let incidents = wait_incidents(5);
    receiver.wait_for(2, WAIT);
    let acc0 = incidents.iter().find(|i| i["key"] == "acc-0").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cvguard_ok(&[
        "incidents",
        "set",
        &acc0,
        "false-positive",
        "--actor",
        "soc",
        "--config",
        config.to_str().unwrap(),
    ]);
    receiver.wait_for(3, WAIT); // the unsuspend call
    post(&again);
    let served = wait_incidents(6);
    svc.sigterm(WAIT);

    let suspended_by_service: BTreeSet<String> = receiver
        .calls()
        .iter()
        .filter(|c| c.body.contains("\"action\":\"suspend\""))
        .map(|c| c.json()["account_id"].as_str().unwrap().to_string())
        .collect();
    let limit_alerts = std::fs::read_to_string(dir.path().join("alerts.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"rule\":\"suspension-limit-reached\""))
        .count();

    // The backtest: the same config, the same events, the unsuspension between them.
    let history = dir.path().join("history.ndjson");
    std::fs::write(
        &history,
        first.iter().chain(&again).map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let unsuspends = dir.path().join("unsuspends.csv");
    std::fs::write(&unsuspends, "account_id,unsuspended_at\nacc-0,2024-05-04T07:00:00Z\n").unwrap();
    let result = backtest(&[
        "--config",
        config.to_str().unwrap(),
        "--input",
        history.to_str().unwrap(),
        "--unsuspends",
        unsuspends.to_str().unwrap(),
    ]);
    let c = &result["candidate"];
    let backtested = c["incidents"].as_array().unwrap();
    assert_eq!(decisions(backtested.iter()), decisions(served.iter()), "{result:#}");
    let suspended_by_backtest: BTreeSet<String> = backtested
        .iter()
        .flat_map(|i| i["suspended"].as_array().unwrap().iter())
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(suspended_by_backtest, suspended_by_service);
    assert_eq!(
        suspended_by_backtest,
        BTreeSet::from(["acc-0".to_string(), "acc-1".to_string()])
    );
    assert_eq!(c["limit_alerts"].as_u64().unwrap() as usize, limit_alerts);
    assert_eq!(limit_alerts, 1);
    let rule = &c["rules"][0];
    assert_eq!(
        (
            rule["alerts"].as_u64(),
            rule["suspensions"].as_u64(),
            rule["suspension_limit"].as_u64(),
            rule["cooldown"].as_u64()
        ),
        (Some(6), Some(2), Some(3), Some(1))
    );

    // Without the unsuspension, the second crossing joins the incident that is still open.
    let r = backtest(&[
        "--config",
        config.to_str().unwrap(),
        "--input",
        history.to_str().unwrap(),
    ]);
    assert_eq!(r["candidate"]["incidents"].as_array().unwrap().len(), 5);
    assert_eq!(r["candidate"]["rules"][0]["alerts"], 6);
}

/// Epoch seconds of `YYYY-MM-DDTHH:MM:SS(.mmm)Z`.
fn epoch_secs(ts: &str) -> i64 {
    let n = |a: usize, b: usize| ts[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19)
}

/// Each account's highest 24-hour distinct-CV value (views and downloads), counted here
/// from the events as docs/DETECTION.md defines it: a CV counts while its latest access
/// is inside the window, at whole seconds, read after each of the account's events.
fn peak_distinct_24h(events: &Path) -> HashMap<String, u64> {
    struct Key {
        queue: VecDeque<(i64, String)>,
        latest: HashMap<String, i64>,
        peak: u64,
    }
    let mut keys: HashMap<String, Key> = HashMap::new();
    let mut seen_ids = std::collections::HashSet::new();
    for line in std::fs::read_to_string(events).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let action = v["action"].as_str().unwrap();
        if action != "cv_view" && action != "cv_download" {
            continue;
        }
        let account = v["account_id"].as_str().unwrap().to_string();
        if let Some(id) = v["event_id"].as_str() {
            if !seen_ids.insert((account.clone(), id.to_string())) {
                continue; // a second delivery
            }
        }
        let now = epoch_secs(v["ts"].as_str().unwrap());
        let cvs: Vec<String> = match (&v["cv_ids"], &v["cv_id"]) {
            (serde_json::Value::Array(a), _) => a.iter().map(|c| c.as_str().unwrap().to_string()).collect(),
            (_, serde_json::Value::String(c)) => vec![c.clone()],
            _ => vec![],
        };
        let k = keys.entry(account).or_insert_with(|| Key {
            queue: VecDeque::new(),
            latest: HashMap::new(),
            peak: 0,
        });
        while k.queue.front().is_some_and(|(s, _)| *s <= now - 86_400) {
            let (s, cv) = k.queue.pop_front().unwrap();
            if k.latest.get(&cv) == Some(&s) {
                k.latest.remove(&cv);
            }
        }
        for cv in cvs {
            k.latest.insert(cv.clone(), now);
            k.queue.push_back((now, cv));
        }
        k.peak = k.peak.max(k.latest.len() as u64);
    }
    keys.into_iter().map(|(a, k)| (a, k.peak)).collect()
}

/// Per account: (segment, open vacancies) from the simulator's profile file.
fn profiles(path: &Path) -> HashMap<String, (String, u64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), (f[1].to_string(), f[3].parse().unwrap_or(0)))
        })
        .collect()
}

fn sim(dir: &Path) -> PathBuf {
    cvguard_tests::simulate_board(dir, &["--days", "8", "--employers", "150"])
}

/// Two configs that differ in the daily threshold for ordinary employers: the backtest's
/// difference lists exactly the accounts whose 24-hour peak lies between the two
/// effective thresholds, and no other rule's keys.
#[test]
fn a_lower_daily_threshold_newly_hits_exactly_the_accounts_whose_peak_lies_between_the_two() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path());
    let current = sim.join("cvguard.toml");
    let text = std::fs::read_to_string(&current).unwrap();
    let rule_at = text.find("name = \"mass-harvest-24h\"").unwrap();
    let threshold_at = rule_at + text[rule_at..].find("threshold = 4000\n").unwrap();
    let per_vacancy = 100u64; // the shipped rule's, checked below

    let peaks = peak_distinct_24h(&sim.join("events.ndjson"));
    let profiles = profiles(&sim.join("accounts.csv"));
    let effective = |threshold: u64, account: &str| -> Option<u64> {
        let (segment, vacancies) = profiles.get(account).cloned().unwrap_or_default();
        // Agencies have a segment threshold of their own: the change does not touch them.
        (!matches!(segment.as_str(), "staffing_agency" | "recruitment_agency"))
            .then(|| threshold.max(per_vacancy * vacancies))
    };
    // A lower threshold that a few honest peaks reach: the fourth-highest peak under
    // 4,000 of an account the change applies to.
    let mut under: Vec<u64> = peaks
        .iter()
        .filter(|(a, p)| effective(4000, a).is_some_and(|t| **p < t))
        .map(|(_, p)| *p)
        .collect();
    under.sort_unstable_by(|a, b| b.cmp(a));
    let lower = under[3.min(under.len() - 1)];
    assert!(lower > 50 && lower < 4000, "{under:?}");
    let expected: BTreeSet<String> = peaks
        .iter()
        .filter(|(a, p)| effective(lower, a).is_some_and(|t| **p >= t) && effective(4000, a).is_some_and(|t| **p < t))
        .map(|(a, _)| a.clone())
        .collect();
    assert!(expected.len() >= 3, "{expected:?}");

    let candidate = dir.path().join("candidate.toml");
    let mut changed = text.clone();
    changed.replace_range(
        threshold_at..threshold_at + "threshold = 4000".len(),
        &format!("threshold = {lower}"),
    );
    assert!(changed[rule_at..].contains(&format!("per_vacancy = {per_vacancy}\n")));
    std::fs::write(&candidate, changed).unwrap();
    let (events, accounts) = (sim.join("events.ndjson"), sim.join("accounts.csv"));
    let args = [
        "--config",
        candidate.to_str().unwrap(),
        "--baseline",
        current.to_str().unwrap(),
        "--input",
        events.to_str().unwrap(),
        "--profiles",
        accounts.to_str().unwrap(),
    ];
    let r = backtest(&args);
    let diff = &r["diff"];
    let listed = |field: &str| -> BTreeMap<String, BTreeSet<String>> {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for h in diff[field].as_array().unwrap() {
            m.entry(h["rule"].as_str().unwrap().to_string())
                .or_default()
                .insert(h["key"].as_str().unwrap().to_string());
        }
        m
    };
    assert_eq!(
        listed("newly_hit"),
        BTreeMap::from([("mass-harvest-24h".to_string(), expected.clone())]),
        "{diff:#}"
    );
    assert!(listed("no_longer_hit").is_empty(), "{diff:#}");
    assert!(listed("decided_later").is_empty(), "{diff:#}");
    // What both configs hit under the changed rule is decided no later, the harvester's
    // suspension earlier and with fewer CVs exposed.
    let earlier = diff["decided_earlier"].as_array().unwrap();
    assert!(earlier
        .iter()
        .all(|s| s["rule"] == "mass-harvest-24h" && s["earlier_by_ms"].as_i64().unwrap() > 0));
    let harvester = earlier
        .iter()
        .find(|s| s["key"] == "harvester-1")
        .expect("the harvester, earlier");
    assert!(harvester["fewer_cvs"].as_i64().unwrap() > 0, "{harvester}");
    // The table says the same.
    let out = cvguard_ok(&[&["backtest"], &args[..]].concat());
    let table = String::from_utf8(out.stdout).unwrap();
    for key in &expected {
        assert!(
            table.contains(&format!("account_id:{key} at")),
            "{key} not listed:\n{table}"
        );
    }
}

#[test]
fn a_missing_history_is_66_and_an_empty_one_65() {
    let dir = tempfile::tempdir().unwrap();
    let config = cvguard_tests::root().join("config/cvguard.toml");
    let out = cvguard(&[
        "backtest",
        "--config",
        config.to_str().unwrap(),
        "--input",
        "/nonexistent.ndjson",
    ]);
    assert_eq!(out.status.code(), Some(66));
    let empty = dir.path().join("empty.ndjson");
    std::fs::write(&empty, "").unwrap();
    let out = cvguard(&[
        "backtest",
        "--config",
        config.to_str().unwrap(),
        "--input",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(65));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[rules]]\nname = 1\n").unwrap();
    let out = cvguard(&[
        "backtest",
        "--config",
        bad.to_str().unwrap(),
        "--input",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(64));
}

/// A harvester that reads 100,000 CVs one view at a time, long after it is decided: its
/// incident's curve keeps at most 256 points (`crates/cvguard-workbench/src/curve.rs`),
/// passes through the decision at the CVs exposed, and ends at the window's last count.
/// The backtest holds no CV id for it, so its memory is the engine's window state.
#[test]
fn a_100000_cv_harvest_keeps_its_incident_curve_within_256_points() {
    const CVS: i64 = 100_000;
    const T0: i64 = 1_714_802_400_000; // 2024-05-04T06:00:00Z
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cvguard.toml");
    std::fs::write(
        &config,
        r#"[[rules]]
name = "mass-harvest-24h"
actions = ["cv_view"]
group_by = "account_id"
measure = "distinct_cvs"
window = "24h"
threshold = 4000
response = "suspend"
severity = "critical"
"#,
    )
    .unwrap();
    // One view every 400 ms: 11 hours, every CV still in the 24-hour window at the end.
    let events: String = (0..CVS)
        .map(|i| {
            format!(
                "{{\"ts\":{},\"account_id\":\"harvester\",\"action\":\"cv_view\",\"cv_id\":\"cv-{i:06}\"}}\n",
                T0 + i * 400
            )
        })
        .collect();
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, events).unwrap();
    let out = backtest(&["--config", config.to_str().unwrap(), "--input", input.to_str().unwrap()]);
    let incidents = out["candidate"]["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let inc = &incidents[0];
    let series: Vec<(i64, u64)> = serde_json::from_value(inc["series"].clone()).unwrap();
    assert!(series.len() <= 256, "{} points", series.len());
    assert!(series.len() >= 100, "still a curve: {} points", series.len());
    let decided = (
        inc["decided_at_ms"].as_i64().unwrap(),
        inc["cvs_exposed"].as_u64().unwrap(),
    );
    assert_eq!(decided, (T0 + 3_999 * 400, 4_000));
    assert!(series.contains(&decided), "the decision is on the curve");
    assert_eq!(series.last(), Some(&(T0 + (CVS - 1) * 400, CVS as u64)));
    assert!(
        series.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{series:?}"
    );
}
