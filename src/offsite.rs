//! Off-site copies: the step `backup` ends with, and all of `kbackup sync`.
//!
//! The remote mirrors the local layout (tier folders, manifests, globals). What
//! the remote lacks is uploaded and checked. Deletions on the remote come only
//! from the retention policy applied to the remote's own listing, never from
//! comparing it with the local folder: an emptied, replaced or freshly mounted
//! BACKUP_DIR deletes nothing there, and backups only the remote holds stay
//! until retention says otherwise.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use chrono::{Local, Utc};

use crate::config::Config;
use crate::naming::{self, Format, Tier, GLOBALS_AGE_EXT, GLOBALS_EXT, MANIFEST_EXT, SIDECARS};
use crate::remote::{Remote, RemoteFile};
use crate::retention::{self, Candidate};
use crate::store::{human_size, Store};
use crate::{notify, state};

#[derive(Debug, Default)]
pub struct Report {
    pub uploaded: Vec<String>,
    pub uploaded_bytes: u64,
    pub deleted: Vec<String>,
    pub remote_backups: usize,
    /// Backups retention would have deleted, kept because BACKUP_REMOTE_PRUNE=false.
    pub beyond_policy: usize,
}

/// A dump on the remote, parsed from its path.
pub struct RemoteBackup {
    /// Whose it is (see `owner`): the remote holds no manifest kbackup reads
    /// for this, so a named/ file is this database's when the local store's
    /// manifest of the same file says so, and ambiguous otherwise.
    pub owner: crate::owner::Owner,
    pub rel_path: String,
    pub tier: Tier,
    pub parsed: naming::Parsed,
    pub size: u64,
    pub time: chrono::DateTime<chrono::FixedOffset>,
}

/// The remote's dumps, newest first, each with its owner as this database
/// (`cfg.prefix`) sees it; `local` (the store's scan) tells named/ files apart.
pub fn remote_backups(
    cfg: &Config,
    listing: &[RemoteFile],
    local: &[crate::store::Backup],
) -> Vec<RemoteBackup> {
    let known: BTreeMap<&str, &str> = local
        .iter()
        .filter_map(|b| Some((b.rel_path.as_str(), b.manifest.as_ref()?.prefix.as_ref())))
        .collect();
    let mut out: Vec<RemoteBackup> = listing
        .iter()
        .filter_map(|f| {
            let (dir, name) = f.path.split_once('/')?;
            let tier = Tier::ALL.into_iter().find(|t| t.dir() == dir)?;
            let parsed = naming::parse_file_name(&cfg.calendar, tier, name, &cfg.prefix)?;
            let owner = crate::owner::owner(
                &cfg.prefix,
                tier,
                &parsed.prefix,
                known.get(f.path.as_str()).copied(),
            );
            Some(RemoteBackup {
                owner,
                time: parsed.time.unwrap_or(f.mod_time),
                rel_path: f.path.clone(),
                tier,
                parsed,
                size: f.size.max(0) as u64,
            })
        })
        .collect();
    out.sort_by(|a, b| b.time.cmp(&a.time).then(a.tier.cmp(&b.tier)));
    out
}

