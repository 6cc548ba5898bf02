//! Where the database is, and the commands that reach it: the local client tools
//! connecting directly (host/port or a unix socket), or the tools inside a Docker
//! container through `docker exec`. The password travels only in the child's
//! environment (`docker exec -e PGPASSWORD` without a value copies it from ours),
//! never in an argv.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::archive::Summary;
use crate::clients::{self, ArchiveFormat, Candidate, Choice, Need, RestoreMode};
use crate::config::DbConfig;
use crate::process::{Cmd, ProcessError, StreamError};
use crate::sql::{dbname, literal};

/// The `application_name` of every session this run opens (`kbackup-<pid>-<µs>`):
/// when a run stops, the server may still be executing a statement whose
/// client is gone (a CREATE DATABASE waiting on a lock lands after its undo, a
/// pg_dump inside a container goes on); [`end_sessions_sql`] ends them first.
pub fn session_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        format!("kbackup-{}-{micros}", std::process::id())
    })
}

static UNDOING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on this run only undoes: its sessions carry `<session_name>-undo`,
/// which the undo's own "end this run's sessions" step leaves alone (an undo
/// that timed out is still allowed to finish on the server).
pub fn begin_undo() {
    UNDOING.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The application_name of the sessions opened now.
fn app_name() -> String {
    if UNDOING.load(std::sync::atomic::Ordering::SeqCst) {
        format!("{}-undo", session_name())
    } else {
        session_name().to_string()
    }
}

/// Ends every session named `app` other than its own and waits (up to 10 s)
/// until they are gone, so that what they were doing is rolled back before
/// the statements that follow it run.
pub fn end_sessions_sql(app: &str) -> String {
    format!(
        "DO $kbackup$ DECLARE n bigint; BEGIN FOR i IN 1..200 LOOP PERFORM pg_stat_clear_snapshot(); \
         SELECT count(pg_terminate_backend(pid)) INTO n FROM pg_stat_activity \
         WHERE application_name = {} AND pid <> pg_backend_pid(); \
         EXIT WHEN n = 0; PERFORM pg_sleep(0.05); END LOOP; END $kbackup$",
        literal(app)
    )
}

const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Postgres {
    pub db: DbConfig,
}

/// The pg_restore a restore or verification runs, and how (see `restore_client`).
#[derive(Debug, Clone)]
pub struct RestoreClient {
    /// The server, with the chosen client tools.
    pub pg: Postgres,
    pub client: Candidate,
    pub format: ArchiveFormat,
    pub server_major: u32,
    pub server_version: String,
    pub mode: RestoreMode,
}

/// What the server told us before a dump.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version_num: u32,
    pub version: String,
    pub database_size: u64,
    /// The role may read password hashes (pg_authid): pg_dumpall can save them.
    pub reads_role_passwords: bool,
}

impl ServerInfo {
    pub fn major(&self) -> u32 {
        major_of_num(self.version_num)
    }
}

fn major_of_num(num: u32) -> u32 {
    if num >= 100_000 {
        num / 10_000
    } else {
        num / 100
    }
}

impl Postgres {
    pub fn new(db: DbConfig) -> Self {
        Postgres { db }
    }

    pub fn is_docker(&self) -> bool {
        self.db.container.is_some()
    }

    /// `kairon@localhost:5432`, `kairon in container postgres-db`: for messages.
    pub fn describe(&self) -> String {
        match &self.db.container {
            Some(c) => format!("{} in container {c}", self.db.name),
            None => format!(
                "{}@{}:{}",
                self.db.name,
                self.db.host.as_deref().unwrap_or("local socket"),
                self.db.port
            ),
        }
    }

    /// The server alone, without the database: `localhost:5432`, `container pg`.
    pub fn describe_server(&self) -> String {
        match &self.db.container {
            Some(c) => format!("container {c}"),
            None => format!(
                "{}:{}",
                self.db.host.as_deref().unwrap_or("local socket"),
                self.db.port
            ),
        }
    }

    /// A client tool (pg_dump, pg_dumpall, psql, pg_restore), ready to connect.
    pub fn tool(&self, name: &str) -> Cmd {
        self.tool_with(name, false, &[])
    }

