//! The manifest written next to every dump (`<stem>.manifest.json`).
//!
//! It describes the backup, not its place in the store: tier copies are hard
//! links of one dump and share one manifest.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::archive::Summary;
use crate::naming::Format;

pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    pub kbackup_version: String,
    pub database: String,
    pub prefix: String,
    /// `--name`, for named backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub file: FileInfo,
    /// When pg_dump started and finished, with the local UTC offset.
    #[serde(with = "rfc3339")]
    pub started_at: DateTime<FixedOffset>,
    #[serde(with = "rfc3339")]
    pub finished_at: DateTime<FixedOffset>,
    pub source: SourceInfo,
    pub server_version: String,
    /// The server's major version (15, 17): a restore needs a server at least this new.
    /// Absent from manifests written before it was recorded: see `server_major()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_major: Option<u32>,
    pub pg_dump_version: String,
    pub database_size_bytes: u64,
    /// The archive as read while it was written: TOC object counts and the exact
    /// rows of every table, from the snapshot pg_dump took.
    pub archive: Summary,
    pub globals: GlobalsInfo,
    /// BACKUP_MANIFEST_DETAIL=minimal: `archive` names no table, role or
    /// database property; these are its counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimal: Option<Counts>,
}

/// The counts a minimal manifest keeps of the archive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub tables: usize,
    /// Exact rows in all tables (None: some table's count unknown).
    pub rows: Option<u64>,
}

impl Manifest {
    /// Leaves out every name of the database's objects (BACKUP_MANIFEST_DETAIL=minimal).
    pub fn minimize(&mut self) {
        self.minimal = Some(Counts {
            tables: self.archive.tables.len(),
            rows: self.total_rows(),
        });
        self.archive.tables.clear();
        self.archive.roles.clear();
        self.archive.database_entries = Default::default();
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileInfo {
    pub format: Format,
    /// How the file is encrypted (None: it is not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// SHA-256 of the file as stored (compressed).
    pub sha256: String,
    pub size_bytes: u64,
    pub compression: String,
}

/// A file encrypted with age to these recipients (public keys: the manifest
/// says who can read the backup, never how).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Encryption {
    pub scheme: String,
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub port: u16,
    pub user: String,
}

/// `pg_dumpall --globals-only` saved as `<stem>.globals.sql`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalsInfo {
    pub sha256: String,
    pub size_bytes: u64,
    /// False when the role could not read password hashes (not a superuser):
    /// the roles restore, their passwords must be set again.
    pub role_passwords: bool,
}

/// `<stem>.verify.json`: when a backup was last verified, how, and what each check found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    #[serde(with = "rfc3339")]
    pub verified_at: DateTime<FixedOffset>,
    pub quick: bool,
    pub passed: bool,
    /// The SHA-256 of the file that was verified.
    pub sha256: String,
    /// The server the test restore ran on (full verification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    pub duration_ms: u64,
    pub checks: Vec<Check>,
}

/// `<stem>.verify.json`: the last full and the last quick verification (a quick
/// check never erases what a full one proved).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verifications {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<Box<Verification>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quick: Option<Box<Verification>>,
}

impl Verifications {
    /// The one to show: a full verification when there is one, else the quick.
    pub fn best(&self) -> Option<&Verification> {
        self.full.as_deref().or(self.quick.as_deref())
    }

    pub fn with(mut self, v: Verification) -> Self {
        if v.quick {
            self.quick = Some(Box::new(v));
        } else {
            self.full = Some(Box::new(v));
        }
        self
    }
}

/// What a listing shows of a verification: when, how, whether it passed
/// (`Backup::full_verification` reads the whole record). Short field names:
/// the index holds one per backup.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    #[serde(rename = "t", with = "compact_time")]
    pub verified_at: DateTime<FixedOffset>,
    #[serde(rename = "q")]
    pub quick: bool,
    #[serde(rename = "p")]
    pub passed: bool,
}

/// The last full and quick verifications, as a listing shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SeenPair {
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    pub full: Option<Seen>,
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub quick: Option<Seen>,
}

impl SeenPair {
    pub fn of(v: &Verifications) -> SeenPair {
        let seen = |v: &Verification| Seen {
            verified_at: v.verified_at,
            quick: v.quick,
            passed: v.passed,
        };
        SeenPair {
            full: v.full.as_deref().map(seen),
            quick: v.quick.as_deref().map(seen),
        }
    }

