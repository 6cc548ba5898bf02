//! Taking one backup into the store: choose a client for the server, check
//! the disk, stream pg_dump through the archive check into a temporary file,
//! save the globals, publish the dump with its manifest. Shared by `backup`
//! and the safety backup of `restore --in-place`; no tiers, no rotation.

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};

use crate::clients::Need;
use crate::config::Config;
use crate::dump;
use crate::manifest::{FileInfo, GlobalsInfo, Manifest, SourceInfo, MANIFEST_VERSION};
use crate::naming::{self, Tier};
use crate::postgres::{Postgres, ServerInfo};
use crate::process::{ProcessError, StreamError};
use crate::store::{human_size, Staged, Store};

/// Where a backup goes: its tier and label (the hourly time, or the --name).
pub struct Target {
    pub tier: Tier,
    pub label: String,
    /// The time the backup is recorded as taken: --time, or the moment pg_dump starts.
    pub taken_at: DateTime<Utc>,
    /// A backfill (`--time`) keeps its time; otherwise the dump's start is recorded.
    pub backfill: bool,
}

impl Target {
    /// A named backup taken now (the safety backup before an in-place restore).
    pub fn named(name: &str) -> Target {
        Target {
            tier: Tier::Named,
            label: name.to_string(),
            taken_at: Utc::now(),
            backfill: false,
        }
    }

    /// Records the backup as taken at `now` (the dump's start), unless backfilling.
    pub fn restamp(&mut self, cfg: &Config, now: DateTime<Utc>) {
        if !self.backfill {
            self.taken_at = now;
        }
        if self.tier == Tier::Hourly {
            self.label = cfg.calendar.label(Tier::Hourly, self.taken_at);
        }
    }
}

/// Takes one backup into `target`'s tier and publishes it (no tier copies, no
/// rotation): the part shared with the safety backup of `restore --in-place`.
/// Call with the store locked. Returns the dump's path, its stem and size.
pub async fn take(
    cfg: &Config,
    store: &Store,
    pg: &Postgres,
    target: &mut Target,
    globals: &mut Globals,
) -> Result<(std::path::PathBuf, String, u64)> {
    // On the Docker engine's host, the dump comes out of the container
    // through a FIFO in its /tmp (see container_fs), not docker exec's stream.
    let fast = async {
        match pg.is_docker() {
            true => crate::container_fs::ContainerFs::open(pg).await,
            false => None,
        }
    };
    let (pre, fast) = tokio::join!(preflight(pg), fast);
    let (info, pg) = pre?;
    // --no-sync (needed for a FIFO) is pg_dump 10's.
    let fast = match pg.tool_major("pg_dump").await {
        Ok((major, _)) if major >= 10 => fast,
        _ => None,
    };
    let pg = &pg;
    check_disk(cfg, store, &info)?;

    tracing::info!("Creating database dump...");
    let started = Utc::now();
    target.restamp(cfg, started);
    let stem = match target.tier {
        Tier::Named => naming::stem(&cfg.prefix, &target.label, 1),
        _ => store.free_stem(target.tier, &cfg.prefix, &target.label),
    };
    let tmp = store.temp_file(target.tier)?;
    let out = tmp.reopen().context("temporary dump file")?;
    let level = cfg.compression_level;
    let seal = cfg.seal.clone();
    let progress = crate::progress::Progress::bytes("dumping", None);
    let format = cfg.format();
    // If we stop (timeout, Ctrl-C), the server ends pg_dump's session: killing
    // the `docker exec` client alone would leave pg_dump running in the container.
    let end_session = crate::postgres::end_sessions_sql(crate::postgres::session_name());
    let undo = crate::cleanup::register(pg, vec![]);
    let write = move |input| dump::write_compressed(input, out, level, seal.as_ref(), progress);
    let dumped = async {
        match fast {
            Some(fs) => dump_through_fifo(cfg, pg, std::sync::Arc::new(fs), write).await,
            None => pg.pg_dump().stream(cfg.timeout, write).await,
        }
    };
    // The cluster's globals (a small pg_dumpall) while the dump streams.
    let (written, globals) = tokio::join!(dumped, globals.of(pg, cfg, &info));
    if written.is_err() {
        let _ = pg.admin(&[&end_session], None).await;
    }
    undo.done();
    let written = written.map_err(|e| dump_error(pg, e))?;
    let finished = Utc::now();
    tracing::debug!(
        "pg_dump done in {:.1}s: {} archive bytes -> {} stored, {} tables",
        (finished - started).num_milliseconds() as f64 / 1000.0,
        written.summary.archive_bytes,
        written.size,
        written.summary.tables.len()
    );

    let (globals, role_passwords) = globals?;
    // The globals hold role password hashes: sealed like the dump, never
    // written in the clear.
    let globals = match &cfg.seal {
        Some(r) => r.encrypt_bytes(&globals)?,
        None => globals,
    };
    let zone = cfg.calendar.zone;
    let mut manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        kbackup_version: env!("CARGO_PKG_VERSION").to_string(),
        database: cfg.db.name.clone(),
        prefix: cfg.prefix.clone(),
        name: (target.tier == Tier::Named).then(|| target.label.clone()),
        file: FileInfo {
            format,
            encryption: cfg.seal.as_ref().map(|r| crate::manifest::Encryption {
                scheme: "age".into(),
                recipients: r.keys.clone(),
            }),
            sha256: written.sha256.clone(),
            size_bytes: written.size,
            compression: format!("zstd level {level}"),
        },
        started_at: zone.local_time(target.taken_at),
        finished_at: zone.local_time(target.taken_at + (finished - started)),
        source: SourceInfo {
            mode: if pg.is_docker() { "docker" } else { "direct" }.to_string(),
            container: cfg.db.container.clone(),
            host: cfg.db.host.clone(),
            port: cfg.db.port,
            user: cfg.db.user.clone(),
        },
        server_version: info.version.clone(),
        server_major: Some(info.major()),
        pg_dump_version: written.summary.pg_dump_version.clone().unwrap_or_default(),
        database_size_bytes: info.database_size,
        archive: written.summary,
        globals: GlobalsInfo {
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&globals)),
            size_bytes: globals.len() as u64,
            role_passwords,
        },
        minimal: None,
    };
    if cfg.manifest_detail == crate::config::ManifestDetail::Minimal {
        manifest.minimize();
    }
    let path = store.publish(
        target.tier,
        &stem,
        Staged {
            dump: tmp,
            format,
            manifest,
            globals,
        },
    )?;
    PUBLISHED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.display().to_string());
    Ok((path, stem, written.size))
}

