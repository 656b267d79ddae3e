//! X-Sendfile: a backend authorises a download and hands the file back with
//! a response header; the dataplane drops the backend's body and serves the
//! file itself, with every static feature (ranges, validators,
//! conditionals).
//!
//! - `X-Sendfile: /srv/files/a.iso` names a file system path (lighttpd's
//!   header; `%` is an ordinary byte). `X-Accel-Redirect: /srv/files/a%20b`
//!   names it as a URI path (nginx's header: percent-decoded, query
//!   dropped). Both must name a path below one of the route's
//!   `sendfile.roots`.
//! - The named path is normalised first (`.` and empty segments dropped;
//!   `..`, control bytes and backslashes refused), then matched against the
//!   roots element by element, then opened with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` relative to that
//!   root, so a symlink cannot lead out of it either. Whatever is refused
//!   answers 502, is logged and counted
//!   (`pier_dataplane_sendfile_refused_total`): seed 004's warning about
//!   backends tricked into naming `/etc/passwd`.
//! - With `sendfile` off (no roots) the headers pass through untouched.

use std::borrow::Cow;
use std::os::unix::ffi::OsStrExt;

use std::sync::atomic::Ordering::Relaxed;

use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::body::Body;
use crate::context::Context;
use crate::files::{Escape, FileRequest, StaticFiles};
use crate::http::forward::{append_via, strip_hop_by_hop};
use crate::http::path;

/// lighttpd's header: a file system path.
const X_SENDFILE: HeaderName = HeaderName::from_static("x-sendfile");
/// nginx's header: a URI path.
const X_ACCEL_REDIRECT: HeaderName = HeaderName::from_static("x-accel-redirect");

/// Backend fields that describe the body the backend did not send, or that
/// the file response sets itself.
const REPLACED: [HeaderName; 8] = [
    http::header::CONTENT_LENGTH,
    http::header::CONTENT_RANGE,
    http::header::CONTENT_ENCODING,
    http::header::ETAG,
    http::header::LAST_MODIFIED,
    http::header::ACCEPT_RANGES,
    http::header::DATE,
    http::header::TRANSFER_ENCODING,
];

/// A route's X-Sendfile roots, longest first; empty when the feature is off.
#[derive(Debug, Default)]
pub(crate) struct Roots {
    roots: Box<[StaticFiles]>,
}

/// What a backend response asked for.
#[derive(Debug)]
pub(crate) enum Handoff<'a> {
    /// Serve `rel` (empty or starting with `/`) below `root`.
    File { root: &'a StaticFiles, rel: Vec<u8> },
    /// The header named something that may not be served.
    Refused {
        value: HeaderValue,
        why: &'static str,
    },
}

impl Roots {
    pub(crate) fn new(roots: &[String]) -> Self {
        let mut roots: Vec<&String> = roots.iter().collect();
        roots.sort_by_key(|r| std::cmp::Reverse(r.len()));
        Self {
            roots: roots
                .into_iter()
                .map(|r| StaticFiles::sendfile_root(r))
                .collect(),
        }
    }

    /// Whether the route acts on X-Sendfile at all.
    pub(crate) fn is_enabled(&self) -> bool {
        !self.roots.is_empty()
    }

    /// The file a backend response hands back, if it names one and the
    /// route allows it.
    pub(crate) fn handoff(&self, headers: &HeaderMap) -> Option<Handoff<'_>> {
        if self.roots.is_empty() {
            return None;
        }
        let (value, uri) = match headers.get(X_SENDFILE) {
            Some(value) => (value, false),
            None => (headers.get(X_ACCEL_REDIRECT)?, true),
        };
        let refused = |why| {
            Some(Handoff::Refused {
                value: value.clone(),
                why,
            })
        };
        let normalized: Result<Cow<'_, [u8]>, _> = if uri {
            let Ok(text) = value.to_str() else {
                return refused("is not a valid URI path");
            };
            let path = text.split(['?', '#']).next().unwrap_or(text);
            path::normalize(path)
        } else {
            path::normalize_file(value.as_bytes())
        };
        let named = match normalized {
            Ok(named) => named,
            Err(_) => return refused("is not a clean absolute path"),
        };
        for root in &self.roots {
            if let Some(rel) = below(root.root().as_os_str().as_bytes(), &named) {
                return Some(Handoff::File {
                    root,
                    rel: rel.to_vec(),
                });
            }
        }
        refused("is outside the route's sendfile roots")
    }
}

