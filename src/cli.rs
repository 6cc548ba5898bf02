//! Command-line types. Flags that are also settings (see `config.rs`) are the
//! highest layer of the configuration; the rest belong to one subcommand.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "kbackup",
    version,
    about = "PostgreSQL backups an operator can trust at 3 a.m.",
    long_about = "Hourly pg_dump backups into a tiered local store (hourly/daily/weekly/monthly/named), \
                  each with a checksum manifest, verified as a complete archive before it is kept.\n\n\
                  Settings come from flags > environment > .env > TOML (--config) > defaults; \
                  `kbackup config` shows the effective values and where each came from.",
    after_help = "Exit codes: 0 success, 1 failure, 2 bad input or setting, 3 store locked by another run, \
                  129 hung up (SIGHUP), 130 interrupted (Ctrl-C), 143 terminated."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Global options (every command)")]
pub struct GlobalArgs {
    /// TOML settings file (also KBACKUP_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// .env file to read (default: ./.env when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Backup store folder (BACKUP_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    pub backup_dir: Option<String>,
    /// One database, named as written: backed up, restored over (unless --target-db), verified;
    /// narrows a run over several (DB_NAME / POSTGRES_DB).
    #[arg(long = "db", global = true, value_name = "NAME")]
    pub database: Option<String>,
    /// Docker container running PostgreSQL; selects docker mode (CONTAINER_DB).
    #[arg(long, global = true, value_name = "NAME")]
    pub container: Option<String>,
    /// File of age identities that decrypts encrypted backups, for restore and verify
    /// (BACKUP_AGE_IDENTITY).
    #[arg(long, global = true, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Log format on stderr and in backup.log (BACKUP_LOG_FORMAT).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Verbose logging, including every child command (DEBUG).
    #[arg(long, global = true)]
    pub debug: bool,
    /// Send no alert and no success message for this run, whatever the settings say.
    #[arg(long, global = true)]
    pub no_alerts: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take a backup now, place it in its tiers, then rotate (what cron runs hourly).
    Backup(BackupArgs),
    /// List the backups in the store, newest first.
    List(ListArgs),
    /// Restore a backup: checked, restored into a scratch database, verified, then swapped in.
    Restore(RestoreArgs),
    /// Prove backups restorable: checksum and archive read (--quick), or a test
    /// restore into a temporary database with the full set of checks.
    Verify(VerifyArgs),
    /// Health for monitoring: newest backup per tier, last run, last verification; exit 1 when unhealthy.
    Status(StatusArgs),
    /// Off-site copies on their own: upload what the remote lacks, apply retention there.
    Sync,
    /// Alert channels: `--test` sends a test message to every configured channel.
    Notify(NotifyArgs),
    /// Apply the retention policy on its own.
    Rotate(RotateArgs),
    /// Clear what runs that were killed left: scratch and verification databases,
    /// a target left closed to connections, temporary files (listing each).
    Cleanup(CleanupArgs),
    /// Print the effective settings and where each came from (secrets redacted).
    Config(ConfigArgs),
    /// Check that the configured setup will work: each line PASS / WARN / FAIL with its fix.
    Doctor(DoctorArgs),
    /// Print a shell completion script (needs no settings): `kbackup completions bash`.
    Completions(CompletionsArgs),
    /// Print the manual page in roff (needs no settings): `kbackup man | man -l -`.
    Man,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Machine-readable output: a JSON array of {check, level, detail, fix}.
    #[arg(long)]
    pub json: bool,
    /// Also send a test message on every alert channel.
    #[arg(long)]
    pub notify: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Keep this backup under named/ (never rotated by the hourly/daily/weekly counts).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Record the backup as taken at TIME (RFC 3339, or "YYYY-MM-DD HH:MM:SS" local) for backfills.
    #[arg(long, value_name = "TIME")]
    pub time: Option<String>,
    /// Print what would run and what rotation would delete; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Skip the off-site step for this run, even with a remote configured.
    #[arg(long, conflicts_with = "sync")]
    pub no_sync: bool,
    /// Sync even though --backup-dir names another store than the configured one.
    #[arg(long)]
    pub sync: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// List the off-site copies (RCLONE_REMOTE_NAME) instead of the local store.
    #[arg(long)]
    pub remote: bool,
    /// With --remote and several destinations: the one to list, by label (default: the
    /// first configured).
    #[arg(long, value_name = "LABEL", requires = "remote")]
    pub from: Option<String>,
    /// Only this tier.
    #[arg(long, value_enum)]
    pub tier: Option<crate::naming::Tier>,
    /// Machine-readable output: a JSON array.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Print the keep/delete decisions; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the decisions as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// List what would be cleared; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also drop the databases restores kept (`<db>_pre_restore_<time>`) older than AGE (7d, 12h).
    #[arg(long, value_name = "AGE")]
    pub old_copies: Option<String>,
    /// Drop those old copies without asking (needed when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("which")
        .multiple(false)
        .args(["latest", "latest_daily", "latest_weekly", "latest_monthly", "file", "at", "name"])
))]
pub struct RestoreArgs {
    /// Restore from the off-site copies: `--remote PATH` (e.g. hourly/kairon_2025-12-26_05-00-01.dump),
    /// or `--remote` with --latest, --latest-daily, --at... The file is downloaded into
    /// the store, checked against the remote manifest, restored, and removed.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "")]
    pub remote: Option<String>,
    /// With --remote and several destinations (RCLONE_REMOTES, [[remote]]): the one to
    /// restore from, by label (default: the first configured).
    #[arg(long, value_name = "LABEL", requires = "remote")]
    pub from: Option<String>,
    /// The newest backup of any tier.
    #[arg(long)]
    pub latest: bool,
    /// The newest backup in daily/.
    #[arg(long)]
    pub latest_daily: bool,
    /// The newest backup in weekly/.
    #[arg(long)]
    pub latest_weekly: bool,
    /// The newest backup in monthly/.
    #[arg(long)]
    pub latest_monthly: bool,
    /// A backup file: absolute, or relative to BACKUP_DIR (hourly/kairon_2025-12-26_05-00-01.dump).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// The newest backup taken at or before TIME (RFC 3339, or "YYYY-MM-DD HH:MM:SS" local).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// A named backup (backup --name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Database to restore into (default: the configured database).
    #[arg(long, value_name = "NAME")]
    pub target_db: Option<String>,
    /// Every configured database (DB_NAME=a,b, or under DB_NAME=all the ones the
    /// last backup run found): the roles of the saved globals first, then each
    /// database's chosen backup through the safe path (disaster recovery onto a
    /// fresh server).
    #[arg(long, conflicts_with_all = ["target_db", "file"])]
    pub all: bool,
    /// Print the plan (backup, checks, commands, renames) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace an existing database without asking (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// The seed's way, for servers where the user may not create databases: take a
    /// safety backup, then drop, recreate and restore the target.
    #[arg(long)]
    pub in_place: bool,
    /// Keep the replaced database as <target>_pre_restore_<time> (the default).
    #[arg(long, conflicts_with = "drop_old")]
    pub keep_old: bool,
    /// Drop the replaced database once the new one is in place.
    #[arg(long)]
    pub drop_old: bool,
    /// Create the roles the backup needs and the server lacks, from the globals saved with it.
    #[arg(long)]
    pub with_globals: bool,
    /// Allow --file to name a file outside BACKUP_DIR (a backup copied from another server).
    #[arg(long)]
    pub outside_store: bool,
    /// When a backup of the target is running, refuse at once (exit 3) instead of waiting up to 30 minutes for it.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").multiple(false).args(["path", "latest", "all", "tier"])))]
pub struct VerifyArgs {
    /// A backup file: absolute, or relative to BACKUP_DIR.
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// The newest backup (the default).
    #[arg(long)]
    pub latest: bool,
    /// Every backup in the store (tier copies of one file are checked once).
    #[arg(long)]
    pub all: bool,
    /// Every backup in one tier.
    #[arg(long, value_enum)]
    pub tier: Option<crate::naming::Tier>,
    /// Checksum and a full read of the archive only: no test restore.
    #[arg(long)]
    pub quick: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run the test restore on this server instead: HOST[:PORT] or a socket
    /// directory (also BACKUP_VERIFY_HOST / BACKUP_VERIFY_PORT).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub server: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Unhealthy when the newest backup is older than this (default BACKUP_MAX_AGE,
    /// else twice BACKUP_INTERVAL).
    #[arg(long, value_name = "DURATION")]
    pub max_age: Option<String>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// Send a test message to every configured channel and report each.
    #[arg(long)]
    pub test: bool,
}
