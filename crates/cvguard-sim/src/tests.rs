use std::collections::{HashMap, HashSet};

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
    let mut seen = HashSet::new();
    for line in text.lines() {
        let ev = cvguard_core::parse_event(line.as_bytes(), &limits).expect(line);
        // Only a second delivery (of `duplicates`) comes after later events, by seconds.
        if seen.insert(line) {
            assert!(ev.ts >= last, "out of order: {line}");
        } else {
            assert!(last - ev.ts < 10_000, "delivered again too late: {line}");
        }
        last = last.max(ev.ts);
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
    let s = Scenarios::parse("turned,ip_ring,shared_credentials,duplicates,recruiting_drive").unwrap();
    assert_eq!(
        s,
        Scenarios {
            harvest: false,
            slow: false,
            org: false,
            partner: false,
            ..Scenarios::ALL
        }
    );
    for name in SCENARIO_NAMES {
        let one = Scenarios::parse(name).unwrap();
        assert_ne!(one, Scenarios::NONE, "{name}");
        assert!(Scenarios::parse("nope").unwrap_err().contains(name));
    }
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

// ---- The scenarios of issue #14, checked on the generated events. ----

const DAY_MS: i64 = 86_400_000;

/// One generated event, owned.
struct Ev {
    ts: i64,
    account: String,
    ip: String,
    action: String,
    cvs: Vec<String>,
    event_id: String,
    line: String,
}

fn events(text: &str) -> Vec<Ev> {
    text.lines()
        .map(|line| {
            let ev = cvguard_core::parse_event(line.as_bytes(), &Default::default()).expect(line);
            Ev {
                ts: ev.ts,
                account: ev.account_id.to_string(),
                ip: ev.ip.as_deref().unwrap_or_default().to_string(),
                action: ev.action.to_string(),
                cvs: ev.cv_ids.iter().map(|c| c.to_string()).collect(),
                event_id: ev.event_id.as_deref().unwrap_or_default().to_string(),
                line: line.to_string(),
            }
        })
        .collect()
}

/// A simulation with a few ordinary employers and only `scenarios`.
fn only(scenarios: &str, days: u32) -> (Vec<Ev>, Population, SimConfig) {
    let cfg = SimConfig {
        employers: 20,
        agencies: 1,
        days,
        scenarios: Scenarios::parse(scenarios).unwrap(),
        ..SimConfig::default()
    };
    let (text, population) = run(&cfg);
    (events(&text), population, cfg)
}

fn of<'a>(evs: &'a [Ev], account: &'a str) -> impl Iterator<Item = &'a Ev> + 'a {
    evs.iter().filter(move |e| e.account == account)
}

/// The largest value of a sliding window of `window_s` seconds over `(second, item)`
/// pairs, as the engine counts it: distinct items with an entry at a second `s > now -
/// window_s`, at every second with an entry.
fn max_sliding_distinct(mut entries: Vec<(i64, &str)>, window_s: i64) -> usize {
    entries.sort_unstable();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let (mut oldest, mut best) = (0, 0);
    for &(now, item) in &entries {
        *counts.entry(item).or_default() += 1;
        while entries[oldest].0 <= now - window_s {
            let old = entries[oldest].1;
            let n = counts.get_mut(old).unwrap();
            *n -= 1;
            if *n == 0 {
                counts.remove(old);
            }
            oldest += 1;
        }
        best = best.max(counts.len());
    }
    best
}

/// `(second, cv)` of an account's events with one of `actions`.
fn cv_entries<'a>(evs: &'a [Ev], account: &'a str, actions: &[&str]) -> Vec<(i64, &'a str)> {
    of(evs, account)
        .filter(|e| actions.contains(&e.action.as_str()))
        .flat_map(|e| e.cvs.iter().map(move |cv| (e.ts.div_euclid(1000), cv.as_str())))
        .collect()
}

/// Distinct CVs viewed or downloaded by `account` on each UTC day of the simulation.
fn distinct_per_day(evs: &[Ev], cfg: &SimConfig, account: &str) -> Vec<usize> {
    let mut days = vec![HashSet::new(); cfg.days as usize];
    for e in of(evs, account).filter(|e| e.action == "cv_view" || e.action == "cv_download") {
        days[((e.ts - cfg.start_ms) / DAY_MS) as usize].extend(e.cvs.iter().map(String::as_str));
    }
    days.iter().map(HashSet::len).collect()
}

