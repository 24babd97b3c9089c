//! Rule specifications as written in config, and their compiled, validated form.

use std::collections::BTreeMap;
use std::fmt;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::baseline::{Baseline, BaselineSpec};
use crate::event::{ParseLimits, DEFAULT_MAX_CV_IDS};
use crate::profiles::Profiles;
use crate::timefmt::Millis;

/// What a rule counts per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    AccountId,
    OrgId,
    UserId,
    Ip,
}

impl KeyKind {
    pub const ALL: [KeyKind; 4] = [KeyKind::AccountId, KeyKind::OrgId, KeyKind::UserId, KeyKind::Ip];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::AccountId => "account_id",
            KeyKind::OrgId => "org_id",
            KeyKind::UserId => "user_id",
            KeyKind::Ip => "ip",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Number of events.
    Events,
    /// CV ids touched, repeats counted.
    Cvs,
    /// Distinct CV ids touched (exact).
    DistinctCvs,
    /// Distinct `account_id`s seen (exact): many accounts behind one ip or user.
    DistinctAccounts,
    /// Distinct `user_id`s seen (exact); an event without one adds nothing.
    DistinctUsers,
    /// Distinct `ip`s seen (exact): one account used from many addresses.
    DistinctIps,
}

/// What a distinct measure counts the distinct values of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DistinctField {
    Cvs,
    Accounts,
    Users,
    Ips,
}

/// Which term of a rule set a key's effective threshold (alerts and the account view
/// say it, so an analyst can read why a key fired, or did not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdSource {
    /// The rule's `threshold`.
    #[default]
    Rule,
    /// The threshold of a segment the account (or org) is in.
    Segment,
    /// `per_vacancy` times the open vacancies, when larger.
    PerVacancy,
    /// `factor` times the statistic of the key's own history, when larger than the floor.
    Baseline,
}

impl ThresholdSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ThresholdSource::Rule => "rule",
            ThresholdSource::Segment => "segment",
            ThresholdSource::PerVacancy => "per_vacancy",
            ThresholdSource::Baseline => "baseline",
        }
    }
}

