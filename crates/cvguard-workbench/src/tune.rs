//! Thresholds from data: every key's peak window value per rule over the history (the
//! engine reports each key's value after every event its rule counts, the only moments it
//! can rise: [`cvguard_core::Engine::observe_values`]), its distribution per rule and
//! segment, and a proposed threshold per rule and segment (docs/TUNING.md):
//!
//! - by quantile: the nearest-rank `q`-quantile of the peaks of the keys fitted, times
//!   `margin`, rounded up;
//! - by alerts a week: the lowest threshold at which at most `N` keys a week of history
//!   (fitted keys only) would have been hit.
//!
//! A key is hit by a threshold `T` exactly when its peak reaches its effective threshold,
//! `max(T, per_vacancy x open vacancies)`: so what a proposal would have hit is exact for
//! rules without a baseline. For a baseline rule the proposal is its `factor`, from the
//! distribution of `value / statistic` over the moments the key was judged; the floor
//! stays, and its hits are approximate (the peak value and the peak ratio of a key need not
//! come at the same moment): `cvguard backtest` gives the exact answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use cvguard_core::{parse_event, Engine, KeyKind, RejectReason, Rule, RuleSet, ValueSeen};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

use crate::quantile::nearest_rank;

/// How proposals are made.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Method {
    /// `ceil(quantile(q) x margin)` of the fitted keys' peaks.
    Quantile { q: f64, margin: f64 },
    /// The lowest threshold hitting at most `per_week` fitted keys a week of history.
    AlertsPerWeek { per_week: f64 },
}

/// The segment name of keys a rule gives no segment threshold.
pub const DEFAULT_SEGMENT: &str = "default";

#[derive(Debug, Clone, Copy, Default)]
struct Peak {
    value: u64,
    at_ms: i64,
    /// Highest value / statistic while judged (baseline rules).
    ratio: Option<f64>,
    /// Highest value while judged (baseline rules).
    judged_value: u64,
}

/// Peaks as the history goes by.
pub struct Tuner {
    engine: Engine,
    seen: Vec<ValueSeen>,
    /// Per rule index: key -> peak.
    peaks: Vec<FxHashMap<String, Peak>>,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
}

impl Tuner {
    pub fn new(rules: Arc<RuleSet>) -> Tuner {
        let n = rules.rules.len();
        let mut engine = Engine::new(rules);
        engine.observe_values(true);
        Tuner {
            engine,
            seen: Vec::new(),
            peaks: (0..n).map(|_| FxHashMap::default()).collect(),
            first_ms: None,
            last_ms: None,
        }
    }

    pub fn feed(&mut self, line: &[u8]) {
        let limits = self.engine.rules().settings.limits;
        let mut alerts = Vec::new();
        match parse_event(line, &limits) {
            Ok(ev) => {
                if self.engine.process(&ev, None, &mut alerts) == cvguard_core::Outcome::Accepted {
                    self.first_ms = Some(self.first_ms.map_or(ev.ts, |f| f.min(ev.ts)));
                    self.last_ms = Some(self.last_ms.map_or(ev.ts, |l| l.max(ev.ts)));
                }
            }
            Err(reason) => {
                self.engine.reject(reason);
            }
        }
        self.engine.take_observed(&mut self.seen);
        for s in self.seen.drain(..) {
            let map = &mut self.peaks[s.rule];
            let peak = match map.get_mut(s.key.as_str()) {
                Some(p) => p,
                None => map.entry(s.key.as_str().to_string()).or_default(),
            };
            if s.value > peak.value {
                peak.value = s.value;
                peak.at_ms = s.event_time_ms;
            }
            if let Some(stat) = s.statistic {
                peak.judged_value = peak.judged_value.max(s.value);
                let ratio = if stat > 0.0 {
                    s.value as f64 / stat
                } else {
                    f64::INFINITY
                };
                if s.value > 0 {
                    peak.ratio = Some(peak.ratio.map_or(ratio, |r| r.max(ratio)));
                }
            }
        }
    }

    pub fn too_long(&mut self) {
        self.engine.reject(RejectReason::TooLarge);
    }

    pub fn usable_events(&self) -> u64 {
        let s = self.engine.stats();
        s.accepted + s.late + s.duplicates
    }

    pub fn events_read(&self) -> u64 {
        self.engine.stats().events
    }

