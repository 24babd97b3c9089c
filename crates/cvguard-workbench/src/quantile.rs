//! Quantiles as everywhere in cvguard (docs/DETECTION.md): nearest rank, element
//! `ceil(q x n)` of the sorted values, counting from 1 (q = 0 gives the smallest).

/// The nearest-rank `q`-quantile of `sorted` (ascending); `None` when empty.
pub fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nearest_rank_by_hand() {
        let v = [1u64, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        assert_eq!(nearest_rank(&v, 0.5), Some(5));
        assert_eq!(nearest_rank(&v, 0.9), Some(9));
        assert_eq!(nearest_rank(&v, 0.91), Some(10));
        assert_eq!(nearest_rank(&v, 1.0), Some(10));
        assert_eq!(nearest_rank(&v, 0.0), Some(1));
        assert_eq!(nearest_rank::<u64>(&[], 0.5), None);
    }

    proptest! {
        /// At least a share q of the values are at or below the quantile, and fewer than
        /// q are strictly below it: the definition of a nearest-rank quantile.
        #[test]
        fn the_quantile_splits_the_values_at_q(mut v in prop::collection::vec(0u64..1000, 1..200), q in 0.0f64..=1.0) {
            v.sort_unstable();
            let x = nearest_rank(&v, q).unwrap();
            let n = v.len() as f64;
            let at_or_below = v.iter().filter(|y| **y <= x).count() as f64;
            let below = v.iter().filter(|y| **y < x).count() as f64;
            prop_assert!(at_or_below >= (q * n).ceil().max(1.0) - 1e-9);
            prop_assert!(below < (q * n).ceil().max(1.0));
            prop_assert!(v.contains(&x));
        }
    }
}
