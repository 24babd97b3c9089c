//! Event contract v1 (docs/EVENTS.md): one JSON object per event, parsed with
//! borrowed strings and a precise reason for every rejection.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::timefmt::{epoch_ms_in_range, parse_rfc3339_ms, Millis};

/// Longest accepted `account_id`, in bytes.
pub const MAX_ACCOUNT_ID_BYTES: usize = 256;
/// Default cap on CV ids in one event; configurable through `[engine] max_cv_ids`.
pub const DEFAULT_MAX_CV_IDS: usize = 10_000;

/// Whether name and address were visible on the CVs of an event.
/// Ordered so that the most revealing access wins when a CV is seen twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Visibility {
    #[default]
    Unknown = 0,
    Anonymous = 1,
    Named = 2,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Unknown => "unknown",
            Visibility::Anonymous => "anonymous",
            Visibility::Named => "named",
        }
    }

    pub fn from_u8(v: u8) -> Self {
        match v {
            2 => Visibility::Named,
            1 => Visibility::Anonymous,
            _ => Visibility::Unknown,
        }
    }
}

/// One accepted event. Strings borrow from the input line when it has no escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub ts: Millis,
    pub account_id: Cow<'a, str>,
    pub action: Cow<'a, str>,
    /// `cv_id` and `cv_ids` together, in input order.
    pub cv_ids: Vec<Cow<'a, str>>,
    pub event_id: Option<Cow<'a, str>>,
    pub user_id: Option<Cow<'a, str>>,
    pub org_id: Option<Cow<'a, str>>,
    pub ip: Option<Cow<'a, str>>,
    pub user_agent: Option<Cow<'a, str>>,
    pub visibility: Visibility,
}

/// Why an event was rejected. The `as_str` names are a stable contract: they are
/// metric label values, dead-letter headers and summary lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectReason {
    /// Not valid JSON (or not UTF-8).
    InvalidJson,
    /// Valid JSON, but not an object.
    NotAnObject,
    MissingTs,
    MissingAccountId,
    MissingAction,
    /// `ts` is neither an RFC 3339 string nor integer epoch milliseconds in range.
    InvalidTs,
    /// `account_id` is not a string, is empty, or is longer than 256 bytes.
    InvalidAccountId,
    /// `action` is not a non-empty string.
    InvalidAction,
    /// `cv_id` is not a string, or `cv_ids` is not an array of strings.
    InvalidCvIds,
    /// More CV ids than the configured maximum.
    TooManyCvIds,
    /// An optional field (`event_id`, `user_id`, `org_id`, `ip`, `user_agent`) is not a string.
    InvalidOptionalField,
    /// `cv_visibility` is not `"named"` or `"anonymous"`.
    InvalidVisibility,
    /// The line is longer than the configured maximum.
    TooLarge,
    /// Event time is later than the source's clock plus the allowed skew.
    FutureTs,
    /// A string field is longer than the configured maximum.
    FieldTooLong,
}

impl RejectReason {
    pub const ALL: [RejectReason; 15] = [
        RejectReason::InvalidJson,
        RejectReason::NotAnObject,
        RejectReason::MissingTs,
        RejectReason::MissingAccountId,
        RejectReason::MissingAction,
        RejectReason::InvalidTs,
        RejectReason::InvalidAccountId,
        RejectReason::InvalidAction,
        RejectReason::InvalidCvIds,
        RejectReason::TooManyCvIds,
        RejectReason::InvalidOptionalField,
        RejectReason::InvalidVisibility,
        RejectReason::TooLarge,
        RejectReason::FutureTs,
        RejectReason::FieldTooLong,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingTs => "missing_ts",
            RejectReason::MissingAccountId => "missing_account_id",
            RejectReason::MissingAction => "missing_action",
            RejectReason::InvalidTs => "invalid_ts",
            RejectReason::InvalidAccountId => "invalid_account_id",
            RejectReason::InvalidAction => "invalid_action",
            RejectReason::InvalidCvIds => "invalid_cv_ids",
            RejectReason::TooManyCvIds => "too_many_cv_ids",
            RejectReason::InvalidOptionalField => "invalid_optional_field",
            RejectReason::InvalidVisibility => "invalid_visibility",
            RejectReason::TooLarge => "too_large",
            RejectReason::FutureTs => "future_ts",
            RejectReason::FieldTooLong => "field_too_long",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    pub max_cv_ids: usize,
    pub max_event_bytes: usize,
    /// Longest string field; `account_id` has its own, smaller limit (256 bytes).
    pub max_field_bytes: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_cv_ids: DEFAULT_MAX_CV_IDS,
            // A 10,000-id batch with 40-byte ids is ~0.5 MB; leave room for the rest.
            max_event_bytes: 1 << 20,
            // Ids rarely pass 64 bytes; account ids have the same 256 (user agents get
            // four times this, see `within_field_limit`).
            max_field_bytes: 256,
        }
    }
}

