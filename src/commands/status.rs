//! `kbackup status`: what monitoring asks at any hour. Exit 0 when healthy; 1
//! when the newest backup is older than the max age, the last run failed, the
//! last verification failed, or there is no backup at all.

use anyhow::Result;
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::json;

use crate::cli::StatusArgs;
use crate::clock::age;
use crate::config::Config;
use crate::error::{usage, Coded, ExitKind};
use crate::naming::Tier;
use crate::store::{human_size, Store};
use crate::{clock, state};

pub async fn run(cfg: &Config, args: &StatusArgs) -> Result<()> {
    let max_age = match &args.max_age {
        Some(s) => humantime::parse_duration(s)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                usage(format!(
                    "--max-age {s:?}: expected a duration such as 2h or 90m"
                ))
            })?,
        None => cfg.max_age,
    };
    // Databases restores kept: they pile up unnoticed. Asked of the server
    // while the store is read; one that does not answer is not a backup
    // problem (None: unknown).
    let pg = crate::postgres::Postgres::new(cfg.db.clone());
    let kept = tokio::spawn(async move { crate::lifecycle::kept_copies(&pg).await.ok() });
    let store = Store::new(cfg.backup_dir.clone());
    let now = Utc::now();
    let backups = store.scan(&cfg.calendar, &cfg.prefix)?;
    let free = store.free_space().ok();
    let found = crate::databases::recorded(cfg);
    let dbs = found.all();
    let kept = kept.await.ok().flatten();

    let mut problems = Vec::new();
    // A full store: the next backup fails, and may not even be able to record
    // that it did (so the last run's record can look healthy).
    let newest_size = backups
        .iter()
        .filter(|b| dbs.iter().any(|c| b.is_mine(&c.prefix)))
        .filter(|b| !clock::in_future(b.time.with_timezone(&Utc), now))
        .max_by_key(|b| b.time)
        .map(|b| b.size);
    if store.free_inodes().ok().flatten() == Some(0) {
        problems.push(format!(
            "{} has no free inodes left: the next backup cannot be written (nor its failure recorded); \
             free some files there or keep fewer backups",
            store.root.display()
        ));
    } else if let (Some(f), Some(n)) = (free, newest_size) {
        if f < n {
            problems.push(format!(
                "{} has {} free, less than the newest backup ({}): the next backup will not fit; free space \
                 there or keep fewer backups",
                store.root.display(),
                human_size(f),
                human_size(n)
            ));
        }
    }
    if dbs.is_empty() {
        problems.push(
            "DB_NAME=all: no backup run has listed the server's databases yet (run `kbackup backup`)".into(),
        );
    }
    let several = cfg.several();
    let mut reports: Vec<DbReport> = dbs
        .iter()
        .map(|c| database(c, &store, &backups, now, max_age))
        .collect();
    // A database whose prefix another shares: its backups cannot be told apart.
    for (c, why) in &found.failed {
        if let Some(r) = reports.iter_mut().find(|r| r.name == c.db.name) {
            r.problems.insert(0, why.clone());
        }
    }
    for r in &reports {
        problems.extend(r.problems.iter().map(|p| {
            if several {
                format!("{}: {p}", r.name)
            } else {
                p.clone()
            }
        }));
    }

    if args.json {
        let mut doc = json!({
            "healthy": problems.is_empty(),
            "problems": problems,
            "store": store.root,
            "max_age_seconds": max_age.as_secs(),
            "disk_free_bytes": free,
            "kept_copies": kept,
        });
        match (several, reports.first()) {
            (false, Some(r)) => {
                let (doc, one) = (doc.as_object_mut().expect("object"), r.json.as_object());
                // One database: its fields at the top, as before several existed.
                for (k, v) in one.into_iter().flatten() {
                    doc.insert(k.clone(), v.clone());
                }
            }
            _ => {
                doc["databases"] = reports
                    .iter()
                    .map(|r| {
                        let mut one = r.json.clone();
                        one["healthy"] = r.problems.is_empty().into();
                        one["problems"] = r.problems.clone().into();
                        one
                    })
                    .collect();
            }
        }
        crate::out!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        if several {
            crate::out!(
                "kbackup status for {} ({} database(s); store {})",
                cfg.describe_databases(),
                reports.len(),
                store.root.display()
            );
        } else {
            crate::out!(
                "kbackup status for {} (store {})",
                cfg.db.name,
                store.root.display()
            );
        }
        for r in &reports {
            if several {
                crate::out!(
                    "Database {}: {}",
                    r.name,
                    if r.problems.is_empty() {
                        "OK"
                    } else {
                        "UNHEALTHY"
                    }
                );
            }
            for line in &r.text {
                crate::out!("{}{line}", if several { "  " } else { "" });
            }
        }
        if let Some(f) = free {
            crate::out!("Disk free in BACKUP_DIR: {}", human_size(f));
        }
        match &kept {
            Some(copies) if !copies.is_empty() => {
                let local = chrono::Local::now().naive_local();
                crate::out!(
                    "Kept by restores ({} database(s), {}; `kbackup cleanup --old-copies 7d` drops those older than a week):",
                    copies.len(),
                    human_size(copies.iter().map(|c| c.size_bytes).sum())
                );
                for c in copies {
                    let old = (local - c.replaced_at).to_std().unwrap_or_default();
                    crate::out!(
                        "  {}  {}  {} old",
                        c.name,
                        human_size(c.size_bytes),
                        humantime::format_duration(std::time::Duration::from_secs(
                            old.as_secs() / 60 * 60
                        ))
                    );
                }
            }
            Some(_) => {}
            None => crate::out!("Kept by restores: unknown (the server did not answer)"),
        }
        crate::out!("Max age: {}", humantime::format_duration(max_age));
        if problems.is_empty() {
            crate::out!("Health: OK");
        } else {
            crate::out!("Health: UNHEALTHY");
            for p in &problems {
                crate::out!("  - {p}");
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow::Error::new(Coded {
            kind: ExitKind::Failure,
            message: format!("unhealthy: {}", problems.join("; ")),
        }))
    }
}

