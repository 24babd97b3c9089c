//! An incident's curve of distinct CVs over time in bounded memory: at most [`POINTS`]
//! points however long the harvest, so a backtest holds no CV id for it (a 148,000-CV
//! harvester's curve held every id it read: 190 MB over replay on the 8-day board).
//!
//! Before the decision the curve is the window's CVs by first access, known all at once
//! at the crossing, and thinned to half the budget there. After it, each point is the
//! engine's own count of the window's distinct CVs after an event on the key
//! (`IncidentUpdate::cvs_in_window`), and the points are thinned as they arrive: when
//! the second half is full, every other point of it goes and from then on only every
//! other arrival is kept, so the kept points stay evenly spread over the arrivals. The
//! newest arrival is always the last point, so the curve ends where the key ended.

/// Points an incident's curve keeps at most (the chart is 640 pixels wide).
pub const POINTS: usize = 256;

/// Of which, at most, before the decision (the decision's own point included).
const BEFORE: usize = POINTS / 2;

#[derive(Debug, Clone, Default)]
pub struct Curve {
    points: Vec<(i64, u64)>,
    /// Where the points after the decision begin; 0 until decided.
    after: usize,
    /// Keep one arrival in `stride` after the decision (doubles at each thinning).
    stride: u64,
    arrivals: u64,
    /// The last point is only the newest arrival, to be replaced by the next one.
    tail_provisional: bool,
}

impl Curve {
    pub fn is_decided(&self) -> bool {
        self.after > 0
    }

    /// The curve up to the decision: `firsts`, the first access (epoch ms) of each CV in
    /// the window at the crossing, in any order, then the decision's point.
    pub fn decide(&mut self, firsts: &mut [i64], decision: (i64, u64)) {
        firsts.sort_unstable();
        // The cumulative count at the last CV of each millisecond: where the steps are.
        let steps: Vec<usize> = (0..firsts.len())
            .filter(|&i| firsts.get(i + 1) != Some(&firsts[i]))
            .collect();
        let every = steps.len().div_ceil(BEFORE - 1).max(1);
        self.points.clear();
        for (n, &i) in steps.iter().enumerate() {
            // Every `every`-th step and the last one, the count before the decision.
            if n % every == 0 || n + 1 == steps.len() {
                self.points.push((firsts[i], i as u64 + 1));
            }
        }
        // CVs first read in the deciding event's own second share its point.
        if self.points.last().is_some_and(|p| p.0 >= decision.0) {
            self.points.pop();
        }
        self.points.push(decision);
        self.after = self.points.len();
        self.stride = 1;
        self.arrivals = 0;
        self.tail_provisional = false;
    }

    /// A point after the decision: the window's count after an event at `t`.
    pub fn push(&mut self, t: i64, count: u64) {
        let Some(&(last_t, _)) = self.points.last() else {
            return;
        };
        // A late but accepted event is drawn at the curve's present: a step curve only
        // moves forward.
        let t = t.max(last_t);
        if t == last_t && self.points.len() > self.after {
            if let Some(last) = self.points.last_mut() {
                last.1 = count;
            }
            return;
        }
        if self.tail_provisional {
            self.points.pop();
        }
        self.points.push((t, count));
        self.arrivals += 1;
        self.tail_provisional = !self.arrivals.is_multiple_of(self.stride);
        if self.points.len() - self.after > POINTS - BEFORE {
            self.thin();
        }
    }

    /// Every other point after the decision goes (the newest stays), and from now on
    /// every other arrival.
    fn thin(&mut self) {
        let (after, last) = (self.after, self.points.len() - 1);
        let mut i = 0;
        self.points.retain(|_| {
            let keep = i < after || i == last || (i - after) % 2 == 1;
            i += 1;
            keep
        });
        self.stride *= 2;
        self.tail_provisional = !self.arrivals.is_multiple_of(self.stride);
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    pub fn into_points(self) -> Vec<(i64, u64)> {
        self.points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_the_decision_the_window_by_first_access_within_half_the_budget() {
        let mut firsts: Vec<i64> = (0..10_000).rev().map(|i| i / 3 * 1000).collect();
        let mut c = Curve::default();
        c.decide(&mut firsts, (5_000_000, 10_000));
        let p = c.clone().into_points();
        assert!(p.len() <= BEFORE, "{}", p.len());
        assert_eq!(p[0], (0, 3), "three CVs first read in the first second");
        assert_eq!(p[p.len() - 2], (3_333_000, 10_000), "the last step counts them all");
        assert_eq!(p.last(), Some(&(5_000_000, 10_000)), "the decision");
        assert!(p.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn a_long_harvest_after_the_decision_stays_within_the_budget_and_ends_at_its_last_count() {
        let mut c = Curve::default();
        c.decide(&mut [0, 1000, 2000], (2000, 3));
        let mut sizes = Vec::new();
        for i in 0..100_000u64 {
            c.push(3000 + i as i64 * 1000, 4 + i);
            sizes.push(c.len());
        }
        assert!(sizes.iter().all(|&n| n <= POINTS), "{:?}", sizes.iter().max());
        let p = c.into_points();
        assert!(p.len() > POINTS / 3, "still a curve: {}", p.len());
        assert_eq!(
            &p[..3],
            &[(0, 1), (1000, 2), (2000, 3)],
            "before the decision untouched"
        );
        assert_eq!(p.last(), Some(&(3000 + 99_999 * 1000, 100_003)));
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        // Evenly spread over the arrivals: no gap of more than twice the typical one.
        let gaps: Vec<i64> = p[3..].windows(2).map(|w| w[1].0 - w[0].0).collect();
        let typical = gaps[gaps.len() / 2];
        assert!(gaps.iter().all(|&g| g <= 2 * typical), "{typical} {gaps:?}");
    }

    #[test]
    fn points_in_one_millisecond_step_once_and_late_ones_are_drawn_at_the_present() {
        let mut c = Curve::default();
        c.decide(&mut [1000, 1000], (1500, 2));
        c.push(2000, 3);
        c.push(2000, 5);
        c.push(1800, 6);
        assert_eq!(c.into_points(), vec![(1000, 2), (1500, 2), (2000, 6)]);
    }
}
