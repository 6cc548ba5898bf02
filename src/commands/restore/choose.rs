//! Which backup, and is it whole: the selector from the flags, the file from
//! the store or the remote, and the check pass that proves it before anything
//! on the server is touched.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, FixedOffset};

use crate::archive::{Summary, TableData};
use crate::cli::RestoreArgs;
use crate::clock;
use crate::config::Config;
use crate::error::usage;
use crate::lifecycle::MAX_IDENT;
use crate::manifest::Manifest;
use crate::naming::{self, Tier, GLOBALS_AGE_EXT, GLOBALS_EXT, MANIFEST_EXT};
use crate::postgres::Postgres;
use crate::readback::{check_pass, expected_rows, manifest_disagreements, Feed, Input};
use crate::remote::Remote;
use crate::select::{self, Selection, Selector};
use crate::store::{loose_file, Backup, Store};

/// The backup being restored.
pub struct Source {
    pub path: PathBuf,
    /// How to show it: relative to the store when inside it.
    pub shown: String,
    pub manifest: Option<Manifest>,
    pub time: Option<DateTime<FixedOffset>>,
    pub globals: Option<PathBuf>,
    /// A download from the remote, removed when the restore is over.
    _download: Option<tempfile::TempDir>,
}

impl Source {
    /// The file as a plan names it: a download from the remote exists only
    /// while the run lasts, so it is named by where it comes from.
    pub fn file_text(&self) -> String {
        match &self._download {
            Some(_) => format!("<{} downloaded into BACKUP_DIR/.kbackup>", self.shown),
            None => self.path.display().to_string(),
        }
    }
}

/// What the file check found.
pub struct Checked {
    pub summary: Summary,
    /// How pg_restore will read the archive.
    pub input: Input,
    /// The row count each table must have after the restore (None: unknown).
    pub expected: Vec<TableData>,
    pub checksum: &'static str,
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
pub async fn remote(cfg: &Config, store: &Store, args: &RestoreArgs) -> Result<Source> {
    let rc = cfg.remote(args.from.as_deref(), "restore --remote")?;
    let selector = selector(cfg, args)?;
    let remote = Remote::new(rc.clone());
    remote.check_rclone().await?;
    let listing = remote.list().await?;
    let present: BTreeSet<&str> = listing.iter().map(|f| f.path.as_str()).collect();
    // The remote's dumps, as a listing `select` understands (paths under the remote root).
    let root = PathBuf::from(remote.root());
    let backups: Vec<Backup> = crate::offsite::remote_backups(cfg, &listing, &[])
        .into_iter()
        .filter(|b| b.owner != crate::owner::Owner::Other)
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
            header_major: None,
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
    if crate::crypto::is_age(&chosen.path) {
        crate::crypto::need_identities(&chosen.rel_path)?;
    }
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
    let globals = match fetch(GLOBALS_EXT).await? {
        Some(g) => Some(g),
        None => fetch(GLOBALS_AGE_EXT).await?,
    };
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

pub fn local(cfg: &Config, store: &Store, args: &RestoreArgs) -> Result<Source> {
    let selector = selector(cfg, args)?;
    let backups = store.scan(&cfg.calendar, &cfg.prefix)?;
    let selection =
        select::select(&backups, &selector, &cfg.prefix, &store.root).map_err(|m| anyhow!(m))?;
    Ok(match selection {
        Selection::Stored(b) => {
            // Read now, from the file (never the scan's brief of it).
            let manifest = b.full_manifest().unwrap_or_else(|e| {
                tracing::warn!(
                    "The manifest of {} cannot be read ({e:#}); restoring without it",
                    b.rel_path
                );
                None
            });
            // Chosen as this database's (not a --file): the manifest on disk
            // must still say so.
            let chosen = !matches!(selector, select::Selector::File(_));
            if let Some(m) = manifest
                .as_ref()
                .filter(|m| chosen && m.prefix != cfg.prefix)
            {
                anyhow::bail!(
                    "{} changed since the store was listed: its manifest now names prefix {:?}, not {:?}; \
                     nothing was touched. Run the restore again",
                    b.rel_path,
                    m.prefix,
                    cfg.prefix
                );
            }
            Source {
                path: b.path.clone(),
                shown: b.rel_path.clone(),
                manifest,
                time: Some(b.time),
                globals: b.globals_file(),
                _download: None,
            }
        }
        Selection::External(path) => {
            // A path outside the store (or one that climbs out with `..`) is
            // read only when the operator says so: a backup copied from
            // another server is such a file; a mistyped or crafted argument is not.
            let climbs = path
                .components()
                .any(|c| c == std::path::Component::ParentDir);
            if (climbs || !path.starts_with(&store.root)) && !args.outside_store {
                return Err(usage(format!(
                    "--file {}: leads out of the store ({}, BACKUP_DIR). Copy the file into the store \
                     (e.g. its named/ folder), or pass --outside-store to restore a file from elsewhere",
                    path.display(),
                    store.root.display()
                )));
            }
            // A link inside the store is never followed out of it (another user
            // could have planted it).
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

pub fn check_name(target: &str) -> Result<()> {
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

/// Step 1: the checksum and a full read of the archive, before touching
/// anything. `feed` is the plan's; a dry run (`keep_copy` false) writes nothing.
pub async fn check_file(
    cfg: &Config,
    pg: &Postgres,
    source: &Source,
    feed: Feed,
    keep_copy: bool,
) -> Result<Checked> {
    let (summary, sha, input) = check_pass(
        cfg,
        pg,
        &source.path,
        source.manifest.as_ref(),
        feed,
        keep_copy,
    )
    .await?;
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
        let problems = manifest_disagreements(m, &summary);
        if !problems.is_empty() {
            bail!(
                "{}: {}. Refusing to restore it; nothing was changed",
                source.shown,
                problems.join("; ")
            );
        }
    }
    let expected = expected_rows(&summary, source.manifest.as_ref());
    Ok(Checked {
        summary,
        input,
        expected,
        checksum,
    })
}