impl Measure {
    /// The field a distinct measure counts; `None` for `events` and `cvs`.
    pub fn distinct_field(self) -> Option<DistinctField> {
        match self {
            Measure::Events | Measure::Cvs => None,
            Measure::DistinctCvs => Some(DistinctField::Cvs),
            Measure::DistinctAccounts => Some(DistinctField::Accounts),
            Measure::DistinctUsers => Some(DistinctField::Users),
            Measure::DistinctIps => Some(DistinctField::Ips),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Events => "events",
            Measure::Cvs => "cvs",
            Measure::DistinctCvs => "distinct_cvs",
            Measure::DistinctAccounts => "distinct_accounts",
            Measure::DistinctUsers => "distinct_users",
            Measure::DistinctIps => "distinct_ips",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    #[default]
    Alert,
    Suspend,
}

impl Response {
    pub fn as_str(self) -> &'static str {
        match self {
            Response::Alert => "alert",
            Response::Suspend => "suspend",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    #[default]
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// One `[[rules]]` entry as written in config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique name; appears in alerts, metrics and incidents.
    pub name: String,
    /// Event actions this rule counts (`cv_view`, `cv_download`, ...). Not empty.
    pub actions: Vec<String>,
    /// What the rule counts per: `account_id`, `org_id`, `user_id` or `ip`.
    pub group_by: KeyKind,
    /// `events`, `cvs` (ids touched, repeats counted) or `distinct_cvs`.
    pub measure: Measure,
    /// Sliding window length in humantime syntax (`10m`, `24h`), whole seconds, at most 31 days.
    pub window: String,
    /// The rule fires when the value reaches this (>=). At least 1.
    pub threshold: u64,
    /// Optional: effective threshold = max(threshold, per_vacancy x open vacancies).
    #[serde(default)]
    pub per_vacancy: Option<u64>,
    /// `alert` or `suspend`.
    #[serde(default)]
    pub response: Response,
    /// `info`, `low`, `medium`, `high` or `critical`.
    #[serde(default)]
    pub severity: Severity,
    /// A segment's threshold replaces `threshold` for accounts of that segment.
    #[serde(default)]
    pub segments: BTreeMap<String, u64>,
    /// Record "would suspend" instead of suspending, for this rule only.
    #[serde(default)]
    pub dry_run: bool,
    /// Free text for people reading alerts.
    #[serde(default)]
    pub description: Option<String>,
    /// The key's own history: fire at `max(threshold, factor x statistic)` of its daily
    /// values (see `crate::baseline`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineSpec>,
}

/// The `[engine]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// How far behind the newest event time an event may be and still count.
    #[serde(default = "default_allowed_lateness")]
    pub allowed_lateness: String,
    /// How far ahead of the source's clock an event may be before it is rejected.
    #[serde(default = "default_future_skew")]
    pub future_skew: String,
    /// Most CV ids in one event; a larger event is rejected, not truncated.
    #[serde(default = "default_max_cv_ids")]
    pub max_cv_ids: usize,
    /// Largest event in bytes.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Longest string field (action, CV id, event, user, org id, IP, user agent) in
    /// bytes; an event with a longer one is rejected (`field_too_long`).
    #[serde(default = "default_max_field_bytes")]
    pub max_field_bytes: usize,
    /// Most keys of one kind (accounts, orgs, users, IPs) an instance tracks at once.
    /// Past it, events of new keys of that kind are not tracked for that kind (counted as
    /// `keys_refused`, with a system alert): memory stays bounded whatever is sent.
    #[serde(default = "default_max_tracked_keys")]
    pub max_tracked_keys: usize,
    /// An event whose `event_id` was accepted less than this much event time ago is a
    /// duplicate delivery: counted as `duplicate`, not applied again. `0s` turns it off.
    #[serde(default = "default_dedupe_window")]
    pub dedupe_window: String,
    /// Global dry run: every `suspend` decision becomes an alert with reason `dry_run`.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_allowed_lateness() -> String {
    "5m".into()
}
fn default_future_skew() -> String {
    "5m".into()
}
fn default_max_cv_ids() -> usize {
    DEFAULT_MAX_CV_IDS
}
fn default_max_event_bytes() -> usize {
    ParseLimits::default().max_event_bytes
}
fn default_max_field_bytes() -> usize {
    ParseLimits::default().max_field_bytes
}
fn default_max_tracked_keys() -> usize {
    2_000_000
}
fn default_dedupe_window() -> String {
    "10m".into()
}

impl Default for EngineSpec {
    fn default() -> Self {
        EngineSpec {
            allowed_lateness: default_allowed_lateness(),
            future_skew: default_future_skew(),
            max_cv_ids: default_max_cv_ids(),
            max_event_bytes: default_max_event_bytes(),
            max_field_bytes: default_max_field_bytes(),
            max_tracked_keys: default_max_tracked_keys(),
            dedupe_window: default_dedupe_window(),
            dry_run: false,
        }
    }
}

/// A problem found while validating rules; the config loader adds the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The rule's name (or `rules[i]` when it has none); `None` outside `[[rules]]`.
    pub rule: Option<String>,
    /// The key, as a path: `window`, `engine.allowed_lateness`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(rule) => write!(f, "rule `{rule}`, key `{}`: {}", self.key, self.message),
            None => write!(f, "key `{}`: {}", self.key, self.message),
        }
    }
}

/// A validated rule, ready for the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub actions: Vec<String>,
    pub group_by: KeyKind,
    pub measure: Measure,
    /// The window as configured, for output (`"24h"`).
    pub window_text: String,
    pub window_secs: i64,
    pub threshold: u64,
    pub per_vacancy: Option<u64>,
    pub response: Response,
    pub severity: Severity,
    pub segments: BTreeMap<String, u64>,
    pub dry_run: bool,
    pub description: Option<String>,
    /// `[rules.baseline]`: the effective threshold is also at least `factor x statistic`
    /// of the key's daily values, and the rule is silent for a key younger than
    /// `min_history`.
    pub baseline: Option<Baseline>,
    /// Bit i set when action id i counts for this rule.
    pub(crate) action_mask: u64,
}

/// Engine-wide settings, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    pub allowed_lateness_ms: Millis,
    pub future_skew_ms: Millis,
    pub limits: ParseLimits,
    pub dry_run: bool,
    /// Per key kind, per instance (an engine tracks its share, see `Engine::share_keys`).
    pub max_tracked_keys: usize,
    /// 0: no deduplication.
    pub dedupe_window_ms: Millis,
}

