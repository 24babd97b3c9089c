//! The incident filters' words, one parser for the API's query and the CLI's flags, so
//! both refuse the same values in the same words.

/// The most incidents one page (or `incidents list`) holds.
pub const MAX_LIMIT: i64 = 1000;

/// An incident status as a filter: the store's spelling, or `false-positive` as the CLI's
/// `incidents set` and the API's action path spell it.
pub fn parse_status(text: &str) -> Result<&'static str, String> {
    let wanted = if text == "false-positive" {
        "false_positive"
    } else {
        text
    };
    cvguard_store::STATUSES
        .iter()
        .copied()
        .find(|s| *s == wanted)
        .ok_or_else(|| "`status` must be open, acknowledged, resolved or false_positive".to_string())
}

/// A page size: 1 to `MAX_LIMIT`, refused rather than changed when out of range.
pub fn parse_limit(text: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| format!("limit: expected a whole number from 1 to {MAX_LIMIT}, not `{text}`"))
}

/// A page's start: 0 or more.
pub fn parse_offset(text: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("offset: expected a whole number ≥ 0, not `{text}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_in_either_spelling_and_nothing_else() {
        assert_eq!(parse_status("false-positive"), Ok("false_positive"));
        assert_eq!(parse_status("false_positive"), Ok("false_positive"));
        assert_eq!(parse_status("open"), Ok("open"));
        for bad in ["bogus", "Open", "", "false positive"] {
            assert_eq!(
                parse_status(bad).unwrap_err(),
                "`status` must be open, acknowledged, resolved or false_positive"
            );
        }
    }
}
