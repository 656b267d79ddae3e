//! Gateway API status: what Pier's GatewayClasses, their Gateways and the
//! HTTPRoutes attached to them should say ([`plan`], pure), from the
//! compiler's [`Report`], and only where the stored status differs.
//!
//! | object | conditions |
//! |---|---|
//! | GatewayClass | `Accepted` |
//! | Gateway | `Accepted`, `Programmed` (`Pending` until a dataplane is connected); per listener `Accepted`, `ResolvedRefs`, `Programmed`, `Conflicted`, with `attachedRoutes` and `supportedKinds`; `addresses` from `--publish-service` |
//! | HTTPRoute | per parent of Pier's: `Accepted`, `ResolvedRefs`; the other controllers' entries are kept |

use std::sync::Arc;

use k8s_openapi::api::networking::v1::IngressLoadBalancerStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use pier_compile::gateway::{Cond, GROUP, Report};
use pier_crds::gateway::{
    ClassStatus, Gateway, GatewayAddress, GatewayClass, GatewayStatus, HTTPRoute, ListenerStatus,
    RouteGroupKind, RouteParentStatus, RouteStatus,
};

/// Which object a status write is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Class,
    Gateway,
    Route,
}

/// One object's new status.
#[derive(Debug, PartialEq)]
pub(crate) struct GatewayWrite {
    pub(crate) kind: Kind,
    /// `None` for a GatewayClass.
    pub(crate) namespace: Option<String>,
    pub(crate) name: String,
    /// The whole `status`.
    pub(crate) status: serde_json::Value,
}

impl GatewayWrite {
    pub(crate) fn key(&self) -> (Kind, Option<String>, String) {
        (self.kind, self.namespace.clone(), self.name.clone())
    }
}

/// The objects as stored.
#[derive(Debug)]
pub(crate) struct Current<'a> {
    pub(crate) classes: &'a [Arc<GatewayClass>],
    pub(crate) gateways: &'a [Arc<Gateway>],
    pub(crate) routes: &'a [Arc<HTTPRoute>],
}

/// The Gateway addresses of the dataplane's Service.
pub(crate) fn addresses(lb: Option<&IngressLoadBalancerStatus>) -> Vec<GatewayAddress> {
    let mut out = Vec::new();
    for i in lb.and_then(|lb| lb.ingress.as_ref()).into_iter().flatten() {
        if let Some(ip) = &i.ip {
            out.push(GatewayAddress {
                kind: Some("IPAddress".to_owned()),
                value: ip.clone(),
            });
        } else if let Some(host) = &i.hostname {
            out.push(GatewayAddress {
                kind: Some("Hostname".to_owned()),
                value: host.clone(),
            });
        }
    }
    out
}

/// The status writes the objects need now.
pub(crate) fn plan(
    report: &Report,
    current: &Current<'_>,
    controller: &str,
    addresses: &[GatewayAddress],
    dataplanes: bool,
    now: &Time,
) -> Vec<GatewayWrite> {
    let mut writes = Vec::new();
    let mut push = |kind, namespace: Option<&str>, name: &str, status: serde_json::Value| {
        writes.push(GatewayWrite {
            kind,
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
            status,
        })
    };
    for class in &report.classes {
        let Some(stored) = current
            .classes
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(class.name.as_str()))
        else {
            continue;
        };
        let old = stored.status.clone().unwrap_or_default();
        let desired = ClassStatus {
            conditions: stamp_all(&class.conditions, class.generation, &old.conditions, now),
        };
        if desired != old {
            push(Kind::Class, None, &class.name, json(&desired));
        }
    }
    for gateway in &report.gateways {
        let Some(stored) = current.gateways.iter().find(|g| {
            g.metadata.name.as_deref() == Some(gateway.name.as_str())
                && g.metadata.namespace.as_deref() == Some(gateway.namespace.as_str())
        }) else {
            continue;
        };
        let old = stored.status.clone().unwrap_or_default();
        let mut conditions = gateway.conditions.clone();
        for c in &mut conditions {
            if c.kind == "Programmed" && c.status && !dataplanes {
                *c = Cond {
                    kind: "Programmed",
                    status: false,
                    reason: "Pending",
                    message: "no dataplane is connected to the controller".to_owned(),
                };
            }
        }
        let listeners = gateway
            .listeners
            .iter()
            .map(|l| {
                let before = old
                    .listeners
                    .iter()
                    .find(|o| o.name == l.name)
                    .map_or(&[][..], |o| &o.conditions[..]);
                ListenerStatus {
                    name: l.name.clone(),
                    supported_kinds: l
                        .supported_kinds
                        .iter()
                        .map(|k| RouteGroupKind {
                            group: Some(GROUP.to_owned()),
                            kind: (*k).to_owned(),
                        })
                        .collect(),
                    attached_routes: l.attached,
                    conditions: stamp_all(&l.conditions, gateway.generation, before, now),
                }
            })
            .collect();
        let desired = GatewayStatus {
            addresses: addresses.to_vec(),
            conditions: stamp_all(&conditions, gateway.generation, &old.conditions, now),
            listeners,
        };
        if desired != old {
            push(
                Kind::Gateway,
                Some(&gateway.namespace),
                &gateway.name,
                json(&desired),
            );
        }
    }
    for stored in current.routes {
        let (Some(namespace), Some(name)) = (&stored.metadata.namespace, &stored.metadata.name)
        else {
            continue;
        };
        let old = stored.status.clone().unwrap_or_default();
        let reported = report
            .routes
            .iter()
            .find(|r| &r.namespace == namespace && &r.name == name);
        let ours_before = old.parents.iter().any(|p| p.controller_name == controller);
        if reported.is_none() && !ours_before {
            continue;
        }
        // Other controllers' entries stay as they are, first.
        let mut parents: Vec<RouteParentStatus> = old
            .parents
            .iter()
            .filter(|p| p.controller_name != controller)
            .cloned()
            .collect();
        for parent in reported.map_or(&[][..], |r| &r.parents[..]) {
            let before = old
                .parents
                .iter()
                .find(|p| p.controller_name == controller && p.parent_ref == parent.parent)
                .map_or(&[][..], |p| &p.conditions[..]);
            parents.push(RouteParentStatus {
                parent_ref: parent.parent.clone(),
                controller_name: controller.to_owned(),
                conditions: stamp_all(
                    &parent.conditions,
                    reported.and_then(|r| r.generation),
                    before,
                    now,
                ),
            });
        }
        let desired = RouteStatus { parents };
        if desired != old {
            push(Kind::Route, Some(namespace), name, json(&desired));
        }
    }
    writes
}

