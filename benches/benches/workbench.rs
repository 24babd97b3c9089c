//! The workbench on a month of the simulator's board (`make bench`): the release binary's
//! `replay` and its two-config `backtest` (a candidate and `--baseline`), each run twice,
//! the better wall time and peak RSS (GNU time's `%M`), next to the plain serde_json parse
//! of the same events (docs/PERFORMANCE.md reads every figure against it). Needs
//! `target/release/cvguard` (`make build-release`). `CVGUARD_BENCH_MONTH=DIR` reuses a
//! board `cvguard simulate` wrote there instead of simulating one (about 2 s).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use cvguard_benches::plain_parse_rate;

/// The month of docs/PERFORMANCE.md: over two million events, every attack scenario.
const SIMULATE: [&str; 4] = ["--days", "30", "--employers", "200"];

fn cvguard() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/cvguard");
    assert!(
        bin.exists(),
        "{} is missing: `make build-release` builds it",
        bin.display()
    );
    bin
}

/// Wall seconds and peak RSS in bytes (when GNU time is there) of one run of `args`.
fn measure(args: &[String], scratch: &Path) -> (f64, Option<u64>) {
    let time = Path::new("/usr/bin/time");
    let rss_file = scratch.join("time.txt");
    let mut cmd = if time.exists() {
        let mut c = Command::new(time);
        c.arg("-f").arg("%M").arg("-o").arg(&rss_file).arg(cvguard());
        c
    } else {
        Command::new(cvguard())
    };
    let t = Instant::now();
    let status = cmd
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run cvguard");
    let secs = t.elapsed().as_secs_f64();
    assert!(status.success(), "cvguard {args:?}: {status}");
    let rss = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024);
    (secs, rss)
}

fn main() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let board = match std::env::var_os("CVGUARD_BENCH_MONTH") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = scratch.path().join("month");
            let status = Command::new(cvguard())
                .arg("simulate")
                .arg("--out")
                .arg(&dir)
                .args(SIMULATE)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run cvguard simulate");
            assert!(status.success(), "cvguard simulate: {status}");
            dir
        }
    };
    let file = |name: &str| board.join(name).to_str().expect("a UTF-8 path").to_string();
    // The candidate of docs/TUNING.md: the daily threshold for ordinary employers at 2,500.
    let current = std::fs::read_to_string(file("cvguard.toml")).expect("the board's cvguard.toml");
    let candidate = scratch.path().join("candidate.toml");
    std::fs::write(
        &candidate,
        current.replacen("threshold = 4000\n", "threshold = 2500\n", 1),
    )
    .expect("write");

    let input = std::fs::read(file("events.ndjson")).expect("the board's events");
    let lines: Vec<&[u8]> = input.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    let events = lines.len();
    let rate = plain_parse_rate(&lines).max(plain_parse_rate(&lines));
    let parse_secs = events as f64 / rate;
    let mb = input.len() as f64 / 1e6;
    drop(lines);
    drop(input);

    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<String>>();
    let common = [
        "--profiles".to_string(),
        file("accounts.csv"),
        "--input".to_string(),
        file("events.ndjson"),
    ];
    let mut replay = s(&["replay", "--config", &file("cvguard.toml")]);
    replay.extend(common.iter().cloned());
    replay.extend(s(&["--alerts", "/dev/null", "--now", "2030-01-01T00:00:00Z"]));
    let mut backtest = s(&["backtest", "--config", candidate.to_str().expect("UTF-8")]);
    backtest.extend(s(&["--baseline", &file("cvguard.toml")]));
    backtest.extend(common.iter().cloned());
    backtest.extend(s(&["-o", "json"]));

    println!(
        "cvguard workbench benchmark: {} ({events} events, {mb:.0} MB), each command run twice, the better kept",
        board.display()
    );
    println!();
    println!("| step | wall time | x the parse | x one replay | peak RSS |");
    println!("|---|---|---|---|---|");
    println!("| plain serde_json parse, 1 thread (in memory) | {parse_secs:.2} s ({rate:.0} events/s) | 1.00 | | |");
    let mut replay_secs = None;
    for (name, args) in [
        ("replay (current config)", &replay),
        ("backtest, candidate and --baseline", &backtest),
    ] {
        let (a, b) = (measure(args, scratch.path()), measure(args, scratch.path()));
        let secs = a.0.min(b.0);
        let rss = a.1.zip(b.1).map(|(x, y)| x.min(y));
        let of_replay = replay_secs.map_or_else(String::new, |r: f64| format!("{:.2}", secs / r));
        replay_secs.get_or_insert(secs);
        println!(
            "| {name} | {secs:.2} s ({:.0} events/s) | {:.2} | {of_replay} | {} |",
            events as f64 / secs,
            secs / parse_secs,
            rss.map_or_else(|| "-".to_string(), |b| format!("{:.0} MB", b as f64 / 1e6))
        );
    }
}
