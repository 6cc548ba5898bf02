//! Encryption at rest with age: real PostgreSQL, the real `age` and
//! `age-keygen` CLIs (Debian package `age`) for keys and the by-hand restore,
//! a real rclone remote.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

const MARKER: &str = "kbackup-plaintext-marker-5f3a9c";

/// An age identity made by `age-keygen`: (the identity file, its public key).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    require_tool("age-keygen", "age-keygen (Debian package age)");
    let key = dir.join(name);
    run_ok(Command::new("age-keygen").arg("-o").arg(&key));
    let public = run_ok(Command::new("age-keygen").arg("-y").arg(&key));
    (
        key,
        String::from_utf8(public.stdout).unwrap().trim().to_string(),
    )
}

/// A sample database with a table full of a marker string (never to be
/// found in the clear in the store, the remote or a temporary folder).
fn marked_db(hint: &str) -> String {
    let c = cluster();
    let db = c.sample_db(hint);
    c.psql(
        &db,
        &format!(
            "CREATE TABLE secrets AS SELECT g AS id, '{MARKER}-' || g AS secret FROM generate_series(1, 20000) g"
        ),
    );
    db
}

/// Files under `dir` whose bytes hold the marker.
fn holding_marker(dir: &Path) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|f| {
            std::fs::read(dir.join(f))
                .is_ok_and(|b| b.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()))
        })
        .collect()
}

fn manifest_of(kb: &Kb, dump: &str) -> Value {
    let stem = dump
        .strip_suffix(".dump.zst.age")
        .expect("an encrypted dump");
    serde_json::from_slice(&std::fs::read(kb.store.join(format!("{stem}.manifest.json"))).unwrap())
        .unwrap()
}

