use proptest::prelude::*;

use super::*;

fn baseline(history: u32, statistic: Statistic, factor: f64, min: u32) -> Baseline {
    Baseline::compile(&BaselineSpec {
        history: format!("{history}d"),
        statistic,
        factor,
        min_history: format!("{min}d"),
    })
    .expect("a valid baseline")
}

/// The nearest-rank percentile as the docs state it, the slow way.
fn nearest_rank(values: &[u64], p: f64) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = (p / 100.0 * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank - 1]
}

#[test]
fn percentiles_are_nearest_rank() {
    // Sorted: 1 2 3 5 7 8 9. p90: ceil(6.3) = 7th; p95, p99: 7th; median: ceil(3.5) = 4th.
    let values = [5, 1, 9, 3, 7, 2, 8];
    let of = |s: Statistic| s.of(&mut values.to_vec());
    assert_eq!(of(Statistic::P90), 9.0);
    assert_eq!(of(Statistic::Median), 5.0);
    assert_eq!(of(Statistic::Max), 9.0);
    assert_eq!(of(Statistic::Mean), 35.0 / 7.0);
    // 1..=10: p90 is the 9th, not an interpolation between the 9th and the 10th.
    let ten: Vec<u64> = (1..=10).collect();
    assert_eq!(Statistic::P90.of(&mut ten.clone()), 9.0);
    assert_eq!(Statistic::P95.of(&mut ten.clone()), 10.0);
    assert_eq!(Statistic::Median.of(&mut ten.clone()), 5.0);
    // One value is every percentile.
    assert_eq!(Statistic::P99.of(&mut [4]), 4.0);
}

proptest! {
    #[test]
    fn statistics_match_their_definitions(values in prop::collection::vec(0u64..1000, 1..60)) {
        for (s, p) in [(Statistic::Median, 50.0), (Statistic::P90, 90.0), (Statistic::P95, 95.0), (Statistic::P99, 99.0)] {
            prop_assert_eq!(s.of(&mut values.clone()), nearest_rank(&values, p) as f64, "{}", s);
        }
        prop_assert_eq!(Statistic::Max.of(&mut values.clone()), *values.iter().max().unwrap() as f64);
        let mean = values.iter().sum::<u64>() as f64 / values.len() as f64;
        prop_assert_eq!(Statistic::Mean.of(&mut values.clone()), mean);
    }
}

#[test]
fn the_term_is_factor_times_the_statistic_rounded_up() {
    let b = baseline(28, Statistic::P90, 8.0, 7);
    assert_eq!(b.term(15.0), 120);
    let b = baseline(28, Statistic::Mean, 2.5, 7);
    assert_eq!(b.term(3.0), 8, "7.5 is reached by 8, not by 7");
    assert_eq!(b.term(0.0), 0);
}

#[test]
fn a_spec_names_each_bad_key() {
    let bad = |history: &str, min: &str, factor: f64| {
        Baseline::compile(&BaselineSpec {
            history: history.into(),
            statistic: Statistic::P90,
            factor,
            min_history: min.into(),
        })
        .unwrap_err()
        .into_iter()
        .map(|(key, _)| key)
        .collect::<Vec<_>>()
    };
    assert_eq!(bad("36h", "1d", 8.0), ["history"], "not whole days");
    assert_eq!(bad("400d", "7d", 8.0), ["history"], "beyond a year");
    assert_eq!(bad("7d", "8d", 8.0), ["min_history"], "longer than the history");
    assert_eq!(bad("7d", "0d", 8.0), ["min_history"]);
    assert_eq!(bad("28d", "7d", 0.0), ["factor"]);
    assert_eq!(bad("28d", "7d", f64::NAN), ["factor"]);
    assert_eq!(bad("soon", "7d", -1.0), ["history", "factor"], "every problem at once");
}

const D: i32 = 20_000;

/// Counts `n` for `key` on `day`, the engine being on `now`.
fn count(t: &mut HistoryTable, names: &mut Interner, key: &str, day: i32, now: i32, n: u64) {
    t.count(key, day, now, Amount::Count(n), usize::MAX, names).unwrap();
}

