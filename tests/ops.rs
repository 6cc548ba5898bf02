//! What an operator installs beside the binary: shell completions and the
//! manual page, checked with the real bash, man and groff.

mod common;

use std::process::Command;

use common::*;

/// Runs kbackup with no settings at all (no DB_NAME, no store).
fn bare(args: &[&str]) -> String {
    let kb = Kb::bare();
    let r = kb.run(args);
    assert_eq!(
        r.code(),
        0,
        "kbackup {args:?} needs no settings:\n{}",
        r.all()
    );
    r.stdout()
}

/// What bash's completion offers for `line` (the words typed so far).
fn complete(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cmd = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; \
         _kbackup kbackup '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        words.join(" "),
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let out = run_ok(Command::new("bash").args(["--norc", "-c", &cmd]));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("kbackup.bash");
    std::fs::write(&script, bare(&["completions", "bash"])).unwrap();
    assert_eq!(complete(&script, &["kbackup", "res"]), ["restore"]);
    let latest = complete(&script, &["kbackup", "restore", "--latest-d"]);
    assert_eq!(latest, ["--latest-daily"]);
    // The other shells' scripts are produced (each names every subcommand).
    for shell in ["zsh", "fish", "powershell"] {
        let text = bare(&["completions", shell]);
        for sub in ["backup", "restore", "verify"] {
            assert!(text.contains(sub), "{shell} lacks {sub}");
        }
    }
}

