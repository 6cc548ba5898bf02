//! Rotation of a store: the retention decisions for this configuration's
//! backups (pure, in `retention`), and their deletion.

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::naming::Tier;
use crate::retention::{self, Candidate, Decision};
use crate::store::{Backup, Store};

/// The decisions for this database's files (its prefix); other prefixes sharing
/// the folder are never touched.
pub fn plan<'a>(
    cfg: &Config,
    backups: &'a [Backup],
    now: DateTime<Utc>,
) -> Vec<(Decision<usize>, &'a Backup)> {
    let candidates: Vec<Candidate<usize>> = backups
        .iter()
        .enumerate()
        .filter(|(_, b)| b.is_mine(&cfg.prefix))
        // A backup dated in the future (a clock that was wrong) is neither
        // counted nor deleted: it would push real backups out of their tier.
        // `status` reports it.
        .filter(|(_, b)| !crate::clock::in_future(b.time.with_timezone(&Utc), now))
        .map(|(i, b)| Candidate {
            key: i,
            tier: b.tier,
            time: b.time.with_timezone(&Utc),
        })
        .collect();
    let mut decisions: Vec<_> = retention::plan(&candidates, &cfg.policy, now)
        .into_iter()
        .map(|d| {
            let b = &backups[d.key];
            (d, b)
        })
        .collect();
    decisions.sort_by(|a, b| a.0.tier.cmp(&b.0.tier).then(b.0.time.cmp(&a.0.time)));
    decisions
}

/// Whether the manifest on disk says what the listing said of it (owner and time).
fn still_as_listed(b: &Backup) -> bool {
    match (b.full_manifest(), &b.manifest) {
        (Ok(Some(m)), Some(brief)) => {
            *m.prefix == *brief.prefix && m.started_at == brief.started_at
        }
        (Ok(None), None) => true,
        _ => false,
    }
}

#[derive(Debug, Serialize)]
pub struct DecisionView {
    pub path: String,
    pub tier: Tier,
    pub time: String,
    pub keep: bool,
    pub reasons: Vec<retention::Reason>,
    pub why: String,
}

pub fn view(d: &Decision<usize>, b: &Backup) -> DecisionView {
    DecisionView {
        path: b.rel_path.clone(),
        tier: d.tier,
        time: b.time.to_rfc3339(),
        keep: d.keep,
        reasons: d.reasons.clone(),
        why: d.reasons_text(),
    }
}

/// Deletes what the plan says to delete; returns how many files went.
pub fn apply(store: &Store, decisions: &[(Decision<usize>, &Backup)]) -> Result<usize> {
    let mut deleted = 0;
    for (d, b) in decisions.iter().filter(|(d, _)| !d.keep) {
        // Decided on the listing (perhaps the index's): the manifest on disk
        // must still say the same owner and time before anything is deleted.
        if !still_as_listed(b) {
            tracing::warn!(
                "Not deleting {}: its manifest changed since the store was listed; the next rotation decides again",
                b.rel_path
            );
            continue;
        }
        store.delete(b)?;
        tracing::info!("Deleted {} ({})", b.rel_path, d.reasons_text());
        deleted += 1;
    }
    Ok(deleted)
}
