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

use crate::archive::{self, Summary, TableData};
use crate::checks;
use crate::cleanup;
use crate::cli::RestoreArgs;
use crate::clients::{self, RestoreMode};
use crate::clock;
use crate::commands::backup::{self, Target as BackupTarget};
use crate::commands::list;
use crate::commands::sync;
use crate::config::Config;
use crate::dump;
use crate::error::usage;
use crate::manifest::Manifest;
use crate::naming::{self, Tier, GLOBALS_EXT, MANIFEST_EXT};
use crate::postgres::{ident, literal, version_major, Postgres, RestoreClient};
use crate::process::StreamError;
use crate::remote::Remote;
use crate::select::{self, Selection, Selector};
use crate::store::{human_size, loose_file, Backup, Store};

/// PostgreSQL's limit on identifier length, in bytes.
const MAX_IDENT: usize = 63;

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
        bail!(roles_message(&missing_roles, &source));
    }
    if let Some(e) = &existing {
        if !args.yes {
            confirm(cfg, &target, e, &source).await?;
        }
    }
    if args.with_globals && !missing_roles.is_empty() {
        create_missing_roles(&pg, &source, &missing_roles).await?;
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
    let backups: Vec<Backup> = sync::remote_backups(cfg, &listing)
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

async fn missing_roles(pg: &Postgres, summary: &Summary) -> Result<Vec<String>> {
    if summary.roles.is_empty() {
        return Ok(vec![]);
    }
    let have: BTreeSet<String> = pg
        .query(&pg.db.maintenance_db, "SELECT rolname FROM pg_roles")
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next())
        .collect();
    Ok(summary
        .roles
        .iter()
        .filter(|r| !have.contains(*r))
        .cloned()
        .collect())
}

fn roles_message(missing: &[String], source: &Source) -> String {
    let how = match &source.globals {
        Some(g) => format!(
            "Create them from the globals saved with the backup, then run the restore again:\n  \
             psql -d postgres -f {}\nor rerun with --with-globals, which creates just the missing roles from that file.",
            g.display()
        ),
        None => "This backup has no saved globals (seed-era file): create the roles by hand (CREATE ROLE ...), \
                 then run the restore again."
            .to_string(),
    };
    format!(
        "The backup needs roles that do not exist on this server: {}. Nothing was changed. {how}",
        missing.join(", ")
    )
}

/// Creates the missing roles (and their memberships) from the saved globals;
/// roles that exist are left exactly as they are.
async fn create_missing_roles(pg: &Postgres, source: &Source, missing: &[String]) -> Result<()> {
    let Some(globals) = &source.globals else {
        bail!(roles_message(missing, source))
    };
    let text = std::fs::read_to_string(globals)
        .with_context(|| format!("cannot read {}", globals.display()))?;
    let statements = role_statements(&text, missing);
    tracing::info!(
        "Creating roles {} from {}",
        missing.join(", "),
        globals.display()
    );
    pg.admin(&statements, None)
        .await
        .map_err(|e| anyhow!(e))
        .context("creating the missing roles")?;
    Ok(())
}

/// The statements of a `pg_dumpall --globals-only` file that concern `roles`:
/// their CREATE ROLE and ALTER ROLE, and memberships granted to them.
fn role_statements(globals: &str, roles: &[String]) -> Vec<String> {
    let wanted: BTreeSet<&str> = roles.iter().map(String::as_str).collect();
    globals
        .lines()
        .filter(|line| {
            let words = archive::sql_words(line);
            let upper: Vec<String> = words
                .iter()
                .take(2)
                .map(|w| w.to_ascii_uppercase())
                .collect();
            match upper.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["CREATE", "ROLE"] | ["ALTER", "ROLE"] => words
                    .get(2)
                    .is_some_and(|w| wanted.contains(archive::unquote(w).as_str())),
                ["GRANT", _] => archive::acl_roles(line)
                    .first()
                    .is_some_and(|r| wanted.contains(r.as_str())),
                _ => false,
            }
        })
        .map(String::from)
        .collect()
}

/// A name derived from `base` that fits PostgreSQL's 63 bytes: `base` is cut
/// (on a character boundary) to leave room for `suffix`.
pub fn derived_name(base: &str, suffix: &str) -> String {
    let mut end = base.len().min(MAX_IDENT.saturating_sub(suffix.len()));
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &base[..end])
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

