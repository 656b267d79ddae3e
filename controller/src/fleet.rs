//! The dataplanes connected to this controller and the snapshot version
//! each one acknowledged, so route status can say where a route is served.
//!
//! The contents of the last [`VERSIONS_KEPT`] published snapshots are kept
//! (route → generation); an acknowledgement of an older version counts as
//! serving nothing current. Touched on connect, disconnect, ack and
//! publish, never on a dataplane's request path.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use pier_snapshot::RouteKey;
use tokio::sync::watch;

use crate::status::Programming;

/// Published snapshot versions whose contents are remembered.
pub(crate) const VERSIONS_KEPT: usize = 32;

/// Which generation of each route a snapshot version holds.
pub(crate) type Contents = HashMap<RouteKey, i64>;

/// Connected dataplanes.
#[derive(Debug)]
pub(crate) struct Fleet {
    state: Mutex<State>,
    /// Bumped on every change that can move a route's `Programmed`.
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    dataplanes: HashMap<u64, Dataplane>,
    versions: VecDeque<Published>,
}

/// A published version, what it holds, and when.
#[derive(Debug)]
struct Published {
    version: String,
    contents: Arc<Contents>,
    /// When it was published.
    at: Instant,
    /// When the change it carries woke the build (a watch event).
    changed: Instant,
}

/// How long an acknowledged version took to arrive.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Latency {
    /// From its publication.
    pub(crate) since_publish: Duration,
    /// From the watch event that led to it.
    pub(crate) since_change: Duration,
}

#[derive(Debug)]
struct Dataplane {
    name: String,
    acked: Option<String>,
    rejected: Option<(String, String)>,
}

/// One dataplane as the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DataplaneView {
    pub(crate) name: String,
    pub(crate) acked: Option<String>,
}

impl Default for Fleet {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Fleet {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Notified whenever programming may have changed.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Remembers what a newly published version holds, and `changed`,
    /// when the change it carries woke the build.
    pub(crate) fn published(&self, version: &str, contents: Arc<Contents>, changed: Instant) {
        let mut state = self.lock();
        if state.versions.iter().any(|p| p.version == version) {
            return;
        }
        state.versions.push_back(Published {
            version: version.to_owned(),
            contents,
            at: Instant::now(),
            changed,
        });
        while state.versions.len() > VERSIONS_KEPT {
            state.versions.pop_front();
        }
    }

    /// Registers a connected dataplane; returns its connection id.
    pub(crate) fn connect(&self, name: &str) -> u64 {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.dataplanes.insert(
            id,
            Dataplane {
                name: name.to_owned(),
                acked: None,
                rejected: None,
            },
        );
        drop(state);
        self.bump();
        id
    }

    pub(crate) fn disconnect(&self, id: u64) {
        self.lock().dataplanes.remove(&id);
        self.bump();
    }

    /// Records an acknowledgement. Returns how long the version took to
    /// arrive, for the latency histograms.
    pub(crate) fn ack(&self, id: u64, version: &str, rejected: Option<String>) -> Option<Latency> {
        let mut state = self.lock();
        let published = state
            .versions
            .iter()
            .find(|p| p.version == version)
            .map(|p| Latency {
                since_publish: p.at.elapsed(),
                since_change: p.changed.elapsed(),
            });
        if let Some(dataplane) = state.dataplanes.get_mut(&id) {
            match rejected {
                None => dataplane.acked = Some(version.to_owned()),
                Some(reason) => dataplane.rejected = Some((version.to_owned(), reason)),
            }
        }
        drop(state);
        self.bump();
        published
    }

    /// Where generation `generation` of `route` is served, counting this
    /// replica's dataplanes and those `remote` replicas report (name →
    /// acknowledged version; a name connected here counts once).
    pub(crate) fn programming(
        &self,
        route: &RouteKey,
        generation: i64,
        remote: &BTreeMap<String, String>,
    ) -> Programming {
        let state = self.lock();
        let serves = |acked: Option<&str>| {
            acked.is_some_and(|acked| {
                state
                    .versions
                    .iter()
                    .find(|p| p.version == acked)
                    .is_some_and(|p| p.contents.get(route) == Some(&generation))
            })
        };
        let local = state
            .dataplanes
            .values()
            .map(|d| (d.name.as_str(), serves(d.acked.as_deref())));
        let elsewhere = remote
            .iter()
            .filter(|(name, _)| !state.dataplanes.values().any(|d| &d.name == *name))
            .map(|(name, version)| (name.as_str(), serves(Some(version))));
        let (mut connected, mut serving) = (0, 0);
        for (_, ok) in local.chain(elsewhere) {
            connected += 1;
            serving += usize::from(ok);
        }
        if connected == 0 {
            Programming::NoDataplanes
        } else if serving == connected {
            Programming::Programmed { connected }
        } else {
            Programming::Pending { serving, connected }
        }
    }

