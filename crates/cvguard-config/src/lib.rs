//! cvguard's configuration: one TOML file, layered as embedded defaults, then the file,
//! then `CVGUARD__SECTION__KEY` environment variables; validated all at once so an
//! analyst sees every problem with its file, line, rule and key, or the variable that
//! set it. Paths in the file are relative to the file's folder.

mod actions;
mod collect;
mod document;
mod effective;
mod health;
mod paths;
mod plain;
mod problem;
mod profiles;
mod redact;
mod service;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use cvguard_core::{EngineSpec, Profiles, RuleSet, RuleSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::collect::{collect, Finding, Kind};
use crate::document::{Document, KeyPath, Seg};

pub use actions::KNOWN_ACTIONS;
pub use health::{HealthLimits, HealthSection};
pub use problem::{ConfigError, LoadError, LoadErrorKind, Origin, Problem};
pub use profiles::{load_profiles, read_profiles};
pub use redact::{redact_url, secret_kafka_property, REDACTED};
pub use service::{
    HttpSection, KafkaSection, LogFormat, LogSection, Role, ServiceSection, SinkSpec, SourceKind, SourceSection,
    StateSection, StoreSection, SuspendSection, TokenSpec,
};

/// `http://host[:port][/path]` or `https://...`: a scheme, a host, no whitespace.
fn is_http_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    !host.is_empty() && !host.starts_with(':') && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The shipped default config (`config/cvguard.toml`), compiled in so `demo` and a bare
/// `serve` run without any file.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/cvguard.toml");
/// The example profiles shipped beside it, used by the embedded default unless a profile
/// file is given, so the binary runs from any folder.
pub const EMBEDDED_PROFILES: &str = include_str!("../../../config/accounts.csv");
/// How messages and `check-config` name the embedded profiles.
pub const EMBEDDED_PROFILES_NAME: &str = "embedded config/accounts.csv";

/// Environment variables that override config values: `CVGUARD__ENGINE__DRY_RUN=true`.
pub const ENV_PREFIX: &str = "CVGUARD";
const ENV_SEPARATOR: &str = "__";

/// Where the config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    /// The shipped default compiled into the binary, with its example profiles. Its
    /// paths are relative to the working directory.
    Embedded,
    /// Text with a name for messages and a folder that relative paths start from.
    Text {
        name: String,
        text: String,
        base_dir: PathBuf,
    },
}

impl ConfigSource {
    pub fn embedded_default() -> ConfigSource {
        ConfigSource::Embedded
    }

    fn name(&self) -> String {
        match self {
            ConfigSource::File(p) => p.display().to_string(),
            ConfigSource::Embedded => "<embedded config/cvguard.toml>".into(),
            ConfigSource::Text { name, .. } => name.clone(),
        }
    }

    /// The folder relative paths start from; `None`: the working directory.
    fn base_dir(&self) -> Option<&Path> {
        match self {
            ConfigSource::File(p) => Some(p.parent().unwrap_or(Path::new(""))),
            ConfigSource::Embedded => None,
            ConfigSource::Text { base_dir, .. } => Some(base_dir),
        }
    }

    fn text(&self) -> std::io::Result<String> {
        match self {
            ConfigSource::File(p) => std::fs::read_to_string(p),
            ConfigSource::Embedded => Ok(EMBEDDED_DEFAULT.to_string()),
            ConfigSource::Text { text, .. } => Ok(text.clone()),
        }
    }
}

/// `[profiles]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilesSection {
    /// CSV with columns account_id,segment,org_id,open_vacancies; relative to the config file.
    pub path: Option<String>,
}

/// `[allowlist]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowlistSection {
    /// Accounts that rules still alert on but that are never suspended automatically.
    #[serde(default)]
    pub accounts: Vec<String>,
}

/// Everything read from one config file. Its paths (`state.dir`, a SQLite `store.url`,
/// `jsonl` sinks' `path`, `profiles.path`) are resolved: relative to the config file's
/// folder, or to the working directory when they came from the environment or the
/// embedded default.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file (or embedded source) it came from, for messages.
    pub source_name: String,
    pub engine: EngineSpec,
    pub profiles: ProfilesSection,
    /// The profile file actually read: `profiles.path`, or the override.
    pub profiles_path: Option<PathBuf>,
    /// Whether the profiles are the example ones compiled in ([`EMBEDDED_PROFILES_NAME`]).
    pub profiles_embedded: bool,
    pub allowlist: AllowlistSection,
    pub rules: Vec<RuleSpec>,
    /// The compiled rules, ready for an engine.
    pub ruleset: RuleSet,
    pub source: SourceSection,
    pub http: HttpSection,
    pub state: StateSection,
    pub service: ServiceSection,
    pub kafka: KafkaSection,
    pub sinks: Vec<SinkSpec>,
    pub store: StoreSection,
    pub suspend: SuspendSection,
    pub log: LogSection,
    /// `[health]`: when the watchdog's alarms fire.
    pub health: HealthSection,
    /// The durations of `[state]`, `[service]` and `[suspend]`, parsed.
    pub timing: Timing,
    /// What is allowed but probably wrong: a rule action no known event has. Commands
    /// print or log these; `check-config --strict` refuses them.
    pub warnings: Vec<Problem>,
}