/// Uploads what is missing, checks it, then applies retention to the remote.
pub async fn sync(cfg: &Config, store: &Store, remote: &Remote) -> Result<Report> {
    remote.check_rclone().await?;
    tracing::info!("Syncing to {}...", remote.root());
    let listing = remote.list().await?;
    let on_remote: BTreeMap<&str, i64> =
        listing.iter().map(|f| (f.path.as_str(), f.size)).collect();

    let local = store.scan(&cfg.calendar, &cfg.prefix)?;
    let (mut sidecars, mut dumps) = (Vec::new(), Vec::new());
    let mut report = Report::default();
    for b in local.iter().filter(|b| b.is_mine(&cfg.prefix)) {
        // The backup's files, sidecars first, with their local sizes.
        let mut files: Vec<(String, u64, bool)> = Vec::new();
        for ext in [GLOBALS_EXT, GLOBALS_AGE_EXT, MANIFEST_EXT] {
            if let Ok(meta) = std::fs::metadata(b.sidecar(ext)) {
                files.push((
                    format!("{}/{}", b.tier.dir(), naming::sidecar(&b.parsed.stem, ext)),
                    meta.len(),
                    false,
                ));
            }
        }
        files.push((b.rel_path.clone(), b.size, true));
        let differs = |(rel, size, _): &(String, u64, bool)| {
            on_remote
                .get(rel.as_str())
                .is_some_and(|r| *r != *size as i64)
        };
        if files.iter().any(differs) {
            // The remote holds something else under this name. The same backup
            // (same manifest) is a broken upload to repair; another backup is
            // never replaced, on the remote as locally.
            let manifest_rel = format!(
                "{}/{}",
                b.tier.dir(),
                naming::sidecar(&b.parsed.stem, MANIFEST_EXT)
            );
            let same = match (
                std::fs::read(b.sidecar(MANIFEST_EXT)),
                on_remote.contains_key(manifest_rel.as_str()),
            ) {
                (Ok(mine), true) => remote
                    .cat(&manifest_rel)
                    .await
                    .map(|theirs| theirs == mine)
                    .unwrap_or(false),
                _ => false,
            };
            let key = format!("remote-differs:{}/{}", remote.root(), b.rel_path);
            if !same && crate::state::first_time(&store.root, &key) {
                tracing::warn!(
                    "{} already holds a different backup at {}: it is kept (an existing backup is never replaced); {} stays local only",
                    remote.root(),
                    b.rel_path,
                    b.rel_path
                );
            }
            if !same {
                continue;
            }
        }
        for (rel, size, is_dump) in files {
            if on_remote.get(rel.as_str()) != Some(&(size as i64)) {
                report.uploaded_bytes += size;
                if is_dump {
                    dumps.push(rel);
                } else {
                    sidecars.push(rel);
                }
            }
        }
    }
    // Sidecars first: a dump on the remote always has its manifest beside it.
    if !sidecars.is_empty() {
        remote.upload(&store.root, &sidecars, cfg.timeout).await?;
    }
    if !dumps.is_empty() {
        tracing::info!(
            "Uploading {} backup(s), {}...",
            dumps.len(),
            human_size(report.uploaded_bytes)
        );
        // One by one, each under a temporary name until complete: a dump on
        // the remote is always whole (BACKUP_TIMEOUT bounds each upload).
        for rel in &dumps {
            remote.upload_whole(&store.root, rel, cfg.timeout).await?;
        }
    }
    report.uploaded = sidecars.into_iter().chain(dumps).collect();
    if !report.uploaded.is_empty() {
        remote.check(&store.root, &report.uploaded).await?;
    }

    // Retention on what the remote now holds.
    let mut now_on_remote: Vec<RemoteFile> = listing.clone();
    for rel in &report.uploaded {
        if !on_remote.contains_key(rel.as_str()) {
            let b = local.iter().find(|b| b.rel_path == *rel);
            now_on_remote.push(RemoteFile {
                path: rel.clone(),
                size: b.map(|b| b.size as i64).unwrap_or(0),
                mod_time: b
                    .map(|b| b.time)
                    .unwrap_or_else(|| Local::now().fixed_offset()),
            });
        }
    }
    // Retention ranks this database's backups only: another database's files
    // (and named/ files whose owner cannot be told) are never deleted here.
    let backups: Vec<RemoteBackup> = remote_backups(cfg, &now_on_remote, &local)
        .into_iter()
        .filter(|b| b.owner == crate::owner::Owner::Mine)
        .collect();
    let candidates: Vec<Candidate<usize>> = backups
        .iter()
        .enumerate()
        .map(|(i, b)| Candidate {
            key: i,
            tier: b.tier,
            time: b.time.with_timezone(&Utc),
        })
        .collect();
    let present: BTreeSet<&str> = now_on_remote.iter().map(|f| f.path.as_str()).collect();
    let mut deletions = Vec::new();
    for d in retention::plan(&candidates, &remote.policy(&cfg.policy), Utc::now())
        .iter()
        .filter(|d| !d.keep)
    {
        let b = &backups[d.key];
        if !remote.prunes() {
            report.beyond_policy += 1;
            tracing::info!(
                "Keeping {} on {} although retention would delete it ({}): BACKUP_REMOTE_PRUNE=false",
                b.rel_path,
                remote.root(),
                d.reasons_text()
            );
            continue;
        }
        tracing::info!(
            "Deleting {} from {} ({})",
            b.rel_path,
            remote.root(),
            d.reasons_text()
        );
        deletions.push(b.rel_path.clone());
        for ext in SIDECARS {
            let rel = format!("{}/{}", b.tier.dir(), naming::sidecar(&b.parsed.stem, ext));
            if present.contains(rel.as_str()) {
                deletions.push(rel);
            }
        }
    }
    remote.delete(&store.root, &deletions).await?;
    report.remote_backups = backups.len()
        - deletions
            .iter()
            .filter(|d| Format::split(d.rsplit('/').next().unwrap_or("")).is_some())
            .count();
    report.deleted = deletions;
    tracing::info!(
        "Sync complete: {} file(s) uploaded ({}), {} deleted by retention; {} holds {} backup(s){}",
        report.uploaded.len(),
        human_size(report.uploaded_bytes),
        report.deleted.len(),
        remote.root(),
        report.remote_backups,
        if report.beyond_policy > 0 {
            format!(
                ", {} beyond the policy (BACKUP_REMOTE_PRUNE=false: nothing is deleted there)",
                report.beyond_policy
            )
        } else {
            String::new()
        }
    );
    Ok(report)
}

