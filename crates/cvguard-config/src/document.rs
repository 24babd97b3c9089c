//! The config as one tree of values, layered from the TOML text and then the
//! `CVGUARD__SECTION__KEY` environment variables, remembering where each value came
//! from: a key's line and column in the file, or the variable that set it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;

use serde_json::{Map, Value};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::problem::Origin;

/// One step of a path into the tree.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A path into the tree: `rules[2].threshold`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn key(&self, key: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_string()));
        p
    }

    pub fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    pub fn join(&self, rest: &KeyPath) -> KeyPath {
        let mut p = self.clone();
        p.0.extend(rest.0.iter().cloned());
        p
    }

    pub fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// Parses a key as the rule compiler writes it: `engine.dedupe_window`,
    /// `http.tokens[0].sha256`, `kafka.properties."bootstrap.servers"`.
    pub fn parse(text: &str) -> KeyPath {
        let mut segs = Vec::new();
        let mut word = String::new();
        let mut chars = text.chars().peekable();
        let flush = |word: &mut String, segs: &mut Vec<Seg>| {
            if !word.is_empty() {
                segs.push(Seg::Key(std::mem::take(word)));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '"' => {
                    for c in chars.by_ref() {
                        if c == '"' {
                            break;
                        }
                        word.push(c);
                    }
                    segs.push(Seg::Key(std::mem::take(&mut word)));
                }
                '.' => flush(&mut word, &mut segs),
                '[' => {
                    flush(&mut word, &mut segs);
                    let digits: String = chars.by_ref().take_while(|c| *c != ']').collect();
                    match digits.parse() {
                        Ok(i) => segs.push(Seg::Index(i)),
                        Err(_) => segs.push(Seg::Key(format!("[{digits}]"))),
                    }
                }
                c => word.push(c),
            }
        }
        flush(&mut word, &mut segs);
        KeyPath(segs)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Where a key and its value stand in the text.
#[derive(Debug, Clone)]
struct Spans {
    key: Range<usize>,
    value: Range<usize>,
}

/// A value set by an environment variable.
#[derive(Debug, Clone)]
pub(crate) struct EnvValue {
    pub var: String,
    /// As written, for a key that wants a string where the value looked like a number.
    pub raw: String,
}

/// The layered tree and where each of its values came from.
pub(crate) struct Document {
    text: String,
    pub tree: Value,
    spans: HashMap<KeyPath, Spans>,
    env: BTreeMap<KeyPath, EnvValue>,
}

/// A TOML syntax error: its place in the text and what is wrong.
pub(crate) struct SyntaxError {
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl Document {
    /// Parses `text` and lays `env` (name, value pairs) over it: every variable named
    /// `CVGUARD__A__B` (any case) sets key `a.b`. Syntax errors are all returned beside
    /// what could be read around them, so the other problems are found too.
    pub fn parse(
        text: String,
        env: impl IntoIterator<Item = (String, String)>,
        prefix: &str,
        separator: &str,
    ) -> (Document, Vec<SyntaxError>) {
        let (table, errors) = DeTable::parse_recoverable(&text);
        let errors = errors
            .iter()
            .map(|e| SyntaxError {
                at: e.span().map(|s| line_column(&text, s.start)),
                message: e.message().trim().to_string(),
            })
            .collect();
        let mut spans = HashMap::new();
        let tree = table_value(table.get_ref(), &KeyPath::default(), &mut spans);
        let mut doc = Document {
            tree,
            spans,
            env: BTreeMap::new(),
            text: String::new(),
        };
        let lead = format!("{prefix}{separator}").to_lowercase();
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.to_lowercase().starts_with(&lead) && name.len() > lead.len())
            .collect();
        vars.sort();
        for (var, raw) in vars {
            let path = env_path(&var[lead.len()..], separator);
            set_creating(&mut doc.tree, &path.0, env_value(&raw));
            doc.env.insert(path, EnvValue { var, raw });
        }
        doc.text = text;
        (doc, errors)
    }

    /// The variable that set exactly this key, if one did.
    pub fn env_at(&self, path: &KeyPath) -> Option<&EnvValue> {
        self.env.get(path)
    }

    /// Where a problem with `path` belongs: the variable that set it, or its place in
    /// the file (the key itself when `at_key`, else its value), or the nearest table
    /// around it that the file has.
    pub fn origin(&self, path: &KeyPath, at_key: bool) -> Origin {
        if let Some(e) = self.env.get(path) {
            return Origin::Env(e.var.clone());
        }
        if let Some(s) = self.spans.get(path) {
            let at = if at_key { s.key.start } else { s.value.start };
            return Origin::File(Some(line_column(&self.text, at)));
        }
        let set_below = |p: &KeyPath| !path.0.is_empty() && p.starts_with(path);
        if let Some((_, e)) = self.env.iter().find(|(p, _)| set_below(p)) {
            return Origin::Env(e.var.clone());
        }
        (1..path.0.len())
            .rev()
            .find_map(|n| self.spans.get(&KeyPath(path.0[..n].to_vec())))
            .map_or(Origin::File(None), |s| {
                Origin::File(Some(line_column(&self.text, s.value.start)))
            })
    }
}

/// The key a variable sets: `ENGINE__DRY_RUN` is `engine.dry_run`. Under
/// `kafka.properties` and `kafka.properties_from_env` the names are librdkafka's, which
/// use dots where a variable's name cannot: `KAFKA__PROPERTIES__SASL_PASSWORD` is
/// `kafka.properties."sasl.password"` (no librdkafka property has an underscore).
fn env_path(name: &str, separator: &str) -> KeyPath {
    let mut segs: Vec<Seg> = name
        .to_lowercase()
        .split(separator)
        .map(|k| Seg::Key(k.to_string()))
        .collect();
    if let [Seg::Key(section), Seg::Key(table), Seg::Key(property)] = segs.as_mut_slice() {
        if section == "kafka" && (table == "properties" || table == "properties_from_env") {
            *property = property.replace('_', ".");
        }
    }
    KeyPath(segs)
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn table_value(table: &DeTable<'_>, at: &KeyPath, spans: &mut HashMap<KeyPath, Spans>) -> Value {
    let mut map = Map::new();
    for (key, value) in table.iter() {
        let path = at.key(key.get_ref());
        spans.insert(
            path.clone(),
            Spans {
                key: key.span(),
                value: value.span(),
            },
        );
        map.insert(key.get_ref().to_string(), to_value(value, &path, spans));
    }
    Value::Object(map)
}

fn to_value(value: &Spanned<DeValue<'_>>, at: &KeyPath, spans: &mut HashMap<KeyPath, Spans>) -> Value {
    match value.get_ref() {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map(Value::from)
            .or_else(|_| u64::from_str_radix(i.as_str(), i.radix()).map(Value::from))
            .unwrap_or_else(|_| Value::String(i.to_string())),
        DeValue::Float(x) => x
            .as_str()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(x.to_string()), Value::Number),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let path = at.index(i);
                    spans.insert(
                        path.clone(),
                        Spans {
                            key: item.span(),
                            value: item.span(),
                        },
                    );
                    to_value(item, &path, spans)
                })
                .collect(),
        ),
        DeValue::Table(t) => table_value(t, at, spans),
    }
}

