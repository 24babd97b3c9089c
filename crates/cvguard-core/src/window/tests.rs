use super::*;

#[test]
fn count_window_boundaries_are_exclusive_of_the_cutoff() {
    let mut w = CountWindow::default();
    w.add(100, 1);
    w.add(101, 2);
    w.add(101, 3);
    assert_eq!(w.value(), 6);
    // Window of 10s at now = 110: cutoff 100, so second 100 is out, 101 is in.
    w.expire(110 - 10);
    assert_eq!(w.value(), 5);
    assert_eq!(w.oldest(), Some(101));
    w.expire(111 - 10);
    assert_eq!(w.value(), 0);
    assert!(w.is_empty());
}

#[test]
fn count_window_keeps_out_of_order_buckets_sorted() {
    let mut w = CountWindow::default();
    w.add(10, 1);
    w.add(20, 1);
    w.add(15, 1);
    w.add(10, 1);
    assert_eq!(w.value(), 4);
    w.expire(14);
    assert_eq!(w.value(), 2, "both at second 10 went, 15 and 20 stay");
    assert_eq!(w.oldest(), Some(15));
}

#[test]
fn distinct_window_counts_each_cv_once_and_extends_on_reaccess() {
    let mut w = DistinctWindow::default();
    assert!(w.add(10, 1, Visibility::Anonymous, 0));
    assert!(!w.add(12, 1, Visibility::Named, 1));
    assert!(w.add(11, 2, Visibility::Unknown, 0));
    assert_eq!(w.value(), 2);
    assert_eq!(w.by_visibility(), [1, 0, 1]);
    let mut released = Vec::new();
    w.expire(10, |cv| released.push(cv));
    assert_eq!(w.value(), 2, "cv 1 was seen again at 12");
    assert!(released.is_empty());
    w.expire(11, |cv| released.push(cv));
    assert_eq!(released, vec![2]);
    assert_eq!(w.value(), 1);
    let (_, access) = w.accesses().next().unwrap();
    assert_eq!((access.first_sec, access.last_sec, access.first_action), (10, 12, 0));
    assert_eq!(access.visibility, Visibility::Named);
    w.expire(12, |cv| released.push(cv));
    assert_eq!(released, vec![2, 1]);
    assert!(w.is_empty());
    assert_eq!(w.by_visibility(), [0, 0, 0]);
}

#[test]
fn distinct_window_handles_out_of_order_access() {
    let mut w = DistinctWindow::default();
    w.add(20, 1, Visibility::Unknown, 0);
    w.add(15, 2, Visibility::Unknown, 0);
    w.add(18, 1, Visibility::Unknown, 2);
    let mut released = Vec::new();
    w.expire(16, |cv| released.push(cv));
    assert_eq!(released, vec![2]);
    let (_, a) = w.accesses().next().unwrap();
    assert_eq!((a.first_sec, a.last_sec, a.first_action), (18, 20, 2));
    assert_eq!(w.oldest(), Some(18));
}

#[test]
fn distinct_window_clear_releases_everything() {
    let mut w = DistinctWindow::default();
    for cv in 0..5 {
        w.add(cv as i64, cv, Visibility::Unknown, 0);
    }
    let mut released = Vec::new();
    w.clear(|cv| released.push(cv));
    released.sort_unstable();
    assert_eq!(released, vec![0, 1, 2, 3, 4]);
    assert_eq!(w.value(), 0);
}
