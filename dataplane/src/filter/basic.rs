//! HTTP Basic authentication, a request filter: `Authorization: Basic`
//! checked against the route's users; other requests get 401 with
//! `WWW-Authenticate: Basic realm="…"`. The `Authorization` field still
//! reaches a backend, as with nginx.
//!
//! bcrypt costs milliseconds per check by design, so each worker keeps the
//! last [`CACHE`] `Authorization` values it verified, per filter: a client
//! pays for one check per worker, not one per request. A new snapshot
//! compiles new filters with new ids, so a removed user or a changed
//! password is never admitted from the cache.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use base64::Engine as _;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::htpasswd::{Hash, same};
use crate::body::Body;
use crate::metrics::BASIC_AUTH;

/// `Authorization` values each worker remembers as verified, over every
/// route (oldest replaced first).
pub(crate) const CACHE: usize = 256;

/// Longest `Authorization` value looked at: longer ones are refused.
const MAX_FIELD: usize = 4096;

/// A route's users and its challenge.
#[derive(Debug)]
pub(super) struct Basic {
    /// Unique per compiled filter: the cache key.
    id: u64,
    challenge: HeaderValue,
    /// By name, sorted.
    users: Box<[Entry]>,
}

/// A user's name and hash; `None`: a hash this build cannot verify.
type Entry = (Box<[u8]>, Option<Hash>);

impl Basic {
    /// The compiler checked names, hashes and the realm; a hash that does
    /// not parse here leaves its user unable to sign in, and a realm that
    /// is no header value becomes the default: never more access.
    pub(super) fn new(auth: &pier_snapshot::BasicAuth) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let challenge = HeaderValue::try_from(format!("Basic realm=\"{}\"", auth.realm)).unwrap_or(
            HeaderValue::from_static("Basic realm=\"Authentication Required\""),
        );
        let mut users: Vec<_> = auth
            .users
            .iter()
            .map(|u| (u.name.as_bytes().into(), Hash::parse(&u.hash)))
            .collect();
        users.sort_by(|a: &Entry, b| a.0.cmp(&b.0));
        Self {
            id: IDS.fetch_add(1, Relaxed),
            challenge,
            users: users.into(),
        }
    }

    /// Whether the request carries the user and password of one of the
    /// route's users.
    pub(super) fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(field) = headers.get(AUTHORIZATION).map(HeaderValue::as_bytes) else {
            return self.refused();
        };
        if field.len() > MAX_FIELD {
            return self.refused();
        }
        if SEEN.with_borrow(|seen| seen.has(self.id, field)) {
            BASIC_AUTH.cached.fetch_add(1, Relaxed);
            return true;
        }
        let Some((decoded, colon)) = credentials(field) else {
            return self.refused();
        };
        let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
        let hash = self
            .users
            .binary_search_by(|(name, _)| (**name).cmp(user))
            .ok()
            .and_then(|i| self.users[i].1.as_ref());
        BASIC_AUTH.verified.fetch_add(1, Relaxed);
        if !hash.is_some_and(|h| h.verify(password)) {
            return self.refused();
        }
        SEEN.with_borrow_mut(|seen| seen.put(self.id, field));
        true
    }

    fn refused(&self) -> bool {
        BASIC_AUTH.refused.fetch_add(1, Relaxed);
        false
    }

    /// The 401 a refused request gets.
    pub(super) fn challenge(&self) -> Response<Body> {
        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        res.headers_mut()
            .insert(WWW_AUTHENTICATE, self.challenge.clone());
        res
    }
}

/// A `Basic` credential decoded (scheme without case, RFC 7617), and
/// where its user ends: at the first `:`, the password after it.
fn credentials(field: &[u8]) -> Option<(Vec<u8>, usize)> {
    let (scheme, token) = field.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded, colon))
}

thread_local! {
    static SEEN: RefCell<Seen> = const { RefCell::new(Seen { entries: Vec::new(), next: 0 }) };
}

/// A worker's verified credentials: (filter id, `Authorization` value).
#[derive(Debug)]
struct Seen {
    entries: Vec<(u64, Box<[u8]>)>,
    next: usize,
}

