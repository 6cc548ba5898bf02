//! What earlier runs that were killed (`kill -9`, a lost machine) left behind,
//! found at the start of every backup, restore and verify, and cleared by
//! `kbackup cleanup`: undo actions journaled by runs that are gone (drop a
//! scratch database, reopen a target it closed), scratch and verification
//! databases whose run is gone, and temporary files.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use crate::cleanup::{self, Entry};
use crate::config::Config;
use crate::postgres::Postgres;
use crate::sql::ident;

#[derive(Debug, Clone)]
pub enum Leftover {
    /// A journaled undo action of a run that is gone.
    Undo { file: PathBuf, entry: Entry },
    /// A `*_kbrestore_*` or `*_kbverify_*` database no journal of this store
    /// accounts for, nobody connected: reported only (it may belong to a run
    /// of another store or host, which this machine cannot see).
    Database { pg: Postgres, name: String },
    /// A temporary file of a run that is gone.
    File(PathBuf),
}

impl Leftover {
    /// Whether `kbackup cleanup` clears it (a database it cannot prove
    /// abandoned is only reported).
    pub fn clearable(&self) -> bool {
        !matches!(self, Leftover::Database { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            Leftover::Undo { entry, .. } => match (&entry.server, &entry.note) {
                (_, Some(note)) => format!("kbackup pid {} was killed: {note}", entry.pid),
                (None, None) if entry.container_file.is_some() => {
                    let f = entry.container_file.as_ref().expect("checked");
                    format!(
                        "temporary file {} in container {} (kbackup pid {})",
                        f.path, f.container, entry.pid
                    )
                }
                (Some(s), None) => format!(
                    "unfinished undo of kbackup pid {} on {}: {}",
                    entry.pid,
                    server_text(&s.host, s.port, &s.container),
                    entry
                        .session
                        .iter()
                        .map(|a| format!("end its sessions ({a})"))
                        .chain(entry.statements.iter().cloned())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                (None, None) => format!("an empty undo entry of kbackup pid {}", entry.pid),
            },
            Leftover::Database { pg, name } => {
                format!(
                    "database {name} on {} (its run is gone)",
                    pg.describe_server()
                )
            }
            Leftover::File(p) => format!("temporary file {}", p.display()),
        }
    }
}

fn server_text(host: &Option<String>, port: u16, container: &Option<String>) -> String {
    match container {
        Some(c) => format!("container {c}"),
        None => format!("{}:{port}", host.as_deref().unwrap_or("local socket")),
    }
}

/// The pid in a scratch or verification database's name
/// (`<db>_kbrestore_<YYYYmmddHHMMSS>_<pid>`, `<db>_kbverify_..._<pid>`).
pub fn owner_of_database(name: &str) -> Option<u32> {
    let (_, tail) = name
        .rsplit_once("_kbrestore_")
        .or_else(|| name.rsplit_once("_kbverify_"))?;
    let (stamp, pid) = tail.split_once('_')?;
    // `_2`, `_3`... when the name was taken.
    let pid = pid.split_once('_').map_or(pid, |(p, _)| p);
    (stamp.len() == 14 && stamp.bytes().all(|b| b.is_ascii_digit()))
        .then(|| pid.parse().ok())
        .flatten()
}

/// When a scratch or verification database was made, from its name.
pub fn created_at(name: &str) -> Option<chrono::NaiveDateTime> {
    owner_of_database(name)?;
    let (_, tail) = name
        .rsplit_once("_kbrestore_")
        .or_else(|| name.rsplit_once("_kbverify_"))?;
    chrono::NaiveDateTime::parse_from_str(tail.get(..14)?, "%Y%m%d%H%M%S").ok()
}

/// Everything earlier runs left, on the configured servers and in the store.
/// A server that cannot be reached is skipped (the command says so itself).
pub async fn find(cfg: &Config) -> Vec<Leftover> {
    let root = &cfg.backup_dir;
    let mut out: Vec<Leftover> = cleanup::stranded(root)
        .into_iter()
        .map(|(file, entry)| Leftover::Undo { file, entry })
        .collect();
    let journaled: Vec<String> = out
        .iter()
        .filter_map(|l| match l {
            Leftover::Undo { entry, .. } => Some(entry.statements.join(";")),
            _ => None,
        })
        .collect();
    let mut servers: Vec<Postgres> = cfg.servers().into_iter().map(Postgres::new).collect();
    servers.extend(cfg.verify_server.clone().map(Postgres::new));
    for pg in servers {
        let Ok(rows) = pg
            .query(
                &pg.db.maintenance_db,
                "SELECT d.datname, (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname) \
                   FROM pg_database d \
                  WHERE d.datname LIKE '%\\_kbrestore\\_%' OR d.datname LIKE '%\\_kbverify\\_%'",
            )
            .await
        else {
            continue;
        };
        for row in rows {
            let [name, sessions] = &row[..] else {
                continue;
            };
            let ours_alive = owner_of_database(name).is_some_and(|p| p == std::process::id());
            let mentioned = journaled.iter().any(|s| s.contains(&ident(name)));
            // Only once it is an hour old: a run elsewhere may be between steps.
            let old = created_at(name).is_some_and(|t| {
                chrono::Local::now().naive_local() - t > chrono::Duration::hours(1)
            });
            if !ours_alive && old && sessions == "0" && !mentioned {
                out.push(Leftover::Database {
                    pg: pg.clone(),
                    name: name.clone(),
                });
            }
        }
    }
    out.extend(temp_files(root).into_iter().map(Leftover::File));
    out
}

/// Temporary files in the store's state folder whose run is gone.
fn temp_files(root: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(root.join(crate::store::STATE_DIR)) else {
        return vec![];
    };
    rd.flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            crate::store::partial_owner(&name).is_some_and(|run| !cleanup::run_alive(root, &run))
        })
        .map(|e| e.path())
        .collect()
}

