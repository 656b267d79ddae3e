//! Leader election on a `coordination.k8s.io/v1` Lease, and each replica's
//! report of the dataplanes connected to it.
//!
//! Every replica serves snapshots; only the leader writes route status.
//! The leader holds the Lease named `--lease-name` and renews it every
//! `renew`; another replica takes it over once `renewTime +
//! leaseDurationSeconds` has passed. Writes use the object's
//! `resourceVersion`, so two replicas racing for it cannot both win.
//!
//! Dataplanes connect to any replica, so each replica also keeps a Lease of
//! its own, `--lease-name` + `-` + identity, labelled
//! `pier.dev/fleet=<lease-name>`, whose annotation lists its dataplanes and
//! the versions they acknowledged. The leader reads them all to decide
//! `Programmed`; a report not renewed within the lease duration is ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::fleet::Fleet;

/// The label that marks replica reports, valued with the election's name.
pub(crate) const FLEET_LABEL: &str = "pier.dev/fleet";
/// The annotation holding a report: JSON `{dataplane: acknowledged version}`.
pub(crate) const DATAPLANES_ANNOTATION: &str = "pier.dev/dataplanes";

/// Leader election settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Leases.
    pub namespace: String,
    /// Name of the election Lease; reports are named after it.
    pub name: String,
    /// This replica's identity (its pod name in a cluster).
    pub identity: String,
    /// How long a holder stays leader without renewing.
    pub duration: Duration,
    /// How often the leader renews and followers retry.
    pub renew: Duration,
}

/// What to do with the election Lease as found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// There is none: create it, held by us.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Its holder let it expire (or released it): take it over.
    TakeOver,
    /// Someone else holds it.
    Follow,
}

/// Decides from the Lease as read at `now`. Pure.
pub(crate) fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let Some(spec) = &lease.spec else {
        return Decision::TakeOver;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => Decision::Renew,
        None | Some("") => Decision::TakeOver,
        Some(_) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
            let expired = spec
                .renew_time
                .as_ref()
                .is_none_or(|renewed| renewed.0 + SignedDuration::from_secs(duration) < now);
            if expired {
                Decision::TakeOver
            } else {
                Decision::Follow
            }
        }
    }
}

/// The Lease as we want it after `decision`.
fn held(
    existing: Option<&Lease>,
    config: &LeaseConfig,
    decision: &Decision,
    now: Timestamp,
) -> Lease {
    let mut lease = existing.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let mut spec = lease.spec.take().unwrap_or_default();
    if *decision != Decision::Renew {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions =
            Some(spec.lease_transitions.unwrap_or(0) + i32::from(existing.is_some()));
    }
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds = Some(
        i32::try_from(config.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1),
    );
    spec.renew_time = Some(MicroTime(now));
    lease.spec = Some(spec);
    lease
}

/// Campaigns for the lease until `alive` closes, publishing whether this
/// replica leads. A leader that cannot renew within the lease duration
/// steps down. On the way out a leader releases the lease, so another
/// replica takes over without waiting for it to expire.
pub(crate) async fn elect(
    client: Client,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    mut alive: watch::Receiver<()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut last_renewed: Option<tokio::time::Instant> = None;
    loop {
        let now = Timestamp::now();
        let leading = match api.get_opt(&config.name).await {
            Ok(current) => {
                let decision = decide(current.as_ref(), &config.identity, now);
                if decision == Decision::Follow {
                    false
                } else {
                    let lease = held(current.as_ref(), &config, &decision, now);
                    let written = match decision {
                        Decision::Create => api.create(&PostParams::default(), &lease).await,
                        _ => {
                            api.replace(&config.name, &PostParams::default(), &lease)
                                .await
                        }
                    };
                    match written {
                        Ok(_) => true,
                        // Another replica wrote first.
                        Err(kube::Error::Api(e)) if e.code == 409 => false,
                        Err(e) => {
                            tracing::warn!(error = %e, "lease write failed");
                            *leader.borrow() && still_valid(last_renewed, config.duration)
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease read failed");
                *leader.borrow() && still_valid(last_renewed, config.duration)
            }
        };
        if leading {
            last_renewed = Some(tokio::time::Instant::now());
        }
        leader.send_if_modified(|was| {
            if *was != leading {
                tracing::info!(identity = %config.identity, leading, "leadership changed");
                *was = leading;
                true
            } else {
                false
            }
        });
        tokio::select! {
            () = tokio::time::sleep(config.renew) => {}
            _ = alive.changed() => break,
        }
    }
    if *leader.borrow() {
        release(&api, &config).await;
    }
}

fn still_valid(last_renewed: Option<tokio::time::Instant>, duration: Duration) -> bool {
    last_renewed.is_some_and(|at| at.elapsed() < duration)
}

/// Gives the lease up by clearing its holder.
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let patch = serde_json::json!({"spec": {"holderIdentity": null}});
    if let Err(e) = api
        .patch(&config.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(error = %e, "lease not released; it expires on its own");
    }
}

/// Keeps this replica's report current: on every fleet change (at most
/// once per `min_interval`) and at least every `renew`.
pub(crate) async fn report(
    client: Client,
    config: LeaseConfig,
    fleet: std::sync::Arc<Fleet>,
    mut alive: watch::Receiver<()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let name = report_name(&config);
    let mut changes = fleet.subscribe();
    loop {
        let dataplanes: BTreeMap<String, String> = fleet
            .dataplanes()
            .into_iter()
            .filter_map(|d| Some((d.name, d.acked?)))
            .collect();
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "labels": {FLEET_LABEL: config.name},
                "annotations": {
                    DATAPLANES_ANNOTATION: serde_json::to_string(&dataplanes).unwrap_or_default(),
                },
            },
            "spec": {
                "holderIdentity": config.identity,
                "leaseDurationSeconds": i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX).max(1),
                "renewTime": MicroTime(Timestamp::now()),
            },
        });
        let params = PatchParams::apply("pier-controller").force();
        if let Err(e) = api.patch(&name, &params, &Patch::Apply(&lease)).await {
            tracing::warn!(error = %e, "fleet report not written");
        }
        tokio::select! {
            () = tokio::time::sleep(config.renew) => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                // Coalesce a burst of acks into one write.
                tokio::time::sleep(Duration::from_millis(200)).await;
                changes.borrow_and_update();
            }
            _ = alive.changed() => return,
        }
    }
}

