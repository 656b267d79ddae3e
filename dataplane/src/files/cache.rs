//! A per-worker cache of open files (nginx's `open_file_cache`): the file
//! descriptor, its metadata and its validator headers, keyed by route root
//! and path, so a hot file costs no `open`, `stat` or `close` per request.
//!
//! Invariants:
//! - An entry is used for at most `--file-cache-valid` after it was opened;
//!   then the path is opened again, so a changed or replaced file is served
//!   within that time. `0s` turns the cache off.
//! - A cached descriptor keeps serving the file it opened: a file replaced
//!   by rename keeps a consistent old version until revalidation; a file
//!   truncated in place makes the read fail, which aborts the response (see
//!   `body`), never a short body passed off as complete.
//! - Misses are cached too (`ENOENT` for a missing `.br` sibling), with the
//!   same lifetime.
//! - At most `--file-cache-entries` entries per worker; when full, expired
//!   entries go first, then everything. Each entry holds one descriptor.
//! - Regular files up to `--file-cache-content` bytes also keep their
//!   contents, read when the entry is made, so a hot small file is answered
//!   with one write and no file I/O (at most entries × that size per worker;
//!   `pier_dataplane_file_cache_content_bytes` shows what is held). The
//!   contents, validators and length are one consistent version: an edit
//!   in place shows after revalidation, never mixed with old headers.
//!
//! The cache is thread-local: each worker runs on one thread, so there is
//! no lock and no sharing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::metrics::{CacheCounters, FILE_CONTENT_BYTES as CONTENT_BYTES};

/// Cache settings from the flags.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CacheConfig {
    /// How long an entry is trusted; zero disables the cache.
    pub(crate) valid: Duration,
    /// Most entries per worker.
    pub(crate) max_entries: usize,
    /// Largest file whose contents are kept with its entry; 0 keeps none.
    pub(crate) content_max: u64,
}

/// What a file's type is, for the handler's decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Other,
}

/// An open file with what responses need from its metadata.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) file: File,
    pub(crate) kind: Kind,
    pub(crate) len: u64,
    /// Modification time, whole seconds since the epoch.
    pub(crate) modified: u64,
    /// Strong entity tag, quotes included.
    pub(crate) etag: HeaderValue,
    pub(crate) last_modified: HeaderValue,
    /// From the extension of the path it was opened by.
    pub(crate) content_type: HeaderValue,
    /// The whole file, for small files.
    pub(crate) contents: Option<Bytes>,
}

impl crate::body::Source for Opened {
    fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        if let Some(contents) = &self.contents {
            CONTENT_BYTES.fetch_sub(contents.len() as i64, Relaxed);
        }
    }
}

#[derive(Debug)]
struct Root {
    dir: Result<Arc<File>, Errno>,
    checked: Instant,
    files: HashMap<Box<[u8]>, Entry>,
}

#[derive(Debug)]
struct Entry {
    opened: Result<Arc<Opened>, Errno>,
    checked: Instant,
}

/// One worker's cache.
#[derive(Debug, Default)]
pub(crate) struct FileCache {
    roots: HashMap<Box<Path>, Root>,
    entries: usize,
}

thread_local! {
    static CACHE: RefCell<FileCache> = RefCell::new(FileCache::default());
}

impl FileCache {
    /// Runs `f` with this thread's cache.
    pub(crate) fn with<R>(f: impl FnOnce(&mut FileCache) -> R) -> R {
        CACHE.with_borrow_mut(f)
    }

