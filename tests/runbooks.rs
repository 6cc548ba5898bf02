//! The README's runbooks, each done as written on real PostgreSQL clusters and
//! a real rclone remote.

mod common;

use common::*;

/// A database whose tables belong to a role of its own (so that a fresh
/// server needs the saved globals too).
fn owned_db(c: &Cluster, hint: &str) -> (String, String) {
    let db = c.sample_db(hint);
    let owner = format!("{db}_owner");
    c.psql(
        "postgres",
        &format!(
            "CREATE ROLE {owner} LOGIN PASSWORD 'runbook-pw'; ALTER DATABASE {db} OWNER TO {owner}"
        ),
    );
    c.psql(&db, &format!("CREATE TABLE ledger (id int PRIMARY KEY, note text); ALTER TABLE ledger OWNER TO {owner}; INSERT INTO ledger SELECT g, 'entry ' || g FROM generate_series(1, 500) g"));
    (db, owner)
}

/// Runbook "Complete server failure": a new server with an empty PostgreSQL,
/// only the off-site remote and the settings.
#[test]
fn complete_server_failure_from_the_remote_alone() {
    let (old, new) = (cluster(), second_cluster());
    let (db, owner) = owned_db(old, "rb_dr");
    let remote = tempfile::tempdir().unwrap();
    let settings = |kb: &mut Kb| {
        kb.set("RCLONE_CONFIG", "/dev/null")
            .set("RCLONE_CONFIG_OFFSITE_TYPE", "local")
            .set("RCLONE_REMOTE_NAME", "offsite")
            .set("RCLONE_REMOTE_PATH", remote.path().to_str().unwrap());
    };
    let mut before = Kb::on(old, &db, &pg_bin());
    settings(&mut before);
    before.ok(&["backup"]);
    let fingerprint = old.fingerprint(&db);

    // The new machine: the same settings but the server's address; no store.
    let mut after = Kb::on(new, &db, &pg_bin());
    settings(&mut after);
    assert!(!after.store.exists());
    after.ok(&["restore", "--remote", "--latest", "--with-globals", "--yes"]);
    assert_eq!(new.fingerprint(&db), fingerprint);
    assert_eq!(
        new.psql(
            &db,
            "SELECT tableowner FROM pg_tables WHERE tablename = 'ledger'"
        )
        .trim(),
        owner
    );
    // Then the seed's "verify system": a backup on the new server, verified, healthy.
    after.ok(&["backup"]);
    after.ok(&["verify"]);
    after.ok(&["status"]);
}

/// Runbook "Data corruption": keep the damaged database as a named backup,
/// then restore the last good daily; the replaced database stays for forensics.
#[test]
fn data_corruption_back_to_the_last_good_daily() {
    let c = cluster();
    let (db, _) = owned_db(c, "rb_corrupt");
    let kb = Kb::direct(&db);
    kb.ok(&["backup"]);
    let good = c.fingerprint(&db);
    c.psql(
        &db,
        "DELETE FROM ledger WHERE id % 2 = 0; UPDATE ledger SET note = 'garbage'",
    );
    let damaged = c.fingerprint(&db);
    assert_ne!(good, damaged);

    kb.ok(&["backup", "--name", "corrupted-evidence"]);
    let r = kb.ok(&["restore", "--latest-daily", "--yes"]);
    assert_eq!(c.fingerprint(&db), good, "the last good daily is back");
    let kept: Vec<String> = c
        .psql(
            "postgres",
            &format!("SELECT datname FROM pg_database WHERE datname LIKE '{db}_pre_restore_%'"),
        )
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(kept.len(), 1, "the replaced database is kept: {}", r.all());
    assert_eq!(c.fingerprint(&kept[0]), damaged, "as it was, for forensics");
    // And the evidence backup restores too.
    let evidence = format!("{db}_evidence");
    kb.ok(&[
        "restore",
        "--name",
        "corrupted-evidence",
        "--target-db",
        &evidence,
        "--yes",
    ]);
    assert_eq!(c.fingerprint(&evidence), damaged);
}

/// Runbook "Restore into another database for inspection": the live one untouched.
#[test]
fn restore_to_another_database_for_inspection() {
    let c = cluster();
    let (db, _) = owned_db(c, "rb_inspect");
    let kb = Kb::direct(&db);
    kb.ok(&["backup"]);
    c.psql(&db, "INSERT INTO ledger VALUES (1000, 'after the backup')");
    let live = c.fingerprint(&db);
    let inspect = format!("{db}_inspect");
    kb.ok(&["restore", "--latest", "--target-db", &inspect]);
    assert_eq!(c.fingerprint(&db), live, "the live database is untouched");
    assert_eq!(
        c.psql(&inspect, "SELECT count(*) FROM ledger").trim(),
        "500",
        "the inspection copy is the backup's"
    );
}