/// CREATE DATABASE for a restore target: the archive's encoding and locale, and
/// its owner when that role exists.
/// The options of CREATE DATABASE that carry the archive's encoding and
/// locale, with the server version that introduced each: a newer pg_dump
/// writes them all (`LOCALE_PROVIDER = libc` for a PostgreSQL 13 database).
const CREATE_OPTIONS: &[(&str, u32)] = &[
    ("ENCODING", 0),
    ("LOCALE_PROVIDER", 15),
    ("LOCALE", 13),
    ("LC_COLLATE", 0),
    ("LC_CTYPE", 0),
    ("ICU_LOCALE", 15),
    ("ICU_RULES", 16),
    ("BUILTIN_LOCALE", 17),
];

/// CREATE DATABASE `name` with the archive's encoding, and its locale as far
/// as a server of `locale_for` (its major version) understands it; None: the
/// encoding only (the server's default locale).
fn create_database_sql(
    name: &str,
    summary: &Summary,
    owner_exists: bool,
    locale_for: Option<u32>,
) -> String {
    let mut sql = format!("CREATE DATABASE {} WITH TEMPLATE template0", ident(name));
    if let Some(create) = &summary.database_entries.create {
        let opts = create_options(create);
        for (key, since) in CREATE_OPTIONS {
            let known = match locale_for {
                Some(server) => clients::order(server) >= clients::order(*since),
                None => *key == "ENCODING",
            };
            if let Some(v) = opts.get(*key).filter(|_| known) {
                sql.push_str(&format!(" {key} = {v}"));
            }
        }
    }
    if let Some(owner) = summary
        .database_entries
        .owner
        .as_deref()
        .filter(|_| owner_exists)
    {
        sql.push_str(&format!(" OWNER = {}", ident(owner)));
    }
    sql
}

/// `KEY = value` pairs of a CREATE DATABASE statement, values kept as SQL.
fn create_options(create: &str) -> BTreeMap<String, String> {
    let mut tokens: Vec<String> = Vec::new();
    let mut chars = create.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let mut t = String::from('\'');
                while let Some(c) = chars.next() {
                    t.push(c);
                    if c == '\'' {
                        if chars.peek() == Some(&'\'') {
                            t.push(chars.next().unwrap());
                        } else {
                            break;
                        }
                    }
                }
                tokens.push(t);
            }
            '=' | ';' => tokens.push(c.to_string()),
            c if c.is_whitespace() => {}
            c => {
                let mut t = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '=' | ';' | '\'') {
                        break;
                    }
                    t.push(n);
                    chars.next();
                }
                tokens.push(t);
            }
        }
    }
    tokens
        .windows(3)
        .filter(|w| w[1] == "=")
        .map(|w| (w[0].to_ascii_uppercase(), w[2].clone()))
        .collect()
}

/// Rewrites a statement on the archived database to name `new` instead.
fn retarget(statement: &str, original: &str, new: &str) -> String {
    let bare = original
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    let mut out = statement.to_string();
    for form in [ident(original), original.to_string()] {
        if form == original && !bare {
            continue;
        }
        let needle = format!("DATABASE {form}");
        let mut result = String::new();
        let mut rest = out.as_str();
        while let Some(i) = rest.find(&needle) {
            let after = &rest[i + needle.len()..];
            let ends_word = after
                .chars()
                .next()
                .is_none_or(|c| c.is_whitespace() || c == ';');
            result.push_str(&rest[..i]);
            if ends_word {
                result.push_str(&format!("DATABASE {}", ident(new)));
            } else {
                result.push_str(&needle);
            }
            rest = after;
        }
        result.push_str(rest);
        out = result;
    }
    out
}

pub(crate) async fn create_database(
    pg: &Postgres,
    name: &str,
    summary: &Summary,
    server_major: u32,
) -> Result<()> {
    let owner_exists = match &summary.database_entries.owner {
        Some(o) => !pg
            .query(
                &pg.db.maintenance_db,
                &format!("SELECT 1 FROM pg_roles WHERE rolname = {}", literal(o)),
            )
            .await?
            .is_empty(),
        None => false,
    };
    let sql = create_database_sql(name, summary, owner_exists, Some(server_major));
    if let Err(e) = pg.admin(&[&sql], None).await {
        // The archive's locale may not exist on this server: fall back to the server's.
        let fallback = create_database_sql(name, summary, owner_exists, None);
        tracing::warn!(
            "{sql} failed ({}); creating it with the server's default locale",
            e.stderr().trim()
        );
        pg.admin(&[&fallback], None)
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("cannot create database {name}"))?;
    }
    Ok(())
}

