//! `kbackup backup`: the hourly job.
//!
//! Lock the store, check the database and the disk, stream pg_dump through the
//! archive check and zstd into a temporary file, save the globals, publish with
//! a manifest, place tier copies, rotate. Any failure before publishing leaves
//! no file behind and deletes nothing; rotation runs only after a success.

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};

use crate::cli::BackupArgs;
use crate::clients::Need;
use crate::clock;
use crate::commands::sync;
use crate::commands::{list, rotate};
use crate::config::Config;
use crate::dump;
use crate::error::usage;
use crate::manifest::{FileInfo, GlobalsInfo, Manifest, SourceInfo, MANIFEST_VERSION};
use crate::naming::{self, Format, Tier};
use crate::postgres::{Postgres, ServerInfo};
use crate::process::{ProcessError, StreamError};
use crate::remote::Remote;
use crate::retention;
use crate::store::{human_size, Staged, Store};
use crate::{metrics, notify, state};

/// Where a backup goes: its tier and label (the hourly time, or the --name).
pub(crate) struct Target {
    tier: Tier,
    label: String,
    /// The time the backup is recorded as taken: --time, or the moment pg_dump starts.
    taken_at: DateTime<Utc>,
    backfill: bool,
}

impl Target {
    /// A named backup taken now (the safety backup before an in-place restore).
    pub(crate) fn named(name: &str) -> Target {
        Target {
            tier: Tier::Named,
            label: name.to_string(),
            taken_at: Utc::now(),
            backfill: false,
        }
    }

    fn new(cfg: &Config, args: &BackupArgs) -> Result<Target> {
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

    /// Records the backup as taken at `now` (the dump's start), unless backfilling.
    fn restamp(&mut self, cfg: &Config, now: DateTime<Utc>) {
        if !self.backfill {
            self.taken_at = now;
        }
        if self.tier == Tier::Hourly {
            self.label = cfg.calendar.label(Tier::Hourly, self.taken_at);
        }
    }
}

pub async fn run(cfg: &Config, args: &BackupArgs) -> Result<()> {
    let mut target = Target::new(cfg, args)?;
    let store = Store::new(cfg.backup_dir.clone());
    let pg = Postgres::new(cfg.db.clone());
    if args.dry_run {
        return dry_run(cfg, &store, &pg, &target);
    }

    let _lock = super::lock_store(cfg, &store, "backup").await?;
    notify::started(cfg).await;
    let clock = std::time::Instant::now();
    let started = cfg.calendar.zone.local_time(Utc::now());
    let result = job(cfg, &store, &pg, &mut target).await;
    // Off-site: only after a successful local backup and rotation. A failure
    // there never removes the local backup; the next run uploads what is missing.
    let synced = match (&result, &cfg.remote) {
        (Ok(_), Some(rc)) => Some(sync::step(cfg, &store, &Remote::new(rc.clone())).await),
        _ => None,
    };
    let sync_error = match &synced {
        Some(Err(e)) => Some(format!("{e:#}")),
        _ => None,
    };
    record(cfg, &store, started, &result, sync_error.as_deref()).await;
    if let (Ok((path, size)), None) = (&result, &sync_error) {
        notify::success(
            cfg,
            notify::Success {
                title: format!("Backup of {} complete", cfg.db.name),
                body: format!(
                    "{} ({}) in {:.1}s{}",
                    path.strip_prefix(&store.root).unwrap_or(path).display(),
                    human_size(*size),
                    clock.elapsed().as_secs_f64(),
                    match &synced {
                        Some(Ok(r)) => format!("; off-site: {} file(s) uploaded", r.uploaded.len()),
                        _ => String::new(),
                    }
                ),
            },
        )
        .await;
    }
    match (result, synced) {
        (Err(e), _) => Err(e),
        (Ok((path, _)), Some(Err(e))) => {
            Err(e.context(format!("the local backup {} was kept", path.display())))
        }
        (Ok(_), _) => Ok(()),
    }
}

/// The job under the lock: take, place, rotate. Returns the dump and its size.
async fn job(
    cfg: &Config,
    store: &Store,
    pg: &Postgres,
    target: &mut Target,
) -> Result<(std::path::PathBuf, u64)> {
    tracing::info!("Starting backup...");
    for p in store.remove_leftovers()? {
        tracing::warn!(
            "Removed an unfinished file left by an interrupted run: {}",
            p.display()
        );
    }
    crate::leftovers::report(cfg).await;
    if target.tier == Tier::Named
        && store.has_stem(Tier::Named, &naming::stem(&cfg.prefix, &target.label, 1))
    {
        return Err(usage(format!(
            "a named backup {:?} already exists in {}; choose another --name (backups are never overwritten)",
            target.label,
            store.tier_dir(Tier::Named).display()
        )));
    }

    let (path, stem, size) = take(cfg, store, pg, target).await?;
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
            store.place_copy(&path, &stem, Format::CustomZstd, tier, &tier_stem)?;
            tracing::info!("{} backup created", tier.title());
        }
    }

    tracing::info!("Rotating old backups...");
    let backups = store.scan(&cfg.calendar, &cfg.prefix)?;
    // Ages are measured from the wall clock, never from a backup's own time.
    let decisions = rotate::plan(cfg, &backups, Utc::now());
    rotate::apply(store, &decisions)?;

    let after = store.scan(&cfg.calendar, &cfg.prefix)?;
    tracing::info!(
        "Backup complete! Local: {}, {}",
        human_size(store.disk_usage()),
        list::tier_counts(&after)
    );
    Ok((path, size))
}

