//! The dump pipeline: pg_dump's stdout -> archive check + row counts -> zstd ->
//! SHA-256 -> a temporary file in the store, in one pass, on one blocking thread.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::archive::{self, Summary};

/// Result of one pass.
#[derive(Debug)]
pub struct Written {
    pub sha256: String,
    pub size: u64,
    pub summary: Summary,
}

/// Counts and hashes what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Copies everything read from `inner` into `sink` before handing it on.
struct Tee<R, W> {
    inner: R,
    sink: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sink.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Reads an archive from `input` to its end, checking it and writing it
/// zstd-compressed to `out`, which is fsynced before this returns.
pub fn write_compressed(input: File, out: File, level: i32) -> Result<Written> {
    let writer = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, out),
        hasher: Sha256::new(),
        bytes: 0,
    };
    // Compression runs on this thread, between reads of the pipe. Measured on two
    // cores: a zstd worker thread was slower (it competes with pg_dump and the
    // server for the same cores) and doubled the memory.
    let mut encoder = zstd::Encoder::new(writer, level)?;
    // zstd's own frame checksum: `zstd -t FILE` can test a backup by hand.
    encoder.include_checksum(true)?;
    let mut tee = Tee {
        inner: input,
        sink: encoder,
    };
    let summary =
        archive::scan(BufReader::with_capacity(1 << 18, &mut tee)).context("pg_dump's output")?;
    let writer = tee.sink.finish().context("finishing the zstd stream")?;
    let HashingWriter {
        inner,
        hasher,
        bytes,
    } = writer;
    let file = inner
        .into_inner()
        .map_err(|e| e.into_error())
        .context("writing the dump")?;
    file.sync_all().context("fsync of the dump")?;
    Ok(Written {
        sha256: hex::encode(hasher.finalize()),
        size: bytes,
        summary,
    })
}

/// Where the check pass may also leave the uncompressed archive, so that a
/// parallel restore (which needs a seekable file) does not decompress it again.
/// Best effort: if writing fails (a full disk), copying stops and the check goes
/// on; `complete()` then says no.
pub struct ArchiveCopy {
    out: Option<BufWriter<File>>,
    failed: bool,
}

impl ArchiveCopy {
    pub fn new(file: File) -> Self {
        ArchiveCopy {
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            failed: false,
        }
    }

    /// Whether the copy holds the whole archive (flushed to its file).
    pub fn complete(mut self) -> bool {
        match self.out.take() {
            Some(mut w) if !self.failed => w.flush().is_ok(),
            _ => false,
        }
    }
}

impl Write for &mut ArchiveCopy {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(w) = self.out.as_mut() {
            if let Err(e) = w.write_all(buf) {
                tracing::debug!(
                    "no temporary copy of the archive ({e}); the restore will stream it"
                );
                self.out = None;
                self.failed = true;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a stored dump through the archive check (a `.dump.zst`, or a seed
/// `.dump`). Returns the check's result and the SHA-256 of the whole file as
/// stored: the hash is finished even when the archive is damaged, so a checksum
/// mismatch can be reported as what it is. A `.dump.zst`'s uncompressed archive
/// is also written to `copy`, when given, in the same pass.
pub fn read_back(
    path: &std::path::Path,
    copy: Option<&mut ArchiveCopy>,
) -> Result<(Result<Summary>, String)> {
    struct Hashing<R> {
        inner: R,
        hasher: Sha256,
    }
    impl<R: Read> Read for Hashing<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.hasher.update(&buf[..n]);
            Ok(n)
        }
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hashing = Hashing {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
    };
    let summary = if is_zstd(path) {
        match (zstd::Decoder::new(&mut hashing), copy) {
            (Ok(decoder), Some(copy)) => archive::scan(BufReader::with_capacity(
                1 << 18,
                Tee {
                    inner: decoder,
                    sink: copy,
                },
            ))
            .map_err(anyhow::Error::from),
            (Ok(decoder), None) => archive::scan(BufReader::with_capacity(1 << 18, decoder))
                .map_err(anyhow::Error::from),
            (Err(e), _) => Err(anyhow::Error::from(e).context("not a zstd stream")),
        }
    } else {
        archive::scan(BufReader::with_capacity(1 << 18, &mut hashing)).map_err(anyhow::Error::from)
    };
    // Hash whatever the check did not read (after damage, a frame's tail).
    io::copy(&mut hashing, &mut io::sink())?;
    Ok((summary, hex::encode(hashing.hasher.finalize())))
}

pub fn is_zstd(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "zst")
}

/// Writes the archive in `path` (decompressed when it is a `.dump.zst`) to `out`.
pub fn write_archive(path: &std::path::Path, out: File) -> Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, out);
    if is_zstd(path) {
        zstd::stream::copy_decode(BufReader::with_capacity(1 << 20, file), &mut out)?;
    } else {
        io::copy(&mut BufReader::with_capacity(1 << 20, file), &mut out)?;
    }
    out.flush()?;
    Ok(())
}

/// Copies pg_restore's SQL script from `script` to `out`, leaving out the
/// statements in `drop` among its opening session settings (the lines before
/// the first object; a table's data further on is never touched).
pub fn copy_script(script: File, out: File, drop: &[&str]) -> Result<()> {
    let mut input = BufReader::with_capacity(1 << 16, script);
    let mut out = BufWriter::with_capacity(1 << 16, out);
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(out.flush()?);
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if drop.contains(&text) {
            continue;
        }
        out.write_all(&line)?;
        // The preamble ends where the first object's comment header starts.
        if text.starts_with("-- Name: ") || text.starts_with("-- Data for Name: ") {
            break;
        }
    }
    std::io::copy(&mut input, &mut out)?;
    Ok(out.flush()?)
}
