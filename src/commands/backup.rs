//! `kbackup backup`: the hourly job.
//!
//! Lock the store, check the database and the disk, stream pg_dump through the
//! archive check and zstd into a temporary file, save the globals, publish with
//! a manifest, place tier copies, rotate. Any failure before publishing leaves
//! no file behind and deletes nothing; rotation runs only after a success.

use anyhow::{Context, Result};
use chrono::Utc;

use crate::cli::BackupArgs;
use crate::clock;
use crate::config::Config;
use crate::error::usage;
use crate::naming::{self, Tier};
use crate::postgres::Postgres;
use crate::remote::Remote;
use crate::retention;
use crate::store::{human_size, Store};
use crate::take::{take, Target};
use crate::{metrics, notify, state};

/// Where `kbackup backup` puts this run: hourly (or `--name`), at `--time` or now.
fn target(cfg: &Config, args: &BackupArgs) -> Result<Target> {
    let (taken_at, backfill) = match &args.time {
        Some(t) => {
            let at = clock::parse_time(t, cfg.calendar.zone, "--time")?;
            // A backup dated in the future would outrank every real one and
            // make the age rule measure from a time that has not come.
            if clock::in_future(at, Utc::now()) {
                return Err(usage(format!(
                    "--time {t:?} is in the future (now is {}); a backfill records a past time. \
                     If this machine's clock is wrong, fix it first (timedatectl)",
                    cfg.calendar.zone.local_time(Utc::now()).to_rfc3339()
                )));
            }
            (at, true)
        }
        None => (Utc::now(), false),
    };
    let mut t = Target {
        tier: Tier::Hourly,
        label: String::new(),
        taken_at,
        backfill,
    };
    match &args.name {
        Some(name) => {
            naming::validate_backup_name(name).map_err(usage)?;
            t.tier = Tier::Named;
            t.label = name.clone();
        }
        None => t.restamp(cfg, taken_at),
    }
    Ok(t)
}

