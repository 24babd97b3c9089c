//! Prometheus Alertmanager (`POST /api/v2/alerts`): alerts that end, are kept alive while
//! their incident is open or acknowledged, and are resolved when it closes.
//!
//! Alertmanager treats an alert without `endsAt` as firing until `resolve_timeout` (5 min
//! by default) and then resolves it by itself; posting each alert once therefore closed an
//! open incident's alert in the SOC's view after five minutes (#13). Prometheus avoids
//! that by giving every alert `endsAt = now + 4 x resend interval` and sending it again
//! every interval while it fires; we do the same:
//!
//! - [`AlertmanagerSink`] posts an alert the moment it is published (the fast path, and the
//!   only one for system alerts, which are notices with no incident behind them).
//! - [`run`] keeps each incident's alert alive from the store, the authority on which
//!   incidents are open: it re-posts every open or acknowledged incident each resend
//!   interval, and posts a resolve (`endsAt` = when it closed) once it is resolved or a
//!   false positive, again each interval for `4 x resend` so a firing post still in flight
//!   (the sink's, or another instance's) cannot have the last word.
//!
//! Both build labels with [`labels`], so Alertmanager sees one alert per incident, never
//! two label sets for it. If `run` stops (or the process), the alerts end by themselves
//! at most `4 x resend` after their last post.

use std::collections::BTreeMap;
use std::time::Duration;

use cvguard_config::SinkSpec;
use cvguard_core::timefmt::format_rfc3339_ms;
use cvguard_store::{Incident, IncidentFilter, Store};
use serde_json::{json, Map, Value};
use tracing::{info, warn};

use crate::http_sinks::{answer, classify, redirect_error, wall_clock_ms, LazyClient};
use crate::sinks::{RetryHint, Sink, SinkError};

/// How often an open incident's alert is posted again, unless the sink sets its own.
pub const DEFAULT_RESEND: Duration = Duration::from_secs(60);

/// An alert's `endsAt` is this many resend intervals after it was posted, as Prometheus
/// does: a few lost or late posts do not end it, a stopped sender does soon enough.
pub const ENDS_AFTER_RESENDS: u32 = 4;

/// How often the store is asked what changed: how soon a new or closed incident is posted.
const POLL: Duration = Duration::from_secs(1);

/// Incident changes read per query.
const CHANGES_PER_READ: i64 = 500;

/// Incidents per page when listing the open ones (the store's own cap).
const LIST_PAGE: i64 = 1000;

/// Alerts per POST, as Prometheus' notifier batches them.
const ALERTS_PER_POST: usize = 256;

/// One Alertmanager to keep alerts alive in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http://host:9093/api/v2/alerts`.
    pub url: String,
    pub timeout: Duration,
    pub resend: Duration,
}

impl Target {
    fn ends_after_ms(&self) -> i64 {
        ends_after_ms(self.resend)
    }
}

fn ends_after_ms(resend: Duration) -> i64 {
    (resend * ENDS_AFTER_RESENDS).as_millis() as i64
}

/// The v2 endpoint under a configured base URL.
pub fn alerts_url(base: &str) -> String {
    format!("{}/api/v2/alerts", base.trim_end_matches('/'))
}

/// The Alertmanager sinks among `specs`, as targets.
pub fn targets(specs: &[SinkSpec]) -> Vec<Target> {
    specs
        .iter()
        .filter_map(|spec| match spec {
            SinkSpec::Alertmanager { url, timeout, .. } => Some(Target {
                url: alerts_url(url),
                timeout: crate::sinks::duration(timeout),
                resend: resend_interval(spec),
            }),
            _ => None,
        })
        .collect()
}

/// The sink's resend interval: [`DEFAULT_RESEND`] until the `alertmanager` sink config has a
/// `resend_interval` (cvguard-config has no such field yet).
pub fn resend_interval(spec: &SinkSpec) -> Duration {
    match spec {
        SinkSpec::Alertmanager { resend_interval, .. } => humantime::parse_duration(resend_interval.trim())
            .ok()
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_RESEND),
        _ => DEFAULT_RESEND,
    }
}

