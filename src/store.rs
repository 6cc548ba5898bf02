//! The backup store on disk: tier folders, atomic no-clobber writes, hard-linked
//! tier copies, the lock, and reading it all back.
//!
//! A backup is published sidecars first (globals, manifest), dump last, each by
//! rename from a temporary file in the same folder after fsync, and never over an
//! existing name: a reader sees a dump only once it is complete, and nothing is
//! ever overwritten. Temporary files are `.kbackup-*.partial`; one left by a run
//! that was killed is removed by the next run, under the lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use chrono::{DateTime, FixedOffset, Local};
use tempfile::NamedTempFile;

use crate::error::locked;
use crate::manifest::{Brief, Manifest, SeenPair, Verification, Verifications};
use crate::naming::{
    self, Calendar, Format, Parsed, Tier, GLOBALS_AGE_EXT, GLOBALS_EXT, MANIFEST_EXT, SIDECARS,
    VERIFY_EXT,
};

const LOCK_FILE: &str = ".kbackup.lock";
/// The store's own folder: run records, the undo journal, temporary files.
pub const STATE_DIR: &str = ".kbackup";
const PARTIAL_PREFIX: &str = ".kbackup-";
const PARTIAL_SUFFIX: &str = ".partial";

#[derive(Clone)]
pub struct Store {
    pub root: PathBuf,
    /// While this process holds the store's lock: the index as its first
    /// scan read it, kept up to date by this process's own changes, so that a
    /// run scans the store once however many databases and steps it has.
    memo: Arc<Mutex<Memo>>,
}

#[derive(Default, Debug)]
struct Memo {
    on: bool,
    index: Option<crate::index::Index>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

/// One dump file in the store.
#[derive(Debug, Clone)]
pub struct Backup {
    pub tier: Tier,
    pub path: PathBuf,
    /// Relative to the store root: `hourly/kairon_2025-12-26_05-00-01.dump.zst`.
    pub rel_path: String,
    pub parsed: Parsed,
    pub size: u64,
    pub time: DateTime<FixedOffset>,
    /// The manifest's brief (`full_manifest` reads all of it).
    pub manifest: Option<Arc<Brief>>,
    /// Why a manifest that exists could not be read.
    pub manifest_error: Option<String>,
    /// The last full and quick verifications.
    pub verification: SeenPair,
    /// A seed-era dump without a manifest: the server major in its archive
    /// header, as the scan read it.
    pub header_major: Option<u32>,
}

impl Backup {
    /// The saved globals beside the dump (sealed or not), when there are any.
    pub fn globals_file(&self) -> Option<PathBuf> {
        [GLOBALS_EXT, GLOBALS_AGE_EXT]
            .into_iter()
            .map(|ext| self.sidecar(ext))
            .find(|p| p.exists())
    }

    pub fn sidecar(&self, ext: &str) -> PathBuf {
        self.path
            .with_file_name(naming::sidecar(&self.parsed.stem, ext))
    }

    /// The whole manifest, read from its file now, whatever the scan (or its
    /// index) saw: None when there is no manifest file, an error when there is
    /// one that cannot be read.
    pub fn full_manifest(&self) -> Result<Option<Manifest>> {
        let path = self.sidecar(MANIFEST_EXT);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let m = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a readable manifest", path.display()))?;
        Ok(Some(m))
    }

    /// The verification record with every check's findings, read from its file.
    pub fn full_verification(&self) -> Verifications {
        fs::read(self.sidecar(VERIFY_EXT))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Whose backup this is, for a database with file prefix `prefix`.
    pub fn owner(&self, prefix: &str) -> crate::owner::Owner {
        // A named/ file's prefix depends on the prefix the scan was asked
        // about; judged by its stem instead, the answer is the same whatever
        // database's scan it came from.
        let named_as = self
            .parsed
            .stem
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('_'));
        let parsed_prefix = if self.tier == Tier::Named && named_as {
            prefix
        } else {
            &self.parsed.prefix
        };
        crate::owner::owner(
            prefix,
            self.tier,
            parsed_prefix,
            self.manifest.as_ref().map(|m| &*m.prefix),
        )
    }

    /// This database's, for every decision that deletes or chooses.
    pub fn is_mine(&self, prefix: &str) -> bool {
        self.owner(prefix) == crate::owner::Owner::Mine
    }

    pub fn database(&self) -> &str {
        self.manifest
            .as_ref()
            .map(|m| &*m.database)
            .unwrap_or(&self.parsed.prefix)
    }

