//! `kbackup restore`: choose a backup, prove it, and swap it in without ever
//! losing the current database.
//!
//! 1. The file is checked before anything else: its checksum against its
//!    manifest, and a full read of the archive (complete, row counts agree).
//! 2. It is restored into a new scratch database on the same server.
//! 3. The scratch database is checked: pg_restore's status, every table present,
//!    every table's row count equal to the backup's.
//! 4. Only then is the target closed to new connections, its sessions ended, and
//!    in one transaction renamed to `<target>_pre_restore_<time>` while the
//!    scratch database takes its name. The old database is kept unless --drop-old.
//!
//! Any failure before step 4 drops the scratch database and leaves the target
//! untouched; Ctrl-C does the same (see `cleanup`).

mod choose;
mod plan;
mod strategy;

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use chrono::{DateTime, FixedOffset, Utc};

use crate::archive::TableData;
use crate::cleanup;
use crate::cli::RestoreArgs;
use crate::config::Config;
use crate::error::usage;
use crate::postgres::Postgres;
use crate::readback::Feed;
use crate::roles::{create_missing_roles, missing_roles, roles_message};
use crate::store::{human_size, Store};
use choose::{Checked, Source};
use plan::{Plan, Strategy};

/// How long a restore waits for a backup of its target (whose dump the swap
/// must not end) before giving up (exit 3).
const LOCK_WAIT: Duration = Duration::from_secs(30 * 60);

pub async fn run(cfg: &Config, args: &RestoreArgs) -> Result<()> {
    if args.all {
        return run_all(cfg, args).await;
    }
    if cfg.several() {
        let names: Vec<String> = crate::databases::recorded(cfg)
            .all()
            .into_iter()
            .map(|c| c.db.name)
            .collect();
        return Err(usage(format!(
            "restore: several databases are configured ({}{}); restore refuses to guess: pass --db NAME \
             for one of them, or --all for each",
            cfg.describe_databases(),
            if matches!(cfg.databases, crate::config::Databases::All { .. }) {
                format!(
                    "; the last backup run found: {}",
                    if names.is_empty() { "none yet".into() } else { names.join(", ") }
                )
            } else {
                String::new()
            }
        )));
    }
    run_one(cfg, args).await
}

