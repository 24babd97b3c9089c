//! Account profiles: what each account legitimately needs (segment, organisation,
//! open vacancies). Built from records; reading the CSV file is the loader's job.

use rustc_hash::FxHashMap;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccountProfile {
    pub segment: Option<String>,
    pub org_id: Option<String>,
    pub open_vacancies: u64,
}

/// What an organisation's accounts add up to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrgProfile {
    /// Distinct segments of its accounts, sorted.
    pub segments: Vec<String>,
    /// Sum of its accounts' open vacancies.
    pub open_vacancies: u64,
    /// Its accounts, sorted.
    pub accounts: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Profiles {
    accounts: FxHashMap<String, AccountProfile>,
    orgs: FxHashMap<String, OrgProfile>,
}

impl Profiles {
    /// Builds profiles from `(account_id, profile)` records; a later record for the same
    /// account replaces an earlier one.
    pub fn from_records(records: impl IntoIterator<Item = (String, AccountProfile)>) -> Profiles {
        let accounts: FxHashMap<String, AccountProfile> = records.into_iter().collect();
        let mut orgs: FxHashMap<String, OrgProfile> = FxHashMap::default();
        for (account, profile) in &accounts {
            if let Some(org) = &profile.org_id {
                let entry = orgs.entry(org.clone()).or_default();
                entry.open_vacancies = entry.open_vacancies.saturating_add(profile.open_vacancies);
                entry.accounts.push(account.clone());
                if let Some(seg) = &profile.segment {
                    entry.segments.push(seg.clone());
                }
            }
        }
        for org in orgs.values_mut() {
            org.segments.sort_unstable();
            org.segments.dedup();
            org.accounts.sort_unstable();
        }
        Profiles { accounts, orgs }
    }

    pub fn account(&self, account_id: &str) -> Option<&AccountProfile> {
        self.accounts.get(account_id)
    }

    pub fn org(&self, org_id: &str) -> Option<&OrgProfile> {
        self.orgs.get(org_id)
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}
