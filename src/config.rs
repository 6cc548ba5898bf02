//! Layered settings: flags > environment > .env > TOML > defaults.
//!
//! One registry ([`SETTINGS`]) names every setting once: its TOML key, the
//! environment names it answers to (the seeds' names first), its default and
//! whether it is a secret. Resolution keeps where each value came from, so a bad
//! value is reported with its source and `kbackup config` can show provenance.
//! Everything is parsed and validated here, before any command runs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use chrono::Weekday;
use serde::Serialize;

use crate::cli::{GlobalArgs, LogFormat};
use crate::clock::Zone;
use crate::error::usage;
use crate::naming::Calendar;
use crate::retention::Policy;

/// One setting: its TOML key (`section.name`), environment names, default.
#[derive(Debug)]
pub struct Spec {
    pub key: &'static str,
    /// Accepted environment / .env names; the first is the canonical one.
    pub env: &'static [&'static str],
    pub default: Option<&'static str>,
    pub secret: bool,
    pub doc: &'static str,
}

impl Spec {
    pub fn env_name(&self) -> &'static str {
        self.env[0]
    }
}

/// Every setting kbackup reads. `.env.example`, `config.example.toml` and the
/// README document each of them (a test keeps them in step).
pub const SETTINGS: &[Spec] = &[
    Spec { key: "database.name", env: &["DB_NAME", "POSTGRES_DB"], default: None, secret: false,
        doc: "Database(s) to back up (required): one name, a comma-separated list (kairon,n8n; a name holding a comma or spaces at its ends in double quotes), or all: every database on the server that accepts connections, templates excepted. Or [[database]] tables in the TOML file." },
    Spec { key: "database.user", env: &["DB_USER", "POSTGRES_USER"], default: Some("postgres"), secret: false,
        doc: "Role pg_dump connects as." },
    Spec { key: "database.password", env: &["POSTGRES_PASSWORD"], default: None, secret: true,
        doc: "Password; handed to children through the environment (PGPASSWORD), never argv." },
    Spec { key: "database.password_file", env: &["POSTGRES_PASSWORD_FILE"], default: None, secret: false,
        doc: "File holding the password (Docker/Kubernetes secrets); used when POSTGRES_PASSWORD is unset." },
    Spec { key: "database.host", env: &["POSTGRES_HOST"], default: None, secret: false,
        doc: "Direct mode: server host or unix-socket directory (default: libpq's default socket)." },
    Spec { key: "database.port", env: &["POSTGRES_PORT"], default: Some("5432"), secret: false,
        doc: "Direct mode: server port." },
    Spec { key: "database.container", env: &["CONTAINER_DB"], default: None, secret: false,
        doc: "Docker container running PostgreSQL; when set, pg_dump runs inside it via docker exec." },
    Spec { key: "database.bin_dir", env: &["POSTGRES_BIN_DIR"], default: None, secret: false,
        doc: "Directory holding pg_dump/pg_dumpall/psql (e.g. /usr/lib/postgresql/16/bin); default: PATH." },
    Spec { key: "database.client_paths", env: &["POSTGRES_CLIENT_PATHS"],
        default: Some("/usr/lib/postgresql/*/bin:/usr/pgsql-*/bin:/opt/homebrew/opt/postgresql@*/bin:/usr/local/opt/postgresql@*/bin:/usr/local/pgsql/bin"), secret: false,
        doc: "Direct mode: folders searched (in order, `*` matching any version) for client tools when POSTGRES_BIN_DIR's or PATH's are too old for the server or the archive; the lowest sufficient version is used." },
    Spec { key: "database.maintenance_db", env: &["POSTGRES_MAINTENANCE_DB"], default: Some("postgres"), secret: false,
        doc: "Database restore connects to when it creates, renames or drops databases." },
    Spec { key: "restore.jobs", env: &["BACKUP_RESTORE_JOBS"], default: None, secret: false,
        doc: "Parallel pg_restore jobs for restore and verify (default: the machine's cores; 1 streams the archive, no temporary file)." },
    Spec { key: "restore.swap_timeout", env: &["BACKUP_SWAP_TIMEOUT"], default: Some("30s"), secret: false,
        doc: "Longest time restore keeps the target closed to connections while it waits for its sessions to end; then it reopens it, names what holds it, and stops." },
    Spec { key: "restore.environment", env: &["ENVIRONMENT"], default: None, secret: false,
        doc: "Set to production to mark a production server: restoring over a database there warns loudly (Kaizen seed)." },
    Spec { key: "backup.dir", env: &["BACKUP_DIR"], default: Some("backups"), secret: false,
        doc: "Backup store folder (relative paths are taken from the current directory)." },
    Spec { key: "backup.exclude", env: &["BACKUP_EXCLUDE"], default: None, secret: false,
        doc: "With DB_NAME=all: databases not to back up (comma-separated, as DB_NAME)." },
    Spec { key: "backup.prefix", env: &["BACKUP_PREFIX"], default: None, secret: false,
        doc: "File name prefix (default: the database name)." },
    Spec { key: "backup.keep_hourly", env: &["BACKUP_KEEP_HOURLY"], default: Some("24"), secret: false,
        doc: "hourly/ keeps its newest N backups." },
    Spec { key: "backup.keep_daily", env: &["BACKUP_KEEP_DAILY"], default: Some("7"), secret: false,
        doc: "daily/ keeps its newest N backups (0 turns the tier off)." },
    Spec { key: "backup.keep_weekly", env: &["BACKUP_KEEP_WEEKLY"], default: Some("4"), secret: false,
        doc: "weekly/ keeps its newest N backups (0 turns the tier off)." },
    Spec { key: "backup.keep_monthly", env: &["BACKUP_KEEP_MONTHLY"], default: Some("0"), secret: false,
        doc: "monthly/ keeps its newest N backups (0, the default, turns the tier off)." },
    Spec { key: "backup.retention_days", env: &["BACKUP_RETENTION_DAYS"], default: None, secret: false,
        doc: "Also delete backups older than N days from every tier (unset or 0: off), measured from the clock. Each tier's newest backup is always kept." },
    Spec { key: "backup.retention_count", env: &["BACKUP_RETENTION_COUNT"], default: None, secret: false,
        doc: "named/ keeps its newest N backups (unset: all)." },
    Spec { key: "backup.age_recipients", env: &["BACKUP_AGE_RECIPIENTS"], default: None, secret: false,
        doc: "Encrypt every new dump and globals file with age to these public keys (age1..., ssh-ed25519 ..., ssh-rsa ...; comma- or newline-separated; a TOML list too), as it streams: .dump.zst.age, .globals.sql.age. Unset: not encrypted." },
    Spec { key: "backup.age_recipients_file", env: &["BACKUP_AGE_RECIPIENTS_FILE"], default: None, secret: false,
        doc: "A file of age recipients, one per line (# comments), in addition to BACKUP_AGE_RECIPIENTS." },
    Spec { key: "backup.age_identity", env: &["BACKUP_AGE_IDENTITY"], default: None, secret: false,
        doc: "File of age identities (AGE-SECRET-KEY-1..., from age-keygen) or an unencrypted SSH private key: needed by restore, full verify and restore --remote of encrypted backups (also --identity FILE). Not needed to back up." },
    Spec { key: "backup.manifest_detail", env: &["BACKUP_MANIFEST_DETAIL"], default: Some("full"), secret: false,
        doc: "full: the manifest lists every table with its exact row count (the restore's proof); minimal: no table, role or database-property names in it (the proof then uses the archive's own table of contents)." },
    Spec { key: "backup.week_start", env: &["BACKUP_WEEK_START"], default: Some("sunday"), secret: false,
        doc: "First day of the week for weekly/ (sunday or monday; the label is the ISO week of that day)." },
    Spec { key: "backup.timezone", env: &["BACKUP_TIMEZONE"], default: None, secret: false,
        doc: "IANA time zone for names, days and weeks (default: the host's local zone, TZ)." },
    Spec { key: "backup.compression_level", env: &["BACKUP_COMPRESSION_LEVEL"], default: Some("1"), secret: false,
        doc: "zstd level for the dump (1-19; 1 measured smaller and faster than 3 on the reference data)." },
    Spec { key: "backup.timeout", env: &["BACKUP_TIMEOUT"], default: None, secret: false,
        doc: "Give up on a pg_dump that runs longer than this (e.g. 2h, 90m; unset: no limit)." },
    Spec { key: "backup.interval", env: &["BACKUP_INTERVAL"], default: Some("1h"), secret: false,
        doc: "How often backups are expected (the cron schedule): status's default --max-age is twice this." },
    Spec { key: "backup.max_age", env: &["BACKUP_MAX_AGE"], default: None, secret: false,
        doc: "status is unhealthy when the newest backup is older than this (default: twice BACKUP_INTERVAL)." },
    Spec { key: "backup.metrics_file", env: &["BACKUP_METRICS_FILE"], default: None, secret: false,
        doc: "Prometheus textfile (node_exporter's textfile collector, a .prom file) rewritten after every backup and verify." },
    Spec { key: "verify.host", env: &["BACKUP_VERIFY_HOST"], default: None, secret: false,
        doc: "Verify on a separate server (host or socket directory) instead of the backed-up one." },
    Spec { key: "verify.port", env: &["BACKUP_VERIFY_PORT"], default: None, secret: false,
        doc: "Port of the verification server (default 5432)." },
    Spec { key: "verify.user", env: &["BACKUP_VERIFY_USER"], default: None, secret: false,
        doc: "Role on the verification server (default: DB_USER)." },
    Spec { key: "verify.password", env: &["BACKUP_VERIFY_PASSWORD"], default: None, secret: true,
        doc: "Password on the verification server (never the production one by default)." },
    Spec { key: "verify.container", env: &["BACKUP_VERIFY_CONTAINER"], default: None, secret: false,
        doc: "Verify inside this Docker container instead (docker exec)." },
    Spec { key: "remote.name", env: &["RCLONE_REMOTE_NAME"], default: None, secret: false,
        doc: "rclone remote for off-site copies (gdrive, s3, ...); unset: no off-site sync." },
    Spec { key: "remote.path", env: &["RCLONE_REMOTE_PATH"], default: Some(""), secret: false,
        doc: "Folder on the remote that mirrors the store's layout (the seed's kairon-backups)." },
    Spec { key: "remote.config", env: &["RCLONE_CONFIG"], default: None, secret: false,
        doc: "rclone config file (default: rclone's own, ~/.config/rclone/rclone.conf)." },
    Spec { key: "remote.flags", env: &["RCLONE_FLAGS"], default: None, secret: false,
        doc: "Extra rclone flags, shell-quoted (e.g. --s3-no-head --transfers 2)." },
    Spec { key: "remote.remotes", env: &["RCLONE_REMOTES"], default: None, secret: false,
        doc: "Several off-site destinations (3-2-1): comma-separated NAME:PATH (rclone remote and folder), each synced, checked and pruned on its own, after RCLONE_REMOTE_NAME's when both are set. TOML [[remote]] tables give each its own flags, prune and keep counts." },
    Spec { key: "remote.prune", env: &["BACKUP_REMOTE_PRUNE"], default: Some("true"), secret: false,
        doc: "false: never delete anything on the remote (write-only credentials, object lock); status says how many backups it holds beyond the retention policy." },
    Spec { key: "notify.timeout", env: &["BACKUP_NOTIFY_TIMEOUT"], default: Some("10s"), secret: false,
        doc: "Time budget per alert channel, retry included; a channel that is down never delays a job longer." },
    Spec { key: "notify.ntfy_url", env: &["NTFY_URL"], default: Some("https://ntfy.sh"), secret: false,
        doc: "ntfy server." },
    Spec { key: "notify.ntfy_topic", env: &["NTFY_TOPIC"], default: None, secret: false,
        doc: "ntfy topic; set to send ntfy alerts." },
    Spec { key: "notify.ntfy_token", env: &["NTFY_TOKEN"], default: None, secret: true,
        doc: "ntfy access token (Authorization: Bearer)." },
    Spec { key: "notify.ntfy_priority", env: &["NTFY_PRIORITY"], default: Some("high"), secret: false,
        doc: "ntfy priority of failure alerts (min, low, default, high, urgent)." },
    Spec { key: "notify.ntfy_tags", env: &["NTFY_TAGS"], default: Some("warning,floppy_disk"), secret: false,
        doc: "ntfy tags of failure alerts, comma-separated." },
    Spec { key: "notify.ntfy_on_success", env: &["NTFY_ON_SUCCESS"], default: Some("false"), secret: false,
        doc: "Also send ntfy a message after each successful backup." },
    Spec { key: "notify.slack_webhook_url", env: &["SLACK_WEBHOOK_URL"], default: None, secret: true,
        doc: "Slack incoming webhook for alerts." },
    Spec { key: "notify.slack_on_success", env: &["SLACK_ON_SUCCESS"], default: Some("false"), secret: false,
        doc: "Also post to Slack after each successful backup (size and duration, as the Kaizen seed)." },
    Spec { key: "notify.email_recipient", env: &["BACKUP_EMAIL_RECIPIENT"], default: None, secret: false,
        doc: "Email alerts to this address (comma-separated for several)." },
    Spec { key: "notify.email_from", env: &["BACKUP_EMAIL_FROM"], default: None, secret: false,
        doc: "Sender address (default kbackup@<host name>)." },
    Spec { key: "notify.smtp_host", env: &["BACKUP_SMTP_HOST"], default: Some("localhost"), secret: false,
        doc: "SMTP server." },
    Spec { key: "notify.smtp_port", env: &["BACKUP_SMTP_PORT"], default: Some("25"), secret: false,
        doc: "SMTP port (587 for STARTTLS submission, 465 for TLS)." },
    Spec { key: "notify.smtp_tls", env: &["BACKUP_SMTP_TLS"], default: Some("none"), secret: false,
        doc: "none (a local relay, like the seed's `mail`), starttls or tls." },
    Spec { key: "notify.smtp_user", env: &["BACKUP_SMTP_USER"], default: None, secret: false,
        doc: "SMTP login." },
    Spec { key: "notify.smtp_password", env: &["BACKUP_SMTP_PASSWORD"], default: None, secret: true,
        doc: "SMTP password." },
    Spec { key: "notify.email_on_success", env: &["BACKUP_EMAIL_ON_SUCCESS"], default: Some("false"), secret: false,
        doc: "Also email after each successful backup." },
    Spec { key: "notify.webhook_url", env: &["BACKUP_WEBHOOK_URL"], default: None, secret: true,
        doc: "POST a JSON event here on failures." },
    Spec { key: "notify.webhook_on_success", env: &["BACKUP_WEBHOOK_ON_SUCCESS"], default: Some("false"), secret: false,
        doc: "Also POST successes to the webhook." },
    Spec { key: "notify.healthcheck_url", env: &["BACKUP_HEALTHCHECK_URL"], default: None, secret: true,
        doc: "healthchecks.io-style ping URL: <url>/start when a backup starts, <url> on success, <url>/fail on failure." },
    Spec { key: "log.debug", env: &["DEBUG"], default: Some("false"), secret: false,
        doc: "Verbose logs, including every child command line (true/false)." },
    Spec { key: "log.format", env: &["BACKUP_LOG_FORMAT"], default: Some("text"), secret: false,
        doc: "Log format: text (the seed's `[YYYY-MM-DD HH:MM:SS] message`) or json." },
];

