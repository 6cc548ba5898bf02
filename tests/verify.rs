//! `kbackup verify` and `kbackup status`, and the metrics file, on real PostgreSQL.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// `verify --json`: each backup's checks as name -> outcome.
fn outcomes(report: &Value) -> BTreeMap<String, String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn verify_json(kb: &Kb, args: &[&str]) -> (i32, Vec<Value>, String) {
    let mut all = vec!["verify", "--json"];
    all.extend_from_slice(args);
    let r = kb.run(&all);
    let reports: Vec<Value> =
        serde_json::from_str(&r.stdout()).unwrap_or_else(|e| panic!("{e}: {}", r.all()));
    (r.code(), reports, r.stderr())
}

fn temp_dbs(c: &Cluster, db: &str) -> Vec<String> {
    c.psql("postgres", "SELECT datname FROM pg_database")
        .lines()
        .filter(|d| d.starts_with(&format!("{db}_kbverify_")))
        .map(String::from)
        .collect()
}

const FULL_CHECKS: [&str; 14] = [
    "checksum",
    "archive readable",
    "manifest matches archive",
    "globals checksum",
    "test restore",
    "tables",
    "sequences",
    "indexes",
    "constraints",
    "row counts",
    "foreign keys hold",
    "sequences not behind",
    "large objects",
    "restored size",
];

#[test]
fn a_good_backup_passes_every_check() {
    let c = cluster();
    let db = c.new_db("vgood");
    c.psql(&db, DRILL_SQL);
    c.psql(
        &db,
        "CREATE INDEX ON app.events (at); ALTER TABLE app.events ADD PRIMARY KEY (id, at)",
    );
    let kb = Kb::direct(&db);
    kb.ok(&["backup"]);
    let (code, reports, err) = verify_json(&kb, &[]);
    assert_eq!(code, 0, "{err}\n{reports:#?}");
    assert_eq!(reports.len(), 1, "tier copies are verified once");
    let o = outcomes(&reports[0]);
    for name in FULL_CHECKS {
        assert_eq!(
            o.get(name).map(String::as_str),
            Some("pass"),
            "{name}: {:#}",
            reports[0]
        );
    }
    assert_eq!(reports[0]["path"].as_str().unwrap(), kb.dumps("hourly")[0]);
    assert_eq!(reports[0]["copies"].as_array().unwrap().len(), 3);
    assert!(temp_dbs(c, &db).is_empty(), "{:?}", temp_dbs(c, &db));
    // Every copy records it; list shows it.
    let list = kb.list_json();
    assert!(
        list.iter()
            .all(|b| b["verified"]["passed"] == true && b["verified"]["quick"] == false),
        "{list:#?}"
    );
    // The text form names every check with its numbers.
    let r = kb.ok(&["verify", "--quick"]);
    assert!(
        r.stdout().contains("PASS  checksum") && r.stdout().contains("all checks passed"),
        "{}",
        r.stdout()
    );
    // A quick run does not erase the full one.
    assert!(kb
        .list_json()
        .iter()
        .all(|b| b["verified"]["quick"] == false));
}

