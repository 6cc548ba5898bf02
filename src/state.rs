//! What the last runs did, for `status` and the metrics file.
//!
//! Each command writes only its own record, one per database (by its file
//! prefix: `BACKUP_DIR/.kbackup/last-backup.<prefix>.json`, `last-verify.<prefix>.json`,
//! `last-sync.<prefix>.json`), atomically: a backup and a verify finishing
//! together never lose each other's result, and databases sharing a store
//! never read each other's. A record from before (`last-backup.json`) is read
//! for the database it names until that database writes its own.

use std::path::{Path, PathBuf};

use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::store::write_replace;

pub use crate::store::STATE_DIR;

/// The last `kbackup backup` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupRun {
    pub database: String,
    pub started_at: DateTime<FixedOffset>,
    pub finished_at: DateTime<FixedOffset>,
    pub ok: bool,
    /// The error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The backup written, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// When the last successful backup finished (kept across failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<DateTime<FixedOffset>>,
}

/// The last `kbackup verify` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyRun {
    pub finished_at: DateTime<FixedOffset>,
    pub ok: bool,
    pub quick: bool,
    /// Backups checked, and the ones that failed with their failed checks.
    pub checked: Vec<String>,
    #[serde(default)]
    pub failed: Vec<String>,
}

fn path(root: &Path, name: &str) -> PathBuf {
    root.join(STATE_DIR).join(name)
}

fn read<T: DeserializeOwned>(root: &Path, name: &str) -> Option<T> {
    let bytes = std::fs::read(path(root, name)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write<T: Serialize>(root: &Path, name: &str, value: &T) -> Result<()> {
    write_replace(&path(root, name), &serde_json::to_vec_pretty(value)?)
}

fn per_db(kind: &str, prefix: &str) -> String {
    format!("last-{kind}.{prefix}.json")
}

pub fn last_backup(root: &Path, prefix: &str, database: &str) -> Option<BackupRun> {
    read(root, &per_db("backup", prefix))
        .or_else(|| read::<BackupRun>(root, "last-backup.json").filter(|r| r.database == database))
}

/// Every database's backup record in the store: (prefix, record).
pub fn backup_records(root: &Path) -> Vec<(String, BackupRun)> {
    let Ok(dir) = std::fs::read_dir(root.join(STATE_DIR)) else {
        return vec![];
    };
    let mut out: Vec<(String, BackupRun)> = dir
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let prefix = name.strip_prefix("last-backup.")?.strip_suffix(".json")?;
            Some((prefix.to_string(), read(root, &name)?))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub fn record_backup(root: &Path, prefix: &str, run: &BackupRun) -> Result<()> {
    write(root, &per_db("backup", prefix), run)
}

pub fn last_verify(root: &Path, prefix: &str) -> Option<VerifyRun> {
    read(root, &per_db("verify", prefix))
}

pub fn record_verify(root: &Path, prefix: &str, run: &VerifyRun) -> Result<()> {
    write(root, &per_db("verify", prefix), run)
}

/// The last off-site sync to one destination, by `backup` or `sync`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncRun {
    /// The destination's label (RemoteConfig::label); empty in records
    /// written before there could be several (`remote` tells them apart).
    #[serde(default)]
    pub label: String,
    pub remote: String,
    pub finished_at: DateTime<FixedOffset>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub uploaded_files: usize,
    pub uploaded_bytes: u64,
    pub deleted_files: usize,
    /// Backups (dumps) on the remote after the sync.
    pub remote_backups: usize,
    /// Of those, the ones retention would have deleted (BACKUP_REMOTE_PRUNE=false).
    #[serde(default)]
    pub beyond_policy: usize,
}

/// One database's sync records: one per destination (a record of a single
/// remote, as written before, reads as a list of one).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Syncs {
    Many(Vec<SyncRun>),
    One(SyncRun),
}

fn syncs(root: &Path, prefix: &str) -> Vec<SyncRun> {
    match read(root, &per_db("sync", prefix)) {
        Some(Syncs::Many(v)) => v,
        Some(Syncs::One(r)) => vec![r],
        None => vec![],
    }
}

/// The last sync to the destination `label` at `root_text` (`name:path`).
pub fn last_sync(root: &Path, prefix: &str, label: &str, root_text: &str) -> Option<SyncRun> {
    syncs(root, prefix)
        .into_iter()
        .find(|r| r.label == label || (r.label.is_empty() && r.remote == root_text))
}

/// Records a sync, replacing that destination's previous record and keeping
/// the others'.
pub fn record_sync(root: &Path, prefix: &str, run: &SyncRun) -> Result<()> {
    let mut all = syncs(root, prefix);
    all.retain(|r| r.label != run.label && !(r.label.is_empty() && r.remote == run.remote));
    all.push(run.clone());
    write(root, &per_db("sync", prefix), &Syncs::Many(all))
}

/// Warnings already given (key -> when first given): a standing condition is
/// said once, not on every hourly run (where it would train operators to skip
/// warnings); `status` keeps showing what matters of it.
pub fn first_time(root: &Path, key: &str) -> bool {
    let mut said: std::collections::BTreeMap<String, DateTime<FixedOffset>> =
        read(root, "notices.json").unwrap_or_default();
    if said.contains_key(key) {
        return false;
    }
    said.insert(key.to_string(), chrono::Local::now().fixed_offset());
    // A notice that cannot be recorded is given again next time: never lost.
    let _ = write(root, "notices.json", &said);
    true
}

/// The databases the last run of DB_NAME=all found on the server: `list`,
/// `status` and `rotate` cover these without asking the server (which may be
/// down when monitoring asks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerDatabases {
    pub found_at: DateTime<FixedOffset>,
    pub databases: Vec<String>,
}

pub fn server_databases(root: &Path) -> Option<ServerDatabases> {
    read(root, "databases.json")
}

pub fn record_server_databases(root: &Path, found: &ServerDatabases) -> Result<()> {
    write(root, "databases.json", found)
}
