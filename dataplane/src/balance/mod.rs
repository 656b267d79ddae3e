//! Choosing an endpoint, pure: the route's balancer (smooth weighted round
//! robin, a consistent-hash ring with bounded load, or power of two
//! choices on requests in flight) and passive health (consecutive failures
//! eject an endpoint for a while). No I/O and no metrics: callers count
//! what this decides.

mod ring;
mod schedule;
mod sticky;

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use http::{HeaderMap, HeaderValue};
use pier_snapshot::{Balance, EjectionPolicy, HashKey};

use self::ring::Ring;
use self::schedule::Schedule;
use self::sticky::Sticky;
pub(crate) use self::sticky::set_cookie;

/// A route's balancer and the health of its endpoints, shared by every
/// worker (atomics, no lock).
#[derive(Debug)]
pub(crate) struct Balancer {
    weights: Box<[u32]>,
    /// Requests in flight per endpoint, over all workers.
    inflight: Box<[AtomicU32]>,
    /// Failures in a row per endpoint (passive health).
    failures: Box<[AtomicU32]>,
    /// Until when (milliseconds since `epoch`, plus one) each endpoint is
    /// ejected.
    ejected_until: Box<[AtomicU64]>,
    /// The ejection clock's zero: tokio's clock, so tests can pause it.
    epoch: tokio::time::Instant,
    ejection: EjectionPolicy,
    picker: Picker,
    /// Session affinity: the endpoint a request's cookie names goes first.
    sticky: Option<Sticky>,
}

/// The compiled choice.
#[derive(Debug)]
enum Picker {
    /// No endpoint has weight: every request gets 503.
    Nothing,
    RoundRobin(Schedule),
    Hash {
        ring: Ring,
        key: HashKey,
        bound: Option<u32>,
    },
    LeastRequest,
}

/// What a balancer may look at in a request.
#[derive(Debug)]
pub(crate) struct Choice<'a> {
    pub(crate) uri: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) client: Option<IpAddr>,
}

impl Balancer {
    /// A balancer over endpoints given as (identity, weight), in the
    /// order the caller indexes them; with `affinity`, the name of the
    /// cookie that keeps a client on its endpoint.
    pub(crate) fn new(
        balance: &Balance,
        ejection: EjectionPolicy,
        nodes: &[(&str, u32)],
        affinity: Option<&str>,
    ) -> Self {
        let weights: Box<[u32]> = nodes.iter().map(|(_, w)| *w).collect();
        let picker = match balance {
            _ if weights.iter().all(|&w| w == 0) => Picker::Nothing,
            Balance::RoundRobin => {
                Schedule::new(&weights).map_or(Picker::Nothing, Picker::RoundRobin)
            }
            Balance::LeastRequest => Picker::LeastRequest,
            Balance::ConsistentHash {
                key,
                bounded_load_permille,
            } => Ring::new(nodes).map_or(Picker::Nothing, |ring| Picker::Hash {
                ring,
                key: key.clone(),
                bound: *bounded_load_permille,
            }),
        };
        let n = nodes.len();
        Self {
            inflight: (0..n).map(|_| AtomicU32::new(0)).collect(),
            failures: (0..n).map(|_| AtomicU32::new(0)).collect(),
            ejected_until: (0..n).map(|_| AtomicU64::new(0)).collect(),
            epoch: tokio::time::Instant::now(),
            sticky: affinity.map(|name| Sticky::new(name, nodes.iter().map(|(id, _)| *id))),
            weights,
            ejection,
            picker,
        }
    }

    /// An endpoint for a request, other than those in `tried`, and not
    /// ejected unless every endpoint left is (then ejected ones are tried
    /// anyway, rather than failing everything). `None` when no endpoint is
    /// left. The endpoint is counted in flight until [`release`]d.
    ///
    /// [`release`]: Balancer::release
    #[cfg(test)]
    pub(crate) fn pick(&self, choice: &Choice<'_>, tried: &[usize]) -> Option<usize> {
        self.pick_affine(choice, tried).map(|(i, _)| i)
    }