fn json<T: serde::Serialize>(status: &T) -> serde_json::Value {
    serde_json::to_value(status).unwrap_or_default()
}

/// Conditions with `observedGeneration`, and `lastTransitionTime` kept
/// from `current` where the status did not change.
fn stamp_all(
    given: &[Cond],
    generation: Option<i64>,
    current: &[Condition],
    now: &Time,
) -> Vec<Condition> {
    given
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let since = current
                .iter()
                .find(|o| o.type_ == c.kind && o.status == status)
                .map_or_else(|| now.clone(), |o| o.last_transition_time.clone());
            Condition {
                type_: c.kind.to_owned(),
                status: status.to_owned(),
                observed_generation: generation,
                last_transition_time: since,
                reason: c.reason.to_owned(),
                message: c.message.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pier_compile::gateway::{ClassReport, ParentReport, RouteReport};
    use pier_crds::gateway::ParentRef;

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).expect("a time"))
    }

    fn route(status: serde_json::Value) -> Arc<HTTPRoute> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "r", "namespace": "app", "generation": 2},
                "spec": {"parentRefs": [{"name": "gw"}]},
                "status": status,
            }))
            .expect("an HTTPRoute"),
        )
    }

    fn report() -> Report {
        Report {
            classes: vec![ClassReport {
                name: "pier".into(),
                generation: Some(1),
                conditions: vec![Cond::new("Accepted", true, "Accepted", "")],
            }],
            gateways: vec![],
            routes: vec![RouteReport {
                namespace: "app".into(),
                name: "r".into(),
                generation: Some(2),
                parents: vec![ParentReport {
                    parent: ParentRef {
                        name: "gw".into(),
                        ..ParentRef::default()
                    },
                    conditions: vec![Cond::new("Accepted", true, "Accepted", "")],
                }],
            }],
        }
    }

    #[test]
    fn a_route_s_other_controllers_entries_are_kept_and_an_unchanged_status_is_not_rewritten() {
        let other = serde_json::json!({"parentRef": {"name": "theirs"}, "controllerName": "example.com/other",
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        let routes = [route(serde_json::json!({"parents": [other]}))];
        let current = Current {
            classes: &[],
            gateways: &[],
            routes: &routes,
        };
        let writes = plan(
            &report(),
            &current,
            "pier.dev/gateway-controller",
            &[],
            true,
            &time(100),
        );
        assert_eq!(writes.len(), 1);
        let parents = writes[0].status["parents"].as_array().expect("parents");
        assert_eq!(parents.len(), 2, "{parents:?}");
        assert_eq!(parents[0]["controllerName"], "example.com/other");
        assert_eq!(parents[1]["controllerName"], "pier.dev/gateway-controller");
        assert_eq!(parents[1]["conditions"][0]["observedGeneration"], 2);

        // Stored as planned: nothing to write, even later.
        let routes = [route(writes[0].status.clone())];
        let current = Current {
            classes: &[],
            gateways: &[],
            routes: &routes,
        };
        assert!(
            plan(
                &report(),
                &current,
                "pier.dev/gateway-controller",
                &[],
                true,
                &time(200)
            )
            .is_empty()
        );

        // No longer attached to Pier's Gateway: Pier's entry goes, the other stays.
        let empty = Report::default();
        let writes = plan(
            &empty,
            &current,
            "pier.dev/gateway-controller",
            &[],
            true,
            &time(300),
        );
        let parents = writes[0].status["parents"].as_array().expect("parents");
        assert_eq!(parents.len(), 1);
        assert_eq!(parents[0]["controllerName"], "example.com/other");
    }
}
