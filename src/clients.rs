//! Which PostgreSQL client tools can do a job, decided without I/O.
//!
//! Three rules from PostgreSQL itself:
//! - pg_dump refuses a server newer than itself ("aborting because of server
//!   version mismatch"): the dump client's major must be >= the server's.
//! - pg_restore reads archive formats up to its own (`K_VERS_MAX` in
//!   `pg_backup_archiver.h`): 1.14 for 12-15, 1.15 for 16, 1.16 for 17 and 18.
//! - pg_dump's output loads into a server of the same or a newer major version,
//!   never an older one: a backup of PostgreSQL 17 does not restore into 15.
//!
//! Among several usable clients the lowest sufficient major wins: a dump by the
//! server's own version is readable by that version's pg_restore, while a newer
//! pg_dump writes a format older pg_restores cannot read.

use std::fmt;
use std::path::PathBuf;

/// An archive format version, `1.16` (the revision is not part of the rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ArchiveFormat {
    pub major: u8,
    pub minor: u8,
}

impl ArchiveFormat {
    /// `1.16.0` or `1.16` -> 1.16.
    pub fn parse(text: &str) -> Option<ArchiveFormat> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(ArchiveFormat { major, minor })
    }
}

impl fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The newest archive format pg_restore of major version `major` reads
/// (majors numbered as the server does: 906 for 9.6, 15 for 15.x).
pub fn restore_reads_up_to(major: u32) -> ArchiveFormat {
    let minor = match major {
        // 1.13 (the search_path fix) reached 9.3 and later in their 2018 releases.
        903..=999 => 13,
        100.. => 12,
        17.. => 16,
        16 => 15,
        12..=15 => 14,
        10 | 11 => 13,
        _ => 12,
    };
    ArchiveFormat { major: 1, minor }
}

/// The oldest pg_restore major that reads `format`: what to install when none can.
pub fn oldest_reader_of(format: ArchiveFormat) -> u32 {
    match (format.major, format.minor) {
        (1, ..=14) => 12,
        (1, 15) => 16,
        _ => 17,
    }
}

/// A major version as a number that orders across PostgreSQL's two numbering
/// schemes: 9.6 (906) < 10 < 17. Every comparison of majors goes through it.
pub fn order(major: u32) -> u32 {
    if major >= 100 {
        major
    } else {
        major * 100
    }
}

/// `17`, `9.6`: a major version number as people write it.
pub fn major_text(major: u32) -> String {
    if major >= 100 {
        format!("{}.{}", major / 100, major % 100)
    } else {
        major.to_string()
    }
}

/// A set of client tools found somewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The folder holding the tools; None: found on PATH.
    pub dir: Option<PathBuf>,
    pub major: u32,
    /// What the tool printed for `--version`.
    pub version: String,
}

impl Candidate {
    /// `pg_dump 17.10 (/opt/pg17/bin)`.
    pub fn describe(&self, tool: &str) -> String {
        // `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` -> `15.18`.
        let version = self
            .version
            .split_once(") ")
            .and_then(|(_, v)| v.split_whitespace().next())
            .unwrap_or(&self.version);
        match &self.dir {
            Some(d) => format!("{tool} {version} ({})", d.display()),
            None => format!("{tool} {version} (PATH)"),
        }
    }
}

/// What a job needs of its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// pg_dump of a server of this major version.
    Dump { server_major: u32 },
    /// pg_restore of an archive of this format.
    Read { format: ArchiveFormat },
}

impl Need {
    pub fn met_by(&self, major: u32) -> bool {
        match *self {
            Need::Dump { server_major } => order(major) >= order(server_major),
            Need::Read { format } => restore_reads_up_to(major) >= format,
        }
    }
}

/// The outcome of looking for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The configured client (POSTGRES_BIN_DIR or PATH) does the job.
    Configured,
    /// The configured one cannot; this one, found in the search folders, can.
    Found(Candidate),
    /// None can.
    None,
}

