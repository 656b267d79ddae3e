//! Idle upstream connections, one pool per worker and kind of connection
//! (Pier's own HTTP/1.1 connections here; hyper's client senders in the
//! hyper front end), in one generic shape: newest last, taken newest first,
//! at most `--upstream-idle` per endpoint, closed after
//! `--upstream-idle-timeout` (on tokio's clock). Pools are thread-local:
//! no lock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;

use super::{Connection, PoolKey};
use crate::metrics::Metrics;

/// A connection that can say whether it is still worth reusing.
pub(crate) trait Reusable {
    /// False when the backend closed it or broke the protocol meanwhile.
    fn reusable(&mut self) -> bool;
}

impl Reusable for Connection {
    fn reusable(&mut self) -> bool {
        self.still_idle()
    }
}

/// Idle connections by endpoint, newest last; counted in
/// `pier_dataplane_upstream_idle_connections`.
#[derive(Debug)]
pub(crate) struct Idle<T> {
    by_key: HashMap<PoolKey, Vec<(Instant, T)>>,
}

impl<T> Default for Idle<T> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
        }
    }
}

impl<T: Reusable> Idle<T> {
    /// The newest idle connection that is still usable.
    pub(crate) fn take(&mut self, key: PoolKey, metrics: &Metrics) -> Option<T> {
        let idle = self.by_key.get_mut(&key)?;
        while let Some((_, mut conn)) = idle.pop() {
            metrics.upstream_idle.fetch_sub(1, Relaxed);
            if conn.reusable() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection whose exchange completed, if there is room.
    pub(crate) fn put(&mut self, key: PoolKey, conn: T, max_idle: usize, metrics: &Metrics) {
        let idle = self.by_key.entry(key).or_default();
        if idle.len() < max_idle {
            idle.push((Instant::now(), conn));
            metrics.upstream_idle.fetch_add(1, Relaxed);
        }
    }

    /// Closes the connections unused for `limit`, so a burst's connections
    /// do not stay open (and hold memory) for good.
    pub(crate) fn expire(&mut self, limit: Duration, metrics: &Metrics) {
        let now = Instant::now();
        self.by_key.retain(|_, idle| {
            let old = idle.partition_point(|(since, _)| now.duration_since(*since) >= limit);
            idle.drain(..old);
            metrics.upstream_idle.fetch_sub(old as i64, Relaxed);
            idle.shrink_to_fit();
            !idle.is_empty()
        });
        self.by_key.shrink_to_fit();
    }
}

thread_local! {
    /// This worker's idle HTTP/1.1 connections of Pier's own engine.
    static CONNECTIONS: RefCell<Idle<Connection>> = RefCell::new(Idle::default());
}

/// Takes an idle connection that is still open.
pub(crate) fn take(key: PoolKey, metrics: &Metrics) -> Option<Connection> {
    CONNECTIONS.with_borrow_mut(|pool| pool.take(key, metrics))
}

/// Keeps a connection whose exchange completed, if there is room.
pub(crate) fn put(key: PoolKey, conn: Connection, max_idle: usize, metrics: &Metrics) {
    CONNECTIONS.with_borrow_mut(|pool| pool.put(key, conn, max_idle, metrics));
}

/// Closes this worker's idle connections unused for `limit`.
pub(crate) fn expire(limit: Duration, metrics: &Metrics) {
    CONNECTIONS.with_borrow_mut(|pool| pool.expire(limit, metrics));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fake(bool);

    impl Reusable for Fake {
        fn reusable(&mut self) -> bool {
            self.0
        }
    }

    fn key(port: u16) -> PoolKey {
        (std::net::SocketAddr::from(([127, 0, 0, 1], port)), 0)
    }

    #[test]
    fn the_newest_usable_is_taken_and_the_limit_holds() {
        let metrics = Metrics::default();
        let mut pool = Idle::default();
        pool.put(key(1), Fake(false), 2, &metrics);
        pool.put(key(1), Fake(true), 2, &metrics);
        pool.put(key(1), Fake(true), 2, &metrics);
        assert_eq!(
            metrics.upstream_idle.load(Relaxed),
            2,
            "the third was over the limit"
        );
        assert!(pool.take(key(1), &metrics).is_some_and(|f| f.0));
        assert!(
            pool.take(key(2), &metrics).is_none(),
            "other endpoints have their own"
        );
        assert!(
            pool.take(key(1), &metrics).is_none(),
            "a closed one is dropped, not reused"
        );
        assert_eq!(metrics.upstream_idle.load(Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_closes_what_stayed_idle_too_long() {
        let metrics = Metrics::default();
        let mut pool = Idle::default();
        pool.put(key(1), Fake(true), 4, &metrics);
        tokio::time::advance(Duration::from_secs(30)).await;
        pool.put(key(1), Fake(true), 4, &metrics);
        tokio::time::advance(Duration::from_secs(30) - Duration::from_millis(1)).await;
        pool.expire(Duration::from_secs(60), &metrics);
        assert_eq!(metrics.upstream_idle.load(Relaxed), 2, "both still young");
        tokio::time::advance(Duration::from_millis(1)).await;
        pool.expire(Duration::from_secs(60), &metrics);
        assert_eq!(metrics.upstream_idle.load(Relaxed), 1, "the older closed");
        assert!(pool.take(key(1), &metrics).is_some(), "the newer kept");
        assert!(pool.take(key(1), &metrics).is_none());
    }
}
