//! The event actions a rule can count. The event contract leaves `action` free-form
//! (docs/EVENTS.md), so an unknown one is a warning, not an error: but a typo
//! (`cv_serach`) silently turns a rule off, so it is said, with the nearest known action.

use cvguard_core::RuleSpec;

use crate::collect::{nearest, Finding, Kind};
use crate::document::KeyPath;

/// The actions of the event contract (docs/EVENTS.md) and of the simulator
/// (`cvguard-sim`): what the platform's events carry.
pub const KNOWN_ACTIONS: [&str; 4] = ["cv_view", "cv_download", "cv_search", "contact_reveal"];

/// A warning for each action of `spec` (the rule at `at`) that no known event has.
pub(crate) fn unknown_actions(spec: &RuleSpec, at: &KeyPath) -> Vec<Finding> {
    spec.actions
        .iter()
        .enumerate()
        .filter(|(_, a)| !a.is_empty() && !KNOWN_ACTIONS.contains(&a.as_str()))
        .map(|(i, action)| {
            let hint = match nearest(action, KNOWN_ACTIONS) {
                Some(near) => format!("; did you mean `{near}`?"),
                None => String::new(),
            };
            Finding {
                path: at.key("actions").index(i),
                kind: Kind::Value,
                message: format!(
                    "no known event has the action `{action}` (known: {}), so the rule never counts it{hint}",
                    KNOWN_ACTIONS.join(", ")
                ),
            }
        })
        .collect()
}