impl Seen {
    fn has(&self, id: u64, field: &[u8]) -> bool {
        self.entries.iter().any(|(i, f)| *i == id && same(f, field))
    }

    fn put(&mut self, id: u64, field: &[u8]) {
        let entry = (id, field.into());
        if self.entries.len() < CACHE {
            self.entries.push(entry);
        } else if let Some(slot) = self.entries.get_mut(self.next) {
            *slot = entry;
            BASIC_AUTH.evicted.fetch_add(1, Relaxed);
        }
        self.next = (self.next + 1) % CACHE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pier_snapshot::{BasicAuth, User};

    fn basic() -> Basic {
        Basic::new(&BasicAuth {
            realm: "Staff only".into(),
            users: vec![
                User {
                    name: "bob".into(),
                    hash: "$apr1$cNOAwpSu$MtBlYKfXHmZtzh7a7jGe1.".into(),
                },
                User {
                    name: "alice".into(),
                    hash: "$2y$05$zFZLl/LUbKpPWxd3/Vwbv.S6Yd/JV6j8QLlvKB9l016BkABUpcjx6".into(),
                },
                User {
                    name: "eve".into(),
                    hash: "not a hash".into(),
                },
            ],
        })
    }

    fn with(field: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(field).expect("a field value"),
        );
        headers
    }

    fn basic_field(user_password: &str) -> HeaderMap {
        let token = base64::engine::general_purpose::STANDARD.encode(user_password);
        with(&format!("Basic {token}"))
    }

    #[test]
    fn users_with_their_password_are_admitted_and_others_challenged() {
        let auth = basic();
        assert!(auth.admits(&basic_field("bob:hunter2")));
        assert!(auth.admits(&basic_field("alice:s3cret!")));
        // Again, from the cache.
        let cached = BASIC_AUTH.cached.load(Relaxed);
        assert!(auth.admits(&basic_field("alice:s3cret!")));
        assert!(BASIC_AUTH.cached.load(Relaxed) > cached);
        for refused in [
            basic_field("bob:hunter3"),
            basic_field("bob:"),
            basic_field("mallory:hunter2"),
            basic_field("eve:not a hash"),
            basic_field("bob"),
            with("Bearer abc"),
            with("Basic !!!"),
            HeaderMap::new(),
        ] {
            assert!(!auth.admits(&refused), "{refused:?}");
        }
        let res = auth.challenge();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            res.headers()[WWW_AUTHENTICATE],
            "Basic realm=\"Staff only\""
        );
    }

    #[test]
    fn the_scheme_is_read_without_case_and_passwords_may_hold_colons() {
        let auth = Basic::new(&BasicAuth {
            realm: "r".into(),
            users: vec![User {
                name: "carol".into(),
                hash: "{SHA}XyRLaTIb/WCdo8CuWc58gPVHl68=".into(),
            }],
        });
        let token = base64::engine::general_purpose::STANDARD.encode("carol:pa:ss");
        assert!(auth.admits(&with(&format!("bAsIc {token}"))));
    }

    #[test]
    fn a_new_filter_trusts_nothing_an_old_one_verified() {
        let old = basic();
        let field = basic_field("bob:hunter2");
        assert!(old.admits(&field));
        // The same users' names, bob's password changed.
        let new = Basic::new(&BasicAuth {
            realm: "r".into(),
            users: vec![User {
                name: "bob".into(),
                hash: "$apr1$abcdefgh$Eqv4oIyMsS.tjfvQCJYY1/".into(),
            }],
        });
        assert!(!new.admits(&field));
    }

    #[test]
    fn the_cache_keeps_its_bound() {
        let mut seen = Seen {
            entries: Vec::new(),
            next: 0,
        };
        for i in 0..(CACHE as u64 * 3) {
            seen.put(i, b"x");
        }
        assert_eq!(seen.entries.len(), CACHE);
        assert!(seen.has(CACHE as u64 * 3 - 1, b"x"));
        assert!(!seen.has(0, b"x"));
    }
}
