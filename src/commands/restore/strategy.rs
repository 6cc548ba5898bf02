//! Executing the plan: through a scratch database and a rename swap (the
//! default), or `--in-place` after a safety backup. Every step that changes
//! the server has its undo guard armed before it runs.

use anyhow::{anyhow, Context, Result};

use super::choose::{Checked, Source};
use super::plan::{Plan, Strategy};
use crate::cleanup;
use crate::config::Config;
use crate::lifecycle::{create_database, create_own_database, drop_database, dropdb_command, swap};
use crate::postgres::{Postgres, RestoreClient};
use crate::readback::{prove_rows, run_pg_restore};
use crate::sql::{ident, retarget};
use crate::store::{human_size, Store};
use crate::take::{self, Target as BackupTarget};

/// What every step works with.
pub struct Job<'a> {
    pub cfg: &'a Config,
    pub rc: &'a RestoreClient,
    pub source: &'a Source,
    pub checked: &'a Checked,
}

/// Runs `plan`. Returns the name the replaced database is kept under, if kept.
pub async fn execute(job: &Job<'_>, store: &Store, plan: &Plan) -> Result<Option<String>> {
    let target = &plan.target;
    match &plan.strategy {
        Strategy::Scratch {
            scratch,
            old,
            drop_old,
        } => via_scratch(job, target, scratch, old.as_deref(), *drop_old).await,
        Strategy::InPlace { safety } => {
            in_place(job, store, target, safety.as_deref()).await?;
            Ok(None)
        }
    }
}

/// Restores into `db` and proves it (every table, every row count).
async fn restore_and_check(job: &Job<'_>, db: &str) -> Result<(usize, u64)> {
    let Job {
        cfg,
        rc,
        source,
        checked,
    } = job;
    let pg = &rc.pg;
    tracing::info!("Restoring into {db}...");
    run_pg_restore(
        cfg,
        rc,
        &source.path,
        &checked.input,
        db,
        &[],
        checked.summary.tables.len(),
    )
    .await?;
    let original = checked.summary.database.clone().unwrap_or_default();
    let properties: Vec<String> = checked
        .summary
        .database_entries
        .properties
        .iter()
        .map(|s| retarget(s, &original, db))
        .collect();
    if !properties.is_empty() {
        pg.admin(&properties, None)
            .await
            .map_err(|e| anyhow!(e))
            .context("restoring the database's own comment, privileges and settings")?;
    }
    tracing::info!("Checking the restored tables against the backup...");
    prove_rows(pg, db, &checked.expected).await
}

/// Steps 2-4 through a scratch database. Returns the kept old database's name.
async fn via_scratch(
    job: &Job<'_>,
    target: &str,
    scratch: &str,
    old: Option<&str>,
    drop_old: bool,
) -> Result<Option<String>> {
    let (cfg, rc, checked) = (job.cfg, job.rc, job.checked);
    let pg = &rc.pg;
    tracing::info!("Creating scratch database {scratch}...");
    // Armed before CREATE DATABASE: whatever ends this run before the swap
    // (an error, a signal) drops the scratch copy, and only if this run made it.
    let undo_scratch = create_own_database(pg, scratch, &checked.summary, rc.server_major).await?;
    if let Err(e) = restore_and_check(job, scratch).await {
        if let Err(d) = drop_database(pg, scratch).await {
            tracing::error!("{d:#}; drop it by hand: {}", dropdb_command(pg, scratch));
        } else {
            undo_scratch.done();
        }
        return Err(e.context(format!(
            "the restore into a scratch database failed; {target} was not touched"
        )));
    }

    if let Some(old) = old {
        // On failure the scratch copy is dropped by its guard, still armed.
        swap(cfg, pg, target, scratch, old).await?;
    } else {
        pg.admin(
            &[format!(
                "ALTER DATABASE {} RENAME TO {}",
                ident(scratch),
                ident(target)
            )],
            None,
        )
        .await
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("cannot rename {scratch} to {target}"))?;
    }
    undo_scratch.done();
    match (old, drop_old) {
        (Some(o), true) => {
            drop_database(pg, o).await?;
            tracing::info!("Dropped the previous database ({o})");
            Ok(None)
        }
        _ => Ok(old.map(String::from)),
    }
}

/// `--in-place`: the seed's drop-and-recreate, for servers where creating a
/// second database is not allowed, made safer by a backup taken first.
async fn in_place(
    job: &Job<'_>,
    store: &Store,
    target: &str,
    safety_label: Option<&str>,
) -> Result<()> {
    let (cfg, rc, checked) = (job.cfg, job.rc, job.checked);
    let pg = &rc.pg;
    let target_exists = safety_label.is_some();
    let safety = if let Some(label) = safety_label {
        let mut scfg = cfg.clone();
        scfg.db.name = target.to_string();
        if target != cfg.db.name {
            scfg.prefix = crate::naming::file_prefix(target);
        }
        let spg = Postgres::new(scfg.db.clone());
        let _lock = store.lock("restore --in-place (safety backup)")?;
        tracing::info!("Taking a safety backup of {target} first...");
        let (path, _, size) = take::take(
            &scfg,
            store,
            &spg,
            &mut BackupTarget::named(label),
            &mut take::Globals::default(),
        )
        .await?;
        tracing::info!("Safety backup: {} ({})", path.display(), human_size(size));
        Some(path)
    } else {
        None
    };
    let undo_hint = match &safety {
        Some(p) => {
            // The exact command, pasteable: the target named (never left to
            // DB_NAME), every argument shell-quoted.
            let path = p.display().to_string();
            let command = shlex::try_join([
                "kbackup",
                "restore",
                "--file",
                path.as_str(),
                "--target-db",
                target,
                "--in-place",
                "--yes",
            ])
            .unwrap_or_else(|_| {
                format!("kbackup restore --file {path} --target-db {target} --in-place --yes")
            });
            format!("The safety backup taken before is {path}: restore it with `{command}`")
        }
        None => String::new(),
    };
    // From the drop on, nothing can put the old database back but the safety
    // backup: if the run stops (an error, a signal), say so plainly.
    let incomplete = cleanup::notice_incomplete(format!(
        "The in-place restore of {target} did not finish: {target} is INCOMPLETE (dropped, partly restored). {}",
        if undo_hint.is_empty() {
            format!("It did not exist before; drop it: {}", dropdb_command(pg, target))
        } else {
            undo_hint.clone()
        }
    ),
        target,
    );
    let result = async {
        if target_exists {
            tracing::info!("Dropping {target}...");
            drop_database(pg, target).await?;
        }
        create_database(pg, target, &checked.summary, rc.server_major).await?;
        restore_and_check(job, target).await
    }
    .await;
    incomplete.done();
    if let Err(e) = result {
        return Err(e.context(format!(
            "in-place restore of {target} failed: {target} is INCOMPLETE. {undo_hint}"
        )));
    }
    if let Some(p) = safety {
        tracing::info!(
            "The safety backup of the previous {target} is {}",
            p.display()
        );
    }
    Ok(())
}