#[test]
fn history_runs_from_the_first_day_and_quiet_days_count_zero() {
    let mut names = Interner::default();
    let b = baseline(5, Statistic::Max, 1.0, 1);
    let mut t = HistoryTable::new(b);
    count(&mut t, &mut names, "a", D, D, 10);
    count(&mut t, &mut names, "a", D + 2, D + 2, 30);
    let h = t.keys.get("a").unwrap();
    // On D+3: the days D, D+1 (nothing), D+2; nothing before the first day.
    let j = h.judgement(&b, D + 3);
    assert_eq!((j.first_day, j.from_day, j.daily.clone()), (D, D, vec![10, 0, 30]));
    // On D+7: the last five days only, D+2 .. D+6.
    let j = h.judgement(&b, D + 7);
    assert_eq!((j.from_day, j.daily.clone()), (D + 2, vec![30, 0, 0, 0, 0]));
    assert_eq!(j.term, Some((30, 30.0)));
}

#[test]
fn a_key_is_judged_once_min_history_whole_days_have_passed() {
    let mut names = Interner::default();
    let b = baseline(28, Statistic::P90, 2.0, 7);
    let mut t = HistoryTable::new(b);
    count(&mut t, &mut names, "a", D, D, 10);
    let h = t.keys.get_mut("a").unwrap();
    assert_eq!(h.term(&b, D + 6), None, "six days: not judged");
    assert_eq!(
        h.term(&b, D + 7),
        Some((20, 10.0)),
        "seven: judged on [10, 0 x 6]'s p90"
    );
}

#[test]
fn a_key_idle_longer_than_its_history_is_new_again() {
    let mut names = Interner::default();
    let b = baseline(3, Statistic::Max, 1.0, 1);
    let mut t = HistoryTable::new(b);
    count(&mut t, &mut names, "a", D, D, 10);
    // Idle exactly as long as the history: D is still in D+3's history.
    count(&mut t, &mut names, "a", D + 3, D + 3, 1);
    assert_eq!(t.keys["a"].first_day, D);
    assert_eq!(t.keys["a"].judgement(&b, D + 3).daily, vec![10, 0, 0]);
    // Idle longer: forgotten, its first day is today's.
    count(&mut t, &mut names, "a", D + 7, D + 7, 2);
    let h = t.keys.get_mut("a").unwrap();
    assert_eq!((h.first_day, h.value(D + 3)), (D + 7, 0));
    assert_eq!(h.term(&b, D + 7), None, "new again: not judged");
    // The sweep frees such keys without waiting for an event.
    count(&mut t, &mut names, "b", D + 7, D + 7, 1);
    t.sweep(D + 11, &mut names);
    assert!(t.keys.is_empty());
}

#[test]
fn a_distinct_value_counts_once_a_day_and_its_reference_goes_when_the_day_closes() {
    let mut names = Interner::default();
    let b = baseline(7, Statistic::Max, 1.0, 1);
    let mut t = HistoryTable::new(b);
    let ip1 = names.intern_retained("10.0.0.1");
    let ip2 = names.intern_retained("10.0.0.2");
    for (day, ips) in [(D, vec![ip1]), (D, vec![ip1, ip2]), (D + 1, vec![ip1])] {
        t.count("a", day, day, Amount::Distinct(&ips), usize::MAX, &mut names)
            .unwrap();
    }
    let h = &t.keys["a"];
    assert_eq!((h.value(D), h.value(D + 1)), (2, 1));
    // Our reference, one per open day holding the value.
    names.release(ip1);
    names.release(ip2);
    assert_eq!(names.len(), 2);
    t.sweep(D + 1, &mut names);
    assert_eq!(names.len(), 1, "day D closed: 10.0.0.2 is no longer held");
    t.sweep(D + 2, &mut names);
    assert!(names.is_empty());
    assert_eq!(t.keys["a"].value(D), 2, "the daily values stay");
}

#[test]
fn a_late_event_of_yesterday_changes_today_s_judgement() {
    let mut names = Interner::default();
    let b = baseline(7, Statistic::Max, 1.0, 1);
    let mut t = HistoryTable::new(b);
    count(&mut t, &mut names, "a", D, D, 5);
    let term = |t: &mut HistoryTable| t.keys.get_mut("a").unwrap().term(&b, D + 1);
    assert_eq!(term(&mut t), Some((5, 5.0)));
    count(&mut t, &mut names, "a", D, D + 1, 5);
    assert_eq!(term(&mut t), Some((10, 10.0)));
}

