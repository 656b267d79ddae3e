//! Static files: the `StaticRoute` handler.
//!
//! ```text
//!  request ─► method ─► hidden? ─► open beneath root ─► dir? ─► index / 301 / 403
//!                                   (openat2 BENEATH)     │
//!                                                         └► file ─► sibling .br/.gz
//!                                                                  ─► preconditions, ranges
//!                                                                  ─► 200 / 206 / 304 / 412 / 416
//! ```
//!
//! Every file is opened with `openat2(RESOLVE_BENEATH)` relative to the
//! route's root, so the kernel refuses `..` and symlinks that lead outside
//! the root, however the path was spelled. File I/O is plain blocking calls
//! on the worker thread, as in nginx without `aio`: for files in the page
//! cache that is far cheaper than a hop to a thread pool. Bodies are read one
//! bounded chunk at a time.

mod cache;
mod conditional;
mod encoding;
mod range;

use std::borrow::Cow;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_RANGE, CONTENT_TYPE, ETAG, LAST_MODIFIED, LOCATION, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use pier_snapshot::StaticAction;
use rustix::io::Errno;

pub(crate) use self::cache::CacheConfig;
use self::cache::Opened;
use self::cache::{FileCache, Kind};
use self::conditional::{Outcome, Validators};
use self::encoding::Coding;
use crate::body::Body;
use crate::http::path;
use crate::metrics::CacheCounters;

/// Per-process limits of file serving.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FileLimits {
    /// Bytes read from a file per body chunk.
    pub(crate) chunk: usize,
    /// Most ranges honoured in one request; more and the whole file is sent.
    pub(crate) max_ranges: usize,
    /// The open-file cache.
    pub(crate) cache: CacheConfig,
}

/// A compiled `StaticRoute` action, or an X-Sendfile root.
#[derive(Debug)]
pub(crate) struct StaticFiles {
    root: Box<Path>,
    index: Box<[u8]>,
    cache_control: Option<HeaderValue>,
    precompressed: bool,
    fallback: Option<Box<[u8]>>,
    /// X-Sendfile: regular files only (a directory is 404, never an index
    /// or a redirect), and a path that leaves the root is an [`Escape`].
    files_only: bool,
}

/// X-Sendfile named a file outside its root: through a symlink, or a
/// magic link. The response is refused (502), never served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Escape;

/// What the handler needs from the request.
#[derive(Debug)]
pub(crate) struct FileRequest<'a> {
    pub(crate) method: &'a Method,
    pub(crate) headers: &'a HeaderMap,
    /// The request path as received, for redirects.
    pub(crate) raw_path: &'a str,
    pub(crate) query: Option<&'a str>,
    /// The normalised path below the route's prefix: empty or starting with `/`.
    pub(crate) rel: &'a [u8],
    /// When the request arrived; open-file cache entries are checked against it.
    pub(crate) now: Instant,
}

/// Why no file is served: a status, a redirect adding the slash a
/// directory needs, or (X-Sendfile) a path leading out of the root.
enum Refusal {
    Status(StatusCode),
    AddSlash,
    Escape,
}

/// A file found for a request.
struct Found<'r> {
    opened: Arc<Opened>,
    /// The path opened, relative to the root; its extension gives the type.
    /// Borrowed from the request unless an index or fallback was appended.
    name: Cow<'r, [u8]>,
}

/// Opens paths below one route's root through the worker's cache.
struct Opener<'a> {
    cache: &'a mut FileCache,
    now: Instant,
    root: &'a Path,
    config: &'a CacheConfig,
    counters: &'a CacheCounters,
}

impl Opener<'_> {
    fn open(&mut self, rel: &[u8]) -> Result<Arc<Opened>, Errno> {
        self.cache
            .open(self.root, rel, self.now, self.config, self.counters)
    }
}

