//! A streaming reader of pg_dump's custom archive format (`pg_dump -Fc`).
//!
//! kbackup reads every dump as it flows from pg_dump to disk, and uses it to
//! prove the archive complete: the header and table of contents parse, every
//! entry the TOC says has data appears as a data block, each block ends with its
//! terminating zero-length chunk, and (uncompressed archives) each table's COPY
//! data ends with its `\.` end-of-data line. A pg_dump that exits 0 with empty or
//! truncated output is caught here. The same pass counts each table's rows
//! (COPY text has exactly one line per row; newlines inside values are escaped),
//! which is the snapshot pg_dump dumped: the manifest's row counts come from here.
//!
//! No crate reads this format, so it is written by hand from PostgreSQL's
//! `pg_backup_archiver.c` (ReadHead, ReadToc) and `pg_backup_custom.c`; archive
//! versions 1.12 (PostgreSQL 9.0) to 1.16 (PostgreSQL 17/18) are understood.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, BufRead};

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 5] = b"PGDMP";
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
const OFFSET_NO_DATA: u8 = 3;
/// The end of every table's COPY data in an archive: `\.` then two blank lines.
const COPY_END: &[u8; 5] = b"\\.\n\n\n";

fn version(major: u8, minor: u8, rev: u8) -> u32 {
    (u32::from(major) << 16) | (u32::from(minor) << 8) | u32::from(rev)
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a pg_dump custom-format archive (no PGDMP header)")]
    NotAnArchive,
    #[error("archive is empty")]
    Empty,
    #[error("archive is truncated: it ends inside {context} at byte {offset}")]
    Truncated { context: String, offset: u64 },
    #[error("archive is incomplete: {0}")]
    Incomplete(String),
    #[error("archive is corrupt at byte {offset}: {message}")]
    Corrupt { message: String, offset: u64 },
    #[error(
        "archive format version {0} is older than kbackup reads (1.12, PostgreSQL 9.0, and later)"
    )]
    UnsupportedVersion(String),
    #[error("archive format version {0} is newer than this kbackup reads (up to 1.16, pg_dump 17 and 18): a newer pg_dump wrote it; upgrade kbackup")]
    NewerVersion(String),
    #[error("reading the archive: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Lz4,
    Zstd,
}

/// One table's data in the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableData {
    pub schema: String,
    pub name: String,
    /// Exact row count (None when the archive's data is compressed inside).
    pub rows: Option<u64>,
    /// Bytes of data in the archive.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub format_version: String,
    pub compression: Compression,
    pub database: Option<String>,
    pub server_version: Option<String>,
    pub pg_dump_version: Option<String>,
    pub toc_entries: u32,
    /// TOC entries by kind ("TABLE", "INDEX", "FK CONSTRAINT", "SEQUENCE"...).
    pub objects: BTreeMap<String, u32>,
    pub tables: Vec<TableData>,
    pub large_objects: u64,
    /// Roles the archive refers to (object owners, privilege grantees): a restore
    /// needs them to exist on the server.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The database's own entries (pg_dump writes them; pg_restore applies them
    /// only with --create): its CREATE DATABASE, owner, and the statements for its
    /// comment, privileges and settings, naming it as `database` above.
    #[serde(default)]
    pub database_entries: DatabaseEntries,
    /// Bytes read: the archive's full size.
    pub archive_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatabaseEntries {
    pub owner: Option<String>,
    pub create: Option<String>,
    /// COMMENT / ACL / DATABASE PROPERTIES / SECURITY LABEL statements on the database.
    pub properties: Vec<String>,
}

struct TocEntry {
    desc: String,
    schema: Option<String>,
    tag: Option<String>,
}

/// Counts bytes consumed so errors can say where.
struct Cursor<R> {
    inner: R,
    pos: u64,
}

impl<R: BufRead> Cursor<R> {
    fn truncated(&self, context: &str) -> ArchiveError {
        ArchiveError::Truncated {
            context: context.to_string(),
            offset: self.pos,
        }
    }

    fn corrupt(&self, message: impl Into<String>) -> ArchiveError {
        ArchiveError::Corrupt {
            message: message.into(),
            offset: self.pos,
        }
    }

    /// One byte, or None at a clean end of input.
    fn byte_or_eof(&mut self) -> Result<Option<u8>, ArchiveError> {
        let buf = self.inner.fill_buf()?;
        let Some(&b) = buf.first() else {
            return Ok(None);
        };
        self.inner.consume(1);
        self.pos += 1;
        Ok(Some(b))
    }