#[test]
fn an_encrypted_store_round_trips_and_holds_no_plaintext() {
    let c = cluster();
    let db = marked_db("seal");
    let mut kb = Kb::direct(&db);
    let (key, public) = keygen(kb.home.path(), "key.txt");
    let remote = kb.home.path().join("remote");
    let tmp = kb.home.path().join("tmp");
    kb.set("BACKUP_AGE_RECIPIENTS", &public)
        .set("RCLONE_CONFIG", "/dev/null")
        .set("RCLONE_CONFIG_OFFSITE_TYPE", "local")
        .set("RCLONE_REMOTE_NAME", "offsite")
        .set("RCLONE_REMOTE_PATH", remote.to_str().unwrap())
        .set("TMPDIR", tmp.to_str().unwrap());
    std::fs::create_dir_all(&tmp).unwrap();

    // While the backup runs: every file written holds no marker, and the
    // files being written are age streams from their first bytes.
    let mut child = kb.spawn(&["backup"]);
    let mut seen_partial = false;
    while child.try_wait().unwrap().is_none() {
        assert_eq!(holding_marker(kb.home.path()), Vec::<String>::new());
        for f in files_under(&kb.store) {
            if f.starts_with("hourly/") && f.ends_with(".partial") {
                if let Ok(b) = std::fs::read(kb.store.join(&f)) {
                    if b.len() >= 21 {
                        seen_partial = true;
                        // The dump and globals as age streams; the manifest as JSON.
                        assert!(
                            b.starts_with(b"age-encryption.org/v1") || b.starts_with(b"{"),
                            "{f} is neither age nor a manifest"
                        );
                    }
                }
            }
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("a partial dump was seen while it was written: {seen_partial}");

    // After: nothing in the clear anywhere, the files say what they are.
    assert_eq!(holding_marker(kb.home.path()), Vec::<String>::new());
    let files = kb.files();
    assert!(
        files
            .iter()
            .all(|f| !f.ends_with(".dump.zst") && !f.ends_with(".globals.sql")),
        "{files:?}"
    );
    let dump = files
        .iter()
        .find(|f| f.starts_with("hourly/") && f.ends_with(".dump.zst.age"))
        .expect("an encrypted hourly dump")
        .clone();
    assert!(files.contains(&dump.replace(".dump.zst.age", ".globals.sql.age")));
    assert!(remote.join(&dump).exists(), "uploaded: {dump}");
    let m = manifest_of(&kb, &dump);
    assert_eq!(m["file"]["encryption"]["scheme"], "age");
    assert_eq!(
        m["file"]["encryption"]["recipients"],
        serde_json::json!([public])
    );
    assert_eq!(m["file"]["format"], "custom_zstd_age");

    // Without the identity: listed and quick-checked as stored; a restore or
    // a full verify stops before anything, exit 2, naming the setting.
    assert_eq!(kb.list_json().len(), 3, "hourly, daily and weekly copies");
    let quick = kb.ok(&["verify", "--quick", "--json"]);
    assert!(
        quick.stdout().contains("no identity given"),
        "{}",
        quick.stdout()
    );
    let before = c.fingerprint(&db);
    let r = kb.run(&["restore", "--latest", "--yes"]);
    assert_eq!(r.code(), 2, "{}", r.all());
    assert!(r.stderr().contains("BACKUP_AGE_IDENTITY"), "{}", r.stderr());
    let r = kb.run(&["verify"]);
    assert_eq!(r.code(), 2, "{}", r.all());
    assert!(r.stderr().contains("--identity"), "{}", r.stderr());
    assert_eq!(c.fingerprint(&db), before);

    // With it: the safe restore, a full verify, and a restore from the remote alone.
    let target = format!("{db}_back");
    kb.ok(&[
        "restore",
        "--latest",
        "--target-db",
        &target,
        "--yes",
        "--identity",
        key.to_str().unwrap(),
    ]);
    assert_eq!(c.fingerprint(&db), c.fingerprint(&target));
    kb.set("BACKUP_AGE_IDENTITY", key.to_str().unwrap());
    kb.ok(&["verify"]);
    std::fs::remove_dir_all(&kb.store).unwrap();
    let from_remote = format!("{db}_remote");
    kb.ok(&[
        "restore",
        "--remote",
        "--latest",
        "--target-db",
        &from_remote,
        "--yes",
    ]);
    assert_eq!(c.fingerprint(&db), c.fingerprint(&from_remote));

    // By hand, with standard tools only, as the README shows.
    let by_hand = c.new_db("seal_hand");
    let script = format!(
        "set -o pipefail; age -d -i '{}' '{}' | zstd -d | '{}' -h '{}' -p {} -U postgres --exit-on-error -d '{by_hand}'",
        key.display(),
        remote.join(&dump).display(),
        pg_bin().join("pg_restore").display(),
        c.socket.display(),
        c.port
    );
    run_ok(Command::new("bash").args(["-c", &script]));
    assert_eq!(c.fingerprint(&db), c.fingerprint(&by_hand));
    let globals = run_ok(
        Command::new("age")
            .args(["-d", "-i"])
            .arg(&key)
            .arg(remote.join(dump.replace(".dump.zst.age", ".globals.sql.age"))),
    );
    assert!(String::from_utf8_lossy(&globals.stdout).contains("CREATE ROLE"));
}

#[test]
fn a_wrong_key_or_a_damaged_file_fails_and_the_live_database_is_untouched() {
    let c = cluster();
    let db = marked_db("sealbad");
    let mut kb = Kb::direct(&db);
    let (key, public) = keygen(kb.home.path(), "key.txt");
    let (wrong, _) = keygen(kb.home.path(), "wrong.txt");
    kb.set("BACKUP_AGE_RECIPIENTS", &public);
    kb.ok(&["backup"]);
    let before = c.fingerprint(&db);

    let r = kb.run(&[
        "restore",
        "--latest",
        "--yes",
        "--identity",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(
        r.stderr().contains("none of the identities"),
        "{}",
        r.stderr()
    );
    assert_eq!(c.fingerprint(&db), before);

    // Tampered with, and its manifest made to agree (so that only age's own
    // authentication can tell); then truncated the same way.
    let dump = kb.dumps("hourly")[0].clone();
    let path = kb.store.join(&dump);
    let good = std::fs::read(&path).unwrap();
    let manifest_path = kb
        .store
        .join(dump.replace(".dump.zst.age", ".manifest.json"));
    let good_manifest = std::fs::read(&manifest_path).unwrap();
    let damaged = |bytes: Vec<u8>| {
        std::fs::write(&path, &bytes).unwrap();
        let mut m: Value = serde_json::from_slice(&good_manifest).unwrap();
        m["file"]["sha256"] = sha256_file(&path).into();
        m["file"]["size_bytes"] = bytes.len().into();
        std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
    };
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    for (what, bytes) in [
        ("tampered", flipped),
        ("truncated", good[..good.len() - 100].to_vec()),
    ] {
        damaged(bytes);
        let r = kb.run(&[
            "restore",
            "--latest",
            "--yes",
            "--identity",
            key.to_str().unwrap(),
        ]);
        assert_eq!(r.code(), 1, "{what}: {}", r.all());
        assert!(
            r.stderr().contains("damaged or truncated"),
            "{what}: {}",
            r.stderr()
        );
        assert_eq!(c.fingerprint(&db), before, "{what}");
        let r = kb.run(&["verify", "--quick", "--identity", key.to_str().unwrap()]);
        assert_eq!(r.code(), 1, "{what}: {}", r.all());
    }
}

#[test]
fn mixed_stores_and_key_rotation() {
    let c = cluster();
    let db = c.sample_db("sealmix");
    let mut kb = Kb::direct(&db);
    let (old_key, old_public) = keygen(kb.home.path(), "old.txt");
    let (new_key, new_public) = keygen(kb.home.path(), "new.txt");
    kb.ok(&["backup", "--time", "2025-01-01T01:00:00Z"]);
    kb.set("BACKUP_AGE_RECIPIENTS", &old_public);
    kb.ok(&["backup", "--time", "2025-01-01T02:00:00Z"]);
    // Rotation: new backups to the new key only (a recipients file this time).
    let recipients = kb.home.path().join("recipients.txt");
    std::fs::write(&recipients, format!("# the 2025 key\n{new_public}\n")).unwrap();
    kb.unset("BACKUP_AGE_RECIPIENTS")
        .set("BACKUP_AGE_RECIPIENTS_FILE", recipients.to_str().unwrap());
    kb.ok(&["backup", "--time", "2025-01-01T03:00:00Z"]);
    let mut hourly = kb.dumps("hourly");
    hourly.sort();
    assert_eq!(
        hourly,
        [
            format!("hourly/{db}_2025-01-01_01-00-00.dump.zst"),
            format!("hourly/{db}_2025-01-01_02-00-00.dump.zst.age"),
            format!("hourly/{db}_2025-01-01_03-00-00.dump.zst.age"),
        ]
    );
    assert_eq!(
        manifest_of(&kb, &hourly[2])["file"]["encryption"]["recipients"],
        serde_json::json!([new_public])
    );

    // Every one is quick-checked without a key; the old plain one restores without one.
    kb.ok(&["verify", "--quick", "--all"]);
    let plain = format!("{db}_plain");
    kb.ok(&[
        "restore",
        "--file",
        &hourly[0],
        "--target-db",
        &plain,
        "--yes",
    ]);
    assert_eq!(c.fingerprint(&db), c.fingerprint(&plain));

    // One identity file holding both keys reads every backup.
    let both = kb.home.path().join("both.txt");
    let text =
        std::fs::read_to_string(&old_key).unwrap() + &std::fs::read_to_string(&new_key).unwrap();
    std::fs::write(&both, text).unwrap();
    for (i, f) in hourly.iter().enumerate().skip(1) {
        let target = format!("{db}_k{i}");
        kb.ok(&[
            "restore",
            "--file",
            f,
            "--target-db",
            &target,
            "--yes",
            "--identity",
            both.to_str().unwrap(),
        ]);
        assert_eq!(c.fingerprint(&db), c.fingerprint(&target));
    }
    // Mid rotation, checked with the new key only: the backups sealed to the
    // old key are not called bad (their archive is just not read).
    let r = kb.run(&[
        "verify",
        "--quick",
        "--all",
        "--identity",
        new_key.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 0, "{}", r.all());
    assert!(
        !kb.list_json()
            .iter()
            .any(|b| b["verified"]["passed"] == false),
        "{:?}",
        kb.list_json()
    );
    // The key itself where its file's path goes: refused, never echoed.
    let secret = std::fs::read_to_string(&old_key)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let r = kb.run(&["config", "--identity", &secret]);
    assert_eq!(r.code(), 2, "{}", r.all());
    assert!(!r.all().contains(&secret), "{}", r.all());
    // The old key alone cannot read what was sealed after the rotation.
    let r = kb.run(&[
        "restore",
        "--file",
        &hourly[2],
        "--target-db",
        &format!("{db}_x"),
        "--yes",
        "--identity",
        old_key.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 1, "{}", r.all());

    // A recipient that is not a key stops every command before it runs.
    kb.set("BACKUP_AGE_RECIPIENTS", "age1notakey");
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 2, "{}", r.all());
    assert!(
        r.stderr().contains("BACKUP_AGE_RECIPIENTS"),
        "{}",
        r.stderr()
    );
    assert_eq!(kb.dumps("hourly").len(), 3);
}

#[test]
fn a_minimal_manifest_names_no_table_and_still_proves_the_restore() {
    let c = cluster();
    let db = marked_db("sealmin");
    let mut kb = Kb::direct(&db);
    kb.set("BACKUP_MANIFEST_DETAIL", "minimal");
    kb.ok(&["backup"]);
    let dump = kb.dumps("hourly")[0].clone();
    let text = std::fs::read_to_string(kb.store.join(dump.replace(".dump.zst", ".manifest.json")))
        .unwrap();
    for name in ["secrets", "\"roles\": [\n"] {
        assert!(
            !text.contains(name),
            "the minimal manifest names {name}: {text}"
        );
    }
    let m: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        m["minimal"]["rows"].as_u64().map(|r| r >= 20000),
        Some(true),
        "{text}"
    );
    let v = kb.ok(&["verify", "--json"]);
    let report: Vec<Value> = serde_json::from_str(&v.stdout()).unwrap();
    assert_eq!(report[0]["passed"], true, "{}", v.stdout());
    let target = format!("{db}_min");
    kb.ok(&["restore", "--latest", "--target-db", &target, "--yes"]);
    assert_eq!(c.fingerprint(&db), c.fingerprint(&target));
}

/// Review: with several databases, a missing identity stopped each one as a
/// failure (exit 1, a FAILED alert); it stops the run before anything, exit 2.
#[test]
fn several_databases_without_the_key_stop_before_anything() {
    let c = cluster();
    let (a, b) = (c.sample_db("sealall"), c.sample_db("sealall"));
    let mut kb = Kb::direct(&a);
    let (_, public) = keygen(kb.home.path(), "key.txt");
    kb.set("DB_NAME", &format!("{a},{b}"))
        .set("BACKUP_AGE_RECIPIENTS", &public);
    kb.ok(&["backup"]);
    let before = (c.fingerprint(&a), c.fingerprint(&b));
    for args in [
        &["restore", "--all", "--latest", "--yes"][..],
        &["verify"][..],
    ] {
        let r = kb.run(args);
        assert_eq!(r.code(), 2, "{args:?}: {}", r.all());
        assert!(r.stderr().contains("BACKUP_AGE_IDENTITY"), "{}", r.stderr());
    }
    assert_eq!((c.fingerprint(&a), c.fingerprint(&b)), before);
    let kept = c.psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'sealall_%restore%'",
    );
    assert_eq!(kept.trim(), "0");
}
