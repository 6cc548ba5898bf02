//! `kbackup sync`: the off-site step alone (see `offsite`).

use anyhow::Result;

use crate::config::Config;
use crate::metrics;
use crate::offsite::step;
use crate::remote::Remote;
use crate::store::Store;

/// `kbackup sync`: the sync step alone.
pub async fn run(cfg: &Config) -> Result<()> {
    cfg.remote(None, "sync")?;
    let store = Store::new(cfg.backup_dir.clone());
    let _lock = super::lock_store(cfg, &store, "sync").await?;
    let several = cfg.several();
    let mut failed = Vec::new();
    let found = crate::databases::recorded(cfg);
    for (c, why) in &found.failed {
        failed.push((c.db.name.clone(), anyhow::anyhow!("{why}")));
    }
    for c in found.dbs {
        // Each database's own files and its own remote retention, on each
        // destination in turn: one that fails never stops the others.
        for rc in &c.remotes {
            if let Err(e) = step(&c, &store, &Remote::new(rc.clone()), !several).await {
                failed.push((c.db.name.clone(), e));
            }
        }
    }
    if let Err(e) = metrics::update(cfg, &store) {
        tracing::warn!("cannot write the metrics file: {e:#}");
    }
    match (several, failed.len()) {
        (_, 0) => Ok(()),
        (false, 1) => Err(failed.remove(0).1),
        // One database, several destinations failing: each alerted by its step.
        (false, _) => Err(anyhow::anyhow!(
            "{}",
            failed
                .iter()
                .map(|(_, e)| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join("; ")
        )),
        (true, n) => {
            let lines: Vec<String> = failed
                .iter()
                .map(|(db, e)| format!("{db}: {e:#}"))
                .collect();
            let title = format!("Off-site sync of {n} database(s) failed");
            crate::notify::alert(
                cfg,
                crate::notify::Alert {
                    kind: crate::notify::Kind::Sync,
                    title: title.clone(),
                    body: lines.join("\n"),
                },
            )
            .await;
            Err(anyhow::anyhow!("{title}: {}", lines.join("; ")))
        }
    }
}
