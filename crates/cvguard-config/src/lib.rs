//! cvguard's configuration: one TOML file, layered as embedded defaults, then the file,
//! then `CVGUARD__SECTION__KEY` environment variables; validated all at once so an
//! analyst sees every problem with its file, rule and key.

mod profiles;
mod service;

use std::fmt;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat};
use cvguard_core::{ConfigIssue, EngineSpec, Profiles, RuleSet, RuleSpec};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

pub use profiles::{load_profiles, read_profiles};
pub use service::{
    HttpSection, KafkaSection, LogFormat, LogSection, Role, ServiceSection, SinkSpec, SourceKind, SourceSection,
    StateSection, StoreSection, SuspendSection, TokenSpec,
};

/// The shipped default config (`config/cvguard.toml`), compiled in so `demo` and a bare
/// `serve` run without any file.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/cvguard.toml");
/// The example profiles shipped beside it, used by the embedded default unless a profile
/// file is given, so the binary runs from any folder.
pub const EMBEDDED_PROFILES: &str = include_str!("../../../config/accounts.csv");

/// Environment variables that override config values: `CVGUARD__ENGINE__DRY_RUN=true`.
pub const ENV_PREFIX: &str = "CVGUARD";
const ENV_SEPARATOR: &str = "__";

/// Where the config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    /// The shipped default compiled into the binary, with its example profiles.
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

    fn base_dir(&self) -> PathBuf {
        match self {
            ConfigSource::File(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            ConfigSource::Embedded => PathBuf::from("config"),
            ConfigSource::Text { base_dir, .. } => base_dir.clone(),
        }
    }
}

/// A config that failed to load: the file and every problem in it.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        write!(f, "{}: {n} problem{}", self.file, if n == 1 { "" } else { "s" })?;
        for issue in &self.issues {
            write!(f, "\n  {}: {issue}", self.file)?;
        }
        Ok(())
    }
}

/// `[profiles]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilesSection {
    /// CSV with columns account_id,segment,org_id,open_vacancies; relative to the config file.
    pub path: Option<String>,
}

/// `[allowlist]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowlistSection {
    /// Accounts that rules still alert on but that are never suspended automatically.
    #[serde(default)]
    pub accounts: Vec<String>,
}

/// Everything read from one config file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file (or embedded source) it came from, for messages.
    pub source_name: String,
    pub engine: EngineSpec,
    pub profiles: ProfilesSection,
    /// The profile file actually read, resolved against the config's folder.
    pub profiles_path: Option<PathBuf>,
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
    /// The durations of `[state]`, `[service]` and `[suspend]`, parsed.
    pub timing: Timing,
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
    /// Use this profile file instead of `[profiles] path`.
    pub profiles_path: Option<PathBuf>,
}