pub async fn run(cfg: &Config, args: &BackupArgs) -> Result<()> {
    // Bad input is refused before anything runs (each database makes its own).
    target(cfg, args)?;
    let store = Store::new(cfg.backup_dir.clone());
    let skip_sync = if args.no_sync {
        Some("--no-sync")
    } else if cfg.other_store && !args.sync {
        Some("--backup-dir names another store than the configured BACKUP_DIR (--sync syncs it anyway)")
    } else {
        None
    };
    let several = cfg.several();
    if args.dry_run {
        let found = crate::databases::on_server(cfg, false).await?;
        for c in &found.dbs {
            if several {
                crate::out!("== {} ==", c.db.name);
            }
            let pg = Postgres::new(c.db.clone());
            dry_run(c, &store, &pg, &target(c, args)?, skip_sync).await?;
        }
        for (c, why) in &found.failed {
            crate::out!("== {} ==\nWould fail: {why}", c.db.name);
        }
        return Ok(());
    }

    // One lock for the run. The holder's words name the databases: a restore
    // of one of them waits for this run.
    let _lock = super::lock_store(
        cfg,
        &store,
        &format!("backup of {}", cfg.describe_databases()),
    )
    .await?;
    notify::started(cfg).await;
    let found = match crate::databases::on_server(cfg, true).await {
        Ok(f) => f,
        Err(e) => {
            // The server could not say which databases it has: every database
            // an earlier run found failed this run (status and metrics say so).
            let e = crate::error::explain(e, &store.root);
            let started = cfg.calendar.zone.local_time(Utc::now());
            let failed: Result<(std::path::PathBuf, u64)> = Err(anyhow::anyhow!("{e:#}"));
            for c in crate::databases::recorded(cfg).all() {
                record(&c, &store, started, started, &failed, None, false).await;
            }
            if let Err(e) = metrics::update(cfg, &store) {
                tracing::warn!("cannot write the metrics file: {e:#}");
            }
            return Err(e);
        }
    };
    if found.dbs.is_empty() && found.failed.is_empty() {
        anyhow::bail!(
            "DB_NAME=all found no database to back up on {}: every one is a template, excluded \
             (BACKUP_EXCLUDE) or closed to connections",
            Postgres::new(cfg.db.clone()).describe_server()
        );
    }
    let dbs = &found.dbs;
    if several {
        let names: Vec<&str> = dbs.iter().map(|c| c.db.name.as_str()).collect();
        tracing::info!(
            "Starting backup of {} databases: {}",
            dbs.len(),
            names.join(", ")
        );
    }
    for p in store.remove_leftovers()? {
        tracing::warn!(
            "Removed an unfinished file left by an interrupted run: {}",
            p.display()
        );
    }
    // What earlier runs left is looked for while the first dump starts (a
    // few queries, said as a warning whenever they finish).
    let (_, mut runs) = tokio::join!(
        crate::leftovers::report(cfg),
        each_database(dbs, args, &store, several, found.failed.len())
    );
    for (c, why) in &found.failed {
        tracing::error!("Backup of {} FAILED: {why}", c.db.name);
        let now = c.calendar.zone.local_time(Utc::now());
        runs.push(Run {
            cfg: c,
            started: now,
            finished: now,
            took: std::time::Duration::ZERO,
            result: Err(anyhow::anyhow!("{why}")),
            synced: vec![],
        });
    }
    // Off-site: only after a successful local backup and rotation. A failure
    // there never removes the local backup; the next run uploads what is missing.
    for r in runs.iter_mut().filter(|r| r.result.is_ok()) {
        // Each destination on its own: one that fails never stops the others.
        for rc in &r.cfg.remotes {
            match skip_sync {
                Some(why) => tracing::info!("Off-site sync to {} skipped: {why}", rc.root()),
                None => {
                    let remote = Remote::new(rc.clone());
                    let done = crate::offsite::step(r.cfg, &store, &remote, !several).await;
                    r.synced.push((rc.label.clone(), done));
                }
            }
        }
    }
    for r in &runs {
        record(
            r.cfg,
            &store,
            r.started,
            r.finished,
            &r.result,
            r.sync_error().as_deref(),
            !several,
        )
        .await;
    }
    if let Err(e) = metrics::update(cfg, &store) {
        tracing::warn!("cannot write the metrics file: {e:#}");
    }
    if several {
        return report_several(cfg, &store, runs).await;
    }
    let r = runs.pop().expect("one database");
    let sync_error = r.sync_error();
    if let (Ok((path, size)), None) = (&r.result, &sync_error) {
        notify::success(
            cfg,
            notify::Success {
                title: format!("Backup of {} complete", cfg.db.name),
                body: format!(
                    "{} ({}) in {:.1}s{}",
                    path.strip_prefix(&store.root).unwrap_or(path).display(),
                    human_size(*size),
                    r.took.as_secs_f64(),
                    r.uploaded_text()
                ),
            },
        )
        .await;
    }
    let uploaded = r.uploaded_text();
    let sync_error = r.sync_error();
    match (r.result, sync_error) {
        (Err(e), _) => Err(e),
        (Ok((path, _)), Some(e)) => Err(anyhow::anyhow!(
            "{e}; the local backup {} was kept",
            path.display()
        )),
        // The overall result is said last, once everything (off-site too) is done.
        (Ok(_), _) => {
            let after = store.scan(&cfg.calendar, &cfg.prefix)?;
            let mine: Vec<_> = after
                .into_iter()
                .filter(|b| b.is_mine(&cfg.prefix))
                .collect();
            tracing::info!(
                "Backup complete! Local: {}, {}{uploaded}",
                human_size(store.disk_usage()),
                crate::store::tier_counts(&mine),
            );
            Ok(())
        }
    }
}

