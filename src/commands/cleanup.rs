//! `kbackup cleanup`: clears what runs that were killed left behind, listing each.

use anyhow::{bail, Result};

use crate::cli::CleanupArgs;
use crate::config::Config;
use crate::leftovers;
use crate::store::Store;

pub async fn run(cfg: &Config, args: &CleanupArgs) -> Result<()> {
    let store = Store::new(cfg.backup_dir.clone());
    // Under the lock: a running backup's temporary files are its own.
    let _lock = if args.dry_run {
        None
    } else {
        // Run by hand: a store locked by a backup is said (exit 3), not alerted.
        Some(store.lock("cleanup")?)
    };
    let found = leftovers::find(cfg).await;
    if found.is_empty() {
        crate::out!("Nothing to clean up: no run left anything behind.");
        return Ok(());
    }
    let mut failed = Vec::new();
    for l in &found {
        let what = l.describe();
        if !l.clearable() {
            crate::out!("note: {what}");
            continue;
        }
        if args.dry_run {
            crate::out!("would clear: {what}");
            continue;
        }
        match leftovers::clear(cfg, l).await {
            Ok(()) => crate::out!("cleared: {what}"),
            Err(e) => {
                crate::out!("FAILED:  {what}: {e:#}");
                failed.push(what);
            }
        }
    }
    if !args.dry_run {
        for p in store.remove_leftovers()? {
            crate::out!("cleared: temporary file {}", p.display());
        }
    }
    if !failed.is_empty() {
        bail!(
            "cleanup could not clear {} item(s): {}",
            failed.len(),
            failed.join("; ")
        );
    }
    Ok(())
}