fn label_of(population: &Population, key: &str) -> Option<(&'static str, &'static str, &'static str)> {
    let l = population.labels.iter().find(|l| l.key == key)?;
    Some((l.key_kind, l.scenario, l.expected))
}

/// A surging account's simulation, and the most distinct CVs the fixed rules would see of
/// it in any 24 or 48 hours (read) and any hour (downloaded).
struct Surging {
    evs: Vec<Ev>,
    population: Population,
    cfg: SimConfig,
    /// Distinct CVs read on each UTC day.
    per_day: Vec<usize>,
    max_24h: usize,
    max_48h: usize,
    max_downloads_1h: usize,
}

/// Simulates `scenario` for `days` and checks `account`'s quiet days, before the surge and
/// after it: at most 20 distinct CVs a day, 10 or more on most working days, none on some.
fn surging(scenario: &str, days: u32, account: &str) -> Surging {
    let (evs, population, cfg) = only(scenario, days);
    let per_day = distinct_per_day(&evs, &cfg, account);
    let surge = SURGE_DAY as usize..SURGE_DAY as usize + SURGE_DAYS as usize;
    let quiet: Vec<usize> = [&per_day[..surge.start], &per_day[surge.end..]].concat();
    assert!(quiet.iter().all(|n| *n <= 20), "{quiet:?}");
    assert!(quiet.iter().filter(|n| **n >= 10).count() >= 10, "{quiet:?}");
    assert!(quiet.contains(&0), "some days none: {quiet:?}");
    let read = cv_entries(&evs, account, &["cv_view", "cv_download"]);
    let downloads = cv_entries(&evs, account, &["cv_download"]);
    Surging {
        max_24h: max_sliding_distinct(read.clone(), 86_400),
        max_48h: max_sliding_distinct(read, 2 * 86_400),
        max_downloads_1h: max_sliding_distinct(downloads, 3_600),
        per_day,
        evs,
        population,
        cfg,
    }
}

impl Surging {
    /// Distinct CVs read on each surge day.
    fn surge(&self) -> &[usize] {
        &self.per_day[SURGE_DAY as usize..][..SURGE_DAYS as usize]
    }
}

#[test]
fn turned_reads_like_a_small_employer_then_2400_distinct_cvs_a_day_under_every_fixed_threshold() {
    let t = surging("turned", 28, "turned-1");
    assert!(t.surge().iter().all(|n| (2_400..=2_420).contains(n)), "{:?}", t.per_day);
    // 8 x the p90 of its history is far below the surge: the baseline's floor of 400 rules.
    let mut history = t.per_day[..SURGE_DAY as usize].to_vec();
    history.sort_unstable();
    assert!(8 * history[history.len() * 9 / 10] < 400, "{history:?}");
    // Under mass-harvest-24h (4,000), slow-harvest-48h (6,000) and download-burst-1h (1,500)
    // however the windows slide.
    assert!((2_400..4_000).contains(&t.max_24h), "{}", t.max_24h);
    assert!((4_800..6_000).contains(&t.max_48h), "{}", t.max_48h);
    assert!(t.max_downloads_1h < 100, "{}", t.max_downloads_1h);
    // Never a CV twice in the surge, in batches of at most 25, from an address of its own.
    let from_attacker: Vec<&Ev> = of(&t.evs, "turned-1").filter(|e| e.ip == TURNED_SURGE_IP).collect();
    let views: Vec<&str> = from_attacker
        .iter()
        .filter(|e| e.action == "cv_view")
        .flat_map(|e| e.cvs.iter().map(String::as_str))
        .collect();
    assert_eq!(views.len(), 3 * 2_400);
    assert_eq!(views.iter().collect::<HashSet<_>>().len(), views.len());
    assert!(from_attacker.iter().all(|e| e.cvs.len() <= 25));
    let surge_ms = t.cfg.start_ms + SURGE_DAY * DAY_MS;
    assert!(from_attacker
        .iter()
        .all(|e| (surge_ms..surge_ms + 3 * DAY_MS).contains(&e.ts)));
    let turned = t.population.accounts.iter().find(|a| a.id == "turned-1").unwrap();
    assert!(turned.open_vacancies <= 1 && turned.segment.is_none() && turned.org_id.is_none());
    assert_eq!(
        label_of(&t.population, "turned-1"),
        Some(("account_id", "turned", "alert"))
    );
}

