//! File names <-> tiers and times. Pure.
//!
//! The layout is the seed's, so stores written by backup.sh stay usable:
//!
//! ```text
//! hourly/<prefix>_YYYY-MM-DD_HH-MM-SS.<ext>
//! daily/<prefix>_YYYY-MM-DD.<ext>
//! weekly/<prefix>_YYYY-Www.<ext>     (ISO week of the week's first day)
//! monthly/<prefix>_YYYY-MM.<ext>
//! named/<prefix>_<name>.<ext>
//! ```
//!
//! Hourly names are local time. A local time that happens twice (the hour clocks
//! go back) gets its UTC offset appended (`..._01-30-00-0400`), so the two readings
//! never share a name; two backups in the same second get `_2`, `_3`...

use chrono::{
    DateTime, Datelike, Days, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc, Weekday,
};
use serde::Serialize;

use crate::clock::Zone;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Named,
}

impl Tier {
    pub const ALL: [Tier; 5] = [
        Tier::Hourly,
        Tier::Daily,
        Tier::Weekly,
        Tier::Monthly,
        Tier::Named,
    ];

    pub fn dir(self) -> &'static str {
        match self {
            Tier::Hourly => "hourly",
            Tier::Daily => "daily",
            Tier::Weekly => "weekly",
            Tier::Monthly => "monthly",
            Tier::Named => "named",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Tier::Hourly => "Hourly",
            Tier::Daily => "Daily",
            Tier::Weekly => "Weekly",
            Tier::Monthly => "Monthly",
            Tier::Named => "Named",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dir())
    }
}

/// What a dump file is, said by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `.dump.zst`: a pg_dump custom-format archive (uncompressed inside), zstd-compressed.
    /// What kbackup writes. Restore by hand: `zstd -dc F | pg_restore -d DB`.
    CustomZstd,
    /// `.dump`: a pg_dump custom-format archive, what the seed's backup.sh wrote.
    Custom,
    /// `.dump.zst.age`: a `.dump.zst` encrypted with age (BACKUP_AGE_RECIPIENTS).
    /// By hand: `age -d -i key.txt F | zstd -dc | pg_restore -d DB`.
    CustomZstdAge,
}

impl Format {
    pub fn ext(self) -> &'static str {
        match self {
            Format::CustomZstd => "dump.zst",
            Format::Custom => "dump",
            Format::CustomZstdAge => "dump.zst.age",
        }
    }

    /// Every format, each tried in this order on a file name.
    pub const ALL: [Format; 3] = [Format::CustomZstdAge, Format::CustomZstd, Format::Custom];

    /// The globals file beside a dump of this format: sealed with it.
    pub fn globals_ext(self) -> &'static str {
        match self {
            Format::CustomZstdAge => GLOBALS_AGE_EXT,
            _ => GLOBALS_EXT,
        }
    }

    /// Splits a dump file name into its stem and format; `None` for anything else
    /// (manifests, globals, temporary files).
    pub fn split(file_name: &str) -> Option<(&str, Format)> {
        if file_name.starts_with('.') {
            return None;
        }
        for f in Format::ALL {
            if let Some(stem) = file_name
                .strip_suffix(f.ext())
                .and_then(|s| s.strip_suffix('.'))
            {
                return Some((stem, f));
            }
        }
        None
    }
}

pub const MANIFEST_EXT: &str = "manifest.json";
pub const GLOBALS_EXT: &str = "globals.sql";
/// The globals of an encrypted backup.
pub const GLOBALS_AGE_EXT: &str = "globals.sql.age";
/// The record of the last verification of a dump.
pub const VERIFY_EXT: &str = "verify.json";
/// Every sidecar a dump can have.
pub const SIDECARS: [&str; 4] = [MANIFEST_EXT, GLOBALS_EXT, GLOBALS_AGE_EXT, VERIFY_EXT];

pub fn sidecar(stem: &str, ext: &str) -> String {
    format!("{stem}.{ext}")
}

