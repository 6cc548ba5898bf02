//! Which backup a restore means. Pure: a function of the store's listing.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::naming::Tier;
use crate::store::Backup;

#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// The newest backup of any tier.
    Latest,
    /// The newest backup of one tier (`--latest-daily` ...).
    LatestIn(Tier),
    /// A file: absolute, or relative to BACKUP_DIR.
    File(PathBuf),
    /// The newest backup taken at or before this time.
    At(DateTime<Utc>),
    /// A named backup.
    Name(String),
}

/// What the selector picked.
#[derive(Debug)]
pub enum Selection<'a> {
    Stored(&'a Backup),
    /// A file outside the store's layout (`--file /mnt/elsewhere/x.dump`).
    External(PathBuf),
}

/// Picks the backup. `backups` is the store's listing (newest first); only this
/// database's files (`prefix`) are candidates, except for `--file`.
pub fn select<'a>(
    backups: &'a [Backup],
    selector: &Selector,
    prefix: &str,
    root: &Path,
) -> Result<Selection<'a>, String> {
    // This database's backups by identity (see `owner`); a named backup whose
    // owner cannot be told is chosen only by its exact name.
    let ours: Vec<&Backup> = backups.iter().filter(|b| b.is_mine(prefix)).collect();
    let newest = |pred: &dyn Fn(&Backup) -> bool| {
        ours.iter().copied().filter(|b| pred(b)).max_by(|a, b| {
            a.time
                .cmp(&b.time)
                .then(b.tier.cmp(&a.tier))
                .then(b.rel_path.cmp(&a.rel_path))
        })
    };
    let found = match selector {
        Selector::Latest => newest(&|_| true),
        Selector::LatestIn(tier) => newest(&|b| b.tier == *tier),
        Selector::At(t) => newest(&|b| b.time.with_timezone(&Utc) <= *t),
        Selector::Name(name) => backups.iter().find(|b| {
            b.tier == Tier::Named
                && b.parsed.label == *name
                && b.owner(prefix) != crate::owner::Owner::Other
        }),
        Selector::File(path) => {
            let full = if path.is_absolute() {
                path.clone()
            } else {
                root.join(path)
            };
            return Ok(match backups.iter().find(|b| b.path == full) {
                Some(b) => Selection::Stored(b),
                None => Selection::External(full),
            });
        }
    };
    found.map(Selection::Stored).ok_or_else(|| {
        let what = match selector {
            Selector::Latest => format!("No backups of {prefix} found in {}", root.display()),
            Selector::LatestIn(tier) => format!(
                "No {tier} backups found in {}",
                root.join(tier.dir()).display()
            ),
            Selector::At(t) => format!(
                "No backup of {prefix} taken at or before {}",
                t.to_rfc3339()
            ),
            Selector::Name(name) => format!(
                "No named backup {name:?} in {}",
                root.join(Tier::Named.dir()).display()
            ),
            Selector::File(_) => unreachable!(),
        };
        format!("{what}. {}", existing(&ours))
    })
}