#[test]
fn a_recruiting_drive_reads_3000_a_day_with_120_vacancies_under_their_thresholds() {
    let d = surging("recruiting_drive", 25, "drive-120");
    assert!(d.surge().iter().all(|n| (3_000..=3_020).contains(n)), "{:?}", d.per_day);
    let drive = d.population.accounts.iter().find(|a| a.id == "drive-120").unwrap();
    assert_eq!(drive.open_vacancies, 120);
    let mut accounts = Vec::new();
    write_accounts(&d.population, &mut accounts).unwrap();
    assert!(String::from_utf8(accounts).unwrap().contains("\ndrive-120,,,120\n"));
    // 120 vacancies: 100 each a day (12,000), 150 each in 48 hours (18,000), 50 each for the
    // baseline's floor (6,000), 25 downloads each an hour (3,000; it stays under 1,500).
    assert!((3_000..6_000).contains(&d.max_24h), "{}", d.max_24h);
    assert!(d.max_48h < 18_000, "{}", d.max_48h);
    assert!(d.max_downloads_1h < 1_500, "{}", d.max_downloads_1h);
    assert!(of(&d.evs, "drive-120").all(|e| e.ip == drive.ip));
    assert_eq!(
        label_of(&d.population, "drive-120"),
        Some(("account_id", "recruiting_drive", "none"))
    );
}

#[test]
fn the_surges_need_25_days() {
    let (evs, population, _) = only("turned,recruiting_drive", 24);
    let ids = ["turned-1", "drive-120"];
    assert!(evs.iter().all(|e| !ids.contains(&e.account.as_str())));
    assert!(population.accounts.iter().all(|a| !ids.contains(&a.id.as_str())));
    assert!(population.labels.iter().all(|l| l.scenario == "legit_heavy"));
}

#[test]
fn an_ip_ring_is_thirty_fresh_accounts_on_one_address_within_hours() {
    let (evs, population, _) = only("ip_ring", 3);
    let ring: Vec<&Ev> = evs.iter().filter(|e| e.ip == IP_RING_IP).collect();
    let accounts: HashSet<&str> = ring.iter().map(|e| e.account.as_str()).collect();
    assert_eq!(accounts.len(), 30);
    let first = ring.iter().map(|e| e.ts).min().unwrap();
    let last = ring.iter().map(|e| e.ts).max().unwrap();
    assert!(last - first < 4 * 3_600_000, "{}", last - first);
    for account in &accounts {
        assert!(of(&evs, account).all(|e| e.ip == IP_RING_IP));
        let read: HashSet<&str> = cv_entries(&evs, account, &["cv_view"])
            .into_iter()
            .map(|(_, cv)| cv)
            .collect();
        assert_eq!(read.len(), 40, "{account}");
        let a = population.accounts.iter().find(|a| &a.id == account).unwrap();
        assert_eq!((a.open_vacancies, a.segment.as_deref()), (0, None));
    }
    let labels: Vec<_> = population.labels.iter().filter(|l| l.scenario == "ip_ring").collect();
    assert_eq!(labels.len(), 1);
    assert_eq!(
        (labels[0].key_kind, labels[0].key.as_str(), labels[0].expected),
        ("ip", IP_RING_IP, "alert")
    );
}

#[test]
fn one_account_from_forty_addresses_in_an_hour() {
    let (evs, population, _) = only("shared_credentials", 3);
    let ips: Vec<(i64, &str)> = of(&evs, "sharedcreds-1")
        .map(|e| (e.ts.div_euclid(1000), e.ip.as_str()))
        .collect();
    assert_eq!(max_sliding_distinct(ips, 3_600), 40);
    let cvs = cv_entries(&evs, "sharedcreds-1", &["cv_view"]);
    let distinct: HashSet<&str> = cvs.iter().map(|(_, cv)| *cv).collect();
    assert!((150..=250).contains(&distinct.len()), "{}", distinct.len());
    assert_eq!(
        label_of(&population, "sharedcreds-1"),
        Some(("account_id", "shared_credentials", "alert"))
    );
}

