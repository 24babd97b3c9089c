//! The web console in a real browser: Debian's Chromium, headless, driven through
//! chromedriver (WebDriver, the `fantoccini` crate) against the built `cvguard serve`, the
//! platform a real HTTP receiver. `scripts/chromium.sh` (make services) installs both.
//! Each page's screenshot is written to target/console-screenshots/ for a reviewer.
//! Plus, without a browser: every console file is served with the security headers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cvguard_tests::kafka::harvest_batch;
use cvguard_tests::receiver::Receiver;
use cvguard_tests::service::{free_port, http_with, Service};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "console-test-secret-7c1d";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A `cvguard serve` with tokens for every role (or none: loopback is admin), SQLite, the
/// shipped rules, and the suspend webhook to `suspend_url`.
struct Board {
    dir: tempfile::TempDir,
    port: u16,
    tokens: Vec<(&'static str, String)>,
    _svc: Service,
}

fn new_token(role: &str) -> (String, String) {
    let out = cvguard_tests::cvguard_ok(&["token", "new", "--role", role, "--name", &format!("{role}-analyst")]);
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .split_whitespace()
        .find(|w| w.starts_with("cvg_"))
        .unwrap()
        .to_string();
    (token, text[text.find("[[http.tokens]]").unwrap()..].to_string())
}

impl Board {
    fn start(with_tokens: bool, suspend_url: Option<&str>) -> Board {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut tokens = Vec::new();
        let mut entries = String::new();
        if with_tokens {
            for role in ["viewer", "responder", "ingest"] {
                let (token, entry) = new_token(role);
                entries.push_str(&entry);
                entries.push('\n');
                tokens.push((role, token));
            }
        }
        let shipped = std::fs::read_to_string(cvguard_tests::root().join("config/cvguard.toml")).unwrap();
        let suspend = suspend_url.map_or(String::new(), |u| {
            format!("[suspend]\nurl = \"{u}\"\nsecret_env = \"CVGUARD_TEST_SUSPEND_SECRET\"\ntimeout = \"2s\"\n")
        });
        let config = dir.path().join("cvguard.toml");
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\n{entries}\n[state]\ndir = \"{d}/state\"\n[store]\nurl = \"sqlite://{d}/cvguard.db\"\n{suspend}\n{rules}",
                d = dir.path().display(),
                rules = &shipped[shipped.find("[allowlist]").unwrap()..]
            ),
        )
        .unwrap();
        let mut svc = Service::start_env(
            &config,
            port,
            &dir.path().join("serve.log"),
            &[("CVGUARD_TEST_SUSPEND_SECRET", SECRET)],
        );
        svc.wait_ready(WAIT);
        Board {
            dir,
            port,
            tokens,
            _svc: svc,
        }
    }

    fn token(&self, role: &str) -> Option<&str> {
        self.tokens.iter().find(|(r, _)| *r == role).map(|(_, t)| t.as_str())
    }

    fn call(&self, role: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let auth = self.token(role).map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("Authorization", a)]).unwrap_or_default();
        http_with(self.port, method, path, &headers, body).unwrap()
    }

    fn json(&self, path: &str) -> Value {
        let (code, body) = self.call("viewer", "GET", path, b"");
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn post_harvest(&self, batches: std::ops::Range<u32>) {
        let body: String = batches
            .map(|i| format!("{}\n", harvest_batch("harvester-1", i)))
            .collect();
        let (code, text) = self.call("ingest", "POST", "/v1/events", body.as_bytes());
        assert_eq!(code, 202, "{text}");
    }

    /// The incident of the 24 h mass-harvest rule, once `done` holds for it.
    fn wait_incident(&self, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let list = self.json("/v1/incidents?limit=1000");
            if let Some(i) = list["incidents"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["rule"] == "mass-harvest-24h" && done(i))
            {
                return i.clone();
            }
            assert!(Instant::now() < deadline, "no such incident: {list}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self, rest: &str) -> String {
        format!("http://127.0.0.1:{}/ui/{rest}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }
}

/// Headless Chromium through a chromedriver of the test's own, on a free port.
struct Browser {
    client: Client,
    driver: Child,
    driver_port: u16,
}

impl Browser {
    async fn start() -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing: run scripts/chromium.sh (make services does)"
            );
        }
        let driver_port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", driver_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {driver_port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--window-size=1280,900", "--disable-dev-shm-usage", "--disable-gpu"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
            .expect("a WebDriver session with Chromium");
        Browser {
            client,
            driver,
            driver_port,
        }
    }

    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .expect("run a script in the page")
    }

    /// Polls `script` (a function body that returns a value) until `done` holds for it.
    async fn wait(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.js(script).await;
            if done(&v) {
                return v;
            }
            if Instant::now() > deadline {
                self.screenshot(&format!("failed-{}", what.replace(' ', "-"))).await;
                panic!(
                    "{what}: never happened; last {v}; page errors {:?}",
                    self.page_errors().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for_element(&self, css: &str) {
        let script = format!("return document.querySelector({}) !== null", json!(css));
        self.wait(&format!("element {css}"), &script, |v| v == &json!(true))
            .await;
    }

    /// Waits until the element `css` holds `text`.
    async fn wait_text(&self, css: &str, text: &str) {
        let script = format!("return document.querySelector({})?.textContent || ''", json!(css));
        self.wait(&format!("{text} in {css}"), &script, |v| {
            v.as_str().unwrap_or("").contains(text)
        })
        .await;
    }

    async fn click(&self, css: &str) {
        self.wait_for_element(css).await;
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.wait_for_element(css).await;
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .send_keys(text)
            .await
            .unwrap();
    }

    async fn sign_in(&self, board: &Board, role: &str) {
        self.client.goto(&board.url("")).await.unwrap();
        self.type_into("#token", board.token(role).unwrap()).await;
        self.click("#signin").await;
        let script = "return document.querySelector('#whoami')?.textContent || ''";
        self.wait("signed in", script, |v| v.as_str().unwrap_or("").contains(role))
            .await;
    }

    async fn go(&self, hash: &str) {
        self.js(&format!("location.hash = {}; return true", json!(hash))).await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = cvguard_tests::root().join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        // The whole page: the window as tall as the document (once the browser has laid it
        // out again), then back to 1280 x 900.
        let script = "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight";
        let height = self.js(script).await.as_u64().unwrap_or(900).clamp(900, 4000);
        self.client.set_window_size(1280, height as u32).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.js("return window.outerHeight").await.as_u64().unwrap_or(0) < height && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::fs::write(&path, self.client.screenshot().await.unwrap()).unwrap();
        self.client.set_window_size(1280, 900).await.unwrap();
        path
    }

    /// What the page caught (`window.cvguardErrors`: uncaught errors, rejections, CSP
    /// violations) and the browser log's SEVERE lines, but for the 401 and 403 answers
    /// the test asks for.
    async fn page_errors(&self) -> Vec<String> {
        let mut errors: Vec<String> = self
            .js("return window.cvguardErrors || ['the console script never ran']")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|v| v.to_string())
            .collect();
        let session = self.client.session_id().await.unwrap().unwrap();
        let (code, body) = post_json(
            self.driver_port,
            &format!("/session/{session}/se/log"),
            r#"{"type":"browser"}"#,
        );
        assert_eq!(code, 200, "the browser log: {body}");
        let log: Value = serde_json::from_str(&body).unwrap();
        for entry in log["value"].as_array().cloned().unwrap_or_default() {
            let message = entry["message"].as_str().unwrap_or("");
            let expected = entry["source"] == "network" && (message.contains(" 401 ") || message.contains(" 403 "));
            if entry["level"] == "SEVERE" && !expected {
                errors.push(message.to_string());
            }
        }
        errors
    }

    /// Fails the test on any error the page logged or caught, then ends the session.
    async fn finish(self) {
        let errors = self.page_errors().await;
        assert!(errors.is_empty(), "console errors: {errors:?}");
        self.close().await;
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

fn run(test: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test)
}

fn number(text: &str) -> i64 {
    text.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn a_viewer_sees_an_incident_arrive_live_and_cannot_act() {
    run(async {
        let board = Board::start(true, None);
        let b = Browser::start().await;
        b.client.goto(&board.url("")).await.unwrap();
        b.wait_for_element("#token").await;
        b.screenshot("login").await;
        b.type_into("#token", "cvg_not-a-token").await;
        b.click("#signin").await;
        b.wait_text("form.login", "That token was refused: unknown token").await;
        b.sign_in(&board, "viewer").await;
        // The list is loaded and the stream connected before any event is posted.
        b.wait(
            "the empty list",
            "return document.querySelector('#incident-rows') !== null && document.querySelector('.msg.info') !== null",
            |v| v == &json!(true),
        )
        .await;
        b.wait("the stream", "return document.querySelector('#live').className", |v| {
            v.as_str() == Some("live live")
        })
        .await;
        b.js("window.notReloaded = true; return true").await;

        board.post_harvest(0..22);
        let rows = b
            .wait(
                "the incident, live",
                "return [...document.querySelectorAll('#incident-rows tr')].map(r => r.textContent)",
                |v| {
                    v.as_array()
                        .is_some_and(|rows| rows.iter().any(|r| r.as_str().unwrap().contains("mass-harvest-24h")))
                },
            )
            .await;
        assert_eq!(
            b.js("return window.notReloaded === true").await,
            json!(true),
            "the page was not reloaded"
        );
        assert!(rows.to_string().contains("harvester-1"), "{rows}");
        b.wait(
            "the counts",
            "return document.querySelector('#counts [data-status=open] .n')?.textContent || '0'",
            |v| v.as_str().is_some_and(|n| number(n) >= 1),
        )
        .await;
        b.screenshot("incidents").await;

        let incident = board.wait_incident(|_| true);
        let id = incident["id"].as_str().unwrap();
        b.go(&format!("#/incidents/{id}")).await;
        b.wait_for_element("#incident-title").await;
        b.wait_for_element("#art33").await;
        b.wait_for_element("#chart svg.chart line.threshold").await;
        let named = b
            .js("return document.querySelector('#visibility .vis-named .n').textContent")
            .await;
        let detail = board.json(&format!("/v1/incidents/{id}"));
        assert_eq!(
            number(named.as_str().unwrap()),
            detail["cvs_by_visibility"]["named"].as_i64().unwrap()
        );
        let buttons = b
            .js("return [...document.querySelectorAll('main button')].map(b => b.id)")
            .await;
        for forbidden in ["act-ack", "act-resolve", "act-false-positive", "act-note"] {
            assert!(
                !buttons.to_string().contains(forbidden),
                "a viewer sees {forbidden}: {buttons}"
            );
        }
        assert!(buttons.to_string().contains("download-csv"), "{buttons}");
        b.screenshot("incident-viewer").await;

        // The API refuses a viewer anyway, asked from the page with its token.
        let status = b
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 fetch(`/v1/incidents/${arguments[0]}/ack`, {method: 'POST', headers: {Authorization: `Bearer ${sessionStorage.getItem('cvguard.token')}`}})
                   .then(r => done(r.status), e => done(String(e)));",
                vec![json!(id)],
            )
            .await
            .unwrap();
        assert_eq!(status, json!(403));
        // The token is in sessionStorage only: no cookie, nothing in the URL.
        assert_eq!(b.js("return document.cookie").await, json!(""));
        assert!(!b.js("return location.href").await.to_string().contains("cvg_"));

        b.finish().await;
    });
}

#[test]
fn a_responder_marks_a_false_positive_and_the_platform_receives_the_unsuspend() {
    run(async {
        let receiver = Receiver::start(0, SECRET, vec![]);
        let board = Board::start(true, Some(&receiver.url("/platform/suspend")));
        board.post_harvest(0..22);
        let incident = board.wait_incident(|i| i["suspended"] == true);
        let id = incident["id"].as_str().unwrap();

        let b = Browser::start().await;
        b.sign_in(&board, "responder").await;
        b.go(&format!("#/incidents/{id}")).await;
        b.type_into("#note", "a partner's bulk export, agreed with the platform")
            .await;
        // A colleague acknowledges it meanwhile: the page follows, the draft note stays.
        let (code, body) = board.call("responder", "POST", &format!("/v1/incidents/{id}/ack"), b"");
        assert_eq!(code, 200, "{body}");
        b.wait_text(".badges", "acknowledged").await;
        assert_eq!(
            b.js("return document.querySelector('#note').value").await,
            json!("a partner's bulk export, agreed with the platform")
        );
        assert_eq!(
            b.js("return document.querySelector('#act-ack') === null").await,
            json!(true)
        );
        b.click("#act-false-positive").await;
        b.click("#confirm-false-positive").await;
        b.wait_text(".badges", "false positive").await;

        let deadline = Instant::now() + WAIT;
        let unsuspend = loop {
            let calls = receiver.calls();
            if let Some(c) = calls.iter().find(|c| c.body.contains("\"action\":\"unsuspend\"")) {
                break c.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no unsuspend call: {calls:?}\n{}",
                board.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(unsuspend.signature_ok, "the unsuspend call is signed");
        assert_eq!(unsuspend.json()["account_id"], "harvester-1");
        assert_eq!(
            unsuspend.header("Idempotency-Key"),
            Some(format!("{id}:unsuspend:harvester-1").as_str())
        );

        b.type_into("#note", "platform confirmed the account is active again")
            .await;
        b.click("#act-note").await;
        b.wait(
            "the note in the history",
            "return [...document.querySelectorAll('table.history td.note')].map(td => td.textContent)",
            |v| v.to_string().contains("active again") && v.to_string().contains("agreed with the platform"),
        )
        .await;
        b.wait_text("table.actions", "unsuspend").await;
        b.screenshot("incident-responder").await;
        let detail = board.json(&format!("/v1/incidents/{id}"));
        assert_eq!(detail["status"], "false_positive");
        b.finish().await;
    });
}

#[test]
fn without_tokens_a_loopback_analyst_sees_an_accounts_values_as_the_api_reports_them() {
    run(async {
        let board = Board::start(false, None);
        board.post_harvest(0..5);
        let account = board.json("/v1/accounts/harvester-1");
        let windows = account["windows"].as_array().unwrap().clone();
        assert!(windows.iter().any(|w| w["value"].as_i64() > Some(0)), "{account}");

        let b = Browser::start().await;
        // No token is configured: the API takes loopback as admin, and so does the page.
        b.client.goto(&board.url("#/keys/account/harvester-1")).await.unwrap();
        b.wait_for_element("#key-view table.windows").await;
        for w in &windows {
            let rule = w["rule"].as_str().unwrap();
            let script = format!(
                "const r = document.querySelector('#key-view tr[data-rule={}]'); return r ? [r.querySelector('.value').textContent, r.querySelector('.threshold').textContent] : null",
                json!(rule)
            );
            let cells = b.js(&script).await;
            let cells = cells.as_array().unwrap_or_else(|| panic!("no row for {rule}"));
            assert_eq!(
                number(cells[0].as_str().unwrap()),
                w["value"].as_i64().unwrap(),
                "{rule}"
            );
            assert_eq!(
                number(cells[1].as_str().unwrap()),
                w["threshold"].as_i64().unwrap(),
                "{rule}"
            );
            // A baseline rule that does not judge the key yet is silent for it: its bar
            // is never red, however far past the floor the value is.
            let bar = b
                .js(&format!(
                    "return document.querySelector('#key-view tr[data-rule={}] .bar').className",
                    json!(rule)
                ))
                .await;
            let silent = w["baseline"]["judged"] == false;
            assert_eq!(bar.as_str().unwrap().contains("silent"), silent, "{rule}: {bar}");
        }
        assert!(
            windows.iter().any(|w| w["baseline"]["judged"] == false),
            "the shipped surge-24h does not judge a new account: {account}"
        );
        assert_eq!(
            b.js("return document.querySelector('#whoami').textContent").await,
            json!("loopback admin")
        );
        b.wait_for_element("#closest table.closest").await;
        b.screenshot("keys").await;

        b.go("#/rules").await;
        b.wait_for_element("table.rules tr[data-rule=mass-harvest-24h]").await;
        b.wait_for_element("#config dl.facts").await;
        b.screenshot("rules").await;

        b.go("#/health").await;
        b.wait_for_element("#readiness .dot.green").await;
        b.wait_for_element("#alarms .big").await;
        b.screenshot("health").await;

        b.finish().await;
    });
}

/// A POST to chromedriver, which keeps the connection open: the body is read by its length.
fn post_json(port: u16, path: &str, body: &str) -> (u16, String) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap();
            }
        }
    }
    let mut out = vec![0; length];
    reader.read_exact(&mut out).unwrap();
    (code, String::from_utf8_lossy(&out).into_owned())
}