impl StaticFiles {
    pub(crate) fn new(action: &StaticAction) -> Self {
        Self {
            root: Path::new(&action.root).into(),
            index: action.index.as_bytes().into(),
            // The compiler already refused values with control characters.
            cache_control: action
                .cache_control
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok()),
            precompressed: action.precompressed,
            fallback: action.fallback.as_deref().map(|f| f.as_bytes().into()),
            files_only: false,
        }
    }

    /// An X-Sendfile root: plain files below `root`, nothing else.
    pub(crate) fn sendfile_root(root: &str) -> Self {
        Self {
            root: Path::new(root).into(),
            index: Box::new([]),
            cache_control: None,
            precompressed: false,
            fallback: None,
            files_only: true,
        }
    }

    /// The root directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Answers one request.
    pub(crate) fn serve(
        &self,
        req: &FileRequest<'_>,
        limits: &FileLimits,
        counters: &CacheCounters,
    ) -> Response<Body> {
        let is_get = *req.method == Method::GET;
        if !is_get && *req.method != Method::HEAD {
            let mut res = status(StatusCode::METHOD_NOT_ALLOWED);
            res.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        match self.serve_as(req, is_get, limits, counters) {
            Ok(res) => res,
            // Only `files_only` roots see escapes; a route answers 404.
            Err(Escape) => status(StatusCode::NOT_FOUND),
        }
    }

    /// Answers with the file an X-Sendfile header named (`req.rel`, below
    /// this root), as a GET would, or a HEAD for a HEAD request: ranges and
    /// conditionals included, whatever the method the backend answered.
    pub(crate) fn serve_file(
        &self,
        req: &FileRequest<'_>,
        limits: &FileLimits,
        counters: &CacheCounters,
    ) -> Result<Response<Body>, Escape> {
        self.serve_as(req, *req.method != Method::HEAD, limits, counters)
    }

    fn serve_as(
        &self,
        req: &FileRequest<'_>,
        is_get: bool,
        limits: &FileLimits,
        counters: &CacheCounters,
    ) -> Result<Response<Body>, Escape> {
        if path::is_hidden(req.rel) {
            return Ok(status(StatusCode::NOT_FOUND));
        }
        FileCache::with(|cache| {
            let mut opener = Opener {
                cache,
                now: req.now,
                root: &self.root,
                config: &limits.cache,
                counters,
            };
            match self.find(&mut opener, req) {
                Ok(found) => Ok(self.respond(&mut opener, found, req, is_get, limits)),
                Err(Refusal::Status(code)) => Ok(status(code)),
                Err(Refusal::AddSlash) => Ok(redirect_to_slash(req)),
                Err(Refusal::Escape) => Err(Escape),
            }
        })
    }

    /// Finds the file for a request: the path itself, a directory's index,
    /// or the fallback.
    fn find<'r>(
        &self,
        opener: &mut Opener<'_>,
        req: &FileRequest<'r>,
    ) -> Result<Found<'r>, Refusal> {
        let rel = req.rel.strip_prefix(b"/").unwrap_or(req.rel);
        let opened = match opener.open(rel) {
            Ok(opened) => opened,
            Err(e) => return self.missing(opener, e),
        };
        match opened.kind {
            Kind::File => {
                return Ok(Found {
                    opened,
                    name: Cow::Borrowed(rel),
                });
            }
            Kind::Other => return Err(Refusal::Status(StatusCode::NOT_FOUND)),
            Kind::Dir if self.files_only => return Err(Refusal::Status(StatusCode::NOT_FOUND)),
            Kind::Dir if !req.rel.ends_with(b"/") => return Err(Refusal::AddSlash),
            Kind::Dir => {}
        }
        let mut name = rel.to_vec();
        name.extend_from_slice(&self.index);
        match opener.open(&name) {
            Ok(opened) if opened.kind == Kind::File => Ok(Found {
                opened,
                name: Cow::Owned(name),
            }),
            Ok(_) | Err(Errno::NOENT | Errno::NOTDIR) => {
                Err(Refusal::Status(StatusCode::FORBIDDEN))
            }
            Err(e) => Err(Refusal::Status(error_status(e))),
        }
    }

    fn missing(&self, opener: &mut Opener<'_>, e: Errno) -> Result<Found<'static>, Refusal> {
        // `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` refuses what
        // leads out of the root with EXDEV (ELOOP for magic links).
        if self.files_only && matches!(e, Errno::XDEV | Errno::LOOP) {
            return Err(Refusal::Escape);
        }
        if !matches!(e, Errno::NOENT | Errno::NOTDIR) {
            return Err(Refusal::Status(error_status(e)));
        }
        let Some(fallback) = &self.fallback else {
            return Err(Refusal::Status(StatusCode::NOT_FOUND));
        };
        let name = fallback.strip_prefix(b"/").unwrap_or(fallback).to_vec();
        match opener.open(&name) {
            Ok(opened) if opened.kind == Kind::File => Ok(Found {
                opened,
                name: Cow::Owned(name),
            }),
            Ok(_) => Err(Refusal::Status(StatusCode::NOT_FOUND)),
            Err(e) => Err(Refusal::Status(error_status(e))),
        }
    }

    fn respond(
        &self,
        opener: &mut Opener<'_>,
        found: Found<'_>,
        req: &FileRequest<'_>,
        is_get: bool,
        limits: &FileLimits,
    ) -> Response<Body> {
        let content_type = found.opened.content_type.clone();
        let (file, coding) = match self.precompressed_sibling(opener, &found.name, req.headers) {
            Some((file, coding)) => (file, Some(coding)),
            None => (found.opened, None),
        };
        let len = file.len;
        let validators = Validators {
            etag: file.etag.to_str().unwrap_or(""),
            modified: file.modified,
            len,
        };
        let outcome = conditional::evaluate(is_get, req.headers, &validators, limits.max_ranges);

        let mut res = Response::new(Body::empty());
        let headers = res.headers_mut();
        headers.insert(ETAG, file.etag.clone());
        headers.insert(LAST_MODIFIED, file.last_modified.clone());
        if let Some(cache_control) = &self.cache_control {
            headers.insert(CACHE_CONTROL, cache_control.clone());
        }
        if self.precompressed {
            headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));

        match outcome {
            Outcome::PreconditionFailed => {
                *res.status_mut() = StatusCode::PRECONDITION_FAILED;
                res.headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(0));
            }
            Outcome::NotModified => *res.status_mut() = StatusCode::NOT_MODIFIED,
            Outcome::Unsatisfiable => {
                *res.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                let headers = res.headers_mut();
                if let Ok(range) = HeaderValue::try_from(format!("bytes */{len}")) {
                    headers.insert(CONTENT_RANGE, range);
                }
                headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
            }
            Outcome::Full => {
                let headers = res.headers_mut();
                headers.insert(CONTENT_TYPE, content_type);
                if let Some(coding) = coding {
                    headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
                }
                headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
                if is_get && len > 0 {
                    *res.body_mut() = region(file, 0, len, limits.chunk);
                }
            }
            Outcome::Partial(ranges) => {
                *res.status_mut() = StatusCode::PARTIAL_CONTENT;
                let headers = res.headers_mut();
                if let Some(coding) = coding {
                    headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
                }
                if let [range] = ranges[..] {
                    headers.insert(CONTENT_TYPE, content_type);
                    let value = format!("bytes {}-{}/{len}", range.start, range.end);
                    if let Ok(value) = HeaderValue::try_from(value) {
                        headers.insert(CONTENT_RANGE, value);
                    }
                    headers.insert(CONTENT_LENGTH, HeaderValue::from(range.len()));
                    *res.body_mut() = region(file, range.start, range.len(), limits.chunk);
                } else {
                    let boundary = format!("{:016x}", RandomState::new().hash_one(len));
                    let mut parts = Vec::with_capacity(ranges.len());
                    let mut total = 0;
                    for (i, range) in ranges.iter().enumerate() {
                        let lead = if i == 0 { "" } else { "\r\n" };
                        let header = format!(
                            "{lead}--{boundary}\r\nContent-Type: {}\r\nContent-Range: bytes {}-{}/{len}\r\n\r\n",
                            content_type.to_str().unwrap_or("application/octet-stream"),
                            range.start,
                            range.end
                        );
                        total += header.len() as u64 + range.len();
                        parts.push((Bytes::from(header), range.start, range.len()));
                    }
                    let closing = Bytes::from(format!("\r\n--{boundary}--\r\n"));
                    total += closing.len() as u64;
                    let multipart = format!("multipart/byteranges; boundary={boundary}");
                    if let Ok(value) = HeaderValue::try_from(multipart) {
                        headers.insert(CONTENT_TYPE, value);
                    }
                    headers.insert(CONTENT_LENGTH, HeaderValue::from(total));
                    *res.body_mut() = Body::multipart(file, parts, closing, limits.chunk);
                }
            }
        }
        if !is_get {
            *res.body_mut() = Body::empty();
        }
        res
    }

    /// Opens `NAME.br` or `NAME.gz` when the route allows it and the client
    /// accepts that coding, best coding first.
    fn precompressed_sibling(
        &self,
        opener: &mut Opener<'_>,
        name: &[u8],
        headers: &HeaderMap,
    ) -> Option<(Arc<Opened>, Coding)> {
        if !self.precompressed {
            return None;
        }
        let accept = headers.get(ACCEPT_ENCODING)?;
        let mut sibling = Vec::with_capacity(name.len() + 3);
        encoding::preferred(accept.as_bytes()).find_map(|coding| {
            sibling.clear();
            sibling.extend_from_slice(name);
            sibling.extend_from_slice(coding.suffix());
            match opener.open(&sibling) {
                Ok(opened) if opened.kind == Kind::File => Some((opened, coding)),
                _ => None,
            }
        })
    }
}