/// Where a value came from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "layer", rename_all = "snake_case")]
pub enum Source {
    Flag { flag: String },
    Env { var: String },
    DotEnv { path: PathBuf, var: String },
    Toml { path: PathBuf, key: String },
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag { flag } => write!(f, "flag {flag}"),
            Source::Env { var } => write!(f, "environment ({var})"),
            Source::DotEnv { path, var } => write!(f, ".env {} ({var})", path.display()),
            Source::Toml { path, key } => write!(f, "TOML {} ({key})", path.display()),
            Source::Default => write!(f, "default"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Raw {
    pub value: String,
    pub source: Source,
}

impl Raw {
    /// The name the user wrote: `BACKUP_KEEP_HOURLY`, `backup.keep_hourly`, `--db`.
    fn written_name(&self, spec: &Spec) -> String {
        match &self.source {
            Source::Flag { flag } => flag.clone(),
            Source::Env { var } | Source::DotEnv { var, .. } => var.clone(),
            Source::Toml { key, .. } => key.clone(),
            Source::Default => spec.env_name().to_string(),
        }
    }

    fn invalid(&self, spec: &Spec, expected: &str) -> anyhow::Error {
        // Never a secret in an error: secret settings, rclone flags (which
        // may hold keys), a URL's credentials.
        let shown = if spec.secret {
            "<redacted>".to_string()
        } else if spec.key == "remote.flags" {
            "(not shown: rclone flags may hold keys)".to_string()
        } else {
            format!("{:?}", crate::secrets::show_url(&self.value))
        };
        let from = match &self.source {
            Source::Flag { .. } => "the command line".to_string(),
            Source::Env { .. } => "the environment".to_string(),
            Source::DotEnv { path, .. } => format!(".env file {}", path.display()),
            Source::Toml { path, .. } => format!("TOML file {}", path.display()),
            Source::Default => "the default".to_string(),
        };
        usage(format!(
            "invalid setting {} = {shown} (from {from}): expected {expected}",
            self.written_name(spec)
        ))
    }
}

/// A password or token: never printed by Debug.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct DbConfig {
    pub name: String,
    pub user: String,
    pub password: Option<Secret>,
    pub host: Option<String>,
    pub port: u16,
    pub container: Option<String>,
    pub bin_dir: Option<PathBuf>,
    pub maintenance_db: String,
    /// Folders searched for other client versions (POSTGRES_CLIENT_PATHS).
    pub client_paths: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub backup_dir: PathBuf,
    pub prefix: String,
    pub db: DbConfig,
    pub policy: Policy,
    pub calendar: Calendar,
    pub compression_level: i32,
    pub timeout: Option<Duration>,
    pub log_format: LogFormat,
    pub debug: bool,
    /// ENVIRONMENT=production (or prod): restores warn loudly before replacing data.
    pub production: bool,
    /// pg_restore jobs (BACKUP_RESTORE_JOBS).
    pub restore_jobs: u32,
    /// Longest time a restore keeps its target closed (BACKUP_SWAP_TIMEOUT).
    pub swap_timeout: Duration,
    /// The age past which status is unhealthy (default twice BACKUP_INTERVAL).
    pub max_age: Duration,
    pub metrics_file: Option<PathBuf>,
    /// New backups are encrypted to these (BACKUP_AGE_RECIPIENTS[_FILE]).
    pub seal: Option<crate::crypto::Recipients>,
    /// The identity file that decrypts backups (BACKUP_AGE_IDENTITY, --identity).
    pub identity: Option<PathBuf>,
    /// What the manifest names (BACKUP_MANIFEST_DETAIL).
    pub manifest_detail: ManifestDetail,
    /// A separate server for `verify` (None: the backed-up server).
    pub verify_server: Option<DbConfig>,
    /// Off-site destinations, synced in this order (empty: none configured).
    pub remotes: Vec<RemoteConfig>,
    pub notify: NotifyConfig,
    /// `--backup-dir` names another store than the configured BACKUP_DIR.
    pub other_store: bool,
    /// The databases this run covers (this configuration is the only one's, or
    /// the template of `all`'s).
    pub databases: Databases,
    /// Every setting with its resolved value and source, for `kbackup config`.
    pub resolved: Vec<(&'static Spec, Option<Raw>)>,
    /// What the operator should fix but that does not stop the run (logged
    /// once logging is up): a secret in a file others can read.
    pub warnings: Vec<String>,
}

/// The databases a run covers.
#[derive(Debug, Clone)]
pub enum Databases {
    /// One database: the configuration it is in.
    One,
    /// Several, each with its own settings (DB_NAME=a,b or [[database]] tables).
    Several(Vec<Config>),
    /// DB_NAME=all: every database on the server that accepts connections,
    /// templates and `exclude` aside, found when a run starts. Those with a
    /// [[database]] table have its settings (`entries`); the others this
    /// configuration's, with their own name and prefix (`Config::for_database`).
    All {
        exclude: Vec<String>,
        entries: Vec<Config>,
    },
}

impl Config {
    /// The format new backups are written in: sealed when recipients are set.
    pub fn format(&self) -> crate::naming::Format {
        match self.seal {
            Some(_) => crate::naming::Format::CustomZstdAge,
            None => crate::naming::Format::CustomZstd,
        }
    }

    /// The off-site destination `from` names (by label or rclone remote name),
    /// or the first configured; `what` names the command for the error.
    pub fn remote(&self, from: Option<&str>, what: &str) -> Result<&RemoteConfig> {
        let labels = || {
            self.remotes
                .iter()
                .map(|r| r.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match from {
            _ if self.remotes.is_empty() => Err(usage(format!(
                "{what}: no remote configured; set RCLONE_REMOTE_NAME and RCLONE_REMOTE_PATH (or RCLONE_REMOTES)"
            ))),
            None => Ok(&self.remotes[0]),
            Some(f) => self
                .remotes
                .iter()
                .find(|r| r.label == f)
                .or_else(|| self.remotes.iter().find(|r| r.name == f))
                .ok_or_else(|| {
                    usage(format!(
                        "{what} --from {f}: no such off-site destination; configured: {}",
                        labels()
                    ))
                }),
        }
    }

    /// Applies `f` to this configuration and every database's in it.
    pub fn each_mut(&mut self, f: &mut dyn FnMut(&mut Config)) {
        f(self);
        match &mut self.databases {
            Databases::One => {}
            Databases::Several(each) | Databases::All { entries: each, .. } => {
                each.iter_mut().for_each(f)
            }
        }
    }

    /// The servers of the configured databases, each once (the first
    /// database's settings for each): where leftovers and kept copies live.
    pub fn servers(&self) -> Vec<DbConfig> {
        let mut out: Vec<DbConfig> = vec![self.db.clone()];
        let others = match &self.databases {
            Databases::One => &[][..],
            Databases::Several(each) | Databases::All { entries: each, .. } => &each[..],
        };
        for c in others {
            let same = |d: &DbConfig| {
                (&d.container, &d.host, d.port) == (&c.db.container, &c.db.host, c.db.port)
            };
            if !out.iter().any(same) {
                out.push(c.db.clone());
            }
        }
        out
    }

    /// More than one database, or `all`.
    pub fn several(&self) -> bool {
        !matches!(self.databases, Databases::One)
    }

    /// The configured databases, for messages: `app`, `app, n8n`, `all databases`.
    pub fn describe_databases(&self) -> String {
        match &self.databases {
            Databases::All { .. } => "all databases".into(),
            _ => self.db.name.clone(),
        }
    }

    /// The settings of database `name` found under DB_NAME=all: its
    /// [[database]] table's, or these with its name and prefix.
    pub fn for_database(&self, name: &str) -> Config {
        if let Databases::All { entries, .. } = &self.databases {
            if let Some(c) = entries.iter().find(|c| c.db.name == name) {
                return c.clone();
            }
        }
        let mut c = self.clone();
        c.databases = Databases::One;
        c.db.name = name.to_string();
        c.prefix = crate::naming::file_prefix(name);
        if let Some(v) = &mut c.verify_server {
            v.name = name.to_string();
        }
        c
    }
}

/// A warning when `path`, which holds a secret, can be read by group or others.
fn readable_by_others(path: &Path, what: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o044 != 0).then(|| {
        format!(
            "{} holds {what} and is readable by {} (mode {:o}): `chmod 600 {}`",
            path.display(),
            if mode & 0o004 != 0 {
                "every user"
            } else {
                "its group"
            },
            mode & 0o777,
            path.display()
        )
    })
}

/// How much a manifest names of the database (BACKUP_MANIFEST_DETAIL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestDetail {
    /// Every table with its row count, the roles, the database's properties.
    Full,
    /// Counts only: no table, role or property names.
    Minimal,
}

#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// How status, metrics (`remote` label), alerts and `--from` name it: the
    /// rclone remote's name, or NAME:PATH when two share a remote.
    pub label: String,
    pub name: String,
    pub path: String,
    pub config: Option<PathBuf>,
    pub flags: Vec<String>,
    /// Retention deletes on the remote (BACKUP_REMOTE_PRUNE); false: never.
    pub prune: bool,
    /// This destination's own keep counts (a `[[remote]]` table), over the database's.
    pub keep: Keep,
}

/// What every destination shares unless its `[[remote]]` table says
/// otherwise: RCLONE_FLAGS, BACKUP_REMOTE_PRUNE, RCLONE_CONFIG.
struct RemoteDefaults {
    flags: Vec<String>,
    prune: bool,
    config: Option<PathBuf>,
}

fn remote_defaults(values: &Values, cwd: &Path) -> Result<RemoteDefaults> {
    Ok(RemoteDefaults {
        flags: match values.raw("remote.flags") {
            Some((spec, raw)) => shlex::split(&raw.value)
                .ok_or_else(|| raw.invalid(spec, "shell-quoted rclone flags"))?,
            None => vec![],
        },
        prune: values
            .parse("remote.prune", "true or false", parse_bool)?
            .unwrap_or(true),
        config: values.string("remote.config").map(|c| cwd.join(c)),
    })
}

/// The `[[remote]]` tables as destinations: flags, rclone config and prune
/// not given in a table are the environment's (RCLONE_FLAGS...).
fn remotes_of_toml(
    path: &Path,
    entries: &[RemoteEntry],
    values: &Values,
    cwd: &Path,
) -> Result<Vec<RemoteConfig>> {
    let defaults = remote_defaults(values, cwd)?;
    entries
        .iter()
        .map(|e| {
            if e.name.trim().is_empty() {
                return Err(usage(format!(
                    "a [[remote]] table in {} has an empty name: give the rclone remote's name",
                    path.display()
                )));
            }
            Ok(RemoteConfig {
                label: e.label.clone().unwrap_or_default(),
                name: e.name.trim().trim_end_matches(':').to_string(),
                path: e.path.clone(),
                config: e
                    .config
                    .as_ref()
                    .map(|c| cwd.join(c))
                    .or_else(|| defaults.config.clone()),
                flags: match &e.flags {
                    // The text is not echoed: rclone flags may hold keys.
                    Some(f) => shlex::split(f).ok_or_else(|| {
                        usage(format!(
                            "[[remote]] {}'s flags in {}: not shell-quoted rclone flags \
                             (not shown: they may hold keys); check their quotes",
                            e.name,
                            path.display()
                        ))
                    })?,
                    None => defaults.flags.clone(),
                },
                prune: e.prune.unwrap_or(defaults.prune),
                keep: e.keep,
            })
        })
        .collect()
}

/// Gives each destination its label (its own, else the rclone remote's name,
/// else NAME:PATH when two share a remote); two destinations with one label
/// or one location are a usage error.
fn label_remotes(remotes: &mut [RemoteConfig]) -> Result<()> {
    // A connection string (`:s3,secret_access_key=...`, `remote,opt=value`)
    // would put its options, keys included, in rclone's argv and every log.
    if let Some(r) = remotes
        .iter()
        .find(|r| r.name.starts_with(':') || r.name.contains(','))
    {
        let backend = r.name.trim_start_matches(':');
        let backend = backend.split(',').next().unwrap_or_default();
        return Err(usage(format!(
            "the rclone remote {:?} is a connection string, whose options (keys included) would appear in \
             every process list and log: configure the remote with `rclone config` or in the environment \
             (RCLONE_CONFIG_<NAME>_TYPE={backend} and RCLONE_CONFIG_<NAME>_... for its options), then use its name",
            r.name.split(',').next().unwrap_or_default()
        )));
    }
    let names: Vec<String> = remotes.iter().map(|r| r.name.clone()).collect();
    for r in remotes.iter_mut().filter(|r| r.label.is_empty()) {
        r.label = if names.iter().filter(|n| **n == r.name).count() > 1 {
            r.root()
        } else {
            r.name.clone()
        };
    }
    // One location however it is written (`a:/x//y/`, `a:/x/./y`).
    let place = |r: &RemoteConfig| {
        let absolute = r.path.starts_with('/');
        let parts: Vec<&str> = r
            .path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        format!(
            "{}:{}{}",
            r.name,
            if absolute { "/" } else { "" },
            parts.join("/")
        )
    };
    for (i, r) in remotes.iter().enumerate() {
        if let Some(o) = remotes[..i].iter().find(|o| place(o) == place(r)) {
            return Err(usage(format!(
                "the off-site destination {} is configured twice ({} and {}): each destination once",
                r.root(),
                o.label,
                r.label
            )));
        }
        if remotes[..i].iter().any(|o| o.label == r.label) {
            return Err(usage(format!(
                "two off-site destinations are labelled {:?}: give each [[remote]] its own label",
                r.label
            )));
        }
    }
    Ok(())
}

/// Keep counts a destination sets for itself (None: the database's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Keep {
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
}