/// Parsed durations of the service sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub snapshot_interval: std::time::Duration,
    pub shutdown_timeout: std::time::Duration,
    pub commit_interval: std::time::Duration,
    pub suspend_timeout: std::time::Duration,
    pub suspend_cooldown: std::time::Duration,
}

/// Options that replace what the file says.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Use this profile file instead of `[profiles] path` (relative to the working
    /// directory, as a command-line path is).
    pub profiles_path: Option<PathBuf>,
}

/// The file's top level: every section, each defaulted. Rules and sinks are read one
/// by one, so a broken one hides nothing about the others.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sections {
    #[serde(default)]
    engine: EngineSpec,
    #[serde(default)]
    profiles: ProfilesSection,
    #[serde(default)]
    allowlist: AllowlistSection,
    #[serde(default)]
    rules: Vec<Value>,
    #[serde(default)]
    source: SourceSection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    state: StateSection,
    #[serde(default)]
    service: ServiceSection,
    #[serde(default)]
    kafka: KafkaSection,
    #[serde(default)]
    sinks: Vec<Value>,
    #[serde(default)]
    store: StoreSection,
    #[serde(default)]
    suspend: SuspendSection,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    health: HealthSection,
}

/// Loads, layers and validates a config. Every problem is returned at once, in the
/// file's order; an unreadable file is told apart (`LoadError::is_unreadable`).
pub fn load(source: &ConfigSource, overrides: &Overrides) -> Result<Config, LoadError> {
    let file = source.name();
    let text = match source.text() {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            let problem = located(&file, None, "the file is not UTF-8 text".into());
            return Err(invalid(&file, vec![problem], Vec::new()));
        }
        Err(e) => return Err(LoadError::unreadable(file, &e)),
    };
    let env = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let (doc, syntax) = Document::parse(text, env, ENV_PREFIX, ENV_SEPARATOR);
    let syntax = syntax.into_iter().map(|e| located(&file, e.at, e.message)).collect();
    Loader {
        doc: &doc,
        syntax,
        source,
        overrides,
        file,
        shape: Vec::new(),
        checks: Vec::new(),
    }
    .load()
}

/// A problem with a place in the file and no key: a TOML syntax error.
fn located(file: &str, at: Option<(usize, usize)>, message: String) -> Problem {
    Problem {
        file: file.to_string(),
        origin: Origin::File(at),
        rule: None,
        key: None,
        message,
    }
}

fn invalid(file: &str, issues: Vec<Problem>, warnings: Vec<Problem>) -> LoadError {
    LoadError {
        file: file.to_string(),
        kind: LoadErrorKind::Invalid,
        issues,
        warnings,
    }
}

struct Loader<'a> {
    doc: &'a Document,
    source: &'a ConfigSource,
    overrides: &'a Overrides,
    file: String,
    /// TOML syntax errors; the rest of the file is still read around them.
    syntax: Vec<Problem>,
    /// Problems of shape (unknown keys, wrong types, missing keys): their keys hold
    /// defaults or stand-ins from then on.
    shape: Vec<Finding>,
    /// Problems of meaning (a bad duration, a zero threshold), found on the values read.
    checks: Vec<Finding>,
}

