//! A real HTTP receiver for webhook tests: records every request, checks its signature
//! with the shared secret (independently of cvguard's code: HMAC-SHA256 over
//! `timestamp.idempotency_key.body`, docs/WEBHOOKS.md), and answers from a script.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How to answer one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Status(u16),
    /// Sleep, then answer.
    Slow(Duration, u16),
    /// A redirect (301, 302, 307, 308) to this location.
    Redirect(u16, &'static str),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub signature_ok: bool,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

pub struct Receiver {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Listens on `port` (0 for any); answers from `script`, then 200 once it runs out.
    pub fn start(port: u16, secret: &str, script: Vec<Reply>) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let (r, secret) = (received.clone(), secret.as_bytes().to_vec());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, s, secret) = (r.clone(), script.clone(), secret.clone());
                std::thread::spawn(move || handle(stream, &r, &s, &secret));
            }
        });
        Receiver { port, received }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn calls(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.calls().len() >= n {
                return self.calls();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.calls()
    }
}

fn handle(stream: TcpStream, received: &Mutex<Vec<Received>>, script: &Mutex<VecDeque<Reply>>, secret: &[u8]) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    let _ = reader.read_exact(&mut body);
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let signature_ok = match (get("x-cvguard-timestamp"), get("x-cvguard-signature")) {
        (Some(ts), Some(sig)) => {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
            mac.update(ts.as_bytes());
            mac.update(b".");
            mac.update(get("idempotency-key").unwrap_or_default().as_bytes());
            mac.update(b".");
            mac.update(&body);
            let fresh = ts
                .parse::<i64>()
                .map(|t| (t - crate::unix_now()).abs() <= 300)
                .unwrap_or(false);
            let expected = sig.strip_prefix("sha256=").and_then(|h| hex::decode(h).ok());
            fresh && expected.is_some_and(|e| mac.verify_slice(&e).is_ok())
        }
        _ => false,
    };
    received.lock().unwrap().push(Received {
        path,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
        signature_ok,
    });
    let reply = script.lock().unwrap().pop_front().unwrap_or(Reply::Status(200));
    let (code, location) = match reply {
        Reply::Status(c) => (c, String::new()),
        Reply::Slow(d, c) => {
            std::thread::sleep(d);
            (c, String::new())
        }
        Reply::Redirect(c, to) => (c, format!("Location: {to}\r\n")),
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {code} X\r\n{location}Content-Length: 2\r\nConnection: close\r\n\r\nok"
    );
}
