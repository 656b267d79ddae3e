//! A child process whose output goes to a log file and which is killed when
//! dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::HarnessError;
use crate::logs::tail;

/// How many log lines error messages quote.
pub(crate) const TAIL_LINES: usize = 30;

/// A running control-plane component.
#[derive(Debug)]
pub(crate) struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args`; stdout and stderr both go to `log`.
    pub(crate) fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Self, HarnessError> {
        let out = File::create(&log)
            .map_err(|e| HarnessError::io(format!("creating {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| HarnessError::io(format!("duplicating {}", log.display()), e))?;
        tracing::debug!(component = name, program = %program.display(), ?args, "starting");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| HarnessError::io(format!("starting {name} ({})", program.display()), e))?;
        Ok(Self { name, child, log })
    }

    /// The exit status if the process has ended.
    pub(crate) fn exit_status(&mut self) -> Result<Option<ExitStatus>, HarnessError> {
        self.child
            .try_wait()
            .map_err(|e| HarnessError::io(format!("checking on {}", self.name), e))
    }

    /// The error for a process that ended while it should be running.
    pub(crate) fn exited(&self, status: ExitStatus) -> HarnessError {
        HarnessError::Exited {
            component: self.name,
            status,
            log: self.log.clone(),
            tail: self.log_tail(),
        }
    }

    /// The last lines of the log.
    pub(crate) fn log_tail(&self) -> String {
        tail(&self.log, TAIL_LINES)
    }

    /// The whole log so far (for port-conflict detection), empty if unreadable.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log file.
    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// Kills the process and reaps it. Idempotent.
    pub(crate) fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGKILL: the data dir is thrown away, nothing needs flushing.
            if let Err(e) = self.child.kill() {
                tracing::warn!(component = self.name, error = %e, "kill failed");
            }
        }
        if let Err(e) = self.child.wait() {
            tracing::warn!(component = self.name, error = %e, "wait failed");
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}
