//! `kbackup verify`: "a backup you have never restored is not a backup".
//!
//! Quick: the checksum against the manifest and a full read of the archive
//! (every block, every table's rows counted), compared with the manifest.
//! Full (the default): that, then a test restore into a temporary database on
//! the configured server or a separate verification server, and the Kaizen
//! seed's checks, each reported pass/fail/skip with numbers. The temporary
//! database is always dropped: on success, on failure, on Ctrl-C.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use chrono::Local;
use serde::Serialize;

use crate::archive::Summary;
use crate::checks::{self, ObjectCounts};
use crate::cli::VerifyArgs;
use crate::config::{Config, DbConfig};
use crate::dump;
use crate::error::{usage, Coded, ExitKind};
use crate::lifecycle::{create_own_database, drop_database, free_name};
use crate::manifest::{Check, Manifest, Outcome, Verification};
use crate::postgres::Postgres;
use crate::readback::{check_pass, manifest_disagreements, run_pg_restore, Feed, Input};
use crate::store::{human_size, loose_file, Backup, Store};
use crate::{metrics, notify, state};

/// One file to verify, with every tier copy that shares it.
struct Subject<'a> {
    path: PathBuf,
    shown: String,
    manifest: Option<Manifest>,
    /// Why a manifest that exists could not be read (the checksum check fails).
    manifest_error: Option<String>,
    globals: Option<PathBuf>,
    copies: Vec<&'a Backup>,
}

#[derive(Serialize)]
struct Report {
    path: String,
    copies: Vec<String>,
    #[serde(flatten)]
    verification: Verification,
}

pub async fn run(cfg: &Config, args: &VerifyArgs) -> Result<()> {
    let mut reports = Vec::new();
    let result = run_several(cfg, args, &mut reports).await;
    // One JSON document for the whole run, failures included.
    if args.json {
        crate::out!("{}", serde_json::to_string_pretty(&reports)?);
    }
    result
}

