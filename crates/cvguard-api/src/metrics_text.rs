//! GET /metrics: the Prometheus text format. Counters the pipelines own come from their
//! registry; totals kept elsewhere (engine stats, sinks, the outbox) are read at scrape
//! time into a fresh registry, so each number has one source.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use cvguard_core::RejectReason;
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::ApiState;

/// Bytes of window state per live (key, CV) pair and per tracked key, as measured by the
/// benchmark (docs/PERFORMANCE.md); the gauge is an estimate from those figures.
const BYTES_PER_PAIR: u64 = 84;
const BYTES_PER_KEY: u64 = 1000;

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
    r.register(Box::new(c.clone())).expect("register");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric");
    r.register(Box::new(g.clone())).expect("register");
    g
}

pub async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    let scrape = Registry::new();
    cvguard_stream::metrics::register_process_metrics(&scrape);
    let (stats, size) = s.detection.stats();
    let counts = s.detection.event_counts();
    let events = counter_vec(
        &scrape,
        "cvguard_events_total",
        "Events read, by outcome, each event once.",
        &["outcome"],
    );
    let rejected_total: u64 = counts.rejected.iter().sum();
    events.with_label_values(&["accepted"]).inc_by(counts.accepted);
    events.with_label_values(&["late"]).inc_by(counts.late);
    events.with_label_values(&["duplicate"]).inc_by(counts.duplicate);
    events.with_label_values(&["rejected"]).inc_by(rejected_total);
    let late =
        prometheus::IntCounter::new("cvguard_events_late_total", "Events older than the watermark.").expect("metric");
    scrape.register(Box::new(late.clone())).expect("register");
    late.inc_by(counts.late);
    let rejected = counter_vec(
        &scrape,
        "cvguard_events_rejected_total",
        "Rejected events by reason.",
        &["reason"],
    );
    for r in RejectReason::ALL {
        rejected
            .with_label_values(&[r.as_str()])
            .inc_by(counts.rejected[r.index()]);
    }
    gauge(&scrape, "cvguard_tracked_keys", "Keys with live window state.").set(size.keys as i64);
    let refused = prometheus::IntCounter::new(
        "cvguard_keys_refused_total",
        "Events of a new key not tracked for its kind because engine.max_tracked_keys was reached.",
    )
    .expect("metric");
    scrape.register(Box::new(refused.clone())).expect("register");
    refused.inc_by(stats.keys_refused);
    gauge(
        &scrape,
        "cvguard_live_cv_pairs",
        "Live (key, CV) pairs: CVs some distinct_cvs rule of a key counts, once per key.",
    )
    .set(size.cv_pairs as i64);
    gauge(
        &scrape,
        "cvguard_window_state_bytes",
        "Estimated bytes of window state.",
    )
    .set((size.cv_pairs * BYTES_PER_PAIR + size.keys * BYTES_PER_KEY) as i64);
    let sink = counter_vec(
        &scrape,
        "cvguard_sink_deliveries_total",
        "Alert deliveries by sink and status.",
        &["sink", "status"],
    );
    for (name, c) in s.sinks.counters() {
        use std::sync::atomic::Ordering::Relaxed;
        sink.with_label_values(&[&name, "delivered"])
            .inc_by(c.delivered.load(Relaxed));
        sink.with_label_values(&[&name, "failed"])
            .inc_by(c.failed.load(Relaxed));
        sink.with_label_values(&[&name, "dropped"])
            .inc_by(c.dropped.load(Relaxed));
        sink.with_label_values(&[&name, "retried"])
            .inc_by(c.retried.load(Relaxed));
    }
    if let Ok(rows) = s.store.outbox_counts().await {
        let calls = IntGaugeVec::new(
            Opts::new(
                "cvguard_suspend_calls",
                "Suspend and unsuspend calls in the outbox, by kind and status.",
            ),
            &["kind", "status"],
        )
        .expect("metric");
        scrape.register(Box::new(calls.clone())).expect("register");
        // Only what never changes again counts here, so the counter never goes down:
        // every suspend call queued, and those that reached a final state. Pending and
        // sending calls are in the gauge above.
        let suspensions = counter_vec(
            &scrape,
            "cvguard_suspensions_total",
            "Suspend calls: queued, and by final outcome (delivered, failed, cancelled).",
            &["outcome"],
        );
        for outcome in ["queued", "delivered", "failed", "cancelled"] {
            suspensions.with_label_values(&[outcome]);
        }
        for kind in ["suspend", "unsuspend"] {
            for status in ["pending", "sending", "delivered", "failed", "cancelled"] {
                calls.with_label_values(&[kind, status]);
            }
        }
        for (kind, status, n) in rows {
            calls.with_label_values(&[&kind, &status]).set(n);
            if kind == "suspend" {
                let n = n.max(0) as u64;
                suspensions.with_label_values(&["queued"]).inc_by(n);
                if matches!(status.as_str(), "delivered" | "failed" | "cancelled") {
                    suspensions.with_label_values(&[&status]).inc_by(n);
                }
            }
        }
    }
    let mut out = Vec::new();
    let encoder = TextEncoder::new();
    let mut families = s.metrics.registry.gather();
    families.extend(scrape.gather());
    let _ = encoder.encode(&families, &mut out);
    ([(header::CONTENT_TYPE, encoder.format_type().to_string())], out)
}