/// Keeps the configured client when it meets `need`; otherwise the lowest
/// sufficient major among `found` (the first folder listed wins a tie).
pub fn choose(configured: Option<u32>, found: &[Candidate], need: Need) -> Choice {
    if configured.is_some_and(|m| need.met_by(m)) {
        return Choice::Configured;
    }
    found
        .iter()
        .filter(|c| need.met_by(c.major))
        .min_by_key(|c| order(c.major))
        .map(|c| Choice::Found(c.clone()))
        .unwrap_or(Choice::None)
}

/// How pg_restore's output reaches a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreMode {
    /// pg_restore connects to the server itself (and may run in parallel).
    Direct,
    /// pg_restore writes an SQL script that psql runs, without the session
    /// settings in `drop` that the server does not know: pg_restore 17 and later
    /// start every session with `SET transaction_timeout = 0`, which servers
    /// before 17 reject. Serial.
    Script { drop: Vec<&'static str> },
}

/// The session settings pg_restore of `client_major` sends that a server of
/// `server_major` rejects, and so how the restore must run.
pub fn restore_mode(client_major: u32, server_major: u32) -> RestoreMode {
    if order(client_major) >= order(17) && order(server_major) < order(17) {
        RestoreMode::Script {
            drop: vec!["SET transaction_timeout = 0;"],
        }
    } else {
        RestoreMode::Direct
    }
}

/// Refuses a backup of a newer major version than the target server: pg_dump's
/// output is only promised to load into the same or a newer major version.
pub fn can_load(backup_server_major: Option<u32>, target_server_major: u32) -> Result<(), String> {
    match backup_server_major {
        Some(from) if order(from) > order(target_server_major) => Err(format!(
            "this backup is of PostgreSQL {} and the target server runs PostgreSQL {}: pg_dump's archives \
             restore only into the same or a newer major version (the older server lacks what the newer \
             one's dump uses). Restore it into a PostgreSQL {} or newer server (BACKUP_VERIFY_HOST for \
             verify, or POSTGRES_HOST/POSTGRES_PORT), or restore a backup taken before the upgrade",
            major_text(from),
            major_text(target_server_major),
            major_text(from),
        )),
        _ => Ok(()),
    }
}

/// The folders searched for other client versions: `*` in a path stands for
/// any name there, tried newest-looking first (`/usr/lib/postgresql/*/bin`).
pub fn expand_search_path(pattern: &str, list_dir: impl Fn(&str) -> Vec<String>) -> Vec<PathBuf> {
    expand(pattern, &list_dir)
}

fn expand(pattern: &str, list_dir: &dyn Fn(&str) -> Vec<String>) -> Vec<PathBuf> {
    let Some(star) = pattern.find('*') else {
        return vec![PathBuf::from(pattern)];
    };
    let (before, after) = (&pattern[..star], &pattern[star + 1..]);
    let (parent, prefix) = match before.rfind('/') {
        Some(i) => (&before[..=i], &before[i + 1..]),
        None => ("./", before),
    };
    let (suffix, rest) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, ""),
    };
    let mut names: Vec<String> = list_dir(parent)
        .into_iter()
        .filter(|n| {
            n.starts_with(prefix) && n.ends_with(suffix) && n.len() >= prefix.len() + suffix.len()
        })
        .collect();
    // Newest first: numeric parts compare as numbers (postgresql@9.6 < postgresql@16).
    names.sort_by_key(|n| std::cmp::Reverse(version_key(n)));
    names
        .into_iter()
        .flat_map(|n| expand(&format!("{parent}{n}{rest}"), list_dir))
        .collect()
}

fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(u64::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(minor: u8) -> ArchiveFormat {
        ArchiveFormat { major: 1, minor }
    }

    fn cand(dir: &str, major: u32) -> Candidate {
        Candidate {
            dir: Some(dir.into()),
            major,
            version: format!("pg_dump (PostgreSQL) {major}.1"),
        }
    }

    #[test]
    fn pg_restore_reads_what_its_version_knows() {
        assert_eq!(restore_reads_up_to(18), fmt(16));
        assert_eq!(restore_reads_up_to(17), fmt(16));
        assert_eq!(restore_reads_up_to(16), fmt(15));
        for m in 12..=15 {
            assert_eq!(restore_reads_up_to(m), fmt(14));
        }
        assert_eq!(restore_reads_up_to(11), fmt(13));
        assert_eq!(restore_reads_up_to(906), fmt(13));
        assert_eq!(restore_reads_up_to(902), fmt(12));
        assert_eq!(
            restore_reads_up_to(30),
            fmt(16),
            "a future version reads today's formats"
        );
        for f in 12..=16 {
            let oldest = oldest_reader_of(fmt(f));
            assert!(restore_reads_up_to(oldest) >= fmt(f), "{f}");
        }
        assert_eq!(oldest_reader_of(fmt(16)), 17);
        assert_eq!(oldest_reader_of(fmt(15)), 16);
    }

    #[test]
    fn formats_parse_and_order() {
        assert_eq!(ArchiveFormat::parse("1.16.0"), Some(fmt(16)));
        assert_eq!(ArchiveFormat::parse("1.14"), Some(fmt(14)));
        assert_eq!(ArchiveFormat::parse("junk"), None);
        assert!(fmt(15) > fmt(14));
        assert_eq!(fmt(16).to_string(), "1.16");
        assert_eq!(major_text(906), "9.6");
        assert_eq!(major_text(17), "17");
    }

    #[test]
    fn the_configured_client_wins_when_it_can() {
        let found = [cand("/a", 16), cand("/b", 17)];
        let need = Need::Dump { server_major: 15 };
        assert_eq!(choose(Some(15), &found, need), Choice::Configured);
        // Newer than needed is still the user's choice.
        assert_eq!(choose(Some(17), &found, need), Choice::Configured);
    }

    #[test]
    fn otherwise_the_lowest_sufficient_version() {
        let found = [
            cand("/a", 18),
            cand("/b", 13),
            cand("/c", 17),
            cand("/d", 16),
        ];
        let pick = |configured, need| match choose(configured, &found, need) {
            Choice::Found(c) => c.dir.unwrap().display().to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(pick(Some(15), Need::Dump { server_major: 16 }), "/d");
        assert_eq!(pick(None, Need::Dump { server_major: 17 }), "/c");
        assert_eq!(pick(Some(13), Need::Read { format: fmt(16) }), "/c");
        assert_eq!(pick(Some(15), Need::Read { format: fmt(15) }), "/d");
        assert_eq!(
            choose(Some(15), &found, Need::Dump { server_major: 19 }),
            Choice::None
        );
        assert_eq!(
            choose(None, &[], Need::Dump { server_major: 13 }),
            Choice::None
        );
        // A tie goes to the first folder listed.
        let twins = [cand("/first", 17), cand("/second", 17)];
        assert_eq!(
            choose(None, &twins, Need::Dump { server_major: 17 }),
            Choice::Found(cand("/first", 17))
        );
    }

    #[test]
    fn nine_point_x_orders_before_ten() {
        assert!(order(906) < order(10));
        assert!(order(902) < order(906));
        assert!(Need::Dump { server_major: 906 }.met_by(13));
        assert!(
            !Need::Dump { server_major: 13 }.met_by(906),
            "pg_dump 9.6 cannot dump 13"
        );
        assert!(!Need::Dump { server_major: 16 }.met_by(902));
        assert!(
            can_load(Some(906), 17).is_ok(),
            "9.6 -> 17 is the classic upgrade"
        );
        assert!(can_load(Some(13), 906).is_err());
        assert_eq!(
            restore_mode(17, 906),
            RestoreMode::Script {
                drop: vec!["SET transaction_timeout = 0;"]
            }
        );
        let found = [cand("/a", 906), cand("/b", 16), cand("/c", 10)];
        assert_eq!(
            choose(None, &found, Need::Dump { server_major: 906 }),
            Choice::Found(cand("/a", 906))
        );
        assert_eq!(
            choose(Some(902), &found, Need::Dump { server_major: 13 }),
            Choice::Found(cand("/b", 16))
        );
    }

    #[test]
    fn every_need_against_every_version() {
        for server in 9..=20u32 {
            for client in 9..=20u32 {
                assert_eq!(
                    Need::Dump {
                        server_major: server
                    }
                    .met_by(client),
                    client >= server
                );
            }
        }
        for f in 12..=16 {
            for client in [10, 12, 15, 16, 17, 18] {
                assert_eq!(
                    Need::Read { format: fmt(f) }.met_by(client),
                    restore_reads_up_to(client) >= fmt(f)
                );
            }
        }
    }

    #[test]
    fn new_clients_talk_to_old_servers_through_a_script() {
        assert_eq!(restore_mode(17, 17), RestoreMode::Direct);
        assert_eq!(restore_mode(18, 17), RestoreMode::Direct);
        assert_eq!(restore_mode(15, 13), RestoreMode::Direct);
        for server in [13, 14, 15, 16] {
            assert_eq!(
                restore_mode(17, server),
                RestoreMode::Script {
                    drop: vec!["SET transaction_timeout = 0;"]
                }
            );
        }
    }

    #[test]
    fn never_into_an_older_server() {
        assert!(can_load(Some(15), 17).is_ok());
        assert!(can_load(Some(17), 17).is_ok());
        assert!(can_load(None, 13).is_ok());
        let e = can_load(Some(17), 15).unwrap_err();
        assert!(
            e.contains("PostgreSQL 17") && e.contains("PostgreSQL 15"),
            "{e}"
        );
    }

    #[test]
    fn search_patterns_expand_newest_first() {
        let listing = |dir: &str| -> Vec<String> {
            match dir {
                "/usr/lib/postgresql/" => vec!["9.6".into(), "16".into(), "13".into(), "x".into()],
                "/opt/homebrew/opt/" => vec![
                    "postgresql@14".into(),
                    "postgresql@17".into(),
                    "redis".into(),
                ],
                _ => vec![],
            }
        };
        let paths = |p: &str| -> Vec<String> {
            expand_search_path(p, listing)
                .into_iter()
                .map(|p| p.display().to_string())
                .collect()
        };
        assert_eq!(
            paths("/usr/lib/postgresql/*/bin"),
            [
                "/usr/lib/postgresql/16/bin",
                "/usr/lib/postgresql/13/bin",
                "/usr/lib/postgresql/9.6/bin",
                "/usr/lib/postgresql/x/bin"
            ]
        );
        assert_eq!(
            paths("/opt/homebrew/opt/postgresql@*/bin"),
            [
                "/opt/homebrew/opt/postgresql@17/bin",
                "/opt/homebrew/opt/postgresql@14/bin"
            ]
        );
        assert_eq!(paths("/usr/local/pgsql/bin"), ["/usr/local/pgsql/bin"]);
        assert!(paths("/nowhere/*/bin").is_empty());
    }

    #[test]
    fn candidates_describe_themselves() {
        let c = Candidate {
            dir: Some("/opt/pg17/bin".into()),
            major: 17,
            version: "pg_dump (PostgreSQL) 17.10".into(),
        };
        assert_eq!(c.describe("pg_dump"), "pg_dump 17.10 (/opt/pg17/bin)");
        let debian = Candidate {
            dir: None,
            major: 15,
            version: "pg_restore (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)".into(),
        };
        assert_eq!(debian.describe("pg_restore"), "pg_restore 15.18 (PATH)");
    }
}