/// Longest accepted window. The engine keeps exact state for it, so it bounds memory.
pub const MAX_WINDOW_SECS: i64 = 31 * 24 * 3600;
/// Each rule's action set is a bit in a u64.
const MAX_DISTINCT_ACTIONS: usize = 64;
/// A key keeps one bit per rule of its kind for whether the rule is firing.
const MAX_RULES_PER_KIND: usize = 64;

/// Everything the engine needs to decide: rules, settings, profiles and allowlist.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub settings: EngineSettings,
    pub profiles: Profiles,
    allowlist: FxHashSet<String>,
    action_ids: FxHashMap<String, u8>,
    /// For each key kind, the indexes of its rules, in config order.
    by_kind: [Vec<usize>; 4],
    /// For each key kind, the union of its rules' action masks.
    kind_mask: [u64; 4],
    /// For each key kind, its longest window in seconds (0 when it has no rules).
    max_window_secs: [i64; 4],
    /// Actions (as a bit mask) counted by some `distinct_cvs` rule: only their CV ids are interned.
    distinct_mask: u64,
    /// For each key kind, whether one of its rules has a `[rules.baseline]`.
    has_baseline: [bool; 4],
    /// Identifies the rules and settings that shape engine state; a snapshot taken
    /// under other rules is not restored.
    fingerprint: u64,
}