/// A `[[remote]]` table of the TOML file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteEntry {
    name: String,
    #[serde(default)]
    path: String,
    label: Option<String>,
    flags: Option<String>,
    config: Option<String>,
    prune: Option<bool>,
    #[serde(flatten)]
    keep: Keep,
}

impl RemoteConfig {
    /// The retention this destination applies: `base` (the database's) with
    /// its own keep counts over it.
    pub fn policy(&self, base: &Policy) -> Policy {
        Policy {
            keep_hourly: self.keep.keep_hourly.unwrap_or(base.keep_hourly),
            keep_daily: self.keep.keep_daily.unwrap_or(base.keep_daily),
            keep_weekly: self.keep.keep_weekly.unwrap_or(base.keep_weekly),
            keep_monthly: self.keep.keep_monthly.unwrap_or(base.keep_monthly),
            ..base.clone()
        }
    }

    /// `name:path`, as rclone names a location.
    pub fn root(&self) -> String {
        format!("{}:{}", self.name, self.path.trim_end_matches('/'))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    StartTls,
    Tls,
}

#[derive(Debug, Clone)]
pub struct Ntfy {
    pub url: String,
    pub topic: String,
    pub token: Option<Secret>,
    pub priority: String,
    pub tags: String,
    pub on_success: bool,
}

#[derive(Debug, Clone)]
pub struct Email {
    pub to: Vec<String>,
    pub from: Option<String>,
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub on_success: bool,
}

/// Alert channels; each is on when its address is set.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub timeout: Duration,
    pub ntfy: Option<Ntfy>,
    pub slack: Option<(Secret, bool)>,
    pub email: Option<Email>,
    pub webhook: Option<(Secret, bool)>,
    pub healthcheck: Option<Secret>,
}

/// What a run can still do when its settings are wrong: alert through the
/// channels that are set (an unattended job must not stop in silence), and
/// log to BACKUP_DIR's backup.log when that folder is known and exists.
pub struct Alerting {
    pub db: String,
    pub notify: NotifyConfig,
    pub log_dir: Option<PathBuf>,
}

/// Settings that cannot be used: the error (naming which files were read), and
/// how to alert about it when the alert settings themselves are usable.
pub struct LoadFailure {
    pub error: anyhow::Error,
    pub alerting: Option<Box<Alerting>>,
}

impl NotifyConfig {
    /// No channel at all (`--no-alerts`).
    pub fn off(timeout: Duration) -> NotifyConfig {
        NotifyConfig {
            timeout,
            ntfy: None,
            slack: None,
            email: None,
            webhook: None,
            healthcheck: None,
        }
    }
}

/// Loads the configuration from the real process environment.
pub fn load(global: &GlobalArgs) -> Result<Config, LoadFailure> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let cwd = std::env::current_dir().map_err(|e| LoadFailure {
        error: anyhow::Error::new(e).context("cannot read the current folder"),
        alerting: None,
    })?;
    load_or_alerting(global, &env, &cwd)
}

#[cfg(test)]
/// Loads the configuration from explicit inputs (the testable core of [`load`]).
pub fn load_from(global: &GlobalArgs, env: &HashMap<String, String>, cwd: &Path) -> Result<Config> {
    load_or_alerting(global, env, cwd).map_err(|f| f.error)
}

fn load_or_alerting(
    global: &GlobalArgs,
    env: &HashMap<String, String>,
    cwd: &Path,
) -> Result<Config, LoadFailure> {
    let plain = |error: anyhow::Error| LoadFailure {
        error,
        alerting: None,
    };
    let dotenv = read_dotenv(global, cwd).map_err(plain)?;
    let toml = read_toml(global, env, cwd).map_err(plain)?;
    let read_from = sources_text(&dotenv, &toml, cwd);
    let flags = flag_values(global);

    let mut resolved = Vec::with_capacity(SETTINGS.len());
    for spec in SETTINGS {
        let raw = resolve_one(spec, &flags, env, &dotenv, &toml)
            .map_err(|e| plain(with_sources(e, &read_from)))?;
        resolved.push((spec, raw));
    }
    // Every secret this run knows is redacted from whatever it prints: a
    // child's output, an error, an HTTP client's message.
    for (spec, raw) in &resolved {
        if let Some(raw) = raw {
            if spec.secret {
                crate::secrets::register(&raw.value);
            }
            crate::secrets::register_url_credentials(&raw.value);
        }
    }
    let values = Values(
        resolved
            .iter()
            .filter_map(|(s, r)| r.as_ref().map(|r| (s.key, (*s, r))))
            .collect(),
    );
    let alerting = build_notify(&values).ok().map(|notify| {
        Box::new(Alerting {
            db: values
                .string("database.name")
                .unwrap_or_else(|| "(no database name)".into()),
            notify,
            log_dir: values
                .string("backup.dir")
                .and_then(|d| store_dir(&d, cwd))
                .filter(|d| d.is_dir()),
        })
    });
    let entries = toml.as_ref().map(|t| t.entries.as_slice()).unwrap_or(&[]);
    let toml_path = toml.as_ref().map(|t| t.path.as_path());
    let extra_remotes = match &toml {
        Some(t) => remotes_of_toml(&t.path, &t.remotes, &values, cwd),
        None => Ok(vec![]),
    };
    let mut config = extra_remotes
        .and_then(|extra| {
            let mut config = build_all(resolved, entries, toml_path, cwd)?;
            let mut all = config.remotes.clone();
            all.extend(extra);
            label_remotes(&mut all)?;
            config.each_mut(&mut |c| c.remotes = all.clone());
            Ok(config)
        })
        .map_err(|e| LoadFailure {
            error: with_sources(e, &read_from),
            alerting,
        })?;
    config.warnings.extend(near_misses(env, &dotenv));
    // `--backup-dir` naming another store than the configured one: a scratch
    // run, which must not sync to (and apply retention on) the real remote.
    if global.backup_dir.is_some() {
        let spec = SETTINGS
            .iter()
            .find(|s| s.key == "backup.dir")
            .expect("backup.dir is a setting");
        let configured = resolve_one(spec, &HashMap::new(), env, &dotenv, &toml)
            .ok()
            .flatten()
            .and_then(|r| store_dir(r.value.trim(), cwd));
        let other = configured.as_ref() != Some(&config.backup_dir);
        config.each_mut(&mut |c| c.other_store = other);
    }
    if global.no_alerts {
        config.each_mut(&mut |c| c.notify = NotifyConfig::off(c.notify.timeout));
        config
            .warnings
            .push("--no-alerts: this run sends no alert, whatever happens".into());
    }
    Ok(config)
}

