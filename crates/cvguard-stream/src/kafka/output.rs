//! Everything the Kafka pipeline writes: alerts, incidents, dead letters and re-keyed
//! events, through one idempotent producer. Offsets are committed only after these
//! deliveries are acknowledged, so a crash never loses an effect (it may repeat one,
//! under the same stable id).

use std::time::Duration;

use cvguard_core::{Alert, KeyKind, RejectReason};
use futures::executor::block_on;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;
use tracing::{error, warn};

use super::regroup::{Packed, PACKED_KEY};
use crate::records::incident_opened;
use cvguard_respond::SinkSet;

/// Header carrying the rejection reason on a dead-lettered message.
pub const REJECT_REASON_HEADER: &str = "cvguard-reject-reason";
/// Headers saying where a dead-lettered message came from.
pub const SOURCE_HEADER: &str = "cvguard-source";

pub struct Outputs {
    pub producer: FutureProducer,
    pub alerts_topic: String,
    pub incidents_topic: String,
    pub dead_letter_topic: Option<String>,
    pub repartition_topic: String,
    /// How many partitions the repartition topic has, read from the broker at start.
    pub repartition_partitions: i32,
    pub sinks: SinkSet,
}

/// Deliveries not yet acknowledged, with what is needed to send them again.
#[derive(Default)]
pub struct Pending {
    futures: Vec<DeliveryFuture>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.futures.is_empty()
    }

    pub fn len(&self) -> usize {
        self.futures.len()
    }
}

impl Outputs {
    /// Publishes an alert: the alerts topic (key = the alert's key), the incidents topic
    /// (key = incident id), then the sinks.
    pub fn alert(&self, alert: &Alert, now_ms: i64, pending: &mut Pending) {
        let json = serde_json::to_vec(alert).expect("alerts serialize");
        self.send(
            &self.alerts_topic,
            alert.key.as_bytes(),
            &json,
            None,
            OwnedHeaders::new(),
            pending,
        );
        let incident = serde_json::to_vec(&incident_opened(alert, now_ms)).expect("incidents serialize");
        self.send(
            &self.incidents_topic,
            alert.alert_id.as_bytes(),
            &incident,
            None,
            OwnedHeaders::new(),
            pending,
        );
        self.sinks.publish(&json);
    }

    /// Forwards a rejected message unchanged, with the reason in a header.
    pub fn dead_letter(
        &self,
        source: (&str, i32, i64),
        key: Option<&[u8]>,
        payload: &[u8],
        reason: RejectReason,
        pending: &mut Pending,
    ) {
        let Some(topic) = &self.dead_letter_topic else { return };
        let origin = format!("{}/{}/{}", source.0, source.1, source.2);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: REJECT_REASON_HEADER,
                value: Some(reason.as_str()),
            })
            .insert(Header {
                key: SOURCE_HEADER,
                value: Some(origin.as_str()),
            });
        self.send(topic, key.unwrap_or_default(), payload, None, headers, pending);
    }

    /// Produces re-keyed events packed for one repartition partition.
    pub fn repartition(&self, partition: i32, packed: Packed, pending: &mut Pending) {
        let record = FutureRecord::to(&self.repartition_topic)
            .key(PACKED_KEY)
            .payload(packed.bytes.as_slice())
            .partition(partition);
        self.send_record(stamped(record, packed.timestamp), pending);
    }

    fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        timestamp: Option<i64>,
        headers: OwnedHeaders,
        pending: &mut Pending,
    ) {
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
        self.send_record(stamped(record, timestamp), pending);
    }

    fn send_record<'a>(&self, mut record: FutureRecord<'a, [u8], [u8]>, pending: &mut Pending) {
        let topic = record.topic;
        loop {
            match self.producer.send_result(record) {
                Ok(f) => {
                    pending.futures.push(f);
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Back-pressure: let the producer drain, then try again.
                    self.producer.poll(Duration::from_millis(10));
                    record = r;
                }
                Err((KafkaError::MessageProduction(code), r)) if too_large(code) => {
                    // Sending it again can never succeed; retrying would stall the partition.
                    error!(message = "Message too large for the producer or broker; not sent.", topic,
                        bytes = r.payload.map_or(0, <[u8]>::len), error = %code);
                    return;
                }
                Err((e, r)) => {
                    warn!(message = "Produce failed; retrying.", topic, error = %e);
                    std::thread::sleep(Duration::from_millis(100));
                    record = r;
                }
            }
        }
    }

    /// Waits until every pending delivery is acknowledged, re-sending failures, so the
    /// caller may then commit the offsets they came from.
    pub fn await_all(&self, pending: &mut Pending) {
        let mut retry: Vec<OwnedMessage> = Vec::new();
        for f in pending.futures.drain(..) {
            match block_on(f) {
                Ok(Ok(_)) => {}
                Ok(Err((KafkaError::MessageProduction(code), msg))) if too_large(code) => {
                    error!(message = "Message too large for the broker; not sent again.", topic = msg.topic(),
                        bytes = msg.payload().map_or(0, <[u8]>::len), error = %code);
                }
                Ok(Err((e, msg))) => {
                    error!(message = "Delivery failed; sending again.", topic = msg.topic(), error = %e);
                    retry.push(msg);
                }
                Err(_) => error!(message = "Delivery future cancelled (producer closing)."),
            }
        }
        for msg in retry {
            let mut again = Pending::default();
            let headers = msg.headers().cloned().unwrap_or_default();
            let record = FutureRecord::to(msg.topic())
                .key(msg.key().unwrap_or_default())
                .payload(msg.payload().unwrap_or_default())
                .partition(msg.partition())
                .headers(headers);
            self.send_record(stamped(record, msg.timestamp().to_millis()), &mut again);
            self.await_all(&mut again);
        }
    }
}

/// The record with its timestamp, when it has one (else the producer's clock).
fn stamped(record: FutureRecord<'_, [u8], [u8]>, timestamp: Option<i64>) -> FutureRecord<'_, [u8], [u8]> {
    match timestamp {
        Some(ts) => record.timestamp(ts),
        None => record,
    }
}

/// Size errors are final: the same bytes are refused again however often they are sent.
/// (Events of up to `engine.max_event_bytes` are accepted; keep the broker's and the
/// producer's `message.max.bytes` above it so their dead letters fit.)
fn too_large(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize
    )
}

/// `org_id|org-7`: the key of a re-keyed event before they were packed
/// ([`super::regroup`]); still read, so an upgrade loses none in flight.
#[cfg(test)]
pub fn repartition_key(kind: KeyKind, key: &str) -> String {
    format!("{}|{key}", kind.as_str())
}

/// The kind of a one-event repartition message's key, if it has one.
pub fn repartition_kind(key: &[u8]) -> Option<KeyKind> {
    let text = std::str::from_utf8(key).ok()?;
    let (kind, _) = text.split_once('|')?;
    KeyKind::ALL.into_iter().find(|k| k.as_str() == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repartition_keys_carry_their_kind() {
        let k = repartition_key(KeyKind::OrgId, "org|with|bars");
        assert_eq!(k, "org_id|org|with|bars");
        assert_eq!(repartition_kind(k.as_bytes()), Some(KeyKind::OrgId));
        assert_eq!(repartition_kind(b"account_id|x"), Some(KeyKind::AccountId));
        assert_eq!(repartition_kind(b"nokind"), None);
        assert_eq!(repartition_kind(b"colour|x"), None);
    }
}
