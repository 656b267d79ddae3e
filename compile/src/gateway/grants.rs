//! ReferenceGrant: a reference into another namespace is allowed only when
//! a grant in that namespace names the referrer's kind and namespace and
//! the target's kind (and name, if it gives one).

use std::sync::Arc;

use pier_crds::gateway::ReferenceGrant;

use super::GROUP;

/// The ReferenceGrants in scope.
#[derive(Debug)]
pub(super) struct Grants<'a>(pub(super) &'a [Arc<ReferenceGrant>]);

impl Grants<'_> {
    /// Whether a `from_kind` (of Gateway API's group) in `from_ns` may refer
    /// to `to_group`/`to_kind` `to_ns/to_name`.
    pub(super) fn allows(
        &self,
        from_kind: &str,
        from_ns: &str,
        to_group: &str,
        to_kind: &str,
        to_ns: &str,
        to_name: &str,
    ) -> bool {
        self.0.iter().any(|grant| {
            grant.metadata.namespace.as_deref() == Some(to_ns)
                && grant
                    .spec
                    .from
                    .iter()
                    .any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_ns)
                && grant.spec.to.iter().any(|t| {
                    t.group == to_group
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n == to_name)
                })
        })
    }
}
