//! Who uses the simulated job board: ordinary employers, staffing agencies, one large
//! employer, and the accounts of the attack scenarios, with the ground truth about them.

use crate::rng::Rng;
use crate::SimConfig;
#[cfg(test)]
use crate::WERK_NL_FRIDAY_MS;

/// How an account behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Actor {
    /// Reads CVs for its vacancies in office hours.
    Employer { views_per_day: f64 },
    /// werk.nl: `batches` downloads of 200 CVs, one every `interval_s`, from `start_ms`.
    Harvester {
        start_ms: i64,
        batches: u32,
        interval_s: i64,
        cv_offset: u32,
    },
    /// `batch` views every `interval_s` for `hours`, from `start_ms`.
    SlowAndLow {
        start_ms: i64,
        hours: i64,
        batch: u32,
        interval_s: i64,
        cv_offset: u32,
    },
    /// One of the organisation ring: `total` distinct views in batches of 10 over 12 hours.
    Ring { start_ms: i64, total: u32, cv_offset: u32 },
    /// A bulk partner: views around the clock in batches of 50.
    Partner { views_per_day: f64 },
    /// A small employer's quiet history (10-20 distinct CVs on most working days, some days
    /// none), then from `surge_ms`, on each of `surge_days` UTC days, `batches` batches of 25
    /// distinct CVs evenly over `hours` hours from `from_hour` UTC, the first `downloads` of
    /// each batch also downloaded; from `surge_ip` when set (someone else's address).
    Surge {
        surge_ms: i64,
        surge_days: u32,
        batches: u32,
        from_hour: i64,
        hours: i64,
        downloads: u32,
        cv_offset: u32,
        surge_ip: Option<&'static str>,
    },
    /// A freshly registered account reading `total` distinct CVs in one session of about 20
    /// minutes from `start_ms`.
    Fresh { start_ms: i64, total: u32, cv_offset: u32 },
    /// One account's credentials used from `ips` addresses within the hour from `start_ms`,
    /// `total` distinct CVs in all.
    SharedCredentials {
        start_ms: i64,
        ips: u32,
        total: u32,
        cv_offset: u32,
    },
    /// `per_hour` CV searches an hour for `hours` hours from `start_ms`, and `views` CV views
    /// among them; every event is delivered twice, the copy (same `event_id`, same line) a
    /// few seconds later.
    Redelivered {
        start_ms: i64,
        hours: i64,
        per_hour: u32,
        views: u32,
        cv_offset: u32,
    },
}

#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub segment: Option<String>,
    pub org_id: Option<String>,
    pub open_vacancies: u64,
    pub ip: String,
    pub users: Vec<String>,
    pub user_agent: &'static str,
    pub actor: Actor,
}

/// One line of the ground truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub key_kind: &'static str,
    pub key: String,
    pub scenario: &'static str,
    pub expected: &'static str,
}

#[derive(Debug, Clone)]
pub struct Population {
    pub accounts: Vec<Account>,
    pub labels: Vec<Label>,
}

const BROWSERS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) Safari/605.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Firefox/125.0",
    "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0",
];

pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const DAY_MS: i64 = 24 * HOUR_MS;

/// `turned` and `recruiting_drive` surge from this UTC day of the simulation (0-based) ...
pub const SURGE_DAY: i64 = 21;
/// ... for this many UTC days ...
pub const SURGE_DAYS: u32 = 3;
/// ... and are simulated only when the simulation has at least this many days.
pub const SURGE_MIN_DAYS: u32 = 25;
/// The address of the `ip_ring` scenario's accounts.
pub const IP_RING_IP: &str = "198.51.100.200";
/// Where the `turned` account's harvest comes from (its employer works from its office).
pub const TURNED_SURGE_IP: &str = "198.51.100.180";

/// Local time on the simulated board is UTC+2 (the Netherlands in summer).
pub(crate) const LOCAL_OFFSET_MS: i64 = 2 * HOUR_MS;

/// Monday = 0 ... Sunday = 6, in local time.
pub(crate) fn local_weekday(ms: i64) -> i64 {
    // 1970-01-01 was a Thursday (3).
    ((ms + LOCAL_OFFSET_MS).div_euclid(DAY_MS) + 3).rem_euclid(7)
}

/// The first Saturday at `hour` local time at or after `from`.
fn first_saturday(from: i64, hour: i64) -> i64 {
    let local_midnight = (from + LOCAL_OFFSET_MS).div_euclid(DAY_MS) * DAY_MS - LOCAL_OFFSET_MS;
    let mut t = local_midnight + hour * HOUR_MS;
    while t < from || local_weekday(t) != 5 {
        t += DAY_MS;
    }
    t
}

/// The first time at `hour` UTC at or after `from`.
fn next_utc_hour(from: i64, hour: i64) -> i64 {
    let t = from.div_euclid(DAY_MS) * DAY_MS + hour * HOUR_MS;
    if t < from {
        t + DAY_MS
    } else {
        t
    }
}

