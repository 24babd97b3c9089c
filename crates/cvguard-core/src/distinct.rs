//! `distinct_cvs` for all the rules of one key at once.
//!
//! A key (an account, say) typically has several `distinct_cvs` rules: a day, an hour of
//! downloads, two days. Keeping one exact set per rule would store, hash and expire every
//! CV once per rule. Instead the rules of a key share one table of the CVs it touched,
//! each entry holding the latest access per *class* of actions (one class per action
//! while they fit in an entry, as views and downloads do in the shipped config; else
//! actions counted by the same rules share a class). A rule's value is kept
//! incrementally:
//!
//! - a CV joins a rule when it is accessed by one of the rule's classes and its latest
//!   access of those classes was outside the rule's window;
//! - it leaves when the rule's *cursor* passes its latest access of those classes. Each
//!   class has one time-ordered queue of accesses, shared by the rules of that class;
//!   every rule walks its own cursor along it, the longest window drops the front and
//!   frees entries nobody counts any more.
//!
//! So an access costs one hash lookup and one queue push per key, however many rules
//! the key has; nothing ever scans a whole table on the event path. Times are stored
//! as `u32` stamps (second + 1; 0 means "never").

use crate::chunked::ChunkedDeque;

use crate::cvmap::CvMap;
use crate::event::Visibility;
use crate::interner::CvRef;
use crate::rules::{DistinctField, RuleSet};

/// How many action classes one group of rules can have (the width of an entry).
pub const CLASS_SLOTS: usize = 2;

/// A second as stored: `sec + 1`, so that 0 can mean "never". Event time is limited
/// to what fits (up to 2106), see `timefmt::MAX_EPOCH_MS`.
pub type Stamp = u32;
const NEVER: Stamp = 0;
const NO_CLASS: u8 = u8::MAX;

pub fn stamp(sec: i64) -> Stamp {
    (sec + 1).clamp(0, Stamp::MAX as i64) as Stamp
}

pub fn unstamp(s: Stamp) -> i64 {
    s as i64 - 1
}

/// What a key remembers of one CV while any of its rules still counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CvEntry {
    /// First access since the key's table last held this CV.
    pub first: Stamp,
    /// Latest access per class of the group; `NEVER` once it has left every window of
    /// that class.
    pub last: [Stamp; CLASS_SLOTS],
    /// Action id of the first access.
    pub first_action: u8,
    /// Most revealing visibility seen.
    pub visibility: Visibility,
}

impl CvEntry {
    fn is_dead(&self) -> bool {
        self.last.iter().all(|l| *l == NEVER)
    }

    /// Latest access by any class in `classes` (a bit mask).
    fn latest(&self, classes: u8) -> Stamp {
        let mut best = NEVER;
        for (c, l) in self.last.iter().enumerate() {
            if classes & (1 << c) != 0 {
                best = best.max(*l);
            }
        }
        best
    }

    /// The class holding the latest access among `classes` (lowest index on ties):
    /// the one whose queue entry takes the CV out of a rule, so it leaves once.
    fn owner(&self, classes: u8) -> usize {
        let mut owner = 0;
        let mut best = None;
        for (c, l) in self.last.iter().enumerate() {
            if classes & (1 << c) != 0 && best.is_none_or(|b| *l > b) {
                best = Some(*l);
                owner = c;
            }
        }
        owner
    }
}

/// One `distinct_cvs` rule inside a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRule {
    /// Position of the rule in `RuleSet::rules_of(kind)`.
    pub slot: usize,
    pub window_secs: i64,
    /// The classes the rule counts (bit mask).
    pub classes: u8,
    /// The rule's window is the retention of each of its classes: its CVs leave exactly
    /// when the queues' fronts drop them, so it needs no cursor of its own (one lookup
    /// fewer per access; for a key kind with one rule, the only one).
    pub front: bool,
}

/// Rules of one key kind that share a table: at most `CLASS_SLOTS` classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlan {
    pub rules: Vec<PlanRule>,
    class_of_action: [u8; 64],
    /// Per class, the actions it covers (bit mask); 0 for unused slots.
    class_actions: [u64; CLASS_SLOTS],
    /// Per class, the longest window of a rule counting it: how long accesses are kept.
    retention: [i64; CLASS_SLOTS],
    /// Per class, the shortest window of a rule counting it: the soonest a new access
    /// can matter to an advance.
    shortest: [i64; CLASS_SLOTS],
}