/// Each database in turn (one failing does not stop the others), the
/// cluster's globals dumped once; each outcome recorded as soon as it is known.
async fn each_database<'a>(
    dbs: &'a [Config],
    args: &BackupArgs,
    store: &Store,
    several: bool,
    more: usize,
) -> Vec<Run<'a>> {
    let mut globals = crate::take::Globals::default();
    let mut runs = Vec::with_capacity(dbs.len() + more);
    for c in dbs {
        let clock = std::time::Instant::now();
        let started = c.calendar.zone.local_time(Utc::now());
        let pg = Postgres::new(c.db.clone());
        let result = match target(c, args) {
            Ok(mut t) => job(c, store, &pg, &mut t, &mut globals, several).await,
            Err(e) => Err(e),
        }
        .map_err(|e| crate::error::explain(e, &store.root));
        if let (true, Err(e)) = (several, &result) {
            tracing::error!("Backup of {} FAILED: {e:#}", c.db.name);
        }
        let finished = c.calendar.zone.local_time(Utc::now());
        // Recorded at once: a run stopped later still leaves this one's outcome.
        record(c, store, started, finished, &result, None, false).await;
        runs.push(Run {
            cfg: c,
            started,
            finished,
            took: clock.elapsed(),
            result,
            synced: vec![],
        });
    }
    runs
}

/// One database's part of a run.
struct Run<'a> {
    cfg: &'a Config,
    started: chrono::DateTime<chrono::FixedOffset>,
    /// When its own part ended (its dump, placement and rotation).
    finished: chrono::DateTime<chrono::FixedOffset>,
    took: std::time::Duration,
    result: Result<(std::path::PathBuf, u64)>,
    /// Each destination's sync (label, outcome), in the configured order.
    synced: Vec<(String, Result<crate::offsite::Report>)>,
}

