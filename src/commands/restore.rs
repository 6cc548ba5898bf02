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

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, FixedOffset, Local, Utc};

use crate::archive::{Summary, TableData};
use crate::cleanup;
use crate::cli::RestoreArgs;
use crate::clients::{self, RestoreMode};
use crate::clock;
use crate::config::Config;
use crate::dump;
use crate::error::usage;
use crate::lifecycle::{
    create_database, create_database_sql, derived_name, drop_database, drop_statements, free_name,
    swap, MAX_IDENT,
};
use crate::manifest::Manifest;
use crate::naming::{self, Tier, GLOBALS_EXT, MANIFEST_EXT};
use crate::postgres::{version_major, Postgres, RestoreClient};
use crate::readback::{check_pass, prove_rows, run_pg_restore, Input};
use crate::remote::Remote;
use crate::roles::{create_missing_roles, missing_roles, roles_message};
use crate::select::{self, Selection, Selector};
use crate::sql::{ident, literal, retarget};
use crate::store::{human_size, loose_file, Backup, Store};
use crate::take::{self, Target as BackupTarget};

/// The backup being restored.
struct Source {
    path: PathBuf,
    /// How to show it: relative to the store when inside it.
    shown: String,
    manifest: Option<Manifest>,
    time: Option<DateTime<FixedOffset>>,
    globals: Option<PathBuf>,
    /// A download from the remote, removed when the restore is over.
    _download: Option<tempfile::TempDir>,
}

/// What the file check found.
struct Checked {
    summary: Summary,
    /// How pg_restore will read the archive.
    input: Input,
    /// The row count each table must have after the restore (None: unknown).
    expected: Vec<TableData>,
    checksum: &'static str,
}

/// The database being replaced.
struct Existing {
    size: u64,
    connections: u64,
    tables: u64,
}

pub async fn run(cfg: &Config, args: &RestoreArgs) -> Result<()> {
    let clock_start = Instant::now();
    let store = Store::new(cfg.backup_dir.clone());
    let source = match &args.remote {
        Some(_) => choose_remote(cfg, &store, args).await?,
        None => choose(cfg, &store, args)?,
    };
    let target = args
        .target_db
        .clone()
        .unwrap_or_else(|| cfg.db.name.clone());
    check_name(&target)?;
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

    if !args.dry_run {
        crate::leftovers::report(cfg).await;
    }
    tracing::info!("Checking {}...", source.shown);
    let checked = check_file(cfg, &pg, &source, !args.dry_run).await?;
    tracing::info!(
        "Backup is a complete archive ({}): {} tables, {}",
        checked.checksum,
        checked.summary.tables.len(),
        rows_text(&checked.expected)
    );

    pg.check_container().await?;
    let rc = pg.restore_client(&checked.summary).await?;
    let pg = rc.pg.clone();
    let existing = existing(&pg, &target).await?;
    let missing_roles = missing_roles(&pg, &checked.summary).await?;

    if args.dry_run {
        print_plan(
            cfg,
            args,
            &rc,
            &source,
            &checked,
            &target,
            existing.as_ref(),
            &missing_roles,
        );
        return Ok(());
    }
    if !missing_roles.is_empty() && !args.with_globals {
        bail!(roles_message(&missing_roles, source.globals.as_deref()));
    }
    if let Some(e) = &existing {
        if !args.yes {
            confirm(cfg, &target, e, &source).await?;
        }
    }
    if args.with_globals && !missing_roles.is_empty() {
        create_missing_roles(&pg, source.globals.as_deref(), &missing_roles).await?;
    }

    let old = if args.in_place {
        in_place(
            cfg,
            &store,
            &rc,
            &source,
            &checked,
            &target,
            existing.is_some(),
        )
        .await?;
        None
    } else {
        via_scratch(
            cfg,
            &rc,
            &source,
            &checked,
            &target,
            existing.is_some(),
            args.drop_old,
        )
        .await?
    };
    // A database a killed in-place restore left incomplete is whole again.
    for (file, _) in cleanup::incomplete(&cfg.backup_dir, &target) {
        let _ = std::fs::remove_file(file);
    }
    report(
        &source,
        &checked,
        &target,
        old.as_deref(),
        args.drop_old,
        clock_start.elapsed(),
    );
    Ok(())
}