impl RuleSet {
    /// Validates and compiles. Returns every problem at once.
    pub fn compile(
        engine: &EngineSpec,
        specs: &[RuleSpec],
        profiles: Profiles,
        allowlist: &[String],
    ) -> Result<RuleSet, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let settings = compile_engine(engine, &mut issues);
        let mut seen_names = FxHashSet::default();
        let mut action_ids: FxHashMap<String, u8> = FxHashMap::default();
        let mut rules = Vec::with_capacity(specs.len());
        let mut per_kind = [0usize; 4];
        for (i, spec) in specs.iter().enumerate() {
            let label = if spec.name.trim().is_empty() {
                format!("rules[{i}]")
            } else {
                spec.name.clone()
            };
            let mut issue = |key: &str, message: String| {
                issues.push(ConfigIssue {
                    rule: Some(label.clone()),
                    key: key.to_string(),
                    message,
                })
            };
            if spec.name.trim().is_empty() {
                issue("name", "must not be empty".into());
            } else if !seen_names.insert(spec.name.clone()) {
                issue("name", format!("duplicate rule name `{}`", spec.name));
            }
            if spec.actions.is_empty() {
                issue("actions", "must name at least one action".into());
            }
            let mut action_mask = 0u64;
            for action in &spec.actions {
                if action.is_empty() {
                    issue("actions", "an action must not be empty".into());
                    continue;
                }
                let next = action_ids.len();
                let id = match action_ids.get(action) {
                    Some(id) => *id,
                    None if next < MAX_DISTINCT_ACTIONS => {
                        action_ids.insert(action.clone(), next as u8);
                        next as u8
                    }
                    None => {
                        issue(
                            "actions",
                            format!("more than {MAX_DISTINCT_ACTIONS} distinct actions across all rules"),
                        );
                        continue;
                    }
                };
                action_mask |= 1 << id;
            }
            let window_secs = match parse_window(&spec.window) {
                Ok(secs) => secs,
                Err(message) => {
                    issue("window", message);
                    0
                }
            };
            if spec.threshold == 0 {
                issue("threshold", "must be at least 1".into());
            }
            if spec.per_vacancy == Some(0) {
                issue("per_vacancy", "must be at least 1 when set".into());
            }
            for (segment, threshold) in &spec.segments {
                if *threshold == 0 {
                    issue(&format!("segments.{segment}"), "must be at least 1".into());
                }
            }
            per_kind[spec.group_by.index()] += 1;
            if per_kind[spec.group_by.index()] == MAX_RULES_PER_KIND + 1 {
                issue(
                    "group_by",
                    format!(
                        "more than {MAX_RULES_PER_KIND} rules group by `{}`",
                        spec.group_by.as_str()
                    ),
                );
            }
            let same_field = matches!(
                (spec.group_by, spec.measure),
                (KeyKind::AccountId, Measure::DistinctAccounts)
                    | (KeyKind::UserId, Measure::DistinctUsers)
                    | (KeyKind::Ip, Measure::DistinctIps)
            );
            if same_field {
                issue(
                    "measure",
                    format!(
                        "`{}` grouped by `{}` is always 1; count another field (e.g. distinct_ips per account, \
                         distinct_accounts per ip)",
                        spec.measure.as_str(),
                        spec.group_by.as_str()
                    ),
                );
            }
            let baseline = spec.baseline.as_ref().and_then(|b| match Baseline::compile(b) {
                Ok(b) => Some(b),
                Err(problems) => {
                    for (key, message) in problems {
                        issue(&format!("baseline.{key}"), message);
                    }
                    None
                }
            });
            if spec.group_by == KeyKind::Ip && !spec.segments.is_empty() {
                issue(
                    "segments",
                    "an ip is shared by many accounts, so it has no segment; use threshold alone".into(),
                );
            }
            rules.push(Rule {
                name: spec.name.clone(),
                actions: spec.actions.clone(),
                group_by: spec.group_by,
                measure: spec.measure,
                window_text: spec.window.trim().to_string(),
                window_secs,
                threshold: spec.threshold,
                per_vacancy: spec.per_vacancy,
                response: spec.response,
                severity: spec.severity,
                segments: spec.segments.clone(),
                dry_run: spec.dry_run,
                description: spec.description.clone(),
                baseline,
                action_mask,
            });
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let fingerprint = {
            // What the state's layout and values depend on, and nothing else: each rule's
            // name, key kind, measure, window, actions and length of history, in order,
            // and the engine settings. A restart after a change of threshold, segments,
            // per_vacancy, response, severity, dry run, factor, statistic, min_history or
            // description keeps every window and history (as a reload does: effective
            // thresholds are computed afresh at restore).
            type Shape<'r> = (&'r str, KeyKind, Measure, i64, Vec<&'r str>, u32);
            let shapes: Vec<Shape<'_>> = rules
                .iter()
                .map(|r| {
                    let mut actions: Vec<&str> = r.actions.iter().map(String::as_str).collect();
                    actions.sort_unstable();
                    let history = r.baseline.map_or(0, |b| b.history_days);
                    (r.name.as_str(), r.group_by, r.measure, r.window_secs, actions, history)
                })
                .collect();
            let shapes = serde_json::to_vec(&shapes).unwrap_or_default();
            let engine = serde_json::to_vec(&EngineSpec {
                dry_run: false,
                ..engine.clone()
            })
            .unwrap_or_default();
            crate::alert::stable_hash(&[&shapes, &engine])
        };
        let mut set = RuleSet {
            rules,
            settings,
            profiles,
            allowlist: allowlist.iter().cloned().collect(),
            action_ids,
            by_kind: Default::default(),
            kind_mask: [0; 4],
            max_window_secs: [0; 4],
            distinct_mask: 0,
            has_baseline: [false; 4],
            fingerprint,
        };
        set.index_rules();
        Ok(set)
    }