    /// The distributions and proposals; `exclude` are (key_kind, key) pairs left out of the
    /// fit (still shown in what a proposal would hit).
    pub fn finish(self, method: Method, exclude: &FxHashSet<(String, String)>) -> TuneResult {
        let rules = self.engine.rules().clone();
        let days = match (self.first_ms, self.last_ms) {
            (Some(f), Some(l)) => ((l - f) as f64 / 86_400_000.0).max(1.0 / 24.0),
            _ => 0.0,
        };
        let ratio_q = match method {
            Method::Quantile { q, margin } => (q, margin),
            Method::AlertsPerWeek { .. } => (0.999, 1.5),
        };
        let mut out = Vec::new();
        for (ri, rule) in rules.rules.iter().enumerate() {
            let mut groups: BTreeMap<String, Vec<KeyPeak>> = BTreeMap::new();
            for (key, p) in &self.peaks[ri] {
                let (segment, per_vacancy_term) = segment_and_vacancy_term(&rules, rule, key);
                groups.entry(segment).or_default().push(KeyPeak {
                    key: key.clone(),
                    peak: if rule.baseline.is_some() {
                        p.judged_value
                    } else {
                        p.value
                    },
                    at: cvguard_core::timefmt::format_rfc3339_ms(p.at_ms),
                    ratio: p.ratio,
                    per_vacancy_term,
                    excluded: exclude.contains(&(rule.group_by.as_str().to_string(), key.clone())),
                });
            }
            for (segment, keys) in groups {
                out.push(fit(rule, &segment, keys, method, ratio_q, days));
            }
        }
        let fragment = toml_fragment(&out, method, days);
        let s = self.engine.stats();
        TuneResult {
            method,
            history_days: days,
            first_event: self.first_ms.map(cvguard_core::timefmt::format_rfc3339_ms),
            last_event: self.last_ms.map(cvguard_core::timefmt::format_rfc3339_ms),
            events: s.events,
            accepted: s.accepted,
            excluded_keys: exclude.len() as u64,
            groups: out,
            toml: fragment,
        }
    }
}

struct KeyPeak {
    key: String,
    peak: u64,
    at: String,
    ratio: Option<f64>,
    per_vacancy_term: u64,
    excluded: bool,
}

/// The segment whose threshold the rule gives `key` (or [`DEFAULT_SEGMENT`]), and its
/// `per_vacancy x open vacancies` term (0 without one), as `RuleSet::threshold_and_source`
/// decides them. A user key is fitted as `default` (its account is not known here).
fn segment_and_vacancy_term(rules: &RuleSet, rule: &Rule, key: &str) -> (String, u64) {
    let (segment, vacancies) = match rule.group_by {
        KeyKind::AccountId => rules.profiles.account(key).map_or((None, 0), |p| {
            (
                p.segment.clone().filter(|s| rule.segments.contains_key(s)),
                p.open_vacancies,
            )
        }),
        KeyKind::OrgId => rules.profiles.org(key).map_or((None, 0), |o| {
            let seg = o
                .segments
                .iter()
                .filter(|s| rule.segments.contains_key(*s))
                .max_by_key(|s| rule.segments[*s])
                .cloned();
            (seg, o.open_vacancies)
        }),
        KeyKind::UserId | KeyKind::Ip => (None, 0),
    };
    (
        segment.unwrap_or_else(|| DEFAULT_SEGMENT.to_string()),
        rule.per_vacancy.map_or(0, |p| p.saturating_mul(vacancies)),
    )
}

/// The distribution of a set of values.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Distribution<T> {
    pub n: u64,
    pub p50: Option<T>,
    pub p90: Option<T>,
    pub p99: Option<T>,
    pub p999: Option<T>,
    pub max: Option<T>,
}

pub fn distribution<T: Copy + PartialOrd>(mut v: Vec<T>) -> Distribution<T> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Distribution {
        n: v.len() as u64,
        p50: nearest_rank(&v, 0.5),
        p90: nearest_rank(&v, 0.9),
        p99: nearest_rank(&v, 0.99),
        p999: nearest_rank(&v, 0.999),
        max: v.last().copied(),
    }
}

/// A key a threshold hits.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hit {
    pub key: String,
    pub peak: u64,
    /// When the peak was reached.
    pub at: String,
    /// Left out of the fit (`--exclude`).
    pub excluded: bool,
}

/// One rule and segment: the peaks, the thresholds, and what they hit.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub rule: String,
    pub key_kind: KeyKind,
    pub segment: String,
    pub window: String,
    /// Peak values of the fitted keys: not excluded, and not allowed their peak by their
    /// vacancies already.
    pub peaks: Distribution<u64>,
    /// For a baseline rule: peak `value / statistic` of the fitted keys while judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratios: Option<Distribution<f64>>,
    /// The threshold configured now (the segment's, or the rule's).
    pub current: u64,
    /// The proposed threshold (for a baseline rule: the floor, unchanged).
    pub proposed: u64,
    /// For a baseline rule: its factor now and the proposed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposed_factor: Option<f64>,
    /// How the proposal came about, in words.
    pub why: String,
    /// Every key's peak, fitted or not, ascending (the report's histogram).
    pub all_peaks: Vec<u64>,
    /// Keys hit now, and by the proposal (every key, excluded ones marked).
    pub hit_now: u64,
    pub hit_by_proposal: Vec<Hit>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TuneResult {
    pub method: Method,
    pub history_days: f64,
    pub first_event: Option<String>,
    pub last_event: Option<String>,
    pub events: u64,
    pub accepted: u64,
    pub excluded_keys: u64,
    pub groups: Vec<Group>,
    /// The proposal as a TOML fragment to review and copy into the config.
    pub toml: String,
}