async fn run_several(cfg: &Config, args: &VerifyArgs, reports: &mut Vec<Report>) -> Result<()> {
    if !cfg.several() {
        return run_one(cfg, args, reports).await;
    }
    let found = crate::databases::recorded(cfg);
    let mut dbs = found.dbs.clone();
    if dbs.is_empty() {
        return Err(anyhow!(
            "DB_NAME=all: no backup run has listed the server's databases yet; run `kbackup backup` first"
        ));
    }
    // A file named with --path is verified once, as its database's.
    if let Some(path) = &args.path {
        let store = Store::new(cfg.backup_dir.clone());
        let full = store.root.join(path);
        let backups = store.scan(&cfg.calendar, &cfg.prefix)?;
        let i = backups.iter().find(|b| b.path == full).and_then(|b| {
            dbs.iter()
                .position(|c| b.owner(&c.prefix) == crate::owner::Owner::Mine)
        });
        let Some(i) = i else {
            return Err(usage(format!(
                "verify {}: it is not a backup of one of the configured databases that its manifest or \
                 name tells apart; pass --db NAME to say whose it is",
                path.display()
            )));
        };
        return run_one(&dbs.swap_remove(i), args, reports).await;
    }
    // A key missing for any database's test restore stops the run before
    // anything (exit 2), as it does for one database.
    if !args.quick && crate::crypto::identities().is_none() {
        for c in &dbs {
            let store = Store::new(c.backup_dir.clone());
            let backups = store.scan(&c.calendar, &c.prefix)?;
            if let Ok(subjects) = choose(c, &store, &backups, args) {
                if let Some(s) = subjects.iter().find(|s| crate::crypto::is_age(&s.path)) {
                    crate::crypto::need_identities(&s.shown)?;
                }
            }
        }
    }
    let mut failed = Vec::new();
    for c in &dbs {
        tracing::info!("Database {}:", c.db.name);
        if let Err(e) = run_one(c, args, reports).await {
            tracing::error!("Verification of {} FAILED: {e:#}", c.db.name);
            failed.push(c.db.name.clone());
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(anyhow::Error::new(Coded {
        kind: ExitKind::Failure,
        message: format!(
            "verification failed for {} of {} databases: {} (each said above)",
            failed.len(),
            dbs.len(),
            failed.join(", ")
        ),
    }))
}

/// Verifies one database's backups; each report is also added to `all`.
async fn run_one(cfg: &Config, args: &VerifyArgs, all: &mut Vec<Report>) -> Result<()> {
    let store = Store::new(cfg.backup_dir.clone());
    let backups = store.scan(&cfg.calendar, &cfg.prefix)?;
    let subjects = choose(cfg, &store, &backups, args)?;
    // A test restore of an encrypted backup needs its key: asked for before
    // anything runs (a quick check reads the file as stored without it).
    if !args.quick {
        if let Some(s) = subjects.iter().find(|s| crate::crypto::is_age(&s.path)) {
            crate::crypto::need_identities(&s.shown)?;
        }
    }
    let server = server(cfg, args)?;
    let _lock = store.verify_lock()?;
    if !args.quick {
        crate::leftovers::report(cfg).await;
    }

    // A full verification needs a server it can restore into. When it has none
    // (unreachable, container missing or stopped, no right to create a
    // database), that is this run's failure, never the backups': nothing is
    // recorded against them.
    if !args.quick {
        if let Err(e) = can_run(&server).await {
            return Err(could_not_run(cfg, e).await);
        }
        crate::cleanup::journal_ready(&cfg.backup_dir)?;
    }

    let mut reports = Vec::new();
    for s in &subjects {
        tracing::info!(
            "Verifying {} ({})...",
            s.shown,
            if args.quick { "quick" } else { "full" }
        );
        // A verification that cannot run here says nothing of the backup: no
        // record; the error alerts through main's wrapper like any failure.
        let v = match verify_one(cfg, &server, s, args.quick).await {
            Ok(v) => v,
            Err(e) => return Err(could_not_run(cfg, e).await),
        };
        if !s.copies.is_empty() {
            if let Err(e) = store.record_verification(&s.copies, &v) {
                tracing::warn!("cannot record the verification of {}: {e:#}", s.shown);
            }
        }
        if !args.json {
            print_report(s, &v);
        }
        reports.push(Report {
            path: s.shown.clone(),
            copies: s.copies.iter().map(|b| b.rel_path.clone()).collect(),
            verification: v,
        });
    }
    let reports = {
        let n = all.len();
        all.extend(reports);
        &all[n..]
    };
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.verification.passed)
        .map(|r| {
            let names: Vec<&str> = r
                .verification
                .checks
                .iter()
                .filter(|c| c.outcome == Outcome::Fail)
                .map(|c| c.name.as_str())
                .collect();
            format!("{} ({})", r.path, names.join(", "))
        })
        .collect();
    let run = state::VerifyRun {
        finished_at: Local::now().fixed_offset(),
        ok: failed.is_empty(),
        quick: args.quick,
        checked: reports.iter().map(|r| r.path.clone()).collect(),
        failed: failed.clone(),
    };
    if let Err(e) = state::record_verify(&store.root, &cfg.prefix, &run) {
        tracing::warn!("cannot record the verification for `kbackup status`: {e:#}");
    }
    if let Err(e) = metrics::update(cfg, &store) {
        tracing::warn!("cannot write the metrics file: {e:#}");
    }
    if failed.is_empty() {
        tracing::info!(
            "All integrity checks passed: {} backup(s) can be used for restore",
            reports.len()
        );
        return Ok(());
    }
    let message = format!(
        "{} of {} backup(s) failed verification: {}",
        failed.len(),
        reports.len(),
        failed.join("; ")
    );
    notify::alert(
        cfg,
        notify::Alert {
            kind: notify::Kind::Verify,
            title: format!("Verification of {} backups failed", cfg.db.name),
            body: message.clone(),
        },
    )
    .await;
    Err(anyhow::Error::new(Coded {
        kind: ExitKind::Failure,
        message,
    }))
}

fn choose<'a>(
    cfg: &Config,
    store: &Store,
    backups: &'a [Backup],
    args: &VerifyArgs,
) -> Result<Vec<Subject<'a>>> {
    let ours = || backups.iter().filter(|b| b.is_mine(&cfg.prefix));
    let picked: Vec<&Backup> = if args.all {
        ours().collect()
    } else if let Some(tier) = args.tier {
        ours().filter(|b| b.tier == tier).collect()
    } else if let Some(path) = &args.path {
        let full = if path.is_absolute() {
            path.clone()
        } else {
            store.root.join(path)
        };
        match backups.iter().find(|b| b.path == full) {
            Some(b) => vec![b],
            None => {
                let loose = loose_file(&full, &full.display().to_string(), &store.root)?;
                return Ok(vec![Subject {
                    shown: full.display().to_string(),
                    path: full,
                    manifest: loose.manifest,
                    manifest_error: None,
                    globals: loose.globals,
                    copies: vec![],
                }]);
            }
        }
    } else {
        match crate::select::select(
            backups,
            &crate::select::Selector::Latest,
            &cfg.prefix,
            &store.root,
        ) {
            Ok(crate::select::Selection::Stored(b)) => vec![b],
            _ => vec![],
        }
    };
    if picked.is_empty() {
        return Err(anyhow!(
            "no backups to verify in {}. {}",
            store.root.display(),
            crate::select::existing(&ours().collect::<Vec<_>>())
        ));
    }
    // Tier copies are hard links of one file: verify each file once.
    let mut by_file: Vec<(u64, u64)> = Vec::new();
    let mut groups: HashMap<(u64, u64), Vec<&Backup>> = HashMap::new();
    for b in picked {
        let key = std::fs::metadata(&b.path)
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or((0, by_file.len() as u64));
        if !groups.contains_key(&key) {
            by_file.push(key);
        }
        groups.entry(key).or_default().push(b);
    }
    // Include every copy of a chosen file, so all of them record the result.
    for b in backups {
        if let Ok(m) = std::fs::metadata(&b.path) {
            if let Some(g) = groups.get_mut(&(m.dev(), m.ino())) {
                if !g.iter().any(|x| x.path == b.path) {
                    g.push(b);
                }
            }
        }
    }
    by_file
        .into_iter()
        .map(|key| {
            let copies = groups.remove(&key).unwrap_or_default();
            let first = copies[0];
            let (manifest, manifest_error) = match first.full_manifest() {
                Ok(m) => (m, None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            Ok(Subject {
                path: first.path.clone(),
                shown: first.rel_path.clone(),
                manifest,
                manifest_error,
                globals: first.globals_file(),
                copies,
            })
        })
        .collect()
}

/// Whether a test restore can run on `pg`: its container running, the server
/// answering, and the role allowed to create databases.
async fn can_run(pg: &Postgres) -> Result<()> {
    pg.check_container().await?;
    let rows = pg
        .query(
            &pg.db.maintenance_db,
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user",
        )
        .await?;
    if rows.first().and_then(|r| r.first()).map(String::as_str) != Some("t") {
        anyhow::bail!(
            "{} may not create databases on {}: the test restore needs CREATEDB (ALTER ROLE {} CREATEDB), \
             or a verification server of its own (BACKUP_VERIFY_HOST / --server)",
            pg.db.user,
            pg.describe_server(),
            crate::sql::ident(&pg.db.user)
        );
    }
    Ok(())
}

/// A verification that could not run: its own alert and error; no backup is
/// judged by it.
async fn could_not_run(cfg: &Config, e: anyhow::Error) -> anyhow::Error {
    let e = e.context("the verification could not run; no backup was judged or marked by it");
    notify::alert(
        cfg,
        notify::Alert {
            kind: notify::Kind::VerifyCannotRun,
            title: format!("Verification of {} backups could not run", cfg.db.name),
            body: format!("{e:#}"),
        },
    )
    .await;
    e
}

/// The server the test restore runs on: --server, else BACKUP_VERIFY_*, else the backed-up one.
fn server(cfg: &Config, args: &VerifyArgs) -> Result<Postgres> {
    let mut db: DbConfig = cfg.verify_server.clone().unwrap_or_else(|| cfg.db.clone());
    if let Some(s) = &args.server {
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) if !s.starts_with('/') => (
                h.to_string(),
                p.parse().map_err(|_| {
                    usage(format!(
                        "--server {s:?}: the port must be a number, as in db.example.com:5432"
                    ))
                })?,
            ),
            _ => (s.clone(), db.port),
        };
        db.host = Some(host);
        db.port = port;
        db.container = None;
        if cfg.verify_server.is_none() {
            // Another server: the production password is not sent to it.
            db.password = None;
        }
    }
    Ok(Postgres::new(db))
}