    /// As [`pick`](Balancer::pick), the endpoint the request's affinity
    /// cookie names first (when it is healthy, has weight and was not
    /// tried), and whether the response must set the cookie: the route
    /// has affinity and the request did not name this endpoint.
    pub(crate) fn pick_affine(
        &self,
        choice: &Choice<'_>,
        tried: &[usize],
    ) -> Option<(usize, bool)> {
        let now = self.clock_ms();
        let fresh = |i: usize| !tried.contains(&i);
        let healthy = |i: usize| fresh(i) && self.ejected_until[i].load(Relaxed) <= now;
        let wanted = self.sticky.as_ref().and_then(|s| s.wanted(choice.headers));
        let i = wanted
            .filter(|&i| self.weights[i] > 0 && healthy(i))
            .or_else(|| self.choose(choice, &healthy))
            .or_else(|| self.choose(choice, &fresh))?;
        self.inflight.get(i)?.fetch_add(1, Relaxed);
        Some((i, self.sticky.is_some() && wanted != Some(i)))
    }

    /// Ends what [`pick`](Balancer::pick) counted in flight.
    pub(crate) fn release(&self, i: usize) {
        if let Some(inflight) = self.inflight.get(i) {
            inflight.fetch_sub(1, Relaxed);
        }
    }

    fn choose(&self, choice: &Choice<'_>, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        match &self.picker {
            Picker::Nothing => None,
            Picker::RoundRobin(schedule) => (0..schedule.len())
                .map(|_| schedule.pick())
                .find(|&i| usable(i)),
            Picker::Hash { ring, key, bound } => {
                let key = hash_key(key, choice);
                let load = |i: usize| self.inflight.get(i).map_or(0, |l| l.load(Relaxed));
                ring.pick(key, &load, *bound, usable)
            }
            Picker::LeastRequest => self.least_request(usable),
        }
    }

    /// Power of two choices: two distinct random endpoints with weight,
    /// the one with fewer requests in flight per unit of weight.
    fn least_request(&self, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        // The `k`th usable endpoint with weight, without collecting them.
        let usable = |i: &usize| self.weights[*i] > 0 && usable(*i);
        let n = (0..self.weights.len()).filter(usable).count();
        if n == 0 {
            return None;
        }
        let nth = |k: usize| (0..self.weights.len()).filter(usable).nth(k);
        let first = random() as usize % n;
        let second = (first + 1 + random() as usize % n.saturating_sub(1).max(1)) % n;
        let (a, b) = (nth(first)?, nth(second)?);
        let cost = |i: usize| {
            u64::from(self.inflight[i].load(Relaxed)) * 1_000_000
                / u64::from(self.weights[i].max(1))
        };
        Some(if cost(b) < cost(a) { b } else { a })
    }

    /// Records how an exchange with endpoint `i` went: a success clears
    /// its failures; `consecutive_failures` failures in a row eject it for
    /// the ejection duration. Returns whether it was ejected now.
    pub(crate) fn record(&self, i: usize, ok: bool) -> bool {
        let Some(failures) = self.failures.get(i) else {
            return false;
        };
        if ok {
            failures.store(0, Relaxed);
            return false;
        }
        let count = failures.fetch_add(1, Relaxed) + 1;
        if count < self.ejection.consecutive_failures {
            return false;
        }
        failures.store(0, Relaxed);
        self.ejected_until[i].store(self.clock_ms() + self.ejection.duration_ms, Relaxed);
        true
    }

    /// Milliseconds since the balancer was built, plus one (so that 0
    /// means "never ejected"): the clock of ejections.
    fn clock_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).map_or(u64::MAX, |ms| ms.saturating_add(1))
    }

    /// How long an ejection lasts, in milliseconds.
    pub(crate) fn ejection_ms(&self) -> u64 {
        self.ejection.duration_ms
    }
}

/// The hash of a request's key; a missing header or cookie hashes as empty
/// (those requests share one endpoint).
fn hash_key(key: &HashKey, choice: &Choice<'_>) -> u64 {
    match key {
        HashKey::Uri => ring::hash(choice.uri.as_bytes()),
        HashKey::Header(name) => ring::hash(
            choice
                .headers
                .get(name.as_str())
                .map_or(&b""[..], HeaderValue::as_bytes),
        ),
        HashKey::Cookie(name) => ring::hash(sticky::cookie(choice.headers, name).unwrap_or(b"")),
        HashKey::SourceIp => match choice.client {
            Some(IpAddr::V4(ip)) => ring::hash(&ip.octets()),
            Some(IpAddr::V6(ip)) => ring::hash(&ip.octets()),
            None => 0,
        },
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        ring::hash(&seed.to_le_bytes()) | 1
    });
}

/// A per-worker xorshift generator: good enough to pick two endpoints.
fn random() -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

#[cfg(test)]
mod props;