/// The name of a replica's report.
pub(crate) fn report_name(config: &LeaseConfig) -> String {
    format!("{}-{}", config.name, config.identity)
}

/// The dataplanes a fresh report lists, or nothing when it is stale.
pub(crate) fn reported(lease: &Lease, now: Timestamp) -> BTreeMap<String, String> {
    let fresh = lease.spec.as_ref().is_some_and(|spec: &LeaseSpec| {
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
        spec.renew_time
            .as_ref()
            .is_some_and(|t| t.0 + SignedDuration::from_secs(duration) >= now)
    });
    if !fresh {
        return BTreeMap::new();
    }
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DATAPLANES_ANNOTATION))
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn lease(holder: Option<&str>, renewed: &str, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: Some(MicroTime(at(renewed))),
                lease_duration_seconds: Some(seconds),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn the_lease_is_created_renewed_followed_or_taken_over() {
        let now = at("2026-11-23T10:00:10Z");
        assert_eq!(decide(None, "a", now), Decision::Create);
        let mine = lease(Some("a"), "2026-11-23T10:00:00Z", 15);
        assert_eq!(decide(Some(&mine), "a", now), Decision::Renew);
        let theirs = lease(Some("b"), "2026-11-23T10:00:00Z", 15);
        assert_eq!(decide(Some(&theirs), "a", now), Decision::Follow);
        let expired = lease(Some("b"), "2026-11-23T09:59:50Z", 15);
        assert_eq!(decide(Some(&expired), "a", now), Decision::TakeOver);
        let released = lease(None, "2026-11-23T10:00:09Z", 15);
        assert_eq!(decide(Some(&released), "a", now), Decision::TakeOver);
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let now = at("2026-11-23T10:00:10Z");
        let config = LeaseConfig {
            namespace: "pier".into(),
            name: "pier-controller".into(),
            identity: "a".into(),
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
        };
        let expired = lease(Some("b"), "2026-11-23T09:00:00Z", 15);
        let taken = held(Some(&expired), &config, &Decision::TakeOver, now);
        let spec = taken.spec.as_ref().expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(1));
        let renewed = held(
            Some(&taken),
            &config,
            &Decision::Renew,
            at("2026-11-23T10:00:15Z"),
        );
        let spec = renewed.spec.as_ref().expect("spec");
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
        let created = held(None, &config, &Decision::Create, now);
        assert_eq!(created.spec.and_then(|s| s.lease_transitions), Some(0));
    }

    #[test]
    fn stale_reports_list_no_dataplanes() {
        let mut report = lease(Some("a"), "2026-11-23T10:00:00Z", 15);
        report.metadata.annotations = Some(
            [(
                DATAPLANES_ANNOTATION.to_owned(),
                r#"{"dp-0":"abc"}"#.to_owned(),
            )]
            .into(),
        );
        let fresh = reported(&report, at("2026-11-23T10:00:10Z"));
        assert_eq!(fresh.get("dp-0").map(String::as_str), Some("abc"));
        assert!(reported(&report, at("2026-11-23T10:01:00Z")).is_empty());
    }
}