fn check(name: &str, outcome: Outcome, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_string(),
        outcome,
        detail: detail.into(),
    }
}

fn pass_fail(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    check(name, if ok { Outcome::Pass } else { Outcome::Fail }, detail)
}

/// Verifies one backup. An Err means the verification could not run here (the
/// server or client cannot take this backup): nothing is said of the backup.
async fn verify_one(
    cfg: &Config,
    server: &Postgres,
    s: &Subject<'_>,
    quick: bool,
) -> Result<Verification> {
    let started = Instant::now();
    let mut checks = Vec::new();
    // A full verification's test restore can reuse the check pass's decompression.
    let read = if quick {
        let path = s.path.clone();
        match tokio::task::spawn_blocking(move || dump::read_back(&path, None)).await {
            Ok(Ok((summary, sha))) => Ok((summary, sha, Input::stream())),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow!(e)),
        }
    } else {
        let feed = Feed::plan(cfg, server.is_docker(), &s.path, s.manifest.as_ref());
        check_pass(cfg, server, &s.path, s.manifest.as_ref(), feed, true).await
    };
    let (summary, sha, input) = match read {
        Ok((Ok(summary), sha, input)) => (Some(summary), sha, input),
        // Encrypted, and no identity (or only others' keys, mid key rotation)
        // to open it: nothing is said of the archive inside. A quick check
        // reports what it could check; a full one could not run here.
        Ok((Err(e), sha, input))
            if e.is::<dump::Sealed>() || e.is::<crate::crypto::OtherKeys>() =>
        {
            if !quick && e.is::<crate::crypto::OtherKeys>() {
                return Err(e);
            }
            checks.push(check("archive readable", Outcome::Skip, format!("{e}")));
            (None, sha, input)
        }
        Ok((Err(e), sha, input)) => {
            checks.push(check("archive readable", Outcome::Fail, format!("{e:#}")));
            (None, sha, input)
        }
        Err(e) => {
            checks.push(check("archive readable", Outcome::Fail, format!("{e:#}")));
            (None, String::new(), Input::stream())
        }
    };
    match &s.manifest {
        Some(m) if !sha.is_empty() => checks.insert(
            0,
            pass_fail(
                "checksum",
                m.file.sha256 == sha,
                if m.file.sha256 == sha {
                    format!("sha256 {} matches the manifest", &sha[..12])
                } else {
                    format!("sha256 {sha} but the manifest records {}", m.file.sha256)
                },
            ),
        ),
        Some(_) => checks.insert(
            0,
            check(
                "checksum",
                Outcome::Fail,
                "the file could not be read to the end",
            ),
        ),
        None => checks.insert(
            0,
            match &s.manifest_error {
                // It has one, which cannot be read: nothing proves the file.
                Some(e) => check(
                    "checksum",
                    Outcome::Fail,
                    format!("the manifest cannot be read: {e}"),
                ),
                None => check("checksum", Outcome::Skip, "no manifest (seed-era backup)"),
            },
        ),
    }
    if let Some(summary) = &summary {
        checks.push(check(
            "archive readable",
            Outcome::Pass,
            format!(
                "complete archive (format {}): {} TOC entries, {} tables, {}",
                summary.format_version,
                summary.toc_entries,
                summary.tables.len(),
                match summary.tables.iter().map(|t| t.rows).sum::<Option<u64>>() {
                    Some(n) => format!("{n} rows"),
                    None => "rows not countable (compressed inside)".to_string(),
                }
            ),
        ));
        checks.push(manifest_agrees(s.manifest.as_ref(), summary));
    }
    checks.push(globals_check(s));

    let mut server_name = None;
    if !quick {
        match &summary {
            Some(summary) => {
                server_name = Some(server.describe_server());
                full_checks(cfg, server, s, &input, summary, &mut checks).await?;
            }
            None => checks.push(check(
                "test restore",
                Outcome::Skip,
                "the archive cannot be read",
            )),
        }
    }
    Ok(Verification {
        verified_at: Local::now().fixed_offset(),
        quick,
        passed: checks.iter().all(|c| c.outcome != Outcome::Fail),
        sha256: sha,
        server: server_name,
        duration_ms: started.elapsed().as_millis() as u64,
        checks,
    })
}

