//! `kbackup backup`, `list`, `rotate`, `config` against a real PostgreSQL cluster.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

/// A stopped backup left no dump, no temporary file, and no pg_dump running.
fn assert_nothing_left(kb: &Kb, db: &str, pg_dump_survived: &str) {
    assert!(kb.dumps("hourly").is_empty());
    assert!(
        !kb.files().iter().any(|f| f.ends_with(".partial")),
        "{:?}",
        kb.files()
    );
    assert!(
        processes_matching(db)
            .iter()
            .all(|(_, a)| !a.contains("pg_dump")),
        "{pg_dump_survived}"
    );
}

fn manifest_of(kb: &Kb, dump_rel: &str) -> Value {
    let stem = dump_rel.trim_end_matches(".dump.zst");
    serde_json::from_slice(&std::fs::read(kb.store.join(format!("{stem}.manifest.json"))).unwrap())
        .unwrap()
}

#[test]
fn backup_restores_equal_to_the_source() {
    let c = cluster();
    let db = c.sample_db("src");
    let before = c.fingerprint(&db);
    let kb = Kb::direct(&db);
    let r = kb.ok(&["backup"]);
    let log = r.stderr();
    for line in [
        "Starting backup...",
        "Creating database dump...",
        "Dump created: ",
        "Daily backup created",
        "Weekly backup created",
        "Rotating old backups...",
        "Backup complete! Local: ",
    ] {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
    assert!(log.contains("Hourly: 1, Daily: 1, Weekly: 1"), "{log}");
    assert!(
        log.lines()
            .all(|l| l.starts_with('[') && l.as_bytes()[20] == b']'),
        "seed log format:\n{log}"
    );

    // Change the source after the backup: the restore must show the old state.
    c.psql(
        &db,
        "DELETE FROM traces WHERE id % 2 = 0; INSERT INTO \"Quoted Names\" VALUES ('later')",
    );

    let hourly = kb.dumps("hourly");
    assert_eq!(hourly.len(), 1);
    // zstd's own frame checksum holds (the README's by-hand test).
    run_ok(
        Command::new("zstd")
            .arg("-tq")
            .arg(kb.store.join(&hourly[0])),
    );
    let restored = c.new_db("restored");
    manual_restore(&kb.store.join(&hourly[0]), &restored);
    assert_eq!(
        c.fingerprint(&restored),
        before,
        "restored content differs from the source at backup time"
    );
    assert_eq!(
        c.psql(&restored, "SELECT count(*) FROM pg_largeobject_metadata"),
        "1"
    );

    // The manifest: checksum of the stored file, exact rows per table, versions.
    let m = manifest_of(&kb, &hourly[0]);
    assert_eq!(m["file"]["sha256"], sha256_file(&kb.store.join(&hourly[0])));
    assert_eq!(
        m["file"]["size_bytes"],
        std::fs::metadata(kb.store.join(&hourly[0])).unwrap().len()
    );
    assert_eq!(m["database"], db.as_str());
    let rows: BTreeSet<(String, u64)> = m["archive"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let name = format!(
                "{}.{}",
                t["schema"].as_str().unwrap(),
                t["name"].as_str().unwrap()
            );
            let quoted = if name.contains(' ') {
                format!("public.\"{}\"", t["name"].as_str().unwrap())
            } else {
                name
            };
            (quoted, t["rows"].as_u64().unwrap())
        })
        .collect();
    let expected: BTreeSet<(String, u64)> =
        before.iter().map(|(t, (n, _))| (t.clone(), *n)).collect();
    assert_eq!(rows, expected);
    assert_eq!(m["archive"]["large_objects"], 1);
    assert!(m["server_version"]
        .as_str()
        .unwrap()
        .starts_with(|c: char| c.is_ascii_digit()));
    assert!(m["pg_dump_version"]
        .as_str()
        .unwrap()
        .starts_with(|c: char| c.is_ascii_digit()));
    let started = m["started_at"].as_str().unwrap();
    assert!(started.ends_with("+00:00"), "offset recorded: {started}");
    // The globals are saved beside it, with role passwords (we are a superuser).
    let globals = std::fs::read_to_string(
        kb.store
            .join(hourly[0].replace(".dump.zst", ".globals.sql")),
    )
    .unwrap();
    assert!(
        globals.contains(&format!("CREATE ROLE {PW_USER}")),
        "{globals}"
    );
    assert_eq!(m["globals"]["role_passwords"], true);

    // list --json
    let list = kb.list_json();
    assert_eq!(list.len(), 3);
    for item in &list {
        for key in ["path", "tier", "time", "size_bytes", "sha256", "database"] {
            assert!(item.get(key).is_some(), "list --json lacks {key}: {item}");
        }
        assert_eq!(item["sha256"], m["file"]["sha256"]);
        assert_eq!(item["database"], db.as_str());
        assert!(chrono::DateTime::parse_from_rfc3339(item["time"].as_str().unwrap()).is_ok());
    }
    let tiers: Vec<_> = list
        .iter()
        .map(|i| i["tier"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tiers, ["hourly", "daily", "weekly"]);
}

#[test]
fn tier_copies_are_hard_links_and_files_are_owner_only() {
    let db = cluster().sample_db("perm");
    let kb = Kb::direct(&db);
    kb.ok(&["backup"]);
    let h = kb.store.join(&kb.dumps("hourly")[0]);
    let d = kb.store.join(&kb.dumps("daily")[0]);
    assert_eq!(
        std::fs::metadata(&h).unwrap().ino(),
        std::fs::metadata(&d).unwrap().ino()
    );
    for f in kb.files() {
        let mode = std::fs::metadata(kb.store.join(&f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f} has mode {mode:o}");
    }
    for dir in ["", "hourly", "daily", "weekly"] {
        let mode = std::fs::metadata(kb.store.join(dir))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "folder {dir:?} has mode {mode:o}");
    }
}

/// Nine days of backups every three hours, across a month end and a Sunday.
#[test]
fn simulated_week_of_backups_fills_and_rotates_the_tiers() {
    let c = cluster();
    let db = c.new_db("week");
    c.psql(
        &db,
        "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 10)",
    );
    let mut kb = Kb::direct(&db);
    kb.set("BACKUP_KEEP_HOURLY", "6")
        .set("BACKUP_KEEP_DAILY", "3")
        .set("BACKUP_KEEP_WEEKLY", "2")
        .set("BACKUP_KEEP_MONTHLY", "2");
    let start = chrono::DateTime::parse_from_rfc3339("2025-11-26T00:00:05+00:00").unwrap();
    let steps = 9 * 8;
    for i in 0..steps {
        let t = start + chrono::Duration::hours(3 * i);
        kb.ok(&["backup", "--time", &t.to_rfc3339()]);
    }
    let end = start + chrono::Duration::hours(3 * (steps - 1));
    let hourly = kb.dumps("hourly");
    assert_eq!(hourly.len(), 6, "{hourly:?}");
    assert!(hourly
        .last()
        .unwrap()
        .contains(&end.format("%Y-%m-%d_%H-%M-%S").to_string()));
    // Daily: the first backup (00:00:05) of each of the last three days.
    let daily = kb.dumps("daily");
    assert_eq!(
        daily,
        [
            "daily/week_2_2025-12-02.dump.zst",
            "daily/week_2_2025-12-03.dump.zst",
            "daily/week_2_2025-12-04.dump.zst"
        ]
        .map(|s| s.replace("week_2", &db))
    );
    for d in &daily {
        assert_eq!(
            manifest_of(&kb, d)["started_at"].as_str().unwrap()[11..19].to_string(),
            "00:00:05",
            "{d}"
        );
    }
    // Weekly, Sunday-start: the week of Sun 2025-11-23 (ISO 2025-W47) began before
    // the first backup, whose Wednesday copy holds it; then the week of Sun 11-30 (W48).
    assert_eq!(
        kb.dumps("weekly"),
        [
            format!("weekly/{db}_2025-W47.dump.zst"),
            format!("weekly/{db}_2025-W48.dump.zst")
        ]
    );
    assert_eq!(
        manifest_of(&kb, &format!("weekly/{db}_2025-W48.dump.zst"))["started_at"]
            .as_str()
            .unwrap()[..19]
            .to_string(),
        "2025-11-30T00:00:05"
    );
    assert_eq!(
        kb.dumps("monthly"),
        [
            format!("monthly/{db}_2025-11.dump.zst"),
            format!("monthly/{db}_2025-12.dump.zst")
        ]
    );
    // Every tier copy shares its inode with the backup it came from while both exist.
    let r = kb.ok(&["list"]);
    assert!(
        r.stdout()
            .contains("Hourly: 6, Daily: 3, Weekly: 2, Monthly: 2"),
        "{}",
        r.stdout()
    );
    // Rotation is stable: running it again deletes nothing.
    let r = kb.ok(&["rotate", "--dry-run"]);
    assert!(r.stdout().contains("0 to delete"), "{}", r.stdout());
}

#[test]
fn dst_changes_never_make_two_backups_share_a_name() {
    let db = cluster().new_db("dst");
    let mut kb = Kb::direct(&db);
    kb.set("BACKUP_TIMEZONE", "America/New_York");
    // 01:30 happens twice on 2025-11-02 in New York.
    kb.ok(&["backup", "--time", "2025-11-02T01:30:00-04:00"]);
    kb.ok(&["backup", "--time", "2025-11-02T01:30:00-05:00"]);
    // Spring forward: 01:59 EST is followed by 03:00 EDT.
    kb.ok(&["backup", "--time", "2025-03-09T01:59:00-05:00"]);
    kb.ok(&["backup", "--time", "2025-03-09T03:00:00-04:00"]);
    let hourly = kb.dumps("hourly");
    assert_eq!(
        hourly,
        [
            format!("hourly/{db}_2025-03-09_01-59-00.dump.zst"),
            format!("hourly/{db}_2025-03-09_03-00-00.dump.zst"),
            format!("hourly/{db}_2025-11-02_01-30-00-0400.dump.zst"),
            format!("hourly/{db}_2025-11-02_01-30-00-0500.dump.zst"),
        ]
    );
    let times: BTreeSet<String> = kb
        .list_json()
        .iter()
        .filter(|i| i["tier"] == "hourly")
        .map(|i| i["time"].as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = [
        "2025-11-02T01:30:00-04:00",
        "2025-11-02T01:30:00-05:00",
        "2025-03-09T01:59:00-05:00",
        "2025-03-09T03:00:00-04:00",
    ]
    .iter()
    .map(|s| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .to_rfc3339()
    })
    .collect();
    let times: BTreeSet<String> = times
        .iter()
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .to_rfc3339()
        })
        .collect();
    assert_eq!(times, expected);
    // An ambiguous local --time is refused with both offsets.
    let r = kb.run(&["backup", "--time", "2025-11-02 01:30:00"]);
    assert_eq!(r.code(), 2, "{}", r.all());
    assert!(
        r.stderr().contains("-04:00") && r.stderr().contains("-05:00"),
        "{}",
        r.stderr()
    );
}