/// Keys whose peak reaches `max(threshold, their per-vacancy term)`.
fn hits(keys: &[KeyPeak], threshold: u64) -> impl Iterator<Item = &KeyPeak> {
    keys.iter()
        .filter(move |k| k.peak > 0 && k.peak >= threshold.max(k.per_vacancy_term))
}

/// The lowest threshold that hits at most `allowed` of `keys` (monotone: a higher
/// threshold never hits more).
pub fn lowest_threshold_within(keys: &[(u64, u64)], allowed: u64) -> u64 {
    let hit = |t: u64| keys.iter().filter(|(p, pv)| *p > 0 && *p >= t.max(*pv)).count() as u64;
    let (mut lo, mut hi) = (1u64, keys.iter().map(|k| k.0).max().unwrap_or(0) + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if hit(mid) <= allowed {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// `ceil(x x margin)`, at least 1.
pub fn with_margin(x: u64, margin: f64) -> u64 {
    ((x as f64 * margin).ceil() as u64).max(1)
}

fn fit(rule: &Rule, segment: &str, mut keys: Vec<KeyPeak>, method: Method, ratio_q: (f64, f64), days: f64) -> Group {
    keys.sort_by(|a, b| a.peak.cmp(&b.peak).then_with(|| a.key.cmp(&b.key)));
    // A key whose vacancies already allow its peak is hit by no threshold of the segment:
    // it says nothing about where the segment's threshold should be.
    let fitted: Vec<&KeyPeak> = keys
        .iter()
        .filter(|k| !k.excluded && k.peak > k.per_vacancy_term)
        .collect();
    let peaks = distribution(fitted.iter().map(|k| k.peak).filter(|p| *p > 0).collect());
    let current = rule.segments.get(segment).copied().unwrap_or(rule.threshold);
    let (mut proposed, mut why) = (current, String::from("no fitted key: kept"));
    let (mut ratios, mut current_factor, mut proposed_factor) = (None, None, None);
    if let Some(b) = &rule.baseline {
        let r = distribution(
            fitted
                .iter()
                .filter_map(|k| k.ratio)
                .filter(|r| r.is_finite())
                .collect(),
        );
        current_factor = Some(b.factor);
        let (q, margin) = ratio_q;
        if let Some(x) = nearest_rank(
            &{
                let mut v: Vec<f64> = fitted
                    .iter()
                    .filter_map(|k| k.ratio)
                    .filter(|r| r.is_finite())
                    .collect();
                v.sort_by(|a, b| a.total_cmp(b));
                v
            },
            q,
        ) {
            let f = ((x * margin) * 10.0).ceil() / 10.0;
            proposed_factor = Some(f.max(1.0));
            why = format!(
                "factor: p{} of value/statistic {x:.2} x margin {margin}; the floor stays",
                q * 100.0
            );
        }
        ratios = Some(r);
    } else if !fitted.is_empty() {
        match method {
            Method::Quantile { q, margin } => {
                let v: Vec<u64> = fitted.iter().map(|k| k.peak).collect();
                if let Some(x) = nearest_rank(&v, q) {
                    proposed = with_margin(x, margin);
                    why = format!("p{} of {} peaks, {x}, x margin {margin}", q * 100.0, v.len());
                }
            }
            Method::AlertsPerWeek { per_week } => {
                let allowed = (per_week * days / 7.0).floor() as u64;
                let pairs: Vec<(u64, u64)> = fitted.iter().map(|k| (k.peak, k.per_vacancy_term)).collect();
                proposed = lowest_threshold_within(&pairs, allowed);
                why = format!(
                    "lowest threshold hitting at most {allowed} fitted keys in {days:.1} days ({per_week} a week)"
                );
            }
        }
    }
    let hit_now = hits(&keys, current).count() as u64;
    let hit_by_proposal = match proposed_factor {
        // A key the proposed factor hits: its judged peak reaches the floor and its peak
        // ratio the factor (approximate, see the module's docs).
        Some(f) => keys
            .iter()
            .filter(|k| k.peak >= current.max(k.per_vacancy_term) && k.ratio.is_some_and(|r| r >= f))
            .collect::<Vec<_>>(),
        None => hits(&keys, proposed).collect(),
    }
    .into_iter()
    .map(|k| Hit {
        key: k.key.clone(),
        peak: k.peak,
        at: k.at.clone(),
        excluded: k.excluded,
    })
    .collect();
    Group {
        rule: rule.name.clone(),
        key_kind: rule.group_by,
        segment: segment.to_string(),
        window: rule.window_text.clone(),
        peaks,
        ratios,
        current,
        proposed,
        current_factor,
        proposed_factor,
        why,
        all_peaks: keys.iter().map(|k| k.peak).collect(),
        hit_now,
        hit_by_proposal,
    }
}

/// The proposals as TOML: per rule its `threshold`, its `[rules.segments]` and, for a
/// baseline rule, `[rules.baseline] factor`; each with what it is now.
pub fn toml_fragment(groups: &[Group], method: Method, days: f64) -> String {
    let how = match method {
        Method::Quantile { q, margin } => format!("quantile {q} x margin {margin}"),
        Method::AlertsPerWeek { per_week } => format!("at most {per_week} keys hit a week"),
    };
    let mut s = format!(
        "# cvguard tune: proposed from every key's peak value over {days:.1} days of history ({how}).\n\
         # Review each value, then copy it into the matching [[rules]] of the config: nothing was edited.\n"
    );
    let mut by_rule: BTreeMap<(usize, &str), Vec<&Group>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for g in groups {
        if !order.contains(&g.rule.as_str()) {
            order.push(&g.rule);
        }
        let i = order.iter().position(|r| *r == g.rule).unwrap_or(0);
        by_rule.entry((i, &g.rule)).or_default().push(g);
    }
    for ((_, rule), gs) in by_rule {
        s.push_str(&format!("\n[[rules]]\nname = \"{rule}\"\n"));
        if let Some(d) = gs.iter().find(|g| g.segment == DEFAULT_SEGMENT) {
            s.push_str(&format!(
                "threshold = {}    # now {}; {}\n",
                d.proposed, d.current, d.why
            ));
        }
        let segs: Vec<&&Group> = gs.iter().filter(|g| g.segment != DEFAULT_SEGMENT).collect();
        if !segs.is_empty() {
            s.push_str("[rules.segments]\n");
            for g in segs {
                s.push_str(&format!(
                    "{} = {}    # now {}; {}\n",
                    g.segment, g.proposed, g.current, g.why
                ));
            }
        }
        // One factor per rule: the largest any segment asks for.
        let factor = gs
            .iter()
            .filter_map(|g| g.proposed_factor)
            .fold(None, |m: Option<f64>, f| Some(m.map_or(f, |m| m.max(f))));
        if let Some(f) = factor {
            s.push_str(&format!(
                "[rules.baseline]\nfactor = {f}    # now {}\n",
                gs[0].current_factor.unwrap_or_default()
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_margin_rounds_up() {
        assert_eq!(with_margin(100, 1.5), 150);
        assert_eq!(with_margin(3, 1.1), 4);
        assert_eq!(with_margin(0, 2.0), 1);
    }

    proptest! {
        /// The threshold for at most `allowed` hits is the lowest such: it hits at most
        /// `allowed` keys, and one less would hit more.
        #[test]
        fn the_alerts_a_week_threshold_is_the_lowest_that_keeps_within_the_budget(
            keys in prop::collection::vec((0u64..5000, prop_oneof![Just(0u64), 0u64..6000]), 0..80),
            allowed in 0u64..20,
        ) {
            let hit = |t: u64| keys.iter().filter(|(p, pv)| *p > 0 && *p >= t.max(*pv)).count() as u64;
            let t = lowest_threshold_within(&keys, allowed);
            prop_assert!(t >= 1);
            prop_assert!(hit(t) <= allowed);
            if t > 1 {
                prop_assert!(hit(t - 1) > allowed);
            }
        }

        /// A quantile proposal with a margin above 1 hits at most the share 1 - q of
        /// the fitted keys (those strictly above the quantile), whatever the values.
        #[test]
        fn a_quantile_proposal_hits_no_more_than_the_tail_above_the_quantile(
            mut v in prop::collection::vec(1u64..100_000, 1..300),
            q in 0.5f64..=1.0,
            margin in 1.01f64..3.0,
        ) {
            v.sort_unstable();
            let t = with_margin(nearest_rank(&v, q).unwrap(), margin);
            let hit = v.iter().filter(|p| **p >= t).count() as f64;
            prop_assert!(hit <= ((1.0 - q) * v.len() as f64).floor() + 1e-9 || hit == 0.0,
                "{hit} hit of {} at q {q}", v.len());
        }
    }
}