    fn byte(&mut self, context: &str) -> Result<u8, ArchiveError> {
        self.byte_or_eof()?.ok_or_else(|| self.truncated(context))
    }

    fn exact(&mut self, out: &mut [u8], context: &str) -> Result<(), ArchiveError> {
        match self.inner.read_exact(out) {
            Ok(()) => {
                self.pos += out.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.truncated(context)),
            Err(e) => Err(e.into()),
        }
    }

    /// Passes `len` bytes to `each` in the pieces the buffer holds, without copying.
    fn stream(
        &mut self,
        mut len: u64,
        context: &str,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), ArchiveError> {
        while len > 0 {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Err(self.truncated(context));
            }
            let n = buf.len().min(usize::try_from(len).unwrap_or(usize::MAX));
            each(&buf[..n]);
            self.inner.consume(n);
            self.pos += n as u64;
            len -= n as u64;
        }
        Ok(())
    }
}

struct Reader<R> {
    c: Cursor<R>,
    int_size: usize,
    off_size: usize,
    /// The archive's format version.
    ver: u32,
    /// The encoding of its strings: the database's, from its ENCODING entry.
    text: TextEncoding,
}

/// How an archive's strings are decoded. pg_dump writes names and SQL in the
/// database's encoding (its TOC's ENCODING entry says which): a LATIN1
/// database's `résumé` is not UTF-8, and read as such would never match the
/// table it names.
#[derive(Debug, Clone, Copy)]
pub enum TextEncoding {
    Utf8,
    /// ISO 8859-1: every byte is the code point of the same value.
    Latin1,
    Other(&'static encoding_rs::Encoding),
}

impl TextEncoding {
    /// The decoding for a PostgreSQL encoding name (`LATIN1`, `WIN1252`,
    /// `EUC_JP`...); UTF-8 (lossy) for UTF8, SQL_ASCII and the few that no
    /// standard decoder knows (MULE_INTERNAL, EUC_TW, EUC_JIS_2004).
    pub fn for_postgres(name: &str) -> TextEncoding {
        let upper = name.trim().to_ascii_uppercase();
        let label = match upper.as_str() {
            "LATIN1" => return TextEncoding::Latin1,
            "LATIN2" => "iso-8859-2",
            "LATIN3" => "iso-8859-3",
            "LATIN4" => "iso-8859-4",
            "LATIN5" => "iso-8859-9",
            "LATIN6" => "iso-8859-10",
            "LATIN7" => "iso-8859-13",
            "LATIN8" => "iso-8859-14",
            "LATIN9" => "iso-8859-15",
            "LATIN10" => "iso-8859-16",
            "ISO_8859_5" => "iso-8859-5",
            "ISO_8859_6" => "iso-8859-6",
            "ISO_8859_7" => "iso-8859-7",
            "ISO_8859_8" => "iso-8859-8",
            "KOI8R" | "KOI8" => "koi8-r",
            "KOI8U" => "koi8-u",
            "WIN866" | "ALT" => "ibm866",
            "WIN874" => "windows-874",
            "EUC_JP" => "euc-jp",
            "EUC_KR" => "euc-kr",
            "EUC_CN" | "GBK" => "gbk",
            "GB18030" => "gb18030",
            "BIG5" => "big5",
            "SJIS" => "shift_jis",
            w if w.starts_with("WIN125") => {
                return encoding_rs::Encoding::for_label(format!("windows-{}", &w[3..]).as_bytes())
                    .map(TextEncoding::Other)
                    .unwrap_or(TextEncoding::Utf8)
            }
            _ => return TextEncoding::Utf8,
        };
        encoding_rs::Encoding::for_label(label.as_bytes())
            .map(TextEncoding::Other)
            .unwrap_or(TextEncoding::Utf8)
    }

