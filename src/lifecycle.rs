//! Database lifecycle on a server, each step with its undo guard: create a
//! database as the archive describes it, drop one (ending its sessions), and
//! the rename swap that puts a restored copy in place of a target. Commands
//! (restore, verify) orchestrate these; none of it decides which backup.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::archive::Summary;
use crate::cleanup;
use crate::clients;
use crate::config::Config;
use crate::postgres::Postgres;
use crate::sql::{self, ident, literal};

/// The shell command that drops database `name` on `pg`'s server, quoted to
/// paste as is (`docker exec ...` in docker mode).
pub fn dropdb_command(pg: &Postgres, name: &str) -> String {
    pg.command_line("dropdb", &[name])
}

/// Sessions a restore may end on a database it replaces or drops: every other
/// session but kbackup's own (a backup's pg_dump is never killed: it carries a
/// `kbackup-` application_name, and the swap waits for it, bounded).
pub fn others_sessions(db: &str) -> String {
    format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = {} \
         AND pid <> pg_backend_pid() AND application_name NOT LIKE 'kbackup-%'",
        literal(db)
    )
}

/// A database a restore replaced and kept (`<target>_pre_restore_<time>`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeptCopy {
    pub name: String,
    pub size_bytes: u64,
    /// When the restore replaced it (the server's local time, from the name).
    pub replaced_at: chrono::NaiveDateTime,
}

/// The time in a kept copy's name: `..._pre_restore_20261120_101500` (or
/// `..._2` when that name was taken).
pub fn kept_copy_time(name: &str) -> Option<chrono::NaiveDateTime> {
    let (_, rest) = name.rsplit_once("_pre_restore_")?;
    let stamp = rest.get(..15)?;
    let tail = &rest[15..];
    let numbered = tail.is_empty()
        || tail
            .strip_prefix('_')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !numbered {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%d_%H%M%S").ok()
}

/// The kept copies on the server, oldest first.
pub async fn kept_copies(pg: &Postgres) -> Result<Vec<KeptCopy>> {
    let rows = pg
        .query(
            &pg.db.maintenance_db,
            "SELECT datname, pg_database_size(datname) FROM pg_database WHERE datname LIKE '%\\_pre\\_restore\\_%'",
        )
        .await?;
    let mut out: Vec<KeptCopy> = rows
        .into_iter()
        .filter_map(|r| {
            Some(KeptCopy {
                replaced_at: kept_copy_time(r.first()?)?,
                size_bytes: r.get(1)?.parse().ok()?,
                name: r.into_iter().next()?,
            })
        })
        .collect();
    out.sort_by_key(|c| c.replaced_at);
    Ok(out)
}

/// PostgreSQL's limit on identifier length, in bytes.
pub const MAX_IDENT: usize = 63;

/// A name derived from `base` that fits PostgreSQL's 63 bytes: `base` is cut
/// (on a character boundary) to leave room for `suffix`.
pub fn derived_name(base: &str, suffix: &str) -> String {
    let mut end = base.len().min(MAX_IDENT.saturating_sub(suffix.len()));
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &base[..end])
}

/// CREATE DATABASE for a restore target: the archive's encoding and locale, and
/// its owner when that role exists.
/// The options of CREATE DATABASE that carry the archive's encoding and
/// locale, with the server version that introduced each: a newer pg_dump
/// writes them all (`LOCALE_PROVIDER = libc` for a PostgreSQL 13 database).
pub const CREATE_OPTIONS: &[(&str, u32)] = &[
    ("ENCODING", 0),
    ("LOCALE_PROVIDER", 15),
    ("LOCALE", 13),
    ("LC_COLLATE", 0),
    ("LC_CTYPE", 0),
    ("ICU_LOCALE", 15),
    ("ICU_RULES", 16),
    ("BUILTIN_LOCALE", 17),
];

/// CREATE DATABASE `name` with the archive's encoding, and its locale as far
/// as a server of `locale_for` (its major version) understands it; None: the
/// encoding only (the server's default locale).
pub fn create_database_sql(
    name: &str,
    summary: &Summary,
    owner_exists: bool,
    locale_for: Option<u32>,
) -> String {
    let mut sql = format!("CREATE DATABASE {} WITH TEMPLATE template0", ident(name));
    if let Some(create) = &summary.database_entries.create {
        let opts = sql::options(create);
        for (key, since) in CREATE_OPTIONS {
            let known = match locale_for {
                Some(server) => clients::order(server) >= clients::order(*since),
                None => *key == "ENCODING",
            };
            if let Some(v) = opts.get(*key).filter(|_| known) {
                sql.push_str(&format!(" {key} = {v}"));
            }
        }
    }
    if let Some(owner) = summary
        .database_entries
        .owner
        .as_deref()
        .filter(|_| owner_exists)
    {
        sql.push_str(&format!(" OWNER = {}", ident(owner)));
    }
    sql
}