    /// Like [`tool`](Self::tool), for a child whose stdin kbackup writes
    /// (`docker exec -i` in docker mode).
    pub fn tool_stdin(&self, name: &str) -> Cmd {
        self.tool_with(name, true, &[])
    }

    /// A client tool with the connection settings every tool shares.
    /// `--no-password` makes a missing password an error instead of a prompt
    /// that would hang cron. `env` reaches the tool in both modes.
    fn tool_with(&self, name: &str, stdin: bool, env: &[(&str, &str)]) -> Cmd {
        let mut cmd = self
            .program(name, stdin, env)
            .arg("--no-password")
            .args(["--username", &self.db.user]);
        if let Some(h) = &self.db.host {
            cmd = cmd.args(["--host", h]);
        }
        cmd.args(["--port", &self.db.port.to_string()])
    }

    /// The tool itself, run locally (POSTGRES_BIN_DIR or PATH) or inside the
    /// container, with the password (and `env`) in its environment only:
    /// `docker exec -e NAME` copies a variable in without its value in argv.
    fn program(&self, name: &str, stdin: bool, env: &[(&str, &str)]) -> Cmd {
        // The tools' own messages in English whatever the operator's locale
        // (LANGUAGE=de...): the few that kbackup tells apart are theirs. Every
        // session carries this run's name, so an undo can end what is in flight.
        let app = app_name();
        let env: Vec<(&str, &str)> = env
            .iter()
            .copied()
            .chain([("PGAPPNAME", app.as_str()), ("LC_ALL", "C")])
            .collect();
        let env = &env[..];
        match &self.db.container {
            Some(container) => {
                let mut c = Cmd::new("docker").arg("exec");
                if stdin {
                    c = c.arg("-i");
                }
                for (k, v) in env {
                    c = c.args(["-e", k]).env(k, v);
                }
                if let Some(p) = &self.db.password {
                    c = c
                        .args(["-e", "PGPASSWORD"])
                        .secret_env("PGPASSWORD", p.expose());
                }
                c.arg(container).arg(name).label(name)
            }
            None => {
                let program = match &self.db.bin_dir {
                    Some(dir) => dir.join(name),
                    None => PathBuf::from(name),
                };
                let mut c = Cmd::new(program).label(name);
                for (k, v) in env {
                    c = c.env(k, v);
                }
                if let Some(p) = &self.db.password {
                    c = c.secret_env("PGPASSWORD", p.expose());
                }
                c
            }
        }
    }

    /// Docker mode: `argv` run inside the server's container (`docker exec`,
    /// `-i` when kbackup writes its stdin), without the connection settings.
    /// None in direct mode.
    pub fn in_container(&self, argv: &[&str], stdin: bool) -> Option<Cmd> {
        let container = self.db.container.as_ref()?;
        let mut c = Cmd::new("docker").arg("exec");
        if stdin {
            c = c.arg("-i");
        }
        Some(
            c.arg(container)
                .args(argv)
                .label(argv.first().copied().unwrap_or("docker exec")),
        )
    }

    /// `tool args...` as the operator would type it to reach this server: with
    /// `docker exec` in docker mode, the connection options in direct mode (a
    /// password is never shown; the tool asks for it or reads ~/.pgpass).
    pub fn command_line(&self, tool: &str, args: &[&str]) -> String {
        let mut words: Vec<String> = Vec::new();
        match &self.db.container {
            Some(c) => words.extend(["docker".into(), "exec".into(), c.clone(), tool.into()]),
            None => {
                words.push(match &self.db.bin_dir {
                    Some(d) => d.join(tool).display().to_string(),
                    None => tool.into(),
                });
                if let Some(h) = &self.db.host {
                    words.extend(["--host".into(), h.clone()]);
                }
                if self.db.port != 5432 {
                    words.extend(["--port".into(), self.db.port.to_string()]);
                }
            }
        }
        words.extend(["--username".into(), self.db.user.clone()]);
        words.extend(args.iter().map(|a| a.to_string()));
        shlex::try_join(words.iter().map(String::as_str)).unwrap_or_else(|_| words.join(" "))
    }