/// The labels of an alert: what Alertmanager tells alerts apart by, groups, routes,
/// inhibits and silences on, so each is stable for the life of an incident. `key` is the
/// account, org, recruiter user or IP the rule counts, on the harvesting side (never a CV
/// id, nothing about a job seeker): a SOC silences or routes by it. Empty values are left
/// out, as Alertmanager reads an empty label as an absent one.
pub fn labels(rule: &str, incident_id: Option<&str>, key_kind: &str, key: &str, severity: &str) -> Map<String, Value> {
    [
        ("alertname", Some(rule)),
        ("incident_id", incident_id),
        ("key_kind", Some(key_kind)),
        ("key", Some(key)),
        ("severity", Some(severity)),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.filter(|v| !v.is_empty()).map(|v| (name.to_string(), json!(v))))
    .collect()
}

fn summary(key_kind: &str, key: &str, rule: &str, value: &str, threshold: &str, action: &str) -> String {
    format!("{key_kind} {key} reached {value} (threshold {threshold}) on {rule}: {action}")
}

/// One alert in the v2 shape. `startsAt` is always sent: Alertmanager sets a missing one
/// to `endsAt`, which would date a firing alert in the future.
fn am_alert(
    labels: Map<String, Value>,
    annotations: Map<String, Value>,
    starts_ms: i64,
    ends_ms: i64,
    incident_id: Option<&str>,
) -> Value {
    let mut a = json!({
        "labels": labels,
        "annotations": annotations,
        // Alertmanager refuses an alert that ends before it starts.
        "startsAt": format_rfc3339_ms(starts_ms.min(ends_ms)),
        "endsAt": format_rfc3339_ms(ends_ms),
    });
    if let Some(id) = incident_id.filter(|id| !id.is_empty()) {
        a["generatorURL"] = json!(format!("cvguard://incidents/{id}"));
    }
    a
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The first firing of a published alert, as the sink posts it. An engine alert (it has a
/// `measure`) is an incident whose id is its `alert_id`: [`run`] keeps it alive with the
/// same labels. Anything else is a system alert (docs/ALERTS.md): a notice that ends
/// `4 x resend` after its last post; it names an incident only when it carries an
/// `incident_id`.
pub fn alert_payload(alert: &Value, now_ms: i64, resend: Duration) -> Value {
    let s = |k: &str| text(&alert[k]);
    let engine = alert.get("measure").is_some();
    let incident_id = if engine { s("alert_id") } else { s("incident_id") };
    let labels = labels(
        &s("rule"),
        Some(&incident_id),
        &s("key_kind"),
        &s("key"),
        &s("severity"),
    );
    let mut annotations = Map::new();
    let mut note = |k: &str, v: String| {
        if !v.is_empty() {
            annotations.insert(k.to_string(), json!(v));
        }
    };
    if engine {
        note(
            "summary",
            summary(
                &s("key_kind"),
                &s("key"),
                &s("rule"),
                &s("value"),
                &s("threshold"),
                &s("action"),
            ),
        );
        note("status", "open".into());
    } else {
        note("summary", format!("{}: {} {}", s("rule"), s("key_kind"), s("key")));
        note("detail", s("detail"));
    }
    for k in [
        "value",
        "threshold",
        "action",
        "reason",
        "window",
        "event_time",
        "first_seen",
    ] {
        note(k, s(k));
    }
    // A health alarm's resolution (`status` resolved) ends the alert it fired, from when
    // that started: the same labels, `endsAt` now.
    let since = alert["since"]
        .as_str()
        .and_then(cvguard_core::timefmt::parse_rfc3339_ms);
    let (starts, ends) = match (alert["status"].as_str(), since) {
        (Some("resolved"), Some(since)) => (since, now_ms),
        (_, Some(since)) => (since, now_ms + ends_after_ms(resend)),
        _ => (now_ms, now_ms + ends_after_ms(resend)),
    };
    json!([am_alert(labels, annotations, starts, ends, Some(&incident_id))])
}

fn incident_labels(i: &Incident) -> Map<String, Value> {
    labels(&i.rule, Some(&i.id), &i.key_kind, &i.key, &i.severity)
}

fn incident_annotations(i: &Incident) -> Map<String, Value> {
    let v = &i.cvs_by_visibility;
    let pairs = [
        (
            "summary",
            summary(
                &i.key_kind,
                &i.key,
                &i.rule,
                &i.latest_value.to_string(),
                &i.threshold.to_string(),
                &i.action,
            ),
        ),
        ("status", i.status.clone()),
        ("value", i.latest_value.to_string()),
        ("value_at_detection", i.value_at_detection.to_string()),
        ("threshold", i.threshold.to_string()),
        ("action", i.action.clone()),
        ("reason", i.reason.clone()),
        ("suspended", i.suspended.to_string()),
        ("exposed_cvs", (v.named + v.anonymous + v.unknown).to_string()),
        ("opened_at", i.opened_at.clone()),
        ("first_event_time", i.first_event_time.clone()),
        ("last_event_time", i.last_event_time.clone()),
    ];
    pairs.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect()
}

fn opened_ms(i: &Incident, fallback: i64) -> i64 {
    cvguard_core::timefmt::parse_rfc3339_ms(&i.opened_at).unwrap_or(fallback)
}

fn firing(i: &Incident, now_ms: i64, ends_after_ms: i64) -> Value {
    am_alert(
        incident_labels(i),
        incident_annotations(i),
        opened_ms(i, now_ms),
        now_ms + ends_after_ms,
        Some(&i.id),
    )
}

fn resolved(c: &Closed) -> Value {
    let i = &c.incident;
    am_alert(
        incident_labels(i),
        incident_annotations(i),
        opened_ms(i, c.ended_ms),
        c.ended_ms,
        Some(&i.id),
    )
}

/// Whether an incident's alert fires: until it is resolved or a false positive.
pub fn fires(status: &str) -> bool {
    matches!(status, "open" | "acknowledged")
}

/// An incident that closed: its resolve is posted until `forget_at`.
#[derive(Debug, Clone)]
struct Closed {
    incident: Incident,
    ended_ms: i64,
    forget_at_ms: i64,
}

/// What is known of the incidents, and what Alertmanager should be told. No IO: the loop
/// in [`run`] feeds it from the store and posts what it returns.
#[derive(Debug)]
struct Tracker {
    ends_after_ms: i64,
    firing: BTreeMap<String, Incident>,
    closed: BTreeMap<String, Closed>,
}

impl Tracker {
    fn new(resend: Duration) -> Tracker {
        Tracker {
            ends_after_ms: ends_after_ms(resend),
            firing: BTreeMap::new(),
            closed: BTreeMap::new(),
        }
    }

    /// Takes an incident's state as of `changed_ms`; returns the alert to post now: a
    /// firing one the first time it is seen open, a resolve the first time it is seen
    /// closed (also when never seen open: it may have opened and closed between two reads,
    /// with the sink's firing post already sent).
    fn observe(&mut self, incident: Incident, changed_ms: i64, now_ms: i64) -> Option<Value> {
        let id = incident.id.clone();
        if fires(&incident.status) {
            let first = !self.firing.contains_key(&id);
            let alert = first.then(|| firing(&incident, now_ms, self.ends_after_ms));
            self.firing.insert(id, incident);
            return alert;
        }
        self.firing.remove(&id);
        if self.closed.contains_key(&id) {
            return None;
        }
        let c = Closed {
            incident,
            // Another instance's clock may run ahead: a resolve must not end in the future.
            ended_ms: changed_ms.min(now_ms),
            forget_at_ms: now_ms + self.ends_after_ms,
        };
        let alert = resolved(&c);
        self.closed.insert(id, c);
        Some(alert)
    }

    /// Every alert to post at a resend: each firing one with a fresh `endsAt`, each
    /// recent resolve again. Forgets resolves older than `4 x resend`.
    fn due(&mut self, now_ms: i64) -> Vec<Value> {
        self.closed.retain(|_, c| c.forget_at_ms > now_ms);
        self.firing
            .values()
            .map(|i| firing(i, now_ms, self.ends_after_ms))
            .chain(self.closed.values().map(resolved))
            .collect()
    }

    /// Ids believed firing that are not in `listed` (the open incidents the store just
    /// listed): each is checked one by one before it is resolved, because a listing by
    /// pages can skip a row while others close.
    fn unlisted(&self, listed: &[Incident]) -> Vec<String> {
        let listed: std::collections::HashSet<&str> = listed.iter().map(|i| i.id.as_str()).collect();
        self.firing
            .keys()
            .filter(|id| !listed.contains(id.as_str()))
            .cloned()
            .collect()
    }
}

/// Keeps the incidents' alerts alive in every Alertmanager among `sinks` and resolves
/// them when their incidents close; returns at once when there is none. Meant to be
/// spawned by `serve` next to the sinks, for as long as the process runs.
pub async fn run(store: Store, sinks: Vec<SinkSpec>) {
    let loops = targets(&sinks).into_iter().map(|t| keep_alive(store.clone(), t));
    futures::future::join_all(loops).await;
}

/// The loop for one Alertmanager: read changes every second, post what is new at once,
/// and every resend interval check the open incidents against the store and post them all.
pub async fn keep_alive(store: Store, target: Target) {
    let client = match reqwest::Client::builder()
        .timeout(target.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(message = "Alertmanager keep-alive cannot start; alerts end 4 resend intervals after the sink posts them.", url = %target.url, error = %e);
            return;
        }
    };
    info!(message = "Keeping incident alerts alive in Alertmanager.", url = %target.url, resend = ?target.resend);
    let mut tracker = Tracker::new(target.resend);
    // Incidents that closed while no one was keeping their alerts alive (a restart) are
    // resolved too: their alerts may still fire for up to 4 resend intervals.
    let mut changes = Changes {
        since_ms: wall_clock_ms() - target.ends_after_ms(),
    };
    let mut next_resend = tokio::time::Instant::now();
    loop {
        let now = wall_clock_ms();
        let mut now_due = Vec::new();
        for (at, incident) in changes.read(&store).await {
            now_due.extend(tracker.observe(incident, at, now));
        }
        if tokio::time::Instant::now() >= next_resend {
            next_resend = tokio::time::Instant::now() + target.resend;
            reconcile(&store, &mut tracker, now).await;
            // The due list includes what was new in this round.
            now_due = tracker.due(now);
        }
        if !now_due.is_empty() {
            if let Err(e) = post(&client, &target.url, &now_due).await {
                warn!(message = "Posting alerts to Alertmanager failed; they are posted again at the next resend.", url = %target.url, error = %e, retry = ?e.hint, alerts = now_due.len());
            }
        }
        tokio::time::sleep(POLL.min(target.resend)).await;
    }
}

/// The cursor over the store's incident changes.
struct Changes {
    since_ms: i64,
}

impl Changes {
    /// The changes at or after the cursor, oldest first, reading on while pages come full.
    /// A change committed late with an earlier time than the cursor is missed here and
    /// found by the next [`reconcile`].
    async fn read(&mut self, store: &Store) -> Vec<(i64, Incident)> {
        let mut all = Vec::new();
        loop {
            let page = match store.changed_since(self.since_ms, CHANGES_PER_READ).await {
                Ok(page) => page,
                Err(e) => {
                    warn!(message = "Alertmanager keep-alive cannot read incident changes; will retry.", error = %e);
                    return all;
                }
            };
            let full = page.len() as i64 == CHANGES_PER_READ;
            let last = page.last().map(|(at, _)| *at);
            all.extend(page);
            match last {
                // A full page whose last change is later than the cursor: read on from
                // there (that millisecond again, so none of it is missed).
                Some(at) if full && at > self.since_ms => self.since_ms = at,
                // A page ending before it is full, or a full page all in the cursor's
                // millisecond (more changes in one millisecond than a page): move past.
                Some(at) => {
                    self.since_ms = at.max(self.since_ms) + 1;
                    return all;
                }
                None => return all,
            }
        }
    }
}

/// Lists the open and acknowledged incidents (the authority) into the tracker, and
/// checks one by one those it believes firing that the list lacks. On a store error the
/// tracker keeps what it knows: alerts are not resolved because the store is unavailable.
async fn reconcile(store: &Store, tracker: &mut Tracker, now_ms: i64) {
    let mut listed = Vec::new();
    for status in ["open", "acknowledged"] {
        let mut offset = 0;
        loop {
            let filter = IncidentFilter {
                status: Some(status.into()),
                limit: LIST_PAGE,
                offset,
                ..Default::default()
            };
            match store.list(&filter).await {
                Ok(page) => {
                    let n = page.len() as i64;
                    listed.extend(page);
                    if n < LIST_PAGE {
                        break;
                    }
                    offset += n;
                }
                Err(e) => {
                    warn!(message = "Alertmanager keep-alive cannot list open incidents; posting what it knows.", error = %e);
                    return;
                }
            }
        }
    }
    for id in tracker.unlisted(&listed) {
        match store.get(&id).await {
            Ok(Some(detail)) => {
                tracker.observe(detail.incident, now_ms, now_ms);
            }
            Ok(None) => {
                // Gone from the store: nothing keeps it open any more.
                if let Some(mut i) = tracker.firing.get(&id).cloned() {
                    i.status = "resolved".into();
                    tracker.observe(i, now_ms, now_ms);
                }
            }
            Err(e) => {
                warn!(message = "Alertmanager keep-alive cannot read an incident; keeps its alert.", incident = %id, error = %e)
            }
        }
    }
    for i in listed {
        tracker.observe(i, now_ms, now_ms);
    }
}

/// Posts `alerts` in batches. A 4xx names what Alertmanager refused.
async fn post(client: &reqwest::Client, url: &str, alerts: &[Value]) -> Result<(), SinkError> {
    for batch in alerts.chunks(ALERTS_PER_POST) {
        let resp = match client.post(url).json(batch).send().await {
            Ok(resp) => resp,
            Err(e) => return classify(Err(e.to_string())),
        };
        let code = resp.status().as_u16();
        if resp.status().is_redirection() {
            return Err(SinkError {
                message: redirect_error(code, resp.headers()),
                hint: RetryHint::GiveUp,
            });
        }
        if let Err(mut e) = classify(Ok(code)) {
            let body = resp.text().await.unwrap_or_default();
            e.message = format!("{}: {}", e.message, body.chars().take(300).collect::<String>().trim());
            return Err(e);
        }
    }
    Ok(())
}

/// The sink: posts each alert as it is published, with the labels [`run`] keeps alive.
pub struct AlertmanagerSink {
    url: String,
    resend: Duration,
    client: LazyClient,
}

impl AlertmanagerSink {
    pub fn new(base: &str, timeout: Duration, resend: Duration) -> AlertmanagerSink {
        AlertmanagerSink {
            url: alerts_url(base),
            resend,
            client: LazyClient::new(timeout),
        }
    }
}

impl Sink for AlertmanagerSink {
    fn deliver(&mut self, alert_json: &[u8]) -> Result<(), SinkError> {
        let alert: Value = serde_json::from_slice(alert_json).map_err(|e| SinkError {
            message: format!("not an alert: {e}"),
            hint: RetryHint::GiveUp,
        })?;
        let payload = alert_payload(&alert, wall_clock_ms(), self.resend);
        answer(self.client.get()?.post(&self.url).json(&payload).send())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cvguard_core::timefmt::parse_rfc3339_ms;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::{Arc, Mutex};

    const T: i64 = 1_714_795_200_000;
    const RESEND: Duration = Duration::from_secs(60);

    fn incident(id: &str, status: &str) -> Incident {
        Incident {
            id: id.into(),
            rule: "mass-harvest-24h".into(),
            key_kind: "account_id".into(),
            key: "harvester-1".into(),
            accounts: vec!["harvester-1".into()],
            severity: "critical".into(),
            status: status.into(),
            action: "suspend".into(),
            reason: "rule_response".into(),
            suspended: false,
            opened_at: format_rfc3339_ms(T),
            first_event_time: format_rfc3339_ms(T - 3_600_000),
            last_event_time: format_rfc3339_ms(T),
            value_at_detection: 4000,
            latest_value: 4100,
            threshold: 4000,
            threshold_source: "rule".into(),
            baseline: None,
            time_to_detect_ms: 3_600_000,
            cvs_by_visibility: Default::default(),
            notify_authority_by: format_rfc3339_ms(T + 72 * 3_600_000),
            evidence: json!({"users": ["u-1"], "ips": ["198.51.100.66"]}),
        }
    }

    fn ends(a: &Value) -> i64 {
        parse_rfc3339_ms(a["endsAt"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn the_sink_and_the_keep_alive_give_an_incident_one_label_set_without_cv_or_evidence() {
        let alert = json!({
            "alert_id": "3f0c9d2e8a41b7c5", "rule": "mass-harvest-24h", "severity": "critical",
            "key_kind": "account_id", "key": "harvester-1", "measure": "distinct_cvs", "window": "24h",
            "value": 4000, "threshold": 4000, "action": "suspend", "reason": "rule_response",
            "event_time": "2024-05-04T05:01:46.748Z", "first_seen": "2024-05-04T04:00:00.000Z",
            "accounts": ["harvester-1"], "evidence": {"users": ["u-1"], "ips": ["198.51.100.66"]},
        });
        let from_sink = &alert_payload(&alert, T, RESEND)[0];
        let from_task = firing(&incident("3f0c9d2e8a41b7c5", "open"), T, ends_after_ms(RESEND));
        assert_eq!(from_sink["labels"], from_task["labels"]);
        assert_eq!(
            from_task["labels"],
            json!({"alertname": "mass-harvest-24h", "incident_id": "3f0c9d2e8a41b7c5",
                   "key_kind": "account_id", "key": "harvester-1", "severity": "critical"})
        );
        assert_eq!(ends(from_sink), T + 240_000, "endsAt = now + 4 x resend");
        assert_eq!(from_sink["startsAt"], json!(format_rfc3339_ms(T)));
        for a in [from_sink, &from_task] {
            let text = a.to_string();
            assert!(!text.contains("u-1") && !text.contains("198.51.100.66"), "{text}");
            assert!(a["annotations"].as_object().unwrap().values().all(Value::is_string));
        }
    }

    #[test]
    fn system_alerts_name_an_incident_only_when_they_carry_one() {
        let store = json!({"alert_id": "store-unavailable-1", "rule": "store-unavailable", "severity": "critical",
                           "key_kind": "system", "key": "store", "action": "alert", "detail": "down"});
        let a = &alert_payload(&store, T, RESEND)[0];
        assert_eq!(
            a["labels"],
            json!({"alertname": "store-unavailable", "key_kind": "system", "key": "store", "severity": "critical"})
        );
        assert!(a.get("generatorURL").is_none());
        let failed = json!({"alert_id": "inc-1:suspend-failed:acc", "rule": "suspend-webhook-failed",
                            "severity": "critical", "key_kind": "account_id", "key": "acc", "incident_id": "inc-1"});
        assert_eq!(alert_payload(&failed, T, RESEND)[0]["labels"]["incident_id"], "inc-1");
    }

    #[test]
    fn an_open_incident_fires_with_a_fresh_end_at_each_resend_and_its_close_is_resolved_for_a_while() {
        let mut t = Tracker::new(RESEND);
        let first = t.observe(incident("a", "open"), T, T).expect("posted when first seen");
        assert_eq!(ends(&first), T + 240_000);
        assert_eq!(first["startsAt"], json!(format_rfc3339_ms(T)));
        assert!(
            t.observe(incident("a", "acknowledged"), T + 1, T + 1).is_none(),
            "still firing: no extra post"
        );
        let later = t.due(T + 60_000);
        assert_eq!(later.len(), 1);
        assert_eq!(ends(&later[0]), T + 300_000);
        assert_eq!(later[0]["annotations"]["status"], "acknowledged");
        assert_eq!(later[0]["labels"], first["labels"]);

        let resolve = t
            .observe(incident("a", "resolved"), T + 61_000, T + 62_000)
            .expect("resolve at once");
        assert_eq!(ends(&resolve), T + 61_000, "ends when it closed");
        assert_eq!(resolve["labels"], first["labels"]);
        assert!(
            t.observe(incident("a", "resolved"), T + 61_000, T + 63_000).is_none(),
            "once"
        );
        // Re-sent at each resend, so a firing post in flight cannot have the last word ...
        let again = t.due(T + 120_000);
        assert_eq!(again.len(), 1);
        assert_eq!(ends(&again[0]), T + 61_000);
        // ... until every firing post's endsAt has passed anyway.
        assert!(t.due(T + 62_000 + 240_000).is_empty());
    }

    #[test]
    fn a_close_never_seen_open_is_resolved_and_an_end_in_the_future_is_not_believed() {
        let mut t = Tracker::new(RESEND);
        let r = t.observe(incident("b", "false_positive"), T + 5_000, T).unwrap();
        assert_eq!(ends(&r), T, "another instance's clock ahead: ends now");
        assert!(t.firing.is_empty());
        let listed = vec![incident("c", "open")];
        t.observe(incident("d", "open"), T, T);
        assert_eq!(t.unlisted(&listed), vec!["d".to_string()]);
    }

    /// Each alert posted, with the wall-clock time it arrived.
    type Posts = Arc<Mutex<Vec<(i64, Value)>>>;

    /// A stand-in for Alertmanager's `POST /api/v2/alerts`: records what is posted, answers 200.
    fn fake_alertmanager() -> (String, Posts) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v2/alerts", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut r = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; length];
                if r.read_exact(&mut body).is_err() {
                    continue;
                }
                let at = wall_clock_ms();
                if let Ok(Value::Array(alerts)) = serde_json::from_slice(&body) {
                    g.lock().unwrap().extend(alerts.into_iter().map(|a| (at, a)));
                }
                let _ = r
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        (url, got)
    }

    fn engine_alert(id: &str) -> cvguard_core::Alert {
        use cvguard_core::{AlertAction, AlertReason, Evidence, KeyKind, Measure, Severity};
        cvguard_core::Alert {
            alert_id: id.into(),
            rule: "mass-harvest-24h".into(),
            severity: Severity::Critical,
            key_kind: KeyKind::AccountId,
            key: "harvester-1".into(),
            measure: Measure::DistinctCvs,
            window: "24h".into(),
            value: 4000,
            threshold: 4000,
            threshold_source: cvguard_core::ThresholdSource::Rule,
            baseline: None,
            action: AlertAction::Alert,
            reason: AlertReason::RuleResponse,
            event_time: format_rfc3339_ms(wall_clock_ms()),
            event_id: None,
            first_seen: format_rfc3339_ms(wall_clock_ms()),
            time_to_detect_ms: 0,
            accounts: vec!["harvester-1".into()],
            suspend_accounts: vec![],
            evidence: Evidence {
                windows: vec![],
                distinct_cvs: Some(4000),
                cvs_by_visibility: None,
                distinct_users: 1,
                distinct_ips: 1,
                distinct_user_agents: 1,
                users: vec![],
                ips: vec![],
                user_agents: vec![],
                sets_truncated: false,
            },
            event_time_ms: wall_clock_ms(),
        }
    }

    /// Polls `got` until `done` holds for the posts of incident `id`, or fails after 20 s.
    fn wait_posts(
        got: &Mutex<Vec<(i64, Value)>>,
        id: &str,
        done: impl Fn(&[(i64, Value)]) -> bool,
    ) -> Vec<(i64, Value)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let posts: Vec<(i64, Value)> = got
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, a)| a["labels"]["incident_id"] == id)
                .cloned()
                .collect();
            if done(&posts) {
                return posts;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gave up waiting; posts so far: {posts:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keep_alive_re_posts_an_open_incident_from_the_store_and_resolves_it_when_it_closes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}/incidents.db", dir.path().display()))
            .await
            .unwrap();
        let (url, got) = fake_alertmanager();
        let resend = Duration::from_millis(200);
        let task = tokio::spawn(keep_alive(
            store.clone(),
            Target {
                url,
                timeout: Duration::from_secs(2),
                resend,
            },
        ));
        store
            .open_incident(&engine_alert("inc-a"), wall_clock_ms(), &[])
            .await
            .unwrap();

        let firing_posts = tokio::task::block_in_place(|| wait_posts(&got, "inc-a", |p| p.len() >= 4));
        for (at, a) in &firing_posts {
            assert!(ends(a) > *at, "firing: ends after it arrived");
            assert!(ends(a) <= at + ends_after_ms(resend) + 50, "and within 4 resends");
        }
        let ends_at: Vec<i64> = firing_posts.iter().map(|(_, a)| ends(a)).collect();
        assert!(
            ends_at.windows(2).all(|w| w[0] < w[1]),
            "each re-post ends later: {ends_at:?}"
        );

        store
            .set_status("inc-a", "resolved", "soc-alice", "", wall_clock_ms(), &|_, _| {
                String::new()
            })
            .await
            .unwrap();
        let closed_at = wall_clock_ms();
        let seen = tokio::task::block_in_place(|| {
            wait_posts(&got, "inc-a", |p| p.last().is_some_and(|(at, a)| ends(a) <= *at))
        })
        .len();
        // After the resolve, whatever is posted for it is the resolve again.
        let after = tokio::task::block_in_place(|| wait_posts(&got, "inc-a", |p| p.len() >= seen + 2));
        for (_, a) in &after[seen - 1..] {
            assert!(ends(a) <= closed_at, "resolved: {a}");
            assert_eq!(a["labels"], firing_posts[0].1["labels"]);
        }
        task.abort();
    }
}
