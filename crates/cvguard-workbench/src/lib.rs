//! cvguard-workbench: what an analyst needs to change a threshold with evidence.
//!
//! - [`backtest`]: history through one or two configs in one pass, each with the
//!   service's whole decision path (the engine's allowlist and dry run, then the rails of
//!   [`cvguard_respond::rails`] over a [`ledger`] of what the store would hold), in event
//!   time; the per-rule figures, the incidents, the difference, precision and recall.
//!   Each incident's chart is a [`curve`] of at most [`curve::POINTS`] points, built from
//!   the engine's own counts: no CV id is held for it.
//! - [`tune`]: every key's peak window value per rule and segment, its distribution, and a
//!   proposed threshold per rule and segment by [`quantile`] x margin or by alerts per week.
//! - [`html`]: one self-contained HTML report with inline SVG charts ([`svg`]), drawn from
//!   the same values the JSON output serialises.
//!
//! No IO: the binary reads the files and hands lines over.

pub mod backtest;
pub mod curve;
pub mod html;
pub mod labels;
pub mod ledger;
pub mod quantile;
pub mod svg;
pub mod tune;

/// A UTC day `YYYY-MM-DD` of epoch milliseconds.
pub fn day_of(ms: i64) -> String {
    let text = cvguard_core::timefmt::format_rfc3339_ms(ms);
    text.get(..10).unwrap_or(&text).to_string()
}