/// Names in a list setting (DB_NAME, BACKUP_EXCLUDE): separated by commas,
/// each trimmed; a name in double quotes is taken whole, commas and spaces
/// included (`""` inside is one quote). Empty items are skipped.
pub fn parse_names(text: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut name = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => name.push('"'),
                    Some('"') => break,
                    Some(c) => name.push(c),
                    None => return Err(format!("a name in double quotes is not closed: {text:?}")),
                }
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if !matches!(chars.peek(), None | Some(',')) {
                return Err(format!(
                    "text after a quoted name: {text:?} (separate names with commas)"
                ));
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                name.push(c);
            }
            name = name.trim().to_string();
        }
        if !name.is_empty() {
            names.push(name);
        }
        if chars.next().is_none() {
            return Ok(names);
        }
    }
}

/// The resolved settings with one `[[database]]` table's values in front of
/// every layer but the command line's.
fn with_entry(
    resolved: &[(&'static Spec, Option<Raw>)],
    entry: &Entry,
    toml_path: &Path,
) -> Vec<(&'static Spec, Option<Raw>)> {
    let mut out = resolved.to_vec();
    for (spec, raw) in out.iter_mut() {
        let Some(value) = entry.values.get(spec.key) else {
            // A password file given for this database beats a shared password.
            if spec.key == "database.password"
                && entry.values.contains_key("database.password_file")
            {
                *raw = None;
            }
            continue;
        };
        if matches!(
            raw,
            Some(Raw {
                source: Source::Flag { .. },
                ..
            })
        ) {
            continue;
        }
        let short = spec.key.split_once('.').map_or(spec.key, |(_, k)| k);
        *raw = Some(Raw {
            value: value.clone(),
            source: Source::Toml {
                path: toml_path.to_path_buf(),
                key: format!("[[database]] {:?} {short}", entry.name),
            },
        });
    }
    out
}

/// Builds the settings of every configured database (see [`Databases`]).
fn build_all(
    resolved: Vec<(&'static Spec, Option<Raw>)>,
    entries: &[Entry],
    toml_path: Option<&Path>,
    cwd: &Path,
) -> Result<Config> {
    let get = |key: &str| {
        resolved
            .iter()
            .find(|(s, _)| s.key == key)
            .and_then(|(s, r)| Some((*s, r.clone()?)))
    };
    for (i, e) in entries.iter().enumerate() {
        if entries[..i].iter().any(|o| o.name == e.name) {
            return Err(usage(format!(
                "two [[database]] tables name {:?}: merge them into one",
                e.name
            )));
        }
    }
    let list = |key: &str| -> Result<Option<Vec<String>>> {
        match get(key) {
            None => Ok(None),
            Some((spec, raw)) => parse_names(&raw.value).map(Some).map_err(|why| {
                raw.invalid(spec, &format!("database names separated by commas ({why})"))
            }),
        }
    };
    // `--db NAME` names one database, as written: never a list, never `all`.
    let flag = get("database.name").filter(|(_, r)| matches!(r.source, Source::Flag { .. }));
    let all = flag.is_none() && get("database.name").is_some_and(|(_, r)| r.value.trim() == "all");
    let names = if all {
        vec![]
    } else if let Some((_, r)) = &flag {
        vec![r.value.clone()]
    } else {
        match list("database.name")? {
            Some(n) if !n.is_empty() => n,
            _ if !entries.is_empty() => entries.iter().map(|e| e.name.clone()).collect(),
            _ => {
                return Err(usage(
                    "missing database name: set DB_NAME (or POSTGRES_DB) in the environment or .env \
                     (a name, a comma-separated list, or all), `name` under [database] or [[database]] \
                     tables in the TOML file, or pass --db NAME",
                ))
            }
        }
    };
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(usage(format!(
                "the database {n:?} is listed twice in DB_NAME; list each database once"
            )));
        }
    }
    let exclude = list("backup.exclude")?.unwrap_or_default();
    let several = all || names.len() > 1;
    let one = |name: &str| -> Result<Config> {
        let entry = entries.iter().find(|e| e.name == name);
        let r = match (entry, toml_path) {
            (Some(e), Some(p)) => with_entry(&resolved, e, p),
            _ => resolved.clone(),
        };
        let own_prefix = entry.is_some_and(|e| e.values.contains_key("backup.prefix"));
        if let (true, false, Some((spec, raw))) = (several, own_prefix, get("backup.prefix")) {
            return Err(usage(format!(
                "{} = {:?} would give every configured database the same file names; unset it (each database's \
                 prefix is then its name) or give each database its own `prefix` in a [[database]] table",
                raw.written_name(spec),
                raw.value
            )));
        }
        build(r, name.to_string(), cwd)
    };
    let mut top = match names.as_slice() {
        [name] => one(name)?,
        _ if all => {
            if let Some((spec, raw)) = get("backup.prefix") {
                return Err(usage(format!(
                    "{} = {:?} would give every database of DB_NAME=all the same file names; unset it \
                     (each database's prefix is then its name) or give a database its own `prefix` in a \
                     [[database]] table",
                    raw.written_name(spec),
                    raw.value
                )));
            }
            let mut top = build(resolved.clone(), "all".into(), cwd)?;
            let entries = entries
                .iter()
                .map(|e| one(&e.name))
                .collect::<Result<Vec<_>>>()?;
            top.databases = Databases::All { exclude, entries };
            top
        }
        _ => {
            let each = names.iter().map(|n| one(n)).collect::<Result<Vec<_>>>()?;
            for (i, c) in each.iter().enumerate() {
                if let Some(o) = each[..i].iter().find(|o| o.prefix == c.prefix) {
                    return Err(usage(format!(
                        "the databases {:?} and {:?} would share the file prefix {:?}; give one of them \
                         another `prefix` in its [[database]] table",
                        o.db.name, c.db.name, c.prefix
                    )));
                }
            }
            let mut top = each[0].clone();
            top.db.name = names.join(", ");
            top.databases = Databases::Several(each);
            top
        }
    };
    if !all && flag.is_none() && get("backup.exclude").is_some() {
        top.warnings.push(
            "BACKUP_EXCLUDE is read only with DB_NAME=all; it is ignored for a list of databases"
                .into(),
        );
    }
    let mut warnings = std::mem::take(&mut top.warnings);
    top.each_mut(&mut |c| warnings.append(&mut c.warnings));
    warnings.sort();
    warnings.dedup();
    top.warnings = warnings;
    Ok(top)
}

/// Which files the settings came from, for every settings error: a cron job
/// started in another folder finds no `./.env`, and says so.
fn sources_text(dotenv: &Option<DotEnv>, toml: &Option<TomlLayer>, cwd: &Path) -> String {
    let env_file = match dotenv {
        Some(d) => format!(".env file {}", d.path.display()),
        None => format!(
            "no .env file (none in the current folder {}: cron starts jobs in the home folder; \
             `cd` to the .env's folder first or pass --env-file)",
            cwd.display()
        ),
    };
    let toml = match toml {
        Some(t) => format!("TOML file {}", t.path.display()),
        None => "no TOML file".into(),
    };
    format!("settings read from the environment, {env_file}, {toml}")
}

/// Names kbackup never reads but that share a .env with it legitimately: the
/// official postgres image's own settings.
const FOREIGN: &[&str] = &[
    "POSTGRES_INITDB_ARGS",
    "POSTGRES_INITDB_WALDIR",
    "POSTGRES_HOST_AUTH_METHOD",
];

/// Prefixes of kbackup's own names: an unknown name with one of them is most
/// likely a misspelling.
const OWN_PREFIXES: &[&str] = &["BACKUP_", "KBACKUP_", "NTFY_", "RCLONE_REMOTE", "POSTGRES_"];

/// The setting `name` (not a known one) probably meant, if it is a near miss:
/// within 2 edits of a known name, or 3 when it carries one of kbackup's prefixes.
pub fn probably_meant(name: &str) -> Option<&'static str> {
    if name.len() < 5 || FOREIGN.contains(&name) {
        return None;
    }
    let known = SETTINGS.iter().flat_map(|s| s.env.iter().copied());
    if known.clone().any(|k| k == name) {
        return None;
    }
    // No edit distance is within 3 when the lengths differ by more.
    let (best, distance) = known
        .filter(|k| k.len().abs_diff(name.len()) <= 3)
        .map(|k| (k, strsim::damerau_levenshtein(name, k)))
        .min_by_key(|(_, d)| *d)?;
    let own = OWN_PREFIXES.iter().any(|p| name.starts_with(p));
    (distance <= 2 || (own && distance <= 3)).then_some(best)
}