impl GroupPlan {
    /// A group of `(slot, action mask, window seconds)` rules; `None` when their actions
    /// need more than `CLASS_SLOTS` classes.
    pub fn build(members: &[(usize, u64, i64)]) -> Option<GroupPlan> {
        // One class per action while they fit: exact across reloads that regroup
        // actions. Beyond that, actions counted by exactly the same rules share a class.
        let union = members.iter().fold(0u64, |m, r| m | r.1);
        let per_action = union.count_ones() as usize <= CLASS_SLOTS;
        let mut class_sigs: Vec<u64> = Vec::new();
        let mut class_of_action = [NO_CLASS; 64];
        let mut class_actions = [0u64; CLASS_SLOTS];
        for action in 0..64u8 {
            if union & (1u64 << action) == 0 {
                continue;
            }
            let sig = if per_action {
                1u64 << 63 | u64::from(action)
            } else {
                members
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.1 & (1u64 << action) != 0)
                    .fold(0u64, |s, (i, _)| s | 1 << i)
            };
            let class = match class_sigs.iter().position(|s| *s == sig) {
                Some(c) => c,
                None => {
                    class_sigs.push(sig);
                    class_sigs.len() - 1
                }
            };
            if class >= CLASS_SLOTS {
                return None;
            }
            class_of_action[action as usize] = class as u8;
            class_actions[class] |= 1u64 << action;
        }
        let mut retention = [0i64; CLASS_SLOTS];
        let mut shortest = [i64::MAX; CLASS_SLOTS];
        let rules = members
            .iter()
            .map(|&(slot, mask, window_secs)| {
                let mut classes = 0u8;
                for (c, actions) in class_actions.iter().enumerate() {
                    if actions & mask != 0 {
                        classes |= 1 << c;
                        retention[c] = retention[c].max(window_secs);
                        shortest[c] = shortest[c].min(window_secs);
                    }
                }
                PlanRule {
                    slot,
                    window_secs,
                    classes,
                    front: false,
                }
            })
            .collect();
        let mut rules: Vec<PlanRule> = rules;
        for rule in &mut rules {
            rule.front = (0..CLASS_SLOTS)
                .filter(|c| rule.classes & (1 << c) != 0)
                .all(|c| retention[c] == rule.window_secs);
        }
        Some(GroupPlan {
            rules,
            class_of_action,
            class_actions,
            retention,
            shortest,
        })
    }

    pub fn class_of(&self, action: u8) -> Option<usize> {
        match self.class_of_action.get(action as usize) {
            Some(&c) if c != NO_CLASS => Some(c as usize),
            _ => None,
        }
    }

    pub fn class_actions(&self, class: usize) -> u64 {
        self.class_actions[class]
    }

    fn classes(&self) -> impl Iterator<Item = usize> + '_ {
        (0..CLASS_SLOTS).filter(|c| self.class_actions[*c] != 0)
    }
}

/// How the distinct rules (`distinct_cvs`, `distinct_accounts`, ...) of one key kind are
/// laid out in groups. A group counts one field: its handles are CV ids (the CV
/// interner) or account, user or ip names (the evidence interner).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindPlan {
    pub groups: Vec<GroupPlan>,
    /// The field each group counts.
    pub fields: Vec<DistinctField>,
    /// For each rule of the kind (in `rules_of` order): (group, index in group) when
    /// it is a `distinct_cvs` rule.
    pub place: Vec<Option<(usize, usize)>>,
    /// The kind's longest `distinct_cvs` rule (its `rules_of` position): what a count
    /// rule's alert reports exposure from.
    pub longest: Option<usize>,
}

