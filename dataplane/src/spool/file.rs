//! Spill files behind a trait: the spool writes, reads back, punches out
//! and truncates through [`SpillIo`], so the tests can hand it a faulty
//! filesystem (short writes, `ENOSPC`, no hole punching) and check that
//! nothing queued is lost or corrupted.
//!
//! The real one ([`TmpDir`]) is an unlinked file in `--spill-dir`: made
//! with `O_TMPFILE` (never named, so a crash leaves nothing behind), or on
//! a filesystem without it a named file unlinked at once.

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use rustix::fs::{FallocateFlags, Mode, OFlags};

use super::Budget;

/// One spill file's I/O.
pub(crate) trait SpillIo: Debug + Send + Sync {
    /// Writes at `at`; may write fewer bytes than given (a short write).
    fn write_at(&self, data: &[u8], at: u64) -> io::Result<usize>;
    /// Reads at `at`; may read fewer bytes than asked.
    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize>;
    /// Empties the file.
    fn truncate(&self) -> io::Result<()>;
    /// Gives `at..at + len` back to the filesystem, keeping the size.
    fn punch(&self, at: u64, len: u64) -> io::Result<()>;
    /// Bytes the filesystem holds for the file.
    #[cfg(test)]
    fn allocated(&self) -> u64;
}

/// Where spill files come from.
pub(crate) trait SpillDir: Debug + Send + Sync {
    fn create(&self) -> io::Result<Box<dyn SpillIo>>;
}

/// `--spill-dir`.
#[derive(Debug)]
pub(crate) struct TmpDir(pub(crate) PathBuf);

impl SpillDir for TmpDir {
    fn create(&self) -> io::Result<Box<dyn SpillIo>> {
        let dir = &self.0;
        let flags = OFlags::RDWR | OFlags::CLOEXEC;
        let fd = match rustix::fs::open(dir, flags | OFlags::TMPFILE, Mode::RUSR | Mode::WUSR) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR) => {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                let name = dir.join(format!(
                    ".pier-spill-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Relaxed)
                ));
                let fd = rustix::fs::open(
                    &name,
                    flags | OFlags::CREATE | OFlags::EXCL,
                    Mode::RUSR | Mode::WUSR,
                )?;
                rustix::fs::unlink(&name)?;
                fd
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Box::new(File::from(fd)))
    }
}

impl SpillIo for File {
    fn write_at(&self, data: &[u8], at: u64) -> io::Result<usize> {
        FileExt::write_at(self, data, at)
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, at)
    }

    fn truncate(&self) -> io::Result<()> {
        Ok(rustix::fs::ftruncate(self, 0)?)
    }

    fn punch(&self, at: u64, len: u64) -> io::Result<()> {
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        Ok(rustix::fs::fallocate(self, flags, at, len)?)
    }

    #[cfg(test)]
    fn allocated(&self) -> u64 {
        rustix::fs::fstat(self).map_or(0, |st| st.st_blocks as u64 * 512)
    }
}

/// An open spill file, counted while it lives.
#[derive(Debug)]
pub(crate) struct SpillFile {
    io: Box<dyn SpillIo>,
    budget: Arc<Budget>,
}

impl SpillFile {
    pub(super) fn new(io: Box<dyn SpillIo>, budget: Arc<Budget>) -> Self {
        Self { io, budget }
    }

    /// Writes all of `data` at `at`, through short writes.
    pub(super) fn write_all_at(&self, mut data: &[u8], mut at: u64) -> io::Result<()> {
        while !data.is_empty() {
            match self.io.write_at(data, at) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    data = &data[n..];
                    at += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes at `at`, through short reads.
    pub(crate) fn read_exact_at(&self, mut buf: &mut [u8], mut at: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.io.read_at(buf, at) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    at += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub(super) fn truncate(&self) -> io::Result<()> {
        self.io.truncate()
    }

    pub(super) fn punch(&self, at: u64, len: u64) -> io::Result<()> {
        self.io.punch(at, len)
    }

    /// Bytes the filesystem holds for the file.
    #[cfg(test)]
    pub(super) fn allocated(&self) -> u64 {
        self.io.allocated()
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        self.budget.files.fetch_sub(1, Relaxed);
    }
}