/// An environment value: a boolean or a number where it reads as one, else the text.
fn env_value(raw: &str) -> Value {
    if let Ok(b) = raw.to_lowercase().parse::<bool>() {
        return Value::Bool(b);
    }
    if let Ok(i) = raw.parse::<i64>() {
        return Value::from(i);
    }
    raw.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or_else(|| Value::String(raw.to_string()), Value::Number)
}

/// Sets `path` in `tree`, making tables on the way (a variable may name a section the
/// file does not have).
fn set_creating(tree: &mut Value, path: &[Seg], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = tree;
    for seg in parents {
        let Seg::Key(k) = seg else { return };
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        node = node
            .as_object_mut()
            .expect("made a table")
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if let Seg::Key(k) = last {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        node.as_object_mut().expect("made a table").insert(k.clone(), value);
    }
}

/// The value at `path`, if there is one.
pub(crate) fn get_mut<'a>(tree: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    path.iter().try_fold(tree, |node, seg| match seg {
        Seg::Key(k) => node.as_object_mut()?.get_mut(k),
        Seg::Index(i) => node.as_array_mut()?.get_mut(*i),
    })
}

pub(crate) fn get<'a>(tree: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    path.iter().try_fold(tree, |node, seg| match seg {
        Seg::Key(k) => node.as_object()?.get(k),
        Seg::Index(i) => node.as_array()?.get(*i),
    })
}

#[cfg(test)]
mod tests {
    use super::{Document, KeyPath};

    /// librdkafka's property names have dots, which a variable's name cannot.
    #[test]
    fn kafka_properties_from_the_environment_take_dots_for_underscores() {
        let env = [
            ("CVGUARD__KAFKA__PROPERTIES__SASL_PASSWORD", "hunter2"),
            ("CVGUARD__KAFKA__PROPERTIES_FROM_ENV__SSL_KEY_PASSWORD", "KEY_PASS"),
            ("CVGUARD__ENGINE__DRY_RUN", "true"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let (doc, errors) = Document::parse(String::new(), env, "CVGUARD", "__");
        assert!(errors.is_empty());
        assert_eq!(doc.tree["kafka"]["properties"]["sasl.password"], "hunter2");
        assert_eq!(doc.tree["kafka"]["properties_from_env"]["ssl.key.password"], "KEY_PASS");
        assert_eq!(doc.tree["engine"]["dry_run"], true);
        let var = doc
            .env_at(&KeyPath::parse("kafka.properties.\"sasl.password\""))
            .map(|e| e.var.as_str());
        assert_eq!(var, Some("CVGUARD__KAFKA__PROPERTIES__SASL_PASSWORD"));
    }
}
