//! Swapping rules under a running engine without losing window state.
//!
//! A rule whose name, key kind, measure, window and actions are unchanged keeps its
//! window and its firing state; a changed threshold, segment or per-vacancy figure takes
//! effect at once (effective thresholds are recomputed for every key). A removed rule's
//! window is dropped.
//!
//! An `events` or `cvs` rule whose window, measure or actions changed starts an empty
//! window, as does a new one: it counts from the reload on. A `distinct_cvs` rule, new
//! or changed, is computed at once from the CVs each key still holds, which reach back
//! as far as the key kind's longest `distinct_cvs` window before the reload: an analyst
//! sees the effect of a new threshold on current traffic immediately. Keys remember
//! the latest access per action while a group of rules counts at most two actions (the
//! shipped rules do); beyond that, actions counted by the same rules share a class, and
//! a reload that separates them cannot tell which action a CV's latest access was:
//! such accesses are left out (rules undercount until the window refills, never
//! overcount into a false alert).

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::{Engine, FiringIds, KeyTable, KindLayout, ThresholdLists};
use crate::baseline::HistoryTable;
use crate::chunked::ChunkedRows;
use crate::distinct::{CvEntry, GroupState, CLASS_SLOTS};
use crate::interner::CvRef;
use crate::rules::{DistinctField, KeyKind, Rule, RuleSet};
use crate::window::CountWindow;

fn same_shape(a: &Rule, b: &Rule) -> bool {
    a.window_secs == b.window_secs && counts_the_same(a, b)
}