/// `path` below `root`, element by element: `Some("")` for the root
/// itself, `Some("/x")` below it.
fn below<'p>(root: &[u8], path: &'p [u8]) -> Option<&'p [u8]> {
    if root == b"/" {
        return Some(path);
    }
    let rest = path.strip_prefix(root)?;
    (rest.is_empty() || rest.starts_with(b"/")).then_some(rest)
}

/// The response for a handoff: the named file served as a GET (a HEAD for
/// a HEAD request) with the client's conditional and range headers, the
/// backend's other fields merged in, `Via` appended (the caller runs the
/// route's response filters). A refusal is 502, logged and counted.
pub(crate) fn respond(
    handoff: Handoff<'_>,
    method: &Method,
    client: &HeaderMap,
    mut backend: HeaderMap,
    ctx: &Context,
) -> Result<Response<Body>, StatusCode> {
    let metrics = &ctx.metrics;
    let refuse = |value: &[u8], why: &str| {
        metrics.sendfile_refused.fetch_add(1, Relaxed);
        tracing::warn!(path = %String::from_utf8_lossy(value), why, "X-Sendfile refused");
        StatusCode::BAD_GATEWAY
    };
    let (root, rel) = match handoff {
        Handoff::File { root, rel } => (root, rel),
        Handoff::Refused { value, why } => return Err(refuse(value.as_bytes(), why)),
    };
    let file = FileRequest {
        method,
        headers: client,
        raw_path: "/",
        query: None,
        rel: &rel,
        now: std::time::Instant::now(),
    };
    let mut res = root
        .serve_file(&file, &ctx.files, &metrics.file_cache)
        .map_err(|Escape| refuse(&rel, "leads out of its sendfile root"))?;
    metrics.sendfile_served.fetch_add(1, Relaxed);
    strip_hop_by_hop(&mut backend);
    let headers = res.headers_mut();
    merge(headers, backend);
    if let Some(via) = &ctx.upstream.via {
        append_via(headers, via);
    }
    Ok(res)
}

/// Strips the handoff fields from a backend response (whether or not the
/// route acts on them, they never reach the client when it does).
pub(crate) fn strip(headers: &mut HeaderMap) {
    headers.remove(X_SENDFILE);
    headers.remove(X_ACCEL_REDIRECT);
    let accel: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-accel-"))
        .cloned()
        .collect();
    for name in accel {
        headers.remove(name);
    }
}

/// Adds the backend's own fields to a file response: cookies,
/// `Content-Disposition`, `Cache-Control` and the like. A `Content-Type`
/// the backend chose replaces the one guessed from the file name (except
/// on a multipart range answer, whose type is the multipart one); the file
/// response's own fields win otherwise.
pub(crate) fn merge(file: &mut HeaderMap, mut backend: HeaderMap) {
    strip(&mut backend);
    for name in &REPLACED {
        backend.remove(name);
    }
    let multipart = file
        .get(CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"multipart/"));
    if let Some(chosen) = backend.remove(CONTENT_TYPE)
        && file.contains_key(CONTENT_TYPE)
        && !multipart
    {
        file.insert(CONTENT_TYPE, chosen);
    }
    let own: Vec<HeaderName> = file.keys().cloned().collect();
    for (name, value) in &backend {
        if !own.contains(name) {
            file.append(name, value.clone());
        }
    }
}

#[cfg(test)]
mod tests;