impl Population {
    pub fn new(cfg: &SimConfig) -> Population {
        let rng = Rng::new(cfg.seed);
        let mut accounts = Vec::new();
        let mut labels = Vec::new();
        let mut label = |key_kind, key: &str, scenario, expected| {
            labels.push(Label {
                key_kind,
                key: key.to_string(),
                scenario,
                expected,
            })
        };

        let mut r = rng.fork(1);
        for i in 0..cfg.employers {
            // Most employers have one or two vacancies; a few have dozens.
            let vacancies = (r.pareto(1.0, 1.6).floor() as u64).min(40);
            let users = (1 + r.range(0, 3)) as usize;
            let id = format!("emp-{:05}", i + 1);
            accounts.push(Account {
                users: (1..=users).map(|u| format!("u-{id}-{u}")).collect(),
                ip: format!("10.{}.{}.{}", 1 + i / 62_500, (i / 250) % 250, 1 + i % 250),
                user_agent: BROWSERS[i % BROWSERS.len()],
                segment: None,
                org_id: None,
                open_vacancies: vacancies,
                actor: Actor::Employer {
                    views_per_day: vacancies as f64 * (3.0 + 9.0 * r.unit()),
                },
                id,
            });
        }
        let mut r = rng.fork(2);
        for i in 0..cfg.agencies {
            let id = format!("agency-{:02}", i + 1);
            label("account_id", &id, "legit_heavy", "none");
            accounts.push(Account {
                users: (1..=10).map(|u| format!("u-{id}-{u}")).collect(),
                ip: format!("192.0.2.{}", 10 + i % 200),
                user_agent: BROWSERS[i % BROWSERS.len()],
                segment: Some("staffing_agency".into()),
                org_id: Some(format!("org-{id}")),
                open_vacancies: 0,
                actor: Actor::Employer {
                    views_per_day: 4000.0 + 5000.0 * r.unit(),
                },
                id,
            });
        }
        label("account_id", "bigco-120", "legit_heavy", "none");
        accounts.push(Account {
            id: "bigco-120".into(),
            users: (1..=6).map(|u| format!("u-bigco-120-{u}")).collect(),
            ip: "192.0.2.250".into(),
            user_agent: BROWSERS[0],
            segment: None,
            org_id: Some("org-bigco".into()),
            open_vacancies: 120,
            actor: Actor::Employer { views_per_day: 6000.0 },
        });

        let s = cfg.scenarios;
        let saturday_morning = first_saturday(cfg.start_ms, 6);
        if s.harvest {
            label("account_id", "harvester-1", "harvest", "suspend");
            label("ip", "198.51.100.66", "harvest", "alert");
            accounts.push(Account {
                id: "harvester-1".into(),
                users: vec!["u-harvester-1".into()],
                ip: "198.51.100.66".into(),
                user_agent: "python-requests/2.31.0",
                segment: None,
                org_id: None,
                open_vacancies: 1,
                actor: Actor::Harvester {
                    start_ms: saturday_morning,
                    batches: 740,
                    // 740 batches over about 40 hours.
                    interval_s: 195,
                    cv_offset: 0,
                },
            });
        }
        if s.slow {
            label("account_id", "slowlow-1", "slow", "alert");
            accounts.push(Account {
                id: "slowlow-1".into(),
                users: vec!["u-slowlow-1".into()],
                ip: "198.51.100.77".into(),
                user_agent: BROWSERS[1],
                segment: None,
                org_id: None,
                open_vacancies: 2,
                actor: Actor::SlowAndLow {
                    start_ms: cfg.start_ms,
                    hours: 48,
                    batch: 20,
                    // 7 batches of 20 an hour: 3,360 a day, under the daily 4,000.
                    interval_s: 514,
                    cv_offset: 160_000,
                },
            });
        }
        if s.org {
            label("org_id", "org-ring", "org", "alert");
            for i in 0..4u32 {
                let id = format!("ring-{}", i + 1);
                label("account_id", &id, "org", "none");
                accounts.push(Account {
                    users: vec![format!("u-{id}")],
                    ip: format!("198.51.100.{}", 100 + i),
                    user_agent: BROWSERS[2],
                    segment: None,
                    org_id: Some("org-ring".into()),
                    open_vacancies: 1,
                    actor: Actor::Ring {
                        start_ms: saturday_morning + 2 * HOUR_MS,
                        total: 2600,
                        cv_offset: 200_000 + i * 2600,
                    },
                    id,
                });
            }
        }
        if s.partner {
            label("account_id", "partner-1", "partner", "alert");
            // Its organisation adds up to the same reading: expected, and never suspended.
            label("org_id", "org-partner", "partner", "alert");
            accounts.push(Account {
                id: "partner-1".into(),
                users: vec!["u-partner-feed".into()],
                ip: "203.0.113.5".into(),
                user_agent: "partner-feed/3.2",
                segment: Some("partner".into()),
                org_id: Some("org-partner".into()),
                open_vacancies: 0,
                actor: Actor::Partner {
                    views_per_day: 20_000.0,
                },
            });
        }
        add_issue_14_scenarios(cfg, &mut accounts, &mut label);
        Population { accounts, labels }
    }
}

