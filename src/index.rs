//! The store's index (`BACKUP_DIR/.kbackup/index.json`, JSON lines): a cache, never the
//! truth, that lets `list`, `status` and `rotate` read a store of thousands of
//! backups without listing every folder and reading every manifest.
//!
//! Per tier folder it keeps the dumps (name, size, time) with the brief of
//! each one's manifest and its verification record, and what identified the
//! folder and each sidecar file when they were read (inode, size, modification
//! and change times):
//! - a folder whose identity is unchanged has the same entries: kbackup only
//!   ever adds, replaces (by rename) or removes files, and each of those
//!   changes the folder. Its listing is then used without reading the folder.
//!   A listing read within [`RACY`] of the folder's last change is not
//!   trusted so (a change in the same clock tick would go unseen, git's "racy"
//!   case); the next scan reads the folder again;
//! - a folder that changed is read again, and each manifest and verification
//!   record is read again only when its own identity changed.
//!
//! A missing, unreadable or older-version index is rebuilt from the files.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::manifest::{Brief, Manifest, SeenPair, Verifications};
use crate::naming::{self, Format, MANIFEST_EXT, VERIFY_EXT};

const FILE: &str = "index.json";

static DRY_RUN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// This run is a dry run: the index is read, never written.
pub fn dry_run() {
    DRY_RUN.store(true, std::sync::atomic::Ordering::Relaxed);
}
/// 6: JSON lines (a header, then a dump per line); names shared, checksums as bytes.
const VERSION: u32 = 6;
/// A folder changed less than this before it was read is read again next
/// time: a change within one tick of the kernel's file clock after the read
/// would leave the folder's stamp as it was.
const RACY: i64 = 100_000_000;
/// The same for a filesystem that keeps whole seconds (NFS servers, FAT).
const RACY_COARSE: i64 = 3_000_000_000;

/// What identifies a file or folder as it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    #[serde(rename = "i")]
    ino: u64,
    #[serde(rename = "s")]
    size: u64,
    #[serde(rename = "m")]
    mtime_ns: i64,
    #[serde(rename = "c")]
    ctime_ns: i64,
}

impl Stamp {
    pub fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}

/// One dump of a tier folder, with its manifest's brief and its verification
/// record without the checks' findings (short field names: one per backup).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dump {
    #[serde(rename = "f")]
    pub name: String,
    #[serde(rename = "s")]
    pub size: u64,
    #[serde(rename = "m")]
    pub mtime_ns: i64,
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<(Stamp, Arc<Brief>)>,
    /// Why a manifest that exists could not be read.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub manifest_error: Option<String>,
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Box<(Stamp, SeenPair)>>,
    /// The file name's bytes, when they are not UTF-8 (`name` is then lossy).
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub raw_name: Option<Vec<u8>>,
    /// A dump without a manifest: the server major its archive header names
    /// (read once, for `list`'s PG column).
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub header_major: Option<u32>,
}