/// Warns about what earlier runs left, with the command that clears it.
pub async fn report(cfg: &Config) {
    let found = find(cfg).await;
    if found.is_empty() {
        return;
    }
    let list: Vec<String> = found.iter().map(Leftover::describe).collect();
    tracing::warn!(
        "An earlier kbackup run was stopped before it could clean up: {}. `kbackup cleanup` clears this \
         (`kbackup cleanup --dry-run` lists only)",
        list.join("; ")
    );
}

/// Clears one leftover.
pub async fn clear(cfg: &Config, l: &Leftover) -> Result<()> {
    match l {
        Leftover::Undo { file, entry } => {
            if let Some(server) = entry.server.as_ref() {
                let pg = Postgres::new(server.apply(&cfg.db));
                let sql = cleanup::undo_sql(entry.session.as_deref(), &entry.statements);
                pg.admin(&sql, None).await.map_err(|e| anyhow!(e))?;
            }
            if let Some(f) = &entry.container_file {
                cleanup::remove_container_file(&f.container, &f.path).await?;
            }
            std::fs::remove_file(file)?;
        }
        Leftover::Database { .. } => {}
        Leftover::File(p) if p.is_dir() => std::fs::remove_dir_all(p)?,
        Leftover::File(p) => std::fs::remove_file(p)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_and_verification_names_carry_their_pid() {
        assert_eq!(
            owner_of_database("app_kbrestore_20261122031805_8449"),
            Some(8449)
        );
        assert_eq!(
            owner_of_database("app_kbrestore_20261122031805_1_2"),
            Some(1)
        );
        assert_eq!(
            owner_of_database("app_kbverify_20261122031805_12"),
            Some(12)
        );
        assert_eq!(
            owner_of_database("weird_kbrestore_x_kbrestore_20261122031805_7"),
            Some(7)
        );
        assert_eq!(owner_of_database("app_pre_restore_20261122_031805"), None);
        assert_eq!(owner_of_database("app_kbrestore_2026_1"), None);
        assert_eq!(owner_of_database("app_kbrestore_20261122031805_x"), None);
        assert_eq!(owner_of_database("app"), None);
        assert_eq!(
            created_at("app_kbrestore_20261122031805_8449").map(|t| t.to_string()),
            Some("2026-11-22 03:18:05".to_string())
        );
    }
}
