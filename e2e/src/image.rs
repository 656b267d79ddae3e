//! The Pier image and the pause image, built here with no registry by
//! `e2e/scripts/image.sh` (Debian-made base images, the repository's own
//! Dockerfile), as a docker-save tarball for the node's containerd.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::HarnessError;
use crate::logs::tail;

/// The image the chart is installed with (`image.repository`, `image.tag`).
pub const PIER_REPOSITORY: &str = "pier.local/pier";
/// Its tag.
pub const PIER_TAG: &str = "dev";

/// Builds the images (reusing Docker's layer and cargo caches, so an
/// unchanged tree takes seconds) and returns the tarball holding both.
///
/// # Errors
/// [`HarnessError::Command`] when the script fails, quoting its log.
pub fn build() -> Result<PathBuf, HarnessError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image.sh");
    let cache = crate::binaries::cache_dir().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&cache)
        .map_err(|e| HarnessError::io(format!("creating {}", cache.display()), e))?;
    let log = cache.join("image.log");
    let err = std::fs::File::create(&log)
        .map_err(|e| HarnessError::io(format!("creating {}", log.display()), e))?;
    let started = Instant::now();
    tracing::info!(log = %log.display(), "building the images; the first build takes many minutes");
    let out = Command::new("bash")
        .arg(&script)
        .env("PIER_E2E_CACHE", &cache)
        .stdin(Stdio::null())
        .stderr(err)
        .output()
        .map_err(|e| HarnessError::io(format!("running {}", script.display()), e))?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            command: format!("bash {}", script.display()),
            output: format!("last lines of {}:\n{}", log.display(), tail(&log, 40)),
        });
    }
    let tarball = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    tracing::info!(seconds = started.elapsed().as_secs(), tarball = %tarball.display(), "images built");
    Ok(tarball)
}