impl Dump {
    /// The file name as it is on disk.
    pub fn file_name(&self) -> std::ffi::OsString {
        use std::os::unix::ffi::OsStringExt;
        match &self.raw_name {
            Some(raw) => std::ffi::OsString::from_vec(raw.clone()),
            None => self.name.clone().into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Listing {
    folder: Stamp,
    /// Read long enough after the folder's last change to be trusted while
    /// the folder's stamp is unchanged (decided when the index is written, on
    /// the filesystem's own clock).
    trusted: bool,
    dumps: Vec<Dump>,
    /// When this run read the folder (not stored).
    read_at: Option<std::time::Instant>,
    /// Kept up to date by this process since it read the folder (while it
    /// holds the store's lock, see [`Index::reread`]): used without looking
    /// at the folder again (not stored).
    current: bool,
}

/// The index file's first line; each listing's dumps follow, one per line,
/// in the order of `tiers`. Read a line at a time: loading a store of
/// thousands of backups never holds the file's text.
#[derive(Serialize, Deserialize)]
struct Header {
    version: u32,
    tiers: Vec<TierHeader>,
}

#[derive(Serialize, Deserialize)]
struct TierHeader {
    key: String,
    folder: Stamp,
    trusted: bool,
    /// How many dump lines follow for this folder.
    dumps: usize,
}

#[derive(Debug, Default)]
pub struct Index {
    tiers: HashMap<String, Listing>,
    changed: bool,
}

impl Index {
    pub fn load(root: &Path) -> Index {
        open_regular(&root.join(crate::store::STATE_DIR).join(FILE))
            .and_then(|file| Self::read(std::io::BufReader::with_capacity(1 << 16, file)))
            .unwrap_or_default()
    }

    /// The index from its file, None when it is not one this version wrote
    /// whole.
    fn read(mut input: impl std::io::BufRead) -> Option<Index> {
        let mut line = Vec::new();
        let mut next = |line: &mut Vec<u8>| -> Option<()> {
            line.clear();
            (input.read_until(b'\n', line).ok()? > 0).then_some(())
        };
        next(&mut line)?;
        let header: Header = serde_json::from_slice(&line).ok()?;
        if header.version != VERSION {
            return None;
        }
        let mut names = crate::manifest::Interner::default();
        let mut tiers = HashMap::new();
        for t in header.tiers {
            let mut dumps = Vec::with_capacity(with_room(t.dumps.min(MAX_INDEX as usize / 64)));
            for _ in 0..t.dumps {
                next(&mut line)?;
                let mut d: Dump = serde_json::from_slice(&line).ok()?;
                d.manifest = d
                    .manifest
                    .map(|(s, b)| (s, Arc::new(Arc::unwrap_or_clone(b).interned(&mut names))));
                dumps.push(d);
            }
            let listing = Listing {
                folder: t.folder,
                trusted: t.trusted,
                dumps,
                read_at: None,
                current: false,
            };
            tiers.insert(t.key, listing);
        }
        // A file with more than its header counts is not one this wrote.
        next(&mut line).is_none().then_some(Index {
            tiers,
            changed: false,
        })
    }

    /// Writes the index as [`read`](Self::read) reads it.
    fn write(&self, out: &mut impl std::io::Write) -> Result<()> {
        // In the order of their names: the same index is the same file.
        let mut tiers: Vec<_> = self.tiers.iter().collect();
        tiers.sort_by(|a, b| a.0.cmp(b.0));
        let header = Header {
            version: VERSION,
            tiers: tiers
                .into_iter()
                .map(|(key, l)| TierHeader {
                    key: key.clone(),
                    folder: l.folder,
                    trusted: l.trusted,
                    dumps: l.dumps.len(),
                })
                .collect(),
        };
        serde_json::to_writer(&mut *out, &header)?;
        out.write_all(b"\n")?;
        for t in &header.tiers {
            for d in &self.tiers[&t.key].dumps {
                serde_json::to_writer(&mut *out, d)?;
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    /// Makes the listing of the tier folder `dir` (named `key` in the index),
    /// whose metadata is `folder` (read at `since`, before the folder was
    /// listed), describe it as it is now.
    pub fn refresh(
        &mut self,
        key: &str,
        dir: &Path,
        folder: &fs::Metadata,
        since: std::time::Instant,
    ) -> Result<()> {
        if self.tiers.get(key).is_some_and(|l| l.current) {
            return Ok(());
        }
        let stamp = Stamp::of(folder);
        // A manifest that could not be read is read again every time: its
        // error is never what the next run sees of a file that may be fine.
        if self.tiers.get(key).is_some_and(|l| {
            l.trusted && l.folder == stamp && l.dumps.iter().all(|d| d.manifest_error.is_none())
        }) {
            return Ok(());
        }
        let before = self.tiers.remove(key).map(|l| l.dumps).unwrap_or_default();
        let dumps = read_folder(dir, before)?;
        self.tiers.insert(
            key.to_string(),
            Listing {
                folder: stamp,
                trusted: false,
                dumps,
                read_at: Some(since),
                current: false,
            },
        );
        self.changed = true;
        Ok(())
    }

    /// Marks every listing as this process's own from now on: a process that
    /// holds the store's lock is the only one that adds or removes dumps, and
    /// it tells the index of each change it makes ([`reread`](Self::reread)),
    /// so its later scans need not read the folders again.
    pub fn keep_current(&mut self) {
        for l in self.tiers.values_mut() {
            l.current = true;
        }
    }

    /// Reads again the dump `name` of the tier folder `dir` (key `key`) and
    /// its sidecars, after this process changed them: added, replaced or
    /// removed. A folder not listed yet is left to the next scan.
    pub fn reread(&mut self, key: &str, dir: &Path, name: &std::ffi::OsStr) {
        let Some(listing) = self.tiers.get_mut(key) else {
            return;
        };
        let at = listing.dumps.iter().position(|d| d.file_name() == name);
        let old = at.map(|i| listing.dumps.swap_remove(i));
        let path = dir.join(name);
        let fresh = fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.is_file())
            .and_then(|meta| {
                let utf8 = name.to_string_lossy().into_owned();
                Format::split(&utf8)?;
                Some(read_dump(dir, utf8, name, &meta, &|_| true, old))
            });
        if let Some(d) = fresh {
            // Listings are made with room for a run's additions (see
            // `with_room`): a push never moves the thousands already there.
            let dumps = &mut listing.dumps;
            if dumps.len() == dumps.capacity() {
                dumps.reserve_exact(with_room(dumps.len()) - dumps.len());
            }
            dumps.push(d);
        }
        // The order of a listing is not kept (the scan sorts).
        self.changed = true;
    }

    /// How many dumps the refreshed folders hold.
    pub fn dumps(&self) -> usize {
        self.tiers.values().map(|l| l.dumps.len()).sum()
    }

    /// Forgets a folder that is gone.
    pub fn gone(&mut self, key: &str) {
        self.changed |= self.tiers.remove(key).is_some();
    }

    /// The dumps of a refreshed tier folder.
    pub fn listed(&self, key: &str) -> &[Dump] {
        self.tiers
            .get(key)
            .map(|l| &l.dumps[..])
            .unwrap_or_default()
    }

    /// The dumps of a refreshed tier folder, taken out of the index (after [`save`](Self::save)).
    pub fn take(&mut self, key: &str) -> Vec<Dump> {
        self.tiers.remove(key).map(|l| l.dumps).unwrap_or_default()
    }

    /// Writes the index when it changed and this process's user owns the
    /// store: a report run by another user (monitoring as root) leaves no file
    /// the owner cannot read. A cache: not synced, and a failure only costs the
    /// next run the time to read the folders again.
    pub fn save(&mut self, root: &Path) {
        if !std::mem::take(&mut self.changed) {
            return;
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if fs::metadata(root).map(|m| m.uid()).ok() != Some(me) {
            return;
        }
        // A dry run writes nothing into the store, not even this cache; and
        // the store's own folder is made by the commands that keep state.
        let dir = root.join(crate::store::STATE_DIR);
        if DRY_RUN.load(std::sync::atomic::Ordering::Relaxed) || !dir.is_dir() {
            return;
        }
        let written = (|| -> Result<()> {
            let tmp = tempfile::Builder::new()
                .prefix(".kbackup-index-")
                .suffix(".partial")
                .tempfile_in(&dir)?;
            // Which listings may be trusted is decided on the filesystem's own
            // clock (the new file's time, the same clock as the folders'),
            // not this process's: a skewed or stepped clock cannot make a
            // change in the same tick as a read look older than it.
            let now_fs = Stamp::of(&tmp.as_file().metadata()?).mtime_ns;
            for l in self.tiers.values_mut() {
                let Some(read_at) = l.read_at.take() else {
                    continue;
                };
                let read_fs = now_fs - read_at.elapsed().as_nanos() as i64;
                let changed = l.folder.mtime_ns.max(l.folder.ctime_ns);
                // Whole-second stamps (a filesystem without finer times): a wider window.
                let racy = if changed % 1_000_000_000 == 0 && now_fs % 1_000_000_000 == 0 {
                    RACY_COARSE
                } else {
                    RACY
                };
                l.trusted = changed < read_fs - racy;
            }
            let mut w = std::io::BufWriter::new(tmp);
            self.write(&mut w)?;
            let tmp = w.into_inner().map_err(|e| e.into_error())?;
            tmp.persist(dir.join(FILE))?;
            Ok(())
        })();
        if let Err(e) = written {
            tracing::debug!("cannot write the store's index (only a cache): {e:#}");
        }
    }
}

/// Reads a tier folder: its dumps, each sidecar read again only when its
/// stamp differs from the one in `before` (the folder's previous listing).
fn read_folder(dir: &Path, before: Vec<Dump>) -> Result<Vec<Dump>> {
    let mut sidecars: std::collections::HashSet<std::ffi::OsString> = Default::default();
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(MANIFEST_EXT) || name.ends_with(VERIFY_EXT) {
            sidecars.insert(entry.file_name());
        } else if Format::split(&name).is_some() {
            files.push((entry, name));
        }
    }
    // Each file's previous entry, found by name (positions: the entries
    // themselves are moved, never copied into a map).
    let mut before: Vec<Option<Dump>> = before.into_iter().map(Some).collect();
    let files: Vec<_> = {
        let at: HashMap<&str, usize> = before
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((d.as_ref()?.name.as_str(), i)))
            .collect();
        files
            .into_iter()
            .map(|(entry, name)| {
                let i = at.get(name.as_str()).copied();
                (entry, name, i)
            })
            .collect()
    };
    let mut out = Vec::with_capacity(with_room(files.len()));
    for (entry, name, i) in files {
        let meta = match entry.metadata() {
            Ok(m) => m,
            // Removed since the folder was listed (a rotation running now).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", entry.path().display()))
            }
        };
        if !meta.is_file() {
            continue;
        }
        let old = i.and_then(|i| before[i].take());
        let listed = |n: &str| sidecars.contains(std::ffi::OsStr::new(n));
        out.push(read_dump(
            dir,
            name,
            &entry.file_name(),
            &meta,
            &listed,
            old,
        ));
    }
    Ok(out)
}

/// One dump of folder `dir` (`raw` its name on disk, `name` the same as
/// text, `meta` its metadata) with its sidecars, each read again only when
/// its stamp differs from `old`'s. `listed` tells which sidecar names exist
/// (a folder's listing), or says yes to each to look.
fn read_dump(
    dir: &Path,
    name: String,
    raw: &std::ffi::OsStr,
    meta: &fs::Metadata,
    listed: &dyn Fn(&str) -> bool,
    old: Option<Dump>,
) -> Dump {
    let (stem, _) = Format::split(&name).expect("a dump's name");
    let sidecar = |ext: &str| Some(naming::sidecar(stem, ext)).filter(|n| listed(n));
    let (manifest, manifest_error) = match sidecar(MANIFEST_EXT) {
        None => (None, None),
        Some(file) => {
            let path = dir.join(&file);
            match read_sidecar(&path, old.as_ref().and_then(|d| d.manifest.clone()), |b| {
                serde_json::from_slice::<Manifest>(b).map(|m| Arc::new(Brief::from(&m)))
            }) {
                Ok(m) => (m, None),
                Err(e) => (None, Some(format!("{}: {e:#}", path.display()))),
            }
        }
    };
    let verification = sidecar(VERIFY_EXT).and_then(|file| {
        read_sidecar(
            &dir.join(file),
            old.as_ref()
                .and_then(|d| d.verification.as_deref().copied()),
            |b| serde_json::from_slice::<Verifications>(b).map(|v| SeenPair::of(&v)),
        )
        .ok()
        .flatten()
        .map(Box::new)
    });
    let raw_name = {
        use std::os::unix::ffi::OsStrExt;
        (raw.to_str().is_none()).then(|| raw.as_bytes().to_vec())
    };
    // A seed-era dump has no manifest: its archive header names the server.
    let header_major = if manifest.is_none() && !name.ends_with(Format::CustomZstd.ext()) {
        old.as_ref()
            .filter(|d| d.size == meta.len() && d.mtime_ns == mtime_ns(meta))
            .and_then(|d| d.header_major)
            .or_else(|| {
                let file = fs::File::open(dir.join(raw)).ok()?;
                let header =
                    crate::archive::read_header(std::io::BufReader::with_capacity(4096, file))
                        .ok()?;
                crate::postgres::version_major(header.server_version.as_deref()?)
            })
    } else {
        None
    };
    Dump {
        size: meta.len(),
        mtime_ns: mtime_ns(meta),
        name,
        manifest,
        manifest_error,
        verification,
        raw_name,
        header_major,
    }
}

/// Room for a listing of `n` dumps and the few a run adds (a backup and its
/// tier copies, per database): growing a listing of thousands by doubling
/// would hold it twice while it moves.
fn with_room(n: usize) -> usize {
    n + 64 + n / 32
}

fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

/// The longest index read: a real one is a few hundred bytes per backup.
const MAX_INDEX: u64 = 256 << 20;

/// A regular file, never through a symlink, a FIFO or a device, and never
/// longer than [`MAX_INDEX`]: anything else is no index.
fn open_regular(path: &Path) -> Option<std::io::Take<fs::File>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    (meta.is_file() && meta.len() <= MAX_INDEX).then(|| file.take(MAX_INDEX))
}

/// A sidecar's content: `cached`'s when the file's stamp is the same, else
/// parsed from the file.
/// None when there is no such file.
fn read_sidecar<T>(
    path: &Path,
    cached: Option<(Stamp, T)>,
    parse: impl Fn(&[u8]) -> serde_json::Result<T>,
) -> Result<Option<(Stamp, T)>> {
    let stamp = match fs::symlink_metadata(path) {
        Ok(m) => Stamp::of(&m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if let Some(c) = cached.filter(|(s, _)| *s == stamp) {
        return Ok(Some(c));
    }
    let bytes = fs::read(path)?;
    Ok(Some((stamp, parse(&bytes)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(name: &str, db: &str) -> Dump {
        let brief = Brief {
            database: db.into(),
            prefix: db.into(),
            started_at: chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678+01:00")
                .unwrap(),
            sha256: crate::manifest::Sha256([7; 32]),
            size_bytes: 10,
            server_major: Some(16),
            total_rows: Some(3),
            role_passwords: true,
            database_size_bytes: 99,
        };
        let stamp = Stamp {
            ino: 1,
            size: 2,
            mtime_ns: 3,
            ctime_ns: 4,
        };
        Dump {
            name: name.into(),
            size: 10,
            mtime_ns: 5,
            manifest: Some((stamp, Arc::new(brief))),
            manifest_error: None,
            verification: None,
            raw_name: None,
            header_major: None,
        }
    }

    fn index() -> Index {
        let listing = |dumps| Listing {
            folder: Stamp {
                ino: 9,
                size: 8,
                mtime_ns: 7,
                ctime_ns: 6,
            },
            trusted: true,
            dumps,
            read_at: None,
            current: false,
        };
        let mut tiers = HashMap::new();
        tiers.insert(
            "hourly".into(),
            listing(vec![dump("a_1.dump.zst", "a"), dump("a_2.dump.zst", "a")]),
        );
        tiers.insert("daily".into(), listing(vec![dump("b_1.dump.zst", "b")]));
        tiers.insert("weekly".into(), listing(vec![]));
        Index {
            tiers,
            changed: false,
        }
    }

    fn text(i: &Index) -> Vec<u8> {
        let mut out = Vec::new();
        i.write(&mut out).unwrap();
        out
    }

    #[test]
    fn the_file_is_read_back_as_written_a_line_at_a_time() {
        let written = text(&index());
        // A header, then one line per dump.
        assert_eq!(written.iter().filter(|&&b| b == b'\n').count(), 1 + 3);
        let read = Index::read(&written[..]).expect("an index");
        assert_eq!(text(&read), written);
        assert_eq!(read.listed("hourly").len(), 2);
        let briefs: Vec<_> = read
            .listed("hourly")
            .iter()
            .map(|d| d.manifest.clone().unwrap().1)
            .collect();
        // One copy of a database's names, shared by its backups.
        assert!(Arc::ptr_eq(&briefs[0].database, &briefs[1].database));
        assert!(
            read.tiers["hourly"].dumps.capacity() > 2,
            "room for a run's additions"
        );
    }

    #[test]
    fn anything_but_a_whole_file_of_this_version_is_no_index() {
        let written = text(&index());
        let lines: Vec<&[u8]> = written.split_inclusive(|&b| b == b'\n').collect();
        // Cut short, one line too many, a line garbled, another version, empty.
        assert!(Index::read(&lines[..3].concat()[..]).is_none());
        assert!(Index::read(&[&written[..], lines[1]].concat()[..]).is_none());
        assert!(
            Index::read(&[lines[0], b"{not json\n", lines[2], lines[3]].concat()[..]).is_none()
        );
        let old = String::from_utf8(written.clone()).unwrap().replacen(
            &format!("\"version\":{VERSION}"),
            "\"version\":5",
            1,
        );
        assert!(Index::read(old.as_bytes()).is_none());
        assert!(Index::read(&b""[..]).is_none());
    }
}