/// One database's health: its problems, its part of the JSON (without them:
/// they are added where the report is printed), its text lines.
struct DbReport {
    name: String,
    problems: Vec<String>,
    json: serde_json::Value,
    text: Vec<String>,
}

fn database(
    cfg: &Config,
    store: &Store,
    backups: &[crate::store::Backup],
    now: DateTime<Utc>,
    max_age: std::time::Duration,
) -> DbReport {
    let ours: Vec<_> = backups.iter().filter(|b| b.is_mine(&cfg.prefix)).collect();
    let last_run = state::last_backup(&store.root, &cfg.prefix, &cfg.db.name);
    let last_verify = state::last_verify(&store.root, &cfg.prefix);
    // Each configured destination with its last sync.
    let syncs: Vec<(&crate::config::RemoteConfig, Option<state::SyncRun>)> = cfg
        .remotes
        .iter()
        .map(|rc| {
            (
                rc,
                state::last_sync(&store.root, &cfg.prefix, &rc.label, &rc.root()),
            )
        })
        .collect();
    let newest_manifest = ours
        .iter()
        .filter(|b| b.manifest.is_some())
        .max_by_key(|b| b.time)
        .and_then(|b| b.manifest.as_ref());
    let mut problems = Vec::new();
    // A backup dated ahead of the clock (a wrong clock, an old --time) says
    // nothing about freshness: the newest backup is judged among the others.
    let (future, ours): (Vec<_>, Vec<_>) = ours
        .into_iter()
        .partition(|b| clock::in_future(b.time.with_timezone(&Utc), now));
    if let Some(f) = future.iter().max_by_key(|b| b.time) {
        problems.push(format!(
            "{} backup(s) dated in the future (latest {}, {}): this machine's clock is behind, or it was \
             wrong when they were taken; they outrank real backups in rotation: check the clock \
             (timedatectl) and move them out of {}",
            future.len(),
            f.rel_path,
            f.time.format("%Y-%m-%d %H:%M:%S %:z"),
            store.root.display()
        ));
    }
    for (_, e) in crate::cleanup::incomplete(&store.root, &cfg.db.name) {
        problems.push(
            e.note
                .unwrap_or_else(|| format!("{} is incomplete", cfg.db.name)),
        );
    }
    let newest = ours.iter().max_by_key(|b| b.time);
    match newest {
        None => problems.push(format!(
            "no backups of {} in {}",
            cfg.db.name,
            store.root.display()
        )),
        Some(b) => {
            let age_secs = (now - b.time.with_timezone(&Utc)).num_seconds();
            if age_secs > max_age.as_secs() as i64 {
                problems.push(format!(
                    "the newest backup ({}) is {} old, more than the max age {}",
                    b.rel_path,
                    age(b.time, now),
                    humantime::format_duration(max_age)
                ));
            }
        }
    }
    if let Some(run) = last_run.as_ref().filter(|r| !r.ok) {
        problems.push(format!(
            "the last backup run failed at {}: {}",
            run.finished_at.format("%Y-%m-%d %H:%M:%S %:z"),
            run.error.as_deref().unwrap_or("unknown error")
        ));
    }
    if let Some(v) = last_verify.as_ref().filter(|v| !v.ok) {
        problems.push(format!(
            "the last verification failed at {}: {}",
            v.finished_at.format("%Y-%m-%d %H:%M:%S %:z"),
            v.failed.join("; ")
        ));
    }
    for (rc, s) in &syncs {
        if let Some(s) = s.as_ref().filter(|s| !s.ok) {
            problems.push(format!(
                "the last off-site sync to {} ({}) failed at {}: {}",
                rc.label,
                s.remote,
                s.finished_at.format("%Y-%m-%d %H:%M:%S %:z"),
                s.error.as_deref().unwrap_or("unknown error")
            ));
        }
    }
    let verified = |v: Option<&crate::manifest::Seen>| match v {
        Some(v) => format!(
            "{} {} {} ago",
            if v.passed { "passed" } else { "FAILED" },
            if v.quick { "quick" } else { "full" },
            age(v.verified_at, now)
        ),
        None => "never verified".to_string(),
    };
    let when = |t: DateTime<FixedOffset>| {
        format!(
            "{} ({} ago)",
            t.format("%Y-%m-%d %H:%M:%S %:z"),
            age(t, now)
        )
    };
    let tiers: serde_json::Map<String, serde_json::Value> = Tier::ALL
        .iter()
        .map(|t| {
            let newest = ours.iter().filter(|b| b.tier == *t).max_by_key(|b| b.time);
            (
                t.dir().to_string(),
                match newest {
                    Some(b) => json!({
                        "path": b.rel_path, "time": b.time.to_rfc3339(),
                        "age_seconds": (now - b.time.with_timezone(&Utc)).num_seconds(),
                        "size_bytes": b.size,
                        "verification": b.full_verification().best().cloned(),
                        "count": ours.iter().filter(|x| x.tier == *t).count(),
                    }),
                    None => serde_json::Value::Null,
                },
            )
        })
        .collect();
    let json = json!({
        "database": cfg.db.name,
        "prefix": cfg.prefix,
        "newest": tiers,
        "last_run": last_run,
        "last_verify": last_verify,
        "offsite_sync": syncs.first().and_then(|(_, s)| s.clone()),
        "offsite": syncs
            .iter()
            .map(|(rc, s)| json!({"label": rc.label, "remote": rc.root(), "last_sync": s}))
            .collect::<Vec<_>>(),
        "globals_role_passwords": newest_manifest.map(|m| m.role_passwords),
    });
    let mut text = vec!["Newest backup per tier:".to_string()];
    for t in Tier::ALL {
        text.push(
            match ours.iter().filter(|b| b.tier == t).max_by_key(|b| b.time) {
                Some(b) => format!(
                    "  {:8} {:>6} old  {:>6}  {}  ({})",
                    t.dir(),
                    age(b.time, now),
                    human_size(b.size),
                    b.rel_path,
                    verified(b.verification.best())
                ),
                None => format!("  {:8} none", t.dir()),
            },
        );
    }
    text.push(match &last_run {
        Some(r) if r.ok => format!("Last backup run: succeeded at {}", when(r.finished_at)),
        Some(r) => format!(
            "Last backup run: FAILED at {}: {}",
            when(r.finished_at),
            r.error.as_deref().unwrap_or("")
        ),
        None => "Last backup run: none recorded".into(),
    });
    text.push(match &last_verify {
        Some(v) => format!(
            "Last verification: {} ({}, {} backups) at {}",
            if v.ok { "passed" } else { "FAILED" },
            if v.quick { "quick" } else { "full" },
            v.checked.len(),
            when(v.finished_at)
        ),
        None => "Last verification: none (run `kbackup verify`)".into(),
    });
    if syncs.is_empty() {
        text.push("Off-site sync: not configured".into());
    }
    for (rc, s) in &syncs {
        // `Off-site sync` with one destination (as always), `Off-site sync (label)` with several.
        let head = if syncs.len() > 1 {
            format!("Off-site sync ({})", rc.label)
        } else {
            "Off-site sync".to_string()
        };
        text.push(match s {
        None => format!("{head}: {} configured, never run", rc.root()),
        Some(s) if s.ok => format!(
            "{head}: succeeded at {} ({}, {} backups there{})",
            when(s.finished_at),
            s.remote,
            s.remote_backups,
            if s.beyond_policy > 0 {
                format!(
                    ", {} of them beyond the retention policy: BACKUP_REMOTE_PRUNE=false keeps them",
                    s.beyond_policy
                )
            } else {
                String::new()
            }
        ),
        Some(s) => format!(
            "{head}: FAILED at {}: {}",
            when(s.finished_at),
            s.error.as_deref().unwrap_or("")
        ),
    });
    }
    if newest_manifest.is_some_and(|m| !m.role_passwords) {
        text.push(
            "Globals:  saved without role passwords (DB_USER may not read them): set them again after a \
             restore onto a fresh server"
                .into(),
        );
    }
    DbReport {
        name: cfg.db.name.clone(),
        problems,
        json,
        text,
    }
}