/// The manifest's tables and row counts, against what the archive holds.
fn manifest_agrees(manifest: Option<&Manifest>, summary: &Summary) -> Check {
    let Some(m) = manifest else {
        return check("manifest matches archive", Outcome::Skip, "no manifest");
    };
    let problems = manifest_disagreements(m, summary);
    if problems.is_empty() {
        pass_fail(
            "manifest matches archive",
            true,
            format!("{} tables, same row counts", summary.tables.len()),
        )
    } else {
        pass_fail("manifest matches archive", false, problems.join("; "))
    }
}

fn globals_check(s: &Subject<'_>) -> Check {
    let (Some(m), Some(g)) = (&s.manifest, &s.globals) else {
        return check(
            "globals checksum",
            Outcome::Skip,
            "no manifest or no globals file",
        );
    };
    match std::fs::read(g) {
        Ok(bytes) => {
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            pass_fail(
                "globals checksum",
                sha == m.globals.sha256,
                if sha == m.globals.sha256 {
                    "matches the manifest".to_string()
                } else {
                    format!("sha256 {sha} but the manifest records {}", m.globals.sha256)
                },
            )
        }
        Err(e) => check(
            "globals checksum",
            Outcome::Fail,
            format!("{}: {e}", g.display()),
        ),
    }
}