    pub fn decode(self, bytes: &[u8]) -> String {
        match self {
            TextEncoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
            TextEncoding::Latin1 => bytes.iter().map(|&b| char::from(b)).collect(),
            TextEncoding::Other(e) => e.decode_without_bom_handling(bytes).0.into_owned(),
        }
    }
}

/// The encoding named by an ENCODING entry: `SET client_encoding = 'LATIN1';`.
fn encoding_of(defn: &str) -> Option<&str> {
    let start = defn.find('\'')? + 1;
    let len = defn[start..].find('\'')?;
    Some(&defn[start..start + len])
}

impl<R: BufRead> Reader<R> {
    /// pg_dump's ReadInt: a sign byte, then `int_size` bytes, least significant first.
    fn int(&mut self, context: &str) -> Result<i64, ArchiveError> {
        let sign = self.c.byte(context)?;
        let mut bytes = [0u8; 8];
        self.c.exact(&mut bytes[..self.int_size], context)?;
        let v = i64::from_le_bytes(bytes);
        if v < 0 {
            return Err(self.c.corrupt(format!("integer out of range in {context}")));
        }
        Ok(if sign == 0 { v } else { -v })
    }

    fn string(&mut self, context: &str) -> Result<Option<String>, ArchiveError> {
        let len = self.int(context)?;
        if len < 0 {
            return Ok(None);
        }
        // No name, comment or definition in a real archive comes near 64 MiB;
        // a longer claim is a damaged or crafted file (and a compressed one
        // could otherwise make a few kilobytes claim a gigabyte for real).
        if len > 64 << 20 {
            return Err(self
                .c
                .corrupt(format!("implausible string length {len} in {context}")));
        }
        // Grown as the bytes arrive: a claimed length is never allocated up
        // front (a crafted archive cannot make a small file cost a gigabyte).
        let mut buf = Vec::new();
        self.c
            .stream(len as u64, context, |piece| buf.extend_from_slice(piece))?;
        Ok(Some(self.text.decode(&buf)))
    }

    fn skip(&mut self, n: usize, context: &str) -> Result<(), ArchiveError> {
        self.c.stream(n as u64, context, |_| {})
    }

    /// One TOC entry, laid out as `WriteToc` writes this archive's version.
    fn toc_entry(&mut self, ctx: &str) -> Result<RawEntry, ArchiveError> {
        let dump_id = self.int(ctx)?;
        self.int(ctx)?; // hadDumper
        self.string(ctx)?; // table oid
        self.string(ctx)?; // oid
        let tag = self.string(ctx)?;
        let desc = self.string(ctx)?.unwrap_or_default();
        self.int(ctx)?; // section
        let defn = self.string(ctx)?;
        self.string(ctx)?; // drop statement
        self.string(ctx)?; // copy statement
        let schema = self.string(ctx)?;
        self.string(ctx)?; // tablespace
        if self.ver >= version(1, 14, 0) {
            self.string(ctx)?; // table access method
        }
        if self.ver >= version(1, 16, 0) {
            self.int(ctx)?; // relkind
        }
        let owner = self.string(ctx)?;
        self.string(ctx)?; // "with oids"
        while self.string(ctx)?.is_some() {} // dependencies, ended by a NULL
        let flag = self.c.byte(ctx)?;
        self.skip(self.off_size, ctx)?;
        Ok(RawEntry {
            dump_id,
            tag,
            desc,
            defn,
            schema,
            owner,
            flag,
        })
    }
}

/// A TOC entry's fields that the reader uses.
struct RawEntry {
    dump_id: i64,
    tag: Option<String>,
    desc: String,
    defn: Option<String>,
    schema: Option<String>,
    owner: Option<String>,
    flag: u8,
}

/// An archive's header: what wrote it, from which server, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// `1.16.0`.
    pub format_version: String,
    pub compression: Compression,
    pub database: Option<String>,
    pub server_version: Option<String>,
    pub pg_dump_version: Option<String>,
}

/// Reads just the header of an archive (a few hundred bytes).
pub fn read_header<R: BufRead>(input: R) -> Result<Header, ArchiveError> {
    head(input).map(|(h, _)| h)
}