/// A warning for every near miss in the environment and the .env file.
fn near_misses(env: &HashMap<String, String>, dotenv: &Option<DotEnv>) -> Vec<String> {
    let mut out: Vec<String> = env
        .keys()
        .map(|k| (k, "the environment".to_string()))
        .chain(
            dotenv
                .iter()
                .flat_map(|d| d.vars.keys().map(|k| (k, d.path.display().to_string()))),
        )
        .filter_map(|(name, place)| {
            probably_meant(name).map(|meant| {
                format!("{name} (in {place}) is not a kbackup setting and is ignored: did you mean {meant}?")
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The error with where the settings came from; its exit code unchanged.
fn with_sources(e: anyhow::Error, read_from: &str) -> anyhow::Error {
    match crate::error::exit_kind(&e) {
        crate::error::ExitKind::Usage => usage(format!("{e:#} ({read_from})")),
        _ => e.context(read_from.to_string()),
    }
}

fn flag_values(g: &GlobalArgs) -> HashMap<&'static str, (String, &'static str)> {
    let mut m = HashMap::new();
    if let Some(v) = &g.backup_dir {
        m.insert("backup.dir", (v.clone(), "--backup-dir"));
    }
    if let Some(v) = &g.database {
        m.insert("database.name", (v.clone(), "--db"));
    }
    if let Some(v) = &g.container {
        m.insert("database.container", (v.clone(), "--container"));
    }
    if let Some(v) = &g.identity {
        m.insert(
            "backup.age_identity",
            (v.display().to_string(), "--identity"),
        );
    }
    if let Some(v) = g.log_format {
        let s = match v {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        m.insert("log.format", (s.to_string(), "--log-format"));
    }
    if g.debug {
        m.insert("log.debug", ("true".to_string(), "--debug"));
    }
    m
}

struct DotEnv {
    path: PathBuf,
    vars: HashMap<String, String>,
}

fn read_dotenv(global: &GlobalArgs, cwd: &Path) -> Result<Option<DotEnv>> {
    let (path, explicit) = match &global.env_file {
        Some(p) => (cwd.join(p), true),
        None => (cwd.join(".env"), false),
    };
    if !path.exists() {
        if explicit {
            return Err(usage(format!(
                "--env-file {}: no such file; give the path of an existing .env file",
                path.display()
            )));
        }
        return Ok(None);
    }
    let iter = dotenvy::from_path_iter(&path)
        .map_err(|e| usage(format!("cannot read .env file {}: {e}", path.display())))?;
    let mut vars = HashMap::new();
    for item in iter {
        let (k, v) = item.map_err(|e| {
            // The line itself is never shown: it may be a secret (the
            // application shares this file).
            let at = match &e {
                dotenvy::Error::LineParse(line, _) => std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.lines().position(|l| l.contains(line.as_str())))
                    .map(|n| format!(" at line {}", n + 1))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            usage(format!(
                "invalid line in .env file {}{at}: not NAME=value (a value with spaces needs quotes); \
                 the line is not shown here, it may hold a secret",
                path.display()
            ))
        })?;
        vars.insert(k, v);
    }
    Ok(Some(DotEnv { path, vars }))
}

struct TomlLayer {
    path: PathBuf,
    values: HashMap<String, String>,
    /// `[[database]]` tables, in the file's order.
    entries: Vec<Entry>,
    /// `[[remote]]` tables, in the file's order.
    remotes: Vec<RemoteEntry>,
}

fn read_toml(
    global: &GlobalArgs,
    env: &HashMap<String, String>,
    cwd: &Path,
) -> Result<Option<TomlLayer>> {
    let (path, how) = match (
        &global.config,
        env.get("KBACKUP_CONFIG").filter(|v| !v.is_empty()),
    ) {
        (Some(p), _) => (cwd.join(p), "--config"),
        (None, Some(p)) => (cwd.join(p), "KBACKUP_CONFIG"),
        (None, None) => return Ok(None),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        usage(format!(
            "{how} {}: cannot read the settings file: {e}",
            path.display()
        ))
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        // The message without the quoted line, which may hold a secret.
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
            .map(|n| format!(" at line {n}"))
            .unwrap_or_default();
        usage(format!(
            "{how} {}: not valid TOML{line}: {} (the line is not shown here, it may hold a secret)",
            path.display(),
            e.message()
        ))
    })?;
    let mut values = HashMap::new();
    let mut entries = Vec::new();
    let mut remotes = Vec::new();
    for (section, inner) in &table {
        if let (toml::Value::Array(tables), "remote") = (inner, section.as_str()) {
            for (i, t) in tables.iter().enumerate() {
                remotes.push(t.clone().try_into::<RemoteEntry>().map_err(|e| {
                    usage(format!(
                        "[[remote]] number {} in {}: {e} (keys: name, path, label, flags, config, prune, \
                         keep_hourly, keep_daily, keep_weekly, keep_monthly)",
                        i + 1,
                        path.display()
                    ))
                })?);
            }
            continue;
        }
        if let (toml::Value::Array(tables), "database") = (inner, section.as_str()) {
            for (i, t) in tables.iter().enumerate() {
                entries.push(read_entry(&path, i + 1, t)?);
            }
            continue;
        }
        let toml::Value::Table(inner) = inner else {
            return Err(unknown_toml_key(&path, section));
        };
        for (name, value) in inner {
            let key = format!("{section}.{name}");
            if !SETTINGS.iter().any(|s| s.key == key) {
                return Err(unknown_toml_key(&path, &key));
            }
            values.insert(key.clone(), toml_scalar(&path, &key, value)?);
        }
    }
    Ok(Some(TomlLayer {
        path,
        values,
        entries,
        remotes,
    }))
}

fn toml_scalar(path: &Path, key: &str, value: &toml::Value) -> Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Float(f) => f.to_string(),
        // A list of public keys.
        toml::Value::Array(items)
            if key == "backup.age_recipients" && items.iter().all(|i| i.is_str()) =>
        {
            items
                .iter()
                .filter_map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(",")
        }
        other => {
            return Err(usage(format!(
                "invalid setting {key} = {other} in {}: expected a single value",
                path.display()
            )))
        }
    })
}

/// The keys a `[[database]]` table may set, each the name of the setting it
/// overrides for that database.
const ENTRY_KEYS: &[(&str, &str)] = &[
    ("name", "database.name"),
    ("user", "database.user"),
    ("password", "database.password"),
    ("password_file", "database.password_file"),
    ("host", "database.host"),
    ("port", "database.port"),
    ("container", "database.container"),
    ("bin_dir", "database.bin_dir"),
    ("maintenance_db", "database.maintenance_db"),
    ("prefix", "backup.prefix"),
    ("keep_hourly", "backup.keep_hourly"),
    ("keep_daily", "backup.keep_daily"),
    ("keep_weekly", "backup.keep_weekly"),
    ("keep_monthly", "backup.keep_monthly"),
    ("retention_days", "backup.retention_days"),
    ("retention_count", "backup.retention_count"),
];

/// One `[[database]]` table: a database and the settings it overrides.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    /// Setting key (`backup.keep_hourly`) -> value.
    values: BTreeMap<&'static str, String>,
}

fn read_entry(path: &Path, n: usize, value: &toml::Value) -> Result<Entry> {
    let toml::Value::Table(t) = value else {
        return Err(usage(format!(
            "[[database]] number {n} in {} is not a table: write `[[database]]` followed by `name = \"...\"` lines",
            path.display()
        )));
    };
    let mut values = BTreeMap::new();
    for (k, v) in t {
        let Some((_, key)) = ENTRY_KEYS.iter().find(|(e, _)| e == k) else {
            let known: Vec<&str> = ENTRY_KEYS.iter().map(|(e, _)| *e).collect();
            return Err(usage(format!(
                "unknown key `{k}` in [[database]] number {n} in {}: a [[database]] table may set {}",
                path.display(),
                known.join(", ")
            )));
        };
        values.insert(*key, toml_scalar(path, &format!("database.{k}"), v)?);
    }
    let name = values.get("database.name").cloned().ok_or_else(|| {
        usage(format!(
            "[[database]] number {n} in {} has no name: add `name = \"...\"`",
            path.display()
        ))
    })?;
    Ok(Entry { name, values })
}

fn unknown_toml_key(path: &Path, key: &str) -> anyhow::Error {
    let known: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
    usage(format!(
        "unknown setting `{key}` in {}: remove it or fix its spelling; known settings are: {}",
        path.display(),
        known.join(", ")
    ))
}

/// Looks a setting up in one name→value layer; two of its names with different
/// values in the same layer is an error (e.g. DB_NAME and POSTGRES_DB).
fn lookup_names(
    spec: &Spec,
    vars: &HashMap<String, String>,
    layer: &str,
) -> Result<Option<(String, &'static str)>> {
    let mut found: Option<(String, &'static str)> = None;
    for name in spec.env {
        let Some(v) = vars.get(*name).filter(|v| !v.is_empty()) else {
            continue;
        };
        match &found {
            Some((prev, prev_name)) if prev != v => {
                return Err(usage(format!(
                    "conflicting settings in {layer}: {prev_name} and {name} differ; set only one of them"
                )))
            }
            Some(_) => {}
            None => found = Some((v.clone(), name)),
        }
    }
    Ok(found)
}

fn resolve_one(
    spec: &'static Spec,
    flags: &HashMap<&'static str, (String, &'static str)>,
    env: &HashMap<String, String>,
    dotenv: &Option<DotEnv>,
    toml: &Option<TomlLayer>,
) -> Result<Option<Raw>> {
    if let Some((v, flag)) = flags.get(spec.key) {
        return Ok(Some(Raw {
            value: v.clone(),
            source: Source::Flag {
                flag: flag.to_string(),
            },
        }));
    }
    if let Some((v, var)) = lookup_names(spec, env, "the environment")? {
        return Ok(Some(Raw {
            value: v,
            source: Source::Env {
                var: var.to_string(),
            },
        }));
    }
    if let Some(d) = dotenv {
        if let Some((v, var)) = lookup_names(spec, &d.vars, &d.path.display().to_string())? {
            return Ok(Some(Raw {
                value: v,
                source: Source::DotEnv {
                    path: d.path.clone(),
                    var: var.to_string(),
                },
            }));
        }
    }
    if let Some(t) = toml {
        if let Some(v) = t.values.get(spec.key) {
            return Ok(Some(Raw {
                value: v.clone(),
                source: Source::Toml {
                    path: t.path.clone(),
                    key: spec.key.to_string(),
                },
            }));
        }
    }
    Ok(spec.default.map(|d| Raw {
        value: d.to_string(),
        source: Source::Default,
    }))
}

/// Typed access to the resolved values, each parse error naming its setting.
struct Values<'a>(BTreeMap<&'static str, (&'static Spec, &'a Raw)>);

impl<'a> Values<'a> {
    fn raw(&self, key: &str) -> Option<(&'static Spec, &'a Raw)> {
        self.0.get(key).copied()
    }

    fn string(&self, key: &str) -> Option<String> {
        self.raw(key).map(|(_, r)| r.value.trim().to_string())
    }

    fn parse<T>(
        &self,
        key: &str,
        expected: &str,
        f: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.raw(key) {
            None => Ok(None),
            Some((spec, raw)) => f(raw.value.trim())
                .map(Some)
                .ok_or_else(|| raw.invalid(spec, expected)),
        }
    }

    fn count(&self, key: &str) -> Result<Option<u32>> {
        self.parse(key, "a whole number, 0 or more", |s| s.parse::<u32>().ok())
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// The settings of database `name` (the values already resolved for it).
fn build(resolved: Vec<(&'static Spec, Option<Raw>)>, name: String, cwd: &Path) -> Result<Config> {
    let values = Values(
        resolved
            .iter()
            .filter_map(|(s, r)| r.as_ref().map(|r| (s.key, (*s, r))))
            .collect(),
    );
    let user = values
        .string("database.user")
        .unwrap_or_else(|| "postgres".into());
    let port = values
        .parse("database.port", "a TCP port number (1-65535)", |s| {
            s.parse::<u16>().ok().filter(|p| *p > 0)
        })?
        .unwrap_or(5432);
    let password = match values.string("database.password") {
        Some(p) => Some(Secret(p)),
        None => match values.string("database.password_file") {
            Some(file) => {
                let path = cwd.join(&file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    usage(format!(
                        "POSTGRES_PASSWORD_FILE {}: cannot read the password file: {e}",
                        path.display()
                    ))
                })?;
                Some(Secret(text.trim_end_matches(['\n', '\r']).to_string()))
            }
            None => None,
        },
    };
    let db = DbConfig {
        name: name.clone(),
        user,
        password,
        host: values.string("database.host"),
        port,
        container: values.string("database.container"),
        bin_dir: values.string("database.bin_dir").map(|d| cwd.join(d)),
        maintenance_db: values
            .string("database.maintenance_db")
            .unwrap_or_else(|| "postgres".into()),
        client_paths: values
            .string("database.client_paths")
            .unwrap_or_default()
            .split(':')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                cwd.join(expand_home(p).unwrap_or_else(|| p.into()))
                    .display()
                    .to_string()
            })
            .collect(),
    };