/// Loads, layers and validates a config. Every problem is returned at once.
pub fn load(source: &ConfigSource, overrides: &Overrides) -> Result<Config, ConfigError> {
    let file = source.name();
    let fail = |issues: Vec<ConfigIssue>| ConfigError {
        file: file.clone(),
        issues,
    };
    let tree = read_tree(source).map_err(|message| {
        fail(vec![ConfigIssue {
            rule: None,
            key: "-".into(),
            message,
        }])
    })?;
    let Value::Object(top) = tree else {
        return Err(fail(vec![issue(None, "-", "the config must be a TOML table".into())]));
    };

    let mut issues = Vec::new();
    let mut engine = EngineSpec::default();
    let mut profiles = ProfilesSection::default();
    let mut allowlist = AllowlistSection::default();
    let mut rule_values = Vec::new();
    let mut sink_values = Vec::new();
    let mut source_section = SourceSection::default();
    let mut http = HttpSection::default();
    let mut state = StateSection::default();
    let mut service = ServiceSection::default();
    let mut kafka = KafkaSection::default();
    let mut store = StoreSection::default();
    let mut suspend = SuspendSection::default();
    let mut log = LogSection::default();
    for (key, value) in top {
        match key.as_str() {
            "engine" => section(&key, value, &mut issues).map(|v| engine = v),
            "profiles" => section(&key, value, &mut issues).map(|v| profiles = v),
            "allowlist" => section(&key, value, &mut issues).map(|v| allowlist = v),
            "source" => section(&key, value, &mut issues).map(|v| source_section = v),
            "http" => section(&key, value, &mut issues).map(|v| http = v),
            "state" => section(&key, value, &mut issues).map(|v| state = v),
            "service" => section(&key, value, &mut issues).map(|v| service = v),
            "kafka" => section(&key, value, &mut issues).map(|v| kafka = v),
            "store" => section(&key, value, &mut issues).map(|v| store = v),
            "suspend" => section(&key, value, &mut issues).map(|v| suspend = v),
            "log" => section(&key, value, &mut issues).map(|v| log = v),
            "rules" | "sinks" => match value {
                Value::Array(items) => {
                    if key == "rules" {
                        rule_values = items;
                    } else {
                        sink_values = items;
                    }
                    Some(())
                }
                _ => {
                    issues.push(issue(
                        None,
                        &key,
                        format!("must be an array of tables: write `[[{key}]]`"),
                    ));
                    None
                }
            },
            other => {
                issues.push(issue(
                    None,
                    other,
                    format!("unknown section or key; expected one of {}", SECTIONS.join(", ")),
                ));
                None
            }
        };
    }
    let mut sinks = Vec::new();
    for (i, value) in sink_values.into_iter().enumerate() {
        match deserialize::<SinkSpec>(value) {
            Ok(sink) => sinks.push(sink),
            Err((key, message)) => issues.push(issue(None, &format!("sinks[{i}].{key}"), message)),
        }
    }
    if state.ingest_segment_bytes < 65_536 {
        issues.push(issue(
            None,
            "state.ingest_segment_bytes",
            format!("{} is too small; at least 65536", state.ingest_segment_bytes),
        ));
    }
    let timing = Timing {
        snapshot_interval: duration("state.snapshot_interval", &state.snapshot_interval, &mut issues),
        shutdown_timeout: duration("service.shutdown_timeout", &service.shutdown_timeout, &mut issues),
        commit_interval: duration("service.commit_interval", &service.commit_interval, &mut issues),
        suspend_timeout: duration("suspend.timeout", &suspend.timeout, &mut issues),
        suspend_cooldown: duration("suspend.cooldown", &suspend.cooldown, &mut issues),
    };
    for (i, sink) in sinks.iter().enumerate() {
        if let SinkSpec::Alertmanager { resend_interval, .. } = sink {
            let key = format!("sinks[{i}].resend_interval");
            if duration(&key, resend_interval, &mut issues).is_zero() && humantime_parse(resend_interval).is_some() {
                issues.push(issue(None, &key, "must be longer than 0s".to_string()));
            }
        }
        if let SinkSpec::Webhook { timeout, .. } | SinkSpec::Alertmanager { timeout, .. } = sink {
            duration(&format!("sinks[{i}].timeout"), timeout, &mut issues);
        }
    }
    if !(store.url.starts_with("sqlite://")
        || store.url.starts_with("postgres://")
        || store.url.starts_with("postgresql://"))
    {
        issues.push(issue(
            None,
            "store.url",
            "expected sqlite://PATH or postgres://...".into(),
        ));
    }
    let mut token_names = std::collections::BTreeSet::new();
    for (i, t) in http.tokens.iter().enumerate() {
        if t.sha256.len() != 64 || !t.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            issues.push(issue(
                None,
                &format!("http.tokens[{i}].sha256"),
                "must be the 64 hex digits of the token's SHA-256 (cvguard token new prints it)".into(),
            ));
        }
        if !token_names.insert(t.name.clone()) {
            issues.push(issue(
                None,
                &format!("http.tokens[{i}].name"),
                format!("duplicate token name `{}`", t.name),
            ));
        }
    }
    if suspend.max_attempts == 0 {
        issues.push(issue(None, "suspend.max_attempts", "must be at least 1".into()));
    }
    if http.listen.parse::<std::net::SocketAddr>().is_err() {
        issues.push(issue(
            None,
            "http.listen",
            format!("`{}` is not an address like 127.0.0.1:8088", http.listen),
        ));
    }
    if source_section.kind == SourceKind::Kafka {
        let props = kafka.client_properties();
        for required in ["bootstrap.servers", "group.id"] {
            if !props.contains_key(required) {
                issues.push(issue(
                    None,
                    &format!("kafka.properties.\"{required}\""),
                    "is required when [source] kind = \"kafka\"".into(),
                ));
            }
        }
        if kafka.topics.is_empty() {
            issues.push(issue(None, "kafka.topics", "must name at least one topic".into()));
        }
        if kafka.partitions < 1 {
            issues.push(issue(None, "kafka.partitions", "must be at least 1".into()));
        }
    }

    let mut rules = Vec::with_capacity(rule_values.len());
    for (i, value) in rule_values.into_iter().enumerate() {
        let label = value
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty())
            .map_or_else(|| format!("rules[{i}]"), str::to_string);
        match deserialize::<RuleSpec>(value) {
            Ok(spec) => rules.push(spec),
            Err((key, message)) => issues.push(issue(Some(label), &key, message)),
        }
    }

    let embedded = matches!(source, ConfigSource::Embedded) && overrides.profiles_path.is_none();
    let profiles_path = overrides.profiles_path.clone().or_else(|| {
        profiles
            .path
            .as_ref()
            .filter(|_| !embedded)
            .map(|p| source.base_dir().join(p))
    });
    let read = match &profiles_path {
        Some(path) => Some(load_profiles(path)),
        None if embedded => Some(read_profiles(
            "<embedded config/accounts.csv>",
            EMBEDDED_PROFILES.as_bytes(),
        )),
        None => None,
    };
    let loaded_profiles = match read {
        Some(Ok(p)) => p,
        Some(Err(message)) => {
            issues.push(issue(None, "profiles.path", message));
            Profiles::default()
        }
        None => Profiles::default(),
    };

    let compiled = RuleSet::compile(&engine, &rules, loaded_profiles, &allowlist.accounts);
    match compiled {
        Ok(ruleset) if issues.is_empty() => Ok(Config {
            source_name: file.clone(),
            engine,
            profiles,
            profiles_path,
            allowlist,
            rules,
            ruleset,
            source: source_section,
            http,
            state,
            service,
            kafka,
            sinks,
            store,
            suspend,
            log,
            timing,
        }),
        Ok(_) => Err(fail(issues)),
        Err(more) => {
            issues.extend(more);
            Err(fail(issues))
        }
    }
}