/// `restore --all`: every configured database in turn, each through the safe
/// path; one failing does not stop the others; exit 1 when any failed.
async fn run_all(cfg: &Config, args: &RestoreArgs) -> Result<()> {
    let found = crate::databases::recorded(cfg);
    let dbs = found.all();
    if dbs.is_empty() {
        return Err(usage(
            "restore --all: no database is known: under DB_NAME=all the databases are the ones a backup run \
             found, and none has run with this store; pass --db NAME instead",
        ));
    }
    // A key missing for any database stops the run before anything (exit 2).
    if crate::crypto::identities().is_none() {
        let store = Store::new(cfg.backup_dir.clone());
        for c in &found.dbs {
            if let Ok(source) = choose::local(c, &store, args) {
                if crate::crypto::is_age(&source.path) {
                    crate::crypto::need_identities(&source.shown)?;
                }
            }
        }
    }
    let clock = Instant::now();
    let mut failed = Vec::new();
    for (c, why) in &found.failed {
        tracing::error!("Restore of {} FAILED: {why}", c.db.name);
        failed.push((c.db.name.clone(), why.clone()));
    }
    for c in &found.dbs {
        tracing::info!("Restoring database {}...", c.db.name);
        if let Err(e) = run_one(c, args).await {
            tracing::error!("Restore of {} FAILED: {e:#}", c.db.name);
            failed.push((c.db.name.clone(), format!("{e:#}")));
        }
    }
    let done = dbs.len() - failed.len();
    if failed.is_empty() {
        crate::out!(
            "{} {} database(s) in {:.1}s: {}",
            if args.dry_run {
                "Would restore"
            } else {
                "Restored"
            },
            done,
            clock.elapsed().as_secs_f64(),
            dbs.iter()
                .map(|c| c.db.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    Err(anyhow::Error::new(crate::error::Coded {
        kind: crate::error::ExitKind::Failure,
        message: format!(
            "restore --all: {} of {} database(s) not restored; {done} restored. {}",
            failed.len(),
            dbs.len(),
            failed
                .iter()
                .map(|(db, why)| format!("{db}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }))
}

async fn run_one(cfg: &Config, args: &RestoreArgs) -> Result<()> {
    let clock_start = Instant::now();
    let store = Store::new(cfg.backup_dir.clone());
    // Files from a store another user could have swapped are never restored.
    store.check_existing()?;
    let target = args
        .target_db
        .clone()
        .unwrap_or_else(|| cfg.db.name.clone());
    // A backup of the target that is running finishes first: the swap would
    // otherwise wait on its dump (a restore never ends kbackup's sessions).
    if !args.dry_run {
        let wait = if args.no_wait {
            Duration::ZERO
        } else {
            LOCK_WAIT
        };
        store.wait_for_backup_of(&target, wait).await?;
    }
    let source = match &args.remote {
        Some(_) => choose::remote(cfg, &store, args).await?,
        None => choose::local(cfg, &store, args)?,
    };
    if crate::crypto::is_age(&source.path) {
        crate::crypto::need_identities(&source.shown)?;
    }
    choose::check_name(&target)?;
    let mut db = cfg.db.clone();
    if target == db.maintenance_db {
        // The database restore works from cannot be renamed or dropped while it
        // is connected to: work from another one (the official image's DB_NAME
        // is `postgres`, the default maintenance database).
        let other = "template1";
        tracing::info!(
            "{target} is the maintenance database (POSTGRES_MAINTENANCE_DB); restore works from {other} instead"
        );
        db.maintenance_db = other.into();
    }
    let pg = Postgres::new(db);

    tracing::info!("Checking {}...", source.shown);
    let feed = Feed::plan(cfg, pg.is_docker(), &source.path, source.manifest.as_ref());
    // What killed runs left is looked for while the file is checked.
    let leftovers = async {
        if !args.dry_run {
            crate::leftovers::report(cfg).await;
        }
    };
    let (_, checked) = tokio::join!(
        leftovers,
        choose::check_file(cfg, &pg, &source, feed, !args.dry_run)
    );
    let checked = checked?;
    tracing::info!(
        "Backup is a complete archive ({}): {} tables, {}",
        checked.checksum,
        checked.summary.tables.len(),
        rows_text(&checked.expected)
    );

    pg.check_container().await?;
    let rc = pg.restore_client(&checked.summary).await?;
    let pg = rc.pg.clone();
    // Disaster recovery (--all): every role the saved globals create and the
    // server lacks, before the first database needs them.
    let made = if args.all {
        restore_roles(&pg, source.globals.as_deref(), args.dry_run).await?
    } else {
        vec![]
    };
    // A dry run has not made them: they are not missing all the same.
    let mut missing = missing_roles(&pg, &checked.summary).await?;
    missing.retain(|r| !made.contains(r));
    // What the run does, not what it hoped: a copy that could not be written
    // (a full disk) streams, and the plan says so. A dry run writes no copy.
    let feed = if args.dry_run {
        feed
    } else {
        checked.input.feed(feed)
    };
    let plan = Plan::make(args, &pg, &target, feed, missing).await?;

    if args.dry_run {
        plan.print(cfg, args, &rc, &source, &checked);
        if let Some(holder) = store.holder() {
            crate::out!(
                "Store:    held by {holder}{}",
                if crate::store::backup_may_cover(&holder, &target) {
                    format!(
                        ": the restore would wait up to {} for it (--no-wait: refuse, exit 3)",
                        humantime::format_duration(LOCK_WAIT)
                    )
                } else {
                    String::new()
                }
            );
        }
        return Ok(());
    }
    if !plan.missing_roles.is_empty() && !args.with_globals {
        bail!(roles_message(
            &plan.missing_roles,
            source.globals.as_deref()
        ));
    }
    if plan.existing.is_some() && !args.yes {
        confirm(cfg, &plan, &source).await?;
    }
    crate::cleanup::journal_ready(&cfg.backup_dir)?;
    for step in plan.steps(cfg, &rc, &source, &checked) {
        tracing::info!("Plan: {step}");
    }
    let created_roles = if args.with_globals && !plan.missing_roles.is_empty() {
        Some(create_missing_roles(&pg, source.globals.as_deref(), &plan.missing_roles).await?)
    } else {
        None
    };
    let job = strategy::Job {
        cfg,
        rc: &rc,
        source: &source,
        checked: &checked,
    };
    let old = strategy::execute(&job, &store, &plan).await?;
    if let Some(roles) = created_roles {
        roles.done();
    }
    // A database a killed in-place restore left incomplete is whole again.
    for (file, _) in cleanup::incomplete(&cfg.backup_dir, &target) {
        let _ = std::fs::remove_file(file);
    }
    let kept = old.map(|o| {
        let drop = crate::lifecycle::dropdb_command(&pg, &o);
        (o, drop)
    });
    report(
        &source,
        &checked,
        &target,
        kept,
        args.drop_old,
        clock_start.elapsed(),
    );
    Ok(())
}

/// Creates every role of the globals file the server lacks (kept: the
/// server's roles are what a recovery is for). A dry run only says which.
/// Returns the roles it created (or, in a dry run, would create).
async fn restore_roles(
    pg: &Postgres,
    globals: Option<&std::path::Path>,
    dry_run: bool,
) -> Result<Vec<String>> {
    let Some(path) = globals else {
        tracing::warn!("This backup has no saved globals: roles are not restored with it");
        return Ok(vec![]);
    };
    let text = crate::crypto::read_globals(path)?;
    let have: std::collections::BTreeSet<String> = pg
        .query(&pg.db.maintenance_db, "SELECT rolname FROM pg_roles")
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next())
        .collect();
    let missing: Vec<String> = crate::roles::created_roles(&text)
        .into_iter()
        .filter(|r| !have.contains(r))
        .collect();
    if missing.is_empty() {
        return Ok(missing);
    }
    if dry_run {
        crate::out!(
            "Roles:    would create {} from {}",
            missing.join(", "),
            path.display()
        );
        return Ok(missing);
    }
    create_missing_roles(pg, Some(path), &missing).await?.done();
    tracing::info!(
        "Roles created from the saved globals: {}",
        missing.join(", ")
    );
    Ok(missing)
}

/// When stdin is a terminal, the operator types the database name (or RESTORE)
/// after seeing what will be replaced. Without a terminal, --yes is required.
async fn confirm(cfg: &Config, plan: &Plan, source: &Source) -> Result<()> {
    let (target, Some(e)) = (&plan.target, &plan.existing) else {
        return Ok(());
    };
    if !std::io::stdin().is_terminal() {
        return Err(usage(format!(
            "restoring over the existing database {target} needs --yes when stdin is not a terminal \
             (nothing was changed; try --dry-run to see the plan)"
        )));
    }
    let mut err = std::io::stderr().lock();
    if cfg.production {
        writeln!(
            err,
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        )?;
        writeln!(
            err,
            "!!  WARNING: PRODUCTION ENVIRONMENT DETECTED (ENVIRONMENT=production)"
        )?;
        writeln!(err, "!!  You are about to restore database: {target}")?;
        writeln!(err, "!!  This will REPLACE its data with the backup's.")?;
        writeln!(
            err,
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        )?;
    }
    writeln!(err, "\nDatabase {target} exists and will be replaced:")?;
    writeln!(
        err,
        "  size {}, {} tables, {} open connections (they will be ended)",
        human_size(e.size),
        e.tables,
        e.connections
    )?;
    writeln!(
        err,
        "  with backup {}{}",
        source.shown,
        source
            .time
            .map(|t| format!(" taken {}", t.format("%Y-%m-%d %H:%M:%S %:z")))
            .unwrap_or_default()
    )?;
    match &plan.strategy {
        Strategy::Scratch {
            old: Some(old),
            drop_old: false,
            ..
        } => writeln!(err, "  The current database is kept as {old}.")?,
        Strategy::Scratch { .. } => writeln!(
            err,
            "  The current database is dropped after the swap (--drop-old)."
        )?,
        Strategy::InPlace { .. } => writeln!(
            err,
            "  The current database is dropped first (--in-place); a safety backup is taken before."
        )?,
    }
    write!(
        err,
        "Type the database name ({target}) or RESTORE to continue, anything else aborts: "
    )?;
    err.flush()?;
    drop(err);
    // Read on a blocking thread: the runtime stays free to see Ctrl-C, which
    // ends the run at once (exit 130) while the prompt waits.
    let answer = tokio::task::spawn_blocking(|| {
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map(|_| answer)
    })
    .await??;
    let answer = answer.trim();
    if answer == target || answer == "RESTORE" {
        Ok(())
    } else {
        Err(anyhow::Error::new(crate::error::Declined(
            "restore aborted at the prompt; nothing was changed".into(),
        )))
    }
}

/// `2025-12-26 07:00:01 +01:00, 3h ago`
fn taken(t: DateTime<FixedOffset>) -> String {
    format!(
        "{}, {} ago",
        t.format("%Y-%m-%d %H:%M:%S %:z"),
        crate::clock::age(t, Utc::now())
    )
}

fn rows_text(tables: &[TableData]) -> String {
    match tables.iter().map(|t| t.rows).sum::<Option<u64>>() {
        Some(n) => format!("{n} rows"),
        None => "row counts unknown (archive compressed inside, no manifest)".to_string(),
    }
}

fn report(
    source: &Source,
    checked: &Checked,
    target: &str,
    kept: Option<(String, String)>,
    dropped: bool,
    took: Duration,
) {
    let (tables, rows) = (
        checked.expected.len(),
        checked.expected.iter().map(|t| t.rows).sum::<Option<u64>>(),
    );
    crate::out!("Restore complete in {:.1}s.", took.as_secs_f64());
    crate::out!(
        "  Backup:   {}{}",
        source.shown,
        source
            .time
            .map(|t| format!(" (taken {})", taken(t)))
            .unwrap_or_default()
    );
    crate::out!(
        "  Restored: {target}: {tables} tables, {}",
        match rows {
            Some(n) => format!("{n} rows, every table's count equal to the backup's"),
            None => "every table present (row counts unknown for this backup)".to_string(),
        }
    );
    match kept {
        Some((o, drop)) => {
            crate::out!("  Previous: kept as {o}; when you no longer need it: {drop}")
        }
        None if dropped => crate::out!("  Previous: dropped (--drop-old)"),
        None => {}
    }
    tracing::info!("Restore of {target} from {} complete", source.shown);
}
