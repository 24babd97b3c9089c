//! Reads the account profile CSV: account_id,segment,org_id,open_vacancies.

use std::path::Path;

use cvguard_core::{AccountProfile, Profiles};

/// Reads profiles from a CSV file with a header row. Only `account_id` is required;
/// empty cells mean "not known". Errors name the file and the line.
pub fn load_profiles(path: &Path) -> Result<Profiles, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read profile file {}: {e}", path.display()))?;
    read_profiles(&path.display().to_string(), file)
}

/// Reads profiles from CSV text; `shown` names it in messages.
pub fn read_profiles(shown: &str, input: impl std::io::Read) -> Result<Profiles, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(input);
    let headers = reader
        .headers()
        .map_err(|e| format!("{shown}: cannot read the header row: {e}"))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let account_col = column("account_id").ok_or_else(|| format!("{shown}: the header has no `account_id` column"))?;
    for h in headers.iter() {
        if !["account_id", "segment", "org_id", "open_vacancies"].contains(&h) {
            return Err(format!(
                "{shown}: unknown column `{h}`; expected account_id, segment, org_id, open_vacancies"
            ));
        }
    }
    let (segment_col, org_col, vacancies_col) = (column("segment"), column("org_id"), column("open_vacancies"));
    let mut records = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| format!("{shown}: {e}"))?;
        let line = row.position().map_or(0, |p| p.line());
        let cell = |col: Option<usize>| {
            col.and_then(|c| row.get(c))
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let account = cell(Some(account_col)).ok_or_else(|| format!("{shown} line {line}: empty account_id"))?;
        let open_vacancies = match cell(vacancies_col) {
            None => 0,
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| format!("{shown} line {line}: open_vacancies `{v}` is not a whole number"))?,
        };
        records.push((
            account,
            AccountProfile {
                segment: cell(segment_col),
                org_id: cell(org_col),
                open_vacancies,
            },
        ));
    }
    Ok(Profiles::from_records(records))
}