/// Keeps the run's outcome for `status` and the metrics file, and raises the
/// alert when it failed. A failure to record is logged, never hides the result.
async fn record(
    cfg: &Config,
    store: &Store,
    started: chrono::DateTime<chrono::FixedOffset>,
    result: &Result<(std::path::PathBuf, u64)>,
    sync_error: Option<&str>,
) {
    let finished = cfg.calendar.zone.local_time(Utc::now());
    let previous = state::last_backup(&store.root);
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
        last_success_at: if result.is_ok() {
            Some(finished)
        } else {
            previous.and_then(|p| p.last_success_at)
        },
    };
    if let Err(e) = state::record_backup(&store.root, &run) {
        tracing::warn!("cannot record the run's result for `kbackup status`: {e:#}");
    }
    if let Err(e) = metrics::update(cfg, store) {
        tracing::warn!("cannot write the metrics file: {e:#}");
    }
    if let Err(e) = result {
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

/// Takes one backup into `target`'s tier and publishes it (no tier copies, no
/// rotation): the part shared with the safety backup of `restore --in-place`.
/// Call with the store locked. Returns the dump's path, its stem and size.
pub(crate) async fn take(
    cfg: &Config,
    store: &Store,
    pg: &Postgres,
    target: &mut Target,
) -> Result<(std::path::PathBuf, String, u64)> {
    let (info, pg) = preflight(pg).await?;
    let pg = &pg;
    check_disk(cfg, store, &info)?;

    tracing::info!("Creating database dump...");
    let started = Utc::now();
    target.restamp(cfg, started);
    let stem = match target.tier {
        Tier::Named => naming::stem(&cfg.prefix, &target.label, 1),
        _ => store.free_stem(target.tier, &cfg.prefix, &target.label),
    };
    let tmp = store.temp_file(target.tier)?;
    let out = tmp.reopen().context("temporary dump file")?;
    let level = cfg.compression_level;
    // If we stop (timeout, Ctrl-C), the server ends pg_dump's session: killing
    // the `docker exec` client alone would leave pg_dump running in the container.
    let app = format!(
        "kbackup-{}-{}",
        std::process::id(),
        started.timestamp_micros()
    );
    let end_session = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = {}",
        crate::postgres::literal(&app)
    );
    let undo = crate::cleanup::register(pg, vec![end_session.clone()]);
    let written = pg
        .pg_dump(&app)
        .stream(cfg.timeout, move |stdout| {
            dump::write_compressed(stdout, out, level)
        })
        .await;
    if written.is_err() {
        let _ = pg.admin(&[&end_session], None).await;
    }
    undo.done();
    let written = written.map_err(|e| dump_error(pg, e))?;
    let finished = Utc::now();
    tracing::debug!(
        "pg_dump done in {:.1}s: {} archive bytes -> {} stored, {} tables",
        (finished - started).num_milliseconds() as f64 / 1000.0,
        written.summary.archive_bytes,
        written.size,
        written.summary.tables.len()
    );

    let (globals, role_passwords) = dump_globals(pg, cfg, &info).await?;
    let zone = cfg.calendar.zone;
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        kbackup_version: env!("CARGO_PKG_VERSION").to_string(),
        database: cfg.db.name.clone(),
        prefix: cfg.prefix.clone(),
        name: (target.tier == Tier::Named).then(|| target.label.clone()),
        file: FileInfo {
            format: Format::CustomZstd,
            sha256: written.sha256.clone(),
            size_bytes: written.size,
            compression: format!("zstd level {level}"),
        },
        started_at: zone.local_time(target.taken_at),
        finished_at: zone.local_time(target.taken_at + (finished - started)),
        source: SourceInfo {
            mode: if pg.is_docker() { "docker" } else { "direct" }.to_string(),
            container: cfg.db.container.clone(),
            host: cfg.db.host.clone(),
            port: cfg.db.port,
            user: cfg.db.user.clone(),
        },
        server_version: info.version.clone(),
        server_major: Some(info.major()),
        pg_dump_version: written.summary.pg_dump_version.clone().unwrap_or_default(),
        database_size_bytes: info.database_size,
        archive: written.summary,
        globals: GlobalsInfo {
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&globals)),
            size_bytes: globals.len() as u64,
            role_passwords,
        },
    };
    let path = store.publish(
        target.tier,
        &stem,
        Staged {
            dump: tmp,
            format: Format::CustomZstd,
            manifest,
            globals,
        },
    )?;
    Ok((path, stem, written.size))
}