#[test]
fn a_flipped_byte_a_truncation_and_a_lying_manifest_each_fail_by_name() {
    let c = cluster();
    let db = c.sample_db("vbad");
    let kb = Kb::direct(&db);
    kb.ok(&["backup", "--time", "2025-05-01T10:00:00Z"]);
    kb.ok(&["backup", "--time", "2025-05-01T11:00:00Z"]);
    kb.ok(&["backup", "--time", "2025-05-01T12:00:00Z"]);
    let [flipped, truncated, lying] = [0, 1, 2].map(|i| kb.store.join(&kb.dumps("hourly")[i]));

    let mut bytes = std::fs::read(&flipped).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&flipped, &bytes).unwrap();
    let t = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &t[..t.len() / 2]).unwrap();
    let m = lying.with_file_name(
        lying
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".dump.zst", ".manifest.json"),
    );
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    let events = manifest["archive"]["tables"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|t| t["name"] == "events")
        .unwrap();
    events["rows"] = serde_json::json!(1234);
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();

    let (code, reports, _) = verify_json(&kb, &["--tier", "hourly"]);
    assert_eq!(code, 1);
    let by_path: BTreeMap<String, BTreeMap<String, String>> = reports
        .iter()
        .map(|r| (r["path"].as_str().unwrap().to_string(), outcomes(r)))
        .collect();
    let of = |p: &std::path::Path| {
        by_path[&p
            .strip_prefix(&kb.store)
            .unwrap()
            .to_string_lossy()
            .to_string()]
            .clone()
    };
    assert_eq!(of(&flipped)["checksum"], "fail", "{:?}", of(&flipped));
    assert_eq!(
        of(&truncated)["archive readable"],
        "fail",
        "{:?}",
        of(&truncated)
    );
    assert_eq!(of(&truncated)["checksum"], "fail");
    assert_eq!(
        of(&lying)["manifest matches archive"],
        "fail",
        "{:?}",
        of(&lying)
    );
    assert_eq!(
        of(&lying)["row counts"],
        "fail",
        "the test restore counts 2000, the manifest says 1234"
    );
    assert_eq!(of(&lying)["checksum"], "pass");
    assert!(temp_dbs(c, &db).is_empty(), "{:?}", temp_dbs(c, &db));

    // The text report names the failing check; status turns unhealthy.
    let r = kb.run(&["verify", "--quick", kb.dumps("hourly")[0].as_str()]);
    assert_eq!(r.code(), 1);
    assert!(r.stdout().contains("FAIL  checksum"), "{}", r.stdout());
    assert!(
        r.stderr().contains("failed verification") && r.stderr().contains("(checksum"),
        "{}",
        r.stderr()
    );
    let s = kb.run(&["status", "--max-age", "100000d"]);
    assert_eq!(s.code(), 1, "{}", s.all());
    assert!(
        s.stdout().contains("the last verification failed"),
        "{}",
        s.stdout()
    );
}