#[test]
fn a_full_table_refuses_new_keys_and_keeps_counting_known_ones() {
    let mut names = Interner::default();
    let mut t = HistoryTable::new(baseline(7, Statistic::Max, 1.0, 1));
    t.count("a", D, D, Amount::Count(1), 1, &mut names).unwrap();
    assert!(t.count("b", D, D, Amount::Count(1), 1, &mut names).is_err());
    t.count("a", D, D, Amount::Count(1), 1, &mut names).unwrap();
    assert_eq!(t.keys["a"].value(D), 2);
}

#[test]
fn a_snapshot_restores_the_same_history_and_refuses_one_that_disagrees() {
    let mut names = Interner::default();
    let b = baseline(5, Statistic::P90, 3.0, 2);
    let mut t = HistoryTable::new(b);
    let cv = names.intern_retained("cv-1");
    count(&mut t, &mut names, "a", D, D, 4);
    t.count("a", D + 3, D + 3, Amount::Distinct(&[cv]), usize::MAX, &mut names)
        .unwrap();
    names.release(cv);
    let snap = t.snapshot(&names);
    let mut back = HistoryTable::new(b);
    let mut names2 = Interner::default();
    for (key, parts) in &snap {
        back.restore_key(key, parts, true, &mut names2).unwrap();
    }
    assert_eq!(back.snapshot(&names2), snap);
    assert_eq!(back.keys["a"].judgement(&b, D + 4), t.keys["a"].judgement(&b, D + 4));

    let (key, (first, newest, days, open)) = snap[0].clone();
    let restore =
        |parts: HistorySnapshotParts| HistoryTable::new(b).restore_key(&key, &parts, true, &mut Interner::default());
    assert!(
        restore((newest + 1, newest, days.clone(), open.clone())).is_err(),
        "first day after newest"
    );
    assert!(
        restore((first, newest, vec![(newest - 9, 1)], vec![])).is_err(),
        "a day outside the ring"
    );
    let two = vec![(D + 3, vec!["cv-1".to_string(), "cv-2".to_string()])];
    assert!(
        restore((first, newest, days.clone(), two)).is_err(),
        "more values than the day counted"
    );
}

#[test]
fn a_longer_history_after_a_reload_keeps_the_days_it_had() {
    let mut names = Interner::default();
    let b = baseline(3, Statistic::Max, 1.0, 1);
    let mut t = HistoryTable::new(b);
    count(&mut t, &mut names, "a", D, D, 7);
    count(&mut t, &mut names, "a", D + 2, D + 2, 3);
    let longer = baseline(10, Statistic::Max, 1.0, 1);
    let t = t.resized(longer);
    assert_eq!(
        t.keys["a"].judgement(&longer, D + 9).daily,
        vec![7, 0, 3, 0, 0, 0, 0, 0, 0]
    );
    let shorter = baseline(1, Statistic::Max, 1.0, 1);
    let t = t.resized(shorter);
    assert_eq!(t.keys["a"].judgement(&shorter, D + 3).daily, vec![3]);
}

#[test]
fn a_decimal_factor_gives_the_threshold_an_analyst_works_out() {
    // 1.1 x 50 is 55.000000000000007 in binary floating point.
    let b = baseline(28, Statistic::Max, 1.1, 1);
    assert_eq!(b.term(50.0), 55);
    assert_eq!(b.term(50.5), 56, "55.55 still rounds up");
}

#[test]
fn an_event_that_counts_nothing_starts_no_history() {
    let mut names = Interner::default();
    let mut t = HistoryTable::new(baseline(7, Statistic::Max, 1.0, 1));
    assert!(t
        .count("a", D, D, Amount::Distinct(&[]), usize::MAX, &mut names)
        .is_err());
    assert!(t.keys.is_empty());
    count(&mut t, &mut names, "a", D + 1, D + 1, 3);
    assert_eq!(t.keys["a"].first_day, D + 1);
}

#[test]
fn a_history_made_longer_starts_at_the_oldest_day_it_kept() {
    let mut names = Interner::default();
    let short = baseline(3, Statistic::Mean, 1.0, 1);
    let mut t = HistoryTable::new(short);
    for d in 0..10 {
        count(&mut t, &mut names, "a", D + d, D + d, 10);
    }
    let long = baseline(28, Statistic::Mean, 1.0, 1);
    let t = t.resized(long);
    let j = t.keys["a"].judgement(&long, D + 10);
    assert_eq!(
        j.daily,
        vec![10; 4],
        "the days the 3-day ring had let go of are not zeros"
    );
    assert_eq!(j.term, Some((10, 10.0)));
}
