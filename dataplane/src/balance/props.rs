//! Properties of the balancers, over generated endpoint sets and keys, and
//! passive ejection on a paused clock.

use std::time::Duration;

use http::HeaderMap;
use proptest::prelude::*;
use proptest::test_runner::Config;

use super::ring::{Ring, hash};
use super::*;

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("pod-{i}")).collect()
}

fn equal(names: &[String]) -> Vec<(&str, u32)> {
    names.iter().map(|n| (n.as_str(), 1)).collect()
}

fn owner(ring: &Ring, key: u64) -> Option<usize> {
    ring.pick(key, &|_| 0, None, &|_| true)
}

proptest! {
    #![proptest_config(Config::with_cases(64))]

    /// Keys spread evenly: with 160 virtual nodes each endpoint owns
    /// between half and one and a half times its share.
    #[test]
    fn the_ring_spreads_keys_evenly(n in 2usize..10, seed in any::<u64>()) {
        let names = names(n);
        let ring = Ring::new(&equal(&names)).expect("a ring");
        let keys = 4000u64;
        let mut owned = vec![0u64; n];
        for k in 0..keys {
            owned[owner(&ring, hash(&(seed ^ k).to_le_bytes())).expect("an owner")] += 1;
        }
        let mean = keys / n as u64;
        for (i, count) in owned.iter().enumerate() {
            prop_assert!(*count * 2 >= mean && *count * 2 <= mean * 3,
                "endpoint {} owns {} of {} keys (mean {})", i, count, keys, mean);
        }
    }

    /// When an endpoint leaves, only its keys move: every other key keeps
    /// its endpoint.
    #[test]
    fn only_the_keys_of_a_leaving_endpoint_move(n in 2usize..10, gone in any::<prop::sample::Index>(), keys in prop::collection::vec(any::<u64>(), 200)) {
        let all = names(n);
        let gone = gone.index(n);
        let rest: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, n)| n.clone()).collect();
        let before = Ring::new(&equal(&all)).expect("a ring");
        let after = Ring::new(&equal(&rest)).expect("a ring");
        for key in keys {
            let was = owner(&before, key).expect("an owner");
            let now = owner(&after, key).expect("an owner");
            if was != gone {
                prop_assert_eq!(&all[was], &rest[now], "key {} moved off a staying endpoint", key);
            }
        }
    }

    /// With a bound, no endpoint's load ever exceeds ceil(bound × mean),
    /// however the keys fall (all on one key included).
    #[test]
    fn bounded_load_holds_for_any_keys(n in 2usize..8, bound in 1000u32..2000, keys in prop::collection::vec(0u64..4, 1..300)) {
        let names = names(n);
        let ring = Ring::new(&equal(&names)).expect("a ring");
        let mut load = vec![0u32; n];
        for (k, key) in keys.iter().enumerate() {
            let current = load.clone();
            let i = ring.pick(hash(&key.to_le_bytes()), &|i| current[i], Some(bound), &|_| true).expect("an endpoint");
            load[i] += 1;
            let assigned = k as u64 + 1;
            let limit = (u64::from(bound) * assigned).div_ceil(1000 * n as u64);
            prop_assert!(load.iter().all(|&l| u64::from(l) <= limit), "loads {:?} over {}", load, limit);
        }
    }

    /// Power of two choices never sends a request to the one endpoint
    /// busier than every other, and never to one already tried.
    #[test]
    fn least_request_avoids_the_busiest_and_the_tried(n in 2usize..8, ops in prop::collection::vec((any::<bool>(), 0usize..8), 1..200), tried in 0usize..8) {
        let names = names(n);
        let balancer = Balancer::new(&Balance::LeastRequest, EjectionPolicy { consecutive_failures: u32::MAX, duration_ms: 0 }, &equal(&names), None);
        let headers = HeaderMap::new();
        let choice = Choice { uri: "/", headers: &headers, client: None };
        for (pick, which) in ops {
            if pick || balancer.inflight.iter().all(|l| l.load(Relaxed) == 0) {
                let loads: Vec<u32> = balancer.inflight.iter().map(|l| l.load(Relaxed)).collect();
                let max = *loads.iter().max().unwrap_or(&0);
                let unique_max = (loads.iter().filter(|&&l| l == max).count() == 1).then(|| loads.iter().position(|&l| l == max)).flatten();
                let chosen = balancer.pick(&choice, &[]).expect("an endpoint");
                prop_assert!(Some(chosen) != unique_max || n == 1, "picked the busiest of {:?}", loads);
                let other = balancer.pick(&choice, &[tried % n]).expect("an endpoint");
                prop_assert_ne!(other, tried % n);
                balancer.release(other);
            } else {
                let i = which % n;
                if balancer.inflight[i].load(Relaxed) > 0 {
                    balancer.release(i);
                }
            }
        }
    }
}

