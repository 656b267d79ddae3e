//! Route status: the conditions a route should carry, computed from the
//! compile result and from what the dataplanes acknowledged. Pure: the
//! reconcile loop compares the result with the stored status and writes
//! only what changed.
//!
//! | condition | `True` | `False` reasons |
//! |---|---|---|
//! | `Accepted` | the route is in the snapshot | `InvalidPath`, `InvalidHost`, `Conflict`, … (from `compile`) |
//! | `ResolvedRefs` | every reference resolved (Services, the `tls` Secret) | `BackendNotFound`, `NoReadyEndpoints`, `InvalidCertificateRef` |
//! | `Programmed` | every connected dataplane serves a snapshot with this generation | `Pending`, `NoDataplanes`, `Invalid` |

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub(crate) const ACCEPTED: &str = "Accepted";
pub(crate) const RESOLVED_REFS: &str = "ResolvedRefs";
pub(crate) const PROGRAMMED: &str = "Programmed";

/// What the compiler made of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Accepted,
    /// Left out of the snapshot: the condition reason and a message.
    Invalid {
        reason: String,
        message: String,
    },
}

/// Where the route's current generation is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Programming {
    /// No dataplane is connected.
    NoDataplanes,
    /// `serving` of `connected` dataplanes serve it.
    Pending { serving: usize, connected: usize },
    /// Every connected dataplane serves it.
    Programmed { connected: usize },
}

/// The conditions a route should have. `lastTransitionTime` is kept from
/// `current` for each condition whose status did not change.
pub(crate) fn desired(
    generation: Option<i64>,
    verdict: &Verdict,
    refs: Option<(&str, &str)>,
    programming: Programming,
    current: &[Condition],
    now: &Time,
) -> Vec<Condition> {
    let condition = |kind: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let since = current
            .iter()
            .find(|c| c.type_ == kind && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: kind.to_owned(),
            status: status.to_owned(),
            observed_generation: generation,
            last_transition_time: since,
            reason: reason.to_owned(),
            message,
        }
    };
    let accepted = match verdict {
        Verdict::Accepted => condition(ACCEPTED, true, "Accepted", "route is valid".to_owned()),
        Verdict::Invalid { reason, message } => condition(ACCEPTED, false, reason, message.clone()),
    };
    let resolved = match refs {
        None => condition(
            RESOLVED_REFS,
            true,
            "ResolvedRefs",
            "all references resolved".to_owned(),
        ),
        Some((reason, message)) => condition(RESOLVED_REFS, false, reason, message.to_owned()),
    };
    let programmed = match (verdict, programming) {
        (Verdict::Invalid { .. }, _) => condition(
            PROGRAMMED,
            false,
            "Invalid",
            "the route is not accepted, so no dataplane serves it".to_owned(),
        ),
        (Verdict::Accepted, Programming::NoDataplanes) => condition(
            PROGRAMMED,
            false,
            "NoDataplanes",
            "no dataplane is connected to the controller".to_owned(),
        ),
        (Verdict::Accepted, Programming::Pending { serving, connected }) => condition(
            PROGRAMMED,
            false,
            "Pending",
            format!("{serving} of {connected} dataplanes serve this generation"),
        ),
        (Verdict::Accepted, Programming::Programmed { connected }) => condition(
            PROGRAMMED,
            true,
            "Programmed",
            format!("served by all {connected} connected dataplanes"),
        ),
    };
    vec![accepted, resolved, programmed]
}

/// A condition whose status changed: worth an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) kind: String,
    pub(crate) ok: bool,
    pub(crate) reason: String,
    pub(crate) message: String,
}

/// The `Accepted` and `Programmed` conditions whose status differs between
/// `current` and `desired` (new ones included). `Programmed` going to
/// `False` only because a new generation is pending is no news.
pub(crate) fn transitions(current: &[Condition], desired: &[Condition]) -> Vec<Transition> {
    desired
        .iter()
        .filter(|d| d.type_ == ACCEPTED || d.type_ == PROGRAMMED)
        .filter(|d| {
            current
                .iter()
                .find(|c| c.type_ == d.type_)
                .is_none_or(|c| c.status != d.status)
        })
        .filter(|d| !(d.type_ == PROGRAMMED && d.status == "False" && d.reason == "Pending"))
        .map(|d| Transition {
            kind: d.type_.clone(),
            ok: d.status == "True",
            reason: d.reason.clone(),
            message: d.message.clone(),
        })
        .collect()
}

