//! Read-back: the check pass over a backup file (checksum, full archive read,
//! an uncompressed copy for a parallel restore), pg_restore of it into a
//! database (parallel, streamed, or as a psql script for older servers), and the
//! row-count proof on what was restored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::archive::{Summary, TableData};
use crate::checks;
use crate::clients::RestoreMode;
use crate::config::Config;
use crate::dump;
use crate::manifest::Manifest;
use crate::postgres::{Postgres, RestoreClient};
use crate::process::StreamError;

/// How pg_restore is fed the archive. Decided before the check pass from the
/// settings and the file alone, so a dry run shows what the run will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// `pg_restore --jobs N` from an uncompressed copy the check pass writes to
    /// BACKUP_DIR/.kbackup (removed when the restore is over).
    ParallelFromCopy,
    /// `pg_restore --jobs N` from the backup file itself (an uncompressed `.dump`).
    ParallelFromFile,
    /// Docker mode: `pg_restore --jobs N` inside the server's container, from
    /// an uncompressed copy the check pass writes into its /tmp (over
    /// `docker exec -i`), removed when the restore is over.
    ParallelInContainer,
    /// Decompressed on the fly into one pg_restore.
    Stream,
}

impl Feed {
    /// For a backup at `path`: parallel when BACKUP_RESTORE_JOBS > 1 in direct
    /// mode, through a copy when the file is compressed and the store has room
    /// for the archive (`manifest`'s size, else ten times the file's).
    pub fn plan(cfg: &Config, docker: bool, path: &Path, manifest: Option<&Manifest>) -> Feed {
        if cfg.restore_jobs <= 1 {
            return Feed::Stream;
        }
        // The container's room is asked when the copy is made (check_pass).
        if docker {
            return Feed::ParallelInContainer;
        }
        if !dump::is_packed(path) {
            return Feed::ParallelFromFile;
        }
        let need = archive_need(path, manifest);
        let room =
            crate::store::free_space(&cfg.backup_dir).is_ok_and(|free| free > need + need / 10);
        if room {
            Feed::ParallelFromCopy
        } else {
            Feed::Stream
        }
    }
}

/// Bytes the uncompressed archive of `path` takes: the manifest's count, else
/// ten times the file.
fn archive_need(path: &Path, manifest: Option<&Manifest>) -> u64 {
    manifest
        .map(|m| m.archive.archive_bytes)
        .unwrap_or_else(|| std::fs::metadata(path).map(|m| m.len() * 10).unwrap_or(0))
}

/// The archive as pg_restore will read it.
pub struct Input {
    /// The seekable archive of a parallel feed (inside the container for
    /// `Feed::ParallelInContainer`).
    seekable: Option<PathBuf>,
    /// Keeps the temporary copy until pg_restore is done with it.
    _copy: Option<tempfile::NamedTempFile>,
    /// The copy inside the container, removed by [`release`](Self::release)
    /// (or, if the run stops first, by its registered undo).
    in_container: std::sync::Mutex<Option<(String, String, crate::cleanup::Registered)>>,
}

impl Input {
    /// The feed the run really uses: a planned copy that could not be written
    /// streams instead.
    pub fn feed(&self, planned: Feed) -> Feed {
        match (planned, &self.seekable) {
            (Feed::ParallelFromCopy | Feed::ParallelInContainer, None) => Feed::Stream,
            (p, _) => p,
        }
    }

    pub fn stream() -> Input {
        Input::seekable(None)
    }

    fn seekable(at: Option<PathBuf>) -> Input {
        Input {
            seekable: at,
            _copy: None,
            in_container: std::sync::Mutex::new(None),
        }
    }