    fn index_rules(&mut self) {
        self.by_kind = Default::default();
        self.kind_mask = [0; 4];
        self.max_window_secs = [0; 4];
        self.distinct_mask = 0;
        self.has_baseline = [false; 4];
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.measure == Measure::DistinctCvs {
                self.distinct_mask |= rule.action_mask;
            }
            let k = rule.group_by.index();
            self.has_baseline[k] |= rule.baseline.is_some();
            self.by_kind[k].push(i);
            self.kind_mask[k] |= rule.action_mask;
            self.max_window_secs[k] = self.max_window_secs[k].max(rule.window_secs);
        }
    }

    /// The same rules, settings and profiles, keeping only the rules of `kind`. A service
    /// runs one engine per key kind so that each (rule, key) lives on exactly one shard.
    pub fn restricted_to(&self, kind: KeyKind) -> RuleSet {
        self.retaining(&[kind.id_byte()], |r| r.group_by == kind)
    }

    /// The same settings and profiles with only the rules `keep` keeps (benchmarks and
    /// backtests compare rule sets this way). `tag` tells the result's fingerprint apart.
    pub fn retaining(&self, tag: &[u8], keep: impl Fn(&Rule) -> bool) -> RuleSet {
        let mut set = self.clone();
        set.rules.retain(|r| keep(r));
        set.fingerprint = crate::alert::stable_hash(&[&self.fingerprint.to_be_bytes(), tag]);
        set.index_rules();
        set
    }

    /// The same rules with a different allowed lateness. The repartition stage of the
    /// service merges partitions that progress at different speeds, so it accepts
    /// events as late as its longest window.
    pub fn with_allowed_lateness(mut self, ms: Millis) -> RuleSet {
        self.settings.allowed_lateness_ms = ms;
        self
    }

    /// Identifies these rules and settings (not the profiles): equal fingerprints mean a
    /// snapshot of engine state can be restored under them.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Whether any rule counts `action`.
    pub fn counts_action(&self, action: &str) -> bool {
        self.action_ids.contains_key(action)
    }

    /// How many rules group by `kind`.
    pub fn rules_of_kind_count(&self, kind: KeyKind) -> usize {
        self.by_kind[kind.index()].len()
    }

    /// Key kinds that have at least one rule.
    pub fn kinds(&self) -> impl Iterator<Item = KeyKind> + '_ {
        KeyKind::ALL.into_iter().filter(|k| !self.by_kind[k.index()].is_empty())
    }

    /// The key `event` has for rules of `kind`, if any of them counts its action: the
    /// account, the org (from the event, else the account's profile), the user or the ip.
    pub fn key_for<'e>(&'e self, kind: KeyKind, event: &'e crate::event::Event<'_>) -> Option<&'e str> {
        let id = self.action_id(&event.action)?;
        self.key_for_action(kind, event, id)
    }

    /// `key_for` when the event's action id is already known.
    pub(crate) fn key_for_action<'e>(
        &'e self,
        kind: KeyKind,
        event: &'e crate::event::Event<'_>,
        id: u8,
    ) -> Option<&'e str> {
        if self.kind_mask(kind) & (1u64 << id) == 0 {
            return None;
        }
        match kind {
            KeyKind::AccountId => Some(&event.account_id),
            KeyKind::OrgId => event.org_id.as_deref().or_else(|| {
                self.profiles
                    .account(&event.account_id)
                    .and_then(|p| p.org_id.as_deref())
            }),
            KeyKind::UserId => event.user_id.as_deref(),
            KeyKind::Ip => event.ip.as_deref(),
        }
    }

    pub fn is_allowlisted(&self, account_id: &str) -> bool {
        self.allowlist.contains(account_id)
    }

    pub(crate) fn action_id(&self, action: &str) -> Option<u8> {
        self.action_ids.get(action).copied()
    }

    pub fn action_name(&self, id: u8) -> &str {
        self.action_ids
            .iter()
            .find(|(_, v)| **v == id)
            .map_or("", |(k, _)| k.as_str())
    }

    pub(crate) fn rules_of(&self, kind: KeyKind) -> &[usize] {
        &self.by_kind[kind.index()]
    }

    pub(crate) fn has_baseline(&self, kind: KeyKind) -> bool {
        self.has_baseline[kind.index()]
    }

    pub(crate) fn distinct_mask(&self) -> u64 {
        self.distinct_mask
    }

    pub(crate) fn kind_mask(&self, kind: KeyKind) -> u64 {
        self.kind_mask[kind.index()]
    }

    pub fn max_window_secs(&self, kind: KeyKind) -> i64 {
        self.max_window_secs[kind.index()]
    }

    /// The threshold that applies to `rule` for `key`: the segment's threshold when the
    /// key's segment has one, else `threshold`; then raised to `per_vacancy` x open vacancies.
    ///
    /// Accounts use their own profile; organisations use the sum of their accounts'
    /// vacancies and the most permissive of their accounts' segments; a user uses the
    /// profile of the account it acts for (`account_hint`); an ip uses `threshold` alone.
    pub fn effective_threshold(&self, rule: &Rule, key: &str, account_hint: Option<&str>) -> u64 {
        self.threshold_and_source(rule, key, account_hint).0
    }

    /// The effective threshold and which term set it: the rule's `threshold`, a segment's
    /// (when it is the larger term), or `per_vacancy` times the open vacancies.
    pub fn threshold_and_source(&self, rule: &Rule, key: &str, account_hint: Option<&str>) -> (u64, ThresholdSource) {
        let (segment_threshold, vacancies) = match rule.group_by {
            KeyKind::AccountId => self.account_terms(rule, key),
            KeyKind::UserId => account_hint.map_or((rule.threshold, 0), |a| self.account_terms(rule, a)),
            KeyKind::OrgId => match self.profiles.org(key) {
                Some(org) => {
                    let seg = org
                        .segments
                        .iter()
                        .filter_map(|s| rule.segments.get(s).copied())
                        .max()
                        .unwrap_or(rule.threshold);
                    (seg, org.open_vacancies)
                }
                None => (rule.threshold, 0),
            },
            KeyKind::Ip => (rule.threshold, 0),
        };
        let by_vacancies = rule.per_vacancy.map_or(0, |per| per.saturating_mul(vacancies));
        if by_vacancies > segment_threshold {
            (by_vacancies, ThresholdSource::PerVacancy)
        } else if segment_threshold != rule.threshold {
            (segment_threshold, ThresholdSource::Segment)
        } else {
            (segment_threshold, ThresholdSource::Rule)
        }
    }

    fn account_terms(&self, rule: &Rule, account: &str) -> (u64, u64) {
        match self.profiles.account(account) {
            Some(p) => {
                let seg = p
                    .segment
                    .as_deref()
                    .and_then(|s| rule.segments.get(s).copied())
                    .unwrap_or(rule.threshold);
                (seg, p.open_vacancies)
            }
            None => (rule.threshold, 0),
        }
    }
}

