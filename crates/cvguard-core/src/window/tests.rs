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
fn check_holds_through_adds_and_expiry_and_finds_a_running_sum_that_lies() {
    let mut w = CountWindow::from_buckets([(20, 2), (10, 1), (15, 4), (10, 1)]);
    assert_eq!(w.check(), Ok(()));
    w.add(12, 3);
    w.expire(11);
    assert_eq!(w.check(), Ok(()));
    w.total += 1;
    assert_eq!(w.check(), Err("running sum 10 for buckets that add up to 9".into()));
    w.total -= 1;
    w.buckets.push_back((20, 1));
    assert!(w.check().unwrap_err().contains("out of order"));
    w.buckets.pop_back();
    w.buckets.push_back((30, 0));
    assert!(w.check().unwrap_err().contains("empty"));
}