/// Consecutive failures eject an endpoint for the ejection duration, on
/// tokio's clock: paused here, so the test waits for nothing.
#[tokio::test(start_paused = true)]
async fn ejection_lasts_its_duration_then_the_endpoint_returns() {
    let names = names(2);
    let ejection = EjectionPolicy {
        consecutive_failures: 3,
        duration_ms: 30_000,
    };
    let balancer = Balancer::new(&Balance::RoundRobin, ejection, &equal(&names), None);
    let headers = HeaderMap::new();
    let choice = Choice {
        uri: "/",
        headers: &headers,
        client: None,
    };
    assert!(!balancer.record(0, false));
    assert!(!balancer.record(0, false));
    // A success in between starts the count again.
    assert!(!balancer.record(0, true));
    assert!(!balancer.record(0, false));
    assert!(!balancer.record(0, false));
    assert!(
        balancer.record(0, false),
        "the third failure in a row ejects"
    );
    let picks = |balancer: &Balancer| -> Vec<usize> {
        (0..10)
            .map(|_| {
                let i = balancer.pick(&choice, &[]).expect("an endpoint");
                balancer.release(i);
                i
            })
            .collect()
    };
    assert!(
        picks(&balancer).iter().all(|&i| i == 1),
        "ejected endpoint 0 is passed over"
    );
    // Every healthy endpoint tried: the ejected one is used rather than none.
    assert_eq!(balancer.pick(&choice, &[1]), Some(0));
    balancer.release(0);
    tokio::time::advance(Duration::from_millis(29_900)).await;
    assert!(
        picks(&balancer).iter().all(|&i| i == 1),
        "still ejected before 30 s"
    );
    tokio::time::advance(Duration::from_millis(200)).await;
    assert!(picks(&balancer).contains(&0), "back after 30 s");
}

/// A cookie that names a healthy endpoint wins over the balancer and sets
/// nothing; one that names an ejected or tried endpoint, or none, leaves
/// the choice to the balancer and asks for a new cookie.
#[tokio::test(start_paused = true)]
async fn affinity_follows_the_cookie_while_its_endpoint_serves() {
    let names = names(3);
    let ejection = EjectionPolicy {
        consecutive_failures: 1,
        duration_ms: 10_000,
    };
    let balancer = Balancer::new(&Balance::RoundRobin, ejection, &equal(&names), Some("sid"));
    let pick = |cookie: &str, tried: &[usize]| {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            HeaderValue::from_str(cookie).expect("a field value"),
        );
        let choice = Choice {
            uri: "/",
            headers: &headers,
            client: None,
        };
        let picked = balancer.pick_affine(&choice, tried).expect("an endpoint");
        balancer.release(picked.0);
        picked
    };
    let naming = |i: usize| format!("a=1; sid={:016x}", sticky::id(&names[i]));
    for _ in 0..5 {
        assert_eq!(pick(&naming(2), &[]), (2, false));
    }
    // Tried already (a retry): another endpoint, and a new cookie.
    let (other, marked) = pick(&naming(2), &[2]);
    assert!(other != 2 && marked);
    // Ejected: the same, until it returns.
    assert!(balancer.record(2, false));
    assert!(pick(&naming(2), &[]).0 != 2);
    tokio::time::advance(Duration::from_millis(10_001)).await;
    assert_eq!(pick(&naming(2), &[]), (2, false));
    // No cookie, or one naming nothing: the balancer, marked.
    assert!(pick("a=1", &[]).1);
    assert!(pick("sid=zz", &[]).1);
    // Without affinity nothing is ever marked.
    let plain = Balancer::new(&Balance::RoundRobin, ejection, &equal(&names), None);
    let headers = HeaderMap::new();
    let choice = Choice {
        uri: "/",
        headers: &headers,
        client: None,
    };
    assert!(!plain.pick_affine(&choice, &[]).expect("an endpoint").1);
}