/// Whether two rules count the same thing per key (their windows aside): a baseline
/// rule's daily values stay good across a reload that changes only its window,
/// threshold, factor, statistic or the length of its history.
fn counts_the_same(a: &Rule, b: &Rule) -> bool {
    a.name == b.name && a.group_by == b.group_by && a.measure == b.measure && {
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
        let remap: Vec<Option<u8>> = (0..64u8).map(|id| new.action_id(old.action_name(id))).collect();
        let remap_mask = |mask: u64| {
            (0..64u8)
                .filter(|a| mask & (1u64 << a) != 0)
                .filter_map(|a| remap[a as usize])
                .fold(0u64, |m, a| m | 1u64 << a)
        };
        let now = self.max_ts.unwrap_or(0).div_euclid(1000);

        for kind in KeyKind::ALL {
            let old_ids = old.rules_of(kind).to_vec();
            let new_ids = new.rules_of(kind).to_vec();
            let old_layout = std::mem::replace(&mut self.layouts[kind.index()], KindLayout::new(&new, kind));
            let new_layout = &self.layouts[kind.index()];
            let table = &mut self.tables[kind.index()];
            if new_ids.is_empty() {
                for slot in 0..table.slots.len() as u32 {
                    table.remove(
                        slot,
                        &old_layout.plan.fields,
                        &mut self.interner,
                        &mut self.names,
                        &mut self.cv_pairs,
                    );
                }
                *table = KeyTable::new(new_layout);
                continue;
            }
            // For each old group and class: its actions under the new numbering.
            let old_classes: Vec<[u64; CLASS_SLOTS]> = old_layout
                .plan
                .groups
                .iter()
                .map(|g| std::array::from_fn(|c| remap_mask(g.class_actions(c))))
                .collect();

            // Every slot gets rows of the new widths; free slots get empty ones.
            let mut new_thresholds = ThresholdLists::default();
            let mut new_firing = FiringIds::default();
            let mut new_counts = ChunkedRows::new(new_layout.counts);
            let mut new_groups = ChunkedRows::new(new_layout.plan.groups.len());
            let mut new_progress = ChunkedRows::new(new_layout.progress);
            for s in 0..table.slots.len() {
                let Some(state) = table.slots[s].as_mut() else {
                    new_counts.push_row((0..new_layout.counts).map(|_| CountWindow::default()));
                    new_groups.push_row(new_layout.plan.groups.iter().map(|_| GroupState::default()));
                    new_progress.push_row(new_layout.plan.groups.iter().flat_map(GroupState::new_progress));
                    continue;
                };
                let (old_counts, old_groups) = (table.counts.row_mut(s), table.groups.row_mut(s));
                let mut thresholds = Vec::with_capacity(new_ids.len());
                let mut firing = Vec::with_capacity(new_ids.len());
                let mut counts: Vec<CountWindow> = Vec::with_capacity(new_layout.counts);
                let hint = state
                    .evidence
                    .accounts
                    .entries(&self.names)
                    .first()
                    .map(|(a, _)| a.clone());
                for (ns, &ni) in new_ids.iter().enumerate() {
                    let rule = &new.rules[ni];
                    let kept = old_ids.iter().position(|&oi| same_shape(&old.rules[oi], rule));
                    thresholds.push(new.effective_threshold(rule, &state.key, hint.as_deref()));
                    firing.push(kept.and_then(|os| table.firing.get(state.firing, s as u32, os)));
                    if new_layout.plan.place[ns].is_none() {
                        let window = kept
                            .filter(|os| old_layout.plan.place[*os].is_none())
                            .map(|os| std::mem::take(&mut old_counts[old_layout.count_place[os]]));
                        counts.push(window.unwrap_or_default());
                    }
                }

                // Re-file every CV the key holds under the new groups and classes.
                let mut groups = Vec::with_capacity(new_layout.plan.groups.len());
                for (plan, &field) in new_layout.plan.groups.iter().zip(&new_layout.plan.fields) {
                    let mut merged: FxHashMap<CvRef, CvEntry> = FxHashMap::default();
                    for (og, old_group) in old_groups.iter().enumerate() {
                        // Only a group of the same field holds values this one counts.
                        if old_layout.plan.fields[og] != field {
                            continue;
                        }
                        for (cv, e) in old_group.entries() {
                            let mut last = [0; CLASS_SLOTS];
                            for (nc, l) in last.iter_mut().enumerate() {
                                let actions = plan.class_actions(nc);
                                for (oc, old_actions) in old_classes[og].iter().enumerate() {
                                    if *old_actions != 0 && actions & old_actions == *old_actions {
                                        *l = (*l).max(e.last[oc]);
                                    }
                                }
                            }
                            let mapped = CvEntry {
                                last,
                                first_action: remap[e.first_action as usize].unwrap_or(0),
                                ..*e
                            };
                            merged
                                .entry(cv)
                                .and_modify(|m| {
                                    for (a, b) in m.last.iter_mut().zip(mapped.last) {
                                        *a = (*a).max(b);
                                    }
                                    m.visibility = m.visibility.max(mapped.visibility);
                                    if mapped.first < m.first {
                                        m.first = mapped.first;
                                        m.first_action = mapped.first_action;
                                    }
                                })
                                .or_insert(mapped);
                        }
                    }
                    merged.retain(|_, e| e.last.iter().any(|l| *l != 0));
                    let mut entries: Vec<(CvRef, CvEntry)> = merged.into_iter().collect();
                    entries.sort_unstable_by_key(|(cv, _)| *cv);
                    for (handle, _) in &entries {
                        if field == DistinctField::Cvs {
                            self.interner.retain(*handle);
                            self.cv_pairs += 1;
                        } else {
                            self.names.retain(*handle);
                        }
                    }
                    groups.push(GroupState::rebuild(plan, entries, now));
                }
                for (g, field) in old_groups.iter_mut().zip(&old_layout.plan.fields) {
                    if *field == DistinctField::Cvs {
                        g.clear(|cv| {
                            self.cv_pairs -= 1;
                            self.interner.release(cv);
                        });
                    } else {
                        g.clear(|name| self.names.release(name));
                    }
                }
                state.thresholds = new_thresholds.handle(thresholds);
                state.firing = 0;
                for (w, id) in firing.into_iter().enumerate() {
                    new_firing.set(&mut state.firing, s as u32, w, id);
                }
                new_counts.push_row(counts);
                let (groups, progress): (Vec<GroupState>, Vec<Vec<_>>) = groups.into_iter().unzip();
                new_groups.push_row(groups);
                new_progress.push_row(progress.into_iter().flatten());
            }
            table.thresholds = new_thresholds;
            table.firing = new_firing;
            table.counts = new_counts;
            table.groups = new_groups;
            table.progress = new_progress;
        }
        // Histories: kept for a rule that still counts the same thing, resized when
        // its `history` changed; a new baseline rule starts empty.
        let mut old_histories = std::mem::take(&mut self.histories);
        let mut histories = Vec::with_capacity(new.rules.len());
        for rule in &new.rules {
            let kept = rule.baseline.and_then(|b| {
                let oi = old.rules.iter().position(|o| counts_the_same(o, rule))?;
                old_histories[oi].take().map(|t| t.resized(b))
            });
            histories.push(kept.or_else(|| rule.baseline.map(HistoryTable::new)));
        }
        for (rule, table) in old.rules.iter().zip(&mut old_histories) {
            if let Some(table) = table {
                table.release_all(super::values_of(rule, &mut self.interner, &mut self.names));
            }
        }
        self.histories = histories;
        self.rules = new;
        report
    }
}
