use super::*;

fn run(cfg: &SimConfig) -> (String, Population) {
    let population = Population::new(cfg);
    let mut out = Vec::new();
    write_events(cfg, &population, &mut out).unwrap();
    (String::from_utf8(out).unwrap(), population)
}

fn small() -> SimConfig {
    SimConfig {
        employers: 50,
        agencies: 1,
        ..SimConfig::default()
    }
}

#[test]
fn the_same_seed_gives_the_same_bytes() {
    let cfg = small();
    assert_eq!(run(&cfg).0, run(&cfg).0);
    let other = SimConfig { seed: 43, ..small() };
    assert_ne!(run(&cfg).0, run(&other).0);
}

#[test]
fn events_are_valid_contract_events_in_time_order() {
    let (text, _) = run(&small());
    let limits = cvguard_core::ParseLimits::default();
    let mut last = i64::MIN;
    let mut n = 0;
    for line in text.lines() {
        let ev = cvguard_core::parse_event(line.as_bytes(), &limits).expect(line);
        assert!(ev.ts >= last, "out of order: {line}");
        last = ev.ts;
        n += 1;
    }
    assert!(n > 10_000, "{n}");
}

#[test]
fn the_harvester_downloads_148_000_distinct_cvs_in_batches_of_200() {
    let cfg = SimConfig {
        employers: 0,
        agencies: 0,
        scenarios: Scenarios {
            harvest: true,
            ..Scenarios::NONE
        },
        ..SimConfig::default()
    };
    let (text, population) = run(&cfg);
    let mut cvs = std::collections::HashSet::new();
    let mut first_ts = None;
    let mut last_ts = 0;
    for line in text.lines() {
        let ev = cvguard_core::parse_event(line.as_bytes(), &Default::default()).unwrap();
        if ev.account_id == "harvester-1" && ev.action == "cv_download" {
            assert!(ev.cv_ids.len() <= 200);
            first_ts.get_or_insert(ev.ts);
            last_ts = ev.ts;
            cvs.extend(ev.cv_ids.iter().map(|c| c.to_string()));
        }
    }
    assert_eq!(cvs.len(), 148_000);
    let hours = (last_ts - first_ts.unwrap()) as f64 / 3_600_000.0;
    assert!((38.0..42.0).contains(&hours), "{hours}");
    assert!(population
        .labels
        .iter()
        .any(|l| l.key == "harvester-1" && l.expected == "suspend"));
}

#[test]
fn scenarios_parse() {
    assert_eq!(Scenarios::parse("all"), Ok(Scenarios::ALL));
    assert_eq!(Scenarios::parse("none"), Ok(Scenarios::NONE));
    let s = Scenarios::parse("harvest, org").unwrap();
    assert!(s.harvest && s.org && !s.slow && !s.partner);
    assert!(Scenarios::parse("everything").is_err());
}

#[test]
fn accounts_and_labels_files_have_headers_and_rows() {
    let population = Population::new(&small());
    let mut accounts = Vec::new();
    write_accounts(&population, &mut accounts).unwrap();
    let accounts = String::from_utf8(accounts).unwrap();
    assert!(accounts.starts_with("account_id,segment,org_id,open_vacancies\n"));
    assert!(accounts.contains("\nagency-01,staffing_agency,org-agency-01,0\n"));
    assert!(accounts.contains("\nbigco-120,,org-bigco,120\n"));
    let mut labels = Vec::new();
    write_labels(&population, &mut labels).unwrap();
    let labels = String::from_utf8(labels).unwrap();
    assert!(labels.contains("org_id,org-ring,org,alert"));
    assert!(labels.contains("account_id,partner-1,partner,alert"));
}
