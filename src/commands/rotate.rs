//! `kbackup rotate`: the retention policy on its own (see `rotation`).

use std::fmt::Write;

use anyhow::Result;
use chrono::Utc;

use crate::cli::RotateArgs;
use crate::config::Config;
use crate::rotation::{apply, plan, view};
use crate::store::Store;

pub async fn run(cfg: &Config, args: &RotateArgs) -> Result<()> {
    let store = Store::new(cfg.backup_dir.clone());
    let _lock = if args.dry_run {
        None
    } else {
        Some(super::lock_store(cfg, &store, "rotate").await?)
    };
    let backups = store.scan(&cfg.calendar, &cfg.prefix)?;
    let several = cfg.several();
    let mut decisions = Vec::new();
    // A database whose prefix another shares is never rotated (its files
    // cannot be told from the other's).
    let found = crate::databases::recorded(cfg);
    found.warn_failed("Rotation");
    for c in &found.dbs {
        // Each database's own policy, over its own backups (see `owner`).
        decisions.extend(plan(c, &backups, Utc::now()));
    }
    if args.json {
        let views: Vec<_> = decisions.iter().map(|(d, b)| view(d, b)).collect();
        crate::out!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        let mut text = String::new();
        for (d, b) in &decisions {
            let _ = writeln!(
                text,
                "{:6}  {}{}  ({})",
                if d.keep { "keep" } else { "delete" },
                if several {
                    format!("{}: ", b.database())
                } else {
                    String::new()
                },
                b.rel_path,
                d.reasons_text()
            );
        }
        crate::output::block(&text);
        let n = decisions.iter().filter(|(d, _)| !d.keep).count();
        crate::out!(
            "{}: {} to delete, {} kept.",
            if args.dry_run { "Dry run" } else { "Rotation" },
            n,
            decisions.len() - n
        );
    }
    if !args.dry_run {
        if let Err(e) = apply(&store, &decisions) {
            crate::notify::alert(
                cfg,
                crate::notify::Alert {
                    kind: crate::notify::Kind::Rotate,
                    title: format!("Rotation of {} backups failed", cfg.describe_databases()),
                    body: format!("{e:#}"),
                },
            )
            .await;
            return Err(e);
        }
    }
    Ok(())
}