    let dir = values
        .string("backup.dir")
        .unwrap_or_else(|| "backups".into());
    let backup_dir = store_dir(&dir, cwd).ok_or_else(|| {
        usage(format!(
            "invalid setting BACKUP_DIR = {dir:?}: `~` needs HOME to be set"
        ))
    })?;

    let prefix = values
        .string("backup.prefix")
        .unwrap_or_else(|| crate::naming::file_prefix(&name));
    if prefix.is_empty() || prefix.contains('/') || prefix.starts_with('.') {
        return Err(usage(format!(
            "invalid file name prefix {prefix:?} (BACKUP_PREFIX, default the database name): \
             it must be non-empty, without '/', and not start with '.'; set BACKUP_PREFIX"
        )));
    }

    let policy = Policy {
        keep_hourly: values.count("backup.keep_hourly")?.unwrap_or(24),
        keep_daily: values.count("backup.keep_daily")?.unwrap_or(7),
        keep_weekly: values.count("backup.keep_weekly")?.unwrap_or(4),
        keep_monthly: values.count("backup.keep_monthly")?.unwrap_or(0),
        max_age_days: values.count("backup.retention_days")?.filter(|d| *d > 0),
        keep_named: values.count("backup.retention_count")?,
    };
    if policy.keep_hourly + policy.keep_daily + policy.keep_weekly + policy.keep_monthly == 0 {
        return Err(usage(
            "BACKUP_KEEP_HOURLY, BACKUP_KEEP_DAILY, BACKUP_KEEP_WEEKLY and BACKUP_KEEP_MONTHLY are all 0: \
             every backup but the newest would be deleted; keep at least one tier",
        ));
    }

    let week_start = values
        .parse(
            "backup.week_start",
            "a day name: sunday or monday",
            |s| match s.to_ascii_lowercase().as_str() {
                "sunday" | "sun" => Some(Weekday::Sun),
                "monday" | "mon" => Some(Weekday::Mon),
                _ => None,
            },
        )?
        .unwrap_or(Weekday::Sun);
    let zone = values
        .parse(
            "backup.timezone",
            "an IANA time zone name such as Europe/Berlin or UTC",
            |s| s.parse::<chrono_tz::Tz>().ok().map(Zone::Named),
        )?
        .unwrap_or(Zone::Local);
    let compression_level = values
        .parse(
            "backup.compression_level",
            "a zstd level from 1 to 19",
            |s| s.parse::<i32>().ok().filter(|l| (1..=19).contains(l)),
        )?
        .unwrap_or(1);
    let timeout = values.parse("backup.timeout", "a duration such as 90m or 2h", |s| {
        humantime::parse_duration(s).ok().filter(|d| !d.is_zero())
    })?;
    let debug = values
        .parse("log.debug", "true or false", parse_bool)?
        .unwrap_or(false);
    let log_format = values
        .parse("log.format", "text or json", |s| match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        })?
        .unwrap_or(LogFormat::Text);

    let duration = |key: &str| {
        values.parse(key, "a duration such as 90m, 1h or 2d", |s| {
            humantime::parse_duration(s).ok().filter(|d| !d.is_zero())
        })
    };
    let interval = duration("backup.interval")?.unwrap_or(Duration::from_secs(3600));
    let max_age = duration("backup.max_age")?.unwrap_or(interval * 2);
    let swap_timeout =
        duration("restore.swap_timeout")?.expect("restore.swap_timeout has a default");
    let metrics_file = values.string("backup.metrics_file").map(|f| cwd.join(f));
    let seal = {
        let mut keys: Vec<String> = values
            .string("backup.age_recipients")
            .map(|s| s.split([',', '\n']).map(String::from).collect())
            .unwrap_or_default();
        let file = values
            .string("backup.age_recipients_file")
            .map(|f| cwd.join(expand_home(&f).unwrap_or_else(|| f.into())));
        if let Some(f) = &file {
            keys.extend(crate::crypto::Recipients::read_file(f)?);
        }
        if keys.iter().all(|k| k.trim().is_empty())
            && values.string("backup.age_recipients").is_none()
            && file.is_none()
        {
            None
        } else {
            let from = match &file {
                Some(f) => format!("BACKUP_AGE_RECIPIENTS / {}", f.display()),
                None => "BACKUP_AGE_RECIPIENTS".to_string(),
            };
            Some(crate::crypto::Recipients::parse(&keys, &from)?)
        }
    };
    let identity = match values.string("backup.age_identity") {
        // The key itself where a file's path goes: refused, never echoed.
        Some(f) if f.contains("AGE-SECRET-KEY-") || f.contains("PRIVATE KEY") => {
            crate::secrets::register(&f);
            return Err(usage(
                "BACKUP_AGE_IDENTITY (or --identity) holds a secret key itself, not the path of a file: \
                 write the key to a file readable only by you (chmod 600) and give its path",
            ));
        }
        Some(f) => Some(cwd.join(expand_home(&f).unwrap_or_else(|| f.into()))),
        None => None,
    };
    let manifest_detail = values
        .parse("backup.manifest_detail", "full or minimal", |s| {
            match s.to_ascii_lowercase().as_str() {
                "full" => Some(ManifestDetail::Full),
                "minimal" => Some(ManifestDetail::Minimal),
                _ => None,
            }
        })?
        .unwrap_or(ManifestDetail::Full);
    let verify_port = values.parse("verify.port", "a TCP port number (1-65535)", |s| {
        s.parse::<u16>().ok().filter(|p| *p > 0)
    })?;
    let verify_host = values.string("verify.host");
    let verify_container = values.string("verify.container");
    let verify_server = (verify_host.is_some()
        || verify_container.is_some()
        || verify_port.is_some())
    .then(|| DbConfig {
        name: db.name.clone(),
        user: values
            .string("verify.user")
            .unwrap_or_else(|| db.user.clone()),
        password: values.string("verify.password").map(Secret),
        host: verify_host,
        port: verify_port.unwrap_or(5432),
        container: verify_container,
        bin_dir: db.bin_dir.clone(),
        maintenance_db: db.maintenance_db.clone(),
        client_paths: db.client_paths.clone(),
    });
    let remotes = {
        let d = remote_defaults(&values, cwd)?;
        let one = |name: &str, path: String| RemoteConfig {
            label: String::new(),
            name: name.trim_end_matches(':').to_string(),
            path,
            config: d.config.clone(),
            flags: d.flags.clone(),
            prune: d.prune,
            keep: Keep::default(),
        };
        let mut remotes = Vec::new();
        if let Some(name) = values.string("remote.name") {
            remotes.push(one(&name, values.string("remote.path").unwrap_or_default()));
        }
        if let Some((spec, raw)) = values.raw("remote.remotes") {
            for item in raw
                .value
                .split(',')
                .map(str::trim)
                .filter(|i| !i.is_empty())
            {
                let (name, path) = item.split_once(':').ok_or_else(|| {
                    raw.invalid(
                        spec,
                        "comma-separated NAME:PATH destinations (gdrive:kairon-backups)",
                    )
                })?;
                if name.trim().is_empty() {
                    return Err(raw.invalid(spec, "NAME:PATH destinations with a remote name"));
                }
                remotes.push(one(name.trim(), path.trim().to_string()));
            }
        }
        remotes
    };
    let notify = build_notify(&values)?;
    let restore_jobs = values
        .parse("restore.jobs", "a whole number of jobs, 1 or more", |s| {
            s.parse::<u32>().ok().filter(|n| *n >= 1)
        })?
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        });
    let production = values
        .string("restore.environment")
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "production" | "prod"));
    let mut warnings: Vec<String> = Vec::new();
    if let Some(f) = values.string("database.password_file") {
        warnings.extend(readable_by_others(&cwd.join(f), "the database password"));
    }
    if let Some(f) = &identity {
        warnings.extend(readable_by_others(
            f,
            "the age identity that decrypts backups",
        ));
    }
    for (spec, raw) in &resolved {
        if let Some(Raw {
            source: Source::DotEnv { path, var },
            ..
        }) = raw
        {
            if spec.secret {
                warnings.extend(readable_by_others(path, &format!("a secret ({var})")));
            }
        }
    }
    warnings.sort();
    warnings.dedup();
    // Keep provenance for `kbackup config`, but never a secret's value.
    let resolved = resolved
        .into_iter()
        .map(|(spec, raw)| {
            let raw = raw.map(|r| {
                let value = if spec.secret {
                    "<redacted>".into()
                } else if spec.key == "remote.flags" {
                    crate::secrets::show_rclone_flags(&shlex::split(&r.value).unwrap_or_default())
                } else if spec.key.ends_with("_url") {
                    crate::secrets::show_url(&r.value)
                } else {
                    r.value.clone()
                };
                Raw { value, ..r }
            });
            (spec, raw)
        })
        .collect();
    Ok(Config {
        backup_dir,
        prefix,
        db,
        policy,
        calendar: Calendar { zone, week_start },
        compression_level,
        timeout,
        log_format,
        debug,
        production,
        restore_jobs,
        swap_timeout,
        max_age,
        metrics_file,
        remotes,
        seal,
        identity,
        manifest_detail,
        verify_server,
        notify,
        resolved,
        warnings,
        other_store: false,
        databases: Databases::One,
    })
}