/// The header, and a reader positioned at the table of contents.
fn head<R: BufRead>(input: R) -> Result<(Header, Reader<R>), ArchiveError> {
    let mut c = Cursor {
        inner: input,
        pos: 0,
    };
    let mut magic = [0u8; 5];
    match c.byte_or_eof()? {
        None => return Err(ArchiveError::Empty),
        Some(b) => magic[0] = b,
    }
    c.exact(&mut magic[1..], "the header")
        .map_err(|_| ArchiveError::NotAnArchive)?;
    if &magic != MAGIC {
        return Err(ArchiveError::NotAnArchive);
    }
    let (vmaj, vmin) = (c.byte("the header")?, c.byte("the header")?);
    let vrev = if vmaj > 1 || (vmaj == 1 && vmin > 0) {
        c.byte("the header")?
    } else {
        0
    };
    let ver = version(vmaj, vmin, vrev);
    let format_version = format!("{vmaj}.{vmin}.{vrev}");
    if ver > version(1, 16, 255) {
        return Err(ArchiveError::NewerVersion(format!("{vmaj}.{vmin}")));
    }
    if ver < version(1, 12, 0) {
        return Err(ArchiveError::UnsupportedVersion(format_version));
    }
    let int_size = usize::from(c.byte("the header")?);
    let off_size = usize::from(c.byte("the header")?);
    if !(1..=8).contains(&int_size) || !(1..=8).contains(&off_size) {
        return Err(c.corrupt(format!("integer sizes {int_size}/{off_size}")));
    }
    let format = c.byte("the header")?;
    if format != 1 {
        return Err(c.corrupt(format!("archive format {format} is not the custom format")));
    }
    let mut r = Reader {
        c,
        int_size,
        off_size,
        ver,
        text: TextEncoding::Utf8,
    };

    let compression = if ver >= version(1, 15, 0) {
        match r.c.byte("the header")? {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Lz4,
            3 => Compression::Zstd,
            other => {
                return Err(r
                    .c
                    .corrupt(format!("unknown compression algorithm {other}")))
            }
        }
    } else {
        match r.int("the header")? {
            0 => Compression::None,
            _ => Compression::Gzip,
        }
    };
    for _ in 0..7 {
        r.int("the header's date")?;
    }
    let database = r.string("the header")?;
    let server_version = r.string("the header")?;
    let pg_dump_version = r.string("the header")?;
    let h = Header {
        format_version,
        compression,
        database,
        server_version,
        pg_dump_version,
    };
    Ok((h, r))
}

/// The table of contents repeated after the data; `sign` is the first byte of
/// its count, already read. Nothing may follow it.
fn trailing_toc<R: BufRead>(
    r: &mut Reader<R>,
    sign: u8,
    n_entries: i64,
) -> Result<(), ArchiveError> {
    let ctx = "the table of contents after the data";
    let mut bytes = [0u8; 8];
    r.c.exact(&mut bytes[..r.int_size], ctx)?;
    let count = i64::from_le_bytes(bytes);
    if sign != 0 || count != n_entries {
        return Err(r.c.corrupt(format!(
            "unexpected bytes after the last data block (not a copy of the {n_entries}-entry table of contents)"
        )));
    }
    for _ in 0..count {
        r.toc_entry(ctx)?;
    }
    if r.c.byte_or_eof()?.is_some() {
        return Err(r
            .c
            .corrupt("unexpected bytes after the table of contents that ends the archive"));
    }
    Ok(())
}

/// Reads a whole archive from `input`, checking it is complete.
pub fn scan<R: BufRead>(input: R) -> Result<Summary, ArchiveError> {
    scan_with(input, &mut |_, _| {})
}