    /// The dump kbackup takes: custom format, no compression inside (kbackup
    /// compresses with zstd as it streams, and reads the rows as they pass).
    pub fn pg_dump(&self) -> Cmd {
        self.tool("pg_dump")
            .args(["--format=custom", "--compress=0"])
            .args(["--dbname", &dbname(&self.db.name)])
    }

    pub fn pg_dumpall_globals(&self, with_role_passwords: bool) -> Cmd {
        let c = self.tool("pg_dumpall").arg("--globals-only");
        let c = if with_role_passwords {
            c
        } else {
            c.arg("--no-role-passwords")
        };
        c.args(["--database", &dbname(&self.db.name)])
    }

    /// psql for kbackup's own SQL, in database `db`: no psqlrc, quiet, unaligned,
    /// tuples only, fields separated by the ASCII unit separator, stopping at the
    /// first error, client encoding UTF-8, errors with their SQLSTATE. The SQL
    /// itself goes on stdin ([`run_sql`](Self::run_sql)), never in argv: other
    /// local users can read a process's argv, and statements may carry secrets
    /// (a role's password hash).
    pub fn psql_stdin(&self, db: &str) -> Cmd {
        self.tool_with("psql", true, &[("PGCLIENTENCODING", "UTF8")])
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-F",
                "\x1f",
                "-R",
                "\x1e",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                "VERBOSITY=verbose",
            ])
            .args(["--dbname", &dbname(db)])
    }

    /// Runs `statements` in `db` through psql's stdin, each in its own
    /// transaction (CREATE/DROP DATABASE cannot share one), stopping at the
    /// first error; returns psql's output. Statement text is logged (debug) only
    /// when it carries no password.
    pub async fn run_sql<S: AsRef<str>>(
        &self,
        db: &str,
        statements: &[S],
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, ProcessError> {
        let mut script = String::new();
        for s in statements {
            let s = s.as_ref().trim_end();
            tracing::debug!("SQL on {db}: {}", loggable(s));
            script.push_str(s);
            if !s.ends_with(';') {
                script.push(';');
            }
            script.push('\n');
        }
        let cmd = self.psql_stdin(db);
        let result = cmd
            .feed(timeout, move |mut stdin| {
                use std::io::Write;
                stdin.write_all(script.as_bytes())?;
                Ok(())
            })
            .await;
        match result {
            Ok(out) => Ok(out),
            Err(StreamError::Process(p)) => Err(p),
            Err(StreamError::Local(e)) => Err(ProcessError::Spawn {
                program: "psql".into(),
                source: std::io::Error::other(format!("{e:#}")),
            }),
        }
    }

    /// Runs `sql` in `db` and returns its rows.
    pub async fn query(&self, db: &str, sql: &str) -> Result<Vec<Vec<String>>> {
        self.query_within(db, sql, Some(QUERY_TIMEOUT)).await
    }

    /// A query that reads whole tables (row counts, foreign-key checks): its time
    /// grows with the data, so it has no fixed limit (only `timeout`, when given).
    pub async fn scan_query(
        &self,
        db: &str,
        sql: &str,
        timeout: Option<Duration>,
    ) -> Result<Vec<Vec<String>>> {
        self.query_within(db, sql, timeout).await
    }

    async fn query_within(
        &self,
        db: &str,
        sql: &str,
        timeout: Option<Duration>,
    ) -> Result<Vec<Vec<String>>> {
        let out = self
            .run_sql(db, &[sql], timeout)
            .await
            .map_err(|e| self.connect_error(e))?;
        // Rows are separated by the ASCII record separator and fields by the
        // unit separator, so values may hold newlines (a role "nl\nrole");
        // psql ends the result with one newline.
        let text = String::from_utf8_lossy(&out);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        Ok(text
            .split('\x1e')
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\x1f').map(String::from).collect())
            .collect())
    }

    /// Runs statements on the maintenance database (POSTGRES_MAINTENANCE_DB,
    /// default `postgres`), each in its own transaction (CREATE/DROP DATABASE
    /// cannot share one): databases are created, renamed and dropped from there.
    pub async fn admin<S: AsRef<str>>(
        &self,
        statements: &[S],
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, ProcessError> {
        self.run_sql(
            &self.db.maintenance_db,
            statements,
            timeout.or(Some(QUERY_TIMEOUT)),
        )
        .await
    }

    /// psql running the SQL script on its stdin in `db`, stopping at the first
    /// error, its query output discarded.
    pub fn psql_script(&self, db: &str) -> Cmd {
        self.tool_stdin("psql").args([
            "-X",
            "-q",
            "-o",
            "/dev/null",
            "-v",
            "ON_ERROR_STOP=1",
            "--dbname",
            &dbname(db),
        ])
    }

    /// `pg_restore` reading an archive on stdin into `db`, stopping at the first error.
    pub fn pg_restore(&self, db: &str) -> Cmd {
        self.tool_stdin("pg_restore")
            .args(["--exit-on-error", "--dbname", &dbname(db)])
    }

    /// Checks the container exists and runs (docker mode), with the seed's errors.
    pub async fn check_container(&self) -> Result<()> {
        let Some(container) = &self.db.container else {
            return Ok(());
        };
        let inspect =
            Cmd::new("docker").args(["inspect", "--format", "{{.State.Running}}", container]);
        match inspect.output(Some(QUERY_TIMEOUT)).await {
            Ok(out) if String::from_utf8_lossy(&out).trim() == "true" => Ok(()),
            Ok(_) => Err(anyhow!(
                "PostgreSQL container not running: {container} (CONTAINER_DB) exists but is stopped; \
                 start it (docker start {container}) and check `docker ps`"
            )),
            Err(ProcessError::NotFound { .. }) => Err(anyhow!(
                "docker not found: CONTAINER_DB={container} selects docker mode, which runs `docker exec`; \
                 install the Docker CLI or unset CONTAINER_DB to connect directly"
            )),
            Err(e) if e.stderr().contains("No such") => Err(anyhow!(
                "PostgreSQL container not found: {container} (CONTAINER_DB); \
                 check the name with `docker ps --format '{{{{.Names}}}}'` and update CONTAINER_DB"
            )),
            Err(e) => Err(anyhow!(e).context(format!("cannot inspect container {container}: is the Docker engine running?"))),
        }
    }

    /// The same server, with the client tools of another folder.
    pub fn with_bin_dir(&self, dir: Option<PathBuf>) -> Postgres {
        let mut db = self.db.clone();
        db.bin_dir = dir;
        Postgres { db }
    }

    /// The client tools that can do `need` with `tool`, as a `Postgres` that runs
    /// them: the configured ones (POSTGRES_BIN_DIR or PATH) when they can;
    /// otherwise, in direct mode, the lowest sufficient version found in
    /// POSTGRES_CLIENT_PATHS (logged). `job` says what for, in messages:
    /// "dump PostgreSQL 17.2". Every tool then comes from the chosen folder.
    pub async fn client_for(
        &self,
        tool: &str,
        need: Need,
        job: &str,
    ) -> Result<(Postgres, Candidate)> {
        let configured = self.tool_major(tool).await;
        let here = |(major, version): &(u32, String)| Candidate {
            dir: self.db.bin_dir.clone(),
            major: *major,
            version: version.clone(),
        };
        if let Some(c) = &self.db.container {
            let found = configured?;
            if need.met_by(found.0) {
                return Ok((self.clone(), here(&found)));
            }
            bail!(
                "{tool} in container {c} ({}) cannot {job}{}; the container's client tools must be of \
                 version {} or newer: run the server from an image of that version, or take backups in \
                 direct mode (unset CONTAINER_DB, set POSTGRES_HOST) with newer client tools",
                found.1,
                because(tool, need),
                clients::major_text(wanted(need)),
            );
        }
        if let Ok(found) = &configured {
            if need.met_by(found.0) {
                return Ok((self.clone(), here(found)));
            }
        }
        let searched = self.search(tool).await;
        match clients::choose(configured.as_ref().ok().map(|c| c.0), &searched, need) {
            Choice::Configured => {
                Ok((self.clone(), here(configured.as_ref().expect("configured"))))
            }
            Choice::Found(c) => {
                let why = match &configured {
                    Ok(found) => format!("{} cannot {job}", here(found).describe(tool)),
                    Err(_) => format!("no {tool} on {}", self.configured_place()),
                };
                tracing::info!("Using {}: {why}", c.describe(tool));
                Ok((self.with_bin_dir(c.dir.clone()), c))
            }
            Choice::None => {
                let have = match &configured {
                    Ok(found) => format!(
                        "{} cannot {job}{}",
                        here(found).describe(tool),
                        because(tool, need)
                    ),
                    Err(e) => format!("{e:#}"),
                };
                let v = clients::major_text(wanted(need));
                bail!(
                    "{have}, and no {tool} {v} or newer was found in POSTGRES_CLIENT_PATHS ({}). Install the \
                     PostgreSQL {v} client tools (Debian/Ubuntu: postgresql-client-{v} from apt.postgresql.org; \
                     RHEL: postgresql{}; Homebrew: postgresql@{v}) or set POSTGRES_BIN_DIR to the folder holding them",
                    self.db.client_paths.join(":"),
                    v.replace('.', "")
                )
            }
        }
    }

    /// A `Postgres` whose `tool` runs at all, to ask the server its version
    /// before a client is chosen for it: the configured one, else (direct mode)
    /// any found in POSTGRES_CLIENT_PATHS, else the configured one's error
    /// ("pg_dump command not found", the seed's). Not the client the job uses:
    /// `client_for` chooses that.
    pub async fn with_some_client(&self, tool: &str) -> Result<Postgres> {
        let Err(e) = self.tool_major(tool).await else {
            return Ok(self.clone());
        };
        if self.is_docker() {
            return Err(e);
        }
        match self
            .search(tool)
            .await
            .into_iter()
            .max_by_key(|c| clients::order(c.major))
        {
            Some(c) => {
                tracing::warn!("{e:#}; using {}", c.describe(tool));
                Ok(self.with_bin_dir(c.dir))
            }
            None => Err(e),
        }
    }

    fn configured_place(&self) -> String {
        match &self.db.bin_dir {
            Some(d) => format!("POSTGRES_BIN_DIR ({})", d.display()),
            None => "PATH".into(),
        }
    }

    /// Every client of `tool` in the folders of POSTGRES_CLIENT_PATHS, with its version.
    async fn search(&self, tool: &str) -> Vec<Candidate> {
        let list_dir = |dir: &str| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut seen = std::collections::BTreeSet::new();
        if let Some(d) = self.db.bin_dir.as_ref().and_then(|d| d.canonicalize().ok()) {
            seen.insert(d);
        }
        let mut found = Vec::new();
        for pattern in &self.db.client_paths {
            for dir in clients::expand_search_path(pattern, list_dir) {
                let Ok(real) = dir.canonicalize() else {
                    continue;
                };
                if !dir.join(tool).is_file() || !seen.insert(real) {
                    continue;
                }
                let other = self.with_bin_dir(Some(dir.clone()));
                match other.tool_major(tool).await {
                    Ok((major, version)) => found.push(Candidate {
                        dir: Some(dir),
                        major,
                        version,
                    }),
                    Err(e) => tracing::debug!("skipping {}: {e:#}", dir.display()),
                }
            }
        }
        found
    }

    /// The pg_restore for `archive` on this server, checked before anything is
    /// created: the server is not older than the backup's (a refusal naming both
    /// versions), a pg_restore that reads the archive's format is found, and the
    /// way its output reaches the server is decided.
    pub async fn restore_client(&self, archive: &Summary) -> Result<RestoreClient> {
        let (server_major, server_version) = self.server_major().await?;
        let backup_major = archive.server_version.as_deref().and_then(version_major);
        clients::can_load(backup_major, server_major).map_err(|e| {
            anyhow!(
                "{e}. Nothing was changed on {} (PostgreSQL {server_version})",
                self.describe_server()
            )
        })?;
        let format = ArchiveFormat::parse(&archive.format_version).ok_or_else(|| {
            anyhow!(
                "unreadable archive format version {:?}",
                archive.format_version
            )
        })?;
        let job = format!(
            "read this backup (archive format {format}, written by pg_dump {})",
            archive.pg_dump_version.as_deref().unwrap_or("?")
        );
        let (pg, client) = self
            .client_for("pg_restore", Need::Read { format }, &job)
            .await?;
        if let Some(from) =
            backup_major.filter(|m| clients::order(*m) < clients::order(server_major))
        {
            tracing::info!(
                "Restoring a PostgreSQL {} backup into PostgreSQL {server_version} (an upgrade: pg_dump's archives load into newer servers)",
                clients::major_text(from)
            );
        }
        let mode = clients::restore_mode(client.major, server_major);
        if pg.is_docker() && mode != RestoreMode::Direct {
            bail!(
                "{} in container {} is newer than the server it restores into (PostgreSQL {server_version}) and \
                 would open its session with settings that server rejects; kbackup runs such a restore through \
                 psql in direct mode only: restore with POSTGRES_HOST/POSTGRES_PORT instead of CONTAINER_DB, or \
                 give the container client tools of the server's version",
                client.describe("pg_restore"),
                pg.db.container.as_deref().unwrap_or("?")
            );
        }
        Ok(RestoreClient {
            pg,
            client,
            format,
            server_major,
            server_version,
            mode,
        })
    }

    /// The server's major version, asked on the maintenance database (the
    /// target of a restore may not exist yet): (major, version text).
    pub async fn server_major(&self) -> Result<(u32, String)> {
        let rows = self
            .query(
                &self.db.maintenance_db,
                "SELECT current_setting('server_version_num'), current_setting('server_version')",
            )
            .await?;
        let Some([num, version]) = rows.first().map(|r| &r[..]) else {
            return Err(anyhow!("unexpected answer from the server: {rows:?}"));
        };
        let num: u32 = num.parse().context("server_version_num")?;
        Ok((major_of_num(num), version.clone()))
    }

    /// The version of a client tool, e.g. pg_dump 15.18 -> 15.
    pub async fn tool_major(&self, name: &str) -> Result<(u32, String)> {
        // Asked once per run: the same program answers the same.
        type Seen = Vec<((Option<String>, Option<PathBuf>, String), (u32, String))>;
        static SEEN: std::sync::Mutex<Seen> = std::sync::Mutex::new(Vec::new());
        let key = (
            self.db.container.clone(),
            self.db.bin_dir.clone(),
            name.to_string(),
        );
        let seen = |k: &_| {
            SEEN.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(s, _)| s == k)
                .map(|(_, v)| v.clone())
        };
        if let Some(known) = seen(&key) {
            return Ok(known);
        }
        let cmd = self.program(name, false, &[]).arg("--version");
        let out = cmd
            .output(Some(QUERY_TIMEOUT))
            .await
            .map_err(|e| self.tool_error(name, e))?;
        let text = String::from_utf8_lossy(&out).trim().to_string();
        let major = parse_tool_major(&text)
            .ok_or_else(|| anyhow!("cannot read the version of {name} from {text:?}"))?;
        SEEN.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((key, (major, text.clone())));
        Ok((major, text))
    }

    /// The seed's "pg_dump command not found", for both modes.
    pub fn tool_error(&self, name: &str, e: ProcessError) -> anyhow::Error {
        let missing_in_container = matches!(
            &e,
            ProcessError::Failed {
                code: Some(126 | 127),
                ..
            }
        ) || e.stderr().contains("executable file not found");
        match (&self.db.container, &e) {
            (None, ProcessError::NotFound { program }) => anyhow!(
                "{name} command not found ({program}): install the PostgreSQL client tools \
                 (apt-get install postgresql-client) or set POSTGRES_BIN_DIR to the folder holding {name}"
            ),
            (Some(c), _) if missing_in_container => {
                anyhow!("{name} command not found in container {c}: the container must ship the PostgreSQL client tools")
            }
            _ => anyhow!(e),
        }
    }

    /// Server version and database size, in one round trip. Connection failures
    /// become the seed's "Cannot connect to database: db@host:port".
    pub async fn server_info(&self) -> Result<ServerInfo> {
        let sql =
            "SELECT current_setting('server_version_num'), current_setting('server_version'), \
                   pg_database_size(current_database())";
        let sql = format!("{sql}, has_table_privilege('pg_catalog.pg_authid', 'SELECT')");
        let rows = match self.query(&self.db.name, &sql).await {
            Ok(rows) => rows,
            Err(e) => return Err(self.missing_database(e).await),
        };
        let Some([num, version, size, authid]) = rows.first().map(|r| &r[..]) else {
            return Err(anyhow!("unexpected answer from the server: {rows:?}"));
        };
        Ok(ServerInfo {
            version_num: num.parse().context("server_version_num")?,
            version: version.to_string(),
            database_size: size.parse().context("pg_database_size")?,
            reads_role_passwords: authid == "t",
        })
    }

    /// A failed connection to the database, explained without reading the
    /// server's (translatable) words: when the maintenance database answers and
    /// lists no such database, it does not exist.
    async fn missing_database(&self, e: anyhow::Error) -> anyhow::Error {
        let sql = format!(
            "SELECT count(*) FROM pg_database WHERE datname = {}",
            literal(&self.db.name)
        );
        match self.run_sql(&self.db.maintenance_db, &[sql], Some(QUERY_TIMEOUT)).await {
            Ok(out) if String::from_utf8_lossy(&out).trim() == "0" => anyhow!(
                "Cannot connect to database: {}: the database does not exist; check DB_NAME/POSTGRES_DB",
                self.describe()
            ),
            _ => e,
        }
    }

    pub fn connect_error(&self, e: ProcessError) -> anyhow::Error {
        match &e {
            ProcessError::Failed { stderr, .. } => {
                let first = stderr
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim();
                // A SQLSTATE means the session was up and a statement failed:
                // say so, not "cannot connect".
                if let Some(code) = sqlstate(stderr) {
                    let message = stderr
                        .lines()
                        .find(|l| l.contains(code))
                        .unwrap_or(first)
                        .trim();
                    return anyhow!("SQL on {} failed: {message}", self.describe());
                }
                if stderr.contains("does not exist") && stderr.contains("database") {
                    anyhow!(
                        "Cannot connect to database: {}: the database does not exist ({first}); check DB_NAME/POSTGRES_DB",
                        self.describe()
                    )
                } else if self.is_docker()
                    && (stderr.contains("No such container") || stderr.contains("is not running"))
                {
                    anyhow!("PostgreSQL container not found: {first}")
                } else {
                    anyhow!(
                        "Cannot connect to database: {}: {first}; check that PostgreSQL is running and the \
                         connection settings (POSTGRES_HOST, POSTGRES_PORT, DB_USER, POSTGRES_PASSWORD)",
                        self.describe()
                    )
                }
            }
            _ => self.tool_error("psql", e),
        }
    }
}

