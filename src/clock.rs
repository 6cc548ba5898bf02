//! Time zones and the parsing of user-given times. Pure: `now` is always passed in.

use chrono::{DateTime, FixedOffset, LocalResult, NaiveDateTime, TimeZone, Utc};

use crate::error::usage;

/// The zone that days, weeks and file names follow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zone {
    /// The host's zone (TZ, /etc/localtime).
    Local,
    Named(chrono_tz::Tz),
}

impl Zone {
    pub fn local_time(&self, t: DateTime<Utc>) -> DateTime<FixedOffset> {
        match self {
            Zone::Local => t.with_timezone(&chrono::Local).fixed_offset(),
            Zone::Named(tz) => t.with_timezone(tz).fixed_offset(),
        }
    }

    /// Every instant whose local wall-clock reading is `naive`: none in a spring-forward
    /// gap, two in a fall-back hour.
    pub fn instants_at(&self, naive: NaiveDateTime) -> Vec<DateTime<FixedOffset>> {
        fn all<Tz: TimeZone>(r: LocalResult<DateTime<Tz>>) -> Vec<DateTime<FixedOffset>> {
            match r {
                LocalResult::Single(t) => vec![t.fixed_offset()],
                LocalResult::Ambiguous(a, b) => vec![a.fixed_offset(), b.fixed_offset()],
                LocalResult::None => vec![],
            }
        }
        match self {
            Zone::Local => all(chrono::Local.from_local_datetime(&naive)),
            Zone::Named(tz) => all(tz.from_local_datetime(&naive)),
        }
    }

    /// The earliest instant reading `naive` locally; in a gap, the reading taken
    /// with the offset in force just before it (what a clock not yet moved shows).
    pub fn resolve_lenient(&self, naive: NaiveDateTime) -> DateTime<FixedOffset> {
        if let Some(t) = self.instants_at(naive).into_iter().min() {
            return t;
        }
        let before = self
            .instants_at(naive - chrono::Duration::hours(6))
            .into_iter()
            .min();
        before
            .and_then(|b| b.offset().from_local_datetime(&naive).single())
            .unwrap_or_else(|| Utc.from_utc_datetime(&naive).fixed_offset())
    }

    pub fn describe(&self) -> String {
        match self {
            Zone::Local => "the host's local time zone".to_string(),
            Zone::Named(tz) => tz.name().to_string(),
        }
    }
}

/// How far ahead of the clock a backup's time may be (clocks of two machines
/// differ a little); anything later is refused (`--time`) or reported (`status`).
pub const MAX_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// True when `t` is later than `now` by more than [`MAX_SKEW`].
pub fn in_future(t: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    t > now + MAX_SKEW
}

/// Parses `--time`: RFC 3339 (`2025-12-26T07:00:01+01:00`) or `YYYY-MM-DD HH:MM:SS`
/// in `zone`. A local time that the zone skips or repeats is refused with advice.
pub fn parse_time(text: &str, zone: Zone, flag: &str) -> anyhow::Result<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .ok_or_else(|| {
            usage(format!(
                "{flag} {text:?}: not a time; use RFC 3339 (2025-12-26T07:00:01+01:00) \
                 or local \"YYYY-MM-DD HH:MM:SS\""
            ))
        })?;
    match zone.instants_at(naive).as_slice() {
        [one] => Ok(one.with_timezone(&Utc)),
        [] => Err(usage(format!(
            "{flag} {text:?}: that local time does not exist in {} (clocks jump forward); \
             give an RFC 3339 time with an offset",
            zone.describe()
        ))),
        [a, b, ..] => Err(usage(format!(
            "{flag} {text:?}: that local time happens twice in {} (clocks go back); \
             give an offset: {} or {}",
            zone.describe(),
            a.to_rfc3339(),
            b.to_rfc3339()
        ))),
    }
}

/// `45s`, `12m`, `3h`, `2d4h`, `5w`.
pub fn age(t: DateTime<FixedOffset>, now: DateTime<Utc>) -> String {
    let secs = (now - t.with_timezone(&Utc)).num_seconds();
    if secs < 0 {
        return "future".into();
    }
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s if s < 14 * 86_400 => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
        s => format!("{}w", s / (7 * 86_400)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NY: Zone = Zone::Named(chrono_tz::America::New_York);

    #[test]
    fn rfc3339_and_local_forms() {
        let t = parse_time("2025-12-26T07:00:01+01:00", NY, "--time").unwrap();
        assert_eq!(t.to_rfc3339(), "2025-12-26T06:00:01+00:00");
        let t = parse_time("2025-12-26 07:00:01", NY, "--time").unwrap();
        assert_eq!(t.to_rfc3339(), "2025-12-26T12:00:01+00:00");
    }

    #[test]
    fn dst_gap_and_fold_are_refused_with_advice() {
        let e = format!(
            "{:#}",
            parse_time("2025-03-09 02:30:00", NY, "--time").unwrap_err()
        );
        assert!(e.contains("does not exist"), "{e}");
        let e = format!(
            "{:#}",
            parse_time("2025-11-02 01:30:00", NY, "--time").unwrap_err()
        );
        assert!(
            e.contains("happens twice") && e.contains("-04:00") && e.contains("-05:00"),
            "{e}"
        );
        assert!(parse_time("yesterday", NY, "--time").is_err());
    }

    #[test]
    fn lenient_resolution_picks_earliest_and_bridges_gaps() {
        let fold =
            NaiveDateTime::parse_from_str("2025-11-02 01:30:00", "%Y-%m-%d %H:%M:%S").unwrap();
        assert_eq!(
            NY.resolve_lenient(fold).to_rfc3339(),
            "2025-11-02T01:30:00-04:00"
        );
        let gap =
            NaiveDateTime::parse_from_str("2025-03-09 02:30:00", "%Y-%m-%d %H:%M:%S").unwrap();
        assert_eq!(
            NY.resolve_lenient(gap).with_timezone(&Utc).to_rfc3339(),
            "2025-03-09T07:30:00+00:00"
        );
    }
}
