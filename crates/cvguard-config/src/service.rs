//! The sections a running service reads: where events come from, where state and
//! outputs go. `replay` ignores them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[source]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// `http` (POST /v1/events, the embedded default) or `kafka`.
    #[serde(default)]
    pub kind: SourceKind,
}

impl Default for SourceSection {
    fn default() -> Self {
        SourceSection { kind: SourceKind::Http }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    #[default]
    Http,
    Kafka,
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Address for ingest, the API, health and metrics. Loopback unless you mean otherwise.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest accepted request body (NDJSON ingest) in bytes; larger answers 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Ingest bytes accepted but not yet decided by every shard. Past it, ingest answers
    /// 503 with Retry-After and accepts nothing, so a fast producer cannot grow memory.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_bytes: usize,
    /// API tokens, stored as SHA-256 hashes. None: the API answers loopback clients only.
    #[serde(default)]
    pub tokens: Vec<TokenSpec>,
}

/// One `[[http.tokens]]` entry; `cvguard token new` prints one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// Who holds it; recorded as the actor of every change made with it.
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

/// `viewer` < `responder` < `admin`; `ingest` may only post events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Ingest,
    Viewer,
    Responder,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Viewer => "viewer",
            Role::Responder => "responder",
            Role::Admin => "admin",
        }
    }

    /// Whether a holder of `self` may do what needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Admin, _) => true,
            (Role::Ingest, Role::Ingest) => true,
            (Role::Ingest, _) | (_, Role::Ingest) => false,
            (have, need) => have >= need,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `human` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

fn default_listen() -> String {
    "127.0.0.1:8088".into()
}
fn default_max_body() -> usize {
    16 << 20
}

fn default_alertmanager_resend() -> String {
    "60s".into()
}

fn default_max_in_flight() -> usize {
    64 << 20
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            max_in_flight_bytes: default_max_in_flight(),
            tokens: Vec::new(),
        }
    }
}

/// `[state]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// Folder for snapshots of window state (one file per Kafka partition or HTTP part)
    /// and the HTTP ingest log. Relative to the working directory.
    #[serde(default = "default_state_dir")]
    pub dir: String,
    /// How often each partition's state is snapshotted.
    #[serde(default = "default_snapshot_interval")]
    pub snapshot_interval: String,
    /// Size at which the HTTP ingest log starts a new segment; whole segments behind every
    /// snapshot are deleted, so disk use is about this times two plus what snapshots do
    /// not cover yet. At least 65536.
    #[serde(default = "default_ingest_segment_bytes")]
    pub ingest_segment_bytes: u64,
}

fn default_ingest_segment_bytes() -> u64 {
    64 << 20
}

fn default_state_dir() -> String {
    "data/state".into()
}
fn default_snapshot_interval() -> String {
    "30s".into()
}

impl Default for StateSection {
    fn default() -> Self {
        StateSection {
            dir: default_state_dir(),
            snapshot_interval: default_snapshot_interval(),
            ingest_segment_bytes: default_ingest_segment_bytes(),
        }
    }
}

/// `[service]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// Engine worker threads; 0 means one per core.
    #[serde(default)]
    pub workers: usize,
    /// On SIGTERM: how long to finish in-flight work, snapshot and commit before exiting.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: String,
    /// How often offsets whose effects are durable are committed (immediately after alerts).
    #[serde(default = "default_commit_interval")]
    pub commit_interval: String,
    /// The base URL other instances of the consumer group reach this one's API at, to
    /// answer for keys on its partitions (`http://<[http] listen>` when unset).
    #[serde(default)]
    pub advertise_url: Option<String>,
}

fn default_shutdown_timeout() -> String {
    "30s".into()
}
fn default_commit_interval() -> String {
    "1s".into()
}

impl Default for ServiceSection {
    fn default() -> Self {
        ServiceSection {
            workers: 0,
            shutdown_timeout: default_shutdown_timeout(),
            commit_interval: default_commit_interval(),
            advertise_url: None,
        }
    }
}

/// `[kafka]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// Topics with access events, keyed by account_id.
    #[serde(default = "default_topics")]
    pub topics: Vec<String>,
    /// Alerts (the alert contract), key = the alert's key.
    #[serde(default = "default_alerts_topic")]
    pub alerts_topic: String,
    /// Incidents, compacted, key = incident id, value = the latest state.
    #[serde(default = "default_incidents_topic")]
    pub incidents_topic: String,
    /// Rejected messages, forwarded unchanged with the reason in header `cvguard-reject-reason`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Internal: events re-keyed by org, user or ip so each such key is counted on one shard.
    #[serde(default = "default_repartition_topic")]
    pub repartition_topic: String,
    /// Partitions for the topics cvguard creates when they are missing (the repartition
    /// topic should have as many as the input topics).
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// Shorthand for `properties."bootstrap.servers"`, settable as CVGUARD__KAFKA__BOOTSTRAP_SERVERS.
    #[serde(default)]
    pub bootstrap_servers: Option<String>,
    /// Shorthand for `properties."group.id"`, settable as CVGUARD__KAFKA__GROUP_ID.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Passed to librdkafka as strings: bootstrap.servers, group.id, security.protocol, ...
    #[serde(default)]
    pub properties: BTreeMap<String, serde_json::Value>,
    /// librdkafka properties read from environment variables, for secrets:
    /// `"sasl.password" = "CVGUARD_KAFKA_SASL_PASSWORD"`.
    #[serde(default)]
    pub properties_from_env: BTreeMap<String, String>,
}