/// Whether `current` differs from `desired` in anything but transition
/// times, which `desired` already carries over.
pub(crate) fn differs(current: &[Condition], desired: &[Condition]) -> bool {
    current != desired
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: &str) -> Time {
        Time(s.parse().expect("timestamp"))
    }

    fn find<'a>(conditions: &'a [Condition], kind: &str) -> &'a Condition {
        conditions
            .iter()
            .find(|c| c.type_ == kind)
            .expect("condition present")
    }

    #[test]
    fn an_accepted_route_served_everywhere_is_programmed() {
        let now = time("2026-11-23T10:00:00Z");
        let got = desired(
            Some(3),
            &Verdict::Accepted,
            None,
            Programming::Programmed { connected: 2 },
            &[],
            &now,
        );
        for kind in [ACCEPTED, RESOLVED_REFS, PROGRAMMED] {
            let c = find(&got, kind);
            assert_eq!(c.status, "True", "{kind}");
            assert_eq!(c.observed_generation, Some(3));
            assert_eq!(c.last_transition_time, now);
        }
    }

    #[test]
    fn invalid_routes_say_why_and_are_not_programmed() {
        let now = time("2026-11-23T10:00:00Z");
        let verdict = Verdict::Invalid {
            reason: "Conflict".into(),
            message: "default/other holds www.example.com /".into(),
        };
        let got = desired(
            Some(1),
            &verdict,
            None,
            Programming::NoDataplanes,
            &[],
            &now,
        );
        let accepted = find(&got, ACCEPTED);
        assert_eq!(
            (&*accepted.status, &*accepted.reason),
            ("False", "Conflict")
        );
        assert!(accepted.message.contains("default/other"));
        assert_eq!(find(&got, PROGRAMMED).reason, "Invalid");
    }

    #[test]
    fn transition_times_move_only_when_the_status_changes() {
        let earlier = time("2026-11-23T09:00:00Z");
        let now = time("2026-11-23T10:00:00Z");
        let before = desired(
            Some(1),
            &Verdict::Accepted,
            None,
            Programming::Pending {
                serving: 0,
                connected: 1,
            },
            &[],
            &earlier,
        );
        let after = desired(
            Some(2),
            &Verdict::Accepted,
            None,
            Programming::Programmed { connected: 1 },
            &before,
            &now,
        );
        assert_eq!(find(&after, ACCEPTED).last_transition_time, earlier);
        assert_eq!(find(&after, PROGRAMMED).last_transition_time, now);
        assert!(differs(&before, &after));
        let again = desired(
            Some(2),
            &Verdict::Accepted,
            None,
            Programming::Programmed { connected: 1 },
            &after,
            &time("2026-11-23T11:00:00Z"),
        );
        assert!(!differs(&after, &again), "nothing to write");
    }

    #[test]
    fn transitions_name_what_changed_status() {
        let now = time("2026-11-23T10:00:00Z");
        let programmed = desired(
            Some(1),
            &Verdict::Accepted,
            None,
            Programming::Programmed { connected: 1 },
            &[],
            &now,
        );
        let kinds: Vec<_> = transitions(&[], &programmed)
            .into_iter()
            .map(|t| (t.kind, t.ok))
            .collect();
        assert_eq!(
            kinds,
            [(ACCEPTED.to_owned(), true), (PROGRAMMED.to_owned(), true)]
        );
        assert!(transitions(&programmed, &programmed).is_empty());

        let pending = desired(
            Some(2),
            &Verdict::Accepted,
            None,
            Programming::Pending {
                serving: 0,
                connected: 1,
            },
            &programmed,
            &now,
        );
        assert!(
            transitions(&programmed, &pending).is_empty(),
            "a pending rollout is no news"
        );

        let conflict = desired(
            Some(2),
            &Verdict::Invalid {
                reason: "Conflict".into(),
                message: "taken".into(),
            },
            None,
            Programming::NoDataplanes,
            &programmed,
            &now,
        );
        let got = transitions(&programmed, &conflict);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].ok, &*got[0].reason), (false, "Conflict"));
    }

    #[test]
    fn unresolved_references_say_which_and_why() {
        let now = time("2026-11-23T10:00:00Z");
        let got = desired(
            Some(1),
            &Verdict::Accepted,
            Some((
                "NoReadyEndpoints",
                "service api port 80 has no ready endpoints",
            )),
            Programming::Programmed { connected: 1 },
            &[],
            &now,
        );
        let refs = find(&got, RESOLVED_REFS);
        assert_eq!(
            (&*refs.status, &*refs.reason),
            ("False", "NoReadyEndpoints")
        );
        assert!(refs.message.contains("service api"));
        assert_eq!(find(&got, ACCEPTED).status, "True", "still served");
    }

    #[test]
    fn pending_programming_counts_the_dataplanes() {
        let now = time("2026-11-23T10:00:00Z");
        let got = desired(
            None,
            &Verdict::Accepted,
            None,
            Programming::Pending {
                serving: 1,
                connected: 3,
            },
            &[],
            &now,
        );
        let programmed = find(&got, PROGRAMMED);
        assert_eq!(
            (&*programmed.status, &*programmed.reason),
            ("False", "Pending")
        );
        assert_eq!(
            programmed.message,
            "1 of 3 dataplanes serve this generation"
        );
    }
}