/// [`scan`], telling `blocks` (data blocks seen, of the table of contents'
/// total) as each data block starts: for progress on a terminal.
pub fn scan_with<R: BufRead>(
    input: R,
    blocks: &mut dyn FnMut(usize, usize),
) -> Result<Summary, ArchiveError> {
    let (
        Header {
            format_version,
            compression,
            database,
            server_version,
            pg_dump_version,
        },
        mut r,
    ) = head(input)?;
    // No cap on the count: every entry is read from bytes that must really be
    // there, so a claimed count costs nothing until the entries arrive (a
    // PostgreSQL 16 database has one entry per large object: millions is fine).
    let n_entries = r.int("the table of contents")?;
    if !(0..=i64::from(i32::MAX)).contains(&n_entries) {
        return Err(r.c.corrupt(format!("implausible TOC size {n_entries}")));
    }
    let mut entries: HashMap<i64, TocEntry> = HashMap::new();
    let mut expected: BTreeSet<i64> = BTreeSet::new();
    let mut objects: BTreeMap<String, u32> = BTreeMap::new();
    let mut roles: BTreeSet<String> = BTreeSet::new();
    let mut database_entries = DatabaseEntries::default();
    let ctx = "the table of contents";
    for _ in 0..n_entries {
        let RawEntry {
            dump_id,
            tag,
            desc,
            defn,
            schema,
            owner,
            flag,
        } = r.toc_entry(ctx)?;
        if desc == "ENCODING" {
            if let Some(name) = defn.as_deref().and_then(encoding_of) {
                r.text = TextEncoding::for_postgres(name);
            }
        }
        let has_data = flag != OFFSET_NO_DATA;
        if has_data {
            expected.insert(dump_id);
        }
        match objects.get_mut(desc.as_str()) {
            Some(n) => *n += 1,
            None => {
                objects.insert(desc.clone(), 1);
            }
        }
        if let Some(o) = owner.as_deref().filter(|o| !o.is_empty()) {
            roles.insert(o.to_string());
        }
        // Grantees, and the roles a row-level security policy applies to.
        if matches!(desc.as_str(), "ACL" | "DEFAULT ACL" | "POLICY") {
            roles.extend(crate::sql::acl_roles(defn.as_deref().unwrap_or_default()));
        }
        let on_database = tag.as_deref().is_some_and(|t| t.starts_with("DATABASE "));
        match desc.as_str() {
            "DATABASE" => {
                database_entries.owner = owner.clone();
                database_entries.create = defn.clone();
            }
            // Settings (ALTER DATABASE ... SET) are tagged with the bare name.
            "DATABASE PROPERTIES" => {
                database_entries
                    .properties
                    .extend(defn.clone().filter(|d| !d.trim().is_empty()));
            }
            "COMMENT" | "ACL" | "SECURITY LABEL" if on_database => {
                database_entries
                    .properties
                    .extend(defn.clone().filter(|d| !d.trim().is_empty()));
            }
            _ => {}
        }
        // Only entries with data are kept (for their block and its name):
        // memory grows with tables, not with schema objects or large objects.
        if has_data {
            entries.insert(dump_id, TocEntry { desc, schema, tag });
        }
    }

    let mut tables = Vec::new();
    let mut large_objects = 0u64;
    let mut seen: BTreeSet<i64> = BTreeSet::new();
    while let Some(kind) = r.c.byte_or_eof()? {
        // pg_dump 17 writing to a seekable file appends the table of contents
        // again after the data (with the data offsets set): a count, the same
        // entries, the end. It comes after every data block or not at all.
        if !matches!(kind, BLK_DATA | BLK_BLOBS) && seen.len() == expected.len() {
            trailing_toc(&mut r, kind, n_entries)?;
            break;
        }
        let id = r.int("a data block header")?;
        let Some(entry) = entries.get(&id) else {
            return Err(r
                .c
                .corrupt(format!("data block for unknown TOC entry {id}")));
        };
        if !expected.contains(&id) || !seen.insert(id) {
            return Err(r
                .c
                .corrupt(format!("unexpected or repeated data block for entry {id}")));
        }
        blocks(seen.len(), expected.len());
        let what = describe(entry);
        match kind {
            BLK_DATA => {
                let (bytes, newlines, tail) = read_chunks(&mut r, &what)?;
                let is_table = entry.desc == "TABLE DATA";
                let rows = if is_table && compression == Compression::None {
                    if tail != *COPY_END {
                        return Err(ArchiveError::Incomplete(format!(
                            "{what} does not end with its end-of-data marker"
                        )));
                    }
                    Some(newlines.saturating_sub(3))
                } else {
                    None
                };
                if is_table {
                    tables.push(TableData {
                        schema: entry.schema.clone().unwrap_or_default(),
                        name: entry.tag.clone().unwrap_or_default(),
                        rows,
                        bytes,
                    });
                }
            }
            BLK_BLOBS => loop {
                let oid = r.int(&format!("{what} (large object header)"))?;
                if oid == 0 {
                    break;
                }
                read_chunks(&mut r, &what)?;
                large_objects += 1;
            },
            other => return Err(r.c.corrupt(format!("unknown data block type {other}"))),
        }
    }
    let missing: Vec<String> = expected
        .difference(&seen)
        .filter_map(|id| entries.get(id))
        .map(describe)
        .collect();
    if !missing.is_empty() {
        let shown: Vec<_> = missing.iter().take(5).cloned().collect();
        return Err(ArchiveError::Incomplete(format!(
            "{} data block(s) missing (the dump stopped early): {}{}",
            missing.len(),
            shown.join(", "),
            if missing.len() > 5 { ", ..." } else { "" }
        )));
    }
    Ok(Summary {
        format_version,
        compression,
        database,
        server_version,
        pg_dump_version,
        toc_entries: n_entries as u32,
        objects,
        tables,
        large_objects,
        roles: roles.into_iter().collect(),
        database_entries,
        archive_bytes: r.c.pos,
    })
}

