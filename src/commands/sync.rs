//! `kbackup sync`: the off-site step alone (see `offsite`).

use anyhow::Result;

use crate::config::Config;
use crate::metrics;
use crate::offsite::step;
use crate::remote::Remote;
use crate::store::Store;

/// `kbackup sync`: the sync step alone.
pub async fn run(cfg: &Config) -> Result<()> {
    let Some(rc) = &cfg.remote else {
        return Err(crate::error::usage(
            "no remote configured: set RCLONE_REMOTE_NAME (and RCLONE_REMOTE_PATH) to an rclone remote",
        ));
    };
    let store = Store::new(cfg.backup_dir.clone());
    let _lock = super::lock_store(cfg, &store, "sync").await?;
    let result = step(cfg, &store, &Remote::new(rc.clone())).await;
    if let Err(e) = metrics::update(cfg, &store) {
        tracing::warn!("cannot write the metrics file: {e:#}");
    }
    result.map(|_| ())
}
