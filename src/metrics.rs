//! The Prometheus textfile: node_exporter's textfile collector convention (a
//! `.prom` file in its directory, replaced atomically). Rewritten whole after
//! every backup and verify from the state records and the store, so it always
//! shows the latest of each.
//!
//! The Kaizen seed's alert, in these names:
//! `time() - kbackup_last_success_timestamp_seconds{database="kaizen_studio"} > 86400`.

use std::fmt::Write;

use anyhow::Result;

use crate::config::Config;
use crate::naming::Tier;
use crate::state;
use crate::store::{write_replace_mode, Store};

/// Rewrites the metrics file, when one is configured.
pub fn update(cfg: &Config, store: &Store) -> Result<()> {
    let Some(path) = &cfg.metrics_file else {
        return Ok(());
    };
    write_replace_mode(path, render(cfg, store).as_bytes(), 0o644)
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics of every database in [`shown`], each series once with a
/// sample per database (the text format wants a metric's samples together).
pub fn render(cfg: &Config, store: &Store) -> String {
    let scan = store.scan(&cfg.calendar, &cfg.prefix).ok();
    let mut series: Vec<Series> = Vec::new();
    for db in shown(cfg, &store.root) {
        render_one(
            &db,
            store,
            scan.as_deref(),
            &mut |name, help, samples| match series.iter_mut().find(|(n, _, _)| *n == name) {
                Some((_, _, s)) => s.extend_from_slice(samples),
                None => series.push((name, help, samples.to_vec())),
            },
        );
    }
    let mut out = String::new();
    for (name, help, samples) in series {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
    out
}

/// The databases the file shows: the configured ones, and every other one
/// with a backup record in the store, so that jobs of different databases
/// writing one metrics file keep each other's series.
fn shown(cfg: &Config, root: &std::path::Path) -> Vec<Config> {
    let mut dbs = crate::databases::recorded(cfg).all();
    for (prefix, run) in state::backup_records(root) {
        if !dbs.iter().any(|c| c.prefix == prefix) {
            let mut c = cfg.for_database(&run.database);
            c.prefix = prefix;
            dbs.push(c);
        }
    }
    dbs
}

/// A metric's name, help text and samples (labels, value).
type Series = (&'static str, &'static str, Vec<(String, f64)>);

type Sink<'a> = dyn FnMut(&'static str, &'static str, &[(String, f64)]) + 'a;

fn render_one(
    cfg: &Config,
    store: &Store,
    scan: Option<&[crate::store::Backup]>,
    metric: &mut Sink,
) {
    let db = format!("database=\"{}\"", escape(&cfg.db.name));
    let ts = |t: chrono::DateTime<chrono::FixedOffset>| t.timestamp_millis() as f64 / 1000.0;
    if let Some(run) = state::last_backup(&store.root, &cfg.prefix, &cfg.db.name) {
        if let Some(t) = run.last_success_at {
            metric(
                "kbackup_last_success_timestamp_seconds",
                "When the last successful backup finished (Unix time).",
                &[(db.clone(), ts(t))],
            );
        }
        metric(
            "kbackup_last_run_timestamp_seconds",
            "When the last backup run finished, successful or not.",
            &[(db.clone(), ts(run.finished_at))],
        );
        metric(
            "kbackup_last_run_success",
            "1 when the last backup run succeeded, else 0.",
            &[(db.clone(), if run.ok { 1.0 } else { 0.0 })],
        );
        let secs = (run.finished_at - run.started_at).num_milliseconds() as f64 / 1000.0;
        metric(
            "kbackup_last_duration_seconds",
            "How long the last backup run took.",
            &[(db.clone(), secs)],
        );
        if let Some(size) = run.size_bytes {
            metric(
                "kbackup_last_size_bytes",
                "Size of the last backup written.",
                &[(db.clone(), size as f64)],
            );
        }
    }
    if let Some(backups) = scan {
        let ours: Vec<_> = backups.iter().filter(|b| b.is_mine(&cfg.prefix)).collect();
        let per_tier: Vec<(String, f64)> = Tier::ALL
            .iter()
            .map(|t| {
                (
                    format!("{db},tier=\"{}\"", t.dir()),
                    ours.iter().filter(|b| b.tier == *t).count() as f64,
                )
            })
            .collect();
        metric(
            "kbackup_backups",
            "Backups in the store, per tier.",
            &per_tier,
        );
        if let Some(newest) = ours.iter().map(|b| b.time).max() {
            metric(
                "kbackup_newest_backup_timestamp_seconds",
                "When the newest backup in the store was taken.",
                &[(db.clone(), ts(newest))],
            );
        }
    }
    if let Some(v) = state::last_verify(&store.root, &cfg.prefix) {
        metric(
            "kbackup_last_verify_timestamp_seconds",
            "When the last verification finished.",
            &[(db.clone(), ts(v.finished_at))],
        );
        metric(
            "kbackup_last_verify_success",
            "1 when every backup the last verification checked passed, else 0.",
            &[(db.clone(), if v.ok { 1.0 } else { 0.0 })],
        );
    }
    // One series per configured destination (`remote` label).
    for rc in &cfg.remotes {
        let Some(s) = state::last_sync(&store.root, &cfg.prefix, &rc.label, &rc.root()) else {
            continue;
        };
        let at = format!("{db},remote=\"{}\"", escape(&rc.label));
        metric(
            "kbackup_last_sync_timestamp_seconds",
            "When the last off-site sync finished.",
            &[(at.clone(), ts(s.finished_at))],
        );
        metric(
            "kbackup_last_sync_success",
            "1 when the last off-site sync succeeded, else 0.",
            &[(at.clone(), if s.ok { 1.0 } else { 0.0 })],
        );
        metric(
            "kbackup_remote_backups",
            "Backups on the remote after the last sync.",
            &[(at.clone(), s.remote_backups as f64)],
        );
        metric(
            "kbackup_remote_backups_beyond_policy",
            "Backups on the remote that retention would delete, kept by BACKUP_REMOTE_PRUNE=false.",
            &[(at, s.beyond_policy as f64)],
        );
    }
    if let Ok(free) = store.free_space() {
        metric(
            "kbackup_store_free_bytes",
            "Free space in BACKUP_DIR.",
            &[(db.clone(), free as f64)],
        );
    }
}
