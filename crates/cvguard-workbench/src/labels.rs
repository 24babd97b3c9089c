//! Ground truth (`labels.csv`, the simulator's format) and the other small inputs.
//!
//! `labels.csv`: a header `key_kind,key,scenario,expected`, then one key a line;
//! `expected` is `suspend` or `alert` for a key an attack should be caught on, `none` for
//! one that must not be (an honest heavy user, a member of a ring only the organisation
//! key should catch). A key not listed is honest.

use rustc_hash::FxHashSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub key_kind: String,
    pub key: String,
    pub scenario: String,
    pub expected: String,
}

impl Label {
    /// An attack the rules should catch on this key.
    pub fn is_positive(&self) -> bool {
        self.expected == "alert" || self.expected == "suspend"
    }
}

#[derive(Debug, Clone, Default)]
pub struct Labels {
    pub labels: Vec<Label>,
}

impl Labels {
    /// Reads `labels.csv` text; `Err` names the line that is not `key_kind,key,scenario,expected`.
    pub fn parse(text: &str) -> Result<Labels, String> {
        let mut labels = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || (n == 0 && line.starts_with("key_kind")) {
                continue;
            }
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() < 4 {
                return Err(format!(
                    "line {}: expected key_kind,key,scenario,expected, not `{line}`",
                    n + 1
                ));
            }
            labels.push(Label {
                key_kind: f[0].to_string(),
                key: f[1].to_string(),
                scenario: f[2].to_string(),
                expected: f[3].to_string(),
            });
        }
        Ok(Labels { labels })
    }

    /// The (key_kind, key) pairs an attack should be caught on.
    pub fn positives(&self) -> FxHashSet<(String, String)> {
        self.labels
            .iter()
            .filter(|l| l.is_positive())
            .map(|l| (l.key_kind.clone(), l.key.clone()))
            .collect()
    }
}

/// Keys to leave out of a fit (`tune --exclude`): a labels file (its attacks: rows whose
/// `expected` is `alert` or `suspend`), or plain `key_kind,key` lines (every one).
pub fn parse_exclude(text: &str) -> Result<FxHashSet<(String, String)>, String> {
    let mut out = FxHashSet::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (n == 0 && line.starts_with("key_kind")) {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        match f.len() {
            2 => {}
            4.. if !matches!(f[3], "alert" | "suspend") => continue,
            4.. => {}
            _ => {
                return Err(format!(
                    "line {}: expected key_kind,key (or a labels.csv row), not `{line}`",
                    n + 1
                ))
            }
        }
        out.insert((f[0].to_string(), f[1].to_string()));
    }
    Ok(out)
}

/// Unsuspensions to replay (`backtest --unsuspends`): `account_id,unsuspended_at` lines
/// (RFC 3339), the false positives an analyst undid. The cooldown runs from each.
pub fn parse_unsuspends(text: &str) -> Result<Vec<(String, i64)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (n == 0 && line.starts_with("account_id")) {
            continue;
        }
        let (account, at) = line
            .split_once(',')
            .ok_or_else(|| format!("line {}: expected account_id,unsuspended_at, not `{line}`", n + 1))?;
        let ms = cvguard_core::timefmt::parse_rfc3339_ms(at.trim())
            .ok_or_else(|| format!("line {}: `{}` is not an RFC 3339 time", n + 1, at.trim()))?;
        out.push((account.trim().to_string(), ms));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_exclusions_read_the_simulators_file() {
        let text = "key_kind,key,scenario,expected\naccount_id,agency-01,legit_heavy,none\naccount_id,h-1,harvest,suspend\nip,1.2.3.4,ip_ring,alert\n";
        let l = Labels::parse(text).unwrap();
        assert_eq!(l.labels.len(), 3);
        assert_eq!(l.positives().len(), 2);
        let ex = parse_exclude(text).unwrap();
        assert!(ex.contains(&("account_id".into(), "h-1".into())));
        assert!(!ex.contains(&("account_id".into(), "agency-01".into())));
        assert_eq!(parse_exclude("account_id,a\norg_id,o\n").unwrap().len(), 2);
        assert!(parse_exclude("just-one-field\n").is_err());
        let u = parse_unsuspends("account_id,unsuspended_at\nacc-0,2024-05-04T07:00:00Z\n").unwrap();
        assert_eq!(u, vec![("acc-0".to_string(), 1_714_806_000_000)]);
        assert!(parse_unsuspends("acc-0,yesterday\n").is_err());
    }
}
