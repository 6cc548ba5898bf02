//! The dump pipeline: pg_dump's stdout -> archive check + row counts -> zstd ->
//! (age encryption) -> SHA-256 -> a temporary file in the store, in one pass,
//! on one blocking thread.

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

/// A file whose written pages are handed to the kernel's writeback as it
/// goes (`sync_file_range`, every [`WRITEBACK`] bytes), as PostgreSQL does
/// with `backend_flush_after`: the final fsync then waits for the last few
/// megabytes, not for the whole dump, and the page cache never holds
/// gigabytes of it dirty.
struct Writeback {
    file: File,
    written: u64,
    flushed: u64,
}

const WRITEBACK: u64 = 8 << 20;

impl Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.flushed >= WRITEBACK {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open descriptor and a range of it; the call
            // only starts writeback (it may fail on filesystems without it,
            // which loses nothing: the fsync at the end still runs).
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.flushed as libc::off64_t,
                    (self.written - self.flushed) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.flushed = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
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

/// Where the compressed stream goes: the file as is, or through age
/// encryption (no plaintext byte reaches the file).
enum Sink<W: Write> {
    Plain(W),
    Sealed(age::stream::StreamWriter<W>),
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Sealed(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Sealed(w) => w.flush(),
        }
    }
}

impl<W: Write> Sink<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Sink::Plain(w) => Ok(w),
            Sink::Sealed(w) => w.finish(),
        }
    }
}

/// Reads an archive from `input` to its end, checking it and writing it
/// zstd-compressed (and encrypted to `seal`'s recipients, when given) to
/// `out`, which is fsynced before this returns.
pub fn write_compressed(
    input: File,
    out: File,
    level: i32,
    seal: Option<&crate::crypto::Recipients>,
    progress: crate::progress::Progress,
) -> Result<Written> {
    let out = Writeback {
        file: out,
        written: 0,
        flushed: 0,
    };
    let writer = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, out),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let writer = match seal {
        Some(r) => Sink::Sealed(r.encrypt(writer)?),
        None => Sink::Plain(writer),
    };
    // Compression runs on this thread, between reads of the pipe. Measured on two
    // cores: a zstd worker thread was slower (it competes with pg_dump and the
    // server for the same cores) and doubled the memory.
    let mut encoder = zstd::Encoder::new(writer, level)?;
    // zstd's own frame checksum: `zstd -t FILE` can test a backup by hand.
    encoder.include_checksum(true)?;
    let mut tee = Tee {
        inner: crate::progress::Counting {
            inner: input,
            progress: progress.clone(),
        },
        sink: encoder,
    };
    let summary = archive::scan_with(
        BufReader::with_capacity(1 << 18, &mut tee),
        &mut |seen, all| progress.message(format!("data blocks {seen}/{all}")),
    )
    .context("pg_dump's output")?;
    progress.done();
    let writer = tee.sink.finish().context("finishing the zstd stream")?;
    let writer = writer.finish().context("finishing the age stream")?;
    let HashingWriter {
        inner,
        hasher,
        bytes,
    } = writer;
    let Writeback { file, .. } = inner
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

/// A backup read without the identity that decrypts it: its age header is
/// well-formed (checked), the archive inside could not be read.
#[derive(Debug)]
pub struct Sealed;

impl std::fmt::Display for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "encrypted with age and no identity given (BACKUP_AGE_IDENTITY / --identity): \
             its age header is well-formed; the archive inside was not read",
        )
    }
}

impl std::error::Error for Sealed {}