    /// The major version of the server it was taken from: the manifest's, or,
    /// for a seed-era `.dump` without one, its archive header's.
    pub fn server_major(&self) -> Option<u32> {
        if let Some(m) = &self.manifest {
            return m.server_major;
        }
        if self.header_major.is_some() {
            return self.header_major;
        }
        if self.parsed.format == Format::Custom {
            let file = std::fs::File::open(&self.path).ok()?;
            let header =
                crate::archive::read_header(std::io::BufReader::with_capacity(4096, file)).ok()?;
            return crate::postgres::version_major(header.server_version.as_deref()?);
        }
        None
    }
}

/// A backup file outside the store's listing (`--file /mnt/elsewhere/x.dump.zst`),
/// with its manifest and globals when they sit beside it.
pub struct LooseFile {
    pub manifest: Option<Manifest>,
    pub globals: Option<PathBuf>,
}

/// Opens a loose backup file; `what` names the input for the error (`--file X`).
pub fn loose_file(path: &Path, what: &str, root: &Path) -> Result<LooseFile> {
    if !path.is_file() {
        return Err(crate::error::usage(format!(
            "{what}: no such backup file; give a path relative to BACKUP_DIR ({}) or an absolute one (see `kbackup list`)",
            root.display()
        )));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = Format::split(&name).map(|(s, _)| s.to_string());
    let sidecar = |ext: &str| {
        stem.as_ref()
            .map(|s| path.with_file_name(naming::sidecar(s, ext)))
            .filter(|p| p.exists())
    };
    let manifest = match sidecar(MANIFEST_EXT) {
        Some(p) => Some(
            serde_json::from_slice::<Manifest>(&fs::read(&p)?)
                .with_context(|| format!("cannot read the manifest {}", p.display()))?,
        ),
        None => None,
    };
    Ok(LooseFile {
        manifest,
        globals: sidecar(GLOBALS_EXT).or_else(|| sidecar(GLOBALS_AGE_EXT)),
    })
}

/// Holds the store's lock until dropped; the kernel releases it when the process
/// dies, so it can never go stale.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    /// The store's memo, on while the lock is held (its lock, not verify's).
    memo: Option<Arc<Mutex<Memo>>>,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        if let Some(memo) = &self.memo {
            *memo.lock().unwrap_or_else(|e| e.into_inner()) = Memo::default();
        }
    }
}

/// A dump written and fsynced to a temporary file, with what goes beside it.
pub struct Staged {
    pub dump: NamedTempFile,
    pub format: Format,
    pub manifest: Manifest,
    pub globals: Vec<u8>,
}

impl Store {
    pub fn new(root: PathBuf) -> Self {
        Store {
            root,
            memo: Default::default(),
        }
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.memo.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the memo (when on) that this process changed the dump at `path`
    /// (or its sidecars): added, replaced or removed it.
    fn changed(&self, path: &Path) {
        let mut memo = self.memo();
        let (Some(index), Some(dir), Some(name)) =
            (memo.index.as_mut(), path.parent(), path.file_name())
        else {
            return;
        };
        if let Some(tier) = Tier::ALL.into_iter().find(|t| self.tier_dir(*t) == dir) {
            index.reread(tier.dir(), dir, name);
        }
    }

    pub fn tier_dir(&self, tier: Tier) -> PathBuf {
        self.root.join(tier.dir())
    }

    /// Creates the store root (0700) when missing.
    pub fn ensure_root(&self) -> Result<()> {
        create_private_dir(&self.root).with_context(|| {
            format!(
                "cannot create the backup folder {} (BACKUP_DIR)",
                self.root.display()
            )
        })?;
        check_root(&self.root)
    }

    /// The trust checks of [`check_root`] for a store that exists, creating
    /// nothing: for commands that read backups from it to act on them (restore).
    pub fn check_existing(&self) -> Result<()> {
        if fs::symlink_metadata(&self.root).is_ok() {
            check_root(&self.root)?;
        }
        Ok(())
    }

    /// Creates a tier folder (0700), tightening one that is readable by others.
    pub fn ensure_tier(&self, tier: Tier) -> Result<PathBuf> {
        self.ensure_root()?;
        let dir = self.tier_dir(tier);
        if fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(crate::error::usage(format!(
                "{} is a symlink; kbackup writes only into folders of its own store: replace it with a folder",
                dir.display()
            )));
        }
        create_private_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mode = fs::metadata(&dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(dir)
    }

    /// Takes the store's lock, or fails at once (exit 3) naming the holder.
    pub fn lock(&self, command: &str) -> Result<StoreLock> {
        let mut lock = self.lock_file(&self.root.join(LOCK_FILE), command)?;
        // Under the lock no other kbackup adds or removes dumps: the scans of
        // this run may keep what they read (see `Memo`).
        *self.memo() = Memo {
            on: true,
            index: None,
        };
        lock.memo = Some(self.memo.clone());
        Ok(lock)
    }

    /// Waits, up to `wait`, while a backup that may cover database `db` holds
    /// the store: one of `db` alone, or of several databases (`backup of a, b`,
    /// `backup of all databases`), whose list a name may not be told apart in.
    /// Said once, with the holder; Ok(true) once it is done, Ok(false) when
    /// none was running. After `wait`: exit 3 naming the holder.
    pub async fn wait_for_backup_of(&self, db: &str, wait: std::time::Duration) -> Result<bool> {
        let deadline = std::time::Instant::now() + wait;
        let mine = |h: &str| backup_may_cover(h, db);
        let mut waited = false;
        while let Some(holder) = self.holder().filter(|h| mine(h)) {
            if std::time::Instant::now() >= deadline {
                return Err(locked(format!(
                    "a backup of {db} still holds the store {} after {}: {holder}. If it is stuck, stop it \
                     (the lock goes with its process), then run the restore again",
                    self.root.display(),
                    humantime::format_duration(wait)
                )));
            }
            if !waited {
                tracing::info!(
                    "Waiting up to {} for the running {holder} to finish: a restore never ends a backup's dump \
                     (--no-wait refuses instead)",
                    humantime::format_duration(wait)
                );
                waited = true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        Ok(waited)
    }

    /// Who holds the store's lock now (`backup (pid 12, started ...)`), asked
    /// of the kernel's lock table (`/proc/locks`): without taking the lock even
    /// for a moment (a backup starting then would be skipped) or creating anything.
    pub fn holder(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let path = self.root.join(LOCK_FILE);
        let meta = fs::symlink_metadata(&path).ok().filter(|m| m.is_file())?;
        let locks = fs::read_to_string("/proc/locks").ok()?;
        // `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`: device (hex
        // major:minor) and inode of the locked file.
        let me = format!(
            "{:02x}:{:02x}:{}",
            libc::major(meta.dev()),
            libc::minor(meta.dev()),
            meta.ino()
        );
        let held = locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&me.as_str())
        });
        held.then(|| {
            fs::read_to_string(&path)
                .map(|t| t.trim().to_string())
                .unwrap_or_default()
        })
    }