/// Parses one event. Never panics; every failure names its reason.
pub fn parse_event<'a>(input: &'a [u8], limits: &ParseLimits) -> Result<Event<'a>, RejectReason> {
    if input.len() > limits.max_event_bytes {
        return Err(RejectReason::TooLarge);
    }
    let mut reason = None;
    let mut de = serde_json::Deserializer::from_slice(input);
    let seed = EventSeed {
        reason: &mut reason,
        limits,
    };
    match seed.deserialize(&mut de).and_then(|ev| de.end().map(|()| ev)) {
        Ok(raw) => raw
            .finish()
            .and_then(|ev| within_field_limit(ev, limits.max_field_bytes)),
        Err(err) => Err(reason.unwrap_or(match err.classify() {
            serde_json::error::Category::Data => RejectReason::NotAnObject,
            _ => RejectReason::InvalidJson,
        })),
    }
}

/// Refuses an event with a string field longer than `max`: every one of them can end up
/// as a key, an interned CV id or an evidence value, so each is bounded.
/// A user agent, free text that real browsers make long, may take four times `max`.
fn within_field_limit(ev: Event<'_>, max: usize) -> Result<Event<'_>, RejectReason> {
    let ids = [&ev.event_id, &ev.user_id, &ev.org_id, &ev.ip];
    let too_long = ev.action.len() > max
        || ids.iter().any(|f| f.as_ref().is_some_and(|s| s.len() > max))
        || ev.user_agent.as_ref().is_some_and(|s| s.len() > max.saturating_mul(4))
        || ev.cv_ids.iter().any(|c| c.len() > max);
    if too_long {
        Err(RejectReason::FieldTooLong)
    } else {
        Ok(ev)
    }
}

/// A string that borrows from the input when it can.
struct Str<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

enum RawTs<'a> {
    Text(Cow<'a, str>),
    Int(i64),
    Bad,
}

impl<'de> de::Deserialize<'de> for RawTs<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 string or integer epoch milliseconds")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawTs::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(RawTs::Bad, RawTs::Int))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(RawTs::Bad)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(RawTs::Bad)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawTs::Bad)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RawTs::Bad)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(RawTs::Bad)
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads a `cv_ids` array, refusing it as soon as it passes the limit.
struct CvIdsSeed<'r, 'a> {
    out: &'r mut Vec<Cow<'a, str>>,
    max: usize,
    too_many: &'r mut bool,
}

impl<'de> DeserializeSeed<'de> for CvIdsSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for CvIdsSeed<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of strings")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(Str(id)) = seq.next_element::<Str<'de>>()? {
            if self.out.len() >= self.max {
                *self.too_many = true;
                return Err(de::Error::custom("too many cv ids"));
            }
            self.out.push(id);
        }
        Ok(())
    }
}

struct EventSeed<'r> {
    reason: &'r mut Option<RejectReason>,
    limits: &'r ParseLimits,
}

#[derive(Default)]
struct RawEvent<'a> {
    ts: Option<RawTs<'a>>,
    account_id: Option<Cow<'a, str>>,
    action: Option<Cow<'a, str>>,
    cv_ids: Vec<Cow<'a, str>>,
    event_id: Option<Cow<'a, str>>,
    user_id: Option<Cow<'a, str>>,
    org_id: Option<Cow<'a, str>>,
    ip: Option<Cow<'a, str>>,
    user_agent: Option<Cow<'a, str>>,
    visibility: Visibility,
}