    /// The one to show: a full verification when there is one, else the quick.
    pub fn best(&self) -> Option<&Seen> {
        self.full.as_ref().or(self.quick.as_ref())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
    pub detail: String,
}

impl Manifest {
    /// The backed-up server's major version, recorded or read from its version text.
    pub fn server_major(&self) -> Option<u32> {
        self.server_major
            .or_else(|| crate::postgres::version_major(&self.server_version))
    }

    pub fn total_rows(&self) -> Option<u64> {
        match self.minimal {
            Some(c) => c.rows,
            None => self.archive.tables.iter().map(|t| t.rows).sum(),
        }
    }
}

/// What the store's listing needs of a manifest (owner, time, checksum, rows):
/// kept for every backup of a scan, and cached in the store's index, while the
/// whole manifest (every table) is read only for the backup a command works on.
/// (Short field names: it is stored once per backup in the index.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Brief {
    /// Shared among the backups of one database (see [`Interner`]).
    #[serde(rename = "d")]
    pub database: Arc<str>,
    #[serde(rename = "p")]
    pub prefix: Arc<str>,
    #[serde(rename = "t", with = "compact_time")]
    pub started_at: DateTime<FixedOffset>,
    #[serde(rename = "h")]
    pub sha256: Sha256,
    #[serde(rename = "n")]
    pub size_bytes: u64,
    #[serde(rename = "v")]
    pub server_major: Option<u32>,
    #[serde(rename = "r")]
    pub total_rows: Option<u64>,
    #[serde(rename = "w")]
    pub role_passwords: bool,
    #[serde(rename = "z")]
    pub database_size_bytes: u64,
}

impl From<&Manifest> for Brief {
    fn from(m: &Manifest) -> Brief {
        Brief {
            database: m.database.as_str().into(),
            prefix: m.prefix.as_str().into(),
            started_at: m.started_at,
            sha256: Sha256::parse(&m.file.sha256),
            size_bytes: m.file.size_bytes,
            server_major: m.server_major(),
            total_rows: m.total_rows(),
            role_passwords: m.globals.role_passwords,
            database_size_bytes: m.database_size_bytes,
        }
    }
}

impl Brief {
    /// The same brief with its names shared with every other brief `names` saw.
    pub fn interned(mut self, names: &mut Interner) -> Brief {
        self.database = names.get(&self.database);
        self.prefix = names.get(&self.prefix);
        self
    }
}

/// One shared copy of each name: a store's thousands of briefs name a few
/// databases.
#[derive(Default)]
pub struct Interner(std::collections::HashSet<Arc<str>>);

impl Interner {
    pub fn get(&mut self, name: &Arc<str>) -> Arc<str> {
        match self.0.get(name) {
            Some(shared) => shared.clone(),
            None => {
                self.0.insert(name.clone());
                name.clone()
            }
        }
    }
}

/// A SHA-256 as its 32 bytes (hex in JSON): a brief per backup is kept in
/// memory, where the text would take three times the room.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The digest a manifest's hex names; all zeros when it is not one
    /// (which no file's checksum equals).
    pub fn parse(hex_text: &str) -> Sha256 {
        let mut out = [0u8; 32];
        if hex::decode_to_slice(hex_text, &mut out).is_err() {
            out = [0; 32];
        }
        Sha256(out)
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sha256, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.as_bytes(), &mut out).map_err(serde::de::Error::custom)?;
        Ok(Sha256(out))
    }
}

/// A time as `[unix milliseconds, UTC offset in seconds]`: for the index,
/// where thousands are read at once (no text to parse).
mod compact_time {
    use chrono::{DateTime, FixedOffset};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<FixedOffset>, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tup = s.serialize_tuple(2)?;
        tup.serialize_element(&t.timestamp_millis())?;
        tup.serialize_element(&t.offset().local_minus_utc())?;
        tup.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<FixedOffset>, D::Error> {
        let (millis, offset) = <(i64, i32)>::deserialize(d)?;
        let offset = FixedOffset::east_opt(offset)
            .ok_or_else(|| serde::de::Error::custom("UTC offset out of range"))?;
        DateTime::from_timestamp_millis(millis)
            .map(|t| t.with_timezone(&offset))
            .ok_or_else(|| serde::de::Error::custom("time out of range"))
    }
}

/// RFC 3339 with an explicit numeric offset (`+00:00`, never `Z`) and milliseconds.
mod rfc3339 {
    use chrono::{DateTime, FixedOffset, SecondsFormat};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<FixedOffset>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, false))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<FixedOffset>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}