    /// Removes the copy inside the container once pg_restore is done with it.
    pub async fn release(&self) {
        let held = self
            .in_container
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((container, path, guard)) = held {
            match crate::cleanup::remove_container_file(&container, &path).await {
                Ok(()) => guard.done(),
                // Left registered: the run's end (or `kbackup cleanup`) tries again.
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
    }
}

/// Bytes free in the container's /tmp (`df -Pk`).
async fn container_room(cfg: &Config, pg: &Postgres) -> Result<u64> {
    let out = pg
        .in_container(&["df", "-Pk", CONTAINER_TMP], false)
        .context("not in docker mode")?
        .output(cfg.timeout.or(Some(std::time::Duration::from_secs(60))))
        .await
        .map_err(|e| anyhow!(e))?;
    let text = String::from_utf8_lossy(&out);
    text.lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| anyhow!("unexpected `df -Pk {CONTAINER_TMP}` output: {text:?}"))
}

/// Where the copy for a parallel restore goes inside the container.
const CONTAINER_TMP: &str = "/tmp";

/// Docker mode: the check pass of `path` writing the uncompressed archive
/// into the container as it reads (the copy is the check's own stream, never
/// a second read). Returns the check's outcome and where the copy is, when it
/// is whole; a copy that could not be made (no room, `cat` failing) is removed
/// and the restore streams.
async fn check_into_container(
    cfg: &Config,
    pg: &Postgres,
    path: &Path,
    manifest_need: u64,
) -> Result<(Result<Summary>, String, Input)> {
    let container = pg.db.container.clone().context("not in docker mode")?;
    // On the engine's host, the copy is written straight into the
    // container's /tmp (see container_fs); elsewhere through docker exec.
    let fs = crate::container_fs::ContainerFs::open(pg).await;
    let free = match &fs {
        Some(fs) => fs.free_space().map_err(anyhow::Error::from),
        None => container_room(cfg, pg).await,
    };
    let room = match free {
        Ok(free) if free > manifest_need + manifest_need / 10 => Ok(()),
        Ok(free) => Err(format!(
            "{CONTAINER_TMP} in container {container} has {} free and the archive needs {}",
            crate::store::human_size(free),
            crate::store::human_size(manifest_need)
        )),
        Err(e) => Err(format!("{e:#}")),
    };
    let run = crate::cleanup::run_id(&cfg.backup_dir)
        .ok_or_else(|| "cannot record this run in the store".to_string());
    let (room, run) = match (room, run) {
        (Ok(()), Ok(run)) => (Ok(()), run),
        (Err(e), _) | (_, Err(e)) => (Err(e), String::new()),
    };
    if let Err(why) = room {
        tracing::warn!(
            "No uncompressed copy of the archive in container {container} ({why}): the restore streams into one pg_restore instead of running in parallel"
        );
        let src = path.to_path_buf();
        let (summary, sha) =
            tokio::task::spawn_blocking(move || dump::read_back(&src, None)).await??;
        return Ok((summary, sha, Input::stream()));
    };
    let name = format!("kbackup-restore-{run}.dump");
    let target = format!("{CONTAINER_TMP}/{name}");
    let guard = crate::cleanup::remove_in_container(pg, &target);
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (src, filled) = (path.to_path_buf(), slot.clone());
    let check = move |out: std::fs::File| {
        let mut copy = Some(dump::ArchiveCopy::new(out));
        let read = dump::read_back(&src, copy.as_mut());
        let complete = copy.is_some_and(|c| c.complete());
        *filled.lock().unwrap_or_else(|e| e.into_inner()) = Some((read, complete));
    };
    let written = match fs.as_ref().map(|fs| fs.create(&name)) {
        Some(Ok(file)) => tokio::task::spawn_blocking(move || check(file))
            .await
            .map_err(|e| anyhow!(e)),
        Some(Err(e)) => Err(anyhow!(e).context(format!("cannot create {target}"))),
        None => pg
            .in_container(
                &["sh", "-c", &format!("umask 077 && exec cat > '{target}'")],
                true,
            )
            .context("not in docker mode")?
            .feed(cfg.timeout, move |stdin| {
                check(stdin);
                Ok(())
            })
            .await
            .map(|_| ())
            .map_err(|e| anyhow!(e)),
    };
    let read_alone = || {
        let src = path.to_path_buf();
        tokio::task::spawn_blocking(move || dump::read_back(&src, None))
    };
    let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    let (read, complete) = match taken {
        Some(done) => done,
        // The copy could not even start: the check runs on its own.
        None => (read_alone().await?, false),
    };
    let (summary, sha) = read?;
    let input = Input::seekable(Some(PathBuf::from(&target)));
    *input.in_container.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((container.clone(), target.clone(), guard));
    match written {
        Ok(()) if complete => Ok((summary, sha, input)),
        failed => {
            if let Err(e) = failed {
                tracing::debug!("copy into container {container}: {e:#}");
            }
            tracing::warn!(
                "The uncompressed copy for a parallel restore could not be written to {CONTAINER_TMP} in container {container}; streaming instead"
            );
            input.release().await;
            Ok((summary, sha, Input::stream()))
        }
    }
}

/// The check pass over `path` (checksum, full archive read). For
/// `Feed::ParallelFromCopy`, and unless this is a dry run (`keep_copy` false),
/// the same pass writes the uncompressed archive to a temporary file; when that
/// copy cannot be made the restore streams instead (and says so).
pub async fn check_pass(
    cfg: &Config,
    pg: &Postgres,
    path: &Path,
    manifest: Option<&Manifest>,
    feed: Feed,
    keep_copy: bool,
) -> Result<(Result<Summary>, String, Input)> {
    if feed == Feed::ParallelInContainer && keep_copy {
        return check_into_container(cfg, pg, path, archive_need(path, manifest)).await;
    }
    let mut tmp = None;
    if feed == Feed::ParallelFromCopy && keep_copy {
        match crate::store::state_temp(&cfg.backup_dir, "restore") {
            Ok(t) => tmp = Some(t),
            Err(e) => {
                tracing::warn!("{e:#}: the restore will stream instead of running in parallel")
            }
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
    let input = match (feed, tmp) {
        (Feed::ParallelFromCopy, Some(t)) => Input {
            seekable: Some(t.path().to_path_buf()),
            _copy: Some(t),
            in_container: std::sync::Mutex::new(None),
        },
        (Feed::ParallelFromFile, _) => Input::seekable(Some(path.to_path_buf())),
        (Feed::ParallelFromCopy, None) if keep_copy => {
            tracing::warn!(
                "The uncompressed copy for a parallel restore could not be written to {}; streaming instead",
                crate::store::STATE_DIR
            );
            Input::stream()
        }
        _ => Input::stream(),
    };
    Ok((summary, sha, input))
}

/// Where the manifest and the archive disagree (tables missing from the
/// archive, row counts that differ, a different number of tables): the
/// manifest holds what pg_dump read, so any difference means a damaged or
/// substituted file.
pub fn manifest_disagreements(manifest: &Manifest, summary: &Summary) -> Vec<String> {
    let in_archive: BTreeMap<(&str, &str), Option<u64>> = summary
        .tables
        .iter()
        .map(|t| ((t.schema.as_str(), t.name.as_str()), t.rows))
        .collect();
    let mut problems = Vec::new();
    if let Some(c) = manifest.minimal {
        let rows: Option<u64> = summary.tables.iter().map(|t| t.rows).sum();
        if c.tables != summary.tables.len() {
            problems.push(format!(
                "manifest counts {} tables, archive {}",
                c.tables,
                summary.tables.len()
            ));
        }
        if let (Some(m), Some(a)) = (c.rows, rows) {
            if m != a {
                problems.push(format!(
                    "the manifest counts {m} rows in all, the archive {a}"
                ));
            }
        }
        return problems;
    }
    for t in &manifest.archive.tables {
        match in_archive.get(&(t.schema.as_str(), t.name.as_str())) {
            None => problems.push(format!("{}.{} missing from the archive", t.schema, t.name)),
            Some(Some(rows)) if t.rows.is_some_and(|m| m != *rows) => problems.push(format!(
                "the manifest says {}.{} has {} rows but the archive holds {rows}",
                t.schema,
                t.name,
                t.rows.unwrap_or_default(),
            )),
            _ => {}
        }
    }
    if manifest.archive.tables.len() != summary.tables.len() {
        problems.push(format!(
            "manifest lists {} tables, archive {}",
            manifest.archive.tables.len(),
            summary.tables.len()
        ));
    }
    problems
}

/// The row count each table must have after a restore: the archive's own
/// count, else the manifest's (None: unknown).
pub fn expected_rows(summary: &Summary, manifest: Option<&Manifest>) -> Vec<TableData> {
    let from_manifest: BTreeMap<(&str, &str), Option<u64>> = manifest
        .iter()
        .flat_map(|m| &m.archive.tables)
        .map(|t| ((t.schema.as_str(), t.name.as_str()), t.rows))
        .collect();
    summary
        .tables
        .iter()
        .map(|t| TableData {
            rows: t.rows.or_else(|| {
                from_manifest
                    .get(&(t.schema.as_str(), t.name.as_str()))
                    .copied()
                    .flatten()
            }),
            ..t.clone()
        })
        .collect()
}

/// Runs pg_restore of the archive at `path` into `db`, stopping at the first
/// error: in parallel (`--jobs BACKUP_RESTORE_JOBS`) from a seekable archive, or
/// streamed into one pg_restore; or, when the client is newer than the server
/// can take directly (`RestoreMode::Script`), as an SQL script run by psql.
pub async fn run_pg_restore(
    cfg: &Config,
    rc: &RestoreClient,
    path: &std::path::Path,
    input: &Input,
    db: &str,
    extra: &[&str],
    tables: usize,
) -> Result<()> {
    let pg = &rc.pg;
    // On a terminal: tables restored of the archive's, counted from
    // pg_restore's --verbose lines (kept out of any error message).
    let shown =
        crate::progress::Progress::count(&format!("restoring into {db}"), tables as u64, "tables");
    let hook = restore_progress(&shown, input.seekable.is_some());
    let extra: Vec<&str> = extra
        .iter()
        .copied()
        .chain(hook.is_some().then_some("--verbose"))
        .collect();
    let extra = &extra[..];
    let watch = |c: crate::process::Cmd| match &hook {
        Some(h) => c.on_stderr(h.clone()),
        None => c,
    };
    let failed = |e: StreamError| match e {
        StreamError::Process(p) => anyhow!(p).context("pg_restore failed"),
        StreamError::Local(l) => l.context("reading the backup failed"),
    };
    let restored = async {
        if let RestoreMode::Script { drop } = &rc.mode {
            return run_as_script(cfg, pg, path, input, db, extra, drop.clone()).await;
        }
        match &input.seekable {
            Some(archive) => {
                watch(
                    pg.tool("pg_restore")
                        .args(["--exit-on-error", "--jobs", &cfg.restore_jobs.to_string()])
                        .args(extra)
                        .args(["--dbname", &crate::sql::dbname(db)])
                        .arg(archive),
                )
                .output(cfg.timeout)
                .await
                .map_err(|e| failed(StreamError::Process(e)))?;
            }
            None => {
                let src = path.to_path_buf();
                watch(pg.pg_restore(db).args(extra))
                    .feed(cfg.timeout, move |stdin| dump::write_archive(&src, stdin))
                    .await
                    .map_err(failed)?;
            }
        }
        Ok(())
    }
    .await;
    // A copy inside the container has served its one pg_restore.
    input.release().await;
    restored
}

/// When progress is drawn: the stderr hook of a `--verbose` pg_restore. Each
/// table's data done moves the bar; the verbose chatter never reaches an
/// error message (errors, warnings, their details and context do).
fn restore_progress(
    shown: &crate::progress::Progress,
    parallel: bool,
) -> Option<crate::process::StderrHook> {
    if !shown.is_on() {
        return None;
    }
    let bar = shown.clone();
    let hook: crate::process::StderrHook = std::sync::Arc::new(move |line: &str| {
        let Some(rest) = line.strip_prefix("pg_restore: ") else {
            return true;
        };
        // One line per table's data: the leader's "finished item" in parallel,
        // "processing data for table" when one process restores it all.
        let done = if parallel {
            rest.starts_with("finished item") && rest.contains("TABLE DATA")
        } else {
            rest.starts_with("processing data for table")
        };
        if done {
            bar.add(1);
        }
        // What --verbose adds; anything else (errors, "while PROCESSING TOC",
        // "from TOC entry") stays for the error message.
        ![
            "connecting",
            "creating",
            "processing",
            "launching",
            "finished",
            "executing",
            "entering",
            "setting owner",
            "implied data-only",
            "disabling triggers",
            "enabling triggers",
            "dropping",
            "resetting",
            "skipping",
        ]
        .iter()
        .any(|k| rest.starts_with(k))
    });
    Some(hook)
}

/// `pg_restore --file -` piped into `psql -v ON_ERROR_STOP=1`, without the
/// script's opening session settings listed in `drop`. pg_restore reads a file
/// (a compressed backup streamed so far is decompressed to a temporary one).
pub async fn run_as_script(
    cfg: &Config,
    pg: &Postgres,
    path: &std::path::Path,
    input: &Input,
    db: &str,
    extra: &[&str],
    drop: Vec<&'static str>,
) -> Result<()> {
    let mut _copy = None;
    let archive = match &input.seekable {
        Some(path) => path.clone(),
        None if !dump::is_packed(path) => path.to_path_buf(),
        None => {
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

/// Where restored row counts differ from the expected ones, each as
/// `schema.table: restored N, <source> M` (`source`: "backup", "the manifest").
pub fn row_mismatches(expected: &[TableData], counts: &[u64], source: &str) -> Vec<String> {
    expected
        .iter()
        .zip(counts)
        .filter(|(t, n)| t.rows.is_some_and(|want| want != **n))
        .map(|(t, n)| {
            format!(
                "{}.{}: restored {n}, {source} {}",
                t.schema,
                t.name,
                t.rows.unwrap_or_default()
            )
        })
        .collect()
}

/// The row-count proof: every table present, with the backup's row count.
/// Returns (tables, rows).
pub async fn prove_rows(pg: &Postgres, db: &str, expected: &[TableData]) -> Result<(usize, u64)> {
    let shown = crate::progress::Progress::phase(&format!(
        "counting the rows of {} tables",
        expected.len()
    ));
    let counts = checks::row_counts(pg, db, expected).await?;
    shown.done();
    let mismatches = row_mismatches(expected, &counts, "backup");
    if !mismatches.is_empty() {
        bail!(
            "row counts differ from the backup's: {}",
            mismatches.join("; ")
        );
    }
    Ok((expected.len(), counts.iter().sum()))
}