fn selector(cfg: &Config, args: &RestoreArgs) -> Result<Selector> {
    let remote_file = args.remote.as_deref().filter(|p| !p.is_empty());
    let chosen = [
        args.latest,
        args.latest_daily,
        args.latest_weekly,
        args.latest_monthly,
    ]
    .iter()
    .filter(|b| **b)
    .count()
        + [
            args.file.is_some(),
            args.at.is_some(),
            args.name.is_some(),
            remote_file.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
    if chosen != 1 {
        return Err(usage(
            "choose exactly one backup: --latest, --latest-daily, --latest-weekly, --latest-monthly, --file PATH, \
             --at TIME, --name NAME, or --remote PATH (plain --remote goes with one of the others)",
        ));
    }
    Ok(if args.latest {
        Selector::Latest
    } else if args.latest_daily {
        Selector::LatestIn(Tier::Daily)
    } else if args.latest_weekly {
        Selector::LatestIn(Tier::Weekly)
    } else if args.latest_monthly {
        Selector::LatestIn(Tier::Monthly)
    } else if let Some(f) = args
        .file
        .as_ref()
        .or(remote_file.map(PathBuf::from).as_ref())
    {
        // A path relative to the store stays in it.
        if !f.is_absolute() && f.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(usage(format!(
                "{} {}: `..` leads out of the store; give the path relative to BACKUP_DIR without `..` \
                 (as `kbackup list` shows it), or an absolute path",
                if args.file.is_some() { "--file" } else { "--remote" },
                f.display()
            )));
        }
        Selector::File(f.clone())
    } else if let Some(t) = &args.at {
        Selector::At(clock::parse_time(t, cfg.calendar.zone, "--at")?)
    } else if let Some(n) = &args.name {
        Selector::Name(n.clone())
    } else {
        unreachable!("counted above")
    })
}

/// `--remote`: chooses on the remote's listing, then downloads the dump (and its
/// manifest and globals) into a temporary folder in the store.
async fn choose_remote(cfg: &Config, store: &Store, args: &RestoreArgs) -> Result<Source> {
    let Some(rc) = &cfg.remote else {
        return Err(usage(
            "--remote: no remote configured; set RCLONE_REMOTE_NAME and RCLONE_REMOTE_PATH",
        ));
    };
    let selector = selector(cfg, args)?;
    let remote = Remote::new(rc.clone());
    remote.check_rclone().await?;
    let listing = remote.list().await?;
    let present: BTreeSet<&str> = listing.iter().map(|f| f.path.as_str()).collect();
    // The remote's dumps, as a listing `select` understands (paths under the remote root).
    let root = PathBuf::from(remote.root());
    let backups: Vec<Backup> = crate::offsite::remote_backups(cfg, &listing)
        .into_iter()
        .map(|b| Backup {
            tier: b.tier,
            path: root.join(&b.rel_path),
            rel_path: b.rel_path,
            parsed: b.parsed,
            size: b.size,
            time: b.time,
            manifest: None,
            manifest_error: None,
            verification: Default::default(),
        })
        .collect();
    let chosen =
        match select::select(&backups, &selector, &cfg.prefix, &root).map_err(|m| anyhow!(m))? {
            Selection::Stored(b) => b,
            Selection::External(p) => bail!(
                "--remote {}: no such backup on {}; `kbackup list --remote` shows what is there",
                p.strip_prefix(&root).unwrap_or(&p).display(),
                remote.root()
            ),
        };
    let download = crate::store::state_temp_dir(&store.root, "download")?;
    let stem = &chosen.parsed.stem;
    let fetch = |ext: &'static str| {
        let rel = format!("{}/{}", chosen.tier.dir(), naming::sidecar(stem, ext));
        let to = download.path().join(naming::sidecar(stem, ext));
        let on_remote = present.contains(rel.as_str());
        let remote = remote.clone();
        async move {
            if !on_remote {
                return Ok::<_, anyhow::Error>(None);
            }
            remote.download(&rel, &to, None).await?;
            Ok(Some(to))
        }
    };
    let manifest = match fetch(MANIFEST_EXT).await? {
        Some(p) => Some(
            serde_json::from_slice::<Manifest>(&std::fs::read(&p)?).with_context(|| {
                format!("cannot read the remote manifest of {}", chosen.rel_path)
            })?,
        ),
        None => {
            tracing::warn!(
                "{} has no manifest on the remote: its checksum cannot be checked",
                chosen.rel_path
            );
            None
        }
    };
    let globals = fetch(GLOBALS_EXT).await?;
    let file = download
        .path()
        .join(chosen.path.file_name().expect("a file name"));
    tracing::info!("Downloading {} from {}...", chosen.rel_path, remote.root());
    remote
        .download(&chosen.rel_path, &file, cfg.timeout)
        .await?;
    Ok(Source {
        path: file,
        shown: format!("{}/{}", remote.root(), chosen.rel_path),
        time: manifest
            .as_ref()
            .map(|m| m.started_at)
            .or(Some(chosen.time)),
        manifest,
        globals,
        _download: Some(download),
    })
}