/// Docker mode on the engine's host: pg_dump in the container writes to a
/// FIFO in its /tmp, read here through the container's filesystem. The FIFO
/// is removed afterwards, or by the run's undo (and `kbackup cleanup` after a
/// `kill -9`).
async fn dump_through_fifo(
    cfg: &Config,
    pg: &Postgres,
    fs: std::sync::Arc<crate::container_fs::ContainerFs>,
    write: impl FnOnce(std::fs::File) -> Result<dump::Written> + Send + 'static,
) -> Result<dump::Written, StreamError> {
    let local = |e: anyhow::Error| StreamError::Local(e);
    let run = crate::cleanup::run_id(&cfg.backup_dir)
        .context("cannot record this run in the store")
        .map_err(local)?;
    let name = format!("kbackup-dump-{run}.fifo");
    let target = format!("/tmp/{name}");
    let guard = crate::cleanup::remove_in_container(pg, &target);
    fs.mkfifo(&name)
        .with_context(|| format!("cannot make the FIFO {target} in the container"))
        .map_err(local)?;
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (reader, fifo, seen) = (fs.clone(), name.clone(), opened.clone());
    let work = move || {
        let input = reader.open_read(&fifo);
        seen.store(true, std::sync::atomic::Ordering::SeqCst);
        let input =
            input.with_context(|| format!("cannot open the FIFO /tmp/{fifo} in the container"))?;
        write(input)
    };
    // kbackup fsyncs what it stores; pg_dump cannot fsync a FIFO.
    let dumped = pg
        .pg_dump()
        .args(["--no-sync", "--file", &target])
        .beside(cfg.timeout, work, || fs.release_reader(&name, opened))
        .await;
    if fs.remove(&name).is_ok() {
        guard.done();
    }
    dumped
}

