//! The plan: every name and step a restore will use, decided before anything
//! changes. `--dry-run` prints this value; the real run logs the same lines and
//! then executes it (strategy.rs), so the two cannot drift apart.

use anyhow::Result;
use chrono::{DateTime, Local};

use super::choose::{Checked, Source};
use crate::cli::RestoreArgs;
use crate::clients::{self, RestoreMode};
use crate::config::Config;
use crate::dump;
use crate::lifecycle::{create_database_sql, dropdb_command, free_name};
use crate::postgres::{version_major, Postgres, RestoreClient};
use crate::readback::Feed;
use crate::sql::{ident, literal};
use crate::store::human_size;

/// The database being replaced.
pub struct Existing {
    pub size: u64,
    pub connections: u64,
    pub tables: u64,
}

/// How the backup reaches the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Restore into `scratch`, prove it, then swap it in: the target (when it
    /// exists) is renamed to `old`, dropped afterwards when `drop_old`.
    Scratch {
        scratch: String,
        old: Option<String>,
        drop_old: bool,
    },
    /// `--in-place`: a safety backup named `safety` (when the target exists),
    /// then drop, create, restore and prove the target itself.
    InPlace { safety: Option<String> },
}

pub struct Plan {
    pub target: String,
    pub existing: Option<Existing>,
    /// Roles the archive uses that the server lacks.
    pub missing_roles: Vec<String>,
    pub strategy: Strategy,
    pub feed: Feed,
}

/// The suffix of the scratch database a restore goes into first.
fn scratch_suffix(now: DateTime<Local>) -> String {
    format!(
        "_kbrestore_{}_{}",
        now.format("%Y%m%d%H%M%S"),
        std::process::id()
    )
}