/// A GET's status line and headers, and its body, as sent.
fn raw_get(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_ascii_lowercase(), body.to_string())
}

#[test]
fn every_console_file_is_served_with_the_security_headers_and_the_page_has_no_inline_script() {
    let board = Board::start(true, None);
    let (head, page) = raw_get(board.port, "/ui/");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    let mut paths = vec!["/ui/".to_string()];
    for (at, _) in page.match_indices("=\"/ui/") {
        let rest = &page[at + 2..];
        paths.push(rest[..rest.find('"').unwrap()].to_string());
    }
    let (_, app) = raw_get(board.port, "/ui/app.js");
    for (at, _) in app.match_indices("from \"./") {
        let rest = &app[at + 8..];
        paths.push(format!("/ui/{}", &rest[..rest.find('"').unwrap()]));
    }
    paths.sort();
    paths.dedup();
    assert!(paths.len() >= 6, "{paths:?}");
    for path in &paths {
        let (head, body) = raw_get(board.port, path);
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(!body.is_empty(), "{path}");
        for header in [
            format!("content-security-policy: {}", CSP.to_ascii_lowercase()),
            "x-content-type-options: nosniff".into(),
            "referrer-policy: no-referrer".into(),
            "x-frame-options: deny".into(),
        ] {
            assert!(head.contains(&header), "{path} lacks {header}:\n{head}");
        }
    }
    let (head, _) = raw_get(board.port, "/ui");
    assert!(
        head.starts_with("http/1.1 308") && head.contains("location: /ui/"),
        "{head}"
    );
    assert!(head.contains("content-security-policy"), "{head}");
    // Without a token the page loads, and the API behind it still refuses.
    assert_eq!(board.call("none", "GET", "/v1/incidents", b"").0, 401);

    let lower = page.to_ascii_lowercase();
    for (at, _) in lower.match_indices("<script") {
        let tag = &lower[at..at + lower[at..].find('>').unwrap() + 1];
        assert!(
            tag.contains(" src=\"/ui/"),
            "a script that is not a file of the console: {tag}"
        );
        assert!(
            lower[at + tag.len()..].starts_with("</script>"),
            "inline script after {tag}"
        );
    }
    assert!(!lower.contains(" style=") && !lower.contains("<style"), "inline style");
}