#[test]
fn ctrl_c_during_a_test_restore_drops_the_temporary_database() {
    let c = cluster();
    let db = c.new_db("vint");
    c.psql(&db, "CREATE TABLE big (id int, filler text); INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 400000) g");
    let kb = Kb::direct(&db);
    kb.ok(&["backup"]);
    let child = kb
        .command(&["verify"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let temp = format!("{db}_kbverify_");
    wait_for(30, "the test restore", || {
        processes_matching(&temp)
            .into_iter()
            .find(|(_, a)| a.contains("pg_restore"))
    });
    run_ok(Command::new("kill").args(["-INT", &child.id().to_string()]));
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        temp_dbs(c, &db).is_empty(),
        "temporary database survived: {:?}",
        temp_dbs(c, &db)
    );
}

#[test]
fn verification_can_run_on_a_separate_server() {
    let c = cluster();
    let other = second_cluster();
    let db = c.sample_db("vsep");
    let mut kb = Kb::direct(&db);
    kb.ok(&["backup"]);
    kb.set("BACKUP_VERIFY_HOST", other.socket.to_str().unwrap())
        .set("BACKUP_VERIFY_USER", "postgres");
    let (code, reports, err) = verify_json(&kb, &[]);
    assert_eq!(code, 0, "{err}");
    let server = reports[0]["server"].as_str().unwrap();
    assert_eq!(server, format!("{}:5432", other.socket.display()));
    let restore = check_named(&reports[0], "test restore");
    assert!(
        restore["detail"]
            .as_str()
            .unwrap()
            .contains(&other.socket.display().to_string()),
        "{restore}"
    );
    // --server overrides for one run.
    let mut kb2 = Kb::direct(&db);
    kb2.set("BACKUP_DIR", kb.store.to_str().unwrap());
    let (code, reports, err) = verify_json(&kb2, &["--server", other.socket.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(reports[0]["server"]
        .as_str()
        .unwrap()
        .starts_with(other.socket.to_str().unwrap()));
}

#[test]
fn seed_era_backups_verify_with_what_needs_no_manifest() {
    let c = cluster();
    let db = c.sample_db("vseed");
    let kb = Kb::direct(&db);
    let rel = format!("hourly/{db}_2025-12-26_05-00-01.dump");
    seed_dump(&kb, &db, &rel);
    let (code, reports, err) = verify_json(&kb, &[&rel]);
    assert_eq!(code, 0, "{err}");
    let o = outcomes(&reports[0]);
    for skipped in [
        "checksum",
        "manifest matches archive",
        "globals checksum",
        "row counts",
        "restored size",
    ] {
        assert_eq!(o[skipped], "skip", "{skipped}: {o:?}");
    }
    for passed in [
        "archive readable",
        "test restore",
        "tables",
        "indexes",
        "foreign keys hold",
        "sequences not behind",
        "large objects",
    ] {
        assert_eq!(o[passed], "pass", "{passed}: {o:?}");
    }
    let r = kb.ok(&["verify", &rel]);
    assert!(
        r.stdout().contains("skip  checksum") && r.stdout().contains("no manifest"),
        "{}",
        r.stdout()
    );
}

#[test]
fn status_is_healthy_only_when_backups_are_fresh_and_the_last_run_passed() {
    let c = cluster();
    let db = c.new_db("vstatus");
    let mut kb = Kb::direct(&db);
    // No backups at all: unhealthy.
    let r = kb.run(&["status"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(r.stdout().contains("no backups"), "{}", r.stdout());
    // A backup taken three hours ago: stale against the default (twice BACKUP_INTERVAL, 2h).
    let three_hours_ago = (chrono::Utc::now() - chrono::Duration::hours(3)).to_rfc3339();
    kb.ok(&["backup", "--time", &three_hours_ago]);
    let r = kb.run(&["status"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(
        r.stdout().contains("is 3h old, more than the max age 2h"),
        "{}",
        r.stdout()
    );
    assert_eq!(kb.run(&["status", "--max-age", "4h"]).code(), 0);
    kb.set("BACKUP_INTERVAL", "2h");
    assert_eq!(
        kb.run(&["status"]).code(),
        0,
        "max age is twice the interval"
    );
    kb.unset("BACKUP_INTERVAL");
    // A fresh backup: healthy.
    kb.ok(&["backup"]);
    let r = kb.run(&["status", "--json"]);
    assert_eq!(r.code(), 0, "{}", r.all());
    let s: Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(s["healthy"], true);
    assert!(s["newest"]["hourly"]["age_seconds"].as_i64().unwrap() < 60);
    assert!(s["disk_free_bytes"].as_u64().unwrap() > 0);
    assert_eq!(s["last_run"]["ok"], true);
    // The last run fails: unhealthy until a run succeeds again.
    kb.set("POSTGRES_HOST", "/tmp/no-such-server");
    assert_eq!(kb.run(&["backup"]).code(), 1);
    kb.set("POSTGRES_HOST", cluster().socket.to_str().unwrap());
    let r = kb.run(&["status"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stdout().contains("the last backup run failed")
            && r.stdout().contains("Cannot connect to database"),
        "{}",
        r.stdout()
    );
    kb.ok(&["backup"]);
    assert_eq!(kb.run(&["status"]).code(), 0);
}

#[test]
fn the_metrics_file_is_prometheus_text_and_tracks_each_run() {
    let c = cluster();
    let db = c.sample_db("vmetrics");
    let mut kb = Kb::direct(&db);
    let prom = kb.home.path().join("textfile").join("kbackup.prom");
    kb.set("BACKUP_METRICS_FILE", prom.to_str().unwrap());
    kb.ok(&["backup"]);
    kb.ok(&["verify", "--quick"]);
    let text = std::fs::read_to_string(&prom).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("database") == Some(db.as_str()))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                ref other => panic!("{name} is not a gauge: {other:?}"),
            })
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    };
    let now = chrono::Utc::now().timestamp() as f64;
    // The Kaizen alert, `time() - ..._last_success_timestamp > 86400`, holds false for a fresh backup.
    assert!(now - value("kbackup_last_success_timestamp_seconds") < 86400.0);
    assert_eq!(value("kbackup_last_run_success"), 1.0);
    assert_eq!(value("kbackup_last_verify_success"), 1.0);
    assert!(value("kbackup_last_size_bytes") > 0.0);
    assert!(value("kbackup_last_duration_seconds") > 0.0);
    let hourly = scrape
        .samples
        .iter()
        .find(|s| s.metric == "kbackup_backups" && s.labels.get("tier") == Some("hourly"))
        .unwrap();
    assert!(matches!(hourly.value, prometheus_parse::Value::Gauge(v) if v == 1.0));
    // Every sample line is well formed, and the file is readable by node_exporter.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, _) = l.split_once(['{', ' ']).unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{l}"
        );
        assert!(l.rsplit(' ').next().unwrap().parse::<f64>().is_ok(), "{l}");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // A failed run flips the gauge; the last success time stays.
    let success = value("kbackup_last_success_timestamp_seconds");
    kb.set("POSTGRES_HOST", "/tmp/no-such-server");
    assert_eq!(kb.run(&["backup"]).code(), 1);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains(&format!("kbackup_last_run_success{{database=\"{db}\"}} 0")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "kbackup_last_success_timestamp_seconds{{database=\"{db}\"}} {success}"
        )),
        "{text}"
    );
}