/// The test restore and the checks on the restored copy.
async fn full_checks(
    cfg: &Config,
    pg: &Postgres,
    s: &Subject<'_>,
    input: &Input,
    summary: &Summary,
    checks: &mut Vec<Check>,
) -> Result<()> {
    let base = summary
        .database
        .clone()
        .unwrap_or_else(|| cfg.db.name.clone());
    // A free name: a pid repeats across containers (often 1).
    let temp = free_name(
        pg,
        &base,
        &format!(
            "_kbverify_{}_{}",
            Local::now().format("%Y%m%d%H%M%S"),
            std::process::id()
        ),
    )
    .await?;
    // The pg_restore that can read this archive, checked before anything is
    // created. A server or client that cannot take it is this machine's problem,
    // not the backup's: the verification does not run (and records nothing).
    let rc = pg.restore_client(summary).await.map_err(|e| {
        e.context(format!(
            "the verification of {} cannot run on {}",
            s.shown,
            pg.describe_server()
        ))
    })?;
    let pg = &rc.pg;
    // Armed before CREATE DATABASE: an error or a signal from here on drops it
    // (only if this run made it). One that cannot be created says nothing of
    // the backup.
    let undo = create_own_database(pg, &temp, summary, rc.server_major)
        .await
        .with_context(|| format!("cannot create {temp} on {}", pg.describe_server()))?;
    let started = Instant::now();
    let path = s.path.clone();
    let restored = run_pg_restore(
        cfg,
        &rc,
        &path,
        input,
        &temp,
        &["--no-owner", "--no-privileges"],
        summary.tables.len(),
    )
    .await;
    match restored {
        Ok(_) => {
            checks.push(check(
                "test restore",
                Outcome::Pass,
                format!(
                    "into {temp} on {} in {:.1}s",
                    pg.describe_server(),
                    started.elapsed().as_secs_f64()
                ),
            ));
            if let Err(e) = restored_checks(pg, &temp, s, summary, checks).await {
                checks.push(check(
                    "checks on the restored copy",
                    Outcome::Fail,
                    format!("{e:#}"),
                ));
            }
        }
        // The server gone mid-restore is the run's failure, not the backup's.
        Err(e) => match can_run(pg).await {
            Ok(()) => checks.push(check("test restore", Outcome::Fail, format!("{e:#}"))),
            Err(gone) => {
                return Err(gone.context(format!(
                    "the server stopped answering during the test restore ({e:#})"
                )))
            }
        },
    }
    match drop_database(pg, &temp).await {
        Ok(()) => undo.done(),
        // Its guard stays armed: tried again as this run ends, then by `kbackup cleanup`.
        Err(e) => tracing::error!("{e:#}; it is dropped again as this run ends"),
    }
    Ok(())
}