impl KindPlan {
    pub fn build(rules: &RuleSet, rule_ids: &[usize]) -> KindPlan {
        let mut members: Vec<Vec<(usize, u64, i64)>> = Vec::new();
        let mut fields: Vec<DistinctField> = Vec::new();
        let mut place = vec![None; rule_ids.len()];
        let mut longest: Option<(i64, usize)> = None;
        for (slot, &ri) in rule_ids.iter().enumerate() {
            let rule = &rules.rules[ri];
            let Some(field) = rule.measure.distinct_field() else {
                continue;
            };
            if field == DistinctField::Cvs && longest.is_none_or(|(w, _)| rule.window_secs > w) {
                longest = Some((rule.window_secs, slot));
            }
            let me = (slot, rule.action_mask, rule.window_secs);
            // Greedy: join the first group of the same field that stays within
            // CLASS_SLOTS classes.
            let joined = members.iter_mut().enumerate().find_map(|(g, m)| {
                if fields[g] != field {
                    return None;
                }
                let mut with = m.clone();
                with.push(me);
                GroupPlan::build(&with).map(|_| {
                    m.push(me);
                    (g, m.len() - 1)
                })
            });
            place[slot] = Some(joined.unwrap_or_else(|| {
                members.push(vec![me]);
                fields.push(field);
                (members.len() - 1, 0)
            }));
        }
        let groups = members
            .iter()
            .map(|m| GroupPlan::build(m).expect("every group was built within CLASS_SLOTS"))
            .collect();
        KindPlan {
            groups,
            fields,
            place,
            longest: longest.map(|(_, slot)| slot),
        }
    }
}

/// Per rule of a group: its value and where its cursor is in each class queue. Kept
/// by the caller beside the group, not in it (the engine keeps them in rows of a table,
/// so reaching them does not wait for the group to be read first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleProgress {
    /// Distinct CVs counted (at most the number of CV handles, a `u32`).
    count: u32,
    /// Queue positions counted from the queue's first entry ever (see
    /// `GroupState::heads`), wrapping: only differences between positions are used,
    /// and a queue is far shorter than 2^32 entries.
    cursor: [u32; CLASS_SLOTS],
}

impl RuleProgress {
    pub fn value(&self) -> u64 {
        u64::from(self.count)
    }
}

/// The shared state of one group for one key; its rules' progress is the caller's (one
/// `RuleProgress` per rule of the plan, in order).
#[derive(Debug, Default)]
pub struct GroupState {
    table: CvMap<CvEntry>,
    /// Per class: (stamp, cv) of accesses that moved a CV's latest access, by stamp.
    queues: [ChunkedDeque<(Stamp, CvRef)>; CLASS_SLOTS],
    /// Per class: the position of the queue's front (wrapping, like the cursors).
    heads: [u32; CLASS_SLOTS],
    /// No advance to a second whose stamp is below this can change anything: it is at
    /// or before the time the access at any cursor or queue front leaves its window. An
    /// advance with nothing due returns at once, without reading the queue entries at
    /// the cursors and fronts, each of which can be a cache miss of its own. 0 (as
    /// built) makes the next advance look, and set it.
    due: Stamp,
}

/// The stamp at which an access stamped `s` leaves a window of `window` seconds: the
/// first `now` with `s <= stamp(now - window)` has `stamp(now) == s + window`.
fn leaves_at(s: Stamp, window: i64) -> Stamp {
    s.saturating_add(window.clamp(0, Stamp::MAX as i64) as Stamp)
}

/// One access to a CV: when, by which action (and its class), seeing what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub class: usize,
    pub sec: i64,
    pub visibility: Visibility,
    pub action: u8,
}

/// What an access did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The CV was new to the table: the caller retains one reference to it.
    New,
    Known,
    /// Too old for every window of its class: ignored.
    Ignored,
}