/// Syncs and records the outcome for status and metrics; alerts on failure.
/// `alert`: raise the alert here (a run over several databases raises one for all).
pub async fn step(cfg: &Config, store: &Store, remote: &Remote, alert: bool) -> Result<Report> {
    let result = sync(cfg, store, remote)
        .await
        .with_context(|| format!("off-site sync to {} failed", remote.root()));
    // A failed sync says nothing new of what the remote holds: the last
    // counts stay (a gauge alerting on them must not clear during an outage).
    let before = state::last_sync(&store.root, &cfg.prefix, remote.label(), &remote.root());
    let kept = |f: fn(&state::SyncRun) -> usize| before.as_ref().map(f).unwrap_or(0);
    let run = state::SyncRun {
        label: remote.label().to_string(),
        remote: remote.root(),
        finished_at: Local::now().fixed_offset(),
        ok: result.is_ok(),
        error: result.as_ref().err().map(|e| format!("{e:#}")),
        uploaded_files: result.as_ref().map(|r| r.uploaded.len()).unwrap_or(0),
        uploaded_bytes: result.as_ref().map(|r| r.uploaded_bytes).unwrap_or(0),
        deleted_files: result.as_ref().map(|r| r.deleted.len()).unwrap_or(0),
        remote_backups: result
            .as_ref()
            .map(|r| r.remote_backups)
            .unwrap_or_else(|_| kept(|s| s.remote_backups)),
        beyond_policy: result
            .as_ref()
            .map(|r| r.beyond_policy)
            .unwrap_or_else(|_| kept(|s| s.beyond_policy)),
    };
    if let Err(e) = state::record_sync(&store.root, &cfg.prefix, &run) {
        tracing::warn!("cannot record the sync for `kbackup status`: {e:#}");
    }
    if let (Err(e), true) = (&result, alert) {
        notify::alert(
            cfg,
            notify::Alert {
                kind: notify::Kind::Sync,
                title: format!(
                    "Off-site sync of {} backups to {} failed",
                    cfg.db.name,
                    remote.root()
                ),
                body: format!("{e:#}"),
            },
        )
        .await;
    }
    result
}
