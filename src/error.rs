//! Exit codes and the error kinds that choose them.
//!
//! Every failure is an `anyhow::Error`; the few that need a specific exit code
//! carry a [`Coded`] somewhere in their chain, and `main` looks for it.

use std::fmt;

/// The documented exit codes (README, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// The operation failed (database unreachable, pg_dump failed, disk full...).
    Failure = 1,
    /// Bad input: an invalid flag, setting or argument. Nothing was changed.
    Usage = 2,
    /// Another kbackup run holds the store's lock. Nothing was changed.
    Locked = 3,
    /// The terminal went away (SIGHUP: an SSH session dropped); partial work was cleaned up.
    Hangup = 129,
    /// Interrupted by SIGINT (Ctrl-C); partial work was cleaned up.
    Interrupted = 130,
    /// Terminated by SIGTERM; partial work was cleaned up.
    Terminated = 143,
}

#[derive(Debug)]
pub struct Coded {
    pub kind: ExitKind,
    pub message: String,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

/// A usage error (exit 2): the message names the input and what to do.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Coded {
        kind: ExitKind::Usage,
        message: message.into(),
    })
}

pub fn locked(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Coded {
        kind: ExitKind::Locked,
        message: message.into(),
    })
}

/// The operator said no at the confirmation prompt (exit 1, and no alert: nothing failed).
#[derive(Debug)]
pub struct Declined(pub String);

impl fmt::Display for Declined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Declined {}

/// Whether a failure deserves an alert: not bad input (the operator sees it
/// at once), not Ctrl-C, not a "no" at the prompt; everything else does.
pub fn alerts(err: &anyhow::Error) -> bool {
    !matches!(exit_kind(err), ExitKind::Usage | ExitKind::Interrupted)
        && !err.chain().any(|e| e.downcast_ref::<Declined>().is_some())
}

/// The exit code for an error: the first [`Coded`] in its chain, else 1.
pub fn exit_kind(err: &anyhow::Error) -> ExitKind {
    err.chain()
        .find_map(|e| e.downcast_ref::<Coded>())
        .map(|c| c.kind)
        .unwrap_or(ExitKind::Failure)
}

/// The hint a full disk gets, once in the chain.
#[derive(Debug)]
struct DiskFull(String);

impl fmt::Display for DiskFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DiskFull {}

/// Whether a write failed because its filesystem is full (no space or no
/// inodes left) or a quota is reached.
pub fn is_disk_full(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) || matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        })
    })
}

/// Adds what to do to an error that a full disk caused (once, however often
/// it is called): the operator reads the fix in the message and the alert.
pub fn explain(err: anyhow::Error, backup_dir: &std::path::Path) -> anyhow::Error {
    if !is_disk_full(&err) || err.chain().any(|e| e.downcast_ref::<DiskFull>().is_some()) {
        return err;
    }
    err.context(DiskFull(format!(
        "the disk is full (no space or no inodes left) where kbackup writes ({}): free space there, or keep fewer \
         backups (BACKUP_KEEP_HOURLY, BACKUP_RETENTION_DAYS); every backup already listed by `kbackup list` is whole",
        backup_dir.display()
    )))
}
