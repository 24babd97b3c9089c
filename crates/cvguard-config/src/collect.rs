//! Deserializing so that every problem is found, not only the first. serde stops at the
//! first error; after each one the key at fault is taken out (its default applies) and
//! the value is read again. A required key taken out gets a stand-in value, so the keys
//! after it are still checked; whatever a stand-in makes the rule compiler say is not
//! reported (the key already has its problem).

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::document::{get, get_mut, Document, KeyPath, Seg};

/// A problem found at a path of the whole document.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub path: KeyPath,
    pub kind: Kind,
    pub message: String,
}

/// Where a finding points in the file: the key, or its value (or the table it is
/// missing from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    UnknownKey,
    Missing,
    Value,
}

/// More rounds than any config has problems; a safety net, not a limit anyone meets.
const MAX_ROUNDS: usize = 1000;

/// Reads a `T` from `value` (found at `at` in `doc`), adding every problem to `found`.
/// `None` when a problem leaves nothing to read (the value is not a table at all).
pub(crate) fn collect<T: DeserializeOwned>(
    doc: &Document,
    at: &KeyPath,
    mut value: Value,
    found: &mut Vec<Finding>,
) -> Option<T> {
    let mut dropped: Vec<KeyPath> = Vec::new();
    let mut stand_ins: Vec<StandIn> = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let error = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let message = error.inner().to_string();
        let Some(mut path) = relative(error.path()) else {
            found.push(Finding {
                path: at.clone(),
                kind: Kind::Value,
                message,
            });
            return None;
        };
        let (kind, field) = classify(&message);
        // serde_path_to_error's path ends at an unknown key, and at the table a key is
        // missing from.
        if let Some(field) = field.filter(|f| path.0.last() != Some(&Seg::Key(f.to_string()))) {
            path = path.key(field);
        }
        // A stand-in that does not fit: try the next. serde loses the path inside an
        // internally tagged enum (a sink), so an error without one is the latest stand-in's.
        let owner = stand_ins
            .iter()
            .rposition(|s| path.starts_with(&s.path))
            .or_else(|| (path.0.is_empty() && kind == Kind::Value).then(|| stand_ins.len().checked_sub(1))?);
        if let Some(i) = owner {
            if !stand_ins[i].next(&message, &mut value) {
                return None;
            }
            continue;
        }
        let full = at.join(&path);
        match kind {
            Kind::Missing => {
                if !dropped.contains(&path) {
                    found.push(Finding {
                        path: full,
                        kind,
                        message: "is required".into(),
                    });
                }
                let mut stand_in = StandIn::at(path);
                if !stand_in.next(&message, &mut value) {
                    return None;
                }
                stand_ins.push(stand_in);
            }
            Kind::UnknownKey => {
                found.push(Finding {
                    path: full,
                    kind,
                    message: unknown_key(&message),
                });
                if !remove(&mut value, &path.0) {
                    return None;
                }
            }
            Kind::Value => {
                // A variable's value that looked like a number, for a key that wants text.
                if let Some(env) = doc.env_at(&full) {
                    if !matches!(get(&value, &path.0), Some(Value::String(_))) {
                        if let Some(v) = get_mut(&mut value, &path.0) {
                            *v = Value::String(env.raw.clone());
                            continue;
                        }
                    }
                }
                found.push(Finding {
                    path: full,
                    kind,
                    message: with_suggestion(&message),
                });
                match path.0.last() {
                    None => return None,
                    Some(Seg::Key(_)) => {
                        if !remove(&mut value, &path.0) {
                            return None;
                        }
                        dropped.push(path);
                    }
                    Some(Seg::Index(_)) => {
                        let mut stand_in = StandIn::at(path);
                        if !stand_in.next("", &mut value) {
                            return None;
                        }
                        stand_ins.push(stand_in);
                    }
                }
            }
        }
    }
    None
}

/// A value put where a required key's bad value was taken out.
struct StandIn {
    path: KeyPath,
    tried: usize,
}

impl StandIn {
    fn at(path: KeyPath) -> StandIn {
        StandIn { path, tried: 0 }
    }

    /// Puts the next candidate in place; false when none is left.
    fn next(&mut self, last_error: &str, value: &mut Value) -> bool {
        // An enum names its variants: the first one fits.
        if last_error.starts_with("unknown variant") {
            if let Some(variant) = backticked(last_error).get(1) {
                let variant = Value::String((*variant).to_string());
                if get(value, &self.path.0) != Some(&variant) {
                    return set(value, &self.path.0, variant);
                }
            }
        }
        let candidate = match self.tried {
            0 => Value::from(1),
            1 => Value::String(String::new()),
            2 => Value::Bool(true),
            3 => Value::Array(Vec::new()),
            4 => Value::Object(serde_json::Map::new()),
            _ => return false,
        };
        self.tried += 1;
        set(value, &self.path.0, candidate)
    }
}

fn relative(path: &serde_path_to_error::Path) -> Option<KeyPath> {
    use serde_path_to_error::Segment;
    let mut out = KeyPath::default();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out = out.index(*index),
            Segment::Map { key } => out = out.key(key),
            Segment::Enum { .. } => {}
            Segment::Unknown => return None,
        }
    }
    Some(out)
}

/// What serde's message says: an unknown or a missing field (and its name), or a value.
fn classify(message: &str) -> (Kind, Option<&str>) {
    let field = || backticked(message).first().copied();
    if message.starts_with("unknown field `") {
        (Kind::UnknownKey, field())
    } else if message.starts_with("missing field `") {
        (Kind::Missing, field())
    } else {
        (Kind::Value, None)
    }
}

/// "unknown key; did you mean `dry_run`?", or the keys the table takes.
fn unknown_key(message: &str) -> String {
    let words = backticked(message);
    let (Some(word), expected) = (words.first(), words.get(1..).unwrap_or_default()) else {
        return message.to_string();
    };
    if let Some(near) = nearest(word, expected.iter().copied()) {
        return format!("unknown key; did you mean `{near}`?");
    }
    if expected.is_empty() {
        return "unknown key; this table takes none".into();
    }
    let list: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    format!("unknown key; expected one of {}", list.join(", "))
}

/// serde's message, and for an unknown variant the nearest known one.
fn with_suggestion(message: &str) -> String {
    if message.starts_with("unknown variant") {
        let words = backticked(message);
        if let Some(near) = words.first().and_then(|w| nearest(w, words.iter().skip(1).copied())) {
            return format!("{message}; did you mean `{near}`?");
        }
    }
    message.to_string()
}

/// The words between backticks, in order.
pub(crate) fn backticked(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

/// The candidate a typo most likely meant: at most two edits away, and fewer than half
/// the word.
pub(crate) fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(word, c), c))
        .filter(|(d, _)| *d > 0 && *d <= 2 && *d * 2 < word.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Removes the key at `path`; false when it is not a key of a table.
fn remove(value: &mut Value, path: &[Seg]) -> bool {
    let Some((Seg::Key(k), parent)) = path.split_last() else {
        return false;
    };
    get_mut(value, parent)
        .and_then(Value::as_object_mut)
        .is_some_and(|t| t.remove(k).is_some())
}

/// Puts `new` at `path` (a key of a table, or an item of an array).
fn set(value: &mut Value, path: &[Seg], new: Value) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    match (get_mut(value, parent), last) {
        (Some(Value::Object(t)), Seg::Key(k)) => {
            t.insert(k.clone(), new);
            true
        }
        (Some(Value::Array(items)), Seg::Index(i)) if *i < items.len() => {
            items[*i] = new;
            true
        }
        _ => false,
    }
}