impl<'a> RawEvent<'a> {
    fn finish(self) -> Result<Event<'a>, RejectReason> {
        let ts = match self.ts {
            None => return Err(RejectReason::MissingTs),
            Some(RawTs::Int(ms)) if epoch_ms_in_range(ms) => ms,
            Some(RawTs::Text(text)) => parse_rfc3339_ms(&text)
                .filter(|ms| epoch_ms_in_range(*ms))
                .ok_or(RejectReason::InvalidTs)?,
            Some(_) => return Err(RejectReason::InvalidTs),
        };
        let account_id = self.account_id.ok_or(RejectReason::MissingAccountId)?;
        if account_id.is_empty() || account_id.len() > MAX_ACCOUNT_ID_BYTES {
            return Err(RejectReason::InvalidAccountId);
        }
        let action = self.action.ok_or(RejectReason::MissingAction)?;
        if action.is_empty() {
            return Err(RejectReason::InvalidAction);
        }
        Ok(Event {
            ts,
            account_id,
            action,
            cv_ids: self.cv_ids,
            event_id: self.event_id,
            user_id: self.user_id,
            org_id: self.org_id,
            ip: self.ip,
            user_agent: self.user_agent,
            visibility: self.visibility,
        })
    }
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = RawEvent<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = RawEvent<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut ev = RawEvent::default();
        let reason = self.reason;
        // Marks the reason, then lets serde unwind with an error.
        let mut fail = |r: RejectReason, e: A::Error| -> A::Error {
            reason.get_or_insert(r);
            e
        };
        while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
            match key.as_ref() {
                "ts" => ev.ts = Some(map.next_value()?),
                "account_id" => {
                    let v = map
                        .next_value::<Str<'de>>()
                        .map_err(|e| fail(RejectReason::InvalidAccountId, e))?;
                    ev.account_id = Some(v.0);
                }
                "action" => {
                    let v = map
                        .next_value::<Str<'de>>()
                        .map_err(|e| fail(RejectReason::InvalidAction, e))?;
                    ev.action = Some(v.0);
                }
                "cv_id" => {
                    let v = map
                        .next_value::<Option<Str<'de>>>()
                        .map_err(|e| fail(RejectReason::InvalidCvIds, e))?;
                    if let Some(Str(id)) = v {
                        if ev.cv_ids.len() >= self.limits.max_cv_ids {
                            return Err(fail(RejectReason::TooManyCvIds, de::Error::custom("too many cv ids")));
                        }
                        ev.cv_ids.push(id);
                    }
                }
                "cv_ids" => {
                    let mut too_many = false;
                    let seed = CvIdsSeed {
                        out: &mut ev.cv_ids,
                        max: self.limits.max_cv_ids,
                        too_many: &mut too_many,
                    };
                    if let Err(e) = map.next_value_seed(seed) {
                        let r = if too_many {
                            RejectReason::TooManyCvIds
                        } else {
                            RejectReason::InvalidCvIds
                        };
                        return Err(fail(r, e));
                    }
                }
                "cv_visibility" => {
                    let v = map
                        .next_value::<Option<Str<'de>>>()
                        .map_err(|e| fail(RejectReason::InvalidVisibility, e))?;
                    ev.visibility = match v.as_ref().map(|s| s.0.as_ref()) {
                        None => Visibility::Unknown,
                        Some("named") => Visibility::Named,
                        Some("anonymous") => Visibility::Anonymous,
                        Some(_) => {
                            return Err(fail(
                                RejectReason::InvalidVisibility,
                                de::Error::custom("bad visibility"),
                            ))
                        }
                    };
                }
                "event_id" | "user_id" | "org_id" | "ip" | "user_agent" => {
                    let v = map
                        .next_value::<Option<Str<'de>>>()
                        .map_err(|e| fail(RejectReason::InvalidOptionalField, e))?
                        .map(|s| s.0);
                    let slot = match key.as_ref() {
                        "event_id" => &mut ev.event_id,
                        "user_id" => &mut ev.user_id,
                        "org_id" => &mut ev.org_id,
                        "ip" => &mut ev.ip,
                        _ => &mut ev.user_agent,
                    };
                    // An empty optional string carries no information; treat it as absent.
                    *slot = v.filter(|s| !s.is_empty());
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(ev)
    }
}

#[cfg(test)]
mod tests;
