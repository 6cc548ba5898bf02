//! One module per subcommand; each is orchestration only.

pub mod backup;
pub mod cleanup;
pub mod completions;
pub mod config;
pub mod doctor;
pub mod list;
pub mod man;
pub mod notify;
pub mod restore;
pub mod rotate;
pub mod status;
pub mod sync;
pub mod verify;

use anyhow::Result;

use crate::config::Config;
use crate::error::{exit_kind, ExitKind};
use crate::store::{Store, StoreLock};

/// Takes the store's lock for `command`; a run skipped because another run
/// holds it raises an alert (exit 3 follows).
pub async fn lock_store(cfg: &Config, store: &Store, command: &str) -> Result<StoreLock> {
    let e = match store.lock(command) {
        Ok(lock) => return Ok(lock),
        Err(e) => e,
    };
    if exit_kind(&e) == ExitKind::Locked {
        crate::notify::alert(
            cfg,
            crate::notify::Alert {
                kind: crate::notify::Kind::Locked,
                title: format!(
                    "kbackup {command} of {} skipped: the store is locked",
                    cfg.db.name
                ),
                body: format!("{e:#}"),
            },
        )
        .await;
    }
    Err(e)
}