    /// Serializes verifications without blocking backups (a long verify must
    /// never make the hourly backup skip).
    pub fn verify_lock(&self) -> Result<StoreLock> {
        let dir = self.root.join(STATE_DIR);
        create_private_dir(&dir)?;
        self.lock_file(&dir.join("verify.lock"), "verify")
    }

    fn lock_file(&self, path: &Path, command: &str) -> Result<StoreLock> {
        self.ensure_root()?;
        let mut file = open_lock_file(path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(locked(format!(
                    "another kbackup run holds the store {} ({}); this {command} did not run. \
                     If that run is stuck, stop it; the lock is released when its process exits",
                    self.root.display(),
                    if holder.is_empty() {
                        "holder unknown".to_string()
                    } else {
                        holder.to_string()
                    }
                )));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)?;
        write!(
            file,
            "{command} (pid {}, started {})",
            std::process::id(),
            Local::now().format("%Y-%m-%d %H:%M:%S")
        )?;
        file.flush()?;
        Ok(StoreLock {
            _file: file,
            memo: None,
        })
    }

    /// Removes what runs that were killed left behind: temporary files, and
    /// sidecars (manifest, globals) whose dump was never published. Call under the lock.
    /// Temporary files of restores and downloads (in `.kbackup/`, not under the
    /// lock) go once the run that made them is gone (their names carry its pid;
    /// one without a pid, once a day old).
    pub fn remove_leftovers(&self) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        if let Ok(entries) = fs::read_dir(self.root.join(STATE_DIR)) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(86_400));
                let orphaned = match partial_owner(&name) {
                    Some(run) => !crate::cleanup::run_alive(&self.root, &run),
                    None => old,
                };
                if orphaned && name.starts_with(PARTIAL_PREFIX) {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                    removed.push(p);
                }
            }
        }
        for tier in Tier::ALL {
            let dir = self.tier_dir(tier);
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            // Names only (one listing, no file looked at twice): a folder of
            // thousands of backups is checked in milliseconds.
            let names: std::collections::HashSet<std::ffi::OsString> =
                entries.flatten().map(|e| e.file_name()).collect();
            let has = |n: String| names.contains(std::ffi::OsStr::new(&n));
            for raw in &names {
                let name = raw.to_string_lossy();
                let partial = name.starts_with(PARTIAL_PREFIX) && name.ends_with(PARTIAL_SUFFIX);
                let orphan = SIDECARS.iter().any(|ext| {
                    name.strip_suffix(ext)
                        .and_then(|s| s.strip_suffix('.'))
                        .is_some_and(|stem| {
                            Format::ALL
                                .iter()
                                .all(|f| !has(naming::sidecar(stem, f.ext())))
                        })
                });
                if partial || orphan {
                    let path = dir.join(raw);
                    match fs::remove_file(&path) {
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        r => r.with_context(|| format!("cannot remove {}", path.display()))?,
                    }
                    removed.push(path);
                }
            }
        }
        Ok(removed)
    }

    /// A temporary file for a dump in `tier`'s folder, 0600, removed on drop.
    pub fn temp_file(&self, tier: Tier) -> Result<NamedTempFile> {
        let dir = self.ensure_tier(tier)?;
        temp_in(&dir)
    }

    /// The backup a dump of `tier` is, when its name reads as one.
    fn backup_of(
        cal: &Calendar,
        tier: Tier,
        dir: &Path,
        d: crate::index::Dump,
        prefix_hint: &str,
    ) -> Option<Backup> {
        let parsed = naming::parse_file_name(cal, tier, &d.name, prefix_hint)?;
        let path = dir.join(d.file_name());
        let manifest = d.manifest.map(|(_, m)| m);
        let time = manifest
            .as_ref()
            .map(|m| m.started_at)
            .or(parsed.time)
            .unwrap_or_else(|| {
                DateTime::<Local>::from(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_nanos(d.mtime_ns.max(0) as u64),
                )
                .fixed_offset()
            });
        Some(Backup {
            tier,
            rel_path: format!("{}/{}", tier.dir(), d.name),
            path,
            header_major: d.header_major,
            parsed,
            size: d.size,
            time,
            manifest,
            manifest_error: d.manifest_error,
            verification: d.verification.map(|v| v.1).unwrap_or_default(),
        })
    }

    /// Every dump in the store, newest first. Files that are not dumps (manifests,
    /// temporary files, anything else) are passed over. Folders and manifests
    /// are read through the store's index (see `index`): a store of thousands
    /// of backups is listed without reading every manifest each time.
    pub fn scan(&self, cal: &Calendar, prefix_hint: &str) -> Result<Vec<Backup>> {
        let mut memo = self.memo();
        let keep = memo.on;
        let first = memo.index.is_none();
        let mut index = memo
            .index
            .take()
            .unwrap_or_else(|| crate::index::Index::load(&self.root));
        let since = std::time::Instant::now();
        let mut present = Vec::new();
        for tier in Tier::ALL {
            let dir = self.tier_dir(tier);
            let folder = match fs::symlink_metadata(&dir) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    index.gone(tier.dir());
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
            };
            // A tier folder that is a symlink leads out of the store: not read.
            if folder.file_type().is_symlink() {
                tracing::warn!(
                    "{} is a symlink; kbackup does not follow links in the store (its backups are not listed): \
                     replace it with a folder",
                    dir.display()
                );
                index.gone(tier.dir());
                continue;
            }
            index.refresh(tier.dir(), &dir, &folder, since)?;
            present.push((tier, dir));
        }
        // Written as read from the folders, before this run's own changes.
        if first {
            index.save(&self.root);
        }
        let mut out = Vec::with_capacity(index.dumps());
        for (tier, dir) in present {
            let backup = |d| Self::backup_of(cal, tier, &dir, d, prefix_hint);
            if keep {
                out.extend(index.listed(tier.dir()).iter().cloned().filter_map(backup));
            } else {
                out.extend(index.take(tier.dir()).into_iter().filter_map(backup));
            }
        }
        if keep {
            index.keep_current();
            memo.index = Some(index);
        }
        drop(memo);
        // Sorted by moving indices, not the (large) backups themselves.
        let mut order: Vec<usize> = (0..out.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&out[a], &out[b]);
            b.time
                .cmp(&a.time)
                .then(a.tier.cmp(&b.tier))
                .then(b.rel_path.cmp(&a.rel_path))
        });
        gather(&mut out, order);
        Ok(out)
    }

    /// Whether `tier` already holds a dump (any format) for `stem`.
    pub fn has_stem(&self, tier: Tier, stem: &str) -> bool {
        let dir = self.tier_dir(tier);
        Format::ALL
            .iter()
            .map(|f| f.ext())
            .chain(SIDECARS)
            .any(|ext| dir.join(format!("{stem}.{ext}")).exists())
    }

    /// A stem in `tier` that no file uses: `<prefix>_<label>`, else with `_2`, `_3`...
    pub fn free_stem(&self, tier: Tier, prefix: &str, label: &str) -> String {
        (1..)
            .map(|seq| naming::stem(prefix, label, seq))
            .find(|s| !self.has_stem(tier, s))
            .expect("an unused name exists")
    }

    /// Publishes a staged backup as `tier/<stem>.<ext>` (sidecars first, dump last).
    pub fn publish(&self, tier: Tier, stem: &str, staged: Staged) -> Result<PathBuf> {
        anyhow::ensure!(
            naming::stem_stays_in_folder(stem),
            "refusing to write {stem:?}: a backup's name must stay inside {}",
            self.tier_dir(tier).display()
        );
        let dir = self.ensure_tier(tier)?;
        let manifest_json = serde_json::to_vec_pretty(&staged.manifest)?;
        let globals = dir.join(naming::sidecar(stem, staged.format.globals_ext()));
        let manifest = dir.join(naming::sidecar(stem, MANIFEST_EXT));
        let dump = dir.join(naming::sidecar(stem, staged.format.ext()));
        let result = (|| -> Result<()> {
            write_new(&dir, &globals, &staged.globals)?;
            write_new(&dir, &manifest, &manifest_json)?;
            staged
                .dump
                .persist_noclobber(&dump)
                .map_err(|e| anyhow!(e.error))
                .with_context(|| {
                    format!("cannot move the dump into place as {}", dump.display())
                })?;
            sync_dir(&dir)
        })();
        self.changed(&dump);
        if let Err(e) = result {
            for p in [&globals, &manifest] {
                let _ = fs::remove_file(p);
            }
            return Err(e);
        }
        Ok(dump)
    }

    /// Places a copy of `src` (a dump and its sidecars) in `tier` as `<stem>`:
    /// hard links, or copies where the filesystem has none. Existing files are
    /// never replaced.
    pub fn place_copy(
        &self,
        src: &Path,
        src_stem: &str,
        format: Format,
        tier: Tier,
        stem: &str,
    ) -> Result<PathBuf> {
        let dir = self.ensure_tier(tier)?;
        let src_dir = src.parent().expect("a dump lives in a tier folder");
        let mut placed = Vec::new();
        let result = (|| -> Result<()> {
            for ext in [GLOBALS_EXT, GLOBALS_AGE_EXT, MANIFEST_EXT, format.ext()] {
                let from = src_dir.join(naming::sidecar(src_stem, ext));
                // Sidecars may be missing; the dump never is.
                if !from.exists() && ext != format.ext() {
                    continue;
                }
                let to = dir.join(naming::sidecar(stem, ext));
                link_or_copy(&from, &to)?;
                placed.push(to);
            }
            sync_dir(&dir)
        })();
        let placed_dump = dir.join(naming::sidecar(stem, format.ext()));
        if let Err(e) = result {
            for p in &placed {
                let _ = fs::remove_file(p);
            }
            self.changed(&placed_dump);
            return Err(e);
        }
        self.changed(&placed_dump);
        Ok(placed_dump)
    }

    /// Records a verification beside `b` and every tier copy of the same file
    /// (hard links share an inode: verifying one verified them all).
    pub fn record_verification(&self, copies: &[&Backup], v: &Verification) -> Result<()> {
        for b in copies {
            // The record as it is on disk (a scan keeps only its brief).
            let json = serde_json::to_vec_pretty(&b.full_verification().with(v.clone()))?;
            let written = write_replace(&b.sidecar(VERIFY_EXT), &json);
            self.changed(&b.path);
            written?;
        }
        Ok(())
    }

    /// Deletes a dump and its sidecars (dump first: a sidecar without its dump is
    /// ignored by every reader).
    pub fn delete(&self, b: &Backup) -> Result<()> {
        let removed = fs::remove_file(&b.path);
        self.changed(&b.path);
        removed.with_context(|| format!("cannot delete {}", b.path.display()))?;
        for ext in SIDECARS {
            match fs::remove_file(b.sidecar(ext)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e)
                        .with_context(|| format!("cannot delete {}", b.sidecar(ext).display()))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Bytes used by the store, hard links counted once (as `du` does).
    pub fn disk_usage(&self) -> u64 {
        let mut seen = std::collections::HashSet::new();
        let mut total = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(e.path());
                } else if seen.insert((meta.dev(), meta.ino())) {
                    total += meta.len();
                }
            }
        }
        total
    }

    /// Bytes free for an unprivileged writer in the store's filesystem.
    pub fn free_space(&self) -> Result<u64> {
        free_space(&self.root)
    }

    /// Files that can still be created there (None: the filesystem has no
    /// inode limit to report).
    pub fn free_inodes(&self) -> Result<Option<u64>> {
        let s = statvfs(&self.root)?;
        Ok((s.f_files > 0).then_some(s.f_favail as u64))
    }
}