/// Terminates other sessions, then drops the database (retrying while they exit).
pub(crate) async fn drop_database(pg: &Postgres, name: &str) -> Result<()> {
    let mut last = None;
    for _ in 0..40 {
        let terminate = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = {} AND pid <> pg_backend_pid()",
            literal(name)
        );
        let drop = format!("DROP DATABASE IF EXISTS {}", ident(name));
        match pg.admin(&[&terminate, &drop], None).await {
            Ok(_) => return Ok(()),
            Err(e) if crate::postgres::in_use(&e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(anyhow!(e)).with_context(|| format!("cannot drop database {name}"))
            }
        }
    }
    Err(anyhow!(last.expect("tried")))
        .with_context(|| format!("cannot drop database {name}: sessions keep connecting"))
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
    verify(pg, db, &checked.expected).await
}

/// How pg_restore will read the archive.
pub(crate) enum Input {
    /// Streamed (decompressed on the fly) into one pg_restore.
    Stream,
    /// A seekable uncompressed archive, for a parallel `pg_restore -j`: the copy
    /// the check pass left (kept alive here), or a seed-era `.dump` itself.
    Seekable {
        path: PathBuf,
        /// Keeps the temporary copy until pg_restore is done with it.
        _copy: Option<tempfile::NamedTempFile>,
    },
}

/// Runs the check pass over `path` (checksum, full archive read). When a
/// parallel restore will follow (BACKUP_RESTORE_JOBS > 1, direct mode, room in
/// the store), the same pass leaves the uncompressed archive in a temporary file.
pub(crate) async fn check_pass(
    cfg: &Config,
    pg: &Postgres,
    path: &std::path::Path,
    size_hint: u64,
    for_restore: bool,
) -> Result<(Result<Summary>, String, Input)> {
    let parallel = cfg.restore_jobs > 1 && !pg.is_docker();
    let mut tmp = None;
    // A dry run reads the file but keeps no copy (and writes nothing to the store).
    if parallel && for_restore && dump::is_zstd(path) {
        let room = crate::store::free_space(&cfg.backup_dir)
            .is_ok_and(|free| free > size_hint + size_hint / 10);
        if room {
            tmp = crate::store::state_temp(&cfg.backup_dir, "restore").ok();
        }
    }
    let src = path.to_path_buf();
    let (read, tmp) = tokio::task::spawn_blocking(move || {
        let mut copy = tmp
            .as_ref()
            .and_then(|t| t.reopen().ok())
            .map(dump::ArchiveCopy::new);
        let read = dump::read_back(&src, copy.as_mut());
        let complete = copy.is_some_and(|c| c.complete());
        (read, tmp.filter(|_| complete))
    })
    .await?;
    let (summary, sha) = read?;
    let input = match tmp {
        Some(t) => Input::Seekable {
            path: t.path().to_path_buf(),
            _copy: Some(t),
        },
        None if parallel && !dump::is_zstd(path) => Input::Seekable {
            path: path.to_path_buf(),
            _copy: None,
        },
        None => Input::Stream,
    };
    Ok((summary, sha, input))
}

/// Runs pg_restore of the archive at `path` into `db`, stopping at the first
/// error: in parallel (`--jobs BACKUP_RESTORE_JOBS`) from a seekable archive, or
/// streamed into one pg_restore; or, when the client is newer than the server
/// can take directly (`RestoreMode::Script`), as an SQL script run by psql.
pub(crate) async fn run_pg_restore(
    cfg: &Config,
    rc: &RestoreClient,
    path: &std::path::Path,
    input: &Input,
    db: &str,
    extra: &[&str],
) -> Result<()> {
    let pg = &rc.pg;
    let failed = |e: StreamError| match e {
        StreamError::Process(p) => anyhow!(p).context("pg_restore failed"),
        StreamError::Local(l) => l.context("reading the backup failed"),
    };
    if let RestoreMode::Script { drop } = &rc.mode {
        return run_as_script(cfg, pg, path, input, db, extra, drop.clone()).await;
    }
    match input {
        Input::Seekable { path: archive, .. } => {
            pg.tool("pg_restore")
                .args(["--exit-on-error", "--jobs", &cfg.restore_jobs.to_string()])
                .args(extra)
                .args(["--dbname", &crate::postgres::dbname(db)])
                .arg(archive)
                .output(cfg.timeout)
                .await
                .map_err(|e| failed(StreamError::Process(e)))?;
        }
        Input::Stream => {
            let src = path.to_path_buf();
            pg.pg_restore(db)
                .args(extra)
                .feed(cfg.timeout, move |stdin| dump::write_archive(&src, stdin))
                .await
                .map_err(failed)?;
        }
    }
    Ok(())
}

