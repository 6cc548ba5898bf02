//! `kbackup cleanup`: clears what runs that were killed left behind, listing each.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Result};

use crate::cli::CleanupArgs;
use crate::config::Config;
use crate::error::usage;
use crate::leftovers;
use crate::lifecycle::{drop_database, kept_copies};
use crate::postgres::Postgres;
use crate::store::{human_size, Store};

pub async fn run(cfg: &Config, args: &CleanupArgs) -> Result<()> {
    if let Some(age) = &args.old_copies {
        let age = humantime::parse_duration(age)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                usage(format!(
                    "--old-copies {age:?}: expected an age such as 7d or 12h"
                ))
            })?;
        old_copies(cfg, args, age).await?;
    }
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

/// Drops the databases restores kept that are older than `age`, after the
/// operator said yes (on a terminal) or with `--yes`.
async fn old_copies(cfg: &Config, args: &CleanupArgs, age: std::time::Duration) -> Result<()> {
    // Every configured database's server.
    let now = chrono::Local::now().naive_local();
    let mut old = Vec::new();
    for db in cfg.servers() {
        let pg = Postgres::new(db);
        pg.check_container().await?;
        let found: Vec<_> = kept_copies(&pg)
            .await?
            .into_iter()
            .filter(|c| (now - c.replaced_at).to_std().is_ok_and(|a| a > age))
            .collect();
        if found.is_empty() {
            crate::out!(
                "No kept copy older than {} on {}.",
                humantime::format_duration(age),
                pg.describe_server()
            );
        }
        old.extend(found.into_iter().map(|c| (pg.clone(), c)));
    }
    if old.is_empty() {
        return Ok(());
    }
    for (pg, c) in &old {
        crate::out!(
            "{} {} ({}, replaced {}, on {})",
            if args.dry_run {
                "would drop:"
            } else {
                "to drop:"
            },
            c.name,
            human_size(c.size_bytes),
            c.replaced_at.format("%Y-%m-%d %H:%M"),
            pg.describe_server()
        );
    }
    if args.dry_run {
        return Ok(());
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(usage(
                "dropping kept copies needs --yes when stdin is not a terminal (nothing was dropped; \
                 --dry-run lists them)",
            ));
        }
        eprint!(
            "Drop these {} database(s)? Type yes to continue: ",
            old.len()
        );
        std::io::stderr().flush()?;
        let answer = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map(|_| line)
        })
        .await??;
        if answer.trim() != "yes" {
            return Err(anyhow::Error::new(crate::error::Declined(
                "nothing was dropped".into(),
            )));
        }
    }
    for (pg, c) in &old {
        drop_database(pg, &c.name).await?;
        crate::out!("dropped: {}", c.name);
    }
    Ok(())
}
