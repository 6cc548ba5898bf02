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

/// The databases a run covers, and the ones it must report as failed without
/// touching: under DB_NAME=all, a database two names would file under one
/// prefix (`a/b` and `a_b`), and one an earlier run backed up that is now
/// closed to connections or gone.
#[derive(Default)]
pub struct Found {
    pub dbs: Vec<Config>,
    pub failed: Vec<(Config, String)>,
}

impl Found {
    /// Every database's settings, failed ones included (for filters and metrics).
    pub fn all(&self) -> Vec<Config> {
        self.dbs
            .iter()
            .cloned()
            .chain(self.failed.iter().map(|(c, _)| c.clone()))
            .collect()
    }

    /// Says each failed database (for commands that go on with the others).
    pub fn warn_failed(&self, command: &str) {
        for (c, why) in &self.failed {
            tracing::error!("{command} of {} is not done: {why}", c.db.name);
        }
    }
}

/// Splits off the databases whose file prefix another one also has: their
/// files could not be told apart, so none of them is backed up, rotated or
/// restored until one gets its own prefix.
pub fn split_conflicts(dbs: Vec<Config>) -> Found {
    let mut found = Found::default();
    for c in &dbs {
        let others: Vec<&str> = dbs
            .iter()
            .filter(|o| o.prefix == c.prefix && o.db.name != c.db.name)
            .map(|o| o.db.name.as_str())
            .collect();
        if others.is_empty() {
            found.dbs.push(c.clone());
        } else {
            found.failed.push((
                c.clone(),
                format!(
                    "its file prefix {:?} is also {}'s: their backups could not be told apart; give one of \
                     them its own `prefix` in a [[database]] table",
                    c.prefix,
                    others.join(", ")
                ),
            ));
        }
    }
    found
}

/// The configured databases' settings, asking the server under DB_NAME=all
/// (and, when `record`, recording what it found for [`recorded`]).
pub async fn on_server(cfg: &Config, record: bool) -> Result<Found> {
    let exclude = match &cfg.databases {
        Databases::All { exclude, .. } => exclude,
        _ => {
            return Ok(Found {
                dbs: configured(cfg),
                failed: vec![],
            })
        }
    };
    // Asked of the maintenance database (`all` names no database to connect to).
    let mut db = cfg.db.clone();
    db.name = db.maintenance_db.clone();
    let pg = Postgres::new(db);
    pg.check_container().await?;
    let rows = pg
        .with_some_client("psql")
        .await?
        .query(
            &cfg.db.maintenance_db,
            "SELECT datname, datallowconn FROM pg_database WHERE NOT datistemplate",
        )
        .await
        .with_context(|| {
            format!(
                "listing the databases of {} (DB_NAME=all)",
                pg.describe_server()
            )
        })?;
    let found: Vec<(String, bool)> = rows
        .into_iter()
        .filter_map(|r| Some((r.first()?.clone(), r.get(1)? == "t")))
        .collect();
    let (chosen, left) = choose_all(&found, exclude);
    for (name, why) in &left {
        tracing::info!("DB_NAME=all leaves out {name:?}: {}", why.text());
    }
    let before = state::server_databases(&cfg.backup_dir)
        .map(|r| r.databases)
        .unwrap_or_default();
    let lost = lost(&before, &found, &left);
    let mut result = split_conflicts(chosen.iter().map(|n| cfg.for_database(n)).collect());
    let mut expected = chosen.clone();
    for (name, why, keep) in lost {
        result.failed.push((cfg.for_database(&name), why));
        if keep {
            expected.push(name);
        }
    }
    if record {
        let found = state::ServerDatabases {
            found_at: chrono::Local::now().fixed_offset(),
            databases: expected,
        };
        if let Err(e) = state::record_server_databases(&cfg.backup_dir, &found) {
            tracing::warn!("cannot record the server's databases for `kbackup status`: {e:#}");
        }
    }
    Ok(result)
}

/// The databases an earlier run backed up that this one cannot: (name, why,
/// whether to keep expecting it). One closed to connections fails every run
/// until it opens again or BACKUP_EXCLUDE names it; one gone fails once.
fn lost(
    before: &[String],
    found: &[(String, bool)],
    left: &[(String, Left)],
) -> Vec<(String, String, bool)> {
    before
        .iter()
        .filter_map(|name| {
            if !found.iter().any(|(n, _)| n == name) {
                return Some((
                    name.clone(),
                    "it was backed up by an earlier run and is no longer on the server; its backups are kept. \
                     If it was dropped on purpose there is nothing to do: the next run no longer expects it"
                        .to_string(),
                    false,
                ));
            }
            match left.iter().find(|(n, _)| n == name).map(|(_, w)| *w) {
                Some(Left::NoConnections) => Some((
                    name.clone(),
                    "it was backed up by an earlier run and no longer accepts connections (ALLOW_CONNECTIONS \
                     false): allow them again, or name it in BACKUP_EXCLUDE"
                        .to_string(),
                    true,
                )),
                _ => None,
            }
        })
        .collect()
}

/// The configured databases' settings without asking the server: under
/// DB_NAME=all, the ones the last backup run found (BACKUP_EXCLUDE applied
/// again); when no run recorded them (a store copied back from the remote),
/// the databases its manifests name.
pub fn recorded(cfg: &Config) -> Found {
    match &cfg.databases {
        Databases::All { exclude, .. } => split_conflicts(
            state::server_databases(&cfg.backup_dir)
                .map(|r| r.databases)
                .unwrap_or_else(|| in_store(cfg))
                .iter()
                .filter(|n| !exclude.contains(n))
                .map(|n| cfg.for_database(n))
                .collect(),
        ),
        _ => Found {
            dbs: configured(cfg),
            failed: vec![],
        },
    }
}

/// The databases the store's manifests name, in name order.
fn in_store(cfg: &Config) -> Vec<String> {
    let store = crate::store::Store::new(cfg.backup_dir.clone());
    let mut names: Vec<String> = store
        .scan(&cfg.calendar, &cfg.prefix)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|b| b.manifest.map(|m| m.database.to_string()))
        .collect();
    names.sort();
    names.dedup();
    names
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
    fn databases_lost_since_the_last_run_fail_closed_ones_until_they_open() {
        let before = vec![
            "app".to_string(),
            "closed".into(),
            "dropped".into(),
            "skip".into(),
        ];
        let found = found(&[("app", true), ("closed", false), ("skip", true)]);
        let (_, left) = choose_all(&found, &["skip".to_string()]);
        let lost: Vec<(String, bool)> = lost(&before, &found, &left)
            .into_iter()
            .map(|(n, _, keep)| (n, keep))
            .collect();
        assert_eq!(
            lost,
            [("closed".to_string(), true), ("dropped".to_string(), false)]
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