/// `pg_restore --file -` piped into `psql -v ON_ERROR_STOP=1`, without the
/// script's opening session settings listed in `drop`. pg_restore reads a file
/// (a compressed backup streamed so far is decompressed to a temporary one).
async fn run_as_script(
    cfg: &Config,
    pg: &Postgres,
    path: &std::path::Path,
    input: &Input,
    db: &str,
    extra: &[&str],
    drop: Vec<&'static str>,
) -> Result<()> {
    let mut _copy = None;
    let archive = match input {
        Input::Seekable { path, .. } => path.clone(),
        Input::Stream if !dump::is_zstd(path) => path.to_path_buf(),
        Input::Stream => {
            let tmp = crate::store::state_temp(&cfg.backup_dir, "restore")
                .context("temporary archive for pg_restore")?;
            let (src, out) = (path.to_path_buf(), tmp.reopen()?);
            tokio::task::spawn_blocking(move || dump::write_archive(&src, out)).await??;
            let p = tmp.path().to_path_buf();
            _copy = Some(tmp);
            p
        }
    };
    tracing::info!(
        "pg_restore is newer than the server: its SQL runs through psql without {}",
        drop.join(" ")
    );
    let psql = pg.psql_script(db);
    let timeout = cfg.timeout;
    let runtime = tokio::runtime::Handle::current();
    pg.tool("pg_restore")
        .args(["--file", "-"])
        .args(extra)
        .arg(&archive)
        .stream(timeout, move |script| {
            let fed = psql.feed(timeout, move |stdin| {
                dump::copy_script(script, stdin, &drop)
            });
            runtime.block_on(fed).map(|_| ()).map_err(|e| match e {
                StreamError::Process(p) => {
                    anyhow!(p).context("psql failed running pg_restore's script")
                }
                StreamError::Local(l) => l,
            })
        })
        .await
        .map_err(|e| match e {
            StreamError::Process(p) => anyhow!(p).context("pg_restore failed"),
            StreamError::Local(l) => l,
        })
}

/// Every table present, with the backup's row count. Returns (tables, rows).
async fn verify(pg: &Postgres, db: &str, expected: &[TableData]) -> Result<(usize, u64)> {
    let counts = checks::row_counts(pg, db, expected).await?;
    let mismatches: Vec<String> = expected
        .iter()
        .zip(&counts)
        .filter(|(t, n)| t.rows.is_some_and(|want| want != **n))
        .map(|(t, n)| {
            format!(
                "{}.{}: restored {n}, backup {}",
                t.schema,
                t.name,
                t.rows.unwrap_or_default()
            )
        })
        .collect();
    if !mismatches.is_empty() {
        bail!(
            "row counts differ from the backup's: {}",
            mismatches.join("; ")
        );
    }
    Ok((expected.len(), counts.iter().sum()))
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

pub(crate) fn drop_statements(db: &str) -> Vec<String> {
    vec![
        format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = {}",
            literal(db)
        ),
        format!("DROP DATABASE IF EXISTS {}", ident(db)),
    ]
}

/// `name`, or `name_2`, `name_3`... whichever no database has.
async fn free_name(pg: &Postgres, name: &str) -> Result<String> {
    for n in 1.. {
        let candidate = if n == 1 {
            name.to_string()
        } else {
            derived_name(name, &format!("_{n}"))
        };
        let sql = format!(
            "SELECT 1 FROM pg_database WHERE datname = {}",
            literal(&candidate)
        );
        if pg.query(&pg.db.maintenance_db, &sql).await?.is_empty() {
            return Ok(candidate);
        }
    }
    unreachable!()
}