/// The alert channels alone: built first, so that a failure anywhere else in
/// the settings can still be alerted on (see [`load`]).
fn build_notify(values: &Values) -> Result<NotifyConfig> {
    let duration = |key: &str| {
        values.parse(key, "a duration such as 90m, 1h or 2d", |s| {
            humantime::parse_duration(s).ok().filter(|d| !d.is_zero())
        })
    };
    let flag = |key: &str| -> Result<bool> {
        Ok(values
            .parse(key, "true or false", parse_bool)?
            .unwrap_or(false))
    };
    let url = |key: &str| -> Result<Option<String>> {
        values.parse(key, "an http:// or https:// URL", |s| {
            reqwest::Url::parse(s)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .map(|_| s.to_string())
        })
    };
    let ntfy = match values.string("notify.ntfy_topic") {
        Some(topic) => Some(Ntfy {
            url: url("notify.ntfy_url")?.unwrap_or_else(|| "https://ntfy.sh".into()),
            topic,
            token: values.string("notify.ntfy_token").map(Secret),
            priority: values
                .parse(
                    "notify.ntfy_priority",
                    "min, low, default, high, urgent or 1-5",
                    |s| {
                        matches!(
                            s,
                            "min"
                                | "low"
                                | "default"
                                | "high"
                                | "urgent"
                                | "max"
                                | "1"
                                | "2"
                                | "3"
                                | "4"
                                | "5"
                        )
                        .then(|| s.to_string())
                    },
                )?
                .unwrap_or_else(|| "high".into()),
            tags: values.string("notify.ntfy_tags").unwrap_or_default(),
            on_success: flag("notify.ntfy_on_success")?,
        }),
        None => None,
    };
    let email = match values.raw("notify.email_recipient") {
        Some((spec, raw)) => {
            let to: Vec<String> = raw
                .value
                .split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect();
            if to.is_empty()
                || to
                    .iter()
                    .any(|a| a.parse::<lettre::message::Mailbox>().is_err())
            {
                return Err(raw.invalid(spec, "email addresses, comma-separated"));
            }
            let from = values.parse("notify.email_from", "an email address", |s| {
                s.parse::<lettre::message::Mailbox>()
                    .ok()
                    .map(|_| s.to_string())
            })?;
            let email = Email {
                to,
                from,
                host: values
                    .string("notify.smtp_host")
                    .unwrap_or_else(|| "localhost".into()),
                port: values
                    .parse("notify.smtp_port", "a TCP port number (1-65535)", |s| {
                        s.parse::<u16>().ok().filter(|p| *p > 0)
                    })?
                    .unwrap_or(25),
                tls: values
                    .parse("notify.smtp_tls", "none, starttls or tls", |s| {
                        match s.to_ascii_lowercase().as_str() {
                            "none" | "off" | "false" => Some(SmtpTls::None),
                            "starttls" => Some(SmtpTls::StartTls),
                            "tls" | "ssl" | "smtps" => Some(SmtpTls::Tls),
                            _ => None,
                        }
                    })?
                    .unwrap_or(SmtpTls::None),
                user: values.string("notify.smtp_user"),
                password: values.string("notify.smtp_password").map(Secret),
                on_success: flag("notify.email_on_success")?,
            };
            // Credentials never cross the network in clear.
            if email.tls == SmtpTls::None
                && email.password.is_some()
                && !crate::secrets::is_loopback(&email.host)
            {
                return Err(usage(format!(
                    "BACKUP_SMTP_PASSWORD is set with BACKUP_SMTP_TLS=none for {}, which is not this machine: \
                     the password would cross the network in clear. Set BACKUP_SMTP_TLS=starttls (port 587) or \
                     tls (port 465), or use a local relay without credentials",
                    email.host
                )));
            }
            Some(email)
        }
        None => None,
    };
    Ok(NotifyConfig {
        timeout: duration("notify.timeout")?.unwrap_or(Duration::from_secs(10)),
        ntfy,
        slack: url("notify.slack_webhook_url")?
            .map(Secret)
            .map(|u| Ok::<_, anyhow::Error>((u, flag("notify.slack_on_success")?)))
            .transpose()?,
        email,
        webhook: url("notify.webhook_url")?
            .map(Secret)
            .map(|u| Ok::<_, anyhow::Error>((u, flag("notify.webhook_on_success")?)))
            .transpose()?,
        healthcheck: url("notify.healthcheck_url")?.map(Secret),
    })
}

/// BACKUP_DIR as a path: `~` expanded, relative to the current folder (None:
/// `~` without HOME).
fn store_dir(value: &str, cwd: &Path) -> Option<PathBuf> {
    expand_home(value).map(|p| cwd.join(p))
}