/// The SQLSTATE of the first error psql reported: with VERBOSITY=verbose it
/// prints `ERROR:  55006: ...` whatever the server's language, so errors are told
/// apart by code, never by their (translatable) text.
pub fn sqlstate(stderr: &str) -> Option<&str> {
    stderr.lines().find_map(|l| {
        let rest = &l[l.find(":  ")? + 3..];
        let code = rest.get(..5)?;
        (code
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
            && rest.get(5..)?.starts_with(": "))
        .then_some(code)
    })
}

/// A statement as the debug log may show it: never one that sets a password.
fn loggable(statement: &str) -> std::borrow::Cow<'_, str> {
    if statement.to_ascii_uppercase().contains("PASSWORD") {
        "<a statement that carries a password, not shown>".into()
    } else {
        statement.into()
    }
}

/// The version a job needs, for messages.
fn wanted(need: Need) -> u32 {
    match need {
        Need::Dump { server_major } => server_major,
        Need::Read { format } => clients::oldest_reader_of(format),
    }
}

fn because(tool: &str, need: Need) -> String {
    match need {
        Need::Dump { .. } => format!(" ({tool} refuses a server newer than itself)"),
        Need::Read { .. } => String::new(),
    }
}

/// The major version of a bare version string from an archive header
/// (`15.18 (Debian 15.18-0+deb12u1)` -> 15, `9.6.24` -> 906).
pub fn version_major(text: &str) -> Option<u32> {
    parse_tool_major(&format!("x (PostgreSQL) {text}"))
}

