//! Consistent hashing: a ring of virtual nodes keyed by each endpoint's
//! stable identity (the pod name for a Service endpoint), so every
//! dataplane replica builds the same ring and a pod that restarts with a
//! new IP keeps its keys. With a load bound, a request moves on along the
//! ring past endpoints already above `bound × mean` in-flight requests
//! (consistent hashing with bounded loads). No I/O.

/// Virtual nodes of an endpoint with the route's highest weight.
pub(crate) const VNODES: u32 = 160;

/// The ring: virtual node positions and their endpoint index, sorted.
#[derive(Debug)]
pub(crate) struct Ring {
    points: Box<[(u64, u16)]>,
    endpoints: usize,
}

impl Ring {
    /// A ring over endpoints given as (identity, weight); weight-0
    /// endpoints get no node. `None` when no endpoint has weight.
    pub(crate) fn new(endpoints: &[(&str, u32)]) -> Option<Self> {
        let max = endpoints.iter().map(|(_, w)| *w).max().filter(|&w| w > 0)?;
        if endpoints.len() > usize::from(u16::MAX) {
            return None;
        }
        let mut points = Vec::new();
        for (i, (identity, weight)) in endpoints.iter().enumerate() {
            if *weight == 0 {
                continue;
            }
            let nodes = (u64::from(VNODES) * u64::from(*weight) / u64::from(max)).max(1);
            for node in 0..nodes {
                let position = hash(format!("{identity}#{node}").as_bytes());
                points.push((position, u16::try_from(i).unwrap_or(u16::MAX)));
            }
        }
        points.sort_unstable();
        Some(Self {
            points: points.into(),
            endpoints: endpoints.len(),
        })
    }

    /// The endpoint for `key`: the first clockwise from its hash whose load
    /// is under `bound` (thousandths of the mean, counting this request),
    /// or simply the first when there is no bound.
    /// Endpoints for which `usable` is false are passed over.
    pub(crate) fn pick(
        &self,
        key: u64,
        load: &dyn Fn(usize) -> u32,
        bound: Option<u32>,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let start = self.points.partition_point(|(p, _)| *p < key);
        let mut walk = self
            .points
            .iter()
            .cycle()
            .skip(start)
            .take(self.points.len())
            .map(|(_, i)| usize::from(*i))
            .filter(|&i| usable(i));
        let Some(bound) = bound else {
            return walk.next();
        };
        let total: u64 = (0..self.endpoints).map(|i| u64::from(load(i))).sum::<u64>() + 1;
        let live = self.endpoints.max(1) as u64;
        // ceil(bound × (total / live)), in whole requests.
        let limit = (u64::from(bound) * total).div_ceil(1000 * live);
        let mut first = None;
        for i in walk {
            first.get_or_insert(i);
            if u64::from(load(i)) < limit {
                return Some(i);
            }
        }
        first
    }
}

/// A stable 64-bit hash: FNV-1a, then a SplitMix64 finalizer for spread.
/// Never changes between builds, so every replica agrees.
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("pod-{i}")).collect()
    }

    fn ring(names: &[String]) -> Ring {
        let endpoints: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        Ring::new(&endpoints).expect("endpoints")
    }

    fn owner(ring: &Ring, names: &[String], key: usize) -> String {
        let i = ring
            .pick(
                hash(format!("user-{key}").as_bytes()),
                &|_| 0,
                None,
                &|_| true,
            )
            .expect("an endpoint");
        names[i].clone()
    }

    #[test]
    fn the_same_key_always_lands_on_the_same_endpoint() {
        let names = names(10);
        let (a, b) = (ring(&names), ring(&names));
        for key in 0..1000 {
            assert_eq!(owner(&a, &names, key), owner(&b, &names, key));
        }
    }

    #[test]
    fn removing_one_of_ten_endpoints_moves_few_keys() {
        let all = names(10);
        let fewer: Vec<String> = all.iter().filter(|n| *n != "pod-3").cloned().collect();
        let (before, after) = (ring(&all), ring(&fewer));
        let moved = (0..10_000)
            .filter(|&k| owner(&before, &all, k) != owner(&after, &fewer, k))
            .count();
        // Only pod-3's keys (about 10%) should move.
        assert!(moved <= 1_500, "{moved} of 10000 keys moved");
        let lost = (0..10_000)
            .filter(|&k| owner(&before, &all, k) == "pod-3")
            .count();
        assert_eq!(moved, lost, "keys of other endpoints stay");
    }

    #[test]
    fn keys_spread_within_twenty_percent_of_the_mean() {
        let names = names(10);
        let ring = ring(&names);
        let mut counts: HashMap<String, usize> = HashMap::new();
        for key in 0..10_000 {
            *counts.entry(owner(&ring, &names, key)).or_default() += 1;
        }
        for (name, count) in counts {
            assert!(
                (800..=1200).contains(&count),
                "{name} has {count} of 10000 keys"
            );
        }
    }

    #[test]
    fn a_bounded_load_moves_requests_past_busy_endpoints() {
        let names = names(3);
        let ring = ring(&names);
        let key = hash(b"hot");
        let home = ring.pick(key, &|_| 0, Some(1250), &|_| true).expect("home");
        let mut loads = [1, 1, 1];
        loads[home] = 10;
        let moved = ring
            .pick(key, &|i| loads[i], Some(1250), &|_| true)
            .expect("moved");
        assert_ne!(moved, home, "a busy home endpoint is skipped");
        assert_eq!(
            ring.pick(key, &|i| loads[i], None, &|_| true),
            Some(home),
            "no bound, no move"
        );
    }

    #[test]
    fn pod_identity_not_address_decides_the_ring() {
        // Same pods, any addresses: same ring positions.
        let names = names(5);
        let a = ring(&names);
        let b = ring(&names);
        assert_eq!(a.points, b.points);
        assert!(Ring::new(&[("pod-0", 0)]).is_none());
    }
}
