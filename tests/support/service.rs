//! Running `cvguard serve` as a child process, as an operator would.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A unique suffix for topic, group and folder names, so runs never collide.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}-{}-{nanos:x}", std::process::id())
}

pub struct Service {
    pub child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl Service {
    /// Starts `cvguard serve --config CONFIG`, logging to `log`.
    pub fn start(config: &Path, port: u16, log: &Path) -> Service {
        Service::start_env(config, port, log, &[])
    }

    /// Like `start`, with extra environment variables (secrets).
    pub fn start_env(config: &Path, port: u16, log: &Path, env: &[(&str, &str)]) -> Service {
        Service::start_with(config, port, log, env, &[])
    }

    /// Like `start`, with extra environment variables and `serve` arguments.
    pub fn start_with(config: &Path, port: u16, log: &Path, env: &[(&str, &str)], args: &[&str]) -> Service {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(crate::bin())
            .args(["serve", "--config", config.to_str().unwrap()])
            .args(args)
            .current_dir(crate::root())
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start cvguard serve");
        Service {
            child: Some(child),
            port,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits until GET /readyz answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("cvguard serve exited early ({status}); log:\n{}", self.log_text());
            }
            if let Ok((200, _)) = http(self.port, "GET", "/readyz", b"") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("cvguard serve not ready after {timeout:?}; log:\n{}", self.log_text());
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("no exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The account view's (`GET /v1/accounts/{account}`) window of `rule`.
pub fn account_window(port: u16, account: &str, rule: &str) -> serde_json::Value {
    let (code, text) = http(port, "GET", &format!("/v1/accounts/{account}"), b"").unwrap();
    assert_eq!(code, 200, "{text}");
    let view: serde_json::Value = serde_json::from_str(&text).unwrap();
    view["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["rule"] == rule)
        .cloned()
        .unwrap_or_else(|| panic!("no {rule} in {view}"))
}

/// A minimal HTTP/1.1 client for loopback tests: (status, body).
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    http_with(port, method, path, &[], body)
}

pub fn http_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, dechunk(&body)))
}

/// Joins a chunked body (axum answers chunked when it streams).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 {
            return out;
        }
        if after.len() < n {
            return body.to_string();
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}
