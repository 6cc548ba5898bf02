//! Read-back: the check pass over a backup file (checksum, full archive read,
//! an uncompressed copy for a parallel restore), pg_restore of it into a
//! database (parallel, streamed, or as a psql script for older servers), and the
//! row-count proof on what was restored.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};

use crate::archive::{Summary, TableData};
use crate::checks;
use crate::clients::RestoreMode;
use crate::config::Config;
use crate::dump;
use crate::postgres::{Postgres, RestoreClient};
use crate::process::StreamError;

/// How pg_restore will read the archive.
pub enum Input {
    /// Streamed (decompressed on the fly) into one pg_restore.
    Stream,
    /// A seekable uncompressed archive, for a parallel `pg_restore -j`: the copy
    /// the check pass left (kept alive here), or a seed-era `.dump` itself.
    Seekable {
        path: PathBuf,
        /// Keeps the temporary copy until pg_restore is done with it.
        _copy: Option<tempfile::NamedTempFile>,
    },
}

/// Runs the check pass over `path` (checksum, full archive read). When a
/// parallel restore will follow (BACKUP_RESTORE_JOBS > 1, direct mode, room in
/// the store), the same pass leaves the uncompressed archive in a temporary file.
pub async fn check_pass(
    cfg: &Config,
    pg: &Postgres,
    path: &std::path::Path,
    size_hint: u64,
    for_restore: bool,
) -> Result<(Result<Summary>, String, Input)> {
    let parallel = cfg.restore_jobs > 1 && !pg.is_docker();
    let mut tmp = None;
    // A dry run reads the file but keeps no copy (and writes nothing to the store).
    if parallel && for_restore && dump::is_zstd(path) {
        let room = crate::store::free_space(&cfg.backup_dir)
            .is_ok_and(|free| free > size_hint + size_hint / 10);
        if room {
            tmp = crate::store::state_temp(&cfg.backup_dir, "restore").ok();
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
    let input = match tmp {
        Some(t) => Input::Seekable {
            path: t.path().to_path_buf(),
            _copy: Some(t),
        },
        None if parallel && !dump::is_zstd(path) => Input::Seekable {
            path: path.to_path_buf(),
            _copy: None,
        },
        None => Input::Stream,
    };
    Ok((summary, sha, input))
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
) -> Result<()> {
    let pg = &rc.pg;
    let failed = |e: StreamError| match e {
        StreamError::Process(p) => anyhow!(p).context("pg_restore failed"),
        StreamError::Local(l) => l.context("reading the backup failed"),
    };
    if let RestoreMode::Script { drop } = &rc.mode {
        return run_as_script(cfg, pg, path, input, db, extra, drop.clone()).await;
    }
    match input {
        Input::Seekable { path: archive, .. } => {
            pg.tool("pg_restore")
                .args(["--exit-on-error", "--jobs", &cfg.restore_jobs.to_string()])
                .args(extra)
                .args(["--dbname", &crate::sql::dbname(db)])
                .arg(archive)
                .output(cfg.timeout)
                .await
                .map_err(|e| failed(StreamError::Process(e)))?;
        }
        Input::Stream => {
            let src = path.to_path_buf();
            pg.pg_restore(db)
                .args(extra)
                .feed(cfg.timeout, move |stdin| dump::write_archive(&src, stdin))
                .await
                .map_err(failed)?;
        }
    }
    Ok(())
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
    let archive = match input {
        Input::Seekable { path, .. } => path.clone(),
        Input::Stream if !dump::is_zstd(path) => path.to_path_buf(),
        Input::Stream => {
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

/// Every table present, with the backup's row count. Returns (tables, rows).
/// The row-count proof: every table present, with the backup's row count.
pub async fn prove_rows(pg: &Postgres, db: &str, expected: &[TableData]) -> Result<(usize, u64)> {
    let counts = checks::row_counts(pg, db, expected).await?;
    let mismatches: Vec<String> = expected
        .iter()
        .zip(&counts)
        .filter(|(t, n)| t.rows.is_some_and(|want| want != **n))
        .map(|(t, n)| {
            format!(
                "{}.{}: restored {n}, backup {}",
                t.schema,
                t.name,
                t.rows.unwrap_or_default()
            )
        })
        .collect();
    if !mismatches.is_empty() {
        bail!(
            "row counts differ from the backup's: {}",
            mismatches.join("; ")
        );
    }
    Ok((expected.len(), counts.iter().sum()))
}