/// Days and weeks as the operator's calendar has them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calendar {
    pub zone: Zone,
    pub week_start: Weekday,
}

impl Calendar {
    #[cfg(test)]
    pub fn day(&self, t: DateTime<Utc>) -> NaiveDate {
        self.zone.local_time(t).date_naive()
    }

    /// The first day (per `week_start`) of the week holding `day`.
    pub fn week_first_day(&self, day: NaiveDate) -> NaiveDate {
        let back = day.weekday().days_since(self.week_start);
        day - Days::new(u64::from(back))
    }

    /// The label `t` gets in `tier` (not for named/, whose label is the operator's).
    pub fn label(&self, tier: Tier, t: DateTime<Utc>) -> String {
        let local = self.zone.local_time(t);
        let day = local.date_naive();
        match tier {
            Tier::Hourly => {
                let mut s = local.format("%Y-%m-%d_%H-%M-%S").to_string();
                if self.zone.instants_at(local.naive_local()).len() > 1 {
                    s.push_str(&local.format("%z").to_string());
                }
                s
            }
            Tier::Daily => day.format("%Y-%m-%d").to_string(),
            Tier::Weekly => {
                let iso = self.week_first_day(day).iso_week();
                format!("{:04}-W{:02}", iso.year(), iso.week())
            }
            Tier::Monthly => day.format("%Y-%m").to_string(),
            Tier::Named => unreachable!("named labels come from --name"),
        }
    }

    /// The time a label stands for: exact for hourly names, the start of the
    /// period for daily/weekly/monthly ones. `None` when it is not a label of `tier`.
    pub fn label_time(&self, tier: Tier, label: &str) -> Option<DateTime<FixedOffset>> {
        let midnight = |d: NaiveDate| self.zone.resolve_lenient(d.and_hms_opt(0, 0, 0).unwrap());
        match tier {
            Tier::Hourly => parse_hourly(label, self.zone),
            Tier::Daily => {
                strict(label, "dddd-dd-dd")?;
                NaiveDate::parse_from_str(label, "%Y-%m-%d")
                    .ok()
                    .map(midnight)
            }
            Tier::Weekly => {
                strict(label, "dddd-Wdd")?;
                let year: i32 = label[..4].parse().ok()?;
                let week: u32 = label[6..].parse().ok()?;
                NaiveDate::from_isoywd_opt(year, week, self.week_start).map(midnight)
            }
            Tier::Monthly => {
                strict(label, "dddd-dd")?;
                NaiveDate::parse_from_str(&format!("{label}-01"), "%Y-%m-%d")
                    .ok()
                    .map(midnight)
            }
            Tier::Named => None,
        }
    }
}

/// Checks `s` against a shape where `d` is an ASCII digit and anything else is literal.
fn strict(s: &str, shape: &str) -> Option<()> {
    (s.len() == shape.len()
        && s.bytes().zip(shape.bytes()).all(|(c, p)| {
            if p == b'd' {
                c.is_ascii_digit()
            } else {
                c == p
            }
        }))
    .then_some(())
}

/// `YYYY-MM-DD_HH-MM-SS[±HHMM][_N]`.
fn parse_hourly(label: &str, zone: Zone) -> Option<DateTime<FixedOffset>> {
    let (base, rest) = (label.get(..19)?, &label[19..]);
    strict(base, "dddd-dd-dd_dd-dd-dd")?;
    let naive = NaiveDateTime::parse_from_str(base, "%Y-%m-%d_%H-%M-%S").ok()?;
    let (offset, rest) = match rest.as_bytes().first() {
        Some(b'+') | Some(b'-') => {
            let o = rest.get(..5)?;
            strict(&o[1..], "dddd")?;
            let secs = (o[1..3].parse::<i32>().ok()? * 60 + o[3..5].parse::<i32>().ok()?) * 60;
            let secs = if o.starts_with('-') { -secs } else { secs };
            (Some(FixedOffset::east_opt(secs)?), &rest[5..])
        }
        _ => (None, rest),
    };
    if !rest.is_empty() {
        let seq = rest.strip_prefix('_')?;
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) || seq.starts_with('0') {
            return None;
        }
    }
    match offset {
        Some(o) => o.from_local_datetime(&naive).single(),
        None => Some(zone.resolve_lenient(naive)),
    }
}

