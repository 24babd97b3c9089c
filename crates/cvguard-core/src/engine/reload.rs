//! Swapping rules under a running engine without losing window state.
//!
//! A rule whose name, key kind, measure, window and actions are unchanged keeps its
//! window and its firing state; a changed threshold, segment or per-vacancy figure takes
//! effect at once (effective thresholds are recomputed for every key). A rule whose
//! window, measure or actions changed starts an empty window, as does a new rule: it
//! counts from the reload on. A removed rule's window is dropped.

use std::sync::Arc;

use super::{Engine, KeyState, Window};
use crate::rules::{KeyKind, Rule, RuleSet};
use crate::window::DistinctWindow;

fn same_shape(a: &Rule, b: &Rule) -> bool {
    a.name == b.name && a.group_by == b.group_by && a.measure == b.measure && a.window_secs == b.window_secs && {
        let (mut x, mut y) = (a.actions.clone(), b.actions.clone());
        x.sort();
        y.sort();
        x == y
    }
}

/// What a reload kept and reset, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub kept: Vec<String>,
    pub reset: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl Engine {
    /// Replaces the rules, keeping the state of every rule whose shape is unchanged.
    pub fn reload(&mut self, new: Arc<RuleSet>) -> ReloadReport {
        let old = Arc::clone(&self.rules);
        let mut report = ReloadReport::default();
        for r in &new.rules {
            match old.rules.iter().find(|o| o.name == r.name) {
                Some(o) if same_shape(o, r) => report.kept.push(r.name.clone()),
                Some(_) => report.reset.push(r.name.clone()),
                None => report.added.push(r.name.clone()),
            }
        }
        report.removed = old
            .rules
            .iter()
            .filter(|o| !new.rules.iter().any(|r| r.name == o.name))
            .map(|o| o.name.clone())
            .collect();

        // Action ids may be numbered differently under the new rules.
        let remap: Vec<u8> = (0..64u8)
            .map(|id| new.action_id(old.action_name(id)).unwrap_or(0))
            .collect();

        for kind in KeyKind::ALL {
            let old_ids = old.rules_of(kind).to_vec();
            let new_ids = new.rules_of(kind).to_vec();
            let table = &mut self.tables[kind.index()];
            let mut released = Vec::new();
            for slot in table.slots.iter_mut() {
                let Some(state) = slot.as_mut() else { continue };
                let mut old_windows: Vec<Option<Window>> =
                    std::mem::take(&mut state.windows).into_iter().map(Some).collect();
                let mut windows = Vec::with_capacity(new_ids.len());
                let mut firing = Vec::with_capacity(new_ids.len());
                for &ni in &new_ids {
                    let rule = &new.rules[ni];
                    let kept = old_ids
                        .iter()
                        .position(|&oi| same_shape(&old.rules[oi], rule))
                        .and_then(|w| old_windows[w].take().map(|win| (win, state.firing[w])));
                    match kept {
                        Some((mut win, f)) => {
                            if let Window::Distinct(d) = &mut win {
                                d.remap_actions(&remap);
                            }
                            windows.push(win);
                            firing.push(f);
                        }
                        None => {
                            windows.push(Window::new(rule.measure));
                            firing.push(None);
                        }
                    }
                }
                for win in old_windows.into_iter().flatten() {
                    if let Window::Distinct(mut d) = win {
                        d.clear(|cv| released.push(cv));
                    }
                }
                let hint = state.accounts.entries().first().map(|(a, _)| a.clone());
                state.thresholds = new_ids
                    .iter()
                    .map(|&i| new.effective_threshold(&new.rules[i], &state.key, hint.as_deref()))
                    .collect();
                state.windows = windows;
                state.firing = firing;
            }
            for cv in released {
                self.cv_pairs -= 1;
                self.interner.release(cv);
            }
            if new_ids.is_empty() {
                let table = &mut self.tables[kind.index()];
                for state in table.slots.iter_mut().filter_map(Option::take) {
                    drop_state(state, &mut self.interner, &mut self.cv_pairs);
                }
                *table = Default::default();
            }
        }
        self.rules = new;
        report
    }
}

fn drop_state(mut state: KeyState, interner: &mut crate::interner::CvInterner, pairs: &mut u64) {
    for w in &mut state.windows {
        if let Window::Distinct(d) = w {
            d.clear(|cv| {
                *pairs -= 1;
                interner.release(cv);
            });
        }
    }
}

impl DistinctWindow {
    /// Renumbers first-action ids after a rule change.
    pub(crate) fn remap_actions(&mut self, remap: &[u8]) {
        self.remap_first_actions(|id| remap.get(id as usize).copied().unwrap_or(0));
    }
}
