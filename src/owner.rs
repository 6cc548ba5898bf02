//! Which database a backup belongs to (pure). Databases share a store and a
//! remote, and one prefix can begin another's (`app`, `app_staging`): a file
//! name is only a hint. A backup with a manifest belongs to the prefix its
//! manifest records. One without (the seed's scripts wrote none) belongs to a
//! prefix only when its name says so unambiguously: a timestamped, dated or
//! week-named file parses into exactly one prefix; a named/ file
//! `<prefix>_<label>` could be another prefix's (`app_staging_pre_migration`),
//! so it is ambiguous: shown, chosen only by its exact name, never rotated or
//! deleted by anyone's retention. Every decision (select, rotate, remote
//! retention, status, metrics) asks this one function.

use crate::naming::Tier;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Mine,
    Other,
    Ambiguous,
}

/// Whose is a backup in `tier` whose name parsed into `parsed_prefix` (for
/// named/, the configured prefix when the name starts with it), with the
/// prefix its manifest records, if it has one.
pub fn owner(
    prefix: &str,
    tier: Tier,
    parsed_prefix: &str,
    manifest_prefix: Option<&str>,
) -> Owner {
    if let Some(m) = manifest_prefix {
        return if m == prefix {
            Owner::Mine
        } else {
            Owner::Other
        };
    }
    match (tier, parsed_prefix == prefix) {
        (_, false) => Owner::Other,
        (Tier::Named, true) => Owner::Ambiguous,
        (_, true) => Owner::Mine,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_decides_whatever_the_name_says() {
        assert_eq!(
            owner("app", Tier::Named, "app", Some("app_staging")),
            Owner::Other
        );
        assert_eq!(owner("app", Tier::Named, "app", Some("app")), Owner::Mine);
        assert_eq!(
            owner("app", Tier::Hourly, "app_staging", Some("app")),
            Owner::Mine
        );
    }

    #[test]
    fn without_a_manifest_only_an_unambiguous_name_decides() {
        for tier in [Tier::Hourly, Tier::Daily, Tier::Weekly, Tier::Monthly] {
            assert_eq!(owner("app", tier, "app", None), Owner::Mine);
            assert_eq!(owner("app", tier, "app_staging", None), Owner::Other);
        }
        assert_eq!(owner("app", Tier::Named, "app", None), Owner::Ambiguous);
        assert_eq!(owner("app", Tier::Named, "other", None), Owner::Other);
    }
}