/// A dump file name taken apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub stem: String,
    pub prefix: String,
    pub label: String,
    pub format: Format,
    /// When the name says (not for named/).
    pub time: Option<DateTime<FixedOffset>>,
}

/// Parses a dump file name found in `tier`'s folder. `prefix_hint` (the configured
/// prefix) splits named/ files whose names contain underscores.
pub fn parse_file_name(
    cal: &Calendar,
    tier: Tier,
    file_name: &str,
    prefix_hint: &str,
) -> Option<Parsed> {
    let (stem, format) = Format::split(file_name)?;
    let (prefix, label, time) = if tier == Tier::Named {
        let (prefix, label) = match stem
            .strip_prefix(prefix_hint)
            .and_then(|r| r.strip_prefix('_'))
        {
            Some(label) => (prefix_hint, label),
            None => stem.split_once('_')?,
        };
        (prefix, label, None)
    } else {
        // The label is the longest suffix after a '_' that parses; the prefix may hold '_'.
        let (i, time) = stem
            .char_indices()
            .filter(|(_, c)| *c == '_')
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .find_map(|i| cal.label_time(tier, &stem[i + 1..]).map(|t| (i, t)))?;
        (&stem[..i], &stem[i + 1..], Some(time))
    };
    if prefix.is_empty() || label.is_empty() {
        return None;
    }
    Some(Parsed {
        stem: stem.to_string(),
        prefix: prefix.to_string(),
        label: label.to_string(),
        format,
        time,
    })
}

/// A file name prefix for database `name` (used when a database other than the
/// configured one is backed up, as `restore --in-place --target-db` does): a
/// database name may hold `/` or start with `.`, a file name in a tier folder may not.
pub fn file_prefix(name: &str) -> String {
    let mut p: String = name
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    if p.starts_with('.') || p.is_empty() {
        p.insert(0, '_');
    }
    p
}

/// Whether `stem` can only ever name a file inside its tier folder.
pub fn stem_stays_in_folder(stem: &str) -> bool {
    !stem.is_empty() && !stem.contains('/') && !stem.contains('\0') && !stem.starts_with('.')
}

/// The stem for a new file: `<prefix>_<label>`, with `_N` when `seq > 1`.
pub fn stem(prefix: &str, label: &str, seq: u32) -> String {
    if seq > 1 {
        format!("{prefix}_{label}_{seq}")
    } else {
        format!("{prefix}_{label}")
    }
}

