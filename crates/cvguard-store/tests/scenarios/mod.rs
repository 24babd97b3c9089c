//! Store scenarios, written once and run against every backend (sqlite.rs, postgres.rs).

use cvguard_core::{
    Alert, AlertAction, AlertReason, Evidence, Exposure, IncidentUpdate, KeyKind, Measure, Severity, Visibility,
};
use cvguard_store::{IncidentFilter, Opened, OutboxItem, Store, StoreError};

pub const T0: i64 = 1_714_795_200_000;

pub fn alert(id: &str, key: &str, rule: &str, value: u64) -> Alert {
    Alert {
        alert_id: id.into(),
        rule: rule.into(),
        severity: Severity::Critical,
        key_kind: KeyKind::AccountId,
        key: key.into(),
        measure: Measure::DistinctCvs,
        window: "24h".into(),
        value,
        threshold: 4000,
        threshold_source: cvguard_core::ThresholdSource::PerVacancy,
        baseline: None,
        action: AlertAction::Suspend,
        reason: AlertReason::RuleResponse,
        event_time: "2024-05-04T05:01:46.000Z".into(),
        event_id: None,
        first_seen: "2024-05-04T04:00:00.000Z".into(),
        time_to_detect_ms: 3_706_000,
        accounts: vec![key.into()],
        suspend_accounts: vec![key.into()],
        evidence: Evidence {
            windows: vec![],
            distinct_cvs: Some(value),
            cvs_by_visibility: None,
            distinct_users: 1,
            distinct_ips: 1,
            distinct_user_agents: 1,
            users: vec![],
            ips: vec![],
            user_agents: vec![],
            sets_truncated: false,
        },
        event_time_ms: T0 + 3_706_000,
    }
}

fn cv(id: &str, at: i64, action: &str, v: Visibility) -> Exposure {
    Exposure {
        cv_id: id.into(),
        first_access_ms: at,
        action: action.into(),
        visibility: v,
    }
}

fn suspend_call(account: &str) -> OutboxItem {
    OutboxItem {
        kind: "suspend",
        account_id: account.into(),
        body: format!("{{\"account_id\":\"{account}\"}}"),
    }
}

pub async fn opening_is_idempotent_and_tracks_publication(store: &Store) {
    let a = alert("inc-1", "harvester-1", "mass-harvest-24h", 4000);
    assert_eq!(
        store
            .open_incident(&a, T0, &[suspend_call("harvester-1")])
            .await
            .unwrap(),
        Opened::New
    );
    assert_eq!(
        store
            .open_incident(&a, T0 + 5, &[suspend_call("harvester-1")])
            .await
            .unwrap(),
        Opened::Existing {
            incident_id: "inc-1".into(),
            published: false
        }
    );
    store.mark_published(&["inc-1".into()]).await.unwrap();
    assert_eq!(
        store.open_incident(&a, T0 + 9, &[]).await.unwrap(),
        Opened::Existing {
            incident_id: "inc-1".into(),
            published: true
        }
    );
    // One outbox row, not two.
    assert_eq!(
        store.outbox_counts().await.unwrap(),
        vec![("suspend".into(), "pending".into(), 1)]
    );
    let d = store.get("inc-1").await.unwrap().unwrap();
    assert_eq!(d.incident.status, "open");
    assert_eq!(d.incident.action, "suspend");
    // Why it fired and how fast, as the alert said (#14).
    assert_eq!(d.incident.threshold_source, "per_vacancy");
    assert_eq!(d.incident.time_to_detect_ms, 3_706_000);
    assert_eq!(
        d.incident.notify_authority_by,
        cvguard_core::timefmt::format_rfc3339_ms(T0 + 72 * 3_600_000)
    );
    assert_eq!(d.history.len(), 1);
    assert_eq!(d.actions.len(), 1);
    assert_eq!(d.actions[0].outcome, "pending");
}

