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

/// A severity as rules and incidents spell it.
pub fn parse_severity(text: &str) -> Result<&'static str, String> {
    one_of("severity", text, cvguard_core::Severity::ALL.map(|s| s.as_str()))
}

/// A key kind as incidents spell it (`account_id`, ...).
pub fn parse_key_kind(text: &str) -> Result<&'static str, String> {
    one_of("key_kind", text, cvguard_core::KeyKind::ALL.map(|k| k.as_str()))
}

/// `text` if it is one of `words`, else the words it may be.
fn one_of<const N: usize>(name: &str, text: &str, words: [&'static str; N]) -> Result<&'static str, String> {
    words.into_iter().find(|w| *w == text).ok_or_else(|| {
        let (last, rest) = words.split_last().expect("a filter has words");
        format!("`{name}` must be {} or {last}", rest.join(", "))
    })
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
    fn severities_and_key_kinds_as_the_rules_spell_them() {
        assert_eq!(parse_severity("critical"), Ok("critical"));
        assert_eq!(
            parse_severity("urgent").unwrap_err(),
            "`severity` must be info, low, medium, high or critical"
        );
        assert_eq!(parse_key_kind("ip"), Ok("ip"));
        assert_eq!(
            parse_key_kind("account").unwrap_err(),
            "`key_kind` must be account_id, org_id, user_id or ip"
        );
    }

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