    /// Opens `rel` below `root`, from the cache when the entry is fresh
    /// at `now`.
    pub(crate) fn open(
        &mut self,
        root: &Path,
        rel: &[u8],
        now: Instant,
        config: &CacheConfig,
        counters: &CacheCounters,
    ) -> Result<Arc<Opened>, Errno> {
        if config.valid.is_zero() {
            counters.misses.fetch_add(1, Relaxed);
            let dir = open_root(root)?;
            return open_beneath(&dir, rel, 0).map(Arc::new);
        }
        let fresh = |checked: Instant| now.saturating_duration_since(checked) < config.valid;
        if let Some(root) = self.roots.get(root)
            && fresh(root.checked)
            && let Some(entry) = root.files.get(rel).filter(|e| fresh(e.checked))
        {
            counters.hits.fetch_add(1, Relaxed);
            return entry.opened.clone();
        }
        counters.misses.fetch_add(1, Relaxed);
        if self.entries >= config.max_entries {
            self.evict(now, config, counters);
        }
        let root_entry = match self.roots.get_mut(root) {
            Some(entry) if fresh(entry.checked) => entry,
            _ => {
                let dir = open_root(root).map(Arc::new);
                if let Err(e) = &dir {
                    tracing::warn!(root = %root.display(), error = %e, "route root cannot be opened");
                }
                let old = self.roots.insert(
                    root.into(),
                    Root {
                        dir,
                        checked: now,
                        files: HashMap::new(),
                    },
                );
                let dropped = old.map_or(0, |old| old.files.len());
                self.entries -= dropped;
                counters.entries.fetch_sub(dropped as i64, Relaxed);
                // Just inserted.
                self.roots.get_mut(root).ok_or(Errno::NOENT)?
            }
        };
        let dir = root_entry.dir.clone()?;
        let opened = open_beneath(&dir, rel, config.content_max).map(Arc::new);
        let entry = Entry {
            opened: opened.clone(),
            checked: now,
        };
        if root_entry.files.insert(rel.into(), entry).is_none() {
            self.entries += 1;
            counters.entries.fetch_add(1, Relaxed);
        }
        opened
    }

    fn evict(&mut self, now: Instant, config: &CacheConfig, counters: &CacheCounters) {
        let before = self.entries;
        for root in self.roots.values_mut() {
            root.files
                .retain(|_, e| now.saturating_duration_since(e.checked) < config.valid);
        }
        self.entries = self.roots.values().map(|r| r.files.len()).sum();
        if self.entries >= config.max_entries {
            self.roots.clear();
            self.entries = 0;
            counters.flushes.fetch_add(1, Relaxed);
        }
        counters
            .entries
            .fetch_sub((before - self.entries) as i64, Relaxed);
    }
}

fn open_root(root: &Path) -> Result<File, Errno> {
    let fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Opens `rel` below `dir`; the kernel refuses any resolution that leaves
/// it (`..`, absolute or escaping symlinks, magic links). Regular files up
/// to `content_max` bytes are read whole.
fn open_beneath(dir: &File, rel: &[u8], content_max: u64) -> Result<Opened, Errno> {
    let rel: &[u8] = if rel.is_empty() { b"." } else { rel };
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let fd = loop {
        match rustix::fs::openat2(dir, rel, flags, Mode::empty(), resolve) {
            // EAGAIN: a concurrent rename raced the lookup; try again.
            Err(Errno::AGAIN | Errno::INTR) => continue,
            other => break other?,
        }
    };
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
    let kind = if meta.is_file() {
        Kind::File
    } else if meta.is_dir() {
        Kind::Dir
    } else {
        Kind::Other
    };
    let modified = u64::try_from(meta.mtime()).unwrap_or(0);
    // Like nginx's: modification time and length, no inode, so replicas
    // serving copies of the same files agree. Precompressed siblings get a
    // suffix so each encoding has its own tag.
    let suffix = match rel.rsplit(|&b| b == b'.').next() {
        Some(b"br") => "-br",
        Some(b"gz") => "-gz",
        _ => "",
    };
    let etag = format!(
        "\"{:x}.{:x}-{:x}{suffix}\"",
        meta.mtime(),
        meta.mtime_nsec(),
        meta.len()
    );
    let last_modified = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(modified));
    let contents = (kind == Kind::File && meta.len() > 0 && meta.len() <= content_max)
        .then(|| read_whole(&file, meta.len()))
        .flatten();
    if let Some(contents) = &contents {
        CONTENT_BYTES.fetch_add(contents.len() as i64, Relaxed);
    }
    Ok(Opened {
        file,
        kind,
        len: meta.len(),
        modified,
        // Hex digits, dots, dashes and an HTTP date are always valid values.
        etag: HeaderValue::try_from(etag).map_err(|_| Errno::INVAL)?,
        last_modified: HeaderValue::try_from(last_modified).map_err(|_| Errno::INVAL)?,
        content_type: super::content_type(rel),
        contents,
    })
}

/// Reads a small file whole; `None` (serve from the descriptor) when it
/// changed length meanwhile or cannot be read.
fn read_whole(file: &File, len: u64) -> Option<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; usize::try_from(len).ok()?];
    file.read_exact_at(&mut buf, 0).ok()?;
    Some(Bytes::from(buf))
}