pub async fn exposed_cvs_are_kept_once_with_first_access_and_counted(store: &Store) {
    let mut a = alert("inc-2", "harvester-2", "mass-harvest-24h", 3);
    a.event_time_ms = T0 + 900;
    store.open_incident(&a, T0, &[]).await.unwrap();
    let first = IncidentUpdate {
        incident_id: "inc-2".into(),
        value: Some(3),
        event_time_ms: T0 + 1000,
        cvs: vec![
            cv("cv-1", T0, "cv_view", Visibility::Anonymous),
            cv("cv-2", T0 + 500, "cv_download", Visibility::Named),
            cv("cv-3", T0 + 900, "cv_download", Visibility::Unknown),
        ],
        cvs_in_window: Some(3),
    };
    // cv-1 again later, named now: keeps its first access, becomes named. cv-4 is new.
    let second = IncidentUpdate {
        incident_id: "inc-2".into(),
        value: Some(4),
        event_time_ms: T0 + 2000,
        cvs: vec![
            cv("cv-1", T0 + 2000, "cv_download", Visibility::Named),
            cv("cv-4", T0 + 2000, "cv_download", Visibility::Anonymous),
        ],
        cvs_in_window: Some(4),
    };
    store.apply_updates(&[first], T0 + 1000).await.unwrap();
    store.apply_updates(&[second], T0 + 2000).await.unwrap();
    let rows = store.exposed_cvs("inc-2").await.unwrap();
    let got: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r.cv_id.as_str(), r.action.as_str(), r.visibility.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("cv-1", "cv_view", "named"),
            ("cv-2", "cv_download", "named"),
            ("cv-3", "cv_download", "unknown"),
            ("cv-4", "cv_download", "anonymous")
        ]
    );
    assert_eq!(rows[0].first_access, cvguard_core::timefmt::format_rfc3339_ms(T0));
    let i = store.get("inc-2").await.unwrap().unwrap().incident;
    assert_eq!(
        (
            i.cvs_by_visibility.named,
            i.cvs_by_visibility.anonymous,
            i.cvs_by_visibility.unknown
        ),
        (2, 1, 1)
    );
    assert_eq!(i.latest_value, 4);
    assert_eq!(i.last_event_time, cvguard_core::timefmt::format_rfc3339_ms(T0 + 2000));
    // A late event's CVs (no value: it changed no window), even one re-sent with the
    // newest time, are recorded and leave the latest value alone.
    let late = IncidentUpdate {
        incident_id: "inc-2".into(),
        value: None,
        event_time_ms: T0 + 2000,
        cvs: vec![cv("cv-5", T0 + 2000, "cv_view", Visibility::Unknown)],
        cvs_in_window: None,
    };
    store.apply_updates(&[late], T0 + 3000).await.unwrap();
    let i = store.get("inc-2").await.unwrap().unwrap().incident;
    assert_eq!((i.latest_value, i.cvs_by_visibility.unknown), (4, 2));
}

pub async fn a_large_exposure_is_stored_incrementally(store: &Store) {
    let a = alert("inc-big", "harvester-3", "mass-harvest-24h", 4000);
    store.open_incident(&a, T0, &[]).await.unwrap();
    for batch in 0..10 {
        let cvs = (0..1000)
            .map(|k| cv(&format!("cv-{batch}-{k}"), T0 + batch, "cv_download", Visibility::Named))
            .collect();
        store
            .apply_updates(
                &[IncidentUpdate {
                    incident_id: "inc-big".into(),
                    value: Some(1000 * (batch as u64 + 1)),
                    event_time_ms: T0 + batch,
                    cvs,
                    cvs_in_window: None,
                }],
                T0,
            )
            .await
            .unwrap();
    }
    assert_eq!(store.exposed_cvs("inc-big").await.unwrap().len(), 10_000);
    assert_eq!(
        store
            .get("inc-big")
            .await
            .unwrap()
            .unwrap()
            .incident
            .cvs_by_visibility
            .named,
        10_000
    );
}