#[test]
fn duplicates_are_exact_second_deliveries_of_a_searcher_under_the_scraping_rule() {
    let (evs, population, _) = only("duplicates", 2);
    let mine: Vec<(usize, &Ev)> = evs
        .iter()
        .enumerate()
        .filter(|(_, e)| e.account == "redelivered-1")
        .collect();
    let mut by_id: HashMap<&str, Vec<(usize, &Ev)>> = HashMap::new();
    for (i, e) in &mine {
        by_id.entry(&e.event_id).or_default().push((*i, e));
    }
    for copies in by_id.values() {
        let [(i, a), (j, b)] = copies[..] else {
            panic!("not delivered exactly twice: {}", copies[0].1.line)
        };
        assert_eq!(a.line, b.line);
        // The copy comes after events up to seconds newer than it, never minutes.
        let newest_before_copy = evs[i..j].iter().map(|e| e.ts).max().unwrap();
        assert!(newest_before_copy - a.ts < 10_000, "{}", a.line);
    }
    let views = by_id.values().filter(|c| c[0].1.action == "cv_view").count();
    assert!((10..=40).contains(&views), "{views}");
    // Counted once, under search-scraping-1h's 600 an hour; counted twice, over it.
    let searches = |copies: usize| -> usize {
        let secs = by_id
            .values()
            .filter(|c| c[0].1.action == "cv_search")
            .flat_map(|c| c.iter().take(copies).map(|(_, e)| e.ts.div_euclid(1000)))
            .collect();
        max_events_per_hour(secs)
    };
    let once = searches(1);
    assert!((350..600).contains(&once), "{once}");
    assert!(searches(2) >= 600);
    // Every other event has an id of its own.
    let others: Vec<&str> = evs
        .iter()
        .filter(|e| e.account != "redelivered-1")
        .map(|e| e.event_id.as_str())
        .collect();
    assert_eq!(others.iter().collect::<HashSet<_>>().len(), others.len());
    assert_eq!(
        label_of(&population, "redelivered-1"),
        Some(("account_id", "duplicates", "none"))
    );
}

/// Most events in a sliding hour (the `events` measure), from their seconds.
fn max_events_per_hour(mut secs: Vec<i64>) -> usize {
    secs.sort_unstable();
    let mut oldest = 0;
    let mut best = 0;
    for (i, now) in secs.iter().enumerate() {
        while secs[oldest] <= now - 3_600 {
            oldest += 1;
        }
        best = best.max(i + 1 - oldest);
    }
    best
}

#[test]
fn ordinary_accounts_share_no_address_and_use_one() {
    let cfg = SimConfig {
        employers: 600,
        agencies: 8,
        days: 1,
        ..SimConfig::default()
    };
    let evs = events(&run(&cfg).0);
    let mut accounts_per_ip: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut ips_per_account: HashMap<&str, HashSet<&str>> = HashMap::new();
    for e in &evs {
        accounts_per_ip.entry(&e.ip).or_default().insert(&e.account);
        ips_per_account.entry(&e.account).or_default().insert(&e.ip);
    }
    let crowded: Vec<&&str> = accounts_per_ip
        .iter()
        .filter(|(_, a)| a.len() >= 10)
        .map(|(ip, _)| ip)
        .collect();
    assert_eq!(crowded, [&IP_RING_IP]);
    let roaming: Vec<&&str> = ips_per_account
        .iter()
        .filter(|(_, i)| i.len() >= 20)
        .map(|(a, _)| a)
        .collect();
    assert_eq!(roaming, [&"sharedcreds-1"]);
    assert!(ips_per_account
        .iter()
        .all(|(a, i)| i.len() == 1 || *a == "sharedcreds-1"));
}

#[test]
fn the_new_scenarios_leave_every_other_line_as_it_was() {
    let cfg = SimConfig {
        days: 2,
        scenarios: Scenarios::parse("harvest,slow,org,partner").unwrap(),
        ..small()
    };
    let old = run(&cfg).0;
    let (all, population) = run(&SimConfig {
        scenarios: Scenarios::ALL,
        ..cfg.clone()
    });
    let old_accounts = Population::new(&cfg).accounts.len();
    let new: HashSet<&str> = population.accounts[old_accounts..]
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    assert!(new.len() > 30);
    let kept: Vec<&str> = all
        .lines()
        .filter(|l| {
            let ev = cvguard_core::parse_event(l.as_bytes(), &Default::default()).unwrap();
            !new.contains(ev.account_id.as_ref())
        })
        .collect();
    assert_eq!(kept, old.lines().collect::<Vec<_>>());
}