#[test]
fn the_man_page_renders_without_warnings() {
    require_tool("groff", "groff (Debian package groff-base)");
    let page = bare(&["man"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kbackup.1");
    std::fs::write(&file, &page).unwrap();
    let out = run_ok(
        Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&file),
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "groff warnings");
    require_tool("man", "man (Debian package man-db)");
    let shown = run_ok(
        Command::new("man")
            .arg("-l")
            .arg(&file)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"),
    );
    let text = String::from_utf8_lossy(&shown.stdout);
    for must in [
        "KBACKUP RESTORE",
        "--identity",
        "BACKUP_DIR",
        "--latest-daily",
    ] {
        assert!(text.contains(must), "the page lacks {must}");
    }
}

fn doctor(kb: &Kb, args: &[&str]) -> (i32, Vec<serde_json::Value>) {
    let mut all = vec!["doctor", "--json"];
    all.extend_from_slice(args);
    let r = kb.run(&all);
    let findings: Vec<serde_json::Value> =
        serde_json::from_str(&r.stdout()).unwrap_or_else(|e| panic!("{e}: {}", r.all()));
    (r.code(), findings)
}

/// The findings of `level` whose check name starts with `check`.
fn with(findings: &[serde_json::Value], level: &str, check: &str) -> Vec<String> {
    findings
        .iter()
        .filter(|f| f["level"] == level && f["check"].as_str().unwrap().starts_with(check))
        .map(|f| {
            format!(
                "{} {}",
                f["detail"].as_str().unwrap(),
                f["fix"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn doctor_passes_a_working_setup_and_sends_a_test_alert() {
    let db = cluster().sample_db("doc");
    let mut kb = Kb::direct(&db);
    let remote = kb.home.path().join("remote");
    let ntfy = common::net::Recorder::start(common::net::Mode::Ok);
    kb.set("RCLONE_CONFIG", "/dev/null")
        .set("RCLONE_CONFIG_OFFSITE_TYPE", "local")
        .set("RCLONE_REMOTE_NAME", "offsite")
        .set("RCLONE_REMOTE_PATH", remote.to_str().unwrap())
        .set("NTFY_URL", &ntfy.url)
        .set("NTFY_TOPIC", "backups");
    kb.ok(&["backup"]);
    let (code, findings) = doctor(&kb, &["--notify"]);
    assert_eq!(code, 0, "{findings:#?}");
    assert!(
        findings.iter().all(|f| f["level"] != "fail"),
        "{findings:#?}"
    );
    for check in [
        "settings",
        "store",
        "hard links",
        "database",
        "rights on",
        "globals of",
        "disk for",
        "last backup of",
        "remote offsite",
        "alert ntfy",
        "encryption",
        "time zone",
    ] {
        assert_eq!(
            with(&findings, "pass", check).len(),
            1,
            "{check} passes: {findings:#?}"
        );
    }
    assert_eq!(ntfy.wait(1).len(), 1, "one test message");
    // Nothing written into the store, not even its index.
    let _ = std::fs::remove_file(kb.store.join(".kbackup/index.json"));
    doctor(&kb, &[]);
    assert!(!kb.store.join(".kbackup/index.json").exists());
    // The probes left nothing behind, on the remote or in the store.
    assert!(
        files_under(&remote).iter().all(|f| !f.contains("doctor")),
        "{:?}",
        files_under(&remote)
    );
    assert!(
        kb.files().iter().all(|f| !f.contains("doctor")),
        "{:?}",
        kb.files()
    );
}

/// Each of the seeds' troubleshooting cases, made to happen for real, is a
/// FAIL with its remedy (the stopped container: tests/docker_mode.rs).
#[test]
fn doctor_fails_each_seed_case_with_its_remedy() {
    let c = cluster();
    let db = c.sample_db("docbad");
    let mut kb = Kb::direct(&db);
    kb.ok(&["backup"]);

    // Wrong password.
    kb.set("DB_USER", PW_USER)
        .set("POSTGRES_PASSWORD", "wrong-password-xyz");
    let (code, f) = doctor(&kb, &[]);
    assert_eq!(code, 1);
    let failed = with(&f, "fail", "database");
    assert!(
        failed.len() == 1 && failed[0].contains("POSTGRES_PASSWORD"),
        "{f:#?}"
    );
    assert!(!serde_json::to_string(&f)
        .unwrap()
        .contains("wrong-password-xyz"));
    kb.set("DB_USER", "postgres").unset("POSTGRES_PASSWORD");

    // The rclone remote missing from rclone's config.
    kb.set("RCLONE_CONFIG", "/dev/null")
        .set("RCLONE_REMOTE_NAME", "nosuch");
    let (code, f) = doctor(&kb, &[]);
    assert_eq!(code, 1);
    let failed = with(&f, "fail", "remote nosuch");
    assert!(
        failed.len() == 1 && failed[0].contains("rclone config"),
        "{f:#?}"
    );
    kb.unset("RCLONE_REMOTE_NAME");

    // The store readable by others.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&kb.store, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, f) = doctor(&kb, &[]);
    assert_eq!(code, 1);
    let failed = with(&f, "fail", "store");
    assert!(failed.iter().any(|t| t.contains("chmod 700")), "{f:#?}");
    std::fs::set_permissions(&kb.store, std::fs::Permissions::from_mode(0o700)).unwrap();

    // A full disk: the store on a tmpfs too small for the next backup.
    let small = kb.home.path().join("small");
    let _fs = Tmpfs::mount(&small, "64k");
    let inner = small.join("store");
    kb.set("BACKUP_DIR", inner.to_str().unwrap());
    std::fs::create_dir(&inner).unwrap();
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, f) = doctor(&kb, &[]);
    assert_eq!(code, 1);
    let failed = with(&f, "fail", "disk for");
    assert!(
        failed.len() == 1 && failed[0].contains("Insufficient disk space"),
        "{f:#?}"
    );

    // A store on a read-only filesystem.
    _fs.remount("ro");
    let (code, f) = doctor(&kb, &[]);
    assert_eq!(code, 1);
    assert!(
        with(&f, "fail", "store")
            .iter()
            .any(|t| t.contains("cannot write")),
        "{f:#?}"
    );
    _fs.remount("rw");
    kb.set("BACKUP_DIR", c.dir.join("nope").to_str().unwrap());

    // DB_NAME=all with the server down: the databases cannot be listed, a FAIL.
    let mut all = Kb::direct(&db);
    all.set("DB_NAME", "all").set("POSTGRES_PORT", "1");
    let (code, f) = doctor(&all, &[]);
    assert_eq!(code, 1, "{f:#?}");
    assert_eq!(with(&f, "fail", "databases").len(), 1, "{f:#?}");

    // Settings that cannot be used: the FAIL line, as JSON too (exit 2).
    all.set("BACKUP_KEEP_DAILY", "7d");
    let r = all.run(&["doctor", "--json"]);
    assert_eq!(r.code(), 2, "{}", r.all());
    let f: Vec<serde_json::Value> = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(with(&f, "fail", "settings").len(), 1, "{f:#?}");

    // pg_dump older than the server: Debian's 15 client against a 16 server.
    let newer = cluster_of(16);
    let db16 = newer.sample_db("docold");
    let mut old = Kb::on(newer, &db16, &pg_bin());
    old.set("POSTGRES_CLIENT_PATHS", "/nonexistent");
    let (code, f) = doctor(&old, &[]);
    assert_eq!(code, 1);
    let failed = with(&f, "fail", "database");
    assert!(
        failed.len() == 1 && failed[0].contains("POSTGRES_BIN_DIR"),
        "{f:#?}"
    );
}

/// Progress is drawn on a terminal (a real pty, util-linux `script`) and
/// nowhere else: not when stderr is a pipe, not with JSON logs, never in
/// backup.log.
#[test]
fn progress_shows_on_a_terminal_only() {
    let c = cluster();
    let db = c.sample_db("progress");
    let mut kb = Kb::direct(&db);
    // What a terminal has (indicatif, like every terminal program, reads it).
    kb.set("TERM", "xterm-256color");
    // pg_dump waits on a lock for a moment: long enough for the bar to draw.
    let on_tty = |kb: &Kb, args: &[&str]| -> String {
        let lock = LockHolder::exclusive(&db, "events");
        let child = on_terminal_spawn(kb, args);
        wait_for(20, "pg_dump waiting on the lock", || {
            (LockHolder::waiters(&db) > 0).then_some(())
        });
        std::thread::sleep(std::time::Duration::from_millis(800));
        drop(lock);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = on_tty(&kb, &["backup"]);
    assert!(
        shown.contains("dumping"),
        "no progress on the terminal: {shown:?}"
    );
    let log = std::fs::read_to_string(kb.store.join("backup.log")).unwrap();
    assert!(!log.contains("dumping"), "progress in backup.log: {log}");

    // A pipe: no progress.
    let r = kb.ok(&["backup"]);
    assert!(!r.stderr().contains("dumping"), "{}", r.stderr());
    // JSON logs on a terminal: none either.
    kb.set("BACKUP_LOG_FORMAT", "json");
    let shown = on_tty(&kb, &["backup"]);
    assert!(
        !shown.contains("dumping"),
        "progress with JSON logs: {shown:?}"
    );

    // A restore's phases on a terminal.
    kb.unset("BACKUP_LOG_FORMAT");
    let target = format!("{db}_progress");
    let mut child = on_terminal_spawn(&kb, &["restore", "--latest", "--target-db", &target]);
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("checking the backup"), "{shown}");
    assert!(
        shown.contains("tables ("),
        "tables restored of the total: {shown}"
    );
    assert_eq!(c.fingerprint(&db), c.fingerprint(&target));
}