const SECTIONS: [&str; 10] = [
    "engine",
    "profiles",
    "allowlist",
    "rules",
    "source",
    "http",
    "state",
    "service",
    "kafka",
    "sinks",
];

fn duration(key: &str, text: &str, issues: &mut Vec<ConfigIssue>) -> std::time::Duration {
    match humantime_parse(text) {
        Some(d) => d,
        None => {
            issues.push(issue(
                None,
                key,
                format!("`{text}` is not a duration; write it like `30s` or `5m`"),
            ));
            std::time::Duration::ZERO
        }
    }
}

fn humantime_parse(text: &str) -> Option<std::time::Duration> {
    cvguard_core::rules::parse_duration(text)
}

fn read_tree(source: &ConfigSource) -> Result<Value, String> {
    let builder = config::Config::builder();
    let builder = match source {
        ConfigSource::File(path) => {
            if !path.is_file() {
                return Err(format!(
                    "cannot read the config file: {} does not exist or is not a file",
                    path.display()
                ));
            }
            builder.add_source(File::from(path.as_path()).format(FileFormat::Toml).required(true))
        }
        ConfigSource::Embedded => builder.add_source(File::from_str(EMBEDDED_DEFAULT, FileFormat::Toml)),
        ConfigSource::Text { text, .. } => builder.add_source(File::from_str(text, FileFormat::Toml)),
    };
    let built = builder
        .add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .try_parsing(true),
        )
        .build()
        .map_err(|e| e.to_string())?;
    built.try_deserialize::<Value>().map_err(|e| e.to_string())
}

fn issue(rule: Option<String>, key: &str, message: String) -> ConfigIssue {
    ConfigIssue {
        rule,
        key: key.to_string(),
        message,
    }
}

fn section<T: DeserializeOwned>(name: &str, value: Value, issues: &mut Vec<ConfigIssue>) -> Option<T> {
    match deserialize::<T>(value) {
        Ok(v) => Some(v),
        Err((key, message)) => {
            issues.push(issue(None, &format!("{name}.{key}"), message));
            None
        }
    }
}

/// Deserializes with the path of the failing key; for missing and unknown fields, whose
/// path is the table itself, the key is taken from serde's message.
fn deserialize<T: DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let message = e.inner().to_string();
        let path = e.path().to_string();
        let key = if path == "." || path.is_empty() || path == "?" {
            backticked(&message).unwrap_or_else(|| "-".into())
        } else {
            path
        };
        (key, message)
    })
}

fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

#[cfg(test)]
mod tests;
