use super::*;

/// A deterministic stream of (now, sec, action, cv): time mostly moves forward, some
/// accesses are late, CVs repeat.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Three rules over two actions (0 = view, 1 = download), as the shipped account
/// rules: views and downloads in 100 s, downloads in 20 s, both in 200 s.
fn plan() -> GroupPlan {
    GroupPlan::build(&[(0, 0b11, 100), (1, 0b10, 20), (2, 0b11, 200)]).unwrap()
}

/// Brute force: the distinct CVs accessed by the rule's actions inside its window.
fn expected(accesses: &[(i64, u8, CvRef)], mask: u64, window: i64, now: i64) -> u64 {
    let mut cvs: Vec<CvRef> = accesses
        .iter()
        .filter(|(s, a, _)| mask & (1 << a) != 0 && *s > now - window)
        .map(|(_, _, cv)| *cv)
        .collect();
    cvs.sort_unstable();
    cvs.dedup();
    cvs.len() as u64
}

#[test]
fn actions_counted_by_the_same_rules_share_a_class() {
    let p = plan();
    assert_eq!(p.class_of(0), Some(0));
    assert_eq!(p.class_of(1), Some(1));
    assert_eq!(p.class_of(2), None);
    assert_eq!(p.rules[0].classes, 0b11);
    assert_eq!(p.rules[1].classes, 0b10);
    assert_eq!(p.retention, [200, 200]);
    // The longest rule leaves with the queue fronts; the others walk cursors.
    assert_eq!(
        p.rules.iter().map(|r| r.front).collect::<Vec<_>>(),
        vec![false, false, true]
    );
    // Three actions: classes by the rules that count them; two of three share one.
    let shared = GroupPlan::build(&[(0, 0b011, 10), (1, 0b111, 10)]).unwrap();
    assert_eq!(
        (shared.class_of(0), shared.class_of(1), shared.class_of(2)),
        (Some(0), Some(0), Some(1))
    );
    // Three different signatures do not fit in one group.
    assert!(GroupPlan::build(&[(0, 0b001, 10), (1, 0b011, 10), (2, 0b111, 10)]).is_none());
}

#[test]
fn incremental_values_match_a_brute_force_count_with_late_and_repeated_accesses() {
    for seed in [7, 8, 9] {
        // One class per action (the shipped account rules).
        check(&[(0b11, 100), (0b10, 20), (0b11, 200)], 2, seed);
        // Three actions, two of which share a class; two rules leave with the fronts.
        check(&[(0b011, 100), (0b111, 30), (0b100, 60)], 3, seed);
        // One rule (an org or ip key).
        check(&[(0b11, 50)], 2, seed);
    }
}

fn check(windows: &[(u64, i64)], actions: u64, seed: u64) {
    let members: Vec<(usize, u64, i64)> = windows.iter().enumerate().map(|(i, (m, w))| (i, *m, *w)).collect();
    let p = GroupPlan::build(&members).unwrap();
    let longest = windows.iter().map(|(_, w)| *w).max().unwrap();
    let mut g = GroupState::default();
    let mut progress: Vec<RuleProgress> = GroupState::new_progress(&p).collect();
    // Queue positions start just short of where a u32 wraps, so the run crosses it.
    let start = u32::MAX - 500;
    g.heads = [start; CLASS_SLOTS];
    for rule in &mut progress {
        rule.cursor = [start; CLASS_SLOTS];
    }
    let mut rng = Stream(seed);
    let mut accesses: Vec<(i64, u8, CvRef)> = Vec::new();
    let mut live_refs: i64 = 0;
    let mut now = 1_000i64;
    for step in 0..20_000 {
        now += (rng.next() % 3) as i64;
        // Up to 15 s late, as the watermark allows.
        let sec = now
            - (if rng.next().is_multiple_of(10) {
                (rng.next() % 15) as i64
            } else {
                0
            });
        let action = (rng.next() % actions) as u8;
        let cv = (rng.next() % 300) as CvRef;
        g.advance(&p, &mut progress, now, |_| live_refs -= 1);
        let access = Access {
            class: p.class_of(action).unwrap(),
            sec,
            visibility: Visibility::Named,
            action,
        };
        match g.add(&p, &mut progress, now, access, cv) {
            Added::New => live_refs += 1,
            Added::Known => {}
            Added::Ignored => continue,
        }
        accesses.push((sec, action, cv));
        if step % 97 == 0 {
            for (r, &(mask, window)) in windows.iter().enumerate() {
                let want = expected(&accesses, mask, window, now);
                assert_eq!(progress[r].value(), want, "rule {r} at step {step}");
                assert_eq!(g.members(&p, r, now).count() as u64, want, "members of rule {r}");
            }
            // The table holds exactly the CVs some window still counts.
            let held: Vec<CvRef> = {
                let mut v: Vec<CvRef> = accesses
                    .iter()
                    .filter(|(s, a, _)| {
                        windows
                            .iter()
                            .any(|(m, w)| m & (1 << a) != 0 && *s > now - p.retention[p.class_of(*a).unwrap()].max(*w))
                    })
                    .map(|(_, _, cv)| *cv)
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            assert_eq!(g.len(), held.len());
            assert_eq!(g.len() as i64, live_refs, "every freed CV was released");
            let (_, rebuilt) = GroupState::rebuild(&p, g.entries().map(|(cv, e)| (cv, *e)), now);
            for r in 0..windows.len() {
                assert_eq!(rebuilt[r].value(), progress[r].value(), "rebuilt rule {r}");
            }
        }
    }
    // Long after: everything leaves.
    assert!(
        g.heads.iter().any(|h| *h < start),
        "the queue positions wrapped: {:?}",
        g.heads
    );
    g.advance(&p, &mut progress, now + longest + 1, |_| live_refs -= 1);
    assert!(g.is_empty());
    assert_eq!(live_refs, 0);
    assert!(progress.iter().all(|r| r.value() == 0));
}

#[test]
fn first_access_and_visibility_are_kept_per_cv() {
    let p = plan();
    let mut g = GroupState::default();
    let mut progress: Vec<RuleProgress> = GroupState::new_progress(&p).collect();
    let rules = progress.as_mut_slice();
    g.advance(&p, rules, 10, |_| {});
    let at = |class, sec, visibility, action| Access {
        class,
        sec,
        visibility,
        action,
    };
    g.add(&p, rules, 10, at(0, 10, Visibility::Anonymous, 0), 5);
    g.advance(&p, rules, 12, |_| {});
    g.add(&p, rules, 12, at(1, 12, Visibility::Named, 1), 5);
    g.add(&p, rules, 12, at(0, 8, Visibility::Unknown, 0), 5);
    let (_, e) = g.entries().next().unwrap();
    assert_eq!(
        (unstamp(e.first), e.first_action, e.visibility),
        (8, 0, Visibility::Named)
    );
    assert_eq!(unstamp(e.last[0]), 10);
    assert_eq!(unstamp(e.last[1]), 12);
}