/// Step 4: close the target to new sessions, end its sessions, and rename both
/// databases in one transaction. The target stays closed at most
/// BACKUP_SWAP_TIMEOUT; on failure it is reopened as it was (its guard is armed
/// before it is closed) and the error says what held it.
async fn swap(cfg: &Config, pg: &Postgres, target: &str, scratch: &str, old: &str) -> Result<()> {
    let (t, s, o) = (ident(target), ident(scratch), ident(old));
    tracing::info!("Swapping: {target} -> {old}, {scratch} -> {target}...");
    let reopen = format!("ALTER DATABASE {t} WITH ALLOW_CONNECTIONS true");
    let closed = cleanup::register(pg, vec![reopen.clone()]);
    if let Err(e) = pg
        .admin(
            &[format!("ALTER DATABASE {t} WITH ALLOW_CONNECTIONS false")],
            None,
        )
        .await
    {
        tracing::warn!(
            "cannot close {target} to new connections ({}); ending its sessions anyway",
            e.stderr().trim()
        );
    }
    let terminate = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = {} AND pid <> pg_backend_pid()",
        literal(target)
    );
    let rename = format!(
        "BEGIN; ALTER DATABASE {t} RENAME TO {o}; ALTER DATABASE {s} RENAME TO {t}; COMMIT;"
    );
    let deadline = Instant::now() + cfg.swap_timeout;
    let result = loop {
        // Each try is left to finish (the server waits up to 5 s for sessions to
        // go, then fails): a try given up midway could still rename after we
        // reported failure. The deadline is checked between tries.
        match pg.admin(&[&terminate, &rename], None).await {
            Ok(_) => break Ok(()),
            Err(e) if crate::postgres::in_use(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) if crate::postgres::in_use(&e) => {
                let held = holders(pg, target).await;
                break Err(anyhow!(e).context(format!(
                    "{target} stayed in use for {} (BACKUP_SWAP_TIMEOUT): {held}",
                    humantime::format_duration(cfg.swap_timeout)
                )));
            }
            Err(e) => break Err(anyhow!(e)),
        }
    };
    if let Err(e) = result {
        if pg.admin(&[&reopen], None).await.is_ok() {
            closed.done();
        }
        return Err(e.context(format!(
            "cannot swap the restored copy in for {target}; {target} was not changed and is open again"
        )));
    }
    closed.done();
    // The previous database stays reachable for inspection.
    if let Err(e) = pg
        .admin(
            &[format!("ALTER DATABASE {o} WITH ALLOW_CONNECTIONS true")],
            None,
        )
        .await
    {
        tracing::warn!("cannot reopen {old} to connections: {}", e.stderr().trim());
    }
    Ok(())
}

