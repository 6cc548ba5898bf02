//! `kbackup list`: every backup, newest first.

use std::fmt::Write;

use anyhow::Result;
use chrono::Utc;
use serde_json::json;

use crate::cli::ListArgs;
use crate::clock::age;
use crate::config::Config;
use crate::naming::Tier;
use crate::store::{human_size, tier_counts, Backup, Store};

pub fn run(cfg: &Config, args: &ListArgs) -> Result<()> {
    let store = Store::new(cfg.backup_dir.clone());
    let scanned = store.scan(&cfg.calendar, &cfg.prefix)?;
    // The configured databases' backups (and files that may be theirs); with
    // DB_NAME=all, everything in the store.
    let dbs = crate::databases::recorded(cfg).all();
    let everything = matches!(cfg.databases, crate::config::Databases::All { .. });
    let all: Vec<&Backup> = scanned
        .iter()
        .filter(|b| {
            everything
                || dbs
                    .iter()
                    .any(|c| b.owner(&c.prefix) != crate::owner::Owner::Other)
        })
        .collect();
    let shown: Vec<&Backup> = all
        .iter()
        .copied()
        .filter(|b| args.tier.is_none_or(|t| t == b.tier))
        .collect();
    let several = cfg.several();
    if args.json {
        let items: Vec<_> = shown
            .iter()
            .map(|b| {
                json!({
                    "path": b.rel_path,
                    "tier": b.tier,
                    "time": b.time.to_rfc3339(),
                    "size_bytes": b.size,
                    "sha256": b.manifest.as_ref().map(|m| &m.sha256),
                    "database": b.database(),
                    "server_major": b.server_major(),
                    "format": b.parsed.format,
                    "manifest": b.manifest.is_some(),
                    "name": if b.tier == Tier::Named { Some(&b.parsed.label) } else { None },
                    "rows": b.manifest.as_ref().and_then(|m| m.total_rows),
                    "verified": b.verification.best().map(|v| json!({
                        "at": v.verified_at.to_rfc3339(), "passed": v.passed, "quick": v.quick,
                    })),
                })
            })
            .collect();
        crate::out!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    let now = Utc::now();
    crate::out!("Backups in {}", store.root.display());
    if shown.is_empty() {
        crate::out!("  (none)");
    } else {
        crate::out!(
            "{:8} {:25} {:>6} {:>7}  {:>3}  {:8}  {:14}  {}FILE",
            "TIER",
            "TIME",
            "AGE",
            "SIZE",
            "PG",
            "MANIFEST",
            "VERIFIED",
            if several { "DATABASE  " } else { "" }
        );
        let mut text = String::with_capacity(shown.len() * 160);
        let time_format: Vec<chrono::format::Item> =
            chrono::format::StrftimeItems::new("%Y-%m-%d %H:%M:%S %:z").collect();
        for b in &shown {
            let manifest = match (&b.manifest, &b.manifest_error) {
                (Some(_), _) => "yes",
                (None, Some(_)) => "unreadable",
                (None, None) => "no",
            };
            let verified = match b.verification.best() {
                Some(v) => format!(
                    "{} {}",
                    match (v.passed, v.quick) {
                        (true, true) => "quick",
                        (true, false) => "full",
                        (false, _) => "FAILED",
                    },
                    age(v.verified_at, now)
                ),
                None => "-".to_string(),
            };
            let _ = writeln!(
                text,
                "{:8} {:25} {:>6} {:>7}  {:>3}  {:8}  {:14}  {}{}",
                b.tier.dir(),
                b.time.format_with_items(time_format.iter()).to_string(),
                age(b.time, now),
                human_size(b.size),
                b.server_major()
                    .map(crate::clients::major_text)
                    .unwrap_or_else(|| "-".into()),
                manifest,
                verified,
                if several {
                    format!("{}  ", b.database())
                } else {
                    String::new()
                },
                b.rel_path
            );
        }
        crate::output::block(&text);
    }
    crate::out!("{}", tier_counts(&all));
    Ok(())
}

/// `kbackup list --remote`: the off-site copies, parsed from the remote listing.
pub async fn run_remote(cfg: &Config, args: &ListArgs) -> Result<()> {
    let rc = cfg.remote(args.from.as_deref(), "list --remote")?;
    let remote = crate::remote::Remote::new(rc.clone());
    remote.check_rclone().await?;
    let listing = remote.list().await?;
    let present: std::collections::BTreeSet<&str> =
        listing.iter().map(|f| f.path.as_str()).collect();
    // Everything on the remote is listed, whoever's it is (the FILE names it).
    let backups = crate::offsite::remote_backups(cfg, &listing, &[]);
    let shown: Vec<_> = backups
        .iter()
        .filter(|b| args.tier.is_none_or(|t| t == b.tier))
        .collect();
    let manifest_of = |b: &crate::offsite::RemoteBackup| {
        format!(
            "{}/{}",
            b.tier.dir(),
            crate::naming::sidecar(&b.parsed.stem, crate::naming::MANIFEST_EXT)
        )
    };
    let has_manifest = |b: &crate::offsite::RemoteBackup| present.contains(manifest_of(b).as_str());
    // Daily, weekly, monthly and named names carry a date at most: the time a
    // backup was taken is read from its manifest on the remote (a few small
    // files, fetched together; beyond MANIFEST_FETCHES the name's date stands).
    const MANIFEST_FETCHES: usize = 64;
    let wanted: Vec<String> = shown
        .iter()
        .filter(|b| b.tier != crate::naming::Tier::Hourly && has_manifest(b))
        .map(|b| manifest_of(b))
        .take(MANIFEST_FETCHES)
        .collect();
    // Four rclone processes at a time, not one per manifest.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    let mut fetches = tokio::task::JoinSet::new();
    for rel in wanted {
        let (remote, slots) = (remote.clone(), slots.clone());
        fetches.spawn(async move {
            let _slot = slots.acquire_owned().await.ok()?;
            let bytes = remote.cat(&rel).await.ok()?;
            let m: crate::manifest::Manifest = serde_json::from_slice(&bytes).ok()?;
            Some((rel, m.started_at))
        });
    }
    let mut taken = std::collections::BTreeMap::new();
    while let Some(done) = fetches.join_next().await {
        if let Ok(Some((rel, at))) = done {
            taken.insert(rel, at);
        }
    }
    let time_of =
        |b: &crate::offsite::RemoteBackup| taken.get(&manifest_of(b)).copied().unwrap_or(b.time);
    if args.json {
        let items: Vec<_> = shown
            .iter()
            .map(|b| {
                json!({
                    "path": b.rel_path, "tier": b.tier, "time": time_of(b).to_rfc3339(), "size_bytes": b.size,
                    "sha256": null, "database": b.parsed.prefix, "format": b.parsed.format,
                    "manifest": has_manifest(b), "remote": remote.root(),
                })
            })
            .collect();
        crate::out!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    let now = Utc::now();
    crate::out!("Backups on {}", remote.root());
    if shown.is_empty() {
        crate::out!("  (none)");
    } else {
        crate::out!(
            "{:8} {:25} {:>6} {:>7}  {:8}  FILE",
            "TIER",
            "TIME",
            "AGE",
            "SIZE",
            "MANIFEST"
        );
        for b in &shown {
            crate::out!(
                "{:8} {:25} {:>6} {:>7}  {:8}  {}",
                b.tier.dir(),
                time_of(b).format("%Y-%m-%d %H:%M:%S %:z").to_string(),
                age(time_of(b), now),
                human_size(b.size),
                if has_manifest(b) { "yes" } else { "no" },
                b.rel_path
            );
        }
    }
    let count = |t: Tier| backups.iter().filter(|b| b.tier == t).count();
    crate::out!(
        "Hourly: {}, Daily: {}, Weekly: {}, Monthly: {}, Named: {}",
        count(Tier::Hourly),
        count(Tier::Daily),
        count(Tier::Weekly),
        count(Tier::Monthly),
        count(Tier::Named)
    );
    Ok(())
}