/// CREATE DATABASE found the name taken: the database is not this run's.
#[derive(Debug)]
pub struct AlreadyExists(pub String);

impl std::fmt::Display for AlreadyExists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a database named {} already exists and was not made by this run: it is left alone",
            self.0
        )
    }
}

impl std::error::Error for AlreadyExists {}

/// Creates database `name` for this run, its undo (drop it) armed first and
/// run on every exit path until the caller disarms it. A database that turns
/// out to exist already (another run, another host picked the same name) is
/// not this run's: its undo is disarmed at once, so nothing ever drops it.
pub async fn create_own_database(
    pg: &Postgres,
    name: &str,
    summary: &Summary,
    server_major: u32,
) -> Result<cleanup::Registered> {
    let undo = cleanup::register(pg, drop_statements(name));
    match create_database(pg, name, summary, server_major).await {
        Ok(()) => Ok(undo),
        Err(e) if e.downcast_ref::<AlreadyExists>().is_some() => {
            undo.done();
            Err(e)
        }
        Err(e) => Err(e),
    }
}

pub async fn create_database(
    pg: &Postgres,
    name: &str,
    summary: &Summary,
    server_major: u32,
) -> Result<()> {
    let owner_exists = match &summary.database_entries.owner {
        Some(o) => !pg
            .query(
                &pg.db.maintenance_db,
                &format!("SELECT 1 FROM pg_roles WHERE rolname = {}", literal(o)),
            )
            .await?
            .is_empty(),
        None => false,
    };
    let sql = create_database_sql(name, summary, owner_exists, Some(server_major));
    if let Err(e) = pg.admin(&[&sql], None).await {
        if crate::postgres::sqlstate(e.stderr()) == Some("42P04") {
            return Err(anyhow::Error::new(AlreadyExists(name.to_string())));
        }
        // The archive's locale may not exist on this server: fall back to the server's.
        let fallback = create_database_sql(name, summary, owner_exists, None);
        tracing::warn!(
            "{sql} failed ({}); creating it with the server's default locale",
            e.stderr().trim()
        );
        pg.admin(&[&fallback], None)
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("cannot create database {name}"))?;
    }
    Ok(())
}

/// Terminates other sessions, then drops the database (retrying while they exit).
pub async fn drop_database(pg: &Postgres, name: &str) -> Result<()> {
    let mut last = None;
    for _ in 0..40 {
        let terminate = others_sessions(name);
        let drop = format!("DROP DATABASE IF EXISTS {}", ident(name));
        match pg.admin(&[&terminate, &drop], None).await {
            Ok(_) => return Ok(()),
            Err(e) if busy(&e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(anyhow!(e)).with_context(|| format!("cannot drop database {name}"))
            }
        }
    }
    Err(anyhow!(last.expect("tried")))
        .with_context(|| format!("cannot drop database {name}: sessions keep connecting"))
}

pub fn drop_statements(db: &str) -> Vec<String> {
    vec![
        format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = {}",
            literal(db)
        ),
        format!("DROP DATABASE IF EXISTS {}", ident(db)),
    ]
}

/// The first name `base` + `suffix` (then `suffix_2`, `suffix_3`...) that no
/// database has, cut to 63 bytes on `base`'s side: the suffix (a time stamp)
/// stays whole.
pub async fn free_name(pg: &Postgres, base: &str, suffix: &str) -> Result<String> {
    for n in 1.. {
        let candidate = if n == 1 {
            derived_name(base, suffix)
        } else {
            derived_name(base, &format!("{suffix}_{n}"))
        };
        let sql = format!(
            "SELECT 1 FROM pg_database WHERE datname = {}",
            literal(&candidate)
        );
        if pg.query(&pg.db.maintenance_db, &sql).await?.is_empty() {
            return Ok(candidate);
        }
    }
    unreachable!()
}

