//! The HTTP API as its users expect it (#15): every error an RFC 9457 problem with its
//! content type, paging parameters refused when out of range, gzip ingest bounded by the
//! body limit once decompressed, and Schemathesis (docs/openapi.yaml, every check) clean
//! against the live service.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cvguard_tests::kafka::harvest_batch;
use cvguard_tests::service::{free_port, Service};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
/// `http.max_body_bytes` of the service under test.
const MAX_BODY: usize = 1 << 20;

struct Api {
    _dir: tempfile::TempDir,
    port: u16,
    tokens: Vec<(&'static str, String)>,
    svc: Service,
}

/// A token for `role`, and its `[[http.tokens]]` entry (the SHA-256 the service keeps).
fn token(role: &'static str) -> (&'static str, String, String) {
    use sha2::Digest;
    let token = format!("cvg_{}", cvguard_tests::service::unique(role));
    let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    let entry = format!("[[http.tokens]]\nname = \"{role}-token\"\nrole = \"{role}\"\nsha256 = \"{hash}\"\n");
    (role, token, entry)
}

fn start() -> Api {
    let made = ["viewer", "responder", "admin", "ingest"].map(token);
    let entries: String = made.iter().map(|(_, _, entry)| entry.as_str()).collect();
    let tokens = made.into_iter().map(|(role, tok, _)| (role, tok)).collect();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let shipped = std::fs::read_to_string(cvguard_tests::root().join("config/cvguard.toml")).unwrap();
    let rules = &shipped[shipped.find("[allowlist]").unwrap()..];
    let config = dir.path().join("cvguard.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\nmax_body_bytes = {MAX_BODY}\n{entries}\n[state]\ndir = \"{d}/state\"\n[store]\nurl = \"sqlite://{d}/cvguard.db\"\n{rules}",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let mut svc = Service::start(&config, port, &dir.path().join("serve.log"));
    svc.wait_ready(WAIT);
    Api {
        _dir: dir,
        port,
        tokens,
        svc,
    }
}

/// A whole answer: status, headers (names in lower case) and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts an RFC 9457 problem with `status`, and returns its body.
    fn problem(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{status}: {}",
            self.text()
        );
        let p = self.json();
        assert_eq!(p["type"], "about:blank", "{p}");
        assert_eq!(p["status"], status, "{p}");
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        let detail = p["detail"].as_str().unwrap_or_else(|| panic!("no detail: {p}"));
        assert!(!detail.is_empty(), "{p}");
        assert_eq!(p["error"], p["detail"], "the earlier `error` member is kept: {p}");
        p
    }
}

impl Api {
    fn tok(&self, role: &str) -> &str {
        &self.tokens.iter().find(|(r, _)| *r == role).unwrap().1
    }

    /// `role` None sends no token.
    fn call(&self, role: Option<&str>, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let auth = role.map(|r| format!("Bearer {}", self.tok(r)));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &auth {
            all.push(("Authorization", a));
        }
        request(self.port, method, path, &all, body)
    }

    fn get(&self, path: &str) -> Reply {
        self.call(Some("viewer"), "GET", path, &[], b"")
    }

    fn ingest(&self, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        self.call(Some("ingest"), "POST", "/v1/events", headers, body)
    }