impl Run<'_> {
    /// Every destination that failed, each named (its error says where).
    fn sync_error(&self) -> Option<String> {
        let failed: Vec<String> = self
            .synced
            .iter()
            .filter_map(|(_, r)| r.as_ref().err().map(|e| format!("{e:#}")))
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    }

    fn uploaded_text(&self) -> String {
        let done: Vec<(&String, usize)> = self
            .synced
            .iter()
            .filter_map(|(label, r)| Some((label, r.as_ref().ok()?.uploaded.len())))
            .collect();
        match done.as_slice() {
            [] => String::new(),
            [(_, n)] if self.synced.len() == 1 => format!("; off-site: {n} file(s) uploaded"),
            many => format!(
                "; off-site: {}",
                many.iter()
                    .map(|(label, n)| format!("{n} file(s) uploaded to {label}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// `kairon: hourly/kairon_2026....dump.zst (12.1 MB) in 3.2s`, or its error.
    fn line(&self, root: &std::path::Path) -> String {
        match (&self.result, self.sync_error()) {
            (Ok((path, size)), None) => format!(
                "{}: {} ({}) in {:.1}s{}",
                self.cfg.db.name,
                path.strip_prefix(root).unwrap_or(path).display(),
                human_size(*size),
                self.took.as_secs_f64(),
                self.uploaded_text()
            ),
            (Ok((path, _)), Some(e)) => format!(
                "{}: FAILED off-site (the local backup {} was kept): {e}",
                self.cfg.db.name,
                path.display()
            ),
            (Err(e), _) => format!("{}: FAILED: {e:#}", self.cfg.db.name),
        }
    }

    fn ok(&self) -> bool {
        self.result.is_ok() && self.sync_error().is_none()
    }
}

/// The end of a run over several databases: a summary line per database in
/// the seed's form, one alert listing every failure (and the successes), or
/// one success message; exit 1 when any failed.
async fn report_several(cfg: &Config, store: &Store, runs: Vec<Run<'_>>) -> Result<()> {
    let after = store.scan(&cfg.calendar, &cfg.prefix)?;
    for r in runs.iter().filter(|r| r.ok()) {
        let mine: Vec<_> = after
            .iter()
            .filter(|b| b.is_mine(&r.cfg.prefix))
            .cloned()
            .collect();
        tracing::info!(
            "Backup complete! {}: {}{}",
            r.cfg.db.name,
            crate::store::tier_counts(&mine),
            r.uploaded_text()
        );
    }
    let failed: Vec<&Run> = runs.iter().filter(|r| !r.ok()).collect();
    let lines: Vec<String> = runs.iter().map(|r| r.line(&store.root)).collect();
    if failed.is_empty() {
        tracing::info!(
            "Backups complete: all {} databases. Local: {}",
            runs.len(),
            human_size(store.disk_usage())
        );
        notify::success(
            cfg,
            notify::Success {
                title: format!("Backups of {} databases complete", runs.len()),
                body: lines.join("\n"),
            },
        )
        .await;
        return Ok(());
    }
    let names = |of: &dyn Fn(&Run) -> bool| -> Vec<&str> {
        failed
            .iter()
            .filter(|r| of(r))
            .map(|r| r.cfg.db.name.as_str())
            .collect()
    };
    let refused = names(&|r| r.result.as_ref().is_err_and(|e| !crate::error::alerts(e)));
    let local = names(&|r| r.result.as_ref().is_err_and(crate::error::alerts));
    let offsite = names(&|r| r.result.is_ok());
    let mut parts = Vec::new();
    if !local.is_empty() {
        parts.push(format!(
            "Backup of {} of {} databases failed: {}",
            local.len(),
            runs.len(),
            local.join(", ")
        ));
    }
    if !offsite.is_empty() {
        parts.push(format!(
            "off-site sync of {} failed (the local backups were kept)",
            offsite.join(", ")
        ));
    }
    if !refused.is_empty() {
        parts.push(format!("refused (bad input): {}", refused.join(", ")));
    }
    let title = parts.join("; ");
    let backed_up = runs.iter().filter(|r| r.result.is_ok()).count();
    let message = format!(
        "{title}. {backed_up} of {} databases backed up. Each database's outcome:\n  {}",
        runs.len(),
        lines.join("\n  ")
    );
    // Only bad input (an existing --name): said, not alerted, exit 2.
    if local.is_empty() && offsite.is_empty() {
        return Err(crate::error::usage(message));
    }
    notify::alert(
        cfg,
        notify::Alert {
            kind: notify::Kind::Backup,
            title,
            body: lines.join("\n"),
        },
    )
    .await;
    Err(anyhow::anyhow!(message))
}

/// The job under the lock: take, place, rotate. Returns the dump and its size.
async fn job(
    cfg: &Config,
    store: &Store,
    pg: &Postgres,
    target: &mut Target,
    globals: &mut crate::take::Globals,
    several: bool,
) -> Result<(std::path::PathBuf, u64)> {
    if several {
        tracing::info!("Starting backup of {}...", cfg.db.name);
    } else {
        tracing::info!("Starting backup...");
    }
    // A database an in-place restore left half-done (the run was killed) is not
    // backed up: that backup would become the newest of a half-restored database.
    if let Some((_, e)) = crate::cleanup::incomplete(&store.root, &cfg.db.name)
        .into_iter()
        .next()
    {
        anyhow::bail!(
            "{} is not backed up: {} Put it back first (the command above); the next successful restore of it \
             clears this, or `kbackup cleanup` once you have checked it",
            cfg.db.name,
            e.note.unwrap_or_default()
        );
    }
    if target.tier == Tier::Named
        && store.has_stem(Tier::Named, &naming::stem(&cfg.prefix, &target.label, 1))
    {
        return Err(usage(format!(
            "a named backup {:?} already exists in {}; choose another --name (backups are never overwritten)",
            target.label,
            store.tier_dir(Tier::Named).display()
        )));
    }

    let (path, stem, size) = take(cfg, store, pg, target, globals).await?;
    tracing::info!("Dump created: {} ({})", path.display(), human_size(size));

    if target.tier == Tier::Hourly {
        let placements = retention::placement(
            &cfg.policy,
            &cfg.calendar,
            target.taken_at,
            |tier, label| store.has_stem(tier, &naming::stem(&cfg.prefix, label, 1)),
        );
        for (tier, label) in placements {
            let tier_stem = naming::stem(&cfg.prefix, &label, 1);
            store
                .place_copy(&path, &stem, cfg.format(), tier, &tier_stem)
                .with_context(|| {
                    format!(
                        "the backup {} is whole and kept, but its {} copy could not be placed",
                        path.display(),
                        tier.dir()
                    )
                })?;
            tracing::info!("{} backup created", tier.title());
        }
    }

    tracing::info!("Rotating old backups...");
    let backups = store.scan(&cfg.calendar, &cfg.prefix)?;
    // Ages are measured from the wall clock, never from a backup's own time.
    let decisions = crate::rotation::plan(cfg, &backups, Utc::now());
    crate::rotation::apply(store, &decisions).with_context(|| {
        format!(
            "the backup {} is whole and kept, but rotation failed",
            path.display()
        )
    })?;

    Ok((path, size))
}

/// Keeps the run's outcome for `status` and the metrics file, and raises the
/// alert when it failed. A failure to record is logged, never hides the result.
async fn record(
    cfg: &Config,
    store: &Store,
    started: chrono::DateTime<chrono::FixedOffset>,
    finished: chrono::DateTime<chrono::FixedOffset>,
    result: &Result<(std::path::PathBuf, u64)>,
    sync_error: Option<&str>,
    alert: bool,
) {
    // Bad input (an existing --name...) is not a failed run: not recorded, not alerted.
    if result.as_ref().is_err_and(|e| !crate::error::alerts(e)) {
        return;
    }
    let previous = state::last_backup(&store.root, &cfg.prefix, &cfg.db.name);
    let run = state::BackupRun {
        database: cfg.db.name.clone(),
        started_at: started,
        finished_at: finished,
        ok: result.is_ok() && sync_error.is_none(),
        error: result
            .as_ref()
            .err()
            .map(|e| format!("{e:#}"))
            .or(sync_error.map(String::from)),
        path: result.as_ref().ok().map(|(p, _)| {
            p.strip_prefix(&store.root)
                .unwrap_or(p)
                .display()
                .to_string()
        }),
        size_bytes: result.as_ref().ok().map(|(_, s)| *s),
        last_success_at: match (result, previous) {
            (Ok(_), _) => Some(finished),
            // The record this run wrote after its dump is not an earlier success.
            (Err(_), Some(p)) if p.started_at == started => {
                p.last_success_at.filter(|t| *t < started)
            }
            (Err(_), p) => p.and_then(|p| p.last_success_at),
        },
    };
    if let Err(e) = state::record_backup(&store.root, &cfg.prefix, &run) {
        tracing::warn!("cannot record the run's result for `kbackup status`: {e:#}");
    }
    if let (Err(e), true) = (result, alert) {
        notify::alert(
            cfg,
            notify::Alert {
                kind: notify::Kind::Backup,
                title: format!("Backup of {} failed", cfg.db.name),
                body: format!("{e:#}"),
            },
        )
        .await;
    }
}

async fn dry_run(
    cfg: &Config,
    store: &Store,
    pg: &Postgres,
    target: &Target,
    skip_sync: Option<&str>,
) -> Result<()> {
    // The pg_dump the run would use is chosen for the server (read-only queries).
    let (pg, server) = match crate::take::preflight(pg).await {
        Ok((info, chosen)) => (chosen, format!("PostgreSQL {}", info.version)),
        Err(e) => (
            pg.clone(),
            format!("not reachable now ({e:#}); the run picks its pg_dump once it is"),
        ),
    };
    let pg = &pg;
    let backups = store.scan(&cfg.calendar, &cfg.prefix)?;
    let stem = match target.tier {
        Tier::Named => naming::stem(&cfg.prefix, &target.label, 1),
        _ => store.free_stem(target.tier, &cfg.prefix, &target.label),
    };
    let rel = format!("{}/{}.{}", target.tier.dir(), stem, cfg.format().ext());
    crate::out!("Dry run: nothing will be changed.");
    crate::out!(
        "Database: {} ({} mode), {server}",
        pg.describe(),
        if pg.is_docker() { "docker" } else { "direct" }
    );
    crate::out!("Would run: {}", pg.pg_dump());
    crate::out!(
        "  streamed through the archive check, zstd level {} and SHA-256 into {}",
        cfg.compression_level,
        store.root.join(&rel).display()
    );
    crate::out!("Would run: {}", pg.pg_dumpall_globals(true));
    crate::out!(
        "Would write: {rel} (+ {stem}.{} and {stem}.{})",
        naming::MANIFEST_EXT,
        cfg.format().globals_ext()
    );
    if target.tier == Tier::Named && store.has_stem(Tier::Named, &stem) {
        crate::out!(
            "Would refuse: named backup {:?} already exists",
            target.label
        );
    }
    let mut with_new = backups.clone();
    if target.tier == Tier::Hourly {
        for (tier, label) in retention::placement(
            &cfg.policy,
            &cfg.calendar,
            target.taken_at,
            |tier, label| store.has_stem(tier, &naming::stem(&cfg.prefix, label, 1)),
        ) {
            crate::out!(
                "Would place: {}/{}.{} (hard link)",
                tier.dir(),
                naming::stem(&cfg.prefix, &label, 1),
                cfg.format().ext()
            );
            with_new.push(hypothetical(
                cfg,
                store,
                tier,
                &naming::stem(&cfg.prefix, &label, 1),
                target,
            ));
        }
    }
    with_new.push(hypothetical(cfg, store, target.tier, &stem, target));
    let decisions = crate::rotation::plan(cfg, &with_new, Utc::now());
    let deletions: Vec<_> = decisions.iter().filter(|(d, _)| !d.keep).collect();
    if deletions.is_empty() {
        crate::out!("Rotation would delete nothing.");
    } else {
        crate::out!("Rotation would delete {}:", deletions.len());
        for (d, b) in deletions {
            crate::out!("  {}  ({})", b.rel_path, d.reasons_text());
        }
    }
    if cfg.remotes.is_empty() {
        crate::out!("Off-site: no remote configured (RCLONE_REMOTE_NAME, RCLONE_REMOTES)");
    }
    for rc in &cfg.remotes {
        match skip_sync {
            Some(why) => crate::out!("Off-site: would skip {}: {why}", rc.root()),
            None if !rc.prune => crate::out!(
                "Off-site: would upload to {} what it lacks (sidecars first) and check it; nothing is ever \
                 deleted there (BACKUP_REMOTE_PRUNE=false)",
                rc.root()
            ),
            None => crate::out!(
                "Off-site: would upload to {} what it lacks (sidecars first), check it, then apply the same \
                 retention to the remote's own listing (`kbackup list --remote` shows it)",
                rc.root()
            ),
        }
    }
    Ok(())
}

/// The backup a dry run would create, for planning rotation around it.
fn hypothetical(
    cfg: &Config,
    store: &Store,
    tier: Tier,
    stem: &str,
    target: &Target,
) -> crate::store::Backup {
    let file = format!("{stem}.{}", cfg.format().ext());
    crate::store::Backup {
        tier,
        path: store.tier_dir(tier).join(&file),
        rel_path: format!("{}/{file}", tier.dir()),
        parsed: naming::Parsed {
            stem: stem.to_string(),
            prefix: cfg.prefix.clone(),
            label: target.label.clone(),
            format: cfg.format(),
            time: None,
        },
        size: 0,
        time: cfg.calendar.zone.local_time(target.taken_at),
        manifest: None,
        manifest_error: None,
        verification: Default::default(),
        header_major: None,
    }
}