/// A region of a file as a body: a slice of the cached contents of a small
/// file, or the region of its descriptor.
fn region(file: Arc<Opened>, start: u64, len: u64, chunk: usize) -> Body {
    let cached = file.contents.as_ref().and_then(|contents| {
        let start = usize::try_from(start).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        (end <= contents.len()).then(|| contents.slice(start..end))
    });
    match cached {
        Some(bytes) => Body::bytes(bytes),
        None => Body::file(file, start, len, chunk),
    }
}

/// Maps an open error to a status. Escapes (`EXDEV`, `ELOOP`) look like
/// missing files, so they reveal nothing about what lies outside the root.
fn error_status(e: Errno) -> StatusCode {
    match e {
        Errno::NOENT | Errno::NOTDIR | Errno::XDEV | Errno::LOOP | Errno::NAMETOOLONG => {
            StatusCode::NOT_FOUND
        }
        Errno::ACCESS | Errno::PERM => StatusCode::FORBIDDEN,
        e => {
            tracing::warn!(error = %e, "opening a file failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// `Content-Type` from the file extension; text types say UTF-8.
fn content_type(name: &[u8]) -> HeaderValue {
    let file = name.rsplit(|&b| b == b'/').next().unwrap_or_default();
    let ext = file
        .iter()
        .rposition(|&b| b == b'.')
        .and_then(|dot| std::str::from_utf8(&file[dot + 1..]).ok())
        .unwrap_or("");
    // Lower-cased on the stack: this runs on every request.
    let mut lower = [0u8; 8];
    let ext = match lower.get_mut(..ext.len()) {
        Some(buf) => {
            buf.copy_from_slice(ext.as_bytes());
            buf.make_ascii_lowercase();
            std::str::from_utf8(buf).unwrap_or("")
        }
        // Longer extensions are not in the table; mime_guess ignores case.
        None => ext,
    };
    let mime = match ext {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "wasm" => "application/wasm",
        "" => "application/octet-stream",
        other => mime_guess::from_ext(other)
            .first_raw()
            .unwrap_or("application/octet-stream"),
    };
    HeaderValue::from_static(mime)
}

fn redirect_to_slash(req: &FileRequest<'_>) -> Response<Body> {
    // One leading slash only: `//host` would make the redirect leave the site.
    let path = req.raw_path.trim_start_matches('/');
    let mut location = String::with_capacity(path.len() + 2);
    location.push('/');
    location.push_str(path);
    location.push('/');
    if let Some(query) = req.query {
        location.push('?');
        location.push_str(query);
    }
    let mut res = status(StatusCode::MOVED_PERMANENTLY);
    if let Ok(location) = HeaderValue::try_from(location) {
        res.headers_mut().insert(LOCATION, location);
    }
    res
}

/// An empty response with a status.
pub(crate) fn status(code: StatusCode) -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = code;
    res
}