/// Checks a `--name`: it becomes part of a file name.
pub fn validate_backup_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > 100 || !ok_chars || name.starts_with(['.', '-']) {
        return Err(format!(
            "--name {name:?}: use 1-100 characters from A-Z a-z 0-9 . _ - (not starting with . or -), e.g. pre_migration"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod file_prefix_tests {
    use super::*;

    #[test]
    fn any_database_name_makes_a_prefix_that_stays_in_its_folder() {
        for name in ["app", "../../evil", ".hidden", "a/b", "", "ünï cödé"] {
            let p = file_prefix(name);
            assert!(stem_stays_in_folder(&stem(&p, "x", 1)), "{name:?} -> {p:?}");
        }
        assert_eq!(file_prefix("app"), "app");
        assert_eq!(file_prefix("../../evil"), "_.._.._evil");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NY: Zone = Zone::Named(chrono_tz::America::New_York);
    const BERLIN: Zone = Zone::Named(chrono_tz::Europe::Berlin);

    fn cal(zone: Zone, week_start: Weekday) -> Calendar {
        Calendar { zone, week_start }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn seed_names_parse() {
        let c = cal(Zone::Named(chrono_tz::UTC), Weekday::Sun);
        let p = parse_file_name(
            &c,
            Tier::Hourly,
            "kairon_2025-12-26_05-00-01.dump",
            "kairon",
        )
        .unwrap();
        assert_eq!(
            (p.prefix.as_str(), p.label.as_str(), p.format),
            ("kairon", "2025-12-26_05-00-01", Format::Custom)
        );
        assert_eq!(p.time.unwrap().to_rfc3339(), "2025-12-26T05:00:01+00:00");
        let p = parse_file_name(&c, Tier::Daily, "kairon_2025-12-20.dump", "kairon").unwrap();
        assert_eq!(p.label, "2025-12-20");
        let p = parse_file_name(&c, Tier::Weekly, "kairon_2024-W51.dump", "kairon").unwrap();
        assert_eq!(p.label, "2024-W51");
        // The Sunday of ISO week 2024-W51.
        assert_eq!(p.time.unwrap().date_naive().to_string(), "2024-12-22");
    }

    #[test]
    fn prefixes_may_hold_underscores_and_dots() {
        let c = cal(BERLIN, Weekday::Sun);
        let p = parse_file_name(
            &c,
            Tier::Hourly,
            "kaizen_studio_2025-01-02_03-04-05.dump.zst",
            "x",
        )
        .unwrap();
        assert_eq!(
            (p.prefix.as_str(), p.format),
            ("kaizen_studio", Format::CustomZstd)
        );
        let p = parse_file_name(
            &c,
            Tier::Named,
            "kaizen_studio_pre_migration.dump.zst",
            "kaizen_studio",
        )
        .unwrap();
        assert_eq!(
            (p.prefix.as_str(), p.label.as_str()),
            ("kaizen_studio", "pre_migration")
        );
        assert!(
            parse_file_name(&c, Tier::Hourly, "kairon_2025-13-01_00-00-00.dump", "k").is_none()
        );
        assert!(parse_file_name(&c, Tier::Hourly, "kairon_2025-12-26.dump", "k").is_none());
        assert!(parse_file_name(&c, Tier::Daily, "kairon_2025-12-26.manifest.json", "k").is_none());
        assert!(parse_file_name(
            &c,
            Tier::Hourly,
            ".kairon_2025-12-26_05-00-01.dump.zst.partial",
            "k"
        )
        .is_none());
    }

    #[test]
    fn fall_back_hour_gets_distinct_names() {
        let c = cal(NY, Weekday::Sun);
        let first = utc("2025-11-02T05:30:00Z"); // 01:30 EDT
        let second = utc("2025-11-02T06:30:00Z"); // 01:30 EST
        let (a, b) = (c.label(Tier::Hourly, first), c.label(Tier::Hourly, second));
        assert_eq!(a, "2025-11-02_01-30-00-0400");
        assert_eq!(b, "2025-11-02_01-30-00-0500");
        assert_eq!(
            c.label_time(Tier::Hourly, &a).unwrap().with_timezone(&Utc),
            first
        );
        assert_eq!(
            c.label_time(Tier::Hourly, &b).unwrap().with_timezone(&Utc),
            second
        );
        // An unambiguous time carries no suffix.
        assert_eq!(
            c.label(Tier::Hourly, utc("2025-11-02T08:00:00Z")),
            "2025-11-02_03-00-00"
        );
        // Spring forward: 01:59 EST then 03:00 EDT.
        assert_eq!(
            c.label(Tier::Hourly, utc("2025-03-09T07:00:00Z")),
            "2025-03-09_03-00-00"
        );
    }

    #[test]
    fn week_labels_follow_week_start() {
        let sun = cal(Zone::Named(chrono_tz::UTC), Weekday::Sun);
        let mon = cal(Zone::Named(chrono_tz::UTC), Weekday::Mon);
        // Sunday 2025-12-28 is in ISO week 2025-W52; the Sunday-start week it opens
        // runs to Saturday 2026-01-03 and keeps that label across New Year.
        for d in ["2025-12-28", "2025-12-31", "2026-01-01", "2026-01-03"] {
            assert_eq!(
                sun.label(Tier::Weekly, utc(&format!("{d}T12:00:00Z"))),
                "2025-W52",
                "{d}"
            );
        }
        assert_eq!(
            sun.label(Tier::Weekly, utc("2026-01-04T12:00:00Z")),
            "2026-W01"
        );
        assert_eq!(
            mon.label(Tier::Weekly, utc("2025-12-28T12:00:00Z")),
            "2025-W52"
        );
        assert_eq!(
            mon.label(Tier::Weekly, utc("2025-12-29T12:00:00Z")),
            "2026-W01"
        );
    }

    #[test]
    fn collision_suffix_round_trips() {
        let c = cal(BERLIN, Weekday::Sun);
        let s = stem("db", "2025-06-01_10-00-00", 2);
        let p = parse_file_name(&c, Tier::Hourly, &format!("{s}.dump.zst"), "db").unwrap();
        assert_eq!(p.stem, s);
        assert_eq!(p.prefix, "db");
        assert!(
            parse_file_name(&c, Tier::Hourly, "db_2025-06-01_10-00-00_0.dump.zst", "db").is_none()
        );
    }

    #[test]
    fn backup_names_are_checked() {
        assert!(validate_backup_name("pre_migration-2.1").is_ok());
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "-x",
            "sp ace",
            &"x".repeat(101),
        ] {
            assert!(validate_backup_name(bad).is_err(), "{bad}");
        }
    }

    fn any_zone() -> impl Strategy<Value = Zone> {
        prop_oneof![
            Just(NY),
            Just(BERLIN),
            Just(Zone::Named(chrono_tz::Australia::Lord_Howe)),
            Just(Zone::Named(chrono_tz::UTC)),
        ]
    }

    proptest! {
        /// Every hourly name maps back to its instant, whatever the zone and DST.
        #[test]
        fn hourly_labels_round_trip(secs in 946_684_800i64..4_102_444_800, zone in any_zone()) {
            let t = DateTime::from_timestamp(secs, 0).unwrap();
            let c = cal(zone, Weekday::Sun);
            let label = c.label(Tier::Hourly, t);
            prop_assert_eq!(c.label_time(Tier::Hourly, &label).unwrap().with_timezone(&Utc), t);
        }

        /// Two different instants never share an hourly name.
        #[test]
        fn hourly_labels_are_unique(a in 946_684_800i64..4_102_444_800, d in 1i64..7200, zone in any_zone()) {
            let c = cal(zone, Weekday::Sun);
            let t1 = DateTime::from_timestamp(a, 0).unwrap();
            let t2 = DateTime::from_timestamp(a + d, 0).unwrap();
            prop_assert_ne!(c.label(Tier::Hourly, t1), c.label(Tier::Hourly, t2));
        }

        /// All seven days of a week share its label, including across New Year, and
        /// the next week's label differs; the label's time is the week's first day.
        #[test]
        fn weeks_are_whole_across_new_year(days in 0u64..20_000, monday in any::<bool>()) {
            let ws = if monday { Weekday::Mon } else { Weekday::Sun };
            let c = cal(Zone::Named(chrono_tz::UTC), ws);
            let first = c.week_first_day(NaiveDate::from_ymd_opt(2000, 1, 1).unwrap() + Days::new(days));
            let at = |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(12, 0, 0).unwrap());
            let label = c.label(Tier::Weekly, at(first));
            for i in 0..7 {
                prop_assert_eq!(&c.label(Tier::Weekly, at(first + Days::new(i))), &label);
            }
            prop_assert_ne!(&c.label(Tier::Weekly, at(first + Days::new(7))), &label);
            prop_assert_eq!(c.label_time(Tier::Weekly, &label).unwrap().date_naive(), first);
        }
    }
}