/// Step 4: close the target to new sessions, end its sessions, and rename both
/// databases in one transaction. The target stays closed at most
/// BACKUP_SWAP_TIMEOUT; on failure it is reopened as it was (its guard is armed
/// before it is closed) and the error says what held it.
pub async fn swap(
    cfg: &Config,
    pg: &Postgres,
    target: &str,
    scratch: &str,
    old: &str,
) -> Result<()> {
    let (t, s, o) = (ident(target), ident(scratch), ident(old));
    tracing::info!("Swapping: {target} -> {old}, {scratch} -> {target}...");
    let reopen = format!("ALTER DATABASE {t} WITH ALLOW_CONNECTIONS true");
    // A target the operator closed on purpose stays closed: it is neither
    // closed by us nor reopened by our undo.
    let was_open = pg
        .query(
            &pg.db.maintenance_db,
            &format!(
                "SELECT datallowconn FROM pg_database WHERE datname = {}",
                literal(target)
            ),
        )
        .await?
        .first()
        .is_none_or(|r| r[0] == "t");
    let closed = was_open.then(|| cleanup::register(pg, vec![reopen.clone()]));
    if was_open {
        if let Err(e) = pg
            .admin(
                &[format!("ALTER DATABASE {t} WITH ALLOW_CONNECTIONS false")],
                None,
            )
            .await
        {
            tracing::warn!(
                "cannot close {target} to new connections ({}); ending its sessions anyway",
                e.stderr().trim()
            );
        }
    }
    let terminate = others_sessions(target);
    let rename = format!(
        "BEGIN; ALTER DATABASE {t} RENAME TO {o}; ALTER DATABASE {s} RENAME TO {t}; COMMIT;"
    );
    let deadline = Instant::now() + cfg.swap_timeout;
    let result = loop {
        // Each try is left to finish (the server waits up to 5 s for sessions to
        // go, then fails): a try given up midway could still rename after we
        // reported failure. A lock on the database (a prepared transaction, an
        // idle transaction that altered it) is waited for only until the
        // deadline (lock_timeout); the deadline is checked between tries.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .max(100);
        let lock_timeout = format!("SET lock_timeout = {left}");
        match pg.admin(&[&terminate, &lock_timeout, &rename], None).await {
            Ok(_) => break Ok(()),
            Err(e) if busy(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) if busy(&e) => {
                let held = holders(pg, target).await;
                break Err(anyhow!(e).context(format!(
                    "{target} stayed in use for {} (BACKUP_SWAP_TIMEOUT): {held}",
                    humantime::format_duration(cfg.swap_timeout)
                )));
            }
            Err(e) => break Err(anyhow!(e)),
        }
    };
    if let Err(e) = result {
        if let Some(closed) = closed {
            if pg.admin(&[&reopen], None).await.is_ok() {
                closed.done();
            }
        }
        return Err(e.context(format!(
            "cannot swap the restored copy in for {target}; {target} was not changed{}",
            if was_open {
                " and is open again"
            } else {
                " (it stays closed, as it was)"
            }
        )));
    }
    if let Some(closed) = closed {
        closed.done();
    }
    // The previous database stays reachable for inspection.
    if let Err(e) = pg
        .admin(
            &[format!("ALTER DATABASE {o} WITH ALLOW_CONNECTIONS true")],
            None,
        )
        .await
    {
        tracing::warn!("cannot reopen {old} to connections: {}", e.stderr().trim());
    }
    Ok(())
}

/// The target is busy: in use by sessions (55006) or locked (55P03, lock_timeout).
fn busy(e: &crate::process::ProcessError) -> bool {
    matches!(
        crate::postgres::sqlstate(e.stderr()),
        Some("55006" | "55P03")
    )
}