fn statvfs(path: &Path) -> Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed out-parameter of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", path.display()));
    }
    Ok(s)
}

pub fn free_space(path: &Path) -> Result<u64> {
    let s = statvfs(path)?;
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for OpenOptions {
    /// 0600, and never through a symlink planted in the store (O_NOFOLLOW):
    /// a link to /etc/shadow must not be truncated by a run as root.
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600).custom_flags(libc::O_NOFOLLOW)
    }
}

/// The store is trusted only if nobody else can change it: a folder another
/// user owns, or one that group or others may write, is refused (exit 2) with
/// the fix, before anything is written there.
pub fn check_root(root: &Path) -> Result<()> {
    let meta = fs::metadata(root).with_context(|| {
        format!(
            "cannot read the backup folder {} (BACKUP_DIR)",
            root.display()
        )
    })?;
    // SAFETY: geteuid has no failure mode and touches no memory.
    let me = unsafe { libc::geteuid() };
    let mode = meta.permissions().mode();
    if meta.uid() != me {
        return Err(crate::error::usage(format!(
            "the backup folder {} (BACKUP_DIR) belongs to user id {}, not to this user ({me}): another user \
             could replace or read its backups. Run kbackup as its owner, or `chown {me} {}`",
            root.display(),
            meta.uid(),
            root.display()
        )));
    }
    if mode & 0o022 != 0 {
        return Err(crate::error::usage(format!(
            "the backup folder {} (BACKUP_DIR) is writable by {} (mode {:o}): anyone there could plant or \
             replace files in it. `chmod go-w {}` (kbackup makes its folders 0700), or point BACKUP_DIR at \
             a folder of its own inside it, which kbackup creates private",
            root.display(),
            if mode & 0o002 != 0 { "every user" } else { "its group" },
            mode & 0o7777,
            root.display()
        )));
    }
    check_ancestors(root, me)
}