/// Checks everything a dump needs before it starts, with the seeds' errors, and
/// picks a pg_dump that can dump this server (see `Postgres::client_for`):
/// returns the server and the `Postgres` whose tools will run.
async fn preflight(pg: &Postgres) -> Result<(ServerInfo, Postgres)> {
    pg.check_container().await?;
    let info = pg.with_some_client("pg_dump").await?.server_info().await?;
    let need = Need::Dump {
        server_major: info.major(),
    };
    let job = format!("dump PostgreSQL {}", info.version);
    let (pg, _) = pg.client_for("pg_dump", need, &job).await?;
    Ok((info, pg))
}

/// Fails early when the dump cannot fit. The estimate is the last backup's size
/// scaled by how much the database grew since (with a 25% margin), or, with no
/// history, the database size itself.
fn check_disk(cfg: &Config, store: &Store, info: &ServerInfo) -> Result<()> {
    let available = store.free_space()?;
    let last = store
        .scan(&cfg.calendar, &cfg.prefix)?
        .into_iter()
        .filter_map(|b| b.manifest)
        .find(|m| m.database_size_bytes > 0);
    let required = match last {
        Some(m) => {
            let growth = info.database_size as f64 / m.database_size_bytes as f64;
            (m.file.size_bytes as f64 * growth.max(1.0) * 1.25) as u64
        }
        None => info.database_size,
    };
    if available < required {
        bail!(
            "Insufficient disk space. Available: {}, Required: {} (in {}); free space there or keep fewer backups \
             (BACKUP_KEEP_HOURLY, BACKUP_RETENTION_DAYS)",
            human_size(available),
            human_size(required),
            store.root.display()
        );
    }
    Ok(())
}

