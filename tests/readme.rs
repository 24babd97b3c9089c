//! The README's "Running the service" walkthrough, run as written (#15): its shell block is
//! taken from README.md, so the two cannot drift, and run with bash in an empty folder
//! against the built binary. Only the binary's path and the port change. Afterwards only
//! the simulation's labelled attackers have incidents, the people to notify were
//! exported, and the token step ends with a 401 without the token and incidents with it.

use std::process::Command;

use cvguard_tests::service::free_port;

/// The first ```sh block after `heading` in README.md.
fn readme_block(heading: &str) -> String {
    let readme = std::fs::read_to_string(cvguard_tests::root().join("README.md")).unwrap();
    let section = &readme[readme
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading} in README.md"))..];
    let start = section.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let end = start + section[start..].find("```").expect("the block's end");
    section[start..end].to_string()
}

#[test]
fn the_readme_walkthrough_runs_as_written_and_flags_only_the_attackers() {
    let block = readme_block("## Running the service");
    assert!(block.starts_with("B=./target/release/cvguard\n"), "{block}");
    let port = free_port();
    let script = format!(
        "set -e\n{}",
        block
            .replacen(
                "B=./target/release/cvguard",
                &format!("B={}", cvguard_tests::bin().display()),
                1
            )
            .replace("127.0.0.1:8088", &format!("127.0.0.1:{port}"))
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        // The simulated board's config listens where the shipped one does; the test's port instead.
        .env("CVGUARD__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    let sim = dir.path().join("data/sim");
    let log = std::fs::read_to_string(sim.join("serve.log")).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "the walkthrough failed:\n{stdout}\n{}\nserve.log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every chunk was accepted whole: 202 bodies, none refused.
    let answers: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with("{\"accepted\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(answers.len() >= 2, "{stdout}");
    let lines = std::fs::read_to_string(sim.join("events.ndjson"))
        .unwrap()
        .lines()
        .count() as u64;
    let counted: u64 = answers.iter().map(|a| a["accepted"].as_u64().unwrap()).sum();
    assert_eq!(counted, lines, "{answers:?}");

    // Only the labelled attackers have incidents, and each of them has one.
    let config = sim.join("cvguard.toml");
    let incidents = cvguard_tests::list_incidents(&config);
    let labels = cvguard_tests::read_labels(&sim.join("labels.csv"));
    for i in &incidents {
        let (kind, key) = (i["key_kind"].as_str().unwrap(), i["key"].as_str().unwrap());
        let label = labels.iter().find(|l| l.key_kind == kind && l.key == key);
        assert!(
            label.is_some_and(|l| l.expected != "none"),
            "incident on {kind} {key} ({}), labelled {label:?}",
            i["rule"]
        );
    }
    for l in labels.iter().filter(|l| l.expected != "none") {
        assert!(
            incidents
                .iter()
                .any(|i| i["key_kind"] == l.key_kind.as_str() && i["key"] == l.key.as_str()),
            "no incident for {l:?}"
        );
    }
    let suspended: Vec<&serde_json::Value> = incidents.iter().filter(|i| i["action"] == "suspend").collect();
    assert!(
        !suspended.is_empty() && suspended.iter().all(|i| i["key"] == "harvester-1"),
        "{suspended:?}"
    );

    // The export has the harvester's 4,000 people to notify, one per row.
    let notify = std::fs::read_to_string(sim.join("notify.csv")).unwrap();
    assert!(notify.lines().count() > 4000, "{} rows", notify.lines().count());

    // The token step: 401 without it, the incidents with it.
    let tail: Vec<&str> = stdout.lines().rev().take(2).collect();
    assert_eq!(tail[1], "401", "{stdout}");
    assert_eq!(tail[0].parse::<usize>().unwrap(), incidents.len().min(100), "{stdout}");
    assert!(!sim.join("cvguard.pid").exists(), "the pid file outlived the service");
}
