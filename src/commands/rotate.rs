//! `kbackup rotate`: the retention policy on its own; also the last step of `backup`.

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::RotateArgs;
use crate::config::Config;
use crate::naming::Tier;
use crate::retention::{self, Candidate, Decision};
use crate::store::{Backup, Store};

/// The decisions for this database's files (its prefix); other prefixes sharing
/// the folder are never touched.
pub fn plan(
    cfg: &Config,
    backups: &[Backup],
    now: DateTime<Utc>,
) -> Vec<(Decision<usize>, Backup)> {
    let candidates: Vec<Candidate<usize>> = backups
        .iter()
        .enumerate()
        .filter(|(_, b)| b.parsed.prefix == cfg.prefix)
        .map(|(i, b)| Candidate {
            key: i,
            tier: b.tier,
            time: b.time.with_timezone(&Utc),
        })
        .collect();
    let mut decisions: Vec<_> = retention::plan(&candidates, &cfg.policy, now)
        .into_iter()
        .map(|d| {
            let b = backups[d.key].clone();
            (d, b)
        })
        .collect();
    decisions.sort_by(|a, b| a.0.tier.cmp(&b.0.tier).then(b.0.time.cmp(&a.0.time)));
    decisions
}

#[derive(Debug, Serialize)]
pub struct DecisionView {
    pub path: String,
    pub tier: Tier,
    pub time: String,
    pub keep: bool,
    pub reasons: Vec<retention::Reason>,
    pub why: String,
}

pub fn view(d: &Decision<usize>, b: &Backup) -> DecisionView {
    DecisionView {
        path: b.rel_path.clone(),
        tier: d.tier,
        time: b.time.to_rfc3339(),
        keep: d.keep,
        reasons: d.reasons.clone(),
        why: d.reasons_text(),
    }
}

/// Deletes what the plan says to delete; returns how many files went.
pub fn apply(store: &Store, decisions: &[(Decision<usize>, Backup)]) -> Result<usize> {
    let mut deleted = 0;
    for (d, b) in decisions.iter().filter(|(d, _)| !d.keep) {
        store.delete(b)?;
        tracing::info!("Deleted {} ({})", b.rel_path, d.reasons_text());
        deleted += 1;
    }
    Ok(deleted)
}

pub async fn run(cfg: &Config, args: &RotateArgs) -> Result<()> {
    let store = Store::new(cfg.backup_dir.clone());
    let _lock = if args.dry_run {
        None
    } else {
        Some(super::lock_store(cfg, &store, "rotate").await?)
    };
    let backups = store.scan(&cfg.calendar, &cfg.prefix)?;
    let decisions = plan(cfg, &backups, Utc::now());
    if args.json {
        let views: Vec<_> = decisions.iter().map(|(d, b)| view(d, b)).collect();
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        for (d, b) in &decisions {
            println!(
                "{:6}  {}  ({})",
                if d.keep { "keep" } else { "delete" },
                b.rel_path,
                d.reasons_text()
            );
        }
        let n = decisions.iter().filter(|(d, _)| !d.keep).count();
        println!(
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
                    title: format!("Rotation of {} backups failed", cfg.db.name),
                    body: format!("{e:#}"),
                },
            )
            .await;
            return Err(e);
        }
    }
    Ok(())
}
