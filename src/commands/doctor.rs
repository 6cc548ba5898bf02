//! `kbackup doctor`: whether the configured setup will work, each check a line
//! PASS / WARN / FAIL with its fix; exit 0 when nothing failed, 1 otherwise.
//! It reads and probes, and changes nothing but its own probe files (a hard
//! link in the store's `.kbackup/`, an object on each remote), each removed.
//! The seeds' troubleshooting cases (container stopped, wrong password, rclone
//! remote missing, full disk, pg_dump older than the server, a store others
//! can read) each show up as a FAIL with the seed's remedy.

use std::os::unix::fs::PermissionsExt;

use anyhow::Result;
use serde::Serialize;

use crate::cli::DoctorArgs;
use crate::config::{Config, Source};
use crate::postgres::Postgres;
use crate::store::{human_size, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Finding {
    pub check: String,
    pub level: Level,
    pub detail: String,
    /// What to do about a WARN or FAIL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Default)]
struct Report(Vec<Finding>);

impl Report {
    fn pass(&mut self, check: impl Into<String>, detail: impl Into<String>) {
        self.push(check, Level::Pass, detail, None::<String>);
    }
    fn warn(
        &mut self,
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(check, Level::Warn, detail, Some(fix));
    }
    fn fail(
        &mut self,
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(check, Level::Fail, detail, Some(fix));
    }
    fn push(
        &mut self,
        check: impl Into<String>,
        level: Level,
        detail: impl Into<String>,
        fix: Option<impl Into<String>>,
    ) {
        self.0.push(Finding {
            check: check.into(),
            level,
            detail: detail.into(),
            fix: fix.map(Into::into),
        });
    }
}

pub async fn run(cfg: &Config, args: &DoctorArgs) -> Result<()> {
    let mut r = Report::default();
    settings(cfg, &mut r);
    let store = Store::new(cfg.backup_dir.clone());
    store_checks(&store, &mut r);
    // The databases a backup would take: with DB_NAME=all, the server's
    // (listed as a backup lists them, nothing recorded).
    match crate::databases::on_server(cfg, false).await {
        Ok(found) => {
            for (c, why) in &found.failed {
                r.fail(format!("database {}", c.db.name), why.clone(), "see the message");
            }
            if found.dbs.is_empty() && found.failed.is_empty() {
                r.fail("databases", "no database to back up", "check DB_NAME and BACKUP_EXCLUDE");
            }
            for c in found.dbs {
                database(&c, &store, &mut r).await;
            }
        }
        Err(e) => r.fail(
            "databases",
            format!("{e:#}"),
            "the seed's \"cannot connect\": check POSTGRES_HOST, POSTGRES_PORT, DB_USER and the password",
        ),
    }
    for rc in &cfg.remotes {
        let remote = crate::remote::Remote::new(rc.clone());
        let check = format!("remote {}", rc.label);
        match remote.check_rclone().await {
            Err(e) => r.fail(
                check,
                format!("{e:#}"),
                "install rclone 1.53 or newer (apt-get install rclone)",
            ),
            Ok(()) => match remote.probe().await {
                Ok(how) => r.pass(check, format!("{}: {how}", rc.root())),
                Err(e) => {
                    let text = format!("{e:#}");
                    let fix = if text.contains("cannot remove the probe") {
                        "kbackup deletes there (retention): give its credentials delete rights, or set \
                         BACKUP_REMOTE_PRUNE=false for a write-only destination"
                            .to_string()
                    } else if text.contains("didn't find section") || text.contains("not found") {
                        format!(
                            "the seed's \"rclone remote missing\": create the remote {} with `rclone config` \
                             (or RCLONE_CONFIG_{}_TYPE...), or fix RCLONE_REMOTE_NAME",
                            rc.name,
                            rc.name.to_ascii_uppercase()
                        )
                    } else {
                        format!(
                            "check the remote with `rclone lsd {}:` and its rights (reading and writing there)",
                            rc.name
                        )
                    };
                    r.fail(check, text, fix)
                }
            },
        }
    }
    if cfg.remotes.is_empty() {
        r.warn(
            "off-site",
            "no remote configured: the backups live on this machine only",
            "set RCLONE_REMOTE_NAME and RCLONE_REMOTE_PATH (or RCLONE_REMOTES) to an rclone remote",
        );
    }
    alerts(cfg, args.notify, &mut r).await;
    encryption(cfg, &store, &mut r);
    let zone = match std::env::var("TZ") {
        Ok(tz) if !tz.is_empty() => format!("TZ={tz}"),
        _ => "the host's local zone (/etc/localtime)".into(),
    };
    r.pass(
        "time zone",
        match cfg
            .resolved
            .iter()
            .find(|(s, v)| s.key == "backup.timezone" && v.is_some())
        {
            Some((_, Some(v))) => format!(
                "BACKUP_TIMEZONE={} names the files, days and weeks",
                v.value
            ),
            _ => format!("{zone} names the files, days and weeks (BACKUP_TIMEZONE unset)"),
        },
    );

    let failed = r.0.iter().filter(|f| f.level == Level::Fail).count();
    let warned = r.0.iter().filter(|f| f.level == Level::Warn).count();
    if args.json {
        crate::out!("{}", serde_json::to_string_pretty(&r.0)?);
    } else {
        let mut text = String::new();
        for f in &r.0 {
            let level = match f.level {
                Level::Pass => "PASS",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            text.push_str(&format!("{level}  {:22} {}\n", f.check, f.detail));
            if let Some(fix) = &f.fix {
                text.push_str(&format!("      {:22} fix: {fix}\n", ""));
            }
        }
        text.push_str(&format!(
            "\n{} checks: {} passed, {warned} warning(s), {failed} failed\n",
            r.0.len(),
            r.0.len() - failed - warned
        ));
        crate::output::block(&text);
    }
    if failed > 0 {
        return Err(anyhow::Error::new(crate::error::Coded {
            kind: crate::error::ExitKind::Failure,
            message: format!("doctor: {failed} check(s) failed; each FAIL line says what to do"),
        }));
    }
    Ok(())
}

/// The report when the settings cannot be used (nothing else can be checked).
pub fn settings_failed(e: &anyhow::Error, json: bool) {
    let f = Finding {
        check: "settings".into(),
        level: Level::Fail,
        detail: format!("{e:#}"),
        fix: Some(
            "fix the named setting; `kbackup config` shows where each value comes from".into(),
        ),
    };
    if json {
        crate::out!("{}", serde_json::to_string_pretty(&[f]).unwrap_or_default());
    } else {
        crate::out!(
            "FAIL  {:22} {}\n      {:22} fix: {}",
            f.check,
            f.detail,
            "",
            f.fix.unwrap_or_default()
        );
    }
}

fn settings(cfg: &Config, r: &mut Report) {
    let mut from: Vec<String> = Vec::new();
    for (_, raw) in &cfg.resolved {
        let layer = match raw.as_ref().map(|v| &v.source) {
            Some(Source::Flag { .. }) => "flags".to_string(),
            Some(Source::Env { .. }) => "the environment".to_string(),
            Some(Source::DotEnv { path, .. }) => format!(".env {}", path.display()),
            Some(Source::Toml { path, .. }) => format!("TOML {}", path.display()),
            _ => continue,
        };
        if !from.contains(&layer) {
            from.push(layer);
        }
    }
    r.pass(
        "settings",
        format!(
            "valid; {} (`kbackup config` shows each value and its source)",
            if from.is_empty() {
                "all defaults".to_string()
            } else {
                format!("from {}", from.join(", "))
            }
        ),
    );
    for w in &cfg.warnings {
        r.warn("settings", w.clone(), "see the message");
    }
}

fn store_checks(store: &Store, r: &mut Report) {
    let root = &store.root;
    let Ok(meta) = std::fs::metadata(root) else {
        // The nearest folder that exists must take the store.
        let mut above = root.parent();
        while let Some(p) = above.filter(|p| !p.exists()) {
            above = p.parent();
        }
        match above {
            Some(p) if !p.is_dir() => r.fail(
                "store",
                format!(
                    "{} cannot be made: {} is a file",
                    root.display(),
                    p.display()
                ),
                "point BACKUP_DIR elsewhere",
            ),
            Some(p) => match writable(p) {
                Ok(()) => r.warn(
                    "store",
                    format!("{} does not exist yet", root.display()),
                    "the first backup creates it (0700); or create it now: mkdir -m 700 it",
                ),
                Err(e) => r.fail(
                    "store",
                    format!(
                        "{} cannot be made: {} is not writable ({e})",
                        root.display(),
                        p.display()
                    ),
                    "make that folder writable for this user, or point BACKUP_DIR elsewhere",
                ),
            },
            None => r.fail(
                "store",
                format!("{} cannot be made", root.display()),
                "point BACKUP_DIR elsewhere",
            ),
        }
        return;
    };
    if !meta.is_dir() {
        r.fail(
            "store",
            format!("{} is not a folder", root.display()),
            "point BACKUP_DIR at a folder",
        );
        return;
    }
    if let Err(e) = writable(root) {
        r.fail(
            "store",
            format!("cannot write into {}: {e}", root.display()),
            "make the store writable for this user (a read-only mount? its owner?)",
        );
        return;
    }
    if let Err(e) = crate::store::check_root(root) {
        r.fail("store", format!("{e:#}"), "see the message");
        return;
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        r.fail(
            "store",
            format!(
                "{} is readable by others (mode {mode:o}): backups hold the whole database and role password hashes",
                root.display()
            ),
            format!("chmod 700 {}", root.display()),
        );
    } else {
        r.pass(
            "store",
            format!("{} exists, owner-only (mode {mode:o})", root.display()),
        );
    }
    let exposed = exposed_files(root);
    if !exposed.is_empty() {
        r.fail(
            "store files",
            format!(
                "{} file(s) others may read, e.g. {}",
                exposed.len(),
                exposed[0].display()
            ),
            format!("chmod -R go-rwx {}", root.display()),
        );
    }
    match hard_link_probe(root) {
        Ok(()) => r.pass("hard links", "the store's filesystem supports them (tiers share one file)"),
        Err(e) => r.warn(
            "hard links",
            format!("{e}"),
            "tier copies will be full copies: keep the store on a filesystem with hard links (ext4, xfs...)",
        ),
    }
}

/// Files in the tier folders (and the store's own) that group or others may read.
fn exposed_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                if m.permissions().mode() & 0o077 != 0 {
                    out.push(e.path());
                }
                dirs.push(e.path());
            } else if m.is_file() && m.permissions().mode() & 0o077 != 0 {
                out.push(e.path());
            }
        }
    }
    out
}

