//! Secrets that hide inside ordinary settings: credentials in a URL's user
//! part (`NTFY_URL=https://user:pass@ntfy.example`), secret-bearing rclone flags
//! in RCLONE_FLAGS (`--s3-secret-access-key KEY`). Pure: decides what is secret
//! and how it is shown; the callers keep it out of argv, logs and errors.

/// Secret values kbackup knows this run: handed to a child as a secret
/// (PGPASSWORD, an rclone flag moved to the environment) or found in its own
/// environment under a secret's name (RCLONE_CONFIG_S3_SECRET_ACCESS_KEY).
/// Child output is redacted with them before it is logged or put in an error:
/// a tool that prints its settings (`rclone -vv` prints every value it reads
/// from the environment) never leaks one.
static KNOWN: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());
static FROM_ENV: std::sync::Once = std::sync::Once::new();

/// Shorter values are not redacted (they would mangle ordinary text).
const MIN_SECRET: usize = 4;

/// Adds a secret value to the ones child output is redacted of, with the
/// forms a tool may print it in: escaped as in JSON or Go's `%q` (`\"`,
/// `\\`), and shell-quoted.
pub fn register(value: &str) {
    if value.len() < MIN_SECRET {
        return;
    }
    let escaped = serde_json::to_string(value).unwrap_or_default();
    let escaped = escaped
        .strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or_default()
        .to_string();
    let quoted = shlex::try_quote(value)
        .map(|q| q.into_owned())
        .unwrap_or_default();
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    for form in [value.to_string(), escaped, quoted] {
        if form.len() >= MIN_SECRET && !known.contains(&form) {
            known.push(form);
        }
    }
    // Longest first: a secret that contains another is replaced whole.
    known.sort_by_key(|k| std::cmp::Reverse(k.len()));
}

/// Whether an environment variable's name says it holds a secret.
pub fn secret_env_name(name: &str) -> bool {
    secret_flag(&name.to_ascii_lowercase().replace('_', "-"))
}

/// `text` with every known secret replaced by `<redacted>`.
pub fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    FROM_ENV.call_once(|| {
        for (k, v) in std::env::vars() {
            if secret_env_name(&k) {
                register(&v);
            }
        }
    });
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    if !known.iter().any(|k| text.contains(k.as_str())) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for k in known.iter() {
        out = out.replace(k.as_str(), "<redacted>");
    }
    std::borrow::Cow::Owned(out)
}

/// rclone's on/off flags whose names look secret (`--s3-env-auth`,
/// `--sftp-key-use-agent`): they take no value and hold none.
const SWITCHES: [&str; 6] = [
    "env-auth",
    "v2-auth",
    "use-agent",
    "ask-password",
    "auth-owner-only",
    "dump-headers",
];

/// Whether an rclone flag (without its dashes) carries a secret by its name.
pub fn secret_flag(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    if SWITCHES.iter().any(|s| n.ends_with(s)) {
        return false;
    }
    // Words that are secrets wherever they appear in a flag's name...
    let anywhere = [
        "secret",
        "password",
        "token",
        "credential",
        "grant",
        "bearer",
        "sas-url",
        "header",
    ];
    // ...and short ones that must be a whole part (`--sftp-pass`, not `--bypass-x`).
    let parts = ["pass", "key", "auth"];
    anywhere.iter().any(|w| n.contains(w)) || n.split(['-', '_']).any(|part| parts.contains(&part))
}

/// RCLONE_FLAGS split into the arguments rclone may see in its argv and the
/// secret ones, moved to rclone's environment (`--s3-secret-access-key K` ->
/// `RCLONE_S3_SECRET_ACCESS_KEY=K`, which rclone reads for every flag).
pub fn split_rclone_flags(flags: &[String]) -> (Vec<String>, Vec<(String, String)>) {
    let mut args = Vec::new();
    let mut env = Vec::new();
    let mut it = flags.iter().peekable();
    while let Some(f) = it.next() {
        let Some(name) = f.strip_prefix("--") else {
            args.push(f.clone());
            continue;
        };
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (name, None),
        };
        if !secret_flag(name) {
            args.push(f.clone());
            continue;
        }
        // Secret flags take a value: the next word, unless it is another
        // flag (`--flag=VALUE` gives a value that starts with dashes).
        let value = match inline {
            Some(v) => v,
            None => match it.next_if(|next| !next.starts_with("--")) {
                Some(v) => v.clone(),
                None => {
                    args.push(f.clone());
                    continue;
                }
            },
        };
        env.push((
            format!("RCLONE_{}", name.to_ascii_uppercase().replace('-', "_")),
            value,
        ));
    }
    (args, env)
}

/// RCLONE_FLAGS as `kbackup config` shows them: secret values redacted.
pub fn show_rclone_flags(flags: &[String]) -> String {
    let (args, env) = split_rclone_flags(flags);
    let mut shown = args;
    for (name, _) in env {
        let flag = name
            .trim_start_matches("RCLONE_")
            .to_ascii_lowercase()
            .replace('_', "-");
        shown.push(format!("--{flag} <redacted>"));
    }
    shown.join(" ")
}