fn expand_home(dir: &str) -> Option<PathBuf> {
    match dir.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(rest)),
        None if dir == "~" => std::env::var_os("HOME").map(PathBuf::from),
        None => Some(PathBuf::from(dir)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(global: &GlobalArgs, pairs: &[(&str, &str)]) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        load_from(global, &env(pairs), dir.path())
    }

    fn err_text(r: Result<Config>) -> String {
        let e = r.unwrap_err();
        assert_eq!(
            crate::error::exit_kind(&e),
            crate::error::ExitKind::Usage,
            "{e:#}"
        );
        format!("{e:#}")
    }

    #[test]
    fn several_destinations_are_labelled_and_checked() {
        let g = GlobalArgs::default();
        let c = load(
            &g,
            &[
                ("DB_NAME", "kairon"),
                ("RCLONE_REMOTE_NAME", "gdrive:"),
                ("RCLONE_REMOTE_PATH", "kb"),
                ("RCLONE_REMOTES", " b2:cold , sftp:a,sftp:b"),
                ("BACKUP_REMOTE_PRUNE", "false"),
            ],
        )
        .unwrap();
        let labels: Vec<&str> = c.remotes.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["gdrive", "b2", "sftp:a", "sftp:b"]);
        assert!(c.remotes.iter().all(|r| !r.prune));
        assert_eq!(c.remote(Some("b2"), "x").unwrap().path, "cold");
        assert_eq!(c.remote(None, "x").unwrap().label, "gdrive");
        assert!(
            err_text(c.remote(Some("nope"), "list --remote").map(|_| c.clone()))
                .contains("gdrive, b2, sftp:a, sftp:b")
        );
        for bad in ["b2", "b2:x,b2:x", ":x", "b2:/x//y,b2:/x/./y/"] {
            let e = err_text(load(&g, &[("DB_NAME", "k"), ("RCLONE_REMOTES", bad)]));
            assert!(
                e.contains("RCLONE_REMOTES") || e.contains("twice"),
                "{bad}: {e}"
            );
        }
        let none = load(&g, &[("DB_NAME", "k")]).unwrap();
        assert!(
            err_text(none.remote(None, "sync").map(|_| none.clone())).contains("RCLONE_REMOTES")
        );
        // A destination's own keep counts over the database's.
        let mut r = c.remotes[0].clone();
        r.keep.keep_weekly = Some(52);
        let p = r.policy(&c.policy);
        assert_eq!((p.keep_hourly, p.keep_weekly), (c.policy.keep_hourly, 52));
    }

    #[test]
    fn defaults_follow_the_seeds() {
        let c = load(&GlobalArgs::default(), &[("DB_NAME", "kairon")]).unwrap();
        assert_eq!(c.db.name, "kairon");
        assert_eq!(c.prefix, "kairon");
        assert_eq!(
            (
                c.policy.keep_hourly,
                c.policy.keep_daily,
                c.policy.keep_weekly
            ),
            (24, 7, 4)
        );
        assert_eq!(c.policy.keep_monthly, 0);
        assert_eq!(c.db.port, 5432);
        assert_eq!(c.db.user, "postgres");
        assert!(c.db.container.is_none());
    }

    #[test]
    fn near_misses_name_the_setting_they_meant() {
        assert_eq!(probably_meant("CONTAINER_BD"), Some("CONTAINER_DB"));
        assert_eq!(
            probably_meant("BACKUP_KEEP_DAYLY"),
            Some("BACKUP_KEEP_DAILY")
        );
        assert_eq!(probably_meant("NTFY_TOPICS"), Some("NTFY_TOPIC"));
        // Known names, other programs' names, and the postgres image's own.
        for name in [
            "CONTAINER_DB",
            "PATH",
            "HOME",
            "RCLONE_CONFIG_DAV_URL",
            "POSTGRES_INITDB_ARGS",
            "DATABASE_URL",
            "N8N_HOST",
        ] {
            assert_eq!(probably_meant(name), None, "{name}");
        }
        let c = load(
            &GlobalArgs::default(),
            &[("DB_NAME", "x"), ("BACKUP_KEEP_DAYLY", "14")],
        )
        .unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("BACKUP_KEEP_DAYLY") && w.contains("BACKUP_KEEP_DAILY")),
            "{:?}",
            c.warnings
        );
        assert_eq!(c.policy.keep_daily, 7);
    }

    #[test]
    fn name_lists_split_on_commas_and_keep_quoted_names_whole() {
        assert_eq!(parse_names("kairon, n8n").unwrap(), ["kairon", "n8n"]);
        assert_eq!(
            parse_names(r#""a,b", " spaced ", "say ""hi""",ünï"#).unwrap(),
            ["a,b", " spaced ", "say \"hi\"", "ünï"]
        );
        assert_eq!(parse_names(" , x,,").unwrap(), ["x"]);
        assert!(parse_names(r#""open"#).is_err());
        assert!(parse_names(r#""a" b"#).is_err());
    }

    fn names(c: &Config) -> Vec<(String, String)> {
        match &c.databases {
            Databases::One => vec![(c.db.name.clone(), c.prefix.clone())],
            Databases::Several(each) => each
                .iter()
                .map(|c| (c.db.name.clone(), c.prefix.clone()))
                .collect(),
            Databases::All { .. } => vec![],
        }
    }

    #[test]
    fn a_list_gives_each_database_its_own_prefix() {
        let c = load(
            &GlobalArgs::default(),
            &[("DB_NAME", "app,app_staging, \"a/b\"")],
        )
        .unwrap();
        assert!(c.several());
        assert_eq!(
            names(&c),
            [
                ("app".into(), "app".into()),
                ("app_staging".into(), "app_staging".into()),
                ("a/b".into(), "a_b".into())
            ]
        );
        // A shared BACKUP_PREFIX would mix their files: refused.
        let e = err_text(load(
            &GlobalArgs::default(),
            &[("DB_NAME", "a,b"), ("BACKUP_PREFIX", "p")],
        ));
        assert!(
            e.contains("BACKUP_PREFIX") && e.contains("[[database]]"),
            "{e}"
        );
        let e = err_text(load(&GlobalArgs::default(), &[("DB_NAME", "a,b,a")]));
        assert!(e.contains("listed twice"), "{e}");
        // --db picks one: a plain single-database run, its name as written.
        let g = GlobalArgs {
            database: Some("b".into()),
            ..Default::default()
        };
        let c = load(&g, &[("DB_NAME", "a,b")]).unwrap();
        assert!(!c.several());
        assert_eq!(c.db.name, "b");
        for literal in ["comma,db", "all", " spaced "] {
            let g = GlobalArgs {
                database: Some(literal.into()),
                ..Default::default()
            };
            let c = load(&g, &[("DB_NAME", "all")]).unwrap();
            assert!(!c.several(), "{literal}");
            assert_eq!(c.db.name, literal);
        }
    }

    #[test]
    fn all_takes_exclusions_and_refuses_a_shared_prefix() {
        let c = load(
            &GlobalArgs::default(),
            &[("DB_NAME", "all"), ("BACKUP_EXCLUDE", "x, \"y z\"")],
        )
        .unwrap();
        match &c.databases {
            Databases::All { exclude, .. } => assert_eq!(exclude, &["x", "y z"]),
            other => panic!("{other:?}"),
        }
        let one = c.for_database(".hidden/db");
        assert_eq!(
            (one.db.name.as_str(), one.prefix.as_str()),
            (".hidden/db", "_.hidden_db")
        );
        assert!(!one.several());
        let e = err_text(load(
            &GlobalArgs::default(),
            &[("DB_NAME", "all"), ("BACKUP_PREFIX", "p")],
        ));
        assert!(e.contains("BACKUP_PREFIX"), "{e}");
    }

    #[test]
    fn database_tables_override_the_shared_settings_for_their_database() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("k.toml"),
            "[backup]\nkeep_hourly = 5\n\n[[database]]\nname = \"app\"\nkeep_hourly = 48\ncontainer = \"pg1\"\n\n\
             [[database]]\nname = \"n8n\"\nprefix = \"n8n_prod\"\nhost = \"10.0.0.7\"\nport = 6543\n",
        )
        .unwrap();
        let g = GlobalArgs {
            config: Some("k.toml".into()),
            ..Default::default()
        };
        // The environment's keep count is shared; a table's beats it for its database.
        let c = load_from(&g, &env(&[("BACKUP_KEEP_HOURLY", "9")]), dir.path()).unwrap();
        let Databases::Several(each) = &c.databases else {
            panic!("{:?}", c.databases)
        };
        assert_eq!(each[0].db.name, "app");
        assert_eq!(each[0].policy.keep_hourly, 48);
        assert_eq!(each[0].db.container.as_deref(), Some("pg1"));
        assert_eq!(each[1].prefix, "n8n_prod");
        assert_eq!(each[1].policy.keep_hourly, 9);
        assert_eq!(
            (each[1].db.host.as_deref(), each[1].db.port),
            (Some("10.0.0.7"), 6543)
        );
        // DB_NAME=all: the tables give settings to the databases they name.
        let c = load_from(&g, &env(&[("DB_NAME", "all")]), dir.path()).unwrap();
        assert_eq!(c.for_database("app").policy.keep_hourly, 48);
        assert_eq!(c.for_database("other").policy.keep_hourly, 5);
        assert_eq!(c.for_database("n8n").prefix, "n8n_prod");
        // A bad value in a table names the table.
        std::fs::write(
            dir.path().join("k.toml"),
            "[[database]]\nname = \"app\"\nkeep_hourly = -1\n",
        )
        .unwrap();
        let e = err_text(load_from(&g, &env(&[]), dir.path()));
        assert!(e.contains("[[database]] \"app\" keep_hourly"), "{e}");
        std::fs::write(
            dir.path().join("k.toml"),
            "[[database]]\nname = \"app\"\nkeep = 1\n",
        )
        .unwrap();
        let e = err_text(load_from(&g, &env(&[]), dir.path()));
        assert!(e.contains("unknown key `keep`"), "{e}");
        std::fs::write(
            dir.path().join("k.toml"),
            "[[database]]\nname = \"a\"\nprefix = \"p\"\n[[database]]\nname = \"b\"\nprefix = \"p\"\n",
        )
        .unwrap();
        let e = err_text(load_from(&g, &env(&[]), dir.path()));
        assert!(e.contains("share the file prefix"), "{e}");
    }

    #[test]
    fn flags_beat_env_beat_dotenv_beat_toml() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".env"),
            "DB_NAME=fromdotenv\nBACKUP_KEEP_DAILY=5\nBACKUP_KEEP_WEEKLY=3\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("k.toml"),
            "[backup]\nkeep_daily = 1\nkeep_weekly = 1\nkeep_monthly = 2\n[database]\nname = \"fromtoml\"\n",
        )
        .unwrap();
        let g = GlobalArgs {
            config: Some("k.toml".into()),
            ..Default::default()
        };
        let c = load_from(&g, &env(&[("BACKUP_KEEP_DAILY", "9")]), dir.path()).unwrap();
        assert_eq!(c.policy.keep_daily, 9, "env beats .env");
        assert_eq!(c.policy.keep_weekly, 3, ".env beats TOML");
        assert_eq!(c.policy.keep_monthly, 2, "TOML beats default");
        assert_eq!(c.db.name, "fromdotenv");
        let g = GlobalArgs {
            database: Some("fromflag".into()),
            ..g
        };
        let c = load_from(&g, &env(&[("DB_NAME", "fromenv")]), dir.path()).unwrap();
        assert_eq!(c.db.name, "fromflag");
        let src = c
            .resolved
            .iter()
            .find(|(s, _)| s.key == "database.name")
            .unwrap()
            .1
            .clone()
            .unwrap();
        assert_eq!(
            src.source,
            Source::Flag {
                flag: "--db".into()
            }
        );
    }

    #[test]
    fn bad_values_name_the_setting_and_value() {
        let t = err_text(load(
            &GlobalArgs::default(),
            &[("DB_NAME", "x"), ("BACKUP_KEEP_HOURLY", "abc")],
        ));
        assert!(
            t.contains("BACKUP_KEEP_HOURLY") && t.contains("\"abc\""),
            "{t}"
        );
        let t = err_text(load(
            &GlobalArgs::default(),
            &[("DB_NAME", "x"), ("BACKUP_KEEP_DAILY", "-1")],
        ));
        assert!(
            t.contains("BACKUP_KEEP_DAILY") && t.contains("\"-1\""),
            "{t}"
        );
        let t = err_text(load(
            &GlobalArgs::default(),
            &[("DB_NAME", "x"), ("POSTGRES_PORT", "99999")],
        ));
        assert!(t.contains("POSTGRES_PORT"), "{t}");
        let t = err_text(load(
            &GlobalArgs::default(),
            &[("DB_NAME", "x"), ("BACKUP_TIMEZONE", "Mars/Base")],
        ));
        assert!(
            t.contains("BACKUP_TIMEZONE") && t.contains("Mars/Base"),
            "{t}"
        );
    }

    #[test]
    fn missing_database_name_is_a_usage_error() {
        let t = err_text(load(&GlobalArgs::default(), &[]));
        assert!(t.contains("DB_NAME"), "{t}");
    }

    #[test]
    fn unknown_toml_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.toml"), "[backup]\nkeep_hourlyy = 3\n").unwrap();
        let g = GlobalArgs {
            config: Some("k.toml".into()),
            ..Default::default()
        };
        let t = err_text(load_from(&g, &env(&[("DB_NAME", "x")]), dir.path()));
        assert!(t.contains("backup.keep_hourlyy"), "{t}");
        std::fs::write(
            dir.path().join("k.toml"),
            "[backup]\nkeep_hourly = \"many\"\n",
        )
        .unwrap();
        let t = err_text(load_from(&g, &env(&[("DB_NAME", "x")]), dir.path()));
        assert!(
            t.contains("backup.keep_hourly") && t.contains("many"),
            "{t}"
        );
    }

    #[test]
    fn conflicting_aliases_are_refused() {
        let t = err_text(load(
            &GlobalArgs::default(),
            &[("DB_NAME", "a"), ("POSTGRES_DB", "b")],
        ));
        assert!(t.contains("DB_NAME") && t.contains("POSTGRES_DB"), "{t}");
        let c = load(
            &GlobalArgs::default(),
            &[("DB_NAME", "a"), ("POSTGRES_DB", "a")],
        )
        .unwrap();
        assert_eq!(c.db.name, "a");
    }

    #[test]
    fn secrets_are_not_echoed_in_errors() {
        let c = load(
            &GlobalArgs::default(),
            &[("DB_NAME", "a"), ("POSTGRES_PASSWORD", "hunter2")],
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    /// Review: a setting that could not be used was echoed whole, secrets
    /// inside included (rclone flags, URL credentials, a .env or TOML line).
    #[test]
    fn errors_about_settings_never_echo_a_secret() {
        let g = GlobalArgs::default();
        let t = err_text(load(
            &g,
            &[
                ("DB_NAME", "a"),
                ("RCLONE_REMOTE_NAME", "r"),
                ("RCLONE_FLAGS", "--s3-secret-access-key 'UNBAL_SECRET1"),
            ],
        ));
        assert!(
            t.contains("RCLONE_FLAGS") && !t.contains("UNBAL_SECRET1"),
            "{t}"
        );
        let t = err_text(load(
            &g,
            &[
                ("DB_NAME", "a"),
                ("BACKUP_NOTIFY_TIMEOUT", "http://u:BADPASS@host"),
            ],
        ));
        assert!(!t.contains("BADPASS"), "{t}");
        let t = err_text(load(
            &g,
            &[
                ("DB_NAME", "a"),
                ("RCLONE_REMOTE_NAME", ":s3,secret_access_key=CONNSECRET"),
            ],
        ));
        assert!(
            t.contains("connection string") && !t.contains("CONNSECRET"),
            "{t}"
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".env"),
            "DB_NAME=a\nPOSTGRES_PASSWORD=DOTENVPW3 x\n",
        )
        .unwrap();
        let t = err_text(load_from(&g, &env(&[]), dir.path()));
        assert!(t.contains("line 2") && !t.contains("DOTENVPW3"), "{t}");
        let toml = dir.path().join("k.toml");
        std::fs::remove_file(dir.path().join(".env")).unwrap();
        std::fs::write(
            &toml,
            "[database]\nname = \"a\"\npassword = \"TOMLSECRET4\n",
        )
        .unwrap();
        let t = err_text(load_from(
            &g,
            &env(&[("KBACKUP_CONFIG", toml.to_str().unwrap())]),
            dir.path(),
        ));
        assert!(t.contains("line 3") && !t.contains("TOMLSECRET4"), "{t}");
        // A [[remote]] table's flags, unbalanced: named, not echoed.
        std::fs::write(
            &toml,
            "[database]\nname = \"a\"\n[[remote]]\nname = \"r\"\nflags = \"--s3-secret-access-key 'REMOTESECRET5\"\n",
        )
        .unwrap();
        let t = err_text(load_from(
            &g,
            &env(&[("KBACKUP_CONFIG", toml.to_str().unwrap())]),
            dir.path(),
        ));
        assert!(
            t.contains("[[remote]] r") && !t.contains("REMOTESECRET5"),
            "{t}"
        );
    }

    /// Defect: SMTP credentials went out in clear with BACKUP_SMTP_TLS=none.
    #[test]
    fn smtp_credentials_need_tls_unless_the_server_is_this_machine() {
        let with = |host: &str, tls: &str| {
            load(
                &GlobalArgs::default(),
                &[
                    ("DB_NAME", "a"),
                    ("BACKUP_EMAIL_RECIPIENT", "ops@example.com"),
                    ("BACKUP_SMTP_HOST", host),
                    ("BACKUP_SMTP_TLS", tls),
                    ("BACKUP_SMTP_USER", "u"),
                    ("BACKUP_SMTP_PASSWORD", "smtp-secret"),
                ],
            )
        };
        let t = err_text(with("mail.example.com", "none"));
        assert!(
            t.contains("BACKUP_SMTP_TLS=starttls") && !t.contains("smtp-secret"),
            "{t}"
        );
        assert!(with("mail.example.com", "starttls").is_ok());
        assert!(with("127.0.0.1", "none").is_ok());
        assert!(with("localhost", "none").is_ok());
    }

    #[test]
    fn secrets_in_files_others_can_read_are_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let load_pw = || {
            load(
                &GlobalArgs::default(),
                &[
                    ("DB_NAME", "a"),
                    ("POSTGRES_PASSWORD_FILE", pw.to_str().unwrap()),
                ],
            )
            .unwrap()
        };
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = load_pw().warnings;
        assert!(
            w.len() == 1 && w[0].contains("chmod 600") && w[0].contains("every user"),
            "{w:?}"
        );
        assert!(!w[0].contains("s3cret"));
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_pw().warnings.is_empty());
    }

    #[test]
    fn all_tiers_off_is_refused() {
        let t = err_text(load(
            &GlobalArgs::default(),
            &[
                ("DB_NAME", "a"),
                ("BACKUP_KEEP_HOURLY", "0"),
                ("BACKUP_KEEP_DAILY", "0"),
                ("BACKUP_KEEP_WEEKLY", "0"),
            ],
        ));
        assert!(t.contains("all 0"), "{t}");
    }

    /// The example files and the README document every setting.
    #[test]
    fn examples_document_every_setting() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dotenv = std::fs::read_to_string(root.join(".env.example")).unwrap();
        let toml_text = std::fs::read_to_string(root.join("config.example.toml")).unwrap();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        for s in SETTINGS {
            for name in s.env {
                assert!(dotenv.contains(name), ".env.example lacks {name}");
                assert!(readme.contains(name), "README lacks {name}");
            }
            let (section, key) = s.key.split_once('.').unwrap();
            assert!(
                toml_text.contains(&format!("{key} ="))
                    && toml_text.contains(&format!("[{section}]")),
                "config.example.toml lacks {}",
                s.key
            );
        }
    }
}
