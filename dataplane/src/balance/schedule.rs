//! Smooth weighted round-robin as a precomputed schedule: nginx's
//! algorithm (each pick adds every weight to its endpoint's score, takes the
//! highest, and subtracts the total from it) run once when the table is
//! built. Picking is then one atomic increment shared by all workers: no
//! lock, and weights 5:1:1 interleave as `a a b a c a a` rather than in a
//! burst.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Longest schedule kept; larger weight sums are scaled down to fit
/// (keeping every non-zero weight at least 1).
pub(crate) const MAX_SCHEDULE: usize = 4096;

/// A round-robin schedule over endpoint indices.
#[derive(Debug)]
pub(crate) struct Schedule {
    order: Box<[u16]>,
    next: AtomicUsize,
}

impl Schedule {
    /// The schedule for these weights; `None` when every weight is 0.
    pub(crate) fn new(weights: &[u32]) -> Option<Self> {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if total == 0 || weights.len() > usize::from(u16::MAX) {
            return None;
        }
        let scaled: Vec<i64> = if total as usize > MAX_SCHEDULE {
            weights
                .iter()
                .map(|&w| {
                    let share = u64::from(w) * MAX_SCHEDULE as u64 / total;
                    i64::try_from(share.max(u64::from(w > 0))).unwrap_or(i64::MAX)
                })
                .collect()
        } else {
            weights.iter().map(|&w| i64::from(w)).collect()
        };
        // Weights 2000:1000 schedule as 2:1.
        let divisor = scaled
            .iter()
            .copied()
            .filter(|&w| w > 0)
            .fold(0, gcd)
            .max(1);
        let scaled: Vec<i64> = scaled.iter().map(|w| w / divisor).collect();
        let sum: i64 = scaled.iter().sum();
        let mut current = vec![0i64; scaled.len()];
        let mut order = Vec::with_capacity(usize::try_from(sum).unwrap_or(0));
        for _ in 0..sum {
            let mut best = 0;
            for (i, weight) in scaled.iter().enumerate() {
                current[i] += weight;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= sum;
            order.push(u16::try_from(best).unwrap_or(0));
        }
        Some(Self {
            order: order.into(),
            next: AtomicUsize::new(0),
        })
    }

    /// Entries in the schedule.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// The next endpoint index.
    pub(crate) fn pick(&self) -> usize {
        let n = self.next.fetch_add(1, Relaxed);
        usize::from(self.order[n % self.order.len()])
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(weights: &[u32], n: usize) -> Vec<usize> {
        let schedule = Schedule::new(weights).expect("some weight");
        (0..n).map(|_| schedule.pick()).collect()
    }

    #[test]
    fn weights_interleave_smoothly() {
        assert_eq!(picks(&[5, 1, 1], 7), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(picks(&[1, 1, 2], 4), [2, 0, 1, 2]);
        assert_eq!(picks(&[0, 3], 3), [1, 1, 1], "weight 0 takes nothing");
        assert_eq!(
            picks(&[2000, 1000], 3),
            [0, 1, 0],
            "common factors are divided out"
        );
        assert!(Schedule::new(&[0, 0]).is_none());
    }

    #[test]
    fn shares_follow_weights_over_many_picks() {
        let got = picks(&[1, 1, 2], 1000);
        let count = |i| got.iter().filter(|&&p| p == i).count();
        assert_eq!((count(0), count(1), count(2)), (250, 250, 500));
    }

    #[test]
    fn large_weights_are_scaled_into_the_schedule() {
        let schedule = Schedule::new(&[1_000_000, 1, 500_000]).expect("some weight");
        assert!(schedule.order.len() <= MAX_SCHEDULE + 3);
        let got: Vec<usize> = (0..schedule.order.len()).map(|_| schedule.pick()).collect();
        assert!(got.contains(&1), "a small weight still gets its turn");
        let first = got.iter().filter(|&&p| p == 0).count() as f64;
        let third = got.iter().filter(|&&p| p == 2).count() as f64;
        assert!((first / third - 2.0).abs() < 0.01, "{first} / {third}");
    }
}
