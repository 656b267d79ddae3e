//! A route's client access lists (`access.allow` / `access.deny`, the
//! Ingress `whitelist-source-range` and `denylist-source-range`).

use std::net::IpAddr;

use pier_snapshot::cidr::Cidr;

/// Networks refused, then networks admitted.
#[derive(Debug)]
pub(super) struct Access {
    deny: Box<[Cidr]>,
    /// `None`: every client not denied.
    allow: Option<Box<[Cidr]>>,
}

impl Access {
    /// `None` when the route has no lists. The compiler checked every
    /// network; one that would not parse here is dropped, which never
    /// admits more: an allow list left empty admits nobody.
    pub(super) fn new(allow: &[String], deny: &[String]) -> Option<Self> {
        if allow.is_empty() && deny.is_empty() {
            return None;
        }
        let parse = |list: &[String]| -> Box<[Cidr]> {
            list.iter().filter_map(|c| Cidr::parse(c).ok()).collect()
        };
        Some(Self {
            deny: parse(deny),
            allow: (!allow.is_empty()).then(|| parse(allow)),
        })
    }

    /// Whether a client may use the route. An unknown address is refused:
    /// a list fails closed.
    pub(super) fn admits(&self, client: Option<IpAddr>) -> bool {
        let Some(ip) = client else {
            return false;
        };
        if self.deny.iter().any(|net| net.contains(ip)) {
            return false;
        }
        self.allow
            .as_ref()
            .is_none_or(|allow| allow.iter().any(|net| net.contains(ip)))
    }
}
