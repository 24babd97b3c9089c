//! Paths written in a config file are relative to the file's folder, so every command
//! finds the same store, state and profiles from any working directory. Paths from
//! environment variables, and those of the embedded default (which has no folder), are
//! relative to the working directory.

use std::path::Path;

use crate::document::{Document, KeyPath};

pub(crate) struct Resolver<'a> {
    /// The config file's folder; `None` for the embedded default.
    pub base: Option<&'a Path>,
    pub doc: &'a Document,
}

impl Resolver<'_> {
    /// The path at `key`, resolved.
    pub fn path(&self, key: &KeyPath, text: &str) -> String {
        match self.base {
            Some(base) if self.doc.env_at(key).is_none() && !text.is_empty() && Path::new(text).is_relative() => {
                base.join(text).display().to_string()
            }
            _ => text.to_string(),
        }
    }

    /// A store URL with a relative SQLite file resolved; any other URL as it is.
    pub fn store_url(&self, key: &KeyPath, url: &str) -> String {
        map_sqlite_file(url, |file| self.path(key, file))
    }
}

/// `url` with `f` applied to its SQLite file; any other URL (and SQLite specials such as
/// `:memory:`, which are no files) as it is.
pub(crate) fn map_sqlite_file(url: &str, f: impl FnOnce(&str) -> String) -> String {
    let Some(rest) = url.strip_prefix("sqlite://") else {
        return url.to_string();
    };
    let (file, query) = match rest.split_once('?') {
        Some((file, query)) => (file, Some(query)),
        None => (rest, None),
    };
    if file.starts_with(':') {
        return url.to_string();
    }
    let file = f(file);
    match query {
        Some(query) => format!("sqlite://{file}?{query}"),
        None => format!("sqlite://{file}"),
    }
}
