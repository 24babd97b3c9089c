//! Event time: milliseconds since the Unix epoch, parsed from and written as RFC 3339.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since 1970-01-01T00:00:00Z. All engine time is in this unit.
pub type Millis = i64;

/// Latest event time accepted: 2106-02-07T06:28:14.999Z. The engine stores seconds as
/// `u32` (second + 1), which halves the memory of every CV it holds; a job-board event
/// after 2106 is an error in the data.
const MAX_EPOCH_MS: i64 = (u32::MAX as i64 - 1) * 1000 + 999;

/// Parses an RFC 3339 timestamp (any offset) to epoch milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<Millis> {
    if let Some(ms) = parse_common_rfc3339(text.as_bytes()) {
        return Some(ms);
    }
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    let ms = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
    i64::try_from(ms).ok()
}

/// The form platforms emit, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, without the
/// general parser: it was 40% of the time to parse a single-CV event. Anything else
/// (a leap second, lower-case separators, odd fractions) returns `None` and goes
/// through the full RFC 3339 parser, which also gives the verdict on invalid text.
fn parse_common_rfc3339(b: &[u8]) -> Option<Millis> {
    fn num(b: &[u8]) -> Option<i64> {
        b.iter()
            .try_fold(0i64, |n, c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')))
    }
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (hour, minute, second) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0;
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let frac = &rest[1..1 + digits];
        millis = num(&frac[..digits.min(3)])? * [100, 10, 1][digits.min(3) - 1];
        rest = &rest[1 + digits..];
    }
    let offset_secs = match rest {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (num(&[*h1, *h2])?, num(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

    fn full_parser(text: &str) -> Option<Millis> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
        i64::try_from(parsed.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_parser() {
        let mut checked = 0;
        for year in [1969, 1970, 2000, 2023, 2024, 2100, 2400] {
            for (month, day) in [(1, 1), (2, 28), (2, 29), (2, 30), (4, 31), (12, 31), (13, 1), (0, 1)] {
                for (time, frac, offset) in [
                    ("00:00:00", "", "Z"),
                    ("23:59:59", ".9", "+01:00"),
                    ("12:30:05", ".123456789", "-05:30"),
                    ("06:00:01", ".120", "+14:00"),
                    ("24:00:00", "", "Z"),
                    ("10:60:00", "", "Z"),
                    ("10:00:00", ".", "Z"),
                    ("10:00:00", "", "+24:00"),
                ] {
                    let text = format!("{year:04}-{month:02}-{day:02}T{time}{frac}{offset}");
                    let fast = parse_common_rfc3339(text.as_bytes());
                    let full = full_parser(&text);
                    if let Some(ms) = fast {
                        assert_eq!(Some(ms), full, "{text}");
                        checked += 1;
                    }
                    assert_eq!(parse_rfc3339_ms(&text), full, "{text}");
                }
            }
        }
        assert!(checked >= 90, "the fast path took {checked}");
    }

    #[test]
    fn formats_round_trip() {
        let ms = 1_714_780_800_123;
        let text = format_rfc3339_ms(ms);
        assert_eq!(text, "2024-05-04T00:00:00.123Z");
        assert_eq!(parse_rfc3339_ms(&text), Some(ms));
    }
}
