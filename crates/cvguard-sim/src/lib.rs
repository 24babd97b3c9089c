//! cvguard-sim: realistic job-board traffic as NDJSON, an account profile file and the
//! ground truth, with attack scenarios switched on by flag. Deterministic for a seed.
//!
//! Traffic is generated an hour at a time and written in event-time order, so memory
//! stays flat however many days are simulated.

mod population;
mod rng;
mod traffic;

use std::io::{self, Write};

pub use population::{
    Account, Actor, Label, Population, IP_RING_IP, SURGE_DAY, SURGE_DAYS, SURGE_MIN_DAYS, TURNED_SURGE_IP,
};
pub use rng::Rng;
pub use traffic::{write_events, TrafficSummary};

/// 2024-05-03T00:00:00Z, the Friday before the werk.nl harvest.
pub const WERK_NL_FRIDAY_MS: i64 = 1_714_694_400_000;

/// Which attack scenarios to add to the legitimate traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenarios {
    /// werk.nl: one account downloads 148,000 CVs in batches of 200 over a weekend.
    pub harvest: bool,
    /// One account harvests ~140 CVs an hour for 48 hours, under the daily threshold.
    pub slow: bool,
    /// Four accounts of one organisation, each under its own threshold.
    pub org: bool,
    /// An allowlisted partner reading 20,000 CVs a day.
    pub partner: bool,
    /// An established small employer turned harvester (stolen credentials): from day 22,
    /// 2,400 distinct CVs a UTC day for three days, under every fixed threshold. Only in
    /// simulations of 25 days or more.
    pub turned: bool,
    /// Thirty fresh accounts reading 40 CVs each from one address within a few hours.
    pub ip_ring: bool,
    /// One account used from 40 addresses within an hour.
    pub shared_credentials: bool,
    /// A busy searcher whose every event is delivered twice with the same `event_id`.
    pub duplicates: bool,
    /// A legitimate employer with 120 open vacancies reading 3,000 CVs a day for three days
    /// from day 22 after a quiet history. Only in simulations of 25 days or more.
    pub recruiting_drive: bool,
}

/// The scenario names `Scenarios::parse` accepts besides `all` and `none`.
pub const SCENARIO_NAMES: [&str; 9] = [
    "harvest",
    "slow",
    "org",
    "partner",
    "turned",
    "ip_ring",
    "shared_credentials",
    "duplicates",
    "recruiting_drive",
];

impl Scenarios {
    pub const ALL: Scenarios = Scenarios {
        harvest: true,
        slow: true,
        org: true,
        partner: true,
        turned: true,
        ip_ring: true,
        shared_credentials: true,
        duplicates: true,
        recruiting_drive: true,
    };
    pub const NONE: Scenarios = Scenarios {
        harvest: false,
        slow: false,
        org: false,
        partner: false,
        turned: false,
        ip_ring: false,
        shared_credentials: false,
        duplicates: false,
        recruiting_drive: false,
    };

    /// Parses a comma-separated list of [`SCENARIO_NAMES`], `all` or `none`.
    pub fn parse(text: &str) -> Result<Scenarios, String> {
        let mut s = Scenarios::NONE;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => s = Scenarios::ALL,
                "none" => {}
                "harvest" => s.harvest = true,
                "slow" => s.slow = true,
                "org" => s.org = true,
                "partner" => s.partner = true,
                "turned" => s.turned = true,
                "ip_ring" => s.ip_ring = true,
                "shared_credentials" => s.shared_credentials = true,
                "duplicates" => s.duplicates = true,
                "recruiting_drive" => s.recruiting_drive = true,
                other => {
                    return Err(format!(
                        "unknown scenario `{other}`; expected {}, all or none",
                        SCENARIO_NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(s)
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Start of simulated time (epoch ms, UTC).
    pub start_ms: i64,
    pub days: u32,
    /// Ordinary employers (heavy-tailed vacancies and activity).
    pub employers: usize,
    /// Staffing agencies: legitimate heavy users.
    pub agencies: usize,
    /// CVs on the platform.
    pub cv_pool: u32,
    pub scenarios: Scenarios,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            start_ms: WERK_NL_FRIDAY_MS,
            days: 3,
            employers: 3000,
            agencies: 8,
            cv_pool: 400_000,
            scenarios: Scenarios::ALL,
        }
    }
}

/// Writes `accounts.csv` (account_id,segment,org_id,open_vacancies).
pub fn write_accounts(population: &Population, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "account_id,segment,org_id,open_vacancies")?;
    for a in &population.accounts {
        writeln!(
            out,
            "{},{},{},{}",
            a.id,
            a.segment.as_deref().unwrap_or(""),
            a.org_id.as_deref().unwrap_or(""),
            a.open_vacancies
        )?;
    }
    Ok(())
}

/// Writes the ground truth: `key_kind,key,scenario,expected` with expected one of
/// `suspend` (must be suspended), `alert` (must alert, never be suspended) or `none`
/// (a legitimate heavy user: must raise nothing). Keys not listed are ordinary traffic
/// and should raise nothing either.
pub fn write_labels(population: &Population, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "key_kind,key,scenario,expected")?;
    for l in &population.labels {
        writeln!(out, "{},{},{},{}", l.key_kind, l.key, l.scenario, l.expected)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