/// The folders above the store: whoever may rename entries in one of them can
/// move the store away and put another in its place. Each must belong to root
/// or this user, and must not be writable by every user unless sticky (`/tmp`).
/// A group-writable one is the owner's choice of whom to trust (a Kubernetes
/// volume's fsGroup) and is accepted.
fn check_ancestors(root: &Path, me: u32) -> Result<()> {
    let real = fs::canonicalize(root).with_context(|| {
        format!(
            "cannot resolve the backup folder {} (BACKUP_DIR)",
            root.display()
        )
    })?;
    for dir in real.ancestors().skip(1) {
        let meta = fs::metadata(dir)
            .with_context(|| format!("cannot read {}, above BACKUP_DIR", dir.display()))?;
        let mode = meta.permissions().mode();
        let problem = if meta.uid() != 0 && meta.uid() != me {
            Some(format!("belongs to user id {}", meta.uid()))
        } else if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            Some(format!(
                "is writable by every user (mode {:o}) and not sticky",
                mode & 0o7777
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(crate::error::usage(format!(
                "{}, a folder above the backup folder {} (BACKUP_DIR), {problem}: another user could move the \
                 store away and put their own in its place. Keep BACKUP_DIR under folders owned by root or by \
                 this user (or `chmod o-w {}`)",
                dir.display(),
                root.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other,
    }
}

/// A private (0600) temporary file in the store's state folder (`.kbackup/`,
/// 0700), named `.kbackup-<kind>-<pid>-XXXX.partial` so that a later run knows
/// whether its owner is still running; removed when the run ends, however it ends.
pub fn state_temp(root: &Path, kind: &str) -> Result<NamedTempFile> {
    state_temp_with(root, kind, 0o600, |b, dir| b.tempfile_in(dir))
}

/// [`state_temp`]'s folder counterpart (0700).
pub fn state_temp_dir(root: &Path, kind: &str) -> Result<tempfile::TempDir> {
    state_temp_with(root, kind, 0o700, |b, dir| b.tempdir_in(dir))
}

fn state_temp_with<T: AsRef<Path>>(
    root: &Path,
    kind: &str,
    mode: u32,
    make: impl FnOnce(&tempfile::Builder, &Path) -> io::Result<T>,
) -> Result<T> {
    let dir = root.join(STATE_DIR);
    create_private_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let run = crate::cleanup::run_id(root).context("cannot record this run in the store")?;
    let prefix = format!("{PARTIAL_PREFIX}{kind}-{run}-");
    let t = make(
        tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(PARTIAL_SUFFIX)
            .permissions(fs::Permissions::from_mode(mode)),
        &dir,
    )
    .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    crate::cleanup::remove_at_exit(t.as_ref());
    Ok(t)
}

/// The run that owns a state temporary file, from its name
/// (`.kbackup-<kind>-<pid>-<ns>-XXXX.partial` -> `<pid>-<ns>`).
pub fn partial_owner(name: &str) -> Option<String> {
    let rest = name.strip_prefix(PARTIAL_PREFIX)?;
    let mut parts = rest.split('-');
    let (_, pid, nanos) = (parts.next()?, parts.next()?, parts.next()?);
    (pid.parse::<u32>().is_ok() && nanos.parse::<u128>().is_ok()).then(|| format!("{pid}-{nanos}"))
}

/// A lock file, created 0600 if missing, never through a symlink, not truncated
/// (it holds the holder's description).
fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode_private()
        .open(path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))
}

/// A private lock file `name` in `dir` (0700), opened without following links
/// and locked exclusively: held until the returned file is dropped.
pub fn private_lock(dir: &Path, name: &str) -> Result<File> {
    create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(name);
    let file = open_lock_file(&path)?;
    file.try_lock()
        .map_err(|e| anyhow!("cannot lock {}: {e}", path.display()))?;
    Ok(file)
}

fn temp_in(dir: &Path) -> Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(PARTIAL_PREFIX)
        .suffix(PARTIAL_SUFFIX)
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))
}