fn describe(e: &TocEntry) -> String {
    match (&e.schema, &e.tag) {
        (Some(s), Some(t)) => format!("{} {s}.{t}", e.desc),
        (None, Some(t)) => format!("{} {t}", e.desc),
        _ => e.desc.clone(),
    }
}

/// Reads length-prefixed chunks up to the zero-length one; returns the data's
/// size, its newline count and its last five bytes.
fn read_chunks<R: BufRead>(
    r: &mut Reader<R>,
    what: &str,
) -> Result<(u64, u64, [u8; 5]), ArchiveError> {
    let (mut bytes, mut newlines, mut tail) = (0u64, 0u64, [0u8; 5]);
    loop {
        let len = r.int(what)?;
        if len == 0 {
            return Ok((bytes, newlines, tail));
        }
        if len < 0 {
            return Err(r.c.corrupt(format!("negative chunk length in {what}")));
        }
        r.c.stream(len as u64, what, |piece| {
            newlines += memchr::memchr_iter(b'\n', piece).count() as u64;
            if piece.len() >= 5 {
                tail.copy_from_slice(&piece[piece.len() - 5..]);
            } else {
                tail.rotate_left(piece.len());
                tail[5 - piece.len()..].copy_from_slice(piece);
            }
        })?;
        bytes += len as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal archive in the byte layout pg_dump 15 writes (version 1.14).
    pub(crate) fn tiny_archive(rows: &[&str], with_end_marker: bool) -> Vec<u8> {
        archive_of(14, rows, with_end_marker)
    }

    /// `archive_of`, as pg_dump 17 writes it to a seekable file: the table of
    /// contents again after the data.
    fn with_trailing_toc(minor: u8) -> Vec<u8> {
        let a = archive_of(minor, &["1\tx"], true);
        // The TOC starts after the header's last string, pg_dump's version.
        let header_len = a.windows(5).rposition(|w| w == b"15.18").unwrap() + 5;
        let toc_end = a
            .windows(7)
            .position(|w| w == [BLK_DATA, 0, 11, 0, 0, 0, 0])
            .unwrap();
        let mut v = a.clone();
        v.extend_from_slice(&a[header_len..toc_end]);
        v
    }

    /// A minimal archive of format 1.`minor`, laid out as pg_backup_archiver.c
    /// writes that version (WriteHead, WriteToc): 1.15 moved the compression
    /// into one byte, 1.14 added the table access method, 1.16 the relkind.
    pub(crate) fn archive_of(minor: u8, rows: &[&str], with_end_marker: bool) -> Vec<u8> {
        let mut v = b"PGDMP".to_vec();
        v.extend([1, minor, 0, 4, 8, 1]);
        let int = |v: &mut Vec<u8>, i: i64| {
            v.push(u8::from(i < 0));
            v.extend(&(i.unsigned_abs() as u32).to_le_bytes());
        };
        let s = |v: &mut Vec<u8>, x: Option<&str>| match x {
            None => int(v, -1),
            Some(x) => {
                int(v, x.len() as i64);
                v.extend(x.as_bytes());
            }
        };
        if minor >= 15 {
            v.push(0); // compression algorithm: none
        } else {
            int(&mut v, 0); // compression level
        }
        for d in [0, 0, 12, 1, 0, 125, 0] {
            int(&mut v, d);
        }
        s(&mut v, Some("app"));
        s(&mut v, Some("15.18"));
        s(&mut v, Some("15.18"));
        int(&mut v, 2);
        for (id, desc, data) in [(10, "TABLE", false), (11, "TABLE DATA", true)] {
            int(&mut v, id);
            int(&mut v, 1);
            s(&mut v, Some("0"));
            s(&mut v, Some("0"));
            s(&mut v, Some("t"));
            s(&mut v, Some(desc));
            int(&mut v, 2);
            s(&mut v, Some(""));
            s(&mut v, None);
            s(&mut v, None);
            s(&mut v, Some("public"));
            s(&mut v, None); // tablespace
            if minor >= 14 {
                s(&mut v, Some("heap"));
            }
            if minor >= 16 {
                int(&mut v, i64::from(b'r'));
            }
            s(&mut v, Some("postgres"));
            s(&mut v, Some("false"));
            s(&mut v, None);
            v.push(if data { 1 } else { 3 });
            v.extend([0u8; 8]);
        }
        v.push(BLK_DATA);
        int(&mut v, 11);
        let mut chunks: Vec<String> = rows.iter().map(|r| format!("{r}\n")).collect();
        if with_end_marker {
            chunks.push("\\.\n\n\n".into());
        }
        for c in chunks {
            int(&mut v, c.len() as i64);
            v.extend(c.as_bytes());
        }
        int(&mut v, 0);
        v
    }

    #[test]
    fn counts_rows_of_a_complete_archive() {
        let a = tiny_archive(&["1\tx", "2\ty\\nz", "3\t\\N"], true);
        let s = scan(&a[..]).unwrap();
        assert_eq!(s.tables.len(), 1);
        assert_eq!(s.tables[0].rows, Some(3));
        assert_eq!(
            (s.tables[0].schema.as_str(), s.tables[0].name.as_str()),
            ("public", "t")
        );
        assert_eq!(s.objects["TABLE"], 1);
        assert_eq!(s.archive_bytes, a.len() as u64);
    }

    #[test]
    fn formats_1_12_to_1_16_are_read() {
        for minor in 12..=16 {
            let a = archive_of(minor, &["1\tx", "2\ty"], true);
            let s = scan(&a[..]).unwrap_or_else(|e| panic!("1.{minor}: {e}"));
            assert_eq!(s.format_version, format!("1.{minor}.0"));
            assert_eq!(s.tables[0].rows, Some(2), "1.{minor}");
            assert_eq!(s.compression, Compression::None);
            let h = read_header(&a[..]).unwrap();
            assert_eq!(h.server_version.as_deref(), Some("15.18"));
            // Every truncation is still caught in each layout.
            for cut in 0..a.len() {
                assert!(scan(&a[..cut]).is_err(), "1.{minor} cut at {cut}");
            }
        }
    }

    #[test]
    fn a_table_of_contents_repeated_after_the_data_is_accepted_and_checked() {
        for minor in [14, 16] {
            let a = with_trailing_toc(minor);
            let s = scan(&a[..]).unwrap_or_else(|e| panic!("1.{minor}: {e}"));
            assert_eq!(s.tables[0].rows, Some(1));
            // Cut anywhere inside it, or followed by anything: refused.
            let plain = archive_of(minor, &["1\tx"], true).len();
            for cut in plain + 1..a.len() {
                assert!(scan(&a[..cut]).is_err(), "1.{minor} cut at {cut}");
            }
            let mut more = a.clone();
            more.push(0);
            assert!(scan(&more[..]).is_err());
        }
        // Garbage after the data is not a table of contents.
        let mut junk = archive_of(16, &["1\tx"], true);
        junk.extend([0, 9, 0, 0, 0]);
        assert!(matches!(scan(&junk[..]), Err(ArchiveError::Corrupt { .. })));
    }

    #[test]
    fn unknown_formats_are_named_not_misparsed() {
        let newer = archive_of(17, &["1\tx"], true);
        let e = scan(&newer[..]).unwrap_err();
        assert!(matches!(e, ArchiveError::NewerVersion(_)), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("1.17") && text.contains("upgrade kbackup"),
            "{text}"
        );
        assert!(read_header(&newer[..]).is_err());
        let older = archive_of(11, &["1\tx"], true);
        let e = scan(&older[..]).unwrap_err();
        assert!(matches!(e, ArchiveError::UnsupportedVersion(_)), "{e}");
        assert!(e.to_string().contains("1.11"), "{e}");
    }

    #[test]
    fn every_truncation_is_caught() {
        let a = tiny_archive(&["1\tx", "2\ty"], true);
        for cut in 0..a.len() {
            let r = scan(&a[..cut]);
            assert!(r.is_err(), "a cut at {cut} of {} passed", a.len());
        }
    }

    #[test]
    fn missing_end_marker_is_incomplete() {
        let a = tiny_archive(&["1\tx"], false);
        assert!(matches!(scan(&a[..]), Err(ArchiveError::Incomplete(_))));
    }

    #[test]
    fn garbage_is_not_an_archive() {
        assert!(matches!(scan(&b""[..]), Err(ArchiveError::Empty)));
        assert!(matches!(
            scan(&b"-- PostgreSQL database dump"[..]),
            Err(ArchiveError::NotAnArchive)
        ));
        let mut a = tiny_archive(&["1"], true);
        a.extend([BLK_DATA]);
        assert!(scan(&a[..]).is_err(), "trailing bytes after the last block");
    }
}