    /// Connected dataplanes and their acknowledged versions.
    pub(crate) fn dataplanes(&self) -> Vec<DataplaneView> {
        let mut all: Vec<DataplaneView> = self
            .lock()
            .dataplanes
            .values()
            .map(|d| DataplaneView {
                name: d.name.clone(),
                acked: d.acked.clone(),
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

#[cfg(test)]
mod tests {
    use pier_snapshot::RouteKind;

    use super::*;

    fn key(name: &str) -> RouteKey {
        RouteKey::new(RouteKind::StaticRoute, "default", name)
    }

    #[test]
    fn a_route_is_programmed_once_every_dataplane_acked_its_generation() {
        let none = BTreeMap::new();
        let fleet = Fleet::default();
        assert_eq!(
            fleet.programming(&key("a"), 1, &none),
            Programming::NoDataplanes
        );
        fleet.published("v1", Arc::new([(key("a"), 1)].into()), Instant::now());
        fleet.published("v2", Arc::new([(key("a"), 2)].into()), Instant::now());
        let one = fleet.connect("dp-1");
        let two = fleet.connect("dp-2");
        fleet.ack(one, "v2", None);
        assert_eq!(
            fleet.programming(&key("a"), 2, &none),
            Programming::Pending {
                serving: 1,
                connected: 2
            }
        );
        fleet.ack(two, "v1", None);
        assert_eq!(
            fleet.programming(&key("a"), 2, &none),
            Programming::Pending {
                serving: 1,
                connected: 2
            },
            "an older generation does not count"
        );
        fleet.ack(two, "v2", None);
        assert_eq!(
            fleet.programming(&key("a"), 2, &none),
            Programming::Programmed { connected: 2 }
        );
        fleet.ack(one, "v3", Some("inconsistent".into()));
        assert_eq!(
            fleet.programming(&key("a"), 2, &none),
            Programming::Programmed { connected: 2 },
            "a rejected push leaves what was served"
        );
        fleet.disconnect(two);
        assert_eq!(fleet.dataplanes().len(), 1);
    }

    #[test]
    fn dataplanes_of_other_replicas_count_too() {
        let fleet = Fleet::default();
        fleet.published("v1", Arc::new([(key("a"), 1)].into()), Instant::now());
        fleet.published("v2", Arc::new([(key("a"), 2)].into()), Instant::now());
        let local = fleet.connect("dp-1");
        fleet.ack(local, "v2", None);
        let mut remote = BTreeMap::from([("dp-2".to_owned(), "v1".to_owned())]);
        assert_eq!(
            fleet.programming(&key("a"), 2, &remote),
            Programming::Pending {
                serving: 1,
                connected: 2
            }
        );
        remote.insert("dp-2".into(), "v2".into());
        // The same dataplane reported stale elsewhere counts once, as here.
        remote.insert("dp-1".into(), "v1".into());
        assert_eq!(
            fleet.programming(&key("a"), 2, &remote),
            Programming::Programmed { connected: 2 }
        );
        fleet.disconnect(local);
        assert_eq!(
            fleet.programming(&key("a"), 2, &BTreeMap::new()),
            Programming::NoDataplanes
        );
    }

    #[test]
    fn only_recent_versions_are_remembered() {
        let none = BTreeMap::new();
        let fleet = Fleet::default();
        for i in 0..=VERSIONS_KEPT {
            fleet.published(
                &format!("v{i}"),
                Arc::new([(key("a"), 1)].into()),
                Instant::now(),
            );
        }
        let id = fleet.connect("dp");
        fleet.ack(id, "v0", None);
        assert_eq!(
            fleet.programming(&key("a"), 1, &none),
            Programming::Pending {
                serving: 0,
                connected: 1
            }
        );
    }
}