fn choose(cfg: &Config, store: &Store, args: &RestoreArgs) -> Result<Source> {
    let selector = selector(cfg, args)?;
    let backups = store.scan(&cfg.calendar, &cfg.prefix)?;
    let selection =
        select::select(&backups, &selector, &cfg.prefix, &store.root).map_err(|m| anyhow!(m))?;
    Ok(match selection {
        Selection::Stored(b) => {
            if let Some(e) = &b.manifest_error {
                tracing::warn!(
                    "The manifest of {} cannot be read ({e}); restoring without it",
                    b.rel_path
                );
            }
            Source {
                path: b.path.clone(),
                shown: b.rel_path.clone(),
                manifest: b.manifest.clone(),
                time: Some(b.time),
                globals: Some(b.sidecar(GLOBALS_EXT)).filter(|p| p.exists()),
                _download: None,
            }
        }
        Selection::External(path) => {
            // A link inside the store is never followed out of it (another user
            // could have planted it); a path given outside the store is the
            // operator's own choice (a backup copied from another server).
            if path.starts_with(&store.root)
                && std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink())
            {
                return Err(usage(format!(
                    "--file {}: a symlink in the store; kbackup does not follow links there. Give the \
                     file it points to as an absolute path, or copy that file into the store",
                    path.display()
                )));
            }
            let loose = loose_file(&path, &format!("--file {}", path.display()), &store.root)?;
            Source {
                time: loose.manifest.as_ref().map(|m| m.started_at),
                shown: path.display().to_string(),
                globals: loose.globals,
                path,
                manifest: loose.manifest,
                _download: None,
            }
        }
    })
}

fn check_name(target: &str) -> Result<()> {
    if target.is_empty() || target.len() > MAX_IDENT || target.contains('\0') {
        return Err(usage(format!(
            "--target-db {target:?}: a database name must be 1 to {MAX_IDENT} bytes"
        )));
    }
    if matches!(target, "template0" | "template1") {
        return Err(usage(format!(
            "--target-db {target}: a template database is never restored over; restore into another \
             database (--target-db NAME)"
        )));
    }
    Ok(())
}

/// Step 1: the checksum and a full read of the archive, before touching anything.
async fn check_file(
    cfg: &Config,
    pg: &Postgres,
    source: &Source,
    for_restore: bool,
) -> Result<Checked> {
    let size_hint = source
        .manifest
        .as_ref()
        .map(|m| m.archive.archive_bytes)
        .unwrap_or_else(|| {
            std::fs::metadata(&source.path)
                .map(|m| m.len() * 10)
                .unwrap_or(0)
        });
    let (summary, sha, input) = check_pass(cfg, pg, &source.path, size_hint, for_restore).await?;
    if let Some(m) = source.manifest.as_ref().filter(|m| m.file.sha256 != sha) {
        bail!(
            "{} is corrupted: its SHA-256 is {sha} but its manifest records {}. Refusing to restore it; \
             nothing was changed. Pick another backup (kbackup list)",
            source.shown,
            m.file.sha256
        );
    }
    let summary = summary.map_err(|e| {
        anyhow!(
            "{} is not a readable, complete archive: {e:#}. Refusing to restore it; nothing was changed. \
             Pick another backup (kbackup list)",
            source.shown
        )
    })?;
    let mut checksum = "no manifest to check the checksum against";
    if let Some(m) = &source.manifest {
        checksum = "checksum matches its manifest";
        // The manifest's counts are what pg_dump read; the archive must agree.
        let in_archive: BTreeMap<(&str, &str), Option<u64>> = summary
            .tables
            .iter()
            .map(|t| ((t.schema.as_str(), t.name.as_str()), t.rows))
            .collect();
        for t in &m.archive.tables {
            let found = in_archive.get(&(t.schema.as_str(), t.name.as_str()));
            let agrees = match found {
                None => false,
                Some(rows) => rows.is_none() || t.rows.is_none() || *rows == t.rows,
            };
            if !agrees {
                bail!(
                    "{}: the manifest says table {}.{} has {} rows but the archive holds {}. Refusing to restore it; \
                     nothing was changed",
                    source.shown,
                    t.schema,
                    t.name,
                    t.rows.map(|r| r.to_string()).unwrap_or("?".into()),
                    found.and_then(|r| *r).map(|r| r.to_string()).unwrap_or("no such table".into())
                );
            }
        }
    }
    // Expected rows: the archive's own counts, else the manifest's.
    let from_manifest: BTreeMap<(String, String), Option<u64>> = source
        .manifest
        .iter()
        .flat_map(|m| {
            m.archive
                .tables
                .iter()
                .map(|t| ((t.schema.clone(), t.name.clone()), t.rows))
        })
        .collect();
    let expected = summary
        .tables
        .iter()
        .map(|t| TableData {
            rows: t.rows.or_else(|| {
                from_manifest
                    .get(&(t.schema.clone(), t.name.clone()))
                    .copied()
                    .flatten()
            }),
            ..t.clone()
        })
        .collect();
    Ok(Checked {
        summary,
        input,
        expected,
        checksum,
    })
}

