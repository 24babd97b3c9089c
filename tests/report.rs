//! The workbench's HTML reports, opened in Debian's headless Chromium (chromedriver,
//! `fantoccini`): their SVG charts render at a size, the page asks for nothing over the
//! network, and the numbers it shows are the JSON output's.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cvguard_tests::cvguard_ok;
use cvguard_tests::service::free_port;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

async fn browser() -> (Client, Driver) {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: run scripts/chromium.sh (make services does)"
        );
    }
    let port = free_port();
    let driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let caps = json!({"goog:chromeOptions": {"binary": CHROMIUM, "args": ["--headless=new", "--no-sandbox", "--window-size=1280,900", "--disable-dev-shm-usage", "--disable-gpu"]}});
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps.as_object().unwrap().clone())
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session with Chromium");
    (client, driver)
}

/// The value at a `data-k` path of the JSON (`a.0.b`, `.length` of an array).
fn at(v: &Value, path: &str) -> Value {
    let mut cur = v;
    for part in path.split('.') {
        if part == "length" {
            return json!(cur.as_array().map_or(0, Vec::len));
        }
        cur = match part.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[part],
        };
    }
    cur.clone()
}

/// Opens `html`, checks its charts render, and every `data-k` number against `json`;
/// returns how many were compared.
async fn check(client: &Client, html: &Path, json: &Value, min_charts: u64) -> usize {
    client.goto(&format!("file://{}", html.display())).await.unwrap();
    let charts = client
        .execute(
            "return [...document.querySelectorAll('svg.chart')].map(s => { const r = s.getBoundingClientRect(); return [r.width, r.height, s.querySelectorAll('rect.bar, path, circle').length]; })",
            vec![],
        )
        .await
        .unwrap();
    let charts = charts.as_array().unwrap();
    assert!(
        charts.len() as u64 >= min_charts,
        "{} charts in {}",
        charts.len(),
        html.display()
    );
    for c in charts {
        assert!(
            c[0].as_f64().unwrap() > 100.0 && c[1].as_f64().unwrap() > 100.0,
            "a chart without size: {c}"
        );
    }
    assert!(
        charts.iter().any(|c| c[2].as_u64().unwrap() > 0),
        "no chart draws anything"
    );
    let cells = client
        .execute(
            "return [...document.querySelectorAll('[data-k]')].map(e => [e.dataset.k, e.textContent])",
            vec![],
        )
        .await
        .unwrap();
    let cells = cells.as_array().unwrap();
    assert!(cells.len() > 10, "{cells:?}");
    for c in cells {
        let (path, text) = (c[0].as_str().unwrap(), c[1].as_str().unwrap());
        let expected = match at(json, path) {
            Value::Null => "-".to_string(),
            Value::String(s) => s,
            v => v.to_string(),
        };
        assert_eq!(text, expected, "{path} in {}", html.display());
    }
    // Nothing was fetched: the page is one file.
    let fetched = client
        .execute("return performance.getEntriesByType('resource').length", vec![])
        .await
        .unwrap();
    assert_eq!(fetched, json!(0));
    cells.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backtest_and_tune_reports_render_their_charts_and_show_the_jsons_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    cvguard_ok(&["simulate", "--out", &s(&sim), "--days", "3", "--employers", "150"]);
    let (config, events, accounts, labels) = (
        sim.join("cvguard.toml"),
        sim.join("events.ndjson"),
        sim.join("accounts.csv"),
        sim.join("labels.csv"),
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let candidate = dir.path().join("candidate.toml");
    std::fs::write(&candidate, text.replacen("threshold = 4000\n", "threshold = 2500\n", 1)).unwrap();

    let report = dir.path().join("backtest.html");
    let out = cvguard_ok(&[
        "backtest",
        "--config",
        &s(&candidate),
        "--baseline",
        &s(&config),
        "--input",
        &s(&events),
        "--profiles",
        &s(&accounts),
        "--labels",
        &s(&labels),
        "-o",
        "json",
        "--report",
        &s(&report),
    ]);
    let bt: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tune_report = dir.path().join("tune.html");
    let out = cvguard_ok(&[
        "tune",
        "--config",
        &s(&config),
        "--input",
        &s(&events),
        "--profiles",
        &s(&accounts),
        "--exclude",
        &s(&labels),
        "-o",
        "json",
        "--report",
        &s(&tune_report),
    ]);
    let tune: Value = serde_json::from_slice(&out.stdout).unwrap();

    let (client, _driver) = browser().await;
    let incidents = bt["candidate"]["incidents"].as_array().unwrap();
    assert!(incidents.len() > 3);
    // A bar chart per rule that alerted, and at least one incident's CV chart (only a
    // distinct-CV rule's incident gets one, at most 40 by importance).
    assert!(incidents.iter().any(|i| i["measure"] == "distinct_cvs"));
    let per_day = bt["candidate"]["alerts_per_day"].as_object().unwrap().len() as u64;
    let compared = check(&client, &report, &bt, per_day + 1).await;
    assert!(compared >= 40, "{compared}");
    let groups = tune["groups"].as_array().unwrap().len() as u64;
    check(&client, &tune_report, &tune, groups).await;
    client.close().await.unwrap();
}
