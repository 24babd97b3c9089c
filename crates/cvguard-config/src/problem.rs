//! What is wrong with a config, and where: the file's line and column, an environment
//! variable, or a command-line option.

use std::fmt;

use cvguard_core::ConfigIssue;

/// Where a problem's value came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// The config file, at a 1-based line and column where TOML knows them.
    File(Option<(usize, usize)>),
    /// An environment variable (`CVGUARD__ENGINE__DRY_RUN`) that overrides the file.
    Env(String),
    /// A command-line option that replaces a value of the file (`--profiles`).
    CommandLine,
}

/// One problem (or warning) in a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file (or embedded source) the problem is in, as the command named it.
    pub file: String,
    pub origin: Origin,
    /// The rule's name, or `rules[i]` when it has none; `None` outside `[[rules]]`.
    pub rule: Option<String>,
    /// The key as a path (`engine.max_cv_ids`; inside a rule, relative to it: `window`).
    /// `None` for a TOML syntax error, which belongs to no key.
    pub key: Option<String>,
    pub message: String,
}

impl Problem {
    /// The problem for `-o json`: `file`, `line`, `column` (null where the file has no
    /// place for it), `env` (the variable that set the value), `rule`, `key`, `message`.
    pub fn to_json(&self, severity: &str) -> serde_json::Value {
        let (line, column) = match self.origin {
            Origin::File(Some((line, column))) => (Some(line), Some(column)),
            _ => (None, None),
        };
        let env = match &self.origin {
            Origin::Env(var) => Some(var.as_str()),
            _ => None,
        };
        serde_json::json!({
            "severity": severity,
            "file": self.file,
            "line": line,
            "column": column,
            "env": env,
            "command_line": self.origin == Origin::CommandLine,
            "rule": self.rule,
            "key": self.key,
            "message": self.message,
        })
    }
}

/// The whole problem on one line, as `check-config` lists it and a reload logs it:
/// `my.toml:3:1: rule `fast`, key `window`: ...`; a value set by the environment or the
/// command line names that instead of the file.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File(Some((line, column))) => write!(f, "{}:{line}:{column}: ", self.file)?,
            Origin::File(None) => write!(f, "{}: ", self.file)?,
            Origin::Env(var) => write!(f, "environment variable {var}: ")?,
            Origin::CommandLine => f.write_str("command line: ")?,
        }
        match (&self.rule, &self.key) {
            (Some(rule), Some(key)) => write!(f, "rule `{rule}`, key `{key}`: ")?,
            (Some(rule), None) => write!(f, "rule `{rule}`: ")?,
            (None, Some(key)) => write!(f, "key `{key}`: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

/// Whether the config could not be read at all, or was read and is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadErrorKind {
    /// The file does not exist or cannot be read (sysexits EX_NOINPUT, 66).
    Unreadable,
    /// It was read and has problems (EX_USAGE, 64).
    Invalid,
}

/// A config that failed to load: the file and every problem in it, in the file's order,
/// then those from the environment and the command line; and the warnings a config
/// without those problems would have had, so one run shows everything.
#[derive(Debug, Clone, thiserror::Error)]
pub struct LoadError {
    pub file: String,
    pub kind: LoadErrorKind,
    pub issues: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl LoadError {
    pub fn is_unreadable(&self) -> bool {
        self.kind == LoadErrorKind::Unreadable
    }

    pub(crate) fn unreadable(file: String, error: &std::io::Error) -> LoadError {
        LoadError {
            issues: vec![Problem {
                file: file.clone(),
                origin: Origin::File(None),
                rule: None,
                key: None,
                message: format!("cannot read the config file: {error}"),
            }],
            file,
            kind: LoadErrorKind::Unreadable,
            warnings: Vec::new(),
        }
    }

    /// Warnings treated as errors (`check-config --strict`).
    pub fn from_warnings(file: String, warnings: Vec<Problem>) -> LoadError {
        LoadError {
            file,
            kind: LoadErrorKind::Invalid,
            issues: warnings,
            warnings: Vec::new(),
        }
    }

    /// The error for `-o json`: `{"file", "valid": false, "problems": [...]}`, the errors
    /// first, then the warnings, each with its `severity`.
    pub fn to_json(&self) -> serde_json::Value {
        let problems: Vec<serde_json::Value> = self
            .issues
            .iter()
            .map(|p| p.to_json("error"))
            .chain(self.warnings.iter().map(|p| p.to_json("warning")))
            .collect();
        serde_json::json!({
            "file": self.file,
            "valid": false,
            "readable": !self.is_unreadable(),
            "problems": problems,
        })
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unreadable() {
            let why = self
                .issues
                .first()
                .map_or("cannot read the config file", |p| &p.message);
            return write!(f, "{}: {why}", self.file);
        }
        let n = self.issues.len();
        write!(f, "{}: {n} problem{}", self.file, if n == 1 { "" } else { "s" })?;
        for issue in &self.issues {
            write!(f, "\n  {issue}")?;
        }
        let n = self.warnings.len();
        if n > 0 {
            write!(f, "\nand {n} warning{}", if n == 1 { "" } else { "s" })?;
            for warning in &self.warnings {
                write!(f, "\n  {warning}")?;
            }
        }
        Ok(())
    }
}

/// Problems found after a config loaded (a secret missing from the environment). They
/// name the key, not a line.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        write!(f, "{}: {n} problem{}", self.file, if n == 1 { "" } else { "s" })?;
        for issue in &self.issues {
            write!(f, "\n  {}: {issue}", self.file)?;
        }
        Ok(())
    }
}