/// Whether a file can be made (and removed) in `dir`.
fn writable(dir: &std::path::Path) -> std::io::Result<()> {
    tempfile::Builder::new()
        .prefix(".kbackup-doctor-")
        .suffix(".partial")
        .tempfile_in(dir)
        .map(drop)
}

fn hard_link_probe(root: &std::path::Path) -> std::io::Result<()> {
    let dir = root.join(crate::store::STATE_DIR);
    let base = if dir.is_dir() {
        dir
    } else {
        root.to_path_buf()
    };
    let a = tempfile::Builder::new()
        .prefix(".kbackup-doctor-")
        .suffix(".partial")
        .tempfile_in(&base)?;
    let b = a.path().with_extension("link.partial");
    let linked = std::fs::hard_link(a.path(), &b);
    let _ = std::fs::remove_file(&b);
    linked
}

async fn database(cfg: &Config, store: &Store, r: &mut Report) {
    let pg = Postgres::new(cfg.db.clone());
    let name = &cfg.db.name;
    if let Err(e) = pg.check_container().await {
        r.fail(
            format!("container {}", cfg.db.container.as_deref().unwrap_or("")),
            format!("{e:#}"),
            "see the message",
        );
        return;
    }
    if let Some(c) = &cfg.db.container {
        r.pass(format!("container {c}"), "exists and runs");
    }
    let (info, chosen) = match crate::take::preflight(&pg).await {
        Ok(x) => x,
        Err(e) => {
            let text = format!("{e:#}");
            let fix = if text.contains("password") {
                "the seed's \"authentication failed\": check DB_USER and POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE)"
            } else if text.contains("older") || text.contains("version") {
                "install the client tools of the server's version or newer and set POSTGRES_BIN_DIR (or POSTGRES_CLIENT_PATHS)"
            } else {
                "see the message"
            };
            r.fail(format!("database {name}"), text, fix);
            return;
        }
    };
    let pg_dump = match chosen.tool_major("pg_dump").await {
        Ok((_, text)) => text,
        Err(_) => "pg_dump".into(),
    };
    r.pass(
        format!("database {name}"),
        format!(
            "reachable as {} on {} (PostgreSQL {}), {}; {pg_dump} can dump it",
            cfg.db.user,
            pg.describe_server(),
            info.version,
            human_size(info.database_size),
        ),
    );
    for tool in ["pg_dumpall", "psql"] {
        match chosen.tool_major(tool).await {
            Ok((major, _)) if major >= info.major() => {}
            Ok((_, text)) => r.fail(
                tool,
                format!("{text} is older than the server ({})", info.major()),
                "install the client tools of the server's version or newer (POSTGRES_BIN_DIR)",
            ),
            Err(e) => r.fail(
                tool,
                format!("{e:#}"),
                "install the PostgreSQL client tools",
            ),
        }
    }
    // The role's rights: every table readable; password hashes for the globals.
    let sql = "SELECT count(*) FILTER (WHERE NOT has_table_privilege(c.oid, 'SELECT')), count(*) \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE c.relkind IN ('r', 'p', 'm', 'S') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'";
    match pg.query(name, sql).await {
        Ok(rows) => {
            let row = rows.first().cloned().unwrap_or_default();
            let (denied, all) = (
                row.first().cloned().unwrap_or_default(),
                row.get(1).cloned().unwrap_or_default(),
            );
            if denied == "0" {
                r.pass(
                    format!("rights on {name}"),
                    format!("{} can read all {all} tables and sequences", cfg.db.user),
                );
            } else {
                r.fail(
                    format!("rights on {name}"),
                    format!(
                        "{} cannot read {denied} of {all} tables and sequences: pg_dump would fail",
                        cfg.db.user
                    ),
                    format!(
                        "GRANT pg_read_all_data TO {} (PostgreSQL 14+), or SELECT on each table",
                        cfg.db.user
                    ),
                );
            }
        }
        Err(e) => r.fail(
            format!("rights on {name}"),
            format!("{e:#}"),
            "see the message",
        ),
    }
    // Restore and full verify work in a new database beside the target.
    match pg
        .query(
            &cfg.db.maintenance_db,
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user",
        )
        .await
    {
        Ok(rows) if rows.first().and_then(|r| r.first()).is_some_and(|v| v == "t") => r.pass(
            format!("restore rights on {name}"),
            format!("{} may create databases (restore and verify work beside the target)", cfg.db.user),
        ),
        Ok(_) => r.warn(
            format!("restore rights on {name}"),
            format!(
                "{} may not create databases: restore and full verify would fail (the seed's \"permission denied\")",
                cfg.db.user
            ),
            format!(
                "ALTER ROLE {} CREATEDB, restore as a superuser (DB_USER=postgres), or verify on another server (BACKUP_VERIFY_HOST)",
                cfg.db.user
            ),
        ),
        Err(e) => r.warn(format!("restore rights on {name}"), format!("{e:#}"), "see the message"),
    }
    if info.reads_role_passwords {
        r.pass(
            format!("globals of {name}"),
            "role password hashes can be saved with the globals",
        );
    } else {
        r.warn(
            format!("globals of {name}"),
            format!("{} cannot read role password hashes: the globals are saved without them", cfg.db.user),
            "back up as a superuser to save them, or set the passwords again after a restore onto a fresh server",
        );
    }
    match crate::take::disk_need(cfg, store, &info) {
        Ok((free, need)) if free >= need => r.pass(
            format!("disk for {name}"),
            format!("{} free, the next backup needs about {}", human_size(free), human_size(need)),
        ),
        Ok((free, need)) => r.fail(
            format!("disk for {name}"),
            format!(
                "Insufficient disk space. Available: {}, Required: {}",
                human_size(free),
                human_size(need)
            ),
            "free space in BACKUP_DIR or keep fewer backups (BACKUP_KEEP_HOURLY, BACKUP_RETENTION_DAYS)",
        ),
        Err(e) => r.warn(format!("disk for {name}"), format!("{e:#}"), "see the message"),
    }
    // The last backup's age (status has the whole picture).
    match crate::state::last_backup(&store.root, &cfg.prefix, name) {
        None => r.warn(
            format!("last backup of {name}"),
            "none recorded yet",
            "run `kbackup backup` once, then schedule it (cron, systemd timer or CronJob)",
        ),
        Some(run) if !run.ok => r.warn(
            format!("last backup of {name}"),
            format!(
                "the last run failed at {}: {}",
                run.finished_at.format("%Y-%m-%d %H:%M:%S %:z"),
                run.error.as_deref().unwrap_or("unknown error")
            ),
            "`kbackup status` and backup.log say more",
        ),
        Some(run) => {
            let age = chrono::Utc::now().signed_duration_since(run.finished_at);
            let max = chrono::Duration::from_std(cfg.max_age).unwrap_or(chrono::Duration::MAX);
            let text = format!(
                "finished {} ago ({})",
                humantime::format_duration(std::time::Duration::from_secs(
                    age.num_seconds().max(0) as u64
                )),
                run.finished_at.format("%Y-%m-%d %H:%M:%S %:z")
            );
            if age > max {
                r.warn(
                    format!("last backup of {name}"),
                    text,
                    "older than BACKUP_MAX_AGE: is the schedule running? (`crontab -l`, `systemctl list-timers`)",
                );
            } else {
                r.pass(format!("last backup of {name}"), text);
            }
        }
    }
}