/// Reads a stored dump through the archive check (a `.dump.zst`, a
/// `.dump.zst.age`, or a seed `.dump`). Returns the check's result and the
/// SHA-256 of the whole file as stored: the hash is finished even when the
/// archive is damaged, so a checksum mismatch can be reported as what it is.
/// The uncompressed archive is also written to `copy`, when given, in the
/// same pass. An encrypted file is decrypted with this process's identities;
/// without them only its header is checked (the result is then [`Sealed`]).
pub fn read_back(
    path: &std::path::Path,
    copy: Option<&mut ArchiveCopy>,
) -> Result<(Result<Summary>, String)> {
    let size = std::fs::metadata(path).ok().map(|m| m.len());
    let progress = crate::progress::Progress::bytes("checking the backup", size);
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hashing = Hashing {
        inner: BufReader::with_capacity(
            1 << 20,
            crate::progress::Counting {
                inner: file,
                progress: progress.clone(),
            },
        ),
        hasher: Sha256::new(),
    };
    let scan = |plain: &mut dyn Read, copy: Option<&mut ArchiveCopy>| match copy {
        Some(copy) => archive::scan(BufReader::with_capacity(
            1 << 18,
            Tee {
                inner: plain,
                sink: copy,
            },
        ))
        .map_err(anyhow::Error::from),
        None => {
            archive::scan(BufReader::with_capacity(1 << 18, plain)).map_err(anyhow::Error::from)
        }
    };
    let (age, ids) = (crate::crypto::is_age(path), crate::crypto::identities());
    if age && ids.is_none() {
        let summary = crate::crypto::check_header(BufReader::new(&mut hashing))
            .and_then(|()| Err(anyhow::Error::new(Sealed)));
        io::copy(&mut hashing, &mut io::sink())?;
        return Ok((summary, hex::encode(hashing.hasher.finalize())));
    }
    if !age && !is_packed(path) {
        let summary = scan(&mut hashing, None);
        io::copy(&mut hashing, &mut io::sink())?;
        return Ok((summary, hex::encode(hashing.hasher.finalize())));
    }
    // Two stages on two threads: reading, hashing, decrypting and
    // decompressing on one; the archive check (and the copy) on this one.
    // An error of the first stage is the check's outcome (its type kept:
    // "sealed to other keys" is told apart); the check stopping first only
    // ends the unpacking.
    let (mut plain, unpacking) = pipe::pipelined(move |out| {
        let unpacked = (|| -> Result<()> {
            let decoded: Box<dyn Read + '_> = match ids {
                Some(ids) if age => ids.decrypt(&mut hashing)?,
                _ => Box::new(&mut hashing),
            };
            let mut d = zstd::Decoder::new(decoded)
                .map_err(|e| anyhow::Error::from(e).context("not a zstd stream"))?;
            io::copy(&mut d, out)?;
            Ok(())
        })();
        let stopped = |e: &anyhow::Error| {
            e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
        };
        let failed = unpacked.err().filter(|e| !stopped(e));
        out.close();
        // Hash whatever the check did not read (after damage, a frame's tail).
        let sha =
            io::copy(&mut hashing, &mut io::sink()).map(|_| hex::encode(hashing.hasher.finalize()));
        (failed, sha)
    });
    let summary = scan(&mut plain, copy);
    drop(plain);
    let (failed, sha) = unpacking
        .join()
        .map_err(|_| anyhow::anyhow!("the check pass's reading thread panicked"))?;
    Ok((failed.map_or(summary, Err), sha?))
}

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

/// A bounded pipe between two threads, in chunks: what one stage writes,
/// the next reads (the end once the writer closes or is gone). Memory: at
/// most `DEPTH` chunks of `CHUNK` bytes in flight.
mod pipe {
    use std::io::{self, Read, Write};
    use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

    const CHUNK: usize = 256 << 10;
    const DEPTH: usize = 8;

    pub struct Writer {
        tx: Option<SyncSender<Vec<u8>>>,
        buf: Vec<u8>,
    }

    impl Writer {
        fn send(&mut self) -> io::Result<()> {
            if self.buf.is_empty() {
                return Ok(());
            }
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            match &self.tx {
                Some(tx) if tx.send(chunk).is_ok() => Ok(()),
                // The reader stopped (the check failed): nothing more to unpack.
                _ => Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the check stopped reading",
                )),
            }
        }

        /// The stage is done: the reader sees the end after what was written.
        pub fn close(&mut self) {
            let _ = self.send();
            self.tx = None;
        }
    }

    impl Write for Writer {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.tx.is_none() {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"));
            }
            let n = data.len().min(CHUNK - self.buf.len());
            self.buf.extend_from_slice(&data[..n]);
            if self.buf.len() == CHUNK {
                self.send()?;
            }
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    pub struct Reader {
        rx: Receiver<Vec<u8>>,
        chunk: Vec<u8>,
        at: usize,
    }

    impl Read for Reader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            while self.at == self.chunk.len() {
                match self.rx.recv() {
                    Ok(chunk) => {
                        self.chunk = chunk;
                        self.at = 0;
                    }
                    Err(_) => return Ok(0),
                }
            }
            let n = buf.len().min(self.chunk.len() - self.at);
            buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    /// Runs `stage` on a thread of its own, writing into the pipe; returns
    /// the pipe's reading end and the thread.
    pub fn pipelined<T: Send + 'static>(
        stage: impl FnOnce(&mut Writer) -> T + Send + 'static,
    ) -> (Reader, std::thread::JoinHandle<T>) {
        let (tx, rx) = sync_channel(DEPTH);
        let handle = std::thread::spawn(move || {
            let mut w = Writer {
                tx: Some(tx),
                buf: Vec::with_capacity(CHUNK),
            };
            stage(&mut w)
        });
        (
            Reader {
                rx,
                chunk: Vec::new(),
                at: 0,
            },
            handle,
        )
    }
}

/// Whether a stored dump is not a bare archive (compressed, maybe encrypted):
/// pg_restore cannot read it as it is.
pub fn is_packed(path: &std::path::Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.ends_with(".zst") || name.ends_with(".zst.age")
}

/// The archive in `path`: decrypted (with this process's identities) and
/// decompressed as its name says.
pub fn open_archive(path: &std::path::Path) -> Result<Box<dyn Read>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file = BufReader::with_capacity(1 << 20, file);
    if crate::crypto::is_age(path) {
        let ids = crate::crypto::need_identities(&path.display().to_string())?;
        let plain = ids.decrypt(file)?;
        return Ok(Box::new(zstd::Decoder::new(plain)?));
    }
    if is_packed(path) {
        return Ok(Box::new(zstd::Decoder::with_buffer(file)?));
    }
    Ok(Box::new(file))
}

/// Writes the archive in `path` (decrypted and decompressed as needed) to `out`.
pub fn write_archive(path: &std::path::Path, out: File) -> Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, out);
    io::copy(&mut open_archive(path)?, &mut out)?;
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