fn compile_engine(spec: &EngineSpec, issues: &mut Vec<ConfigIssue>) -> EngineSettings {
    let mut duration = |key: &str, text: &str| match humantime::parse_duration(text.trim()) {
        Ok(d) => d.as_millis() as Millis,
        Err(e) => {
            issues.push(ConfigIssue {
                rule: None,
                key: format!("engine.{key}"),
                message: format!("`{text}` is not a duration ({e}); write it like `5m` or `30s`"),
            });
            0
        }
    };
    let allowed_lateness_ms = duration("allowed_lateness", &spec.allowed_lateness);
    let future_skew_ms = duration("future_skew", &spec.future_skew);
    let dedupe_window_ms = duration("dedupe_window", &spec.dedupe_window);
    if dedupe_window_ms > 0 && dedupe_window_ms < allowed_lateness_ms {
        issues.push(ConfigIssue {
            rule: None,
            key: "engine.dedupe_window".into(),
            message: format!(
                "`{}` is shorter than engine.allowed_lateness (`{}`): a second delivery that late would be \
                 applied again; make it at least as long (or `0s` to turn deduplication off)",
                spec.dedupe_window, spec.allowed_lateness
            ),
        });
    }
    for (key, value) in [
        ("max_field_bytes", spec.max_field_bytes),
        ("max_tracked_keys", spec.max_tracked_keys),
    ] {
        if value == 0 {
            issues.push(ConfigIssue {
                rule: None,
                key: format!("engine.{key}"),
                message: "must be at least 1".into(),
            });
        }
    }
    if spec.max_cv_ids == 0 {
        issues.push(ConfigIssue {
            rule: None,
            key: "engine.max_cv_ids".into(),
            message: "must be at least 1".into(),
        });
    }
    EngineSettings {
        allowed_lateness_ms,
        future_skew_ms,
        limits: ParseLimits {
            max_cv_ids: spec.max_cv_ids,
            max_event_bytes: spec.max_event_bytes,
            max_field_bytes: spec.max_field_bytes,
        },
        dry_run: spec.dry_run,
        max_tracked_keys: spec.max_tracked_keys,
        dedupe_window_ms,
    }
}

/// Parses a humantime duration (`30s`, `5m`, `1h 30m`).
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    humantime::parse_duration(text.trim()).ok()
}

/// Parses a rule window: humantime syntax, whole seconds, 1 second to 31 days.
pub fn parse_window(text: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); write it like `10m`, `24h` or `2days`"))?;
    if d.subsec_nanos() != 0 {
        return Err(format!("`{text}` is not a whole number of seconds"));
    }
    let secs = d.as_secs() as i64;
    if secs < 1 {
        return Err("must be at least 1s".into());
    }
    if secs > MAX_WINDOW_SECS {
        return Err(format!("`{text}` is longer than the maximum of 31 days"));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests;
