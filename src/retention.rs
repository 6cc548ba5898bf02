//! Which backups each tier keeps, and why. Pure: `now` is passed in.
//!
//! One [`Decision`] per file feeds the dry-run table, `--json` and the deletion,
//! so what is shown is what is done.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::naming::{Calendar, Tier};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    /// BACKUP_RETENTION_DAYS: delete backups older than this from every tier.
    pub max_age_days: Option<u32>,
    /// BACKUP_RETENTION_COUNT: named/ keeps its newest N (None: all).
    pub keep_named: Option<u32>,
}

impl Policy {
    /// How many files `tier` keeps; `None` is unlimited.
    pub fn keep(&self, tier: Tier) -> Option<u32> {
        match tier {
            Tier::Hourly => Some(self.keep_hourly),
            Tier::Daily => Some(self.keep_daily),
            Tier::Weekly => Some(self.keep_weekly),
            Tier::Monthly => Some(self.keep_monthly),
            Tier::Named => self.keep_named,
        }
    }
}

/// A file rotation may keep or delete.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<K> {
    pub key: K,
    pub tier: Tier,
    pub time: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// The newest backup in the store is never deleted.
    Newest,
    WithinCount {
        rank: u32,
        keep: u32,
    },
    Unlimited,
    BeyondCount {
        rank: u32,
        keep: u32,
    },
    OlderThan {
        days: u32,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Newest => write!(f, "newest backup, always kept"),
            Reason::WithinCount { rank, keep } => write!(f, "#{rank} of the newest {keep}"),
            Reason::Unlimited => write!(f, "no count limit"),
            Reason::BeyondCount { rank, keep } if *keep == 0 => {
                write!(f, "#{rank}, tier off (keeps 0)")
            }
            Reason::BeyondCount { rank, keep } => write!(f, "#{rank}, beyond the newest {keep}"),
            Reason::OlderThan { days } => write!(f, "older than {days} days"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision<K> {
    pub key: K,
    pub tier: Tier,
    pub time: DateTime<Utc>,
    pub keep: bool,
    pub reasons: Vec<Reason>,
}

impl<K> Decision<K> {
    pub fn reasons_text(&self) -> String {
        self.reasons
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Decides every candidate. Within a tier, files are ranked newest first (ties by
/// key, so the plan is deterministic); the newest backup of the whole store (all
/// its tier copies) is always kept.
pub fn plan<K: Clone + Ord>(
    items: &[Candidate<K>],
    policy: &Policy,
    now: DateTime<Utc>,
) -> Vec<Decision<K>> {
    let newest = items.iter().map(|c| c.time).max();
    let cutoff = policy
        .max_age_days
        .map(|d| (d, now - chrono::Duration::days(i64::from(d))));
    let mut out = Vec::with_capacity(items.len());
    for tier in Tier::ALL {
        let mut in_tier: Vec<&Candidate<K>> = items.iter().filter(|c| c.tier == tier).collect();
        in_tier.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.key.cmp(&a.key)));
        for (i, c) in in_tier.into_iter().enumerate() {
            let rank = i as u32 + 1;
            let mut reasons = Vec::new();
            let mut keep = match policy.keep(tier) {
                None => {
                    reasons.push(Reason::Unlimited);
                    true
                }
                Some(keep) if rank <= keep => {
                    reasons.push(Reason::WithinCount { rank, keep });
                    true
                }
                Some(keep) => {
                    reasons.push(Reason::BeyondCount { rank, keep });
                    false
                }
            };
            // The age rule never empties a tier: its newest stays, however old
            // (a clock that jumped forward must not wipe the store).
            if let Some((days, cut)) = cutoff.filter(|_| rank > 1) {
                if c.time < cut {
                    reasons.push(Reason::OlderThan { days });
                    keep = false;
                }
            }
            if Some(c.time) == newest {
                reasons.insert(0, Reason::Newest);
                keep = true;
            }
            out.push(Decision {
                key: c.key.clone(),
                tier,
                time: c.time,
                keep,
                reasons,
            });
        }
    }
    out
}

/// The tiers a new backup taken at `t` is also placed in, with their labels: the
/// first backup of its day, week and month, for each tier that is on.
/// `exists(tier, label)` says whether that tier already holds a file for the label
/// (an existing tier file is never replaced).
pub fn placement(
    policy: &Policy,
    cal: &Calendar,
    t: DateTime<Utc>,
    exists: impl Fn(Tier, &str) -> bool,
) -> Vec<(Tier, String)> {
    [Tier::Daily, Tier::Weekly, Tier::Monthly]
        .into_iter()
        .filter(|tier| policy.keep(*tier).unwrap_or(0) > 0)
        .map(|tier| (tier, cal.label(tier, t)))
        .filter(|(tier, label)| !exists(*tier, label))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Zone;
    use chrono::{Datelike, TimeZone, Weekday};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn policy(h: u32, d: u32, w: u32, m: u32) -> Policy {
        Policy {
            keep_hourly: h,
            keep_daily: d,
            keep_weekly: w,
            keep_monthly: m,
            max_age_days: None,
            keep_named: None,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn tier_strategy() -> impl Strategy<Value = Tier> {
        prop::sample::select(Tier::ALL.to_vec())
    }

    fn items_strategy() -> impl Strategy<Value = Vec<Candidate<u32>>> {
        prop::collection::vec((tier_strategy(), 1_700_000_000i64..1_800_000_000), 0..60).prop_map(
            |v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, (tier, s))| Candidate {
                        key: i as u32,
                        tier,
                        time: at(s),
                    })
                    .collect()
            },
        )
    }

    fn policy_strategy() -> impl Strategy<Value = Policy> {
        (
            0u32..30,
            0u32..10,
            0u32..6,
            0u32..4,
            prop::option::of(1u32..400),
            prop::option::of(0u32..5),
        )
            .prop_map(|(h, d, w, m, days, named)| Policy {
                keep_hourly: h,
                keep_daily: d,
                keep_weekly: w,
                keep_monthly: m,
                max_age_days: days,
                keep_named: named,
            })
    }

    proptest! {
        #[test]
        fn newest_is_always_kept(items in items_strategy(), p in policy_strategy(), now in 1_700_000_000i64..1_900_000_000) {
            let plan = plan(&items, &p, at(now));
            prop_assert_eq!(plan.len(), items.len());
            if let Some(newest) = items.iter().map(|c| c.time).max() {
                for d in plan.iter().filter(|d| d.time == newest) {
                    prop_assert!(d.keep, "newest deleted: {:?}", d);
                }
            }
        }

        #[test]
        fn never_more_than_n_per_tier(items in items_strategy(), p in policy_strategy(), now in 1_700_000_000i64..1_900_000_000) {
            let plan = plan(&items, &p, at(now));
            let newest = items.iter().map(|c| c.time).max();
            for tier in Tier::ALL {
                let Some(n) = p.keep(tier) else { continue };
                let kept: Vec<_> = plan.iter().filter(|d| d.tier == tier && d.keep).collect();
                let protected = kept.iter().filter(|d| Some(d.time) == newest).count() as u32;
                prop_assert!(kept.len() as u32 <= n.max(protected), "{tier}: kept {} > {n}", kept.len());
            }
        }

        #[test]
        fn plan_is_idempotent(items in items_strategy(), p in policy_strategy(), now in 1_700_000_000i64..1_900_000_000) {
            let first = plan(&items, &p, at(now));
            let kept: BTreeSet<u32> = first.iter().filter(|d| d.keep).map(|d| d.key).collect();
            let remaining: Vec<_> = items.iter().filter(|c| kept.contains(&c.key)).cloned().collect();
            let second = plan(&remaining, &p, at(now));
            prop_assert!(second.iter().all(|d| d.keep), "a second pass deletes more: {:?}", second);
        }

        #[test]
        fn every_decision_has_a_reason(items in items_strategy(), p in policy_strategy()) {
            for d in plan(&items, &p, at(1_800_000_000)) {
                prop_assert!(!d.reasons.is_empty());
            }
        }
    }

    #[test]
    fn age_limit_applies_to_every_tier_but_spares_each_tiers_newest() {
        let day = 86_400;
        let items: Vec<_> = [
            (Tier::Hourly, 0),
            (Tier::Daily, 1),
            (Tier::Named, 2),
            (Tier::Weekly, 3),
            (Tier::Hourly, 4),
            (Tier::Daily, 5),
            (Tier::Named, 6),
            (Tier::Weekly, 7),
        ]
        .iter()
        .map(|(tier, k)| Candidate {
            key: *k,
            tier: *tier,
            time: at(1_000 * day + *k as i64),
        })
        .collect();
        let mut p = policy(24, 7, 4, 0);
        p.max_age_days = Some(30);
        let plan = plan(&items, &p, at(1_100 * day));
        let mut kept: Vec<_> = plan.iter().filter(|d| d.keep).map(|d| d.key).collect();
        kept.sort();
        assert_eq!(
            kept,
            vec![4, 5, 6, 7],
            "each tier's newest survives: {plan:?}"
        );
        assert!(plan
            .iter()
            .filter(|d| !d.keep)
            .all(|d| d.reasons.contains(&Reason::OlderThan { days: 30 })));
    }

    #[test]
    fn named_is_capped_by_retention_count() {
        let items: Vec<_> = (0..5)
            .map(|k| Candidate {
                key: k,
                tier: Tier::Named,
                time: at(1_000_000 + k as i64),
            })
            .collect();
        let mut p = policy(24, 7, 4, 0);
        assert!(plan(&items, &p, at(2_000_000)).iter().all(|d| d.keep));
        p.keep_named = Some(2);
        let kept: Vec<_> = plan(&items, &p, at(2_000_000))
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.key)
            .collect();
        assert_eq!(kept, vec![4, 3]);
    }

    /// Six weeks of hourly backups, placed and rotated after each one as the job does.
    #[test]
    fn timeline_of_six_weeks_hourly() {
        let cal = Calendar {
            zone: Zone::Named(chrono_tz::Europe::Berlin),
            week_start: Weekday::Sun,
        };
        let p = policy(24, 7, 4, 2);
        // (tier, label) -> time of the backup it holds
        let mut store: BTreeMap<(Tier, String), DateTime<Utc>> = BTreeMap::new();
        let start = Utc.with_ymd_and_hms(2025, 12, 1, 0, 0, 1).unwrap(); // spans New Year and a Sunday-start week
        let hours = 6 * 7 * 24;
        for h in 0..hours {
            let t = start + chrono::Duration::hours(h);
            store.insert((Tier::Hourly, cal.label(Tier::Hourly, t)), t);
            for (tier, label) in placement(&p, &cal, t, |tier, l| {
                store.contains_key(&(tier, l.to_string()))
            }) {
                store.insert((tier, label), t);
            }
            let items: Vec<_> = store
                .iter()
                .map(|((tier, label), time)| Candidate {
                    key: (*tier, label.clone()),
                    tier: *tier,
                    time: *time,
                })
                .collect();
            for d in plan(&items, &p, t) {
                if !d.keep {
                    store.remove(&d.key);
                }
            }
        }
        let end = start + chrono::Duration::hours(hours - 1);
        let of = |tier| {
            store
                .iter()
                .filter(|((t, _), _)| *t == tier)
                .map(|(_, time)| *time)
                .collect::<Vec<_>>()
        };
        let hourly = of(Tier::Hourly);
        assert_eq!(hourly.len(), 24);
        assert_eq!(*hourly.iter().max().unwrap(), end);
        assert_eq!(
            *hourly.iter().min().unwrap(),
            end - chrono::Duration::hours(23)
        );
        // Daily: the first backup of each of the last 7 local days.
        let daily = of(Tier::Daily);
        assert_eq!(daily.len(), 7);
        for t in &daily {
            let local = cal.zone.local_time(*t);
            assert!(
                t == &start || local.format("%H:%M").to_string() == "00:00",
                "daily not first of day: {local}"
            );
        }
        let days: BTreeSet<_> = daily.iter().map(|t| cal.day(*t)).collect();
        assert_eq!(days.len(), 7);
        assert_eq!(*days.iter().max().unwrap(), cal.day(end));
        // Weekly: the first backup of each of the last 4 Sunday-start weeks.
        let weekly = of(Tier::Weekly);
        assert_eq!(weekly.len(), 4);
        for t in &weekly {
            assert_eq!(
                cal.zone.local_time(*t).weekday(),
                Weekday::Sun,
                "weekly not on the week's first day"
            );
        }
        // Monthly: December and January.
        let monthly: BTreeSet<_> = store
            .keys()
            .filter(|(t, _)| *t == Tier::Monthly)
            .map(|(_, l)| l.clone())
            .collect();
        assert_eq!(
            monthly,
            ["2025-12", "2026-01"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
    }

    #[test]
    fn tiers_that_are_off_get_no_copies() {
        let cal = Calendar {
            zone: Zone::Named(chrono_tz::UTC),
            week_start: Weekday::Sun,
        };
        let t = Utc.with_ymd_and_hms(2025, 12, 28, 10, 0, 0).unwrap();
        let placed = placement(&policy(24, 7, 0, 0), &cal, t, |_, _| false);
        assert_eq!(placed, vec![(Tier::Daily, "2025-12-28".to_string())]);
        let placed = placement(&policy(24, 7, 4, 1), &cal, t, |tier, _| tier == Tier::Daily);
        assert_eq!(
            placed.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![Tier::Weekly, Tier::Monthly]
        );
    }

    #[test]
    fn the_age_rule_never_empties_a_tier() {
        // A clock that jumped 40 years ahead: every backup is "older than 30 days".
        let t0 = Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap();
        let items: Vec<Candidate<u32>> = (0..20u32)
            .map(|i| Candidate {
                key: i,
                tier: Tier::ALL[(i % 4) as usize],
                time: t0 + chrono::Duration::hours(i64::from(i)),
            })
            .collect();
        let policy = Policy {
            keep_hourly: 24,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 3,
            max_age_days: Some(30),
            keep_named: None,
        };
        let far = Utc.with_ymd_and_hms(2065, 1, 1, 0, 0, 0).unwrap();
        let plan = plan(&items, &policy, far);
        for tier in &Tier::ALL[..4] {
            let newest = items
                .iter()
                .filter(|c| c.tier == *tier)
                .map(|c| c.time)
                .max()
                .unwrap();
            let kept: Vec<_> = plan.iter().filter(|d| d.tier == *tier && d.keep).collect();
            assert_eq!(kept.len(), 1, "{tier:?}: {kept:?}");
            assert_eq!(kept[0].time, newest, "{tier:?}");
        }
    }
}
