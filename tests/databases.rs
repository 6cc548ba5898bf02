//! Many databases: one run backs up a whole server (DB_NAME=all or a list),
//! each database with its own files, state, metrics and alert line; a whole
//! server restores with one command. Real PostgreSQL clusters, a real HTTP
//! receiver for the alert.

mod common;

use common::net::{Mode, Recorder};
use common::*;

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Every file of `prefix` in `tier` (dumps only).
fn dumps_of(kb: &Kb, tier: &str, prefix: &str) -> Vec<String> {
    kb.dumps(tier)
        .into_iter()
        .filter(|f| {
            f.strip_prefix(&format!("{tier}/{prefix}_"))
                .is_some_and(|rest| rest.starts_with("20"))
        })
        .collect()
}

#[test]
fn all_backs_up_every_database_whatever_its_name_and_a_failing_one_fails_alone() {
    // Its own server: `all` means every database on it.
    let c = cluster_with_env(15, "");
    let long = format!("long_{}", "x".repeat(58));
    assert_eq!(long.len(), 63);
    let names = [
        "plain".to_string(),
        "with space".to_string(),
        "it's \"quoted\"".to_string(),
        "ünïcödé".to_string(),
        long.clone(),
    ];
    for (i, n) in names.iter().enumerate() {
        c.psql("postgres", &format!("CREATE DATABASE {}", ident(n)));
        c.psql(
            n,
            &format!(
                "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, {})",
                10 + i
            ),
        );
    }
    for n in ["closed", "skipped"] {
        c.psql("postgres", &format!("CREATE DATABASE {n}"));
    }
    c.psql(
        "postgres",
        "ALTER DATABASE closed WITH ALLOW_CONNECTIONS false",
    );

    let hook = Recorder::start(Mode::Ok);
    let mut kb = Kb::on(&c, "all", &pg_bin());
    let metrics = kb.home.path().join("kbackup.prom");
    kb.set("BACKUP_EXCLUDE", "skipped")
        .set("BACKUP_WEBHOOK_URL", &hook.url)
        .set("BACKUP_METRICS_FILE", metrics.to_str().unwrap())
        .set("DEBUG", "true");
    let r = kb.ok(&["backup"]);
    let err = r.stderr();
    assert!(err.contains("Starting backup of 6 databases"), "{err}");
    assert!(err.contains("leaves out \"closed\""), "{err}");
    assert!(err.contains("leaves out \"skipped\""), "{err}");
    assert!(err.contains("Backups complete: all 6 databases"), "{err}");
    // The cluster's globals once per run, not once per database.
    let globals_dumps = err
        .lines()
        .filter(|l| l.contains("running:") && l.contains("--globals-only"))
        .count();
    assert_eq!(globals_dumps, 1, "{err}");
    // Each database (postgres, the maintenance database, is one) has its own
    // hourly file and manifest naming it.
    for n in names.iter().chain([&"postgres".to_string()]) {
        let files = dumps_of(&kb, "hourly", n);
        assert_eq!(files.len(), 1, "{n}: {:?}", kb.files());
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                kb.store
                    .join(files[0].replace(".dump.zst", ".manifest.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(manifest["database"], n.as_str());
        assert_eq!(manifest["prefix"], n.as_str());
    }
    assert!(dumps_of(&kb, "hourly", "closed").is_empty());
    assert!(dumps_of(&kb, "hourly", "skipped").is_empty());
    // Every backup of the run restores its own database: the archives differ.
    let rows = |n: &str| -> u64 {
        let list = kb.list_json();
        let b = list
            .iter()
            .find(|b| b["database"] == n && b["tier"] == "hourly")
            .unwrap_or_else(|| panic!("{n} listed"));
        b["rows"].as_u64().unwrap()
    };
    for (i, n) in names.iter().enumerate() {
        assert_eq!(rows(n), 10 + i as u64, "{n}");
    }
    let status = kb.run(&["status", "--json"]);
    assert_eq!(status.code(), 0, "{}", status.all());
    let doc: serde_json::Value = serde_json::from_str(&status.stdout()).unwrap();
    assert_eq!(doc["databases"].as_array().unwrap().len(), 6, "{doc:#}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    for n in &names {
        let label = format!(
            "kbackup_last_run_success{{database=\"{}\"}} 1",
            n.replace('"', "\\\"")
        );
        assert!(prom.contains(&label), "{label} in\n{prom}");
    }
    assert_eq!(
        prom.matches("# TYPE kbackup_last_run_success gauge")
            .count(),
        1,
        "{prom}"
    );
    assert!(hook.requests().is_empty(), "no alert on success");

    // A list naming a database nothing can connect to: it fails alone, the
    // others are backed up, one alert names it, exit 1.
    let mut kb2 = Kb::on(&c, "plain,closed,\"with space\"", &pg_bin());
    kb2.set("BACKUP_DIR", kb.store.to_str().unwrap())
        .set("BACKUP_WEBHOOK_URL", &hook.url)
        .set("BACKUP_METRICS_FILE", metrics.to_str().unwrap());
    let r = kb2.run(&["backup", "--time", "2020-01-01T00:00:00Z"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(
        r.stderr()
            .contains("Backup of 1 of 3 databases failed: closed"),
        "{}",
        r.stderr()
    );
    for n in ["plain", "with space"] {
        assert!(
            kb.files()
                .iter()
                .any(|f| f == &format!("hourly/{n}_2020-01-01_00-00-00.dump.zst")),
            "{n}: {:?}",
            kb.files()
        );
    }
    let alerts = hook.wait(1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(hook.requests().len(), 1, "one alert for the run");
    assert!(
        alerts[0].body.contains("closed: FAILED") && alerts[0].body.contains("plain: hourly/"),
        "{}",
        alerts[0].body
    );
    let status = kb2.run(&["status", "--json", "--max-age", "100000d"]);
    assert_eq!(status.code(), 1, "{}", status.all());
    let doc: serde_json::Value = serde_json::from_str(&status.stdout()).unwrap();
    let healthy: Vec<(String, bool)> = doc["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["database"].as_str().unwrap().to_string(),
                d["healthy"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        healthy,
        [
            ("plain".to_string(), true),
            ("closed".to_string(), false),
            ("with space".to_string(), true)
        ]
    );
    let text = kb2.run(&["status", "--max-age", "100000d"]).stdout();
    assert!(text.contains("Database closed: UNHEALTHY"), "{text}");
    assert!(text.contains("Database plain: OK"), "{text}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("kbackup_last_run_success{database=\"closed\"} 0"),
        "{prom}"
    );
    // The other databases of the store keep their series in the shared file.
    assert!(
        prom.contains("kbackup_last_run_success{database=\"ünïcödé\"} 1"),
        "{prom}"
    );
    // restore refuses to guess which of several databases.
    let r = kb2.run(&["restore", "--latest", "--dry-run"]);
    assert_eq!(r.code(), 2, "{}", r.all());
    assert!(
        r.stderr().contains("--db NAME") && r.stderr().contains("plain, closed, with space"),
        "{}",
        r.stderr()
    );
}

#[test]
fn restore_all_rebuilds_a_whole_server_with_its_roles() {
    let src = cluster();
    let shop = src.new_db("shop");
    let blog = src.new_db("blog");
    src.psql(
        "postgres",
        "DO $$ BEGIN CREATE ROLE dr_owner LOGIN PASSWORD 'dr-pw'; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
         DO $$ BEGIN CREATE ROLE dr_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
    );
    src.psql(
        &shop,
        "CREATE TABLE orders (id int PRIMARY KEY, what text); ALTER TABLE orders OWNER TO dr_owner; \
         INSERT INTO orders SELECT g, 'o' || g FROM generate_series(1, 500) g",
    );
    src.psql(
        &blog,
        "CREATE TABLE posts (id int, body text); GRANT SELECT ON posts TO dr_reader; \
         INSERT INTO posts SELECT g, repeat('p', g % 50) FROM generate_series(1, 300) g",
    );
    let kb = Kb::direct(&format!("{shop},{blog}"));
    kb.ok(&["backup"]);
    let v = kb.run(&["verify", "--quick", "--json"]);
    assert_eq!(v.code(), 0, "{}", v.all());
    let reports: serde_json::Value = serde_json::from_str(&v.stdout()).unwrap();
    assert_eq!(reports.as_array().unwrap().len(), 2, "{reports:#}");

    // A fresh, empty server: the roles, then each database.
    let dst = cluster_with_env(15, "");
    let mut to = Kb::on(&dst, &format!("{shop},{blog}"), &pg_bin());
    to.set("BACKUP_DIR", kb.store.to_str().unwrap());
    let dry = to
        .ok(&["restore", "--all", "--latest", "--dry-run"])
        .stdout();
    assert!(
        dry.contains("would create") && dry.contains("dr_owner"),
        "{dry}"
    );
    assert_eq!(
        dst.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'dr\\_%'"
        )
        .trim(),
        "0",
        "a dry run changes nothing"
    );
    let r = to.run(&["restore", "--all", "--latest"]);
    assert_eq!(r.code(), 0, "{}", r.all());
    assert!(
        r.stdout().contains("Restored 2 database(s)"),
        "{}",
        r.stdout()
    );
    for db in [&shop, &blog] {
        assert_eq!(src.fingerprint(db), dst.fingerprint(db), "{db}");
    }
    assert_eq!(
        dst.psql(
            &shop,
            "SELECT tableowner FROM pg_tables WHERE tablename = 'orders'"
        )
        .trim(),
        "dr_owner"
    );
    assert_eq!(
        dst.psql(
            &blog,
            "SELECT has_table_privilege('dr_reader', 'posts', 'SELECT')"
        )
        .trim(),
        "t"
    );
    // The role's password came with the globals.
    assert_eq!(
        dst.psql(
            "postgres",
            "SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = 'dr_owner'"
        )
        .trim(),
        "t"
    );
}

#[test]
fn all_never_loses_track_of_a_database() {
    let c = cluster_with_env(15, "");
    for n in ["keep", "a/b", "a_b", "closing", "dropping"] {
        c.psql("postgres", &format!("CREATE DATABASE {}", ident(n)));
        c.psql(n, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    }
    let hook = Recorder::start(Mode::Ok);
    let mut kb = Kb::on(&c, "all", &pg_bin());
    kb.set("BACKUP_WEBHOOK_URL", &hook.url);

    // Two names, one file prefix: neither is backed up (their files could not
    // be told apart), the others are, and the run fails naming both.
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    let err = r.stderr();
    assert!(err.contains("prefix \"a_b\" is also"), "{err}");
    assert!(
        dumps_of(&kb, "hourly", "a_b").is_empty(),
        "{:?}",
        kb.files()
    );
    for n in ["keep", "closing", "dropping", "postgres"] {
        assert_eq!(dumps_of(&kb, "hourly", n).len(), 1, "{n}: {:?}", kb.files());
    }
    assert_eq!(hook.wait(1).len(), 1);
    // Rotation never touches a prefix two databases share.
    let r = kb.run(&["rotate", "--dry-run"]);
    assert!(
        r.stderr().contains("Rotation of a_b is not done"),
        "{}",
        r.all()
    );

    kb.set("BACKUP_EXCLUDE", "a/b");
    kb.ok(&["backup"]);
    assert_eq!(dumps_of(&kb, "hourly", "a_b").len(), 1);

    // A database found before that closes, or goes: the run fails naming each.
    c.psql(
        "postgres",
        "ALTER DATABASE closing WITH ALLOW_CONNECTIONS false",
    );
    c.psql("postgres", "DROP DATABASE dropping");
    let before = hook.requests().len();
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    let err = r.stderr();
    assert!(
        err.contains("closing") && err.contains("no longer accepts connections"),
        "{err}"
    );
    assert!(
        err.contains("dropping") && err.contains("no longer on the server"),
        "{err}"
    );
    let alerts = hook.wait(before + 1);
    assert_eq!(alerts.len(), before + 1, "one alert for the run");
    let status = kb.run(&["status", "--json", "--max-age", "100000d"]);
    assert_eq!(status.code(), 1, "{}", status.all());
    let doc: serde_json::Value = serde_json::from_str(&status.stdout()).unwrap();
    let closing = doc["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["database"] == "closing")
        .expect("closing stays watched");
    assert_eq!(closing["healthy"], false, "{doc:#}");
    // The one that is gone is said once; the closed one every run until it opens.
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(!r.stderr().contains("dropping"), "{}", r.stderr());
    c.psql(
        "postgres",
        "ALTER DATABASE closing WITH ALLOW_CONNECTIONS true",
    );
    kb.ok(&["backup"]);

    // A server that cannot be reached: every database it had fails, and
    // status says so for each.
    kb.set("POSTGRES_PORT", "1");
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(
        !r.stderr().contains("all@"),
        "names the server, not a database called all: {}",
        r.stderr()
    );
    kb.set("POSTGRES_PORT", &c.port.to_string());
    let status = kb.run(&["status", "--json", "--max-age", "100000d"]);
    assert_eq!(status.code(), 1, "{}", status.all());
    let doc: serde_json::Value = serde_json::from_str(&status.stdout()).unwrap();
    for d in doc["databases"].as_array().unwrap() {
        assert_eq!(d["healthy"], false, "{d:#}");
    }
}

#[test]
fn one_run_over_databases_whose_names_begin_each_other_keeps_each_policy_locally_and_off_site() {
    let c = cluster();
    let [app, staging, two] = c.nested_databases("nest");
    let mut kb = Kb::direct("");
    kb.unset("DB_NAME");
    let remote = kb.home.path().join("remote");
    let toml = kb.home.path().join("k.toml");
    std::fs::write(
        &toml,
        format!(
            "[[database]]\nname = \"{app}\"\nkeep_hourly = 1\n\n\
             [[database]]\nname = \"{staging}\"\nkeep_hourly = 2\n\n\
             [[database]]\nname = \"{two}\"\nkeep_hourly = 3\n"
        ),
    )
    .unwrap();
    kb.set("KBACKUP_CONFIG", toml.to_str().unwrap())
        .set("BACKUP_KEEP_DAILY", "0")
        .set("BACKUP_KEEP_WEEKLY", "0")
        .set("RCLONE_CONFIG", "/dev/null")
        .set("RCLONE_CONFIG_OFFSITE_TYPE", "local")
        .set("RCLONE_REMOTE_NAME", "offsite")
        .set("RCLONE_REMOTE_PATH", remote.to_str().unwrap());
    for hour in 10..15 {
        let r = kb.ok(&["backup", "--time", &format!("2025-03-01T{hour}:00:00Z")]);
        assert!(
            r.stderr().contains("Backups complete: all 3 databases"),
            "{}",
            r.stderr()
        );
    }
    let hourly_of = |files: Vec<String>, db: &str| -> Vec<String> {
        files
            .into_iter()
            .filter(|f| {
                f.strip_prefix(&format!("hourly/{db}_"))
                    .is_some_and(|rest| rest.starts_with("2025-") && rest.ends_with(".dump.zst"))
            })
            .collect()
    };
    for (db, keep) in [(&app, 1), (&staging, 2), (&two, 3)] {
        let local = hourly_of(files_under(&kb.store).into_iter().collect(), db);
        let off = hourly_of(files_under(&remote).into_iter().collect(), db);
        let newest: Vec<String> = (15 - keep..15)
            .rev()
            .map(|h| format!("hourly/{db}_2025-03-01_{h}-00-00.dump.zst"))
            .collect();
        let mut local_sorted = local.clone();
        local_sorted.sort();
        local_sorted.reverse();
        assert_eq!(local_sorted, newest, "{db} locally");
        let mut off_sorted = off.clone();
        off_sorted.sort();
        off_sorted.reverse();
        assert_eq!(off_sorted, newest, "{db} on the remote");
    }
    // rotate and sync on their own change nothing more, for any of them.
    let r = kb.ok(&["rotate", "--dry-run"]);
    assert!(
        r.stdout().contains("Dry run: 0 to delete"),
        "{}",
        r.stdout()
    );
    kb.ok(&["sync"]);
    assert_eq!(
        hourly_of(files_under(&remote).into_iter().collect(), &two).len(),
        3
    );
    // Each has its own line in list and status.
    let status = kb.run(&["status", "--max-age", "100000d"]).stdout();
    for db in [&app, &staging, &two] {
        assert!(status.contains(&format!("Database {db}: OK")), "{status}");
    }
}