impl GroupState {
    /// The starting progress of the plan's rules.
    pub fn new_progress(plan: &GroupPlan) -> impl Iterator<Item = RuleProgress> + '_ {
        plan.rules.iter().map(|_| RuleProgress::default())
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Bytes allocated for the CV table and the queues: (table, queues).
    pub fn heap_bytes(&self) -> (usize, usize) {
        (
            self.table.heap_bytes(),
            self.queues.iter().map(ChunkedDeque::heap_bytes).sum(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Moves every rule's window to end at second `now`; CVs no rule counts any more are
    /// removed and handed to `released`.
    pub fn advance(&mut self, plan: &GroupPlan, rules: &mut [RuleProgress], now: i64, mut released: impl FnMut(CvRef)) {
        if stamp(now) < self.due {
            return;
        }
        for (progress, rule) in rules.iter_mut().zip(&plan.rules) {
            if rule.front {
                continue;
            }
            let cutoff = stamp(now - rule.window_secs);
            for c in 0..CLASS_SLOTS {
                if rule.classes & (1 << c) == 0 {
                    continue;
                }
                let queue = &self.queues[c];
                loop {
                    let at = progress.cursor[c].wrapping_sub(self.heads[c]) as usize;
                    let Some(&(s, cv)) = queue.get(at) else { break };
                    if s > cutoff {
                        break;
                    }
                    progress.cursor[c] = progress.cursor[c].wrapping_add(1);
                    if let Some(e) = self.table.get(cv) {
                        if e.last[c] == s && e.owner(rule.classes) == c {
                            progress.count -= 1;
                        }
                    }
                }
            }
        }
        for c in plan.classes() {
            let cutoff = stamp(now - plan.retention[c]);
            while let Some(&(s, cv)) = self.queues[c].front() {
                if s > cutoff {
                    break;
                }
                self.queues[c].pop_front();
                self.heads[c] = self.heads[c].wrapping_add(1);
                let dead = self.table.update_or_remove(cv, |e| {
                    if e.last[c] != s {
                        // A later access of this class moved the CV further back.
                        return false;
                    }
                    e.last[c] = NEVER;
                    // A front rule loses the CV when the last of its classes lets it go:
                    // all of them share the rule's window, so they are dropped in the
                    // same advance, whatever order the classes come in.
                    for (progress, rule) in rules.iter_mut().zip(&plan.rules) {
                        if rule.front && rule.classes & (1 << c) != 0 && e.latest(rule.classes) == NEVER {
                            progress.count -= 1;
                        }
                    }
                    e.is_dead()
                });
                if dead {
                    released(cv);
                }
            }
        }
        self.due = self.next_due(plan, rules);
    }

    /// When the next access at a cursor or a front leaves its window (`Stamp::MAX`
    /// when the queues are empty).
    fn next_due(&self, plan: &GroupPlan, rules: &[RuleProgress]) -> Stamp {
        let mut due = Stamp::MAX;
        for (progress, rule) in rules.iter().zip(&plan.rules) {
            if rule.front {
                continue;
            }
            for c in (0..CLASS_SLOTS).filter(|c| rule.classes & (1 << c) != 0) {
                let at = progress.cursor[c].wrapping_sub(self.heads[c]) as usize;
                if let Some(&(s, _)) = self.queues[c].get(at) {
                    due = due.min(leaves_at(s, rule.window_secs));
                }
            }
        }
        for c in plan.classes() {
            if let Some(&(s, _)) = self.queues[c].front() {
                due = due.min(leaves_at(s, plan.retention[c]));
            }
        }
        due
    }

    /// Records `access` to `cv`, with the group advanced to `now` first.
    pub fn add(&mut self, plan: &GroupPlan, rules: &mut [RuleProgress], now: i64, access: Access, cv: CvRef) -> Added {
        let Access {
            class,
            sec,
            visibility,
            action,
        } = access;
        let s = stamp(sec);
        if s <= stamp(now - plan.retention[class]) {
            return Added::Ignored;
        }
        let (entry, new) = self.table.entry_or_insert(
            cv,
            CvEntry {
                first: s,
                last: [NEVER; CLASS_SLOTS],
                first_action: action,
                visibility,
            },
        );
        for (progress, rule) in rules.iter_mut().zip(&plan.rules) {
            if rule.classes & (1 << class) == 0 {
                continue;
            }
            let cutoff = stamp(now - rule.window_secs);
            if s > cutoff && entry.latest(rule.classes) <= cutoff {
                progress.count += 1;
            }
        }
        if visibility > entry.visibility {
            entry.visibility = visibility;
        }
        if s < entry.first {
            entry.first = s;
            entry.first_action = action;
        }
        if s > entry.last[class] {
            entry.last[class] = s;
            self.push(plan, rules, now, class, s, cv);
        }
        if new {
            Added::New
        } else {
            Added::Known
        }
    }

    fn push(&mut self, plan: &GroupPlan, rules: &mut [RuleProgress], now: i64, class: usize, s: Stamp, cv: CvRef) {
        // The new access may come to sit at a cursor or a front: no rule of its class
        // lets it go sooner than the shortest of their windows.
        self.due = self.due.min(leaves_at(s, plan.shortest[class]));
        let queue = &mut self.queues[class];
        if queue.back().is_none_or(|(last, _)| *last <= s) {
            queue.push_back((s, cv));
        } else {
            // A late access (within the allowed lateness): keep the queue ordered.
            let at = queue.partition_point(|(t, _)| *t <= s);
            queue.insert(at, (s, cv));
        }
        // An access already outside some rules' windows (late by more than the shortest
        // window of its class) lands before their cursors, which move past it: they did
        // not count it. That holds at the back too, when it is the newest access of its
        // class (a key's first, say): left at the cursor, the next advance would take it
        // out of a count it never entered, and the u32 count wrapped below zero.
        if s <= stamp(now - plan.shortest[class]) {
            for (progress, rule) in rules.iter_mut().zip(&plan.rules) {
                if rule.classes & (1 << class) != 0 && s <= stamp(now - rule.window_secs) {
                    progress.cursor[class] = progress.cursor[class].wrapping_add(1);
                }
            }
        }
    }

    /// Drops every CV, handing each to `released`. The rules' progress is the caller's to
    /// reset (`new_progress`).
    pub fn clear(&mut self, mut released: impl FnMut(CvRef)) {
        for (cv, _) in self.table.iter() {
            released(cv);
        }
        *self = GroupState::default();
    }

    /// The CVs `rule` counts as of second `now`, with what the key knows of them. Reads
    /// only: correct whether or not the group was advanced to `now`.
    pub fn members<'s>(
        &'s self,
        plan: &'s GroupPlan,
        rule: usize,
        now: i64,
    ) -> impl Iterator<Item = (CvRef, &'s CvEntry)> + 's {
        let classes = plan.rules[rule].classes;
        let cutoff = stamp(now - plan.rules[rule].window_secs);
        self.table.iter().filter(move |(_, e)| e.latest(classes) > cutoff)
    }

    /// Every entry, in no particular order: what a snapshot keeps.
    pub fn entries(&self) -> impl Iterator<Item = (CvRef, &CvEntry)> + '_ {
        self.table.iter()
    }

    /// Rebuilds the queues, cursors and values from entries (a snapshot, or the state
    /// of other rules after a reload), as of second `now`: the group and its rules'
    /// progress. The caller has retained one reference per entry.
    pub fn rebuild(
        plan: &GroupPlan,
        entries: impl IntoIterator<Item = (CvRef, CvEntry)>,
        now: i64,
    ) -> (GroupState, Vec<RuleProgress>) {
        let mut state = GroupState::default();
        let mut rules: Vec<RuleProgress> = GroupState::new_progress(plan).collect();
        for (cv, entry) in entries {
            if entry.is_dead() {
                continue;
            }
            state.table.entry_or_insert(cv, entry);
        }
        let mut queues: [Vec<(Stamp, CvRef)>; CLASS_SLOTS] = Default::default();
        for (cv, e) in state.table.iter() {
            for (c, q) in queues.iter_mut().enumerate() {
                if e.last[c] != NEVER {
                    q.push((e.last[c], cv));
                }
            }
        }
        for (c, mut q) in queues.into_iter().enumerate() {
            q.sort_unstable();
            state.queues[c] = q.into();
        }
        for (r, (progress, rule)) in rules.iter_mut().zip(&plan.rules).enumerate() {
            if rule.front {
                // A front rule lets a CV go when the queue fronts drop its last access,
                // and they hold every access kept here, including those already outside
                // the window as of `now` (a key quiet since then was not advanced): so it
                // counts every CV until the next advance drops them, as the live group
                // does. Counting only those inside the window as of `now` made that
                // advance subtract past zero (issue #13).
                progress.count = state
                    .table
                    .iter()
                    .filter(|(_, e)| e.latest(rule.classes) != NEVER)
                    .count() as u32;
                continue;
            }
            let cutoff = stamp(now - rule.window_secs);
            for c in 0..CLASS_SLOTS {
                progress.cursor[c] = state.queues[c].partition_point(|(t, _)| *t <= cutoff) as u32;
            }
            progress.count = state.members(plan, r, now).count() as u32;
        }
        (state, rules)
    }

    /// Checks that the rules' progress agrees with the queues and the table it
    /// summarises, as it must at any time between two operations (live, rebuilt or
    /// restored): every queue sorted, every latest access of a CV queued once and every
    /// queued access belonging to a CV held; each cursor between its queue's front and
    /// back and never between two accesses of the same second; each rule's count the
    /// number of CVs whose latest access it has not yet passed (a front rule: still
    /// queued); no advance skipped that has work to do. Reads only; takes time and a
    /// little memory in proportion to the group.
    pub fn check(&self, plan: &GroupPlan, rules: &[RuleProgress]) -> Result<(), GroupMismatch> {
        let whole = |detail: String| GroupMismatch { rule: None, detail };
        if rules.len() != plan.rules.len() {
            return Err(whole(format!(
                "{} rules' progress for {} rules",
                rules.len(),
                plan.rules.len()
            )));
        }
        for (cv, e) in self.table.iter() {
            if e.is_dead() {
                return Err(whole(format!("CV #{cv} is held with no access")));
            }
            if let Some(c) = (0..CLASS_SLOTS).find(|c| plan.class_actions[*c] == 0 && e.last[*c] != NEVER) {
                return Err(whole(format!(
                    "CV #{cv} has an access of class {c}, which no rule counts"
                )));
            }
        }
        for c in 0..CLASS_SLOTS {
            let queue = &self.queues[c];
            let mut latest = rustc_hash::FxHashSet::default();
            let mut previous = NEVER;
            for i in 0..queue.len() {
                let &(s, cv) = queue.get(i).expect("in range");
                if s == NEVER || s < previous {
                    return Err(whole(format!("queue {c} is out of order at entry {i}")));
                }
                previous = s;
                match self.table.get(cv) {
                    Some(e) if e.last[c] == s => {
                        if !latest.insert(cv) {
                            return Err(whole(format!("queue {c} holds the latest access of CV #{cv} twice")));
                        }
                    }
                    Some(e) if e.last[c] > s => {}
                    _ => {
                        return Err(whole(format!(
                            "queue {c} holds an access to CV #{cv} at stamp {s} that its table entry does not"
                        )))
                    }
                }
            }
            let held = self.table.iter().filter(|(_, e)| e.last[c] != NEVER).count();
            if held != latest.len() {
                return Err(whole(format!(
                    "{held} CVs have an access of class {c}, queue {c} holds {}",
                    latest.len()
                )));
            }
        }
        for (r, (progress, rule)) in rules.iter().zip(&plan.rules).enumerate() {
            let mismatch = |detail: String| GroupMismatch { rule: Some(r), detail };
            // Per class: the stamp of the last access the rule's cursor has passed.
            let mut passed = [NEVER; CLASS_SLOTS];
            if !rule.front {
                for c in (0..CLASS_SLOTS).filter(|c| rule.classes & (1 << c) != 0) {
                    let queue = &self.queues[c];
                    let at = progress.cursor[c].wrapping_sub(self.heads[c]) as usize;
                    if at > queue.len() {
                        return Err(mismatch(format!(
                            "cursor {c} at position {} is outside its queue (front at {}, {} entries)",
                            progress.cursor[c],
                            self.heads[c],
                            queue.len()
                        )));
                    }
                    if at > 0 {
                        passed[c] = queue.get(at - 1).expect("in range").0;
                        if queue.get(at).is_some_and(|(s, _)| *s == passed[c]) {
                            return Err(mismatch(format!(
                                "cursor {c} stops between two accesses at stamp {}",
                                passed[c]
                            )));
                        }
                    }
                }
            }
            let counted = self
                .table
                .iter()
                .filter(|(_, e)| {
                    let latest = e.latest(rule.classes);
                    latest != NEVER && latest > passed[e.owner(rule.classes)]
                })
                .count();
            if counted != progress.count as usize {
                return Err(mismatch(format!(
                    "counts {} CVs, its queues and table hold {counted}",
                    progress.count
                )));
            }
        }
        let due = self.next_due(plan, rules);
        if self.due > due {
            return Err(whole(format!(
                "advances wait for stamp {}, an access leaves a window at {due}",
                self.due
            )));
        }
        Ok(())
    }
}

/// What `GroupState::check` found wrong: in which rule of the group (`None`: the group's
/// shared table or queues), and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMismatch {
    pub rule: Option<usize>,
    pub detail: String,
}

#[cfg(test)]
mod tests;
