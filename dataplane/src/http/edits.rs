//! A route's header edits (`requestHeaders`, `responseHeaders`), checked
//! once when the snapshot is compiled and applied as remove, then set, then
//! add.

use http::{HeaderMap, HeaderName, HeaderValue};
use pier_snapshot::HeaderEdits;

/// Header edits ready to apply.
#[derive(Debug, Default)]
pub(crate) struct Edits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Edits {
    pub(crate) fn new(edits: &HeaderEdits) -> Self {
        // The compiler checked names and values; anything still refused
        // here is skipped rather than sent.
        let pair = |(n, v): &(String, String)| {
            Some((
                HeaderName::from_bytes(n.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        };
        Self {
            set: edits.set.iter().filter_map(pair).collect(),
            add: edits.add.iter().filter_map(pair).collect(),
            remove: edits
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    /// True when there is nothing to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Whether a field of this name is removed or replaced.
    pub(crate) fn drops(&self, name: &HeaderName) -> bool {
        self.remove.contains(name) || self.set.iter().any(|(n, _)| n == name)
    }

    /// The fields a request sent upstream ends with: those set, then
    /// those added (what they replace was left out already).
    pub(crate) fn written(&self) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        self.set.iter().chain(&self.add)
    }

    /// Applies remove, then set, then add.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_remove_then_set_then_add() {
        let edits = Edits::new(&HeaderEdits {
            set: vec![("x-env".into(), "prod".into())],
            add: vec![("x-tag".into(), "b".into())],
            remove: vec!["server".into()],
        });
        let mut headers = HeaderMap::new();
        headers.insert("server", HeaderValue::from_static("backend"));
        headers.insert("x-env", HeaderValue::from_static("dev"));
        headers.insert("x-tag", HeaderValue::from_static("a"));
        edits.apply(&mut headers);
        assert!(headers.get("server").is_none());
        assert_eq!(headers["x-env"], "prod");
        let tags: Vec<_> = headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
    }
}