/// Writes `bytes` as the new file `path`: temporary file, fsync, rename without replacing.
pub fn write_new(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = temp_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist_noclobber(path)
        .map_err(|e| anyhow!(e.error))
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok(())
}

/// Replaces `path` atomically (temporary file in the same folder, fsync,
/// rename): for state and metrics files, never for backups.
pub fn write_replace(path: &Path, bytes: &[u8]) -> Result<()> {
    write_replace_mode(path, bytes, 0o600)
}

/// [`write_replace`] with the given permissions (a metrics file is read by
/// node_exporter, another user).
pub fn write_replace_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("a file in a folder")?;
    create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = temp_in(dir)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow!(e.error))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(anyhow!(
            "{} already exists; it is never replaced",
            to.display()
        )),
        Err(e) => {
            tracing::debug!(
                "hard link {} -> {} failed ({e}); copying",
                from.display(),
                to.display()
            );
            let dir = to.parent().expect("in a folder");
            let mut tmp = temp_in(dir)?;
            io::copy(&mut File::open(from)?, tmp.as_file_mut())?;
            tmp.as_file().sync_all()?;
            tmp.persist_noclobber(to).map_err(|e| anyhow!(e.error))?;
            Ok(())
        }
    }
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?
        .sync_all()
        .with_context(|| format!("fsync {}", dir.display()))
}