/// A one-line account of what the store does hold, for "not found" messages.
pub fn existing(ours: &[&Backup]) -> String {
    if ours.is_empty() {
        return "The store holds no backups of this database (run `kbackup list`).".to_string();
    }
    let parts: Vec<String> = Tier::ALL
        .iter()
        .filter_map(|t| {
            let in_tier: Vec<&&Backup> = ours.iter().filter(|b| b.tier == *t).collect();
            let newest = in_tier.iter().max_by_key(|b| b.time)?;
            let oldest = in_tier.iter().min_by_key(|b| b.time)?;
            Some(format!(
                "{t}: {} (newest {}, oldest {})",
                in_tier.len(),
                newest.rel_path,
                oldest.time.format("%Y-%m-%d %H:%M:%S %:z")
            ))
        })
        .collect();
    format!("Existing backups: {}.", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::naming::{Format, Parsed};

    fn b(tier: Tier, prefix: &str, label: &str, time: &str) -> Backup {
        let file = format!("{prefix}_{label}.dump.zst");
        Backup {
            tier,
            path: PathBuf::from("/s").join(tier.dir()).join(&file),
            rel_path: format!("{}/{file}", tier.dir()),
            parsed: Parsed {
                stem: format!("{prefix}_{label}"),
                prefix: prefix.into(),
                label: label.into(),
                format: Format::CustomZstd,
                time: None,
            },
            size: 1,
            time: DateTime::parse_from_rfc3339(time).unwrap(),
            manifest: None,
            manifest_error: None,
            verification: Default::default(),
            header_major: None,
        }
    }

    fn store() -> Vec<Backup> {
        vec![
            b(
                Tier::Hourly,
                "kairon",
                "2025-12-26_07-00-01",
                "2025-12-26T07:00:01+00:00",
            ),
            b(
                Tier::Hourly,
                "kairon",
                "2025-12-26_06-00-01",
                "2025-12-26T06:00:01+00:00",
            ),
            b(
                Tier::Daily,
                "kairon",
                "2025-12-26",
                "2025-12-26T00:00:01+00:00",
            ),
            b(
                Tier::Daily,
                "kairon",
                "2025-12-25",
                "2025-12-25T00:00:01+00:00",
            ),
            b(
                Tier::Named,
                "kairon",
                "pre_migration",
                "2025-12-25T12:00:00+00:00",
            ),
            b(
                Tier::Hourly,
                "other",
                "2025-12-27_00-00-00",
                "2025-12-27T00:00:00+00:00",
            ),
        ]
    }

    fn pick(sel: Selector) -> Result<String, String> {
        let s = store();
        select(&s, &sel, "kairon", Path::new("/s")).map(|sel| match sel {
            Selection::Stored(b) => b.rel_path.clone(),
            Selection::External(p) => format!("external {}", p.display()),
        })
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn latest_is_the_newest_of_this_database() {
        assert_eq!(
            pick(Selector::Latest).unwrap(),
            "hourly/kairon_2025-12-26_07-00-01.dump.zst"
        );
        assert_eq!(
            pick(Selector::LatestIn(Tier::Daily)).unwrap(),
            "daily/kairon_2025-12-26.dump.zst"
        );
    }

    #[test]
    fn a_tie_prefers_hourly_then_the_smaller_tier() {
        let mut s = store();
        s.push(b(
            Tier::Weekly,
            "kairon",
            "2025-W52",
            "2025-12-26T07:00:01+00:00",
        ));
        let got = select(&s, &Selector::Latest, "kairon", Path::new("/s")).unwrap();
        assert!(matches!(got, Selection::Stored(b) if b.tier == Tier::Hourly));
    }

    #[test]
    fn at_picks_the_newest_taken_at_or_before() {
        assert_eq!(
            pick(Selector::At(utc("2025-12-26T06:30:00Z"))).unwrap(),
            "hourly/kairon_2025-12-26_06-00-01.dump.zst"
        );
        assert_eq!(
            pick(Selector::At(utc("2025-12-26T06:00:01Z"))).unwrap(),
            "hourly/kairon_2025-12-26_06-00-01.dump.zst"
        );
        // A named file without a manifest could be another prefix's
        // (`kairon_pre...` of a database `kairon_pre`): only its exact name picks it.
        assert_eq!(
            pick(Selector::At(utc("2025-12-25T13:00:00Z"))).unwrap(),
            "daily/kairon_2025-12-25.dump.zst"
        );
        assert_eq!(
            pick(Selector::Name("pre_migration".into())).unwrap(),
            "named/kairon_pre_migration.dump.zst"
        );
        let e = pick(Selector::At(utc("2025-01-01T00:00:00Z"))).unwrap_err();
        assert!(
            e.starts_with("No backup of kairon taken at or before 2025-01-01T00:00:00+00:00"),
            "{e}"
        );
    }

    #[test]
    fn no_match_says_what_exists() {
        let e = pick(Selector::LatestIn(Tier::Weekly)).unwrap_err();
        assert!(
            e.starts_with("No weekly backups found in /s/weekly."),
            "{e}"
        );
        assert!(
            e.contains("hourly: 2 (newest hourly/kairon_2025-12-26_07-00-01.dump.zst"),
            "{e}"
        );
        assert!(e.contains("daily: 2") && !e.contains("other"), "{e}");
        let e = pick(Selector::Name("nope".into())).unwrap_err();
        assert!(e.contains("No named backup \"nope\""), "{e}");
        let empty: Vec<Backup> = vec![];
        let e = select(&empty, &Selector::Latest, "kairon", Path::new("/s")).unwrap_err();
        assert!(e.contains("holds no backups"), "{e}");
    }

    #[test]
    fn files_resolve_relative_to_the_store() {
        assert_eq!(
            pick(Selector::File(
                "hourly/kairon_2025-12-26_06-00-01.dump.zst".into()
            ))
            .unwrap(),
            "hourly/kairon_2025-12-26_06-00-01.dump.zst"
        );
        assert_eq!(
            pick(Selector::File("/s/daily/kairon_2025-12-25.dump.zst".into())).unwrap(),
            "daily/kairon_2025-12-25.dump.zst"
        );
        // Another database's file is still restorable by path.
        assert_eq!(
            pick(Selector::File(
                "hourly/other_2025-12-27_00-00-00.dump.zst".into()
            ))
            .unwrap(),
            "hourly/other_2025-12-27_00-00-00.dump.zst"
        );
        assert_eq!(
            pick(Selector::File("/mnt/x.dump".into())).unwrap(),
            "external /mnt/x.dump"
        );
        assert_eq!(
            pick(Selector::Name("pre_migration".into())).unwrap(),
            "named/kairon_pre_migration.dump.zst"
        );
    }
}