async fn alerts(cfg: &Config, send: bool, r: &mut Report) {
    let n = &cfg.notify;
    let mut channels = Vec::new();
    if n.ntfy.is_some() {
        channels.push("ntfy");
    }
    if n.slack.is_some() {
        channels.push("slack");
    }
    if n.email.is_some() {
        channels.push("email");
    }
    if n.webhook.is_some() {
        channels.push("webhook");
    }
    if n.healthcheck.is_some() {
        channels.push("healthcheck");
    }
    if channels.is_empty() {
        r.warn(
            "alerts",
            "no alert channel: a failed backup shows only in backup.log and its exit code",
            "set NTFY_TOPIC, SLACK_WEBHOOK_URL, BACKUP_EMAIL_RECIPIENT, BACKUP_WEBHOOK_URL or BACKUP_HEALTHCHECK_URL",
        );
        return;
    }
    if !send {
        r.pass(
            "alerts",
            format!(
                "{} configured, addresses valid (--notify sends a test message)",
                channels.join(", ")
            ),
        );
        return;
    }
    for (channel, result) in crate::notify::test(cfg).await {
        match result {
            Ok(()) => r.pass(format!("alert {channel}"), "test message sent"),
            Err(e) => r.fail(
                format!("alert {channel}"),
                format!("{e:#}"),
                "check its URL, token or SMTP settings (`kbackup config` shows them)",
            ),
        }
    }
}