/// `du -h` style sizes, as the seed prints them: 512B, 1.1M, 20M, 3.4G.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    // Whole numbers only (a listing prints thousands): rounded up, one
    // decimal below 10 units.
    let mut unit = 0;
    while unit < UNITS.len() - 1 && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    let base = 1u128 << (10 * unit);
    let b = bytes as u128;
    if unit == 0 {
        format!("{bytes}B")
    } else if b < 10 * base {
        let tenths = (b * 10).div_ceil(base);
        format!("{}.{}{}", tenths / 10, tenths % 10, UNITS[unit])
    } else {
        format!("{}{}", b.div_ceil(base), UNITS[unit])
    }
}

/// Whether the store's lock holder (`backup of app (pid ...)`) is a backup
/// that may cover database `db`: one of `db` alone, or of several databases
/// (`backup of a, b`, `backup of all databases`), whose list a name may not be
/// told apart in.
pub fn backup_may_cover(holder: &str, db: &str) -> bool {
    holder.strip_prefix("backup of ").is_some_and(|rest| {
        rest.starts_with(&format!("{db} ("))
            || rest.starts_with("all databases (")
            // A list: the text before " (pid" holds ", ".
            || rest
                .rsplit_once(" (pid ")
                .is_some_and(|(names, _)| names.contains(", "))
    })
}

/// Reorders `items` in place so that position j holds what was at
/// `order[j]` (a permutation), cycle by cycle: no second list.
fn gather<T>(items: &mut [T], mut order: Vec<usize>) {
    for i in 0..order.len() {
        let mut j = i;
        while order[j] != usize::MAX {
            let k = std::mem::replace(&mut order[j], usize::MAX);
            if k == i {
                break;
            }
            items.swap(j, k);
            j = k;
        }
    }
}

