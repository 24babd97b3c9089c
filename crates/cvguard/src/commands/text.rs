//! Text from outside shown on a terminal, by every command that prints it.

/// Text from outside (account ids, notes) as a terminal may show it: control characters
/// and bidirectional overrides escaped, so a key cannot forge a row, recolour the screen
/// or reverse what follows it.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if unsafe_char(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn outside_text_cannot_forge_rows_or_steer_the_terminal() {
        assert_eq!(printable("harvester-1"), "harvester-1");
        assert_eq!(printable("caf\u{e9} \u{5bb6}"), "caf\u{e9} \u{5bb6}");
        let forged = printable("\u{1b}[31mEVIL\nffff resolved\u{202e}x\0");
        assert!(!forged.chars().any(|c| c.is_control() || c == '\u{202e}'), "{forged}");
        assert_eq!(forged, "\\u{1b}[31mEVIL\\u{a}ffff resolved\\u{202e}x\\u{0}");
    }
}