    /// Posts `accounts` harvests of 21 batches (4,200 CVs each) and waits for an incident each.
    fn harvest(&self, accounts: &[&str]) -> Vec<Value> {
        let body: String = (0..21)
            .flat_map(|i| accounts.iter().map(move |a| harvest_batch(a, i) + "\n"))
            .collect();
        let r = self.ingest(&[], body.as_bytes());
        assert_eq!(r.status, 202, "{}", r.text());
        let deadline = Instant::now() + WAIT;
        loop {
            let list = self.get("/v1/incidents?rule=mass-harvest-24h&limit=1000").json()["incidents"]
                .as_array()
                .unwrap()
                .clone();
            if list.len() >= accounts.len() {
                return list;
            }
            assert!(
                Instant::now() < deadline,
                "no incidents yet: {list:?}\n{}",
                self.svc.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// HTTP/1.0 over loopback (so the answer is never chunked), read to the end.
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // A server may answer (413, 401) before taking the whole body, and close.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// `gzip -c` of `data`: the tool every log shipper's gzip is compatible with.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .args(["-c", "-6"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip (Debian's essential package) is installed");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// The service's peak resident memory, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

#[test]
fn every_error_is_a_problem_with_its_content_type() {
    let api = start();
    let id = api.harvest(&["harvester-1"])[0]["id"].as_str().unwrap().to_string();

    // 400: a query axum cannot read, a filter the handler refuses, a body that is no note.
    let p = api.get("/v1/incidents?limit=many").problem(400);
    assert!(p["detail"].as_str().unwrap().contains("limit"), "{p}");
    api.get("/v1/incidents?limit=5&limit=6").problem(400);
    api.get("/v1/incidents?from=yesterday").problem(400);
    api.get("/v1/incidents?status=bogus").problem(400);
    let r = api.call(
        Some("responder"),
        "POST",
        &format!("/v1/incidents/{id}/ack"),
        &[],
        br#"{"note": 5}"#,
    );
    r.problem(400);
    // Ingest's 400 keeps the counts its clients read.
    let p = api.ingest(&[], b"{broken\n[1]\n").problem(400);
    assert_eq!(
        (p["accepted"].as_u64(), p["decided"].as_bool()),
        (Some(0), Some(true)),
        "{p}"
    );
    assert_eq!(p["rejected"]["invalid_json"], 1, "{p}");
    assert_eq!(p["rejected"]["not_an_object"], 1, "{p}");

    // 401 names the scheme; 403 for a role that is not enough.
    let r = api.call(None, "GET", "/v1/incidents", &[], b"");
    let p = r.problem(401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(p["detail"], "expected `Authorization: Bearer <token>`", "{p}");
    // Another scheme is told which one this API takes; an unknown token is refused.
    let authorized = |value: &str| request(api.port, "GET", "/v1/rules", &[("Authorization", value)], b"");
    let p = authorized("Basic dXNlcjpwYXNz").problem(401);
    assert_eq!(p["detail"], "expected `Authorization: Bearer <token>`", "{p}");
    authorized("Bearer cvg_nope").problem(401);
    api.call(Some("viewer"), "POST", &format!("/v1/incidents/{id}/ack"), &[], b"")
        .problem(403);
    api.call(Some("ingest"), "GET", "/v1/incidents", &[], b"").problem(403);

    // 404: an unknown route, an unknown incident, an unknown action on one.
    let p = api.call(None, "GET", "/nope", &[], b"").problem(404);
    assert_eq!(p["detail"], "no such resource: GET /nope", "{p}");
    api.get("/v1/nope").problem(404);
    api.get("/v1/incidents/nope").problem(404);
    api.get("/v1/incidents/nope/affected.csv").problem(404);
    api.call(Some("responder"), "POST", "/v1/incidents/nope/resolve", &[], b"")
        .problem(404);
    api.call(
        Some("responder"),
        "POST",
        &format!("/v1/incidents/{id}/bogus"),
        &[],
        b"",
    )
    .problem(404);

    // 405 with Allow.
    let r = api.call(Some("admin"), "DELETE", "/v1/incidents", &[], b"");
    let p = r.problem(405);
    assert!(r.header("allow").is_some_and(|a| a.contains("GET")), "{:?}", r.headers);
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .starts_with("DELETE is not allowed on /v1/incidents"),
        "{p}"
    );
    let r = api.call(Some("ingest"), "GET", "/v1/events", &[], b"");
    r.problem(405);
    assert_eq!(r.header("allow"), Some("POST"));

    // 409: a transition the incident's status does not allow.
    let ack = format!("/v1/incidents/{id}/ack");
    assert_eq!(api.call(Some("responder"), "POST", &ack, &[], b"").status, 200);
    api.call(Some("responder"), "POST", &ack, &[], b"").problem(409);

    // 413: a body over http.max_body_bytes, on ingest and on a note.
    let big = vec![b' '; MAX_BODY + 1];
    let p = api.ingest(&[], &big).problem(413);
    assert!(p["detail"].as_str().unwrap().contains(&MAX_BODY.to_string()), "{p}");
    api.call(
        Some("responder"),
        "POST",
        &format!("/v1/incidents/{id}/resolve"),
        &[],
        &big,
    )
    .problem(413);

    // 415: an encoding ingest cannot undo, with what it can.
    let r = api.ingest(&[("Content-Encoding", "br")], b"x\n");
    let p = r.problem(415);
    assert_eq!(r.header("accept-encoding"), Some("gzip"));
    assert!(p["detail"].as_str().unwrap().contains("`br`"), "{p}");

    // 503 with Retry-After: four uploads hold every turn, a fifth is told to retry.
    let auth = format!("Bearer {}", api.tok("ingest"));
    let trickling: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", api.port)).unwrap();
            write!(
                s,
                "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 100000\r\n\r\n{{\"ts\":"
            )
            .unwrap();
            s
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    let busy = loop {
        let r = api.ingest(&[], (harvest_batch("h", 0) + "\n").as_bytes());
        if r.status == 503 {
            break r;
        }
        assert!(Instant::now() < deadline, "never refused: {}", r.text());
    };
    busy.problem(503);
    assert_eq!(busy.header("retry-after"), Some("1"));
    drop(trickling);

    // Successes keep their own content types.
    let r = api.get("/v1/incidents");
    assert_eq!((r.status, r.header("content-type")), (200, Some("application/json")));
    let r = api.call(None, "GET", "/readyz", &[], b"");
    assert_eq!((r.status, r.header("content-type")), (200, Some("application/json")));
}

#[test]
fn paging_parameters_out_of_range_are_refused_not_changed() {
    let api = start();
    api.harvest(&["harvester-1", "harvester-2", "harvester-3"]);
    for (query, says) in [
        ("limit=0", "limit: expected a whole number from 1 to 1000, not `0`"),
        (
            "limit=1001",
            "limit: expected a whole number from 1 to 1000, not `1001`",
        ),
        ("limit=-1", "limit: expected a whole number from 1 to 1000, not `-1`"),
        ("limit=abc", "limit: expected a whole number from 1 to 1000, not `abc`"),
        ("offset=-5", "offset: expected a whole number ≥ 0, not `-5`"),
        ("offset=x", "offset: expected a whole number ≥ 0, not `x`"),
    ] {
        let p = api.get(&format!("/v1/incidents?{query}")).problem(400);
        assert_eq!(p["detail"], says, "{query}");
    }
    let page = |q: &str| {
        let r = api.get(&format!("/v1/incidents?rule=mass-harvest-24h&{q}"));
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        r.json()
    };
    let all = page("");
    assert_eq!((all["limit"].as_i64(), all["offset"].as_i64()), (Some(50), Some(0)));
    assert_eq!(all["incidents"].as_array().unwrap().len(), 3);
    let one = page("limit=1");
    assert_eq!(one["incidents"].as_array().unwrap().len(), 1);
    assert_eq!(one["next_offset"], 1);
    let last = page("limit=2&offset=2");
    assert_eq!(last["incidents"].as_array().unwrap().len(), 1);
    assert_eq!(last["next_offset"], Value::Null);
    let max = page("limit=1000&offset=9223372036854775807");
    assert!(max["incidents"].as_array().unwrap().is_empty());
}

#[test]
fn gzip_ingest_is_decoded_and_a_gzip_bomb_is_413_without_the_memory() {
    let api = start();
    let body: String = (0..10).map(|i| harvest_batch("gz-1", i) + "\n").collect();
    let r = api.ingest(&[("Content-Encoding", "gzip")], &gzip(body.as_bytes()));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["accepted"], 10);
    // `x-gzip`, any case, and members concatenated as shippers append them.
    let mut two = gzip((harvest_batch("gz-1", 10) + "\n").as_bytes());
    two.extend(gzip(harvest_batch("gz-1", 11).as_bytes()));
    let r = api.ingest(&[("Content-Encoding", "X-GZIP")], &two);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["accepted"], 2);
    let account = api.get("/v1/accounts/gz-1").json();
    let mass = account["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["rule"] == "mass-harvest-24h")
        .unwrap_or_else(|| panic!("{account}"))
        .clone();
    assert_eq!(mass["value"], 12 * 200, "{mass}");
    assert_eq!(mass["threshold_source"], "rule", "{mass}");
    assert!(mass.get("baseline").is_none(), "not a baseline rule: {mass}");

    // Not gzip at all: 400, and nothing counted.
    api.ingest(&[("Content-Encoding", "gzip")], body.as_bytes())
        .problem(400);

    // 256 MiB of line breaks in 256 KiB: the answer is 413 and the service never held it.
    let before = peak_rss(api.svc.pid());
    let bomb = gzip(&vec![b'\n'; 256 << 20]);
    assert!(bomb.len() < MAX_BODY, "{} bytes", bomb.len());
    let p = api.ingest(&[("Content-Encoding", "gzip")], &bomb).problem(413);
    assert!(p["detail"].as_str().unwrap().contains("decompresses"), "{p}");
    let grown = peak_rss(api.svc.pid()).saturating_sub(before);
    assert!(grown < 64 << 20, "peak memory grew by {grown} bytes");
    // Just within the limit once decompressed is fine.
    let mut fits = harvest_batch("gz-2", 0).into_bytes();
    fits.resize(MAX_BODY - 1, b' ');
    fits.push(b'\n');
    let r = api.ingest(&[("Content-Encoding", "gzip")], &gzip(&fits));
    assert_eq!(r.status, 202, "{}", r.text());
}

#[test]
fn a_last_line_without_a_line_break_is_taken_and_the_service_stays_up() {
    let api = start();
    let r = api.ingest(&[], harvest_batch("no-eol", 0).as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
    let r = api.ingest(
        &[],
        (harvest_batch("no-eol", 1) + "\n" + &harvest_batch("no-eol", 2)).as_bytes(),
    );
    assert_eq!(r.json()["accepted"], 2, "{}", r.text());
    let r = api.call(None, "GET", "/readyz", &[], b"");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), api.svc.log_text());
}

/// Schemathesis against the live service, with incidents in its store so that the
/// operations on an incident are tried on real ones too. scripts/schemathesis.sh installs
/// it (pip, into .cache) on first use.
#[test]
fn schemathesis_finds_nothing_wrong_with_the_live_api() {
    let api = start();
    api.harvest(&["harvester-1", "harvester-2", "harvester-3"]);
    let started = Instant::now();
    let out = Command::new(cvguard_tests::root().join("scripts/schemathesis.sh"))
        .arg(format!("http://127.0.0.1:{}", api.port))
        .env("CVGUARD_TOKEN", api.tok("admin"))
        .output()
        .expect("run scripts/schemathesis.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis failed ({:?}):\n{stdout}\n{stderr}\nservice log:\n{}",
        out.status,
        api.svc.log_text()
    );
    eprintln!("schemathesis took {:?}:\n{stdout}", started.elapsed());
    let r = api.call(None, "GET", "/readyz", &[], b"");
    assert_eq!(r.status, 200, "the service is still up: {}", r.text());
}
