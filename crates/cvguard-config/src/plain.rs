//! serde's messages in the words of the config's reader: "expected a whole number ≥ 0",
//! not "expected usize", and "expected a duration like \"24h\"" for a duration written
//! as a number.

use crate::document::{KeyPath, Seg};

/// Keys whose values are durations (`24h`, `30s`), wherever they are.
const DURATION_KEYS: &[&str] = &[
    "window",
    "allowed_lateness",
    "future_skew",
    "dedupe_window",
    "snapshot_interval",
    "shutdown_timeout",
    "commit_interval",
    "timeout",
    "cooldown",
    "resend_interval",
];

/// `message` about the value at `path`, with any Rust type name replaced.
pub(crate) fn words(path: &KeyPath, message: &str) -> String {
    let Some((found, expected)) = message.rsplit_once(", expected ") else {
        return message.to_string();
    };
    // `unknown variant `x`, expected one of ...` is already plain.
    if expected.starts_with("one of") || expected.starts_with('`') {
        return message.to_string();
    }
    let duration = matches!(path.0.last(), Some(Seg::Key(k)) if DURATION_KEYS.contains(&k.as_str()));
    let plain = match expected {
        "usize" | "u64" | "u128" => "a whole number ≥ 0".to_string(),
        "u8" => range(u8::MAX.into()),
        "u16" => range(u16::MAX.into()),
        "u32" => range(u32::MAX.into()),
        "isize" | "i8" | "i16" | "i32" | "i64" | "i128" => "a whole number".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a string" if duration => "a duration like \"24h\"".to_string(),
        "a boolean" => "true or false".to_string(),
        "a sequence" => "an array".to_string(),
        "a map" => "a table".to_string(),
        other if other.starts_with("struct ") || other.contains("tagged enum") => "a table".to_string(),
        other => other.to_string(),
    };
    format!("{found}, expected {plain}")
}

fn range(max: u64) -> String {
    format!("a whole number from 0 to {max}")
}

#[cfg(test)]
mod tests {
    use super::words;
    use crate::document::KeyPath;

    #[test]
    fn no_rust_type_names() {
        let at = |k: &str| KeyPath::parse(k);
        for (key, serde, plain) in [
            (
                "engine.max_cv_ids",
                "invalid type: string \"lots\", expected usize",
                "invalid type: string \"lots\", expected a whole number ≥ 0",
            ),
            (
                "threshold",
                "invalid value: integer `-5`, expected u64",
                "invalid value: integer `-5`, expected a whole number ≥ 0",
            ),
            (
                "suspend.max_attempts",
                "invalid value: integer `-1`, expected u32",
                "invalid value: integer `-1`, expected a whole number from 0 to 4294967295",
            ),
            (
                "window",
                "invalid type: integer `5`, expected a string",
                "invalid type: integer `5`, expected a duration like \"24h\"",
            ),
            (
                "engine",
                "invalid type: integer `5`, expected struct EngineSpec",
                "invalid type: integer `5`, expected a table",
            ),
            (
                "response",
                "unknown variant `x`, expected one of `alert`, `suspend`",
                "unknown variant `x`, expected one of `alert`, `suspend`",
            ),
        ] {
            assert_eq!(words(&at(key), serde), plain);
        }
    }
}