impl Loader<'_> {
    fn load(mut self) -> Result<Config, LoadError> {
        let root = KeyPath::default();
        let mut sections: Sections =
            collect(self.doc, &root, self.doc.tree.clone(), &mut self.shape).unwrap_or_default();
        for f in &mut self.shape {
            if let [Seg::Key(k)] = f.path.0.as_slice() {
                if (k == "rules" || k == "sinks") && f.kind == Kind::Value {
                    f.message = format!("must be an array of tables: write `[[{k}]]`");
                }
            }
        }
        let rules: Vec<(usize, RuleSpec)> = std::mem::take(&mut sections.rules)
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| collect(self.doc, &rule_path(i), v, &mut self.shape).map(|r| (i, r)))
            .collect();
        let mut sinks = Vec::new();
        for (i, v) in std::mem::take(&mut sections.sinks).into_iter().enumerate() {
            let at = root.key("sinks").index(i);
            let mut found = Vec::new();
            if let Some(sink) = collect::<SinkSpec>(self.doc, &at, v, &mut found) {
                sinks.push(sink);
            }
            // A sink's keys depend on its kind: with the kind wrong, only the kind is.
            let kind = at.key("kind");
            if found.iter().any(|f| f.path == kind) {
                found.retain(|f| f.path == kind);
            }
            self.shape.extend(found);
        }
        let timing = self.check_service(&sections, &sinks);
        self.check_rules(&sections, &rules);
        let warnings: Vec<Finding> = rules
            .iter()
            .flat_map(|(i, spec)| actions::unknown_actions(spec, &rule_path(*i)))
            .collect();

        let resolver = paths::Resolver {
            base: self.source.base_dir(),
            doc: self.doc,
        };
        let state_dir = root.key("state").key("dir");
        sections.state.dir = resolver.path(&state_dir, &sections.state.dir);
        let store_url = root.key("store").key("url");
        sections.store.url = resolver.store_url(&store_url, &sections.store.url);
        for (i, sink) in sinks.iter_mut().enumerate() {
            if let SinkSpec::Jsonl { path } = sink {
                *path = resolver.path(&root.key("sinks").index(i).key("path"), path);
            }
        }
        let profiles_key = root.key("profiles").key("path");
        sections.profiles.path = sections.profiles.path.map(|p| resolver.path(&profiles_key, &p));

        let embedded = matches!(self.source, ConfigSource::Embedded) && self.overrides.profiles_path.is_none();
        let profiles_path = match (&self.overrides.profiles_path, &sections.profiles.path) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(p)) if !embedded => Some(PathBuf::from(p)),
            _ => None,
        };
        let read = match &profiles_path {
            Some(path) => Some(load_profiles(path)),
            None if embedded => Some(read_profiles(EMBEDDED_PROFILES_NAME, EMBEDDED_PROFILES.as_bytes())),
            None => None,
        };
        let mut from_command_line = None;
        let loaded_profiles = match read {
            Some(Ok(p)) => p,
            Some(Err(message)) => {
                if self.overrides.profiles_path.is_some() {
                    from_command_line = Some(Problem {
                        file: self.file.clone(),
                        origin: Origin::CommandLine,
                        rule: None,
                        key: None,
                        message,
                    });
                } else {
                    self.checks.push(Finding {
                        path: profiles_key,
                        kind: Kind::Value,
                        message,
                    });
                }
                Profiles::default()
            }
            None => Profiles::default(),
        };

        let mut problems = self.problems();
        problems.extend(from_command_line);
        let warnings = self.to_problems(warnings);
        let rule_specs: Vec<RuleSpec> = rules.into_iter().map(|(_, r)| r).collect();
        if !problems.is_empty() {
            return Err(invalid(&self.file, problems, warnings));
        }
        let ruleset = RuleSet::compile(
            &sections.engine,
            &rule_specs,
            loaded_profiles,
            &sections.allowlist.accounts,
        )
        .map_err(|issues| {
            // Already checked rule by rule; this is a safety net, without lines.
            let problems = issues
                .into_iter()
                .map(|i| Problem {
                    file: self.file.clone(),
                    origin: Origin::File(None),
                    rule: i.rule,
                    key: Some(i.key),
                    message: i.message,
                })
                .collect();
            invalid(&self.file, problems, warnings.clone())
        })?;
        Ok(Config {
            source_name: self.file,
            engine: sections.engine,
            profiles: sections.profiles,
            profiles_path,
            profiles_embedded: embedded,
            allowlist: sections.allowlist,
            rules: rule_specs,
            ruleset,
            source: sections.source,
            http: sections.http,
            state: sections.state,
            service: sections.service,
            kafka: sections.kafka,
            sinks,
            store: sections.store,
            suspend: sections.suspend,
            log: sections.log,
            health: sections.health,
            timing,
            warnings,
        })
    }

    fn check(&mut self, key: &str, message: String) {
        self.checks.push(Finding {
            path: KeyPath::parse(key),
            kind: Kind::Value,
            message,
        });
    }

    fn duration(&mut self, key: &str, text: &str) -> std::time::Duration {
        cvguard_core::rules::parse_duration(text).unwrap_or_else(|| {
            self.check(key, format!("`{text}` is not a duration; write it like `30s` or `5m`"));
            std::time::Duration::ZERO
        })
    }

    /// The service sections' values that their types do not check.
    fn check_service(&mut self, s: &Sections, sinks: &[SinkSpec]) -> Timing {
        if s.state.ingest_segment_bytes < 65_536 {
            let n = s.state.ingest_segment_bytes;
            self.check(
                "state.ingest_segment_bytes",
                format!("{n} is too small; at least 65536"),
            );
        }
        let timing = Timing {
            snapshot_interval: self.duration("state.snapshot_interval", &s.state.snapshot_interval),
            shutdown_timeout: self.duration("service.shutdown_timeout", &s.service.shutdown_timeout),
            commit_interval: self.duration("service.commit_interval", &s.service.commit_interval),
            suspend_timeout: self.duration("suspend.timeout", &s.suspend.timeout),
            suspend_cooldown: self.duration("suspend.cooldown", &s.suspend.cooldown),
        };
        for (i, sink) in sinks.iter().enumerate() {
            if let SinkSpec::Alertmanager { resend_interval, .. } = sink {
                let key = format!("sinks[{i}].resend_interval");
                let parsed = cvguard_core::rules::parse_duration(resend_interval);
                if self.duration(&key, resend_interval).is_zero() && parsed.is_some() {
                    self.check(&key, "must be longer than 0s".into());
                }
            }
            if let SinkSpec::Webhook { timeout, .. } | SinkSpec::Alertmanager { timeout, .. } = sink {
                self.duration(&format!("sinks[{i}].timeout"), timeout);
            }
        }
        // Every URL cvguard calls: a scheme it speaks and a host, before anything is sent.
        // The message leaves the value out: a URL may carry a secret.
        let mut http_urls: Vec<(String, &str)> = sinks
            .iter()
            .enumerate()
            .filter_map(|(i, sink)| match sink {
                SinkSpec::Webhook { url, .. } | SinkSpec::Alertmanager { url, .. } => {
                    Some((format!("sinks[{i}].url"), url.as_str()))
                }
                _ => None,
            })
            .collect();
        http_urls.extend(s.suspend.url.as_deref().map(|u| ("suspend.url".to_string(), u)));
        http_urls.extend(
            s.service
                .advertise_url
                .as_deref()
                .map(|u| ("service.advertise_url".to_string(), u)),
        );
        for (key, url) in http_urls {
            if !is_http_url(url) {
                self.check(
                    &key,
                    "expected an http:// or https:// URL with a host, without spaces".into(),
                );
            }
        }
        let url = &s.store.url;
        if !(url.starts_with("sqlite://") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            self.check("store.url", "expected sqlite://PATH or postgres://...".into());
        }
        let mut token_names = HashSet::new();
        for (i, t) in s.http.tokens.iter().enumerate() {
            if t.sha256.len() != 64 || !t.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                self.check(
                    &format!("http.tokens[{i}].sha256"),
                    "must be the 64 hex digits of the token's SHA-256 (cvguard token new prints it)".into(),
                );
            }
            if !token_names.insert(t.name.as_str()) {
                self.check(
                    &format!("http.tokens[{i}].name"),
                    format!("duplicate token name `{}`", t.name),
                );
            }
        }
        if let Err(problems) = s.health.limits() {
            for (key, message) in problems {
                self.check(&key, message);
            }
        }
        if s.suspend.max_attempts == 0 {
            self.check("suspend.max_attempts", "must be at least 1".into());
        }
        if s.http.listen.parse::<std::net::SocketAddr>().is_err() {
            let listen = &s.http.listen;
            self.check(
                "http.listen",
                format!("`{listen}` is not an address like 127.0.0.1:8088"),
            );
        }
        if s.source.kind == SourceKind::Kafka {
            let props = s.kafka.client_properties();
            for required in ["bootstrap.servers", "group.id"] {
                if !props.contains_key(required) {
                    self.check(
                        &format!("kafka.properties.\"{required}\""),
                        "is required when [source] kind = \"kafka\"".into(),
                    );
                }
            }
            if s.kafka.topics.is_empty() {
                self.check("kafka.topics", "must name at least one topic".into());
            }
            if s.kafka.partitions < 1 {
                self.check("kafka.partitions", "must be at least 1".into());
            }
        }
        timing
    }

    /// The rule compiler's checks, each traced to its rule by index: the rules are
    /// compiled under the names `rules[i]`, and their real names checked here.
    fn check_rules(&mut self, s: &Sections, rules: &[(usize, RuleSpec)]) {
        let mut seen = HashSet::new();
        for (i, spec) in rules {
            if spec.name.trim().is_empty() {
                self.checks.push(rule_finding(*i, "name", "must not be empty".into()));
            } else if !seen.insert(spec.name.as_str()) {
                let message = format!("duplicate rule name `{}`", spec.name);
                self.checks.push(rule_finding(*i, "name", message));
            }
        }
        let named: Vec<RuleSpec> = rules
            .iter()
            .map(|(i, spec)| RuleSpec {
                name: rule_path(*i).to_string(),
                ..spec.clone()
            })
            .collect();
        let Err(issues) = RuleSet::compile(&s.engine, &named, Profiles::default(), &s.allowlist.accounts) else {
            return;
        };
        for issue in issues {
            let path = match issue.rule.as_deref().map(KeyPath::parse) {
                Some(rule) => rule.join(&KeyPath::parse(&issue.key)),
                None => KeyPath::parse(&issue.key),
            };
            self.checks.push(Finding {
                path,
                kind: Kind::Value,
                message: issue.message,
            });
        }
    }

    /// Every finding as a problem, the checks on keys that already have a problem of
    /// shape left out (they saw a default or a stand-in, not what was written).
    fn problems(&mut self) -> Vec<Problem> {
        let shape = std::mem::take(&mut self.shape);
        let checks = std::mem::take(&mut self.checks);
        let touched = |f: &Finding| {
            shape
                .iter()
                .any(|s| s.path.starts_with(&f.path) || f.path.starts_with(&s.path))
        };
        let checks: Vec<Finding> = checks.into_iter().filter(|f| !touched(f)).collect();
        let mut problems = self.to_problems(shape.into_iter().chain(checks).collect());
        problems.extend(std::mem::take(&mut self.syntax));
        sort(&mut problems);
        problems
    }

    /// Findings as problems, in the file's order, then the environment's. After a
    /// syntax error the parser's recovery guesses at what follows, so only what comes
    /// before the first one is reported with it (and no "is required", whose table may
    /// go on past it).
    fn to_problems(&self, findings: Vec<Finding>) -> Vec<Problem> {
        let first_syntax_error = self
            .syntax
            .iter()
            .map(|p| match p.origin {
                Origin::File(Some((line, _))) => line,
                _ => 0,
            })
            .min();
        let mut problems: Vec<Problem> = findings
            .iter()
            .map(|f| (f.kind, self.problem(f)))
            .filter(|(kind, p)| match (first_syntax_error, &p.origin) {
                (None, _) => true,
                (Some(_), _) if *kind == Kind::Missing => false,
                (Some(first), Origin::File(Some((line, _)))) => *line < first,
                (Some(_), Origin::File(None)) => false,
                (Some(_), Origin::Env(_) | Origin::CommandLine) => true,
            })
            .map(|(_, p)| p)
            .collect();
        sort(&mut problems);
        problems
    }

    fn problem(&self, f: &Finding) -> Problem {
        let origin = self.doc.origin(&f.path, f.kind == Kind::UnknownKey);
        let (rule, key) = match f.path.0.as_slice() {
            [Seg::Key(rules), Seg::Index(i), rest @ ..] if rules == "rules" => {
                (Some(self.rule_label(*i)), KeyPath(rest.to_vec()))
            }
            _ => (None, f.path.clone()),
        };
        Problem {
            file: self.file.clone(),
            origin,
            rule,
            key: (!key.0.is_empty()).then(|| key.to_string()),
            message: plain::words(&f.path, &f.message),
        }
    }

    /// A rule's name as written, or `rules[i]`.
    fn rule_label(&self, i: usize) -> String {
        document::get(&self.doc.tree, &rule_path(i).0)
            .and_then(|r| r.get("name"))
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty())
            .map_or_else(|| rule_path(i).to_string(), str::to_string)
    }
}

/// In the file's order, then the environment's, then the command line's. Stable, so
/// problems at one place keep the order they were found in.
fn sort(problems: &mut [Problem]) {
    problems.sort_by_key(|p| match &p.origin {
        Origin::File(Some(at)) => (0, *at, String::new()),
        Origin::File(None) => (1, (0, 0), String::new()),
        Origin::Env(var) => (2, (0, 0), var.clone()),
        Origin::CommandLine => (3, (0, 0), String::new()),
    });
}

fn rule_path(i: usize) -> KeyPath {
    KeyPath::default().key("rules").index(i)
}

fn rule_finding(i: usize, key: &str, message: String) -> Finding {
    Finding {
        path: rule_path(i).key(key),
        kind: Kind::Value,
        message,
    }
}

#[cfg(test)]
mod tests;