async fn existing(pg: &Postgres, target: &str) -> Result<Option<Existing>> {
    let sql = format!(
        "SELECT pg_database_size(datname), (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname) \
         FROM pg_database d WHERE datname = {}",
        literal(target)
    );
    let rows = pg.query(&pg.db.maintenance_db, &sql).await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let tables = pg
        .query(target, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                        WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema')")
        .await
        .ok()
        .and_then(|r| r.first().and_then(|r| r[0].parse().ok()))
        .unwrap_or(0);
    Ok(Some(Existing {
        size: row[0].parse().unwrap_or(0),
        connections: row[1].parse().unwrap_or(0),
        tables,
    }))
}

/// The scratch database a restore of `target` goes into first.
fn scratch_name(target: &str, now: DateTime<Local>) -> String {
    derived_name(
        target,
        &format!(
            "_kbrestore_{}_{}",
            now.format("%Y%m%d%H%M%S"),
            std::process::id()
        ),
    )
}

/// The name the replaced database is kept under.
fn old_name(target: &str, now: DateTime<Local>) -> String {
    derived_name(
        target,
        &format!("_pre_restore_{}", now.format("%Y%m%d_%H%M%S")),
    )
}

/// Steps 2 and 3: restore into `db` and check it.
async fn restore_and_check(
    cfg: &Config,
    rc: &RestoreClient,
    source: &Source,
    checked: &Checked,
    db: &str,
) -> Result<(usize, u64)> {
    let pg = &rc.pg;
    tracing::info!("Restoring into {db}...");
    run_pg_restore(cfg, rc, &source.path, &checked.input, db, &[]).await?;
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
    cfg: &Config,
    rc: &RestoreClient,
    source: &Source,
    checked: &Checked,
    target: &str,
    target_exists: bool,
    drop_old: bool,
) -> Result<Option<String>> {
    let pg = &rc.pg;
    let now = Local::now();
    let scratch = scratch_name(target, now);
    tracing::info!("Creating scratch database {scratch}...");
    // Armed before CREATE DATABASE: whatever ends this run before the swap
    // (an error, a signal) drops the scratch copy.
    let undo_scratch = cleanup::register(pg, drop_statements(&scratch));
    create_database(pg, &scratch, &checked.summary, rc.server_major).await?;
    if let Err(e) = restore_and_check(cfg, rc, source, checked, &scratch).await {
        if let Err(d) = drop_database(pg, &scratch).await {
            tracing::error!("{d:#}; drop it by hand: dropdb {scratch}");
        } else {
            undo_scratch.done();
        }
        return Err(e.context(format!(
            "the restore into a scratch database failed; {target} was not touched"
        )));
    }

    let old = if target_exists {
        let old = free_name(pg, &old_name(target, now)).await?;
        // On failure the scratch copy is dropped by its guard, still armed.
        swap(cfg, pg, target, &scratch, &old).await?;
        Some(old)
    } else {
        pg.admin(
            &[format!(
                "ALTER DATABASE {} RENAME TO {}",
                ident(&scratch),
                ident(target)
            )],
            None,
        )
        .await
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("cannot rename {scratch} to {target}"))?;
        None
    };
    undo_scratch.done();
    match (&old, drop_old) {
        (Some(o), true) => {
            drop_database(pg, o).await?;
            tracing::info!("Dropped the previous database ({o})");
            Ok(None)
        }
        _ => Ok(old),
    }
}