/// Registers the credentials in a URL's user part (`https://u:p@host`), if any.
pub fn register_url_credentials(url: &str) {
    let Some((_, rest)) = url.split_once("://") else {
        return;
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    if let Some(at) = authority.rfind('@') {
        let user_info = &authority[..at];
        register(user_info);
        if let Some((_, password)) = user_info.split_once(':') {
            register(password);
        }
    }
}

/// A URL without the credentials of its user part:
/// `https://u:p@host/x` -> `https://<redacted>@host/x`.
pub fn show_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Whether an SMTP host is this machine (credentials may then cross without TLS).
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_output_is_redacted_of_every_known_secret() {
        register("s3cr3t-value-1");
        register("abc"); // too short to redact
        assert!(secret_env_name("RCLONE_CONFIG_S3_SECRET_ACCESS_KEY"));
        assert!(secret_env_name("RCLONE_CONFIG_DAV_PASS"));
        assert!(secret_env_name("PGPASSWORD"));
        assert!(!secret_env_name("RCLONE_CONFIG_S3_ENDPOINT"));
        assert_eq!(
            redact("Setting secret_access_key=\"s3cr3t-value-1\" for \"s3\" abc"),
            "Setting secret_access_key=\"<redacted>\" for \"s3\" abc"
        );
        assert!(matches!(
            redact("nothing here"),
            std::borrow::Cow::Borrowed(_)
        ));
        // The forms a tool prints a value in: Go/JSON-escaped, shell-quoted.
        register("S3KEY\"with\\back");
        let printed = r#"Setting s3_secret_access_key="S3KEY\"with\\back" from environment"#;
        assert!(!redact(printed).contains("with"), "{}", redact(printed));
        register("it's a secret");
        let shown = format!("PGPASSWORD={}", shlex::try_quote("it's a secret").unwrap());
        assert_eq!(redact(&shown), "PGPASSWORD=<redacted>");
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn secret_rclone_flags_move_to_the_environment() {
        let (args, env) = split_rclone_flags(&v(&[
            "--s3-no-head",
            "--s3-secret-access-key",
            "SECRET1",
            "--transfers",
            "2",
            "--s3-access-key-id=AKIA",
            "--webdav-pass",
            "obscured",
            "--drive-token={\"a\":1}",
            "-v",
            "--b2-key=--starts-with-dashes",
            // On/off flags with secret-looking names take no value.
            "--sftp-key-use-agent",
            "--sftp-pass",
            "ARGVLEAK1",
            "--s3-env-auth",
            "--checkers",
            "4",
        ]));
        assert_eq!(
            args,
            v(&[
                "--s3-no-head",
                "--transfers",
                "2",
                "-v",
                "--sftp-key-use-agent",
                "--s3-env-auth",
                "--checkers",
                "4"
            ])
        );
        assert_eq!(
            env,
            [
                (
                    "RCLONE_S3_SECRET_ACCESS_KEY".to_string(),
                    "SECRET1".to_string()
                ),
                ("RCLONE_S3_ACCESS_KEY_ID".to_string(), "AKIA".to_string()),
                ("RCLONE_WEBDAV_PASS".to_string(), "obscured".to_string()),
                ("RCLONE_DRIVE_TOKEN".to_string(), "{\"a\":1}".to_string()),
                (
                    "RCLONE_B2_KEY".to_string(),
                    "--starts-with-dashes".to_string()
                ),
                ("RCLONE_SFTP_PASS".to_string(), "ARGVLEAK1".to_string()),
            ]
        );
        // A secret flag with no value before the next flag stays a flag
        // (rclone then says what it lacks); nothing after it is eaten.
        let (args, env) = split_rclone_flags(&v(&["--sftp-pass", "--transfers", "2"]));
        assert_eq!(args, v(&["--sftp-pass", "--transfers", "2"]));
        assert!(env.is_empty());
        let shown = show_rclone_flags(&v(&[
            "--s3-secret-access-key",
            "SECRET1",
            "--transfers",
            "2",
        ]));
        assert!(
            !shown.contains("SECRET1") && shown.contains("--transfers 2"),
            "{shown}"
        );
        assert!(
            shown.contains("--s3-secret-access-key <redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn ordinary_flags_stay_flags() {
        for f in [
            "transfers",
            "s3-no-head",
            "bwlimit",
            "s3-chunk-size",
            "checkers",
            "keep-alive",
        ] {
            assert!(!secret_flag(f), "{f}");
        }
        for f in [
            "s3-secret-access-key",
            "sftp-pass",
            "b2-key",
            "dropbox-token",
            "password",
            "crypt-password2",
            "drive-service-account-credentials",
            "storj-access-grant",
            "header",
            "header-upload",
        ] {
            assert!(secret_flag(f), "{f}");
        }
    }

    #[test]
    fn url_credentials_are_redacted() {
        assert_eq!(
            show_url("https://u:p@ntfy.example/x"),
            "https://<redacted>@ntfy.example/x"
        );
        assert_eq!(show_url("https://ntfy.sh"), "https://ntfy.sh");
        assert_eq!(show_url("https://host/a@b"), "https://host/a@b");
        assert_eq!(show_url("no scheme"), "no scheme");
    }

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "127.0.0.1", "::1", "[::1]", "127.0.0.53"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["mail.example.com", "10.0.0.1", "localhost.example.com"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