fn encryption(cfg: &Config, store: &Store, r: &mut Report) {
    let identity = cfg.identity.as_deref().map(crate::crypto::Identities::load);
    match (&cfg.seal, &identity) {
        (None, None) => {
            let sealed = store
                .scan(&cfg.calendar, &cfg.prefix)
                .map(|b| b.iter().any(|b| crate::crypto::is_age(&b.path)))
                .unwrap_or(false);
            if sealed {
                r.warn(
                    "encryption",
                    "the store holds encrypted backups but no identity is configured",
                    "restores of them need BACKUP_AGE_IDENTITY or --identity",
                );
            } else {
                r.pass("encryption", "off (backups are not encrypted; BACKUP_AGE_RECIPIENTS turns it on)");
            }
        }
        (_, Some(Err(e))) => r.fail("encryption", format!("{e:#}"), "see the message"),
        (Some(seal), None) => r.pass(
            "encryption",
            format!(
                "new backups are sealed to {} recipient(s); this host holds no key to read them (restore needs BACKUP_AGE_IDENTITY)",
                seal.keys.len()
            ),
        ),
        (None, Some(Ok(ids))) => r.pass(
            "encryption",
            format!("identity {} loaded (restores of encrypted backups)", ids.path.display()),
        ),
        (Some(seal), Some(Ok(ids))) => {
            let opens = seal
                .encrypt_bytes(b"kbackup doctor")
                .and_then(|sealed| ids.decrypt_bytes(&sealed))
                .is_ok();
            if opens {
                r.pass("encryption", format!("sealed to {} recipient(s); the identity opens them", seal.keys.len()));
            } else {
                r.fail(
                    "encryption",
                    format!(
                        "the identity {} matches none of BACKUP_AGE_RECIPIENTS: restores would fail",
                        ids.path.display()
                    ),
                    "`age-keygen -y IDENTITY` prints its public key: put it in BACKUP_AGE_RECIPIENTS",
                );
            }
        }
    }
}