fn default_topics() -> Vec<String> {
    vec!["cv-events".into()]
}
fn default_alerts_topic() -> String {
    "cvguard-alerts".into()
}
fn default_incidents_topic() -> String {
    "cvguard-incidents".into()
}
fn default_repartition_topic() -> String {
    "cvguard-repartition".into()
}
fn default_partitions() -> i32 {
    6
}
fn default_replication() -> i32 {
    1
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            topics: default_topics(),
            alerts_topic: default_alerts_topic(),
            incidents_topic: default_incidents_topic(),
            dead_letter_topic: None,
            repartition_topic: default_repartition_topic(),
            partitions: default_partitions(),
            replication_factor: default_replication(),
            bootstrap_servers: None,
            group_id: None,
            properties: BTreeMap::new(),
            properties_from_env: BTreeMap::new(),
        }
    }
}

impl KafkaSection {
    /// librdkafka properties as strings, with the shorthands applied.
    pub fn client_properties(&self) -> BTreeMap<String, String> {
        let mut props: BTreeMap<String, String> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect();
        if let Some(b) = &self.bootstrap_servers {
            props.insert("bootstrap.servers".into(), b.clone());
        }
        if let Some(g) = &self.group_id {
            props.insert("group.id".into(), g.clone());
        }
        for (prop, var) in &self.properties_from_env {
            if let Ok(value) = std::env::var(var) {
                props.insert(prop.clone(), value);
            }
        }
        props
    }
}

/// One `[[sinks]]` entry: where alerts go besides the Kafka topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum SinkSpec {
    /// JSON lines appended to a file: the alert contract.
    Jsonl { path: String },
    /// JSON lines on standard output.
    Stdout {},
    /// POST of each alert as JSON, signed like the suspend webhook.
    Webhook {
        url: String,
        /// Environment variable holding the HMAC key; unsigned without it.
        #[serde(default)]
        secret_env: Option<String>,
        #[serde(default = "default_sink_timeout")]
        timeout: String,
    },
    /// Prometheus Alertmanager's v2 API: the base URL, e.g. http://127.0.0.1:9093.
    Alertmanager {
        url: String,
        #[serde(default = "default_sink_timeout")]
        timeout: String,
        /// How often an open incident's alert is posted again; its `endsAt` is 4 of these
        /// ahead, so Alertmanager never resolves it by itself while the incident is open.
        #[serde(default = "default_alertmanager_resend")]
        resend_interval: String,
    },
    /// A Kafka topic (the `[kafka.properties]` connection), key = the alert's key.
    Kafka { topic: String },
}

fn default_sink_timeout() -> String {
    "5s".into()
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite://PATH` (embedded, one instance) or `postgres://user@host/db` (several).
    #[serde(default = "default_store_url")]
    pub url: String,
}

fn default_store_url() -> String {
    "sqlite://data/cvguard.db".into()
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            url: default_store_url(),
        }
    }
}

/// `[suspend]`: the platform's suspend webhook and the safety rails around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuspendSection {
    /// The platform's endpoint; without it, suspend decisions are recorded but not sent.
    #[serde(default)]
    pub url: Option<String>,
    /// Environment variable holding the HMAC key (never the key itself).
    #[serde(default = "default_secret_env")]
    pub secret_env: String,
    #[serde(default = "default_suspend_timeout")]
    pub timeout: String,
    /// Attempts on 5xx, 429 and timeouts before the call is recorded as failed.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Blast-radius limit: automatic suspensions per hour; beyond it, alert only.
    #[serde(default = "default_max_per_hour")]
    pub max_per_hour: u32,
    /// After an unsuspend (false positive), no automatic suspension of that account for this long.
    #[serde(default = "default_cooldown")]
    pub cooldown: String,
}

fn default_secret_env() -> String {
    "CVGUARD_SUSPEND_SECRET".into()
}
fn default_suspend_timeout() -> String {
    "5s".into()
}
fn default_max_attempts() -> u32 {
    10
}
fn default_max_per_hour() -> u32 {
    20
}
fn default_cooldown() -> String {
    "24h".into()
}

impl Default for SuspendSection {
    fn default() -> Self {
        SuspendSection {
            url: None,
            secret_env: default_secret_env(),
            timeout: default_suspend_timeout(),
            max_attempts: default_max_attempts(),
            max_per_hour: default_max_per_hour(),
            cooldown: default_cooldown(),
        }
    }
}