async fn restored_checks(
    pg: &Postgres,
    db: &str,
    s: &Subject<'_>,
    summary: &Summary,
    checks: &mut Vec<Check>,
) -> Result<()> {
    let want = ObjectCounts::expected(&summary.objects);
    let got = checks::object_counts(pg, db).await?;
    let counted = |name: &str, got: u64, want: u64| {
        pass_fail(
            name,
            got == want,
            format!("{got} restored, {want} in the archive"),
        )
    };
    checks.push(counted("tables", got.tables, want.tables));
    checks.push(counted("sequences", got.sequences, want.sequences));
    checks.push(counted("indexes", got.indexes, want.indexes));
    checks.push(pass_fail(
        "constraints",
        got.keys == want.keys && got.foreign_keys == want.foreign_keys,
        format!(
            "{} primary/unique/exclusion and {} foreign keys restored; {} and {} in the archive",
            got.keys, got.foreign_keys, want.keys, want.foreign_keys
        ),
    ));

    // Exact rows: the manifest's counts (what pg_dump read), else the archive's own.
    let (expected, source) = match &s.manifest {
        Some(m) if m.minimal.is_none() => (m.archive.tables.clone(), "the manifest"),
        _ => (summary.tables.clone(), "the archive"),
    };
    if expected.iter().all(|t| t.rows.is_none()) {
        checks.push(check(
            "row counts",
            Outcome::Skip,
            "no exact counts (seed-era backup compressed inside, no manifest)",
        ));
    } else {
        let shown = crate::progress::Progress::phase(&format!(
            "counting the rows of {} tables",
            expected.len()
        ));
        let counted = checks::row_counts(pg, db, &expected).await;
        shown.done();
        match counted {
            Ok(counts) => {
                let diffs = crate::readback::row_mismatches(&expected, &counts, source);
                let total: u64 = counts.iter().sum();
                checks.push(if diffs.is_empty() {
                    pass_fail(
                        "row counts",
                        true,
                        format!(
                            "{} tables, {total} rows, each equal to {source}",
                            expected.len()
                        ),
                    )
                } else {
                    pass_fail("row counts", false, diffs.join("; "))
                });
            }
            Err(e) => checks.push(check("row counts", Outcome::Fail, format!("{e:#}"))),
        }
    }

    let (n_fk, orphans) = checks::orphans(pg, db).await?;
    checks.push(pass_fail(
        "foreign keys hold",
        orphans.is_empty(),
        if orphans.is_empty() {
            format!("{n_fk} foreign keys checked, no orphan rows")
        } else {
            orphans
                .iter()
                .map(|(fk, n)| format!("{fk}: {n} orphan rows"))
                .collect::<Vec<_>>()
                .join("; ")
        },
    ));
    let (n_seq, behind) = checks::sequences_behind(pg, db).await?;
    checks.push(pass_fail(
        "sequences not behind",
        behind.is_empty(),
        if behind.is_empty() {
            format!("{n_seq} column sequences checked, none behind its column's max")
        } else {
            behind
                .iter()
                .map(|(s, last, max)| format!("{s} at {last} but its column holds {max}"))
                .collect::<Vec<_>>()
                .join("; ")
        },
    ));
    let los = checks::scalar(pg, db, "SELECT count(*) FROM pg_largeobject_metadata").await?;
    checks.push(pass_fail(
        "large objects",
        los == summary.large_objects,
        format!("{los} restored, {} in the archive", summary.large_objects),
    ));
    let size = checks::scalar(pg, db, "SELECT pg_database_size(current_database())").await?;
    checks.push(match &s.manifest {
        Some(m) if m.database_size_bytes > 0 => {
            let ratio = size as f64 / m.database_size_bytes as f64;
            pass_fail(
                "restored size",
                (0.2..=5.0).contains(&ratio),
                format!(
                    "{} restored vs {} at backup ({ratio:.2}x; sane is 0.2x to 5x)",
                    human_size(size),
                    human_size(m.database_size_bytes)
                ),
            )
        }
        _ => check(
            "restored size",
            Outcome::Skip,
            format!(
                "{} restored; no manifest size to compare with",
                human_size(size)
            ),
        ),
    });
    Ok(())
}

fn print_report(s: &Subject<'_>, v: &Verification) {
    crate::out!(
        "{} ({}{})",
        s.shown,
        if v.quick { "quick" } else { "full" },
        v.server
            .as_ref()
            .map(|x| format!(", test restore on {x}"))
            .unwrap_or_default()
    );
    for c in &v.checks {
        let tag = match c.outcome {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
        };
        crate::out!("  {tag}  {:26} {}", c.name, c.detail);
    }
    let unread = v
        .checks
        .iter()
        .any(|c| c.name == "archive readable" && c.outcome == Outcome::Skip);
    if v.passed && unread {
        crate::out!(
            "  => the stored file is intact (checksum, age header); its archive was not read: \
             give the identity (BACKUP_AGE_IDENTITY) to check it whole ({:.1}s)\n",
            v.duration_ms as f64 / 1000.0
        );
    } else if v.passed {
        crate::out!(
            "  => all checks passed: the backup is valid and can be used for restore ({:.1}s)\n",
            v.duration_ms as f64 / 1000.0
        );
    } else {
        crate::out!("  => FAILED: do not rely on this backup\n");
    }
}