/// What keeps `db` busy: its sessions and its prepared transactions.
async fn holders(pg: &Postgres, db: &str) -> String {
    let sql = format!(
        "SELECT 'session pid ' || pid || ' (' || coalesce(nullif(application_name, ''), 'no application name') || \
                ', user ' || coalesce(usename, '?') || ', ' || coalesce(state, '?') || ')' \
           FROM pg_stat_activity WHERE datname = {l} AND pid <> pg_backend_pid() \
         UNION ALL \
         SELECT 'prepared transaction ' || quote_literal(gid) || ' (owner ' || owner || ', since ' || prepared || \
                '): in that database, COMMIT PREPARED or ROLLBACK PREPARED ' || quote_literal(gid) \
           FROM pg_prepared_xacts WHERE database = {l}",
        l = literal(db)
    );
    match pg.query(&pg.db.maintenance_db, &sql).await {
        Ok(rows) if rows.is_empty() => "nothing visible holds it now; try again".to_string(),
        Ok(rows) => format!(
            "held by {}",
            rows.iter()
                .map(|r| r.join(" "))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Err(e) => format!("(cannot list what holds it: {e:#})"),
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
            backup::take(&scfg, store, &spg, &mut BackupTarget::named(&label)).await?;
        tracing::info!("Safety backup: {} ({})", path.display(), human_size(size));
        Some(path)
    } else {
        None
    };
    let undo_hint = match &safety {
        Some(p) => format!(
            "The safety backup taken before is {}: restore it with `kbackup restore --file {} --in-place --yes`",
            p.display(),
            p.display()
        ),
        None => String::new(),
    };
    // From the drop on, nothing can put the old database back but the safety
    // backup: if the run stops (an error, a signal), say so plainly.
    let incomplete = cleanup::notice(format!(
        "The in-place restore of {target} did not finish: {target} is INCOMPLETE (dropped, partly restored). {}",
        if undo_hint.is_empty() {
            format!("It did not exist before; drop it: dropdb {target}")
        } else {
            undo_hint.clone()
        }
    ));
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
        list::age(t, Utc::now())
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
                &crate::postgres::dbname(db)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_fit_63_bytes_on_char_boundaries() {
        let long = "é".repeat(40); // 80 bytes
        let n = derived_name(&long, "_pre_restore_20251226_080102");
        assert!(n.len() <= 63, "{} bytes", n.len());
        assert!(n.ends_with("_pre_restore_20251226_080102"));
        assert_eq!(derived_name("kairon", "_x"), "kairon_x");
    }

    #[test]
    fn create_database_keeps_encoding_locale_and_owner() {
        let mut s: Summary = serde_json::from_value(serde_json::json!({
            "format_version": "1.14.0", "compression": "none", "database": "app", "server_version": null,
            "pg_dump_version": null, "toc_entries": 0, "objects": {}, "tables": [], "large_objects": 0, "archive_bytes": 0
        }))
        .unwrap();
        s.database_entries.create = Some(
            "CREATE DATABASE app WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE_PROVIDER = libc LOCALE = 'C.UTF-8';".into(),
        );
        s.database_entries.owner = Some("App Owner".into());
        assert_eq!(
            create_database_sql("app_x", &s, true, Some(17)),
            "CREATE DATABASE \"app_x\" WITH TEMPLATE template0 ENCODING = 'UTF8' LOCALE_PROVIDER = libc LOCALE = 'C.UTF-8' OWNER = \"App Owner\""
        );
        assert_eq!(
            create_database_sql("app_x", &s, false, None),
            "CREATE DATABASE \"app_x\" WITH TEMPLATE template0 ENCODING = 'UTF8'"
        );
        // pg_dump 17 writes LOCALE_PROVIDER for a PostgreSQL 13 database too; 13 has LOCALE, 12 not even that.
        assert_eq!(
            create_database_sql("app_x", &s, false, Some(13)),
            "CREATE DATABASE \"app_x\" WITH TEMPLATE template0 ENCODING = 'UTF8' LOCALE = 'C.UTF-8'"
        );
        assert_eq!(
            create_database_sql("app_x", &s, false, Some(12)),
            "CREATE DATABASE \"app_x\" WITH TEMPLATE template0 ENCODING = 'UTF8'"
        );
        s.database_entries.create = Some(
            "CREATE DATABASE app WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE_PROVIDER = builtin LOCALE = 'C.UTF-8' BUILTIN_LOCALE = 'C.UTF-8';".into(),
        );
        assert!(create_database_sql("app_x", &s, false, Some(17))
            .ends_with("BUILTIN_LOCALE = 'C.UTF-8'"));
    }

    #[test]
    fn database_statements_are_retargeted() {
        assert_eq!(
            retarget("COMMENT ON DATABASE app IS 'x';", "app", "app_new"),
            "COMMENT ON DATABASE \"app_new\" IS 'x';"
        );
        assert_eq!(
            retarget("GRANT CONNECT ON DATABASE \"My DB\" TO r;", "My DB", "s"),
            "GRANT CONNECT ON DATABASE \"s\" TO r;"
        );
        assert_eq!(
            retarget("ALTER DATABASE apple SET x = 1;", "app", "s"),
            "ALTER DATABASE apple SET x = 1;"
        );
    }

    #[test]
    fn role_statements_pick_only_missing_roles() {
        let g = "CREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER PASSWORD 'x';\nCREATE ROLE app_owner;\n\
                 ALTER ROLE app_owner WITH NOSUPERUSER LOGIN;\nGRANT app_owner TO \"Reader\" GRANTED BY postgres;\n\
                 CREATE ROLE \"Reader\";\nGRANT pg_read_all_data TO app_owner GRANTED BY postgres;\n";
        let got = role_statements(g, &["app_owner".to_string(), "Reader".to_string()]);
        assert_eq!(
            got,
            [
                "CREATE ROLE app_owner;",
                "ALTER ROLE app_owner WITH NOSUPERUSER LOGIN;",
                "GRANT app_owner TO \"Reader\" GRANTED BY postgres;",
                "CREATE ROLE \"Reader\";",
                "GRANT pg_read_all_data TO app_owner GRANTED BY postgres;",
            ]
        );
    }
}