/// The scenarios of issue #14 ("detection that knows normal"), after every other account so
/// that the accounts before them, and their traffic, stay exactly as they were.
fn add_issue_14_scenarios(
    cfg: &SimConfig,
    accounts: &mut Vec<Account>,
    label: &mut impl FnMut(&'static str, &str, &'static str, &'static str),
) {
    let s = cfg.scenarios;
    let sim_end = cfg.start_ms + i64::from(cfg.days) * DAY_MS;
    // Whether `[from, from + span)` lies inside the simulation.
    let fits = |from: i64, span: i64| from >= cfg.start_ms && from + span <= sim_end;
    let surge_ms = cfg.start_ms.div_euclid(DAY_MS) * DAY_MS + SURGE_DAY * DAY_MS;
    let surges = cfg.days >= SURGE_MIN_DAYS;
    let employer = |id: &str, users: usize, ip: &str, vacancies: u64, actor: Actor| Account {
        id: id.into(),
        users: (1..=users).map(|u| format!("u-{id}-{u}")).collect(),
        ip: ip.into(),
        user_agent: BROWSERS[0],
        segment: None,
        org_id: None,
        open_vacancies: vacancies,
        actor,
    };
    if s.turned && surges {
        label("account_id", "turned-1", "turned", "alert");
        // 96 batches of 25 a day from 08:00 to 23:00 local: 2,400 distinct CVs per UTC
        // day, and as the day repeats, about 2,400 in any 24 hours and 4,800 in any 48.
        accounts.push(employer(
            "turned-1",
            1,
            "10.250.0.1",
            1,
            Actor::Surge {
                surge_ms,
                surge_days: SURGE_DAYS,
                batches: 96,
                from_hour: 6,
                hours: 15,
                downloads: 1,
                cv_offset: 220_000,
                surge_ip: Some(TURNED_SURGE_IP),
            },
        ));
    }
    let ring_start = next_utc_hour(cfg.start_ms, 19);
    if s.ip_ring && fits(ring_start, 4 * HOUR_MS) {
        label("ip", IP_RING_IP, "ip_ring", "alert");
        // Thirty sessions, one every six minutes from 21:00 local.
        for k in 0..30u32 {
            let id = format!("ipring-{:02}", k + 1);
            accounts.push(employer(
                &id,
                1,
                IP_RING_IP,
                0,
                Actor::Fresh {
                    start_ms: ring_start + i64::from(k) * 6 * 60_000,
                    total: 40,
                    cv_offset: 260_000 + k * 40,
                },
            ));
        }
    }
    let shared_start = next_utc_hour(cfg.start_ms, 9);
    if s.shared_credentials && fits(shared_start, HOUR_MS) {
        label("account_id", "sharedcreds-1", "shared_credentials", "alert");
        accounts.push(employer(
            "sharedcreds-1",
            1,
            "203.0.113.100",
            1,
            Actor::SharedCredentials {
                start_ms: shared_start,
                ips: 40,
                total: 200,
                cv_offset: 272_000,
            },
        ));
    }
    let redelivered_start = next_utc_hour(cfg.start_ms, 8);
    if s.duplicates && fits(redelivered_start, 2 * HOUR_MS) {
        label("account_id", "redelivered-1", "duplicates", "none");
        accounts.push(employer(
            "redelivered-1",
            3,
            "10.250.0.3",
            2,
            Actor::Redelivered {
                start_ms: redelivered_start,
                hours: 2,
                per_hour: 400,
                views: 24,
                cv_offset: 274_000,
            },
        ));
    }
    if s.recruiting_drive && surges {
        label("account_id", "drive-120", "recruiting_drive", "none");
        // 120 batches of 25 a day from 08:00 to 20:00 local: 3,000 distinct CVs per UTC day.
        accounts.push(employer(
            "drive-120",
            8,
            "10.250.0.2",
            120,
            Actor::Surge {
                surge_ms,
                surge_days: SURGE_DAYS,
                batches: 120,
                from_hour: 6,
                hours: 12,
                downloads: 3,
                cv_offset: 240_000,
                surge_ip: None,
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekdays_and_the_first_saturday() {
        assert_eq!(local_weekday(WERK_NL_FRIDAY_MS), 4, "3 May 2024 was a Friday");
        let sat = first_saturday(WERK_NL_FRIDAY_MS, 6);
        // 2024-05-04T06:00+02:00 = 04:00Z.
        assert_eq!(sat, 1_714_795_200_000);
    }
}