/// `--in-place`: the seed's drop-and-recreate, for servers where creating a
/// second database is not allowed, made safer by a backup taken first.
async fn in_place(
    cfg: &Config,
    store: &Store,
    rc: &RestoreClient,
    source: &Source,
    checked: &Checked,
    target: &str,
    target_exists: bool,
) -> Result<()> {
    let pg = &rc.pg;
    let safety = if target_exists {
        let mut scfg = cfg.clone();
        scfg.db.name = target.to_string();
        if target != cfg.db.name {
            scfg.prefix = target.to_string();
        }
        let spg = Postgres::new(scfg.db.clone());
        let _lock = store.lock("restore --in-place (safety backup)")?;
        let label = format!("pre_restore_{}", Local::now().format("%Y%m%d_%H%M%S"));
        tracing::info!("Taking a safety backup of {target} first...");
        let (path, _, size) =
            take::take(&scfg, store, &spg, &mut BackupTarget::named(&label)).await?;
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
            format!("It did not exist before; drop it: dropdb {target}")
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
        restore_and_check(cfg, rc, source, checked, target).await
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

/// When stdin is a terminal, the operator types the database name (or RESTORE)
/// after seeing what will be replaced. Without a terminal, --yes is required.
async fn confirm(cfg: &Config, target: &str, e: &Existing, source: &Source) -> Result<()> {
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
    writeln!(err, "  The current database is kept as {target}_pre_restore_<time> unless --drop-old or --in-place.")?;
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

#[allow(clippy::too_many_arguments)]
fn print_plan(
    cfg: &Config,
    args: &RestoreArgs,
    rc: &RestoreClient,
    source: &Source,
    checked: &Checked,
    target: &str,
    existing: Option<&Existing>,
    missing_roles: &[String],
) {
    let pg = &rc.pg;
    let now = Local::now();
    println!("Dry run: nothing will be changed.");
    println!(
        "Backup:   {}{} ({}, manifest: {})",
        source.shown,
        source
            .time
            .map(|t| format!(" taken {}", taken(t)))
            .unwrap_or_default(),
        human_size(
            std::fs::metadata(&source.path)
                .map(|m| m.len())
                .unwrap_or(0)
        ),
        if source.manifest.is_some() {
            "yes"
        } else {
            "no"
        }
    );
    println!(
        "Checked:  complete archive, {}; {} tables, {}",
        checked.checksum,
        checked.summary.tables.len(),
        rows_text(&checked.expected)
    );
    let from = checked.summary.server_version.as_deref().unwrap_or("?");
    println!(
        "Server:   PostgreSQL {} at {}; the backup is of PostgreSQL {from}{}",
        rc.server_version,
        pg.describe_server(),
        match checked
            .summary
            .server_version
            .as_deref()
            .and_then(version_major)
        {
            Some(m) if clients::order(m) < clients::order(rc.server_major) =>
                " (an upgrade: allowed)",
            Some(_) => " (same major version)",
            None => "",
        }
    );
    println!(
        "Client:   {} reads archive formats up to {}: this backup's {} can be read{}",
        rc.client.describe("pg_restore"),
        clients::restore_reads_up_to(rc.client.major),
        rc.format,
        match &rc.mode {
            RestoreMode::Direct => String::new(),
            RestoreMode::Script { drop } => format!(
                "; it is newer than the server, so its SQL runs through psql without {} (serial)",
                drop.join(" ")
            ),
        }
    );
    match existing {
        Some(e) => println!(
            "Target:   {target} exists ({}, {} tables, {} connections) and would be replaced{}",
            human_size(e.size),
            e.tables,
            e.connections,
            if args.yes {
                ""
            } else {
                " after confirmation (--yes when not on a terminal)"
            }
        ),
        None => println!("Target:   {target} does not exist; it would be created"),
    }
    if missing_roles.is_empty() {
        println!(
            "Roles:    all {} roles the backup uses exist",
            checked.summary.roles.len()
        );
    } else if args.with_globals {
        println!(
            "Roles:    would create {} from {}",
            missing_roles.join(", "),
            source
                .globals
                .as_ref()
                .map(|g| g.display().to_string())
                .unwrap_or("(no globals)".into())
        );
    } else {
        println!(
            "Roles:    MISSING {}: the restore would stop here (--with-globals creates them)",
            missing_roles.join(", ")
        );
    }
    // The command the restore will run: see `check_pass` and `run_pg_restore`.
    let into = |db: &str| match &checked.input {
        _ if matches!(rc.mode, RestoreMode::Script { .. }) => format!(
            "{} {} | (its opening SET transaction_timeout left out) {}",
            pg.tool("pg_restore").args(["--file", "-"]),
            match &checked.input {
                Input::Seekable { path, .. } => path.display().to_string(),
                Input::Stream if dump::is_zstd(&source.path) => format!(
                    "<{} decompressed to a temporary file in BACKUP_DIR/.kbackup>",
                    source.path.display()
                ),
                Input::Stream => source.path.display().to_string(),
            },
            pg.psql_script(db)
        ),
        Input::Seekable { path, .. } => format!(
            "{} {}{}",
            pg.tool("pg_restore").args([
                "--exit-on-error",
                "--jobs",
                &cfg.restore_jobs.to_string(),
                "--dbname",
                &crate::sql::dbname(db)
            ]),
            path.display(),
            if dump::is_zstd(&source.path) {
                "  (the uncompressed archive the check pass left)"
            } else {
                ""
            }
        ),
        Input::Stream => format!(
            "{} < {}{}",
            pg.pg_restore(db),
            if dump::is_zstd(&source.path) {
                "zstd-decompressed "
            } else {
                ""
            },
            source.path.display()
        ),
    };
    println!("Steps:");
    if args.in_place {
        let mut n = 1;
        if existing.is_some() {
            println!(
                "  {n}. safety backup of {target} to {}/named/",
                cfg.backup_dir.display()
            );
            n += 1;
            println!(
                "  {n}. end {target}'s sessions; DROP DATABASE {}",
                ident(target)
            );
            n += 1;
        }
        println!(
            "  {n}. {}",
            create_database_sql(target, &checked.summary, true, Some(rc.server_major))
        );
        println!("  {}. {}", n + 1, into(target));
        println!(
            "  {}. check every table and its row count against the backup",
            n + 2
        );
    } else {
        let scratch = scratch_name(target, now);
        println!(
            "  1. {}",
            create_database_sql(&scratch, &checked.summary, true, Some(rc.server_major))
        );
        println!("  2. {}", into(&scratch));
        println!("  3. check every table and its row count against the backup (on failure: drop {scratch}, stop)");
        if existing.is_some() {
            let old = old_name(target, now);
            println!(
                "  4. ALTER DATABASE {} WITH ALLOW_CONNECTIONS false; end its sessions",
                ident(target)
            );
            println!("  5. in one transaction: ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}", ident(target), ident(&old), ident(&scratch), ident(target));
            if args.drop_old {
                println!("  6. DROP DATABASE {}", ident(&old));
            } else {
                println!("  6. keep {old} (drop it later with: dropdb {old})");
            }
        } else {
            println!(
                "  4. ALTER DATABASE {} RENAME TO {}",
                ident(&scratch),
                ident(target)
            );
        }
    }
}

fn report(
    source: &Source,
    checked: &Checked,
    target: &str,
    old: Option<&str>,
    dropped: bool,
    took: Duration,
) {
    let (tables, rows) = (
        checked.expected.len(),
        checked.expected.iter().map(|t| t.rows).sum::<Option<u64>>(),
    );
    println!("Restore complete in {:.1}s.", took.as_secs_f64());
    println!(
        "  Backup:   {}{}",
        source.shown,
        source
            .time
            .map(|t| format!(" (taken {})", taken(t)))
            .unwrap_or_default()
    );
    println!(
        "  Restored: {target}: {tables} tables, {}",
        match rows {
            Some(n) => format!("{n} rows, every table's count equal to the backup's"),
            None => "every table present (row counts unknown for this backup)".to_string(),
        }
    );
    match old {
        Some(o) => println!("  Previous: kept as {o}; when you no longer need it: dropdb {o}"),
        None if dropped => println!("  Previous: dropped (--drop-old)"),
        None => {}
    }
    tracing::info!("Restore of {target} from {} complete", source.shown);
}
