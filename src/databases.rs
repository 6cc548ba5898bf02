//! Which databases a run covers: the configured one or list, or under
//! DB_NAME=all the server's own (the choice itself is pure: [`choose_all`]).

use anyhow::{Context, Result};

use crate::config::{Config, Databases};
use crate::postgres::Postgres;
use crate::state;

/// Why `all` leaves a database on the server out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// `ALLOW_CONNECTIONS false`: nothing can connect to dump it.
    NoConnections,
    /// Named in BACKUP_EXCLUDE.
    Excluded,
    /// kbackup's own: a restore's scratch or kept copy, a verification database.
    Kbackup,
}

impl Left {
    pub fn text(self) -> &'static str {
        match self {
            Left::NoConnections => "it does not accept connections (ALLOW_CONNECTIONS false)",
            Left::Excluded => "BACKUP_EXCLUDE names it",
            Left::Kbackup => {
                "it is kbackup's own (a restore's scratch or kept copy, or a verification database)"
            }
        }
    }
}

/// Of the server's non-template databases (name, accepts connections), the
/// ones DB_NAME=all backs up, in name order, and the ones it leaves out.
pub fn choose_all(
    found: &[(String, bool)],
    exclude: &[String],
) -> (Vec<String>, Vec<(String, Left)>) {
    let mut chosen = Vec::new();
    let mut left = Vec::new();
    for (name, connects) in found {
        let why = if exclude.contains(name) {
            Some(Left::Excluded)
        } else if crate::leftovers::owner_of_database(name).is_some()
            || crate::lifecycle::kept_copy_time(name).is_some()
        {
            Some(Left::Kbackup)
        } else if !connects {
            Some(Left::NoConnections)
        } else {
            None
        };
        match why {
            Some(w) => left.push((name.clone(), w)),
            None => chosen.push(name.clone()),
        }
    }
    chosen.sort();
    left.sort_by(|a, b| a.0.cmp(&b.0));
    (chosen, left)
}

/// The configured databases' settings, asking the server under DB_NAME=all
/// (and, when `record`, recording what it found for [`recorded`]).
pub async fn on_server(cfg: &Config, record: bool) -> Result<Vec<Config>> {
    let exclude = match &cfg.databases {
        Databases::All { exclude, .. } => exclude,
        _ => return Ok(configured(cfg)),
    };
    let pg = Postgres::new(cfg.db.clone());
    pg.check_container().await?;
    let rows = pg
        .with_some_client("psql")
        .await?
        .query(
            &cfg.db.maintenance_db,
            "SELECT datname, datallowconn FROM pg_database WHERE NOT datistemplate",
        )
        .await
        .context("listing the server's databases (DB_NAME=all)")?;
    let found: Vec<(String, bool)> = rows
        .into_iter()
        .filter_map(|r| Some((r.first()?.clone(), r.get(1)? == "t")))
        .collect();
    let (chosen, left) = choose_all(&found, exclude);
    for (name, why) in &left {
        tracing::info!("DB_NAME=all leaves out {name:?}: {}", why.text());
    }
    let found = state::ServerDatabases {
        found_at: chrono::Local::now().fixed_offset(),
        databases: chosen.clone(),
    };
    if record {
        if let Err(e) = state::record_server_databases(&cfg.backup_dir, &found) {
            tracing::warn!("cannot record the server's databases for `kbackup status`: {e:#}");
        }
    }
    Ok(chosen.iter().map(|n| cfg.for_database(n)).collect())
}

/// The configured databases' settings without asking the server: under
/// DB_NAME=all, the ones the last backup run found (BACKUP_EXCLUDE applied
/// again), or none when no run has looked yet.
pub fn recorded(cfg: &Config) -> Vec<Config> {
    match &cfg.databases {
        Databases::All { exclude, .. } => state::server_databases(&cfg.backup_dir)
            .map(|r| r.databases)
            .unwrap_or_default()
            .iter()
            .filter(|n| !exclude.contains(n))
            .map(|n| cfg.for_database(n))
            .collect(),
        _ => configured(cfg),
    }
}

fn configured(cfg: &Config) -> Vec<Config> {
    match &cfg.databases {
        Databases::One => vec![cfg.clone()],
        Databases::Several(each) => each.clone(),
        Databases::All { .. } => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(list: &[(&str, bool)]) -> Vec<(String, bool)> {
        list.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn all_takes_every_connectable_database_but_the_excluded_and_kbackups_own() {
        let f = found(&[
            ("zeta", true),
            ("app", true),
            ("closed", false),
            ("skip me", true),
            ("app_kbrestore_20261122080000_123", true),
            ("app_kbverify_20261122080000_123_2", true),
            ("app_pre_restore_20261122_080000", true),
            ("name with \"quotes\" and ünïcode", true),
        ]);
        let (chosen, left) = choose_all(&f, &["skip me".to_string()]);
        assert_eq!(chosen, ["app", "name with \"quotes\" and ünïcode", "zeta"]);
        let why: Vec<(&str, Left)> = left.iter().map(|(n, w)| (n.as_str(), *w)).collect();
        assert_eq!(
            why,
            [
                ("app_kbrestore_20261122080000_123", Left::Kbackup),
                ("app_kbverify_20261122080000_123_2", Left::Kbackup),
                ("app_pre_restore_20261122_080000", Left::Kbackup),
                ("closed", Left::NoConnections),
                ("skip me", Left::Excluded),
            ]
        );
    }

    #[test]
    fn a_database_merely_named_like_a_copy_is_still_backed_up() {
        let (chosen, _) = choose_all(
            &found(&[("pre_restore_notes", true), ("kbrestore", true)]),
            &[],
        );
        assert_eq!(chosen, ["kbrestore", "pre_restore_notes"]);
    }
}