/// The major version, numbered as the server's `server_version_num / 10000`
/// (`/ 100` before 10): `pg_dump (PostgreSQL) 15.18 (Debian ...)` -> 15, `9.6.24` -> 906.
pub fn parse_tool_major(text: &str) -> Option<u32> {
    let after = text.split(')').nth(1).unwrap_or(text);
    let ver = after.split_whitespace().next()?;
    let mut parts = ver.split('.');
    let leading_digits = |s: &str| {
        s.chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
    };
    let major: u32 = leading_digits(parts.next()?).parse().ok()?;
    if major < 10 {
        let minor: u32 = leading_digits(parts.next()?).parse().ok()?;
        return Some(major * 100 + minor);
    }
    Some(major)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn db(container: Option<&str>) -> DbConfig {
        DbConfig {
            name: "kairon".into(),
            user: "n8n_user".into(),
            password: None,
            host: None,
            port: 5432,
            container: container.map(String::from),
            bin_dir: None,
            maintenance_db: "postgres".into(),
            client_paths: vec![],
        }
    }

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_tool_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 17beta1"), Some(17));
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 9.6.24"), Some(906));
        assert_eq!(major_of_num(150018), 15);
        assert_eq!(version_major("15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(version_major("9.6.24"), Some(906));
        assert_eq!(major_of_num(90624), 906);
    }

    #[test]
    fn docker_mode_passes_the_password_by_name_only() {
        let mut d = db(Some("postgres-db"));
        d.password = Some(secret("s3cret"));
        let cmd = Postgres::new(d).pg_dump();
        let argv: Vec<String> = cmd
            .argv()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            &argv[..9],
            [
                "docker",
                "exec",
                "-e",
                "PGAPPNAME",
                "-e",
                "LC_ALL",
                "-e",
                "PGPASSWORD",
                "postgres-db"
            ]
        );
        assert!(argv.iter().all(|a| !a.contains("s3cret")));
        assert!(argv.contains(&"--compress=0".to_string()));
        assert!(cmd.to_string().contains("PGPASSWORD=<redacted>"));
    }

    fn secret(s: &str) -> Secret {
        // Secrets are only built by config; go through it.
        let env = [("DB_NAME", "x"), ("POSTGRES_PASSWORD", s)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::config::load_from(&Default::default(), &env, std::path::Path::new("/"))
            .unwrap()
            .db
            .password
            .unwrap()
    }

    #[test]
    fn hints_name_the_server_as_the_operator_types_it() {
        let mut d = db(Some("postgres-db"));
        assert_eq!(
            Postgres::new(d.clone()).command_line("dropdb", &["app_pre_restore_1"]),
            "docker exec postgres-db dropdb --username n8n_user app_pre_restore_1"
        );
        d.container = None;
        d.host = Some("/run/pg".into());
        d.port = 5433;
        assert_eq!(
            Postgres::new(d).command_line("dropdb", &["my db"]),
            "dropdb --host /run/pg --port 5433 --username n8n_user 'my db'"
        );
    }

    #[test]
    fn direct_mode_uses_bin_dir() {
        let mut d = db(None);
        d.bin_dir = Some("/usr/lib/postgresql/16/bin".into());
        d.host = Some("/run/pg".into());
        let s = Postgres::new(d).pg_dump().to_string();
        assert!(
            s.starts_with(&format!(
                "PGAPPNAME={} LC_ALL=C /usr/lib/postgresql/16/bin/pg_dump",
                session_name()
            )) && s.contains(" --no-password --username n8n_user --host /run/pg"),
            "{s}"
        );
    }
}

#[cfg(test)]
mod quoting_tests {
    use super::*;

    #[test]
    fn sqlstates_are_read_in_any_language() {
        assert_eq!(
            sqlstate("psql:<stdin>:1: ERROR:  55006: database \"x\" is being accessed by other users\nDETAIL: ..."),
            Some("55006")
        );
        assert_eq!(
            sqlstate("psql:<stdin>:2: FEHLER:  55006: auf Datenbank »x« wird von anderen Benutzern zugegriffen"),
            Some("55006")
        );
        assert_eq!(
            sqlstate("psql: error: connection to server failed: No such file"),
            None
        );
        assert_eq!(sqlstate("ERROR:  syntax error"), None);
        assert_eq!(sqlstate("x:  ÄÖÜ: y"), None);
    }
}