pub async fn existing(pg: &Postgres, target: &str) -> Result<Option<Existing>> {
    let sql = format!(
        "SELECT pg_database_size(datname), (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname) \
         FROM pg_database d WHERE datname = {}",
        literal(target)
    );
    let rows = pg.query(&pg.db.maintenance_db, &sql).await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let tables = pg
        .query(target, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                        WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema')")
        .await
        .ok()
        .and_then(|r| r.first().and_then(|r| r[0].parse().ok()))
        .unwrap_or(0);
    Ok(Some(Existing {
        size: row[0].parse().unwrap_or(0),
        connections: row[1].parse().unwrap_or(0),
        tables,
    }))
}

impl Plan {
    /// Decides every name now (the kept old database's is checked free on the
    /// server), so the dry run shows the names the run will use.
    pub async fn make(
        args: &RestoreArgs,
        pg: &Postgres,
        target: &str,
        feed: Feed,
        missing_roles: Vec<String>,
    ) -> Result<Plan> {
        let now = Local::now();
        let existing = existing(pg, target).await?;
        let strategy = if args.in_place {
            Strategy::InPlace {
                safety: existing
                    .as_ref()
                    .map(|_| format!("pre_restore_{}", now.format("%Y%m%d_%H%M%S"))),
            }
        } else {
            Strategy::Scratch {
                // A free name: a pid repeats across containers (often 1).
                scratch: free_name(pg, target, &scratch_suffix(now)).await?,
                old: match &existing {
                    // The name the replaced database is kept under.
                    Some(_) => {
                        let suffix = format!("_pre_restore_{}", now.format("%Y%m%d_%H%M%S"));
                        Some(free_name(pg, target, &suffix).await?)
                    }
                    None => None,
                },
                drop_old: args.drop_old,
            }
        };
        Ok(Plan {
            target: target.to_string(),
            existing,
            missing_roles,
            strategy,
            feed,
        })
    }

    /// The numbered steps, as the dry run prints them and the run logs them.
    pub fn steps(
        &self,
        cfg: &Config,
        rc: &RestoreClient,
        source: &Source,
        checked: &Checked,
    ) -> Vec<String> {
        let target = &self.target;
        let create =
            |db: &str| create_database_sql(db, &checked.summary, true, Some(rc.server_major));
        let mut steps = Vec::new();
        match &self.strategy {
            Strategy::InPlace { safety } => {
                if let Some(label) = safety {
                    steps.push(format!(
                        "safety backup of {target} to {}/named/ (named {label})",
                        cfg.backup_dir.display()
                    ));
                    steps.push(format!(
                        "end {target}'s sessions; DROP DATABASE {}",
                        ident(target)
                    ));
                }
                steps.push(create(target));
                steps.push(self.restore_step(cfg, rc, source, target));
                steps.push("check every table and its row count against the backup".into());
            }
            Strategy::Scratch {
                scratch,
                old,
                drop_old,
            } => {
                steps.push(create(scratch));
                steps.push(self.restore_step(cfg, rc, source, scratch));
                steps.push(format!(
                    "check every table and its row count against the backup (on failure: drop {scratch}, stop)"
                ));
                match old {
                    Some(old) => {
                        steps.push(format!(
                            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false; end its sessions",
                            ident(target)
                        ));
                        steps.push(format!(
                            "in one transaction: ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}",
                            ident(target),
                            ident(old),
                            ident(scratch),
                            ident(target)
                        ));
                        steps.push(if *drop_old {
                            format!("DROP DATABASE {}", ident(old))
                        } else {
                            format!(
                                "keep {old} (drop it later with: {})",
                                dropdb_command(&rc.pg, old)
                            )
                        });
                    }
                    None => steps.push(format!(
                        "ALTER DATABASE {} RENAME TO {}",
                        ident(scratch),
                        ident(target)
                    )),
                }
            }
        }
        steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| format!("{}. {s}", i + 1))
            .collect()
    }

    /// The command that restores into `db`: see `readback::run_pg_restore`.
    fn restore_step(&self, cfg: &Config, rc: &RestoreClient, source: &Source, db: &str) -> String {
        let pg = &rc.pg;
        let file = source.file_text();
        let archive = match self.feed {
            Feed::ParallelFromCopy => format!("<{file} uncompressed into BACKUP_DIR/.kbackup>"),
            Feed::ParallelInContainer => format!(
                "<{file} uncompressed into /tmp of container {} (removed after)>",
                pg.db.container.as_deref().unwrap_or_default()
            ),
            Feed::ParallelFromFile => file.to_string(),
            Feed::Stream if dump::is_packed(&source.path) => format!("< zstd-decompressed {file}"),
            Feed::Stream => format!("< {file}"),
        };
        if let RestoreMode::Script { drop } = &rc.mode {
            let archive = match self.feed {
                Feed::Stream if dump::is_packed(&source.path) => {
                    format!("<{file} decompressed to a temporary file in BACKUP_DIR/.kbackup>")
                }
                Feed::Stream => file.to_string(),
                _ => archive,
            };
            return format!(
                "{} {archive} | (its opening {} left out) {}",
                pg.tool("pg_restore").args(["--file", "-"]),
                drop.join(" "),
                pg.psql_script(db)
            );
        }
        match self.feed {
            Feed::ParallelFromCopy | Feed::ParallelFromFile | Feed::ParallelInContainer => format!(
                "{} {archive}",
                pg.tool("pg_restore").args([
                    "--exit-on-error",
                    "--jobs",
                    &cfg.restore_jobs.to_string(),
                    "--dbname",
                    &crate::sql::dbname(db)
                ]),
            ),
            Feed::Stream => format!("{} {archive}", pg.pg_restore(db)),
        }
    }

    /// `--dry-run`: the plan, and what it was decided from.
    pub fn print(
        &self,
        cfg: &Config,
        args: &RestoreArgs,
        rc: &RestoreClient,
        source: &Source,
        checked: &Checked,
    ) {
        let pg = &rc.pg;
        let target = &self.target;
        crate::out!("Dry run: nothing will be changed.");
        crate::out!(
            "Backup:   {}{} ({}, manifest: {})",
            source.shown,
            source
                .time
                .map(|t| format!(" taken {}", super::taken(t)))
                .unwrap_or_default(),
            human_size(
                std::fs::metadata(&source.path)
                    .map(|m| m.len())
                    .unwrap_or(0)
            ),
            if source.manifest.is_some() {
                "yes"
            } else {
                "no"
            }
        );
        crate::out!(
            "Checked:  complete archive, {}; {} tables, {}",
            checked.checksum,
            checked.summary.tables.len(),
            super::rows_text(&checked.expected)
        );
        let from = checked.summary.server_version.as_deref().unwrap_or("?");
        crate::out!(
            "Server:   PostgreSQL {} at {}; the backup is of PostgreSQL {from}{}",
            rc.server_version,
            pg.describe_server(),
            match checked
                .summary
                .server_version
                .as_deref()
                .and_then(version_major)
            {
                Some(m) if clients::order(m) < clients::order(rc.server_major) =>
                    " (an upgrade: allowed)",
                Some(_) => " (same major version)",
                None => "",
            }
        );
        crate::out!(
            "Client:   {} reads archive formats up to {}: this backup's {} can be read{}",
            rc.client.describe("pg_restore"),
            clients::restore_reads_up_to(rc.client.major),
            rc.format,
            match &rc.mode {
                RestoreMode::Direct => String::new(),
                RestoreMode::Script { drop } => format!(
                    "; it is newer than the server, so its SQL runs through psql without {} (serial)",
                    drop.join(" ")
                ),
            }
        );
        match &self.existing {
            Some(e) => crate::out!(
                "Target:   {target} exists ({}, {} tables, {} connections) and would be replaced{}",
                human_size(e.size),
                e.tables,
                e.connections,
                if args.yes {
                    ""
                } else {
                    " after confirmation (--yes when not on a terminal)"
                }
            ),
            None => crate::out!("Target:   {target} does not exist; it would be created"),
        }
        if self.missing_roles.is_empty() {
            crate::out!(
                "Roles:    all {} roles the backup uses exist",
                checked.summary.roles.len()
            );
        } else if args.with_globals {
            crate::out!(
                "Roles:    would create {} from {}",
                self.missing_roles.join(", "),
                source
                    .globals
                    .as_ref()
                    .map(|g| g.display().to_string())
                    .unwrap_or("(no globals)".into())
            );
        } else {
            crate::out!(
                "Roles:    MISSING {}: the restore would stop here (--with-globals creates them)",
                self.missing_roles.join(", ")
            );
        }
        crate::out!("Steps:");
        for step in self.steps(cfg, rc, source, checked) {
            crate::out!("  {step}");
        }
    }
}