/// The seed's counts: `Hourly: 9, Daily: 5, Weekly: 0` (Monthly and Named when present).
pub fn tier_counts<B: std::borrow::Borrow<Backup>>(all: &[B]) -> String {
    let count = |t: Tier| all.iter().filter(|b| b.borrow().tier == t).count();
    let mut parts: Vec<String> = [Tier::Hourly, Tier::Daily, Tier::Weekly]
        .iter()
        .map(|t| format!("{}: {}", t.title(), count(*t)))
        .collect();
    for t in [Tier::Monthly, Tier::Named] {
        if count(t) > 0 {
            parts.push(format!("{}: {}", t.title(), count(t)));
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under the lock a run's scans keep what the first read and follow the
    /// run's own changes; without it (or once it is released) every scan
    /// looks at the folders.
    #[test]
    fn scans_under_the_lock_follow_the_runs_own_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("s"));
        let cal = Calendar {
            zone: crate::clock::Zone::Named(chrono_tz::UTC),
            week_start: chrono::Weekday::Mon,
        };
        let hourly = store.ensure_tier(Tier::Hourly).unwrap();
        fs::create_dir_all(store.root.join(STATE_DIR)).unwrap();
        let stem = "db_2025-01-01_01-00-00";
        let dump = hourly.join(format!("{stem}.dump.zst"));
        fs::write(&dump, b"x").unwrap();
        let names = |store: &Store| -> Vec<String> {
            let mut v: Vec<String> = store
                .scan(&cal, "db")
                .unwrap()
                .into_iter()
                .map(|b| b.rel_path)
                .collect();
            v.sort();
            v
        };
        let held = store.lock("backup").unwrap();
        assert_eq!(names(&store), [format!("hourly/{stem}.dump.zst")]);
        // The run's own copy and deletion show in its next scans.
        store
            .place_copy(
                &dump,
                stem,
                Format::CustomZstd,
                Tier::Daily,
                "db_2025-01-01",
            )
            .unwrap();
        assert_eq!(
            names(&store),
            [
                "daily/db_2025-01-01.dump.zst".to_string(),
                format!("hourly/{stem}.dump.zst")
            ]
        );
        let listed = store.scan(&cal, "db").unwrap();
        let hourly_copy = listed.iter().find(|b| b.tier == Tier::Hourly).unwrap();
        store.delete(hourly_copy).unwrap();
        assert_eq!(names(&store), ["daily/db_2025-01-01.dump.zst"]);
        // A file added behind the run's back is seen once the lock is gone.
        fs::write(hourly.join("db_2025-01-01_02-00-00.dump.zst"), b"y").unwrap();
        drop(held);
        assert_eq!(
            names(&store),
            [
                "daily/db_2025-01-01.dump.zst",
                "hourly/db_2025-01-01_02-00-00.dump.zst"
            ]
        );
    }

    #[test]
    fn a_backup_of_several_databases_covers_each() {
        for (holder, db, covers) in [
            ("backup of app (pid 1, started x)", "app", true),
            ("backup of app (pid 1, started x)", "app_2", false),
            ("backup of app_2 (pid 1, started x)", "app", false),
            ("backup of a, b (pid 1, started x)", "b", true),
            (
                "backup of all databases (pid 1, started x)",
                "anything",
                true,
            ),
            ("rotate (pid 1, started x)", "app", false),
        ] {
            assert_eq!(backup_may_cover(holder, db), covers, "{holder} / {db}");
        }
    }

    #[test]
    fn gather_applies_any_permutation_in_place() {
        let mut seed = 7u64;
        for n in 0..60usize {
            let mut order: Vec<usize> = (0..n).collect();
            // A deterministic shuffle.
            for i in (1..n).rev() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                order.swap(i, (seed >> 33) as usize % (i + 1));
            }
            let original: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
            let mut items = original.clone();
            gather(&mut items, order.clone());
            let want: Vec<String> = order.iter().map(|&k| original[k].clone()).collect();
            assert_eq!(items, want, "n={n}");
        }
    }

    #[test]
    fn sizes_read_like_du() {
        // The same text as the float formula it replaced, everywhere.
        let float = |bytes: u64| {
            const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
            let mut v = bytes as f64;
            let mut unit = 0;
            while v >= 1024.0 && unit < UNITS.len() - 1 {
                v /= 1024.0;
                unit += 1;
            }
            if unit == 0 {
                format!("{bytes}B")
            } else if v < 10.0 {
                format!("{:.1}{}", (v * 10.0).ceil() / 10.0, UNITS[unit])
            } else {
                format!("{:.0}{}", v.ceil(), UNITS[unit])
            }
        };
        let mut x: u64 = 1;
        while x < u64::MAX / 3 {
            for b in [x - 1, x, x + 1, x / 9 * 10, x / 2 * 3] {
                assert_eq!(human_size(b), float(b), "{b}");
            }
            x = x / 4 * 7 + 13;
        }
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1_100_000), "1.1M");
        assert_eq!(human_size(20 * 1024 * 1024), "20M");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024 + 1), "3.1G");
    }

    #[test]
    fn the_lock_is_exclusive_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("s"));
        let held = store.lock("backup").unwrap();
        let e = store.lock("rotate").unwrap_err();
        assert_eq!(crate::error::exit_kind(&e), crate::error::ExitKind::Locked);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(held);
        store.lock("rotate").unwrap();
    }

    #[test]
    fn writes_never_replace() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        write_new(dir.path(), &p, b"one").unwrap();
        assert!(write_new(dir.path(), &p, b"two").is_err());
        assert_eq!(fs::read(&p).unwrap(), b"one");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}
