//! Event time: milliseconds since the Unix epoch, parsed from and written as RFC 3339.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since 1970-01-01T00:00:00Z. All engine time is in this unit.
pub type Millis = i64;

/// Latest event time accepted as an integer: 9999-12-31T23:59:59.999Z.
const MAX_EPOCH_MS: i64 = 253_402_300_799_999;

/// Parses an RFC 3339 timestamp (any offset) to epoch milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<Millis> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    let ms = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
    i64::try_from(ms).ok()
}

/// Checks an integer epoch-milliseconds timestamp for a plausible range.
pub fn epoch_ms_in_range(ms: i64) -> bool {
    (0..=MAX_EPOCH_MS).contains(&ms)
}

/// Formats epoch milliseconds as RFC 3339 in UTC with millisecond precision,
/// e.g. `2024-05-04T09:12:00.000Z`. Fixed width so output is byte-stable.
pub fn format_rfc3339_ms(ms: Millis) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => ms.to_string(),
    }
}

/// Formats a duration in milliseconds the way humantime writes it (`24h`, `1h 30m`).
pub fn format_duration_ms(ms: Millis) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_and_fractions() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:01.250+01:00"), Some(1250));
        assert_eq!(parse_rfc3339_ms("2024-05-04T00:00:00Z"), Some(1_714_780_800_000));
        assert_eq!(parse_rfc3339_ms("2024-05-04 00:00:00"), None);
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn formats_round_trip() {
        let ms = 1_714_780_800_123;
        let text = format_rfc3339_ms(ms);
        assert_eq!(text, "2024-05-04T00:00:00.123Z");
        assert_eq!(parse_rfc3339_ms(&text), Some(ms));
    }
}
