//! The promise at its edges: each test here is a way a review found to lose a
//! backup, stay silent on a failure, or strand state, reproduced against real
//! parts; each failed before its fix.

mod common;

use common::*;

/// Copies the one hourly backup (dump and manifest) as if taken at `time`
/// (`2062-11-21_07-00-00`, UTC), name and manifest alike.
fn plant_copy(kb: &Kb, time_name: &str) -> String {
    let dump = kb.dumps("hourly").pop().expect("an hourly backup");
    let stem = dump.trim_end_matches(".dump.zst");
    let prefix = &stem[..stem.len() - "2026-11-22_03-23-01".len()];
    let planted = format!("{prefix}{time_name}");
    std::fs::copy(
        kb.store.join(format!("{stem}.dump.zst")),
        kb.store.join(format!("{planted}.dump.zst")),
    )
    .unwrap();
    let (day, clock) = time_name.split_once('_').unwrap();
    let at = format!("{day}T{}.000+00:00", clock.replace('-', ":"));
    let manifest = std::fs::read_to_string(kb.store.join(format!("{stem}.manifest.json"))).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    m["started_at"] = at.clone().into();
    m["finished_at"] = at.into();
    std::fs::write(
        kb.store.join(format!("{planted}.manifest.json")),
        serde_json::to_string(&m).unwrap(),
    )
    .unwrap();
    format!("{planted}.dump.zst")
}

#[test]
fn a_future_time_is_refused_and_never_wipes_the_store() {
    let c = cluster();
    let db = c.new_db("future");
    c.psql(&db, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    let mut kb = Kb::direct(&db);
    kb.set("BACKUP_RETENTION_DAYS", "30");
    kb.ok(&["backup"]);
    let before = kb.files();

    // Defect: `--time 2062-...` deleted every existing backup by age.
    for args in [
        vec!["backup", "--time", "2062-11-21 07:00:00"],
        vec!["backup", "--dry-run", "--time", "2062-11-21T07:00:00Z"],
    ] {
        let r = kb.run(&args);
        assert_eq!(r.code(), 2, "{args:?}: {}", r.all());
        assert!(
            r.stderr().contains("is in the future") && r.stderr().contains("2062-11-21"),
            "{}",
            r.stderr()
        );
        assert_eq!(kb.files(), before, "{args:?}: the store changed");
    }
    // A little clock skew between machines is allowed.
    let soon = (chrono::Utc::now() + chrono::Duration::minutes(2)).to_rfc3339();
    kb.ok(&["backup", "--time", &soon]);
}

#[test]
fn status_reports_backups_dated_in_the_future() {
    let c = cluster();
    let db = c.new_db("ahead");
    c.psql(&db, "CREATE TABLE t (x int)");
    let kb = Kb::direct(&db);
    kb.ok(&["backup", "--time", "2025-01-01T00:00:00Z"]);
    // A backup made by a machine whose clock was decades ahead.
    let planted = plant_copy(&kb, "2062-11-21_07-00-00");
    let r = kb.run(&["status"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    let out = r.all();
    assert!(
        out.contains("dated in the future") && out.contains(&planted),
        "{out}"
    );
    // Freshness is judged without it: the real newest backup is old.
    assert!(out.contains("more than the max age"), "{out}");

    // A real backup now: still unhealthy while the future one is there, and
    // rotation by age leaves every tier's newest in place.
    let mut kb = kb;
    kb.set("BACKUP_RETENTION_DAYS", "30");
    kb.ok(&["backup"]);
    assert!(kb.files().iter().any(|f| f == &planted));
    let r = kb.run(&["status"]);
    assert_eq!(r.code(), 1);
    assert!(!r.all().contains("more than the max age"), "{}", r.all());
}