static PUBLISHED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The backups this process published (a run stopped by a signal keeps them).
pub fn published() -> Vec<String> {
    PUBLISHED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Checks everything a dump needs before it starts, with the seeds' errors, and
/// picks a pg_dump that can dump this server (see `Postgres::client_for`):
/// returns the server and the `Postgres` whose tools will run.
pub async fn preflight(pg: &Postgres) -> Result<(ServerInfo, Postgres)> {
    let info = if pg.is_docker() {
        // Each `docker exec` is a round trip through the engine: the three
        // questions go together, their answers checked in this order.
        let (running, tool, info) = tokio::join!(
            pg.check_container(),
            pg.tool_major("pg_dump"),
            pg.server_info()
        );
        running?;
        tool?;
        info?
    } else {
        pg.check_container().await?;
        pg.with_some_client("pg_dump").await?.server_info().await?
    };
    let need = Need::Dump {
        server_major: info.major(),
    };
    let job = format!("dump PostgreSQL {}", info.version);
    let (pg, _) = pg.client_for("pg_dump", need, &job).await?;
    Ok((info, pg))
}

/// Fails early when the dump cannot fit. The estimate is the last backup's size
/// scaled by how much the database grew since (with a 25% margin), or, with no
/// history, the database size itself.
fn check_disk(cfg: &Config, store: &Store, info: &ServerInfo) -> Result<()> {
    let (available, required) = disk_need(cfg, store, info)?;
    if available < required {
        bail!(
            "Insufficient disk space. Available: {}, Required: {} (in {}); free space there or keep fewer backups \
             (BACKUP_KEEP_HOURLY, BACKUP_RETENTION_DAYS)",
            human_size(available),
            human_size(required),
            store.root.display()
        );
    }
    Ok(())
}

/// (bytes free in the store, bytes the next backup is estimated to need).
pub fn disk_need(cfg: &Config, store: &Store, info: &ServerInfo) -> Result<(u64, u64)> {
    let available = store.free_space()?;
    let last = store
        .scan(&cfg.calendar, &cfg.prefix)?
        .into_iter()
        .filter_map(|b| b.manifest)
        .find(|m| m.database_size_bytes > 0);
    let required = match last {
        Some(m) => {
            let growth = info.database_size as f64 / m.database_size_bytes as f64;
            (m.size_bytes as f64 * growth.max(1.0) * 1.25) as u64
        }
        None => info.database_size,
    };
    Ok((available, required))
}

fn dump_error(pg: &Postgres, e: StreamError) -> anyhow::Error {
    match e {
        StreamError::Process(p @ ProcessError::Failed { .. }) => {
            let stderr = p.stderr().to_string();
            if stderr.contains("server version mismatch") {
                anyhow!("pg_dump is older than the server: {stderr}; install the client tools of the server's version (or newer) and point POSTGRES_BIN_DIR at them")
            } else if stderr.contains("connection to server")
                || stderr.contains("could not connect")
            {
                pg.connect_error(p)
            } else {
                anyhow!(p).context(format!(
                    "pg_dump of {} failed; no backup was written",
                    pg.describe()
                ))
            }
        }
        StreamError::Process(p) => pg.tool_error("pg_dump", p),
        StreamError::Local(c) => c.context(format!(
            "the dump of {} is not a complete archive; no backup was written",
            pg.describe()
        )),
    }
}

/// The cluster's globals of each server a run dumps from, dumped once per
/// run and server: every database of a run (DB_NAME=a,b or all) gets the same
/// copy beside its dump.
#[derive(Default)]
pub struct Globals(std::collections::HashMap<String, (Vec<u8>, bool)>);

impl Globals {
    async fn of(
        &mut self,
        pg: &Postgres,
        cfg: &Config,
        info: &ServerInfo,
    ) -> Result<(Vec<u8>, bool)> {
        let server = format!("{}@{}", cfg.db.user, pg.describe_server());
        if let Some(g) = self.0.get(&server) {
            return Ok(g.clone());
        }
        let g = dump_globals(pg, cfg, info).await?;
        self.0.insert(server, g.clone());
        Ok(g)
    }
}

/// `pg_dumpall --globals-only`, with the role password hashes when the role
/// may read them (asked of the server up front, not guessed from an error's
/// words); without them it says so.
async fn dump_globals(pg: &Postgres, cfg: &Config, info: &ServerInfo) -> Result<(Vec<u8>, bool)> {
    let with_passwords = info.reads_role_passwords;
    let out = pg
        .pg_dumpall_globals(with_passwords)
        .output(cfg.timeout)
        .await
        .map_err(|e| pg.tool_error("pg_dumpall", e))
        .context("saving the cluster's globals (roles, tablespaces)")?;
    // Said once per role and server (then recorded; `status` keeps showing it).
    let key = format!(
        "globals-without-passwords:{}@{}",
        cfg.db.user,
        pg.describe_server()
    );
    if !with_passwords && crate::state::first_time(&cfg.backup_dir, &key) {
        tracing::warn!(
            "Globals saved without role passwords: {} may not read them (not a superuser); \
             set role passwords again after a restore onto a fresh server. Said once; `kbackup status` shows it",
            cfg.db.user
        );
    }
    Ok((out, with_passwords))
}