pub async fn lifecycle_history_and_false_positive_unsuspend(store: &Store) {
    let a = alert("inc-3", "acc-3", "mass-harvest-24h", 4000);
    store.open_incident(&a, T0, &[suspend_call("acc-3")]).await.unwrap();
    // The suspend call goes out.
    let claimed = store.claim_due(T0 + 1, 30_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(
        store.claim_due(T0 + 2, 30_000, 10).await.unwrap().is_empty(),
        "leased, not claimable twice"
    );
    store.call_delivered(&claimed[0], T0 + 3, "200").await.unwrap();
    assert!(store.get("inc-3").await.unwrap().unwrap().incident.suspended);

    let body =
        |i: &cvguard_store::Incident, acc: &str| format!("{{\"unsuspend\":\"{acc}\",\"incident\":\"{}\"}}", i.id);
    let i = store
        .set_status("inc-3", "acknowledged", "soc-alice", "looking", T0 + 10, &body)
        .await
        .unwrap();
    assert_eq!(i.status, "acknowledged");
    let err = store
        .set_status("inc-3", "open", "soc-alice", "", T0 + 11, &body)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::BadTransition { .. }), "{err}");
    store
        .set_status(
            "inc-3",
            "false_positive",
            "soc-bob",
            "staffing agency, profile was stale",
            T0 + 20,
            &body,
        )
        .await
        .unwrap();
    let unsuspend = store.claim_due(T0 + 21, 30_000, 10).await.unwrap();
    assert_eq!(unsuspend.len(), 1);
    assert_eq!(unsuspend[0].kind, "unsuspend");
    assert!(unsuspend[0].body.contains("inc-3"));
    store.call_delivered(&unsuspend[0], T0 + 22, "200").await.unwrap();
    let d = store.get("inc-3").await.unwrap().unwrap();
    assert!(!d.incident.suspended);
    assert_eq!(d.incident.status, "false_positive");
    let changes: Vec<(&str, &str)> = d
        .history
        .iter()
        .map(|h| (h.actor.as_str(), h.change.as_str()))
        .collect();
    assert_eq!(
        changes,
        vec![
            ("cvguard", "opened"),
            ("soc-alice", "status open -> acknowledged"),
            ("soc-bob", "status acknowledged -> false_positive")
        ]
    );
    assert_eq!(store.last_unsuspend("acc-3").await.unwrap(), Some(T0 + 20));
    assert_eq!(store.last_unsuspend("acc-x").await.unwrap(), None);
    assert!(matches!(
        store.set_status("nope", "resolved", "x", "", T0, &body).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn outbox_retries_leases_and_failures(store: &Store) {
    let a = alert("inc-4", "acc-4", "mass-harvest-24h", 4000);
    store.open_incident(&a, T0, &[suspend_call("acc-4")]).await.unwrap();
    let row = store.claim_due(T0, 1000, 10).await.unwrap().remove(0);
    store.call_retry(&row, T0 + 1, T0 + 5000, "503").await.unwrap();
    assert!(
        store.claim_due(T0 + 4999, 1000, 10).await.unwrap().is_empty(),
        "not before its time"
    );
    let row = store.claim_due(T0 + 5000, 1000, 10).await.unwrap().remove(0);
    assert_eq!(row.attempts, 1);
    // A sender that died holding the lease: the row is claimable again after it.
    assert!(store.claim_due(T0 + 5500, 1000, 10).await.unwrap().is_empty());
    let again = store.claim_due(T0 + 6001, 1000, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    store
        .call_failed(&again[0], T0 + 6002, "400 Bad Request")
        .await
        .unwrap();
    assert!(store.claim_due(T0 + 99_999, 1000, 10).await.unwrap().is_empty());
    let d = store.get("inc-4").await.unwrap().unwrap();
    assert_eq!(d.actions.last().unwrap().outcome, "failed");
    assert!(!d.incident.suspended);
}

/// The console's stream reads changes after a cursor: 300 incidents changed in one
/// millisecond are all read, once each, in pages of 200, and a later change after them.
pub async fn changes_are_read_after_a_cursor_however_many_share_a_millisecond(store: &Store) {
    for i in 0..300 {
        let mut a = alert(&format!("c-{i:03}"), &format!("acc-{i}"), "r1", 10);
        a.action = AlertAction::Alert;
        store.open_incident(&a, T0, &[]).await.unwrap();
    }
    let (mut at, mut id) = (T0 - 1, "\u{10ffff}".to_string());
    let mut seen = Vec::new();
    loop {
        let page = store.changed_after(at, &id, 200).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 200);
        for (t, i) in page {
            (at, id) = (t, i.id.clone());
            seen.push(i.id);
        }
    }
    let expected: Vec<String> = (0..300).map(|i| format!("c-{i:03}")).collect();
    assert_eq!(seen, expected);
    store.add_note("c-007", "soc", "looked", T0 + 5).await.unwrap();
    let after = store.changed_after(at, &id, 200).await.unwrap();
    assert_eq!(
        after.iter().map(|(t, i)| (*t, i.id.as_str())).collect::<Vec<_>>(),
        vec![(T0 + 5, "c-007")]
    );
}

pub async fn listing_filters_and_pages(store: &Store) {
    for i in 0..7 {
        let mut a = alert(
            &format!("l-{i}"),
            &format!("acc-{}", i % 2),
            if i < 4 { "r1" } else { "r2" },
            10,
        );
        a.action = AlertAction::Alert;
        // Each (rule, key kind, key) once: a second crossing of an open one would join it.
        a.key_kind = if (i / 2) % 2 == 0 {
            KeyKind::AccountId
        } else {
            KeyKind::OrgId
        };
        store.open_incident(&a, T0 + i * 1000, &[]).await.unwrap();
    }
    let body = |_: &cvguard_store::Incident, _: &str| String::new();
    store
        .set_status("l-0", "resolved", "x", "", T0 + 10, &body)
        .await
        .unwrap();
    let all = store
        .list(&IncidentFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(all[0].id, "l-6", "newest first");
    let page: Vec<String> = store
        .list(&IncidentFilter {
            limit: 3,
            offset: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(page, vec!["l-3", "l-2", "l-1"]);
    let r1_open = store
        .list(&IncidentFilter {
            status: Some("open".into()),
            rule: Some("r1".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        r1_open.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec!["l-3", "l-2", "l-1"]
    );
    let by_key_and_time = store
        .list(&IncidentFilter {
            key: Some("acc-0".into()),
            from_ms: Some(T0 + 2000),
            to_ms: Some(T0 + 6000),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_key_and_time.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec!["l-4", "l-2"]
    );
}

pub async fn rails_queries(store: &Store) {
    for i in 0..3 {
        let a = alert(&format!("r-{i}"), &format!("acc-r{i}"), "mass", 4000);
        store
            .open_incident(&a, T0 + i * 1000, &[suspend_call(&format!("acc-r{i}"))])
            .await
            .unwrap();
    }
    assert_eq!(store.suspensions_since(T0).await.unwrap(), 3);
    assert_eq!(store.suspensions_since(T0 + 1500).await.unwrap(), 1);
    assert!(store.raise_once("suspension-limit", 7).await.unwrap());
    assert!(!store.raise_once("suspension-limit", 7).await.unwrap());
    assert!(store.raise_once("suspension-limit", 8).await.unwrap());
    store.audit(T0, "soc-alice", "ack", "r-0", "note").await.unwrap();
    let log = store.audit_log(10).await.unwrap();
    assert_eq!(log[0].1, "soc-alice");
    assert!(store.ping().await);
}

/// Every scenario, each on a fresh store from `fresh`.
/// A crossing of a (rule, key) whose incident is open joins that incident, whatever the
/// engine remembered: no second incident, no second call; the engine's updates under
/// the new alert id reach the kept incident. Once it is closed, a crossing opens anew.
pub async fn a_crossing_for_an_open_rule_and_key_joins_its_incident(store: &Store) {
    let first = alert("inc-a", "harvester-9", "mass-harvest-24h", 4000);
    store
        .open_incident(&first, T0, &[suspend_call("harvester-9")])
        .await
        .unwrap();
    let mut again = alert("inc-b", "harvester-9", "mass-harvest-24h", 4200);
    again.event_time_ms = T0 + 4_000_000;
    assert_eq!(
        store
            .open_incident(&again, T0 + 10, &[suspend_call("harvester-9")])
            .await
            .unwrap(),
        Opened::Existing {
            incident_id: "inc-a".into(),
            published: false
        }
    );
    // Asked again under the alias, the answer is the same and nothing more is written.
    assert_eq!(
        store.open_incident(&again, T0 + 11, &[]).await.unwrap(),
        Opened::Existing {
            incident_id: "inc-a".into(),
            published: false
        }
    );
    assert!(store.get("inc-b").await.unwrap().is_none());
    assert_eq!(
        store.outbox_counts().await.unwrap(),
        vec![("suspend".into(), "pending".into(), 1)]
    );
    store
        .apply_updates(
            &[IncidentUpdate {
                incident_id: "inc-b".into(),
                value: Some(4300),
                event_time_ms: T0 + 4_000_500,
                cvs: vec![cv("cv-late", T0 + 4_000_500, "cv_download", Visibility::Named)],
                cvs_in_window: None,
            }],
            T0 + 20,
        )
        .await
        .unwrap();
    let kept = store.get("inc-a").await.unwrap().unwrap();
    assert_eq!(kept.incident.latest_value, 4300);
    assert_eq!(kept.incident.cvs_by_visibility.named, 1);
    assert_eq!(store.exposed_cvs("inc-a").await.unwrap()[0].cv_id, "cv-late");
    assert!(kept.history.iter().any(|h| h.change == "crossed again"));

    store
        .set_status("inc-a", "resolved", "analyst", "handled", T0 + 30, &|_, _| {
            String::new()
        })
        .await
        .unwrap();
    let later = alert("inc-c", "harvester-9", "mass-harvest-24h", 4000);
    assert_eq!(store.open_incident(&later, T0 + 40, &[]).await.unwrap(), Opened::New);
}

/// Two rules deciding to suspend one account queue one call, not two.
pub async fn an_account_is_not_suspended_twice_by_two_rules(store: &Store) {
    let day = alert("inc-d", "acc-9", "mass-harvest-24h", 4000);
    let two_days = alert("inc-e", "acc-9", "mass-harvest-48h", 6000);
    store.open_incident(&day, T0, &[suspend_call("acc-9")]).await.unwrap();
    assert_eq!(
        store
            .open_incident(&two_days, T0 + 5, &[suspend_call("acc-9")])
            .await
            .unwrap(),
        Opened::New
    );
    assert_eq!(
        store.outbox_counts().await.unwrap(),
        vec![("suspend".into(), "pending".into(), 1)]
    );
    let second = store.get("inc-e").await.unwrap().unwrap();
    assert_eq!(second.actions.len(), 1);
    assert_eq!(second.actions[0].outcome, "already_suspended");
    assert!(second.actions[0].detail.contains("inc-d"));
}

/// The running per-visibility counts equal a recount of the stored list, with CVs
/// repeated inside a batch, across batches, and raised in visibility.
pub async fn running_counts_match_the_stored_list(store: &Store) {
    let a = alert("inc-f", "harvester-f", "mass-harvest-24h", 1);
    store.open_incident(&a, T0, &[]).await.unwrap();
    let vis = [Visibility::Unknown, Visibility::Anonymous, Visibility::Named];
    let mut state = 7u64;
    for batch in 0..12i64 {
        let mut updates = Vec::new();
        for u in 0..3 {
            let cvs = (0..40)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let id = (state >> 33) % 150;
                    let v = vis[((state >> 20) % 3) as usize];
                    cv(&format!("cv-{id}"), T0 + batch * 10 + u, "cv_view", v)
                })
                .collect();
            updates.push(IncidentUpdate {
                incident_id: "inc-f".into(),
                value: Some(batch as u64),
                event_time_ms: T0 + batch * 10 + u,
                cvs,
                cvs_in_window: None,
            });
        }
        store.apply_updates(&updates, T0).await.unwrap();
        let listed = store.exposed_cvs("inc-f").await.unwrap();
        let count = |name: &str| listed.iter().filter(|c| c.visibility == name).count() as i64;
        let i = store.get("inc-f").await.unwrap().unwrap().incident;
        assert_eq!(
            (
                i.cvs_by_visibility.named,
                i.cvs_by_visibility.anonymous,
                i.cvs_by_visibility.unknown
            ),
            (count("named"), count("anonymous"), count("unknown")),
            "after batch {batch}"
        );
    }
}

// The compare-and-set of every outbox outcome (#13).

/// An incident with one suspend call, claimed (in flight).
async fn in_flight(store: &Store, id: &str, account: &str) -> cvguard_store::OutboxRow {
    let call = OutboxItem {
        kind: "suspend",
        account_id: account.into(),
        body: format!(
            r#"{{"action":"suspend","incident_id":"{id}","account_id":"{account}","rule":"mass-harvest-24h","value":4000,"threshold":4000,"reason":"r","detected_at":"2024-05-04T05:01:47.000Z"}}"#
        ),
    };
    store
        .open_incident(&alert(id, account, "mass-harvest-24h", 4000), T0, &[call])
        .await
        .unwrap();
    let mut rows = store.claim_due(T0, 30_000, 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    rows.remove(0)
}

async fn false_positive(store: &Store, id: &str, at: i64) {
    let body = |i: &cvguard_store::Incident, acc: &str| {
        format!(
            r#"{{"action":"unsuspend","incident_id":"{}","account_id":"{acc}"}}"#,
            i.id
        )
    };
    store
        .set_status(id, "false_positive", "soc-bob", "agency", at, &body)
        .await
        .unwrap();
}

async fn outbox_now(store: &Store) -> Vec<(String, String, i64)> {
    store.outbox_counts().await.unwrap()
}

fn row(kind: &str, status: &str) -> (String, String, i64) {
    (kind.into(), status.into(), 1)
}

/// A false positive marked while the suspend call was in flight, which then timed out:
/// the retry must not bring the call back to pending (it would be sent again).
pub async fn a_cancelled_call_stays_cancelled_after_a_retry_or_a_failure(store: &Store) {
    let r = in_flight(store, "inc-r", "acc-r").await;
    false_positive(store, "inc-r", T0 + 10).await;
    let kept = store.call_retry(&r, T0 + 20, T0 + 30, "timeout").await.unwrap();
    assert_eq!(kept.as_deref(), Some("cancelled"));
    assert_eq!(outbox_now(store).await, vec![row("suspend", "cancelled")]);
    assert!(store.claim_due(T0 + 100_000, 30_000, 10).await.unwrap().is_empty());
    let kept = store.call_failed(&r, T0 + 40, "HTTP 400").await.unwrap();
    assert_eq!(kept.as_deref(), Some("cancelled"));
    assert_eq!(outbox_now(store).await, vec![row("suspend", "cancelled")]);
    let d = store.get("inc-r").await.unwrap().unwrap();
    assert!(d.actions.iter().all(|a| a.outcome != "failed"), "{:?}", d.actions);
}

/// A false positive marked while the suspend call was in flight, which the platform then
/// carried out: the call stays cancelled, and an unsuspend is queued to undo it.
pub async fn a_suspend_delivered_after_a_false_positive_is_undone(store: &Store) {
    let r = in_flight(store, "inc-d", "acc-d").await;
    false_positive(store, "inc-d", T0 + 10).await;
    let kept = store.call_delivered(&r, T0 + 20, "HTTP 200").await.unwrap();
    assert_eq!(kept.as_deref(), Some("cancelled"));
    assert_eq!(
        outbox_now(store).await,
        vec![row("suspend", "cancelled"), row("unsuspend", "pending")]
    );
    assert!(store.get("inc-d").await.unwrap().unwrap().incident.suspended);
    // A second report of the same delivery (another sender whose lease ran out) queues nothing more.
    store.call_delivered(&r, T0 + 21, "HTTP 200").await.unwrap();
    let undo = store.claim_due(T0 + 30, 30_000, 10).await.unwrap();
    assert_eq!(undo.len(), 1);
    assert_eq!(undo[0].kind, "unsuspend");
    assert_eq!(undo[0].account_id, "acc-d");
    let body: serde_json::Value = serde_json::from_str(&undo[0].body).unwrap();
    assert_eq!(body["action"], "unsuspend");
    assert_eq!(body["reason"], "false_positive");
    assert_eq!(body["incident_id"], "inc-d");
    assert_eq!(body["account_id"], "acc-d");
    assert_eq!(body["rule"], "mass-harvest-24h");
    assert_eq!(store.last_unsuspend("acc-d").await.unwrap(), Some(T0 + 20));
    assert_eq!(store.call_delivered(&undo[0], T0 + 40, "HTTP 200").await.unwrap(), None);
    let d = store.get("inc-d").await.unwrap().unwrap();
    assert!(!d.incident.suspended);
    assert_eq!(d.incident.status, "false_positive");
    let log: Vec<(&str, &str)> = d
        .actions
        .iter()
        .map(|a| (a.action.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(
        log,
        vec![
            ("suspend", "pending"),
            ("suspend", "delivered"),
            ("unsuspend", "pending"),
            ("unsuspend", "delivered")
        ]
    );
}

/// Two senders with one call (the first one's lease ran out): whichever finishes first
/// decides, and a late retry or failure does not reopen a delivered call.
pub async fn a_delivered_call_stays_delivered(store: &Store) {
    let r = in_flight(store, "inc-l", "acc-l").await;
    assert_eq!(store.call_delivered(&r, T0 + 5, "HTTP 200").await.unwrap(), None);
    let kept = store.call_retry(&r, T0 + 6, T0 + 7, "timeout").await.unwrap();
    assert_eq!(kept.as_deref(), Some("delivered"));
    let kept = store.call_failed(&r, T0 + 8, "HTTP 400").await.unwrap();
    assert_eq!(kept.as_deref(), Some("delivered"));
    assert_eq!(outbox_now(store).await, vec![row("suspend", "delivered")]);
    assert!(store.get("inc-l").await.unwrap().unwrap().incident.suspended);
    assert!(store.claim_due(T0 + 100_000, 30_000, 10).await.unwrap().is_empty());
}

#[macro_export]
macro_rules! all_scenarios {
    ($fresh:path) => {
        #[tokio::test]
        async fn opening_is_idempotent_and_tracks_publication() {
            let (s, _g) = $fresh().await;
            scenarios::opening_is_idempotent_and_tracks_publication(&s).await;
        }
        #[tokio::test]
        async fn exposed_cvs_are_kept_once_with_first_access_and_counted() {
            let (s, _g) = $fresh().await;
            scenarios::exposed_cvs_are_kept_once_with_first_access_and_counted(&s).await;
        }
        #[tokio::test]
        async fn a_large_exposure_is_stored_incrementally() {
            let (s, _g) = $fresh().await;
            scenarios::a_large_exposure_is_stored_incrementally(&s).await;
        }
        #[tokio::test]
        async fn lifecycle_history_and_false_positive_unsuspend() {
            let (s, _g) = $fresh().await;
            scenarios::lifecycle_history_and_false_positive_unsuspend(&s).await;
        }
        #[tokio::test]
        async fn outbox_retries_leases_and_failures() {
            let (s, _g) = $fresh().await;
            scenarios::outbox_retries_leases_and_failures(&s).await;
        }
        #[tokio::test]
        async fn changes_are_read_after_a_cursor_however_many_share_a_millisecond() {
            let (s, _g) = $fresh().await;
            scenarios::changes_are_read_after_a_cursor_however_many_share_a_millisecond(&s).await;
        }
        #[tokio::test]
        async fn listing_filters_and_pages() {
            let (s, _g) = $fresh().await;
            scenarios::listing_filters_and_pages(&s).await;
        }
        #[tokio::test]
        async fn a_crossing_for_an_open_rule_and_key_joins_its_incident() {
            let (s, _g) = $fresh().await;
            scenarios::a_crossing_for_an_open_rule_and_key_joins_its_incident(&s).await;
        }
        #[tokio::test]
        async fn an_account_is_not_suspended_twice_by_two_rules() {
            let (s, _g) = $fresh().await;
            scenarios::an_account_is_not_suspended_twice_by_two_rules(&s).await;
        }
        #[tokio::test]
        async fn running_counts_match_the_stored_list() {
            let (s, _g) = $fresh().await;
            scenarios::running_counts_match_the_stored_list(&s).await;
        }
        #[tokio::test]
        async fn a_cancelled_call_stays_cancelled_after_a_retry_or_a_failure() {
            let (s, _g) = $fresh().await;
            scenarios::a_cancelled_call_stays_cancelled_after_a_retry_or_a_failure(&s).await;
        }
        #[tokio::test]
        async fn a_suspend_delivered_after_a_false_positive_is_undone() {
            let (s, _g) = $fresh().await;
            scenarios::a_suspend_delivered_after_a_false_positive_is_undone(&s).await;
        }
        #[tokio::test]
        async fn a_delivered_call_stays_delivered() {
            let (s, _g) = $fresh().await;
            scenarios::a_delivered_call_stays_delivered(&s).await;
        }
        #[tokio::test]
        async fn rails_queries() {
            let (s, _g) = $fresh().await;
            scenarios::rails_queries(&s).await;
        }
    };
}