#[test]
fn a_pg_dump_killed_midway_leaves_nothing_and_deletes_nothing() {
    let c = cluster();
    let db = c.sample_db("fail");
    let mut kb = Kb::direct(&db);
    kb.set("BACKUP_KEEP_HOURLY", "1");
    kb.ok(&["backup", "--time", "2025-01-01T00:00:00Z"]);
    let before = kb.files();

    // pg_dump blocks behind our table lock; then its backend is terminated.
    let lock = LockHolder::exclusive(&db, "events");
    let child = kb
        .command(&["backup"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(20, "pg_dump waiting on the lock", || {
        (LockHolder::waiters(&db) > 0).then_some(())
    });
    assert!(
        kb.files()
            .iter()
            .any(|f| f.contains(".kbackup-") && f.ends_with(".partial")),
        "dump in progress: {:?}",
        kb.files()
    );
    c.psql(&db, &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND wait_event_type = 'Lock'"));
    let out = child.wait_with_output().unwrap();
    drop(lock);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("pg_dump") && err.contains("no backup was written"),
        "{err}"
    );
    assert_eq!(kb.files(), before, "a failed backup changed the store");
    assert!(
        !err.contains("Rotating"),
        "rotation ran after a failure: {err}"
    );
}

#[test]
fn killing_kbackup_leaves_no_orphan_and_the_next_run_cleans_up() {
    let c = cluster();
    let db = c.sample_db("kill");
    let kb = Kb::direct(&db);
    let lock = LockHolder::exclusive(&db, "events");
    let mut child = kb
        .command(&["backup"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(20, "pg_dump waiting on the lock", || {
        (LockHolder::waiters(&db) > 0).then_some(())
    });
    let dump_pid = processes_matching(&db)
        .into_iter()
        .find(|(_, a)| a.contains("pg_dump"))
        .expect("pg_dump running")
        .0;
    run_ok(Command::new("kill").args(["-KILL", &child.id().to_string()]));
    child.wait().unwrap();
    wait_for(10, "pg_dump to die with its parent", || {
        (!Path::new(&format!("/proc/{dump_pid}")).exists()).then_some(())
    });
    drop(lock);
    assert!(
        kb.files().iter().any(|f| f.ends_with(".partial")),
        "expected the killed run's temporary file"
    );
    let r = kb.ok(&["backup"]);
    assert!(
        r.stderr().contains("Removed an unfinished file"),
        "{}",
        r.stderr()
    );
    assert!(
        !kb.files().iter().any(|f| f.ends_with(".partial")),
        "{:?}",
        kb.files()
    );
    assert_eq!(kb.dumps("hourly").len(), 1);
}

#[test]
fn ctrl_c_stops_the_dump_and_removes_the_temporary_file() {
    let c = cluster();
    let db = c.sample_db("sigint");
    let kb = Kb::direct(&db);
    let lock = LockHolder::exclusive(&db, "events");
    let child = kb
        .command(&["backup"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(20, "pg_dump waiting on the lock", || {
        (LockHolder::waiters(&db) > 0).then_some(())
    });
    run_ok(Command::new("kill").args(["-INT", &child.id().to_string()]));
    let out = child.wait_with_output().unwrap();
    drop(lock);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_left(&kb, &db, "pg_dump survived");
}

#[test]
fn a_second_run_exits_at_once_naming_the_holder() {
    let db = cluster().sample_db("lock");
    let kb = Kb::direct(&db);
    let lock = LockHolder::exclusive(&db, "events");
    let first = kb
        .command(&["backup"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(20, "pg_dump waiting on the lock", || {
        (LockHolder::waiters(&db) > 0).then_some(())
    });
    let start = std::time::Instant::now();
    let second = kb.run(&["backup"]);
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(second.code(), 3, "{}", second.all());
    assert!(
        second.stderr().contains(&format!("pid {}", first.id())),
        "{}",
        second.stderr()
    );
    drop(lock);
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(kb.dumps("hourly").len(), 1);
}

#[test]
fn the_password_never_appears_in_argv_or_logs() {
    let c = cluster();
    let db = c.sample_db("secret");
    let mut kb = Kb::direct(&db);
    kb.set("DB_USER", PW_USER)
        .set("POSTGRES_PASSWORD", PW_SECRET)
        .set("DEBUG", "true");
    let lock = LockHolder::exclusive(&db, "events");
    let child = kb
        .command(&["backup"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(20, "pg_dump waiting on the lock", || {
        (LockHolder::waiters(&db) > 0).then_some(())
    });
    let (pid, argv) = processes_matching(&db)
        .into_iter()
        .find(|(_, a)| a.contains("pg_dump"))
        .expect("pg_dump running");
    assert!(!argv.contains(PW_SECRET));
    for a in all_argv() {
        assert!(!a.contains(PW_SECRET), "password in an argv: {a}");
    }
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        .replace('\0', "\n");
    assert!(
        environ
            .lines()
            .any(|l| l == format!("PGPASSWORD={PW_SECRET}")),
        "pg_dump gets the password from its environment"
    );
    drop(lock);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("PGPASSWORD=<redacted>"),
        "debug log shows the command: {err}"
    );
    assert!(!err.contains(PW_SECRET));
    assert!(!std::fs::read_to_string(kb.store.join("backup.log"))
        .unwrap()
        .contains(PW_SECRET));
    // A wrong password fails with the seed's connection error, without echoing it.
    kb.set("POSTGRES_PASSWORD", "wrong-password-xyz");
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("Cannot connect to database"),
        "{}",
        r.stderr()
    );
    assert!(!r.stderr().contains("wrong-password-xyz"));
    let cfg = kb.ok(&["config"]);
    assert!(cfg.stdout().contains("<redacted>") && !cfg.stdout().contains("wrong-password-xyz"));
}

#[test]
fn bad_settings_stop_with_exit_2_naming_setting_and_value() {
    let db = cluster().new_db("bad");
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            &[("BACKUP_KEEP_HOURLY", "lots")],
            &["BACKUP_KEEP_HOURLY", "\"lots\""],
        ),
        (
            &[("BACKUP_KEEP_DAILY", "-3")],
            &["BACKUP_KEEP_DAILY", "\"-3\""],
        ),
        (&[("POSTGRES_PORT", "http")], &["POSTGRES_PORT", "\"http\""]),
        (
            &[("BACKUP_TIMEZONE", "Moon/Base")],
            &["BACKUP_TIMEZONE", "Moon/Base"],
        ),
    ];
    for (env, expect) in cases {
        let mut kb = Kb::direct(&db);
        for (k, v) in *env {
            kb.set(k, v);
        }
        let r = kb.run(&["backup"]);
        assert_eq!(r.code(), 2, "{env:?}: {}", r.all());
        for e in *expect {
            assert!(
                r.stderr().contains(e),
                "{env:?}: {e} missing from {}",
                r.stderr()
            );
        }
        assert!(!kb.store.exists(), "{env:?}: the store was touched");
    }
    // Missing database name.
    let mut kb = Kb::direct(&db);
    kb.unset("DB_NAME");
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("DB_NAME"), "{}", r.stderr());
    // Unknown TOML key, and a non-number in TOML.
    let kb = Kb::direct(&db);
    let toml = kb.home.path().join("k.toml");
    std::fs::write(&toml, "[backup]\nkeep_hourlyy = 3\n").unwrap();
    let r = kb.run(&["--config", toml.to_str().unwrap(), "backup"]);
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("backup.keep_hourlyy"), "{}", r.stderr());
    std::fs::write(&toml, "[backup]\nkeep_weekly = \"four\"\n").unwrap();
    let r = kb.run(&["--config", toml.to_str().unwrap(), "backup"]);
    assert_eq!(r.code(), 2);
    assert!(
        r.stderr().contains("backup.keep_weekly") && r.stderr().contains("four"),
        "{}",
        r.stderr()
    );
    // A bad --name.
    let r = kb.run(&["backup", "--name", "../escape"]);
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("--name"));
    assert!(!kb.store.exists());
}

#[test]
fn settings_layer_flags_env_dotenv_toml() {
    let db = cluster().new_db("layers");
    let mut kb = Kb::direct(&db);
    kb.unset("DB_NAME").set("BACKUP_KEEP_DAILY", "5");
    std::fs::write(
        kb.home.path().join(".env"),
        format!("DB_NAME={db}\nBACKUP_KEEP_DAILY=6\nBACKUP_KEEP_WEEKLY=3\n"),
    )
    .unwrap();
    let toml = kb.home.path().join("k.toml");
    std::fs::write(&toml, "[backup]\nkeep_weekly = 9\nkeep_monthly = 2\n").unwrap();
    kb.set("KBACKUP_CONFIG", toml.to_str().unwrap());
    let r = kb.ok(&["config", "--json"]);
    let items: Vec<Value> = serde_json::from_str(&r.stdout()).unwrap();
    let get = |env: &str| items.iter().find(|i| i["env"] == env).unwrap().clone();
    assert_eq!(get("BACKUP_KEEP_DAILY")["value"], "5");
    assert_eq!(get("BACKUP_KEEP_DAILY")["source"]["layer"], "env");
    assert_eq!(get("BACKUP_KEEP_WEEKLY")["value"], "3");
    assert_eq!(get("BACKUP_KEEP_WEEKLY")["source"]["layer"], "dot_env");
    assert_eq!(get("BACKUP_KEEP_MONTHLY")["value"], "2");
    assert_eq!(get("BACKUP_KEEP_MONTHLY")["source"]["layer"], "toml");
    assert_eq!(get("BACKUP_KEEP_HOURLY")["source"]["layer"], "default");
    assert_eq!(get("DB_NAME")["value"], db.as_str());
    let r = kb.ok(&["--db", "other", "config"]);
    assert!(
        r.stdout()
            .lines()
            .any(|l| l.starts_with("DB_NAME") && l.contains("other") && l.contains("flag --db")),
        "{}",
        r.stdout()
    );
}

/// A fake pg_dump, because a real one cannot be made to exit 0 with a truncated
/// archive: it runs the real pg_dump, then prints only the first half (or nothing).
fn fake_bin_dir(kb: &Kb, script_body: &str) -> String {
    let dir = kb.home.path().join("fakebin");
    std::fs::create_dir_all(&dir).unwrap();
    let real = pg_bin();
    for tool in ["psql", "pg_dumpall"] {
        std::os::unix::fs::symlink(real.join(tool), dir.join(tool)).unwrap();
    }
    let script = format!(
        "#!/bin/sh\nREAL={}\n{script_body}\n",
        real.join("pg_dump").display()
    );
    std::fs::write(dir.join("pg_dump"), script).unwrap();
    run_ok(Command::new("chmod").arg("755").arg(dir.join("pg_dump")));
    dir.to_str().unwrap().to_string()
}

#[test]
fn a_pg_dump_that_exits_0_with_truncated_or_empty_output_is_a_failure() {
    let db = cluster().sample_db("trunc");
    let mut kb = Kb::direct(&db);
    kb.ok(&["backup", "--time", "2025-01-01T00:00:00Z"]);
    let before = kb.files();
    let cases = [
        ("truncated", "if [ \"$1\" = --version ]; then exec $REAL --version; fi\n$REAL \"$@\" > /tmp/kbt-fake.$$ || exit 1\nhead -c $(( $(wc -c < /tmp/kbt-fake.$$) / 2 )) /tmp/kbt-fake.$$\nrm -f /tmp/kbt-fake.$$\nexit 0"),
        ("empty", "if [ \"$1\" = --version ]; then exec $REAL --version; fi\nexit 0"),
    ];
    for (what, body) in cases {
        let dir = fake_bin_dir(&kb, body);
        kb.set("POSTGRES_BIN_DIR", &dir);
        let r = kb.run(&["backup"]);
        assert_eq!(r.code(), 1, "{what}: {}", r.all());
        assert!(
            r.stderr().contains("not a complete archive"),
            "{what}: {}",
            r.stderr()
        );
        assert_eq!(kb.files(), before, "{what}: the store changed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn missing_client_tools_and_unreachable_servers_are_named() {
    let db = cluster().new_db("tools");
    let mut kb = Kb::direct(&db);
    kb.set("POSTGRES_BIN_DIR", "/nonexistent/bin");
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("pg_dump command not found"),
        "{}",
        r.stderr()
    );
    let mut kb = Kb::direct(&db);
    kb.set("POSTGRES_HOST", "/tmp/no-such-socket-dir");
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains(&format!(
            "Cannot connect to database: {db}@/tmp/no-such-socket-dir:5432"
        )),
        "{}",
        r.stderr()
    );
    let mut kb = Kb::direct("no_such_db");
    kb.set("DB_NAME", "no_such_db");
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("does not exist"), "{}", r.stderr());
}

#[test]
fn insufficient_disk_space_fails_early() {
    let db = cluster().sample_db("disk");
    let mut kb = Kb::direct(&db);
    // A real, tiny filesystem.
    let mnt = kb.home.path().join("tiny");
    let _mounted = Tmpfs::mount(&mnt, "256k");
    kb.set("BACKUP_DIR", mnt.join("store").to_str().unwrap());
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(
        r.stderr().contains("Insufficient disk space. Available: "),
        "{}",
        r.stderr()
    );
    assert!(r.stderr().contains(", Required: "), "{}", r.stderr());
    assert!(
        !mnt.join("store/hourly").exists()
            || std::fs::read_dir(mnt.join("store/hourly"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[test]
fn seed_era_files_are_listed_and_rotated() {
    let c = cluster();
    let db = c.sample_db("kairon");
    let mut kb = Kb::direct(&db);
    kb.set("BACKUP_KEEP_HOURLY", "2");
    // What the seed's backup.sh left: pg_dump -Fc files, no manifests.
    for (tier, name) in [
        ("hourly", "2025-12-26_05-00-01"),
        ("hourly", "2025-12-26_06-00-01"),
        ("daily", "2025-12-26"),
        ("weekly", "2025-W52"),
    ] {
        seed_dump(&kb, &db, &format!("{tier}/{db}_{name}.dump"));
    }
    let list = kb.list_json();
    assert_eq!(list.len(), 4);
    let h = list
        .iter()
        .find(|i| i["path"] == format!("hourly/{db}_2025-12-26_06-00-01.dump"))
        .unwrap();
    assert_eq!(h["sha256"], Value::Null);
    assert_eq!(h["manifest"], false);
    assert_eq!(h["time"], "2025-12-26T06:00:01+00:00");
    assert_eq!(h["format"], "custom");
    let r = kb.ok(&["list"]);
    assert!(
        r.stdout().contains("Hourly: 2, Daily: 1, Weekly: 1"),
        "{}",
        r.stdout()
    );
    // A new backup joins them; hourly keeps 2, so the oldest seed file goes.
    kb.ok(&["backup", "--time", "2025-12-26T07:00:01Z"]);
    assert_eq!(
        kb.dumps("hourly"),
        [
            format!("hourly/{db}_2025-12-26_06-00-01.dump"),
            format!("hourly/{db}_2025-12-26_07-00-01.dump.zst")
        ]
    );
    // daily/ already had 2025-12-26 (seed file): it is never replaced.
    assert_eq!(kb.dumps("daily"), [format!("daily/{db}_2025-12-26.dump")]);
}

#[test]
fn dry_run_changes_nothing_and_shows_the_plan() {
    let db = cluster().sample_db("dry");
    let mut kb = Kb::direct(&db);
    kb.set("BACKUP_KEEP_HOURLY", "1")
        .set("POSTGRES_PASSWORD", "dry-secret-1");
    kb.set("DB_USER", "postgres");
    kb.ok(&["backup", "--time", "2025-01-01T00:00:00Z"]);
    let before = kb.files();
    let mtime = std::fs::metadata(kb.store.join("backup.log"))
        .unwrap()
        .modified()
        .unwrap();
    let r = kb.ok(&["backup", "--dry-run", "--time", "2025-01-01T01:00:00Z"]);
    let out = r.stdout();
    assert!(
        out.contains("pg_dump") && out.contains("--format=custom"),
        "{out}"
    );
    assert!(
        out.contains("PGPASSWORD=<redacted>") && !out.contains("dry-secret-1"),
        "{out}"
    );
    assert!(
        out.contains(&format!("hourly/{db}_2025-01-01_01-00-00.dump.zst")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Rotation would delete 1:\n  hourly/{db}_2025-01-01_00-00-00.dump.zst"
        )),
        "{out}"
    );
    assert_eq!(kb.files(), before);
    assert_eq!(
        std::fs::metadata(kb.store.join("backup.log"))
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );
}

#[test]
fn named_backups_are_never_overwritten_and_capped_by_retention_count() {
    let db = cluster().sample_db("named");
    let mut kb = Kb::direct(&db);
    kb.set("BACKUP_RETENTION_COUNT", "2");
    kb.ok(&["backup", "--name", "pre_migration"]);
    let r = kb.run(&["backup", "--name", "pre_migration"]);
    assert_eq!(r.code(), 2, "{}", r.all());
    assert!(r.stderr().contains("already exists"), "{}", r.stderr());
    kb.ok(&["backup", "--name", "second"]);
    kb.ok(&["backup", "--name", "third"]);
    let named = kb.dumps("named");
    assert_eq!(
        named,
        [
            format!("named/{db}_second.dump.zst"),
            format!("named/{db}_third.dump.zst")
        ]
    );
    assert!(
        kb.dumps("hourly").is_empty(),
        "named backups go to named/ only"
    );
    let list = kb.list_json();
    assert_eq!(list[0]["name"], "third");
}

#[test]
fn rotate_explains_every_decision() {
    let db = cluster().new_db("rot");
    let mut kb = Kb::direct(&db);
    for h in 0..4 {
        kb.ok(&["backup", "--time", &format!("2025-06-01T0{h}:00:00Z")]);
    }
    kb.set("BACKUP_KEEP_HOURLY", "2");
    let r = kb.ok(&["rotate", "--dry-run", "--json"]);
    let plan: Vec<Value> = serde_json::from_str(&r.stdout()).unwrap();
    let deleted: Vec<_> = plan
        .iter()
        .filter(|d| d["keep"] == false)
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        deleted,
        [
            format!("hourly/{db}_2025-06-01_01-00-00.dump.zst"),
            format!("hourly/{db}_2025-06-01_00-00-00.dump.zst")
        ]
    );
    assert!(plan.iter().all(|d| !d["why"].as_str().unwrap().is_empty()));
    assert_eq!(kb.dumps("hourly").len(), 4, "dry run deleted something");
    let r = kb.ok(&["rotate"]);
    assert!(r.stderr().contains("Deleted hourly/"), "{}", r.stderr());
    assert_eq!(kb.dumps("hourly").len(), 2);
    // Other prefixes in the same folder are never touched.
    let mut other = Kb::direct(&db);
    other
        .set("BACKUP_DIR", kb.store.to_str().unwrap())
        .set("BACKUP_PREFIX", "otherapp")
        .set("BACKUP_KEEP_HOURLY", "1");
    other.ok(&["backup", "--time", "2025-06-02T00:00:00Z"]);
    assert_eq!(kb.dumps("hourly").len(), 3);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let db = cluster().new_db("jsonlog");
    let kb = Kb::direct(&db);
    let r = kb.ok(&["--log-format", "json", "backup"]);
    let lines: Vec<_> = r.stderr().lines().map(String::from).collect();
    assert!(lines.len() >= 4);
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert!(v["fields"]["message"].is_string(), "{l}");
    }
    assert!(lines.last().unwrap().contains("Backup complete!"));
}

#[test]
fn tier_copies_fall_back_to_copies_across_filesystems() {
    let db = cluster().sample_db("xdev");
    let kb = Kb::direct(&db);
    // daily/ on another filesystem: hard links fail for real (EXDEV).
    let daily = kb.store.join("daily");
    let _mounted = Tmpfs::mount(&daily, "64m");
    kb.ok(&["backup"]);
    let h = kb.store.join(&kb.dumps("hourly")[0]);
    let d = kb.store.join(&kb.dumps("daily")[0]);
    assert_ne!(
        std::fs::metadata(&h).unwrap().ino(),
        std::fs::metadata(&d).unwrap().ino()
    );
    assert_eq!(sha256_file(&h), sha256_file(&d));
    assert_eq!(
        std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&daily).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let list = kb.list_json();
    let daily_item = list.iter().find(|i| i["tier"] == "daily").unwrap();
    assert_eq!(
        daily_item["sha256"],
        sha256_file(&d),
        "the manifest was copied too"
    );
    assert!(!kb.files().iter().any(|f| f.ends_with(".partial")));
}

#[test]
fn a_pg_dump_running_past_backup_timeout_is_stopped() {
    let db = cluster().sample_db("timeout");
    let mut kb = Kb::direct(&db);
    kb.set("BACKUP_TIMEOUT", "2s");
    let lock = LockHolder::exclusive(&db, "events");
    let start = std::time::Instant::now();
    let r = kb.run(&["backup"]);
    drop(lock);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(
        r.stderr().contains("pg_dump did not finish within 2s"),
        "{}",
        r.stderr()
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(15));
    assert_nothing_left(&kb, &db, "pg_dump survived the timeout");
}

/// The README's hourly cron line, run as cron runs it (`env -i
/// PATH=/usr/bin:/bin`, started in another folder), with its paths pointed at
/// this test's world: it works, and it still works once BACKUP_DIR is gone
/// (the shell's log used to live inside it, so the line failed before kbackup
/// started and nothing ran or alerted).
#[test]
fn the_readme_cron_line_runs_under_cron_even_with_the_store_gone() {
    let db = cluster().sample_db("cronline");
    let kb = Kb::direct(&db);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("0 * * * * cd /root/kairon && "))
        .expect("the README's hourly cron line");
    let command = line.splitn(6, ' ').nth(5).unwrap();
    let cron_log = kb.home.path().join("cron.log");
    let command = command
        .replace("/root/kairon", kb.home.path().to_str().unwrap())
        .replace("/usr/local/bin/kbackup", env!("CARGO_BIN_EXE_kbackup"))
        .replace("/var/log/kbackup-cron.log", cron_log.to_str().unwrap());
    assert!(!command.contains(kb.store.to_str().unwrap()), "{command}");
    // The seed's setup: the settings in the .env beside the compose file.
    let dotenv: String = kb.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(kb.home.path().join(".env"), dotenv).unwrap();
    for round in ["first", "after the store was lost"] {
        let out = Command::new("env")
            .args(["-i", "PATH=/usr/bin:/bin", "sh", "-c", &command])
            .current_dir("/")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{round}: {}",
            std::fs::read_to_string(&cron_log).unwrap_or_default()
        );
        assert_eq!(kb.dumps("hourly").len(), 1, "{round}");
        std::fs::remove_dir_all(&kb.store).unwrap();
    }
    assert!(std::fs::read_to_string(&cron_log)
        .unwrap()
        .contains("Backup complete"));
}

/// Every subcommand's help keeps its own flags apart from the global ones.
#[test]
fn help_puts_global_flags_under_their_own_heading() {
    let kb = Kb::bare();
    for (command, own) in [
        ("restore", "--target-db"),
        ("backup", "--no-sync"),
        ("verify", "--quick"),
    ] {
        let help = kb.ok(&[command, "--help"]).stdout();
        let heading = help
            .find("Global options (every command):")
            .unwrap_or_else(|| panic!("{command}: {help}"));
        let own_at = help.find(own).unwrap();
        let global_at = help.find("--backup-dir <DIR>").unwrap();
        assert!(own_at < heading && heading < global_at, "{command}: {help}");
    }
}

/// The store's index is a cache: whatever happens to the files between two
/// commands (a manifest replaced, a dump deleted, files copied in, the index
/// itself garbled), the next `list` shows the files as they are.
#[test]
fn the_index_never_hides_a_change_to_the_files() {
    let db = cluster().sample_db("index");
    let kb = Kb::direct(&db);
    kb.ok(&["backup", "--time", "2025-01-01T01:00:00Z"]);
    kb.ok(&["backup", "--time", "2025-01-01T02:00:00Z"]);
    let hourly = |t: &str| format!("hourly/{db}_2025-01-01_{t}");
    let paths = |list: &[Value]| -> Vec<String> {
        list.iter()
            .filter(|b| b["tier"] == "hourly")
            .map(|b| b["path"].as_str().unwrap().to_string())
            .collect()
    };
    // Past the racy window: the next lists use the folder's cached listing.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(paths(&kb.list_json()).len(), 2);
    assert!(kb.store.join(".kbackup/index.json").exists());
    let _ = kb.list_json();

    // A manifest replaced (by rename, as every writer does): its new content shows.
    let m = kb
        .store
        .join(format!("{}.manifest.json", hourly("01-00-00")));
    let mut v: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    v["database"] = "edited".into();
    let tmp = kb.store.join("hourly/.edit");
    std::fs::write(&tmp, serde_json::to_vec(&v).unwrap()).unwrap();
    std::fs::rename(&tmp, &m).unwrap();
    let list = kb.list_json();
    let edited = list
        .iter()
        .find(|b| b["path"] == format!("{}.dump.zst", hourly("01-00-00")))
        .unwrap();
    assert_eq!(edited["database"], "edited");

    // A dump deleted behind kbackup's back is gone from the list at once.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = kb.list_json();
    std::fs::remove_file(kb.store.join(format!("{}.dump.zst", hourly("02-00-00")))).unwrap();
    assert_eq!(
        paths(&kb.list_json()),
        [format!("{}.dump.zst", hourly("01-00-00"))]
    );

    // Files copied in, right after the last list (inside the racy window).
    for ext in ["dump.zst", "manifest.json", "globals.sql"] {
        std::fs::copy(
            kb.store.join(format!("{}.{ext}", hourly("01-00-00"))),
            kb.store.join(format!("{}.{ext}", hourly("03-00-00"))),
        )
        .unwrap();
    }
    assert_eq!(paths(&kb.list_json()).len(), 2);

    // A garbled index is rebuilt from the files.
    std::fs::write(kb.store.join(".kbackup/index.json"), b"{not json").unwrap();
    assert_eq!(paths(&kb.list_json()).len(), 2);
    let mut dumps = kb.dumps("hourly");
    dumps.sort();
    assert_eq!(dumps.len(), 2, "{dumps:?}");

    // A manifest garbled in place (the folder does not change), then repaired
    // in place: its error is never cached, the repaired file is read.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let good = std::fs::read(&m).unwrap();
    std::fs::write(&m, b"{garbled").unwrap();
    let manifest_of = |list: &[Value]| {
        list.iter()
            .find(|b| b["path"] == format!("{}.dump.zst", hourly("01-00-00")))
            .unwrap()["manifest"]
            .clone()
    };
    assert_eq!(manifest_of(&kb.list_json()), false);
    // verify fails a backup whose manifest exists but cannot be read.
    let v = kb.run(&[
        "verify",
        "--quick",
        &format!("{}.dump.zst", hourly("01-00-00")),
    ]);
    assert_eq!(v.code(), 1, "{}", v.all());
    assert!(
        v.all().contains("the manifest cannot be read"),
        "{}",
        v.all()
    );
    std::fs::write(&m, &good).unwrap();
    assert_eq!(manifest_of(&kb.list_json()), true);

    // An index that is a FIFO is no index (never waited on).
    let index = kb.store.join(".kbackup/index.json");
    std::fs::remove_file(&index).unwrap();
    run_ok(std::process::Command::new("mkfifo").arg(&index));
    let started = std::time::Instant::now();
    assert_eq!(paths(&kb.list_json()).len(), 2);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