/// What keeps `db` busy: its sessions, and whoever holds a lock on the
/// database itself: sessions elsewhere, and, when a lock has no session (a
/// prepared transaction's), the prepared transactions of every database.
pub async fn holders(pg: &Postgres, db: &str) -> String {
    let sql = format!(
        "WITH d AS (SELECT oid FROM pg_database WHERE datname = {l}), \
              locks AS (SELECT l.* FROM pg_locks l, d WHERE l.locktype = 'object' \
                          AND l.classid = 'pg_database'::regclass AND l.objid = d.oid AND l.granted) \
         SELECT 'session pid ' || a.pid || ' (' || coalesce(nullif(a.application_name, ''), 'no application name') || \
                ', user ' || coalesce(a.usename, '?') || ', ' || coalesce(a.state, '?') || ', in ' || coalesce(a.datname, '?') || ')' \
           FROM pg_stat_activity a \
          WHERE a.pid <> pg_backend_pid() \
            AND (a.datname = {l} OR a.pid IN (SELECT pid FROM locks WHERE pid IS NOT NULL)) \
         UNION ALL \
         SELECT 'prepared transaction ' || quote_literal(p.gid) || ' (owner ' || p.owner || ', since ' || p.prepared || \
                '): in database ' || p.database || ', COMMIT PREPARED or ROLLBACK PREPARED ' || quote_literal(p.gid) \
           FROM pg_prepared_xacts p \
          WHERE p.database = {l} \
             OR EXISTS (SELECT 1 FROM locks WHERE locks.pid IS NULL)",
        l = literal(db)
    );
    match pg.query(&pg.db.maintenance_db, &sql).await {
        Ok(rows) if rows.is_empty() => "nothing visible holds it now; try again".to_string(),
        Ok(rows) => format!(
            "held by {}",
            rows.iter()
                .map(|r| r.join(" "))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Err(e) => format!("(cannot list what holds it: {e:#})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_copies_are_known_by_their_names() {
        let t = |s| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap();
        assert_eq!(
            kept_copy_time("app_pre_restore_20261120_101500"),
            Some(t("2026-11-20 10:15:00"))
        );
        assert_eq!(
            kept_copy_time("my_pre_restore_db_pre_restore_20261120_101500_2"),
            Some(t("2026-11-20 10:15:00"))
        );
        for other in [
            "app_pre_restore_2026112",
            "app_pre_restore_20261120_101500x",
            "app_pre_restore_20261120_101500_",
            "app",
        ] {
            assert_eq!(kept_copy_time(other), None, "{other}");
        }
    }

    #[test]
    fn derived_names_fit_63_bytes_on_char_boundaries() {
        let long = "é".repeat(40); // 80 bytes
        let n = derived_name(&long, "_pre_restore_20251226_080102");
        assert!(n.len() <= 63, "{} bytes", n.len());
        assert!(n.ends_with("_pre_restore_20251226_080102"));
        assert_eq!(derived_name("kairon", "_x"), "kairon_x");
    }

    #[test]
    fn create_database_keeps_encoding_locale_and_owner() {
        let mut s: Summary = serde_json::from_value(serde_json::json!({
            "format_version": "1.14.0", "compression": "none", "database": "app", "server_version": null,
            "pg_dump_version": null, "toc_entries": 0, "objects": {}, "tables": [], "large_objects": 0, "archive_bytes": 0
        }))
        .unwrap();
        s.database_entries.create = Some(
            "CREATE DATABASE app WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE_PROVIDER = libc LOCALE = 'C.UTF-8';".into(),
        );
        s.database_entries.owner = Some("App Owner".into());
        assert_eq!(
            create_database_sql("app_x", &s, true, Some(17)),
            "CREATE DATABASE \"app_x\" WITH TEMPLATE template0 ENCODING = 'UTF8' LOCALE_PROVIDER = libc LOCALE = 'C.UTF-8' OWNER = \"App Owner\""
        );
        assert_eq!(
            create_database_sql("app_x", &s, false, None),
            "CREATE DATABASE \"app_x\" WITH TEMPLATE template0 ENCODING = 'UTF8'"
        );
        // pg_dump 17 writes LOCALE_PROVIDER for a PostgreSQL 13 database too; 13 has LOCALE, 12 not even that.
        assert_eq!(
            create_database_sql("app_x", &s, false, Some(13)),
            "CREATE DATABASE \"app_x\" WITH TEMPLATE template0 ENCODING = 'UTF8' LOCALE = 'C.UTF-8'"
        );
        assert_eq!(
            create_database_sql("app_x", &s, false, Some(12)),
            "CREATE DATABASE \"app_x\" WITH TEMPLATE template0 ENCODING = 'UTF8'"
        );
        s.database_entries.create = Some(
            "CREATE DATABASE app WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE_PROVIDER = builtin LOCALE = 'C.UTF-8' BUILTIN_LOCALE = 'C.UTF-8';".into(),
        );
        assert!(create_database_sql("app_x", &s, false, Some(17))
            .ends_with("BUILTIN_LOCALE = 'C.UTF-8'"));
    }
}
