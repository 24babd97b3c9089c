//! cvguard-core: the pure heart of cvguard.
//!
//! Event contract and parsing ([`event`]), rules and profiles ([`rules`], [`profiles`]),
//! sliding windows ([`window`]) and the deterministic [`engine::Engine`]. Nothing here
//! does IO or reads a clock: time comes from events, and adapters bring the rest.

pub mod alert;
pub mod baseline;
pub mod chunked;
pub mod cvmap;
pub mod dedupe;
pub mod distinct;
pub mod engine;
pub mod event;
pub mod interner;
pub mod profiles;
pub mod recent;
pub mod rules;
pub mod smallstr;
pub mod timefmt;
pub mod window;

pub use alert::{Alert, AlertAction, AlertReason, BaselineExplain, Evidence, VisibilityCounts, WindowValue};
pub use baseline::{BaselineSpec, Statistic};
pub use engine::{Closest, Engine, EngineStats, Exposure, HeapProfile, IncidentUpdate, Outcome, StateSize, ValueSeen};
pub use event::{parse_event, Event, ParseLimits, RejectReason, Visibility};
pub use profiles::{AccountProfile, OrgProfile, Profiles};
pub use rules::{
    ConfigIssue, DistinctField, EngineSpec, KeyKind, Measure, Response, Rule, RuleSet, RuleSpec, Severity,
    ThresholdSource,
};