fn dump_error(pg: &Postgres, e: StreamError) -> anyhow::Error {
    match e {
        StreamError::Process(p @ ProcessError::Failed { .. }) => {
            let stderr = p.stderr().to_string();
            if stderr.contains("server version mismatch") {
                anyhow!("pg_dump is older than the server: {stderr}; install the client tools of the server's version (or newer) and point POSTGRES_BIN_DIR at them")
            } else if stderr.contains("connection to server")
                || stderr.contains("could not connect")
            {
                pg.connect_error(p)
            } else {
                anyhow!(p).context(format!(
                    "pg_dump of {} failed; no backup was written",
                    pg.describe()
                ))
            }
        }
        StreamError::Process(p) => pg.tool_error("pg_dump", p),
        StreamError::Local(c) => c.context(format!(
            "the dump of {} is not a complete archive; no backup was written",
            pg.describe()
        )),
    }
}

/// `pg_dumpall --globals-only`, with the role password hashes when the role
/// may read them (asked of the server up front, not guessed from an error's
/// words); without them it says so.
async fn dump_globals(pg: &Postgres, cfg: &Config, info: &ServerInfo) -> Result<(Vec<u8>, bool)> {
    let with_passwords = info.reads_role_passwords;
    let out = pg
        .pg_dumpall_globals(with_passwords)
        .output(cfg.timeout)
        .await
        .map_err(|e| pg.tool_error("pg_dumpall", e))
        .context("saving the cluster's globals (roles, tablespaces)")?;
    if !with_passwords {
        tracing::warn!(
            "Globals saved without role passwords: {} may not read them (not a superuser); \
             set role passwords again after a restore onto a fresh server",
            cfg.db.user
        );
    }
    Ok((out, with_passwords))
}

fn dry_run(cfg: &Config, store: &Store, pg: &Postgres, target: &Target) -> Result<()> {
    let backups = store.scan(&cfg.calendar, &cfg.prefix)?;
    let stem = match target.tier {
        Tier::Named => naming::stem(&cfg.prefix, &target.label, 1),
        _ => store.free_stem(target.tier, &cfg.prefix, &target.label),
    };
    let rel = format!(
        "{}/{}.{}",
        target.tier.dir(),
        stem,
        Format::CustomZstd.ext()
    );
    println!("Dry run: nothing will be changed.");
    println!(
        "Database: {} ({} mode)",
        pg.describe(),
        if pg.is_docker() { "docker" } else { "direct" }
    );
    println!("Would run: {}", pg.pg_dump("kbackup-<pid>-<time>"));
    println!(
        "  streamed through the archive check, zstd level {} and SHA-256 into {}",
        cfg.compression_level,
        store.root.join(&rel).display()
    );
    println!("Would run: {}", pg.pg_dumpall_globals(true));
    println!(
        "Would write: {rel} (+ {stem}.{} and {stem}.{})",
        naming::MANIFEST_EXT,
        naming::GLOBALS_EXT
    );
    if target.tier == Tier::Named && store.has_stem(Tier::Named, &stem) {
        println!(
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
            println!(
                "Would place: {}/{}.{} (hard link)",
                tier.dir(),
                naming::stem(&cfg.prefix, &label, 1),
                Format::CustomZstd.ext()
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
    let decisions = rotate::plan(cfg, &with_new, Utc::now());
    let deletions: Vec<_> = decisions.iter().filter(|(d, _)| !d.keep).collect();
    if deletions.is_empty() {
        println!("Rotation would delete nothing.");
    } else {
        println!("Rotation would delete {}:", deletions.len());
        for (d, b) in deletions {
            println!("  {}  ({})", b.rel_path, d.reasons_text());
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
    let file = format!("{stem}.{}", Format::CustomZstd.ext());
    crate::store::Backup {
        tier,
        path: store.tier_dir(tier).join(&file),
        rel_path: format!("{}/{file}", tier.dir()),
        parsed: naming::Parsed {
            stem: stem.to_string(),
            prefix: cfg.prefix.clone(),
            label: target.label.clone(),
            format: Format::CustomZstd,
            time: None,
        },
        size: 0,
        time: cfg.calendar.zone.local_time(target.taken_at),
        manifest: None,
        manifest_error: None,
        verification: Default::default(),
    }
}
