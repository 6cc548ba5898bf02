//! `kbackup notify --test`: the seed's "Test notification", on every channel.

use anyhow::{bail, Result};

use crate::cli::NotifyArgs;
use crate::config::Config;
use crate::error::usage;
use crate::notify;

pub async fn run(cfg: &Config, args: &NotifyArgs) -> Result<()> {
    if !args.test {
        return Err(usage(
            "kbackup notify: pass --test to send a test message to every configured channel",
        ));
    }
    let results = notify::test(cfg).await;
    if results.is_empty() {
        return Err(usage(
            "no alert channel is configured: set NTFY_TOPIC, SLACK_WEBHOOK_URL, BACKUP_EMAIL_RECIPIENT, \
             BACKUP_WEBHOOK_URL or BACKUP_HEALTHCHECK_URL",
        ));
    }
    let mut failed = Vec::new();
    for (channel, r) in &results {
        match r {
            Ok(()) => crate::out!("{channel:12} sent"),
            Err(e) => {
                crate::out!("{channel:12} FAILED: {e:#}");
                failed.push(*channel);
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "test notification failed on: {}; the line of each says why: check its URL, token or SMTP settings (`kbackup config` shows them)",
            failed.join(", ")
        );
    }
    Ok(())
}
