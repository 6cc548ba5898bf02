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
