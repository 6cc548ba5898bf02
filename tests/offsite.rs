//! Off-site copies with real rclone: a local remote and a WebDAV server
//! (`rclone serve webdav`) on loopback.

mod common;

use std::collections::BTreeSet;

use common::net::{Mode, Recorder, Webdav, S3};
use common::*;

/// The rclone processes this test's kbackup started (their argv names its
/// store; other tests run their own beside it).
fn rclone_of(kb: &Kb) -> Vec<String> {
    processes_matching(kb.store.to_str().unwrap())
        .into_iter()
        .map(|(_, argv)| argv)
        .filter(|argv| argv.starts_with("rclone "))
        .collect()
}

/// A WebDAV remote in `kb.home/dav` and an ntfy receiver, set on `kb`.
fn dav_and_ntfy(kb: &mut Kb) -> (std::path::PathBuf, Webdav, Recorder) {
    let dav_dir = kb.home.path().join("dav");
    let dav = Webdav::start(&dav_dir, None);
    for (k, v) in dav.settings() {
        kb.set(&k, &v);
    }
    let ntfy = Recorder::start(Mode::Ok);
    kb.set("NTFY_URL", &ntfy.url).set("NTFY_TOPIC", "backups");
    (dav_dir, dav, ntfy)
}

fn local_remote(kb: &mut Kb, dir: &std::path::Path) {
    kb.set("RCLONE_CONFIG", "/dev/null")
        .set("RCLONE_CONFIG_OFFSITE_TYPE", "local")
        .set("RCLONE_REMOTE_NAME", "offsite")
        .set("RCLONE_REMOTE_PATH", dir.to_str().unwrap());
}

#[test]
fn the_remote_mirrors_the_local_layout() {
    let db = cluster().sample_db("osync");
    let mut kb = Kb::direct(&db);
    let remote = kb.home.path().join("remote");
    local_remote(&mut kb, &remote);
    let r = kb.ok(&["backup"]);
    assert!(
        r.stderr().contains("Sync complete: 9 file(s) uploaded"),
        "{}",
        r.stderr()
    );
    let local: BTreeSet<String> = kb
        .files()
        .into_iter()
        .filter(|f| {
            f.ends_with(".dump.zst") || f.ends_with(".manifest.json") || f.ends_with(".globals.sql")
        })
        .collect();
    assert_eq!(files_under(&remote), local);
    for f in &local {
        assert_eq!(
            std::fs::read(remote.join(f)).unwrap(),
            std::fs::read(kb.store.join(f)).unwrap(),
            "{f}"
        );
    }
    // A second run uploads only what is new.
    let r = kb.ok(&["backup"]);
    assert!(
        r.stderr().contains("Sync complete: 3 file(s) uploaded"),
        "{}",
        r.stderr()
    );
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&kb.ok(&["list", "--remote", "--json"]).stdout()).unwrap();
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().all(|b| b["manifest"] == true));
    let status = kb.ok(&["status"]);
    assert!(
        status.stdout().contains("Off-site sync: succeeded"),
        "{}",
        status.stdout()
    );
}

#[test]
fn a_remote_that_is_down_keeps_the_local_backup_alerts_and_the_next_run_catches_up() {
    let db = cluster().sample_db("odown");
    let mut kb = Kb::direct(&db);
    let (dav_dir, dav, ntfy) = dav_and_ntfy(&mut kb);
    kb.ok(&["backup", "--time", "2025-03-01T10:00:00Z"]);
    let port = dav.port;
    drop(dav); // the remote goes down

    let r = kb.run(&["backup", "--time", "2025-03-01T11:00:00Z"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(
        r.stderr().contains("off-site sync to dav:backups failed"),
        "{}",
        r.stderr()
    );
    assert!(r.stderr().contains("was kept"), "{}", r.stderr());
    // The overall result is said last: no "Backup complete!" before a failed
    // sync, and the error before the alert that carries it.
    let err = r.stderr();
    assert!(!err.contains("Backup complete!"), "{err}");
    let error_at = err.find("ERROR: ").expect("an error line");
    assert!(err[error_at..].contains("Alert sent: "), "{err}");
    assert!(!err[..error_at].contains("Alert"), "{err}");
    assert_eq!(kb.dumps("hourly").len(), 2, "the local backup is kept");
    let alerts = ntfy.wait(1);
    assert!(
        alerts[0].headers["title"].contains("sync FAILED"),
        "{:?}",
        alerts[0]
    );
    assert!(
        alerts[0].body.contains("The local backup is kept"),
        "{}",
        alerts[0].body
    );
    assert_eq!(
        kb.run(&["status"]).code(),
        1,
        "a failed sync makes status unhealthy"
    );

    // Back up: the next run uploads whatever is missing.
    let _dav = Webdav::start(&dav_dir, Some(port));
    kb.unset("RCLONE_FLAGS");
    kb.ok(&["backup", "--time", "2025-03-01T12:00:00Z"]);
    let on_remote: Vec<String> = files_under(&dav_dir.join("backups"))
        .into_iter()
        .filter(|f| f.starts_with("hourly/") && f.ends_with(".dump.zst"))
        .collect();
    assert_eq!(on_remote.len(), 3, "{on_remote:?}");
    assert_eq!(kb.run(&["status", "--max-age", "100000d"]).code(), 0);
}

#[test]
fn an_emptied_local_store_deletes_nothing_on_the_remote_beyond_retention() {
    let db = cluster().sample_db("oempty");
    let mut kb = Kb::direct(&db);
    let remote = kb.home.path().join("remote");
    local_remote(&mut kb, &remote);
    kb.set("BACKUP_KEEP_HOURLY", "3");
    for h in 10..13 {
        kb.ok(&["backup", "--time", &format!("2025-03-01T{h}:00:00Z")]);
    }
    let before = files_under(&remote);
    assert_eq!(
        before
            .iter()
            .filter(|f| f.starts_with("hourly/") && f.ends_with(".zst"))
            .count(),
        3
    );

    // The store is emptied (a new disk, a fresh mount): nothing is deleted remotely.
    std::fs::remove_dir_all(&kb.store).unwrap();
    kb.ok(&["sync"]);
    assert_eq!(files_under(&remote), before);

    // One new backup: hourly on the remote now holds 4, retention keeps 3, so
    // exactly the oldest goes; daily and weekly copies stay.
    kb.ok(&["backup", "--time", "2025-03-01T13:00:00Z"]);
    let after = files_under(&remote);
    let hourly: Vec<&String> = after
        .iter()
        .filter(|f| f.starts_with("hourly/") && f.ends_with(".zst"))
        .collect();
    assert_eq!(hourly.len(), 3, "{hourly:?}");
    assert!(
        !after.iter().any(|f| f.contains("2025-03-01_10-00-00")),
        "the oldest hourly should go: {after:?}"
    );
    for f in before.iter().filter(|f| !f.contains("2025-03-01_10-00-00")) {
        assert!(after.contains(f), "{f} was deleted from the remote");
    }
    // The remote's daily for that day is the older backup: it was not replaced.
    let daily = format!("daily/{db}_2025-03-01.dump.zst");
    assert!(before.contains(&daily));
}

#[test]
fn restore_from_the_remote_checks_the_remote_manifest() {
    let c = cluster();
    let db = c.sample_db("orestore");
    let mut kb = Kb::direct(&db);
    let remote = kb.home.path().join("remote");
    local_remote(&mut kb, &remote);
    let fp = c.fingerprint(&db);
    kb.ok(&["backup"]);
    c.psql(&db, "DELETE FROM traces");
    let rel = kb.dumps("hourly")[0].clone();

    // The dry run names the download by its origin, not a temporary path
    // that is gone when it ends.
    let dry = kb.ok(&["restore", "--remote", &rel, "--dry-run"]).stdout();
    assert!(
        dry.contains("downloaded into BACKUP_DIR/.kbackup>"),
        "{dry}"
    );
    assert!(!dry.contains("/.kbackup/.kbackup-download"), "{dry}");

    // The seed's form: --remote PATH.
    let target = format!("{db}_fromremote");
    let r = kb.ok(&["restore", "--remote", &rel, "--target-db", &target]);
    assert!(
        r.stderr().contains("checksum matches its manifest"),
        "{}",
        r.stderr()
    );
    assert_eq!(c.fingerprint(&target), fp);
    assert!(
        !kb.files().iter().any(|f| f.contains("download")),
        "the download was not removed: {:?}",
        kb.files()
    );

    // A corrupted remote file is refused; the target is untouched.
    let mut bytes = std::fs::read(remote.join(&rel)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(remote.join(&rel), &bytes).unwrap();
    let before = c.fingerprint(&db);
    let r = kb.run(&["restore", "--remote", "--latest", "--yes"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(r.stderr().contains("is corrupted"), "{}", r.stderr());
    assert_eq!(c.fingerprint(&db), before);
    assert!(
        !kb.files().iter().any(|f| f.contains("download")),
        "{:?}",
        kb.files()
    );
    // Plain --remote needs a selector.
    assert_eq!(kb.run(&["restore", "--remote", "--yes"]).code(), 2);
}

#[test]
fn a_missing_rclone_is_named_and_the_local_backup_kept() {
    let db = cluster().sample_db("norclone");
    let mut kb = Kb::direct(&db);
    let remote = kb.home.path().join("remote");
    local_remote(&mut kb, &remote);
    let mut cmd = kb.command(&["backup"]);
    cmd.env("PATH", "/nonexistent");
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("rclone not found"), "{err}");
    assert_eq!(kb.dumps("hourly").len(), 1);
}

#[test]
fn transfers_show_progress_on_a_terminal_and_stay_quiet_under_cron() {
    let db = cluster().sample_db("oprogress");
    let mut kb = Kb::direct(&db);
    let remote = kb.home.path().join("remote");
    local_remote(&mut kb, &remote);
    // Slow the transfer down so rclone reports progress at least once.
    kb.set("RCLONE_FLAGS", "--bwlimit 100k");
    kb.ok(&["backup", "--time", "2025-04-01T10:00:00Z"]);
    std::fs::remove_dir_all(&remote).unwrap();
    let (code, screen) = on_terminal(&kb, &["sync"], "");
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen.contains("NOTICE:") && screen.contains('%'),
        "no progress on a terminal:\n{screen}"
    );
    std::fs::remove_dir_all(&remote).unwrap();
    let r = kb.ok(&["sync"]);
    assert!(
        !r.stderr().contains("NOTICE:"),
        "progress under cron:\n{}",
        r.stderr()
    );
}

/// Defect: secrets in RCLONE_FLAGS (an S3 key, a WebDAV password) and in
/// NTFY_URL printed in clear in `kbackup config`, debug logs, errors and argv.
#[test]
fn secrets_in_rclone_flags_and_urls_stay_out_of_argv_logs_and_config() {
    let db = cluster().sample_db("osecret");
    let mut kb = Kb::direct(&db);
    let dav_dir = kb.home.path().join("dav");
    let dav = Webdav::start_with_login(&dav_dir, None, Some(("kbuser", "dav-pw-9f3")));
    for (k, v) in dav.settings() {
        kb.set(&k, &v);
    }
    let obscured = String::from_utf8(
        run_ok(std::process::Command::new("rclone").args(["obscure", "dav-pw-9f3"])).stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    kb.set(
        "RCLONE_FLAGS",
        &format!("--webdav-user kbuser --webdav-pass {obscured} --transfers 2"),
    )
    .set("NTFY_URL", "http://ntfyuser:ntfy-pw-77@127.0.0.1:9/")
    .set("DEBUG", "true");

    let config = kb.ok(&["config"]).all();
    for secret in [obscured.as_str(), "ntfy-pw-77"] {
        assert!(!config.contains(secret), "{secret} in: {config}");
    }
    assert!(
        config.contains("--webdav-pass <redacted>") && config.contains("--transfers 2"),
        "{config}"
    );

    let child = kb.spawn(&["backup"]);
    let (leaked, out) = argv_containing_while_it_runs(child, &obscured);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The upload worked: rclone got the password, from its environment.
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(files_under(&dav_dir.join("backups"))
        .iter()
        .any(|f| f.ends_with(".dump.zst")));
    assert!(leaked.is_empty(), "in argv: {leaked:?}");
    let log = std::fs::read_to_string(kb.store.join("backup.log")).unwrap();
    for text in [&all, &log] {
        assert!(
            !text.contains(&obscured) && !text.contains("ntfy-pw-77"),
            "{text}"
        );
    }
    assert!(
        all.contains("RCLONE_WEBDAV_PASS=<redacted>"),
        "debug shows it was set: {all}"
    );

    // Review: a secret with a quote and a backslash, which rclone -vv prints
    // escaped ("S3KEY\"q\\b"), is redacted in that form too.
    kb.set(
        "RCLONE_FLAGS",
        &format!(
            "-vv --webdav-user kbuser --webdav-pass {obscured} --s3-secret-access-key 'S3KEY\"q\\b-9x'"
        ),
    );
    // A failing sync: rclone's debug lines end up in the error, the log,
    // the sync record and status.
    kb.set("RCLONE_REMOTE_NAME", "nosuchremote");
    let r = kb.run(&["sync"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(
        r.all().contains("<redacted>"),
        "rclone's settings are in the error: {}",
        r.all()
    );
    let status = kb.run(&["status", "--json"]).all();
    let log = std::fs::read_to_string(kb.store.join("backup.log")).unwrap();
    let records: String = files_under(&kb.store.join(".kbackup"))
        .iter()
        .map(|f| std::fs::read_to_string(kb.store.join(".kbackup").join(f)).unwrap_or_default())
        .collect();
    for text in [r.all(), log, status, records] {
        assert!(!text.contains("S3KEY"), "{text}");
    }
}

/// Sets a folder tree's modes: folders `dirs`, files `files`.
fn chmod_tree(root: &std::path::Path, dirs: u32, files: u32) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path, m| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    mode(root, dirs);
    for e in std::fs::read_dir(root).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            chmod_tree(&e.path(), dirs, files);
        } else {
            mode(&e.path(), files);
        }
    }
}

/// A remote that takes uploads but refuses deletes (the server's user may
/// create files but not remove others': sticky folders), then a remote so slow
/// that the run's BACKUP_TIMEOUT ends the upload. Each run is loud (exit 1,
/// the cause, an alert, status unhealthy), keeps every local backup, and
/// leaves no rclone running; once the remote is healthy, the next run
/// applies the retention it could not.
#[test]
fn a_remote_that_refuses_deletes_or_crawls_is_loud_and_loses_nothing() {
    let db = cluster().sample_db("ostubborn");
    let mut kb = Kb::direct(&db);
    // Served as `nobody`: the folder must be reachable by that user.
    let shared = tempfile::Builder::new()
        .prefix("kbdav-")
        .tempdir_in("/tmp")
        .unwrap();
    chmod_tree(shared.path(), 0o755, 0o644);
    let dav_dir = shared.path().join("dav");
    let dav = Webdav::start(&dav_dir, None);
    let port = dav.port;
    for (k, v) in dav.settings() {
        kb.set(&k, &v);
    }
    let ntfy = Recorder::start(Mode::Ok);
    kb.set("NTFY_URL", &ntfy.url)
        .set("NTFY_TOPIC", "backups")
        .set("BACKUP_KEEP_HOURLY", "1");
    kb.ok(&["backup", "--time", "2025-03-01T10:00:00Z"]);
    drop(dav);

    // Refuses deletes: old files belong to root, folders are sticky.
    chmod_tree(&dav_dir, 0o1777, 0o644);
    let dav = Webdav::start_as_nobody(&dav_dir, Some(port), &[]);
    let r = kb.run(&["backup", "--time", "2025-03-01T11:00:00Z"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(
        r.stderr().contains("off-site sync to dav:backups failed")
            && r.stderr().contains("cannot delete")
            && r.stderr().contains("was kept"),
        "{}",
        r.all()
    );
    let alerts = ntfy.wait(1);
    assert!(
        alerts[0].headers["title"].contains("sync FAILED"),
        "{:?}",
        alerts[0]
    );
    assert_eq!(kb.run(&["status"]).code(), 1);
    let remote_dumps = |tier: &str| -> Vec<String> {
        files_under(&dav_dir.join("backups"))
            .into_iter()
            .filter(|f| f.starts_with(&format!("{tier}/")) && f.ends_with(".dump.zst"))
            .collect()
    };
    assert_eq!(
        remote_dumps("hourly").len(),
        2,
        "the new one uploaded, the old one refused"
    );
    assert_eq!(kb.dumps("hourly").len(), 1, "local retention ran");
    assert_eq!(rclone_of(&kb), Vec::<String>::new());
    drop(dav);

    // Crawls: 20 KB/s for a dump of a few hundred KB, with a 3 s budget.
    cluster().psql(
        &db,
        "CREATE TABLE noise AS SELECT md5(random()::text) || md5(random()::text) AS x FROM generate_series(1, 20000)",
    );
    chmod_tree(&dav_dir, 0o755, 0o644);
    let dav = Webdav::start_as_nobody(&dav_dir, Some(port), &["--bwlimit", "20k"]);
    chmod_tree(&dav_dir, 0o777, 0o666);
    kb.set("BACKUP_TIMEOUT", "3s");
    let r = kb.run(&["backup", "--time", "2025-03-01T12:00:00Z"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(
        r.stderr().contains("off-site sync to dav:backups failed")
            && r.stderr().contains("did not finish within 3s"),
        "{}",
        r.all()
    );
    assert!(r.stderr().contains("was kept"), "{}", r.all());
    assert_eq!(ntfy.wait(2).len(), 2);
    assert_eq!(kb.dumps("hourly").len(), 1);
    // Whatever the stopped upload left, every dump on the remote is whole.
    assert_whole_dumps(&dav_dir.join("backups"), "after the timeout");
    assert_eq!(rclone_of(&kb), Vec::<String>::new());
    drop(dav);

    // Goes down mid-upload: the server is killed while the slow upload runs.
    // rclone then waits out its IO idle timeout (--timeout, 5 min by default)
    // and retries; the README says so. Here it is shortened through RCLONE_FLAGS.
    let dav = Webdav::start_as_nobody(&dav_dir, Some(port), &["--bwlimit", "20k"]);
    kb.unset("BACKUP_TIMEOUT").set(
        "RCLONE_FLAGS",
        "--timeout 3s --contimeout 2s --retries 1 --low-level-retries 1",
    );
    let mut run = kb.spawn(&["backup", "--time", "2025-03-01T12:30:00Z"]);
    wait_for(20, "the upload to start", || {
        if let Some(status) = run.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the run ended before its upload ({status}): {err}");
        }
        (!rclone_of(&kb).is_empty()).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    drop(dav);
    let out = run.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("off-site sync to dav:backups failed") && err.contains("was kept"),
        "{err}"
    );
    assert_eq!(ntfy.wait(3).len(), 3);
    assert_eq!(kb.dumps("hourly").len(), 1);
    assert_whole_dumps(&dav_dir.join("backups"), "after the server died");
    // What the server kept of the interrupted upload is not a dump by its name.
    assert!(
        !files_under(&dav_dir.join("backups"))
            .iter()
            .any(|f| f.contains("12-30-00.dump.zst") && f.ends_with(".dump.zst")),
        "{:?}",
        files_under(&dav_dir.join("backups"))
    );

    // Healthy again: the upload completes and retention removes what it could not.
    let _dav = Webdav::start(&dav_dir, Some(port));
    kb.unset("RCLONE_FLAGS");
    kb.ok(&["backup", "--time", "2025-03-01T13:00:00Z"]);
    assert_eq!(
        remote_dumps("hourly").len(),
        1,
        "{:?}",
        remote_dumps("hourly")
    );
    assert_eq!(kb.run(&["status", "--max-age", "100000d"]).code(), 0);
}

/// Defect: a one-off run could not switch off the configured remote:
/// `--backup-dir /tmp/x backup` synced the scratch store to production's
/// remote (applying retention there), and a later `restore --remote --latest`
/// picked that scratch backup. Another store than the configured one does not
/// sync unless `--sync`; `--no-sync` skips the step; `--no-alerts` silences a run.
#[test]
fn one_run_can_switch_off_the_remote_and_the_alerts() {
    let db = cluster().sample_db("oonce");
    let mut kb = Kb::direct(&db);
    let (dav_dir, dav, ntfy) = dav_and_ntfy(&mut kb);
    let on_remote = || -> usize {
        files_under(&dav_dir.join("backups"))
            .iter()
            .filter(|f| f.ends_with(".dump.zst"))
            .count()
    };
    kb.ok(&["backup", "--time", "2025-03-01T10:00:00Z"]);
    let synced = on_remote();
    assert!(synced > 0);
    // Daily and weekly names carry a date only: the time comes from the remote manifest.
    let listed = kb.ok(&["list", "--remote"]).stdout();
    for tier in ["daily", "weekly"] {
        let line = listed
            .lines()
            .find(|l| l.starts_with(tier))
            .unwrap_or_else(|| panic!("{listed}"));
        assert!(line.contains("2025-03-01 10:00:00"), "{listed}");
    }

    let scratch = kb.home.path().join("scratch-store");
    let dry = kb.ok(&[
        "--backup-dir",
        scratch.to_str().unwrap(),
        "backup",
        "--dry-run",
    ]);
    assert!(
        dry.stdout()
            .contains("Off-site: would skip dav:backups: --backup-dir"),
        "{}",
        dry.all()
    );
    let dry = kb.ok(&["backup", "--dry-run"]);
    assert!(
        dry.stdout()
            .contains("Off-site: would upload to dav:backups"),
        "{}",
        dry.all()
    );
    let r = kb.ok(&["--backup-dir", scratch.to_str().unwrap(), "backup"]);
    assert!(
        r.stderr()
            .contains("skipped: --backup-dir names another store"),
        "{}",
        r.all()
    );
    assert_eq!(on_remote(), synced, "the scratch store reached the remote");
    let r = kb.ok(&["backup", "--no-sync", "--time", "2025-03-01T11:00:00Z"]);
    assert!(r.stderr().contains("skipped: --no-sync"), "{}", r.all());
    assert_eq!(on_remote(), synced);
    // The configured store named explicitly is not "another store".
    kb.ok(&[
        "--backup-dir",
        kb.store.to_str().unwrap(),
        "backup",
        "--time",
        "2025-03-01T12:00:00Z",
    ]);
    assert!(on_remote() > synced);
    let n = on_remote();
    kb.ok(&[
        "--backup-dir",
        scratch.to_str().unwrap(),
        "backup",
        "--sync",
        "--time",
        "2025-03-01T13:00:00Z",
    ]);
    assert!(on_remote() > n, "--sync syncs the other store");

    // --no-alerts: a failing run pages nobody (and says so).
    drop(dav);
    kb.set(
        "RCLONE_FLAGS",
        "--contimeout 1s --retries 1 --low-level-retries 1",
    );
    let r = kb.run(&["--no-alerts", "backup", "--time", "2025-03-01T14:00:00Z"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(r.stderr().contains("--no-alerts"), "{}", r.all());
    assert_eq!(ntfy.requests().len(), 0);
    let r = kb.run(&["backup", "--time", "2025-03-01T15:00:00Z"]);
    assert_eq!(r.code(), 1);
    assert_eq!(
        ntfy.wait(1).len(),
        1,
        "without the flag the same failure alerts"
    );
}

/// Defects: databases sharing a store and a remote touched each other. Remote
/// retention ranked every database's files together (a backup of `app` with
/// keep 1 deleted `app_staging`'s), `named/app_staging_pre_migration` read as
/// a backup of `app`, and status/metrics were one record per store. Three
/// databases whose names begin each other's, each with its own keep count:
/// each keeps exactly its own policy, locally and on the remote.
#[test]
fn databases_sharing_a_store_and_a_remote_never_touch_each_other() {
    let c = cluster();
    let [app, staging, two] = c.nested_databases("shared");
    let home = tempfile::tempdir().unwrap();
    let store = home.path().join("store");
    let remote = home.path().join("remote");
    let metrics = home.path().join("metrics");
    let kb_of = |db: &str, keep: &str| {
        let mut kb = Kb::direct(db);
        kb.set("BACKUP_DIR", store.to_str().unwrap())
            .set("BACKUP_KEEP_HOURLY", keep)
            .set("BACKUP_KEEP_DAILY", "0")
            .set("BACKUP_KEEP_WEEKLY", "0")
            .set(
                "BACKUP_METRICS_FILE",
                metrics.join(format!("{db}.prom")).to_str().unwrap(),
            );
        local_remote(&mut kb, &remote);
        kb
    };
    let dbs = [
        (&app, kb_of(&app, "1"), 1),
        (&staging, kb_of(&staging, "2"), 2),
        (&two, kb_of(&two, "3"), 3),
    ];
    for hour in 10..14 {
        for (i, (_, kb, _)) in dbs.iter().enumerate() {
            kb.ok(&[
                "backup",
                "--time",
                &format!("2025-03-01T{hour}:{:02}:00Z", i * 10),
            ]);
        }
    }
    let hourly_of = |files: Vec<String>, db: &str| -> usize {
        files
            .iter()
            .filter(|f| {
                f.strip_prefix(&format!("hourly/{db}_"))
                    .is_some_and(|rest| rest.starts_with("2025-") && f.ends_with(".dump.zst"))
            })
            .count()
    };
    for (db, _, keep) in &dbs {
        let local: Vec<String> = files_under(&store).into_iter().collect();
        let on_remote: Vec<String> = files_under(&remote).into_iter().collect();
        assert_eq!(hourly_of(local, db), *keep, "{db} locally");
        assert_eq!(hourly_of(on_remote, db), *keep, "{db} on the remote");
    }

    // A named backup of app_staging is never app's.
    let (_, staging_kb, _) = &dbs[1];
    staging_kb.ok(&["backup", "--name", "pre_migration"]);
    let (_, app_kb, _) = &dbs[0];
    let dry = app_kb.ok(&["restore", "--latest", "--dry-run"]).stdout();
    assert!(
        dry.contains(&format!("hourly/{app}_2025-03-01_13-00-00")),
        "{dry}"
    );
    assert!(
        app_kb
            .run(&["restore", "--name", "staging_pre_migration", "--dry-run"])
            .code()
            != 0
    );

    // app fails, app_staging succeeds: app stays unhealthy, in text, JSON and metrics.
    c.psql(
        "postgres",
        &format!("ALTER DATABASE {app} WITH ALLOW_CONNECTIONS false"),
    );
    assert_eq!(app_kb.run(&["backup"]).code(), 1);
    staging_kb.ok(&["backup"]);
    c.psql(
        "postgres",
        &format!("ALTER DATABASE {app} WITH ALLOW_CONNECTIONS true"),
    );
    let status = app_kb.run(&["status", "--max-age", "100000d"]);
    assert_eq!(status.code(), 1, "{}", status.all());
    assert_eq!(
        staging_kb.run(&["status", "--max-age", "100000d"]).code(),
        0
    );
    let prom = std::fs::read_to_string(metrics.join(format!("{app}.prom"))).unwrap();
    assert!(
        prom.lines()
            .any(|l| l.starts_with("kbackup_last_run_success") && l.ends_with(" 0")),
        "{prom}"
    );
}

/// Object storage for real: rclone's S3 backend against moto's S3 server on
/// loopback. Backups larger than the part size go up in parts; the remote
/// keeps what the policy says; `list --remote` reads it; a restore comes back
/// from it equal to the source.
#[test]
fn an_s3_remote_takes_multipart_uploads_keeps_its_policy_and_restores() {
    let c = cluster();
    let db = c.new_db("s3src");
    // About 12 MB of hex digits: the compressed dump is larger than a 5 MiB part.
    c.psql(
        &db,
        "CREATE TABLE noise AS SELECT g, md5(random()::text) || md5(random()::text) AS h \
         FROM generate_series(1, 200000) g",
    );
    let s3 = S3::start("kbackup");
    let mut kb = Kb::direct(&db);
    for (k, v) in s3.settings("backups") {
        kb.set(&k, &v);
    }
    // rclone's own debug lines (-vv) reach kbackup's debug log: they show the parts.
    kb.set(
        "RCLONE_FLAGS",
        "-vv --s3-no-head --s3-chunk-size 5M --s3-upload-cutoff 5M",
    )
    .set("DEBUG", "true")
    .set("BACKUP_KEEP_HOURLY", "2")
    .set("BACKUP_KEEP_DAILY", "0")
    .set("BACKUP_KEEP_WEEKLY", "0");
    for h in 1..=3 {
        let r = kb.ok(&["backup", "--time", &format!("2025-02-01T0{h}:00:00Z")]);
        assert!(r.stderr().contains("Sync complete"), "{}", r.stderr());
        assert!(
            r.stderr().contains("multipart upload starting chunk 2"),
            "the dump went up in parts: {}",
            r.stderr()
        );
        let leaks: Vec<String> = r
            .all()
            .lines()
            .filter(|l| l.contains("kbackup-test-secret"))
            .map(String::from)
            .collect();
        assert!(
            leaks.is_empty(),
            "the S3 secret is never logged: {leaks:#?}"
        );
    }
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&kb.ok(&["list", "--remote", "--json"]).stdout()).unwrap();
    let mut hourly: Vec<String> = listed
        .iter()
        .filter(|b| b["tier"] == "hourly")
        .map(|b| b["path"].as_str().unwrap().to_string())
        .collect();
    hourly.sort();
    assert_eq!(
        hourly,
        [
            format!("hourly/{db}_2025-02-01_02-00-00.dump.zst"),
            format!("hourly/{db}_2025-02-01_03-00-00.dump.zst"),
        ],
        "the remote keeps the policy's two"
    );
    let newest = listed
        .iter()
        .find(|b| b["path"] == hourly[1].as_str())
        .unwrap();
    assert!(
        newest["size_bytes"].as_u64().unwrap() > 5 * 1024 * 1024,
        "{newest}"
    );
    // The local store gone, the newest backup comes back from S3.
    restores_from_the_remote_alone(&kb, &db, "back");
}

/// With the local store deleted, `restore --remote --latest` into a new
/// database gives the source's content.
fn restores_from_the_remote_alone(kb: &Kb, db: &str, suffix: &str) {
    std::fs::remove_dir_all(&kb.store).unwrap();
    let target = format!("{db}_{suffix}");
    kb.ok(&[
        "restore",
        "--remote",
        "--latest",
        "--target-db",
        &target,
        "--yes",
    ]);
    assert_eq!(cluster().fingerprint(db), cluster().fingerprint(&target));
}

/// A remote holding thousands of objects (other databases' backups) costs a
/// sync no more rclone calls than an empty one: one listing, then only what
/// this run uploads, checks and deletes.
#[test]
fn a_crowded_remote_costs_no_more_rclone_calls_than_an_empty_one() {
    let db = cluster().sample_db("crowd");
    let mut kb = Kb::direct(&db);
    let remote = kb.home.path().join("remote");
    local_remote(&mut kb, &remote);
    kb.set("DEBUG", "true").set("BACKUP_KEEP_HOURLY", "2");
    let calls = |r: &Run| {
        r.stderr()
            .lines()
            .filter(|l| l.contains("running: rclone"))
            .count()
    };
    let empty = calls(&kb.ok(&["backup", "--time", "2025-01-01T01:00:00Z"]));
    // 3,000 objects of another database's backups, put there directly.
    std::fs::create_dir_all(remote.join("hourly")).unwrap();
    for i in 0..1000 {
        let stem = format!(
            "other_2024-{:02}-{:02}_{:02}-00-00",
            1 + i / 280,
            1 + (i / 10) % 28,
            i % 10
        );
        for ext in ["dump.zst", "manifest.json", "globals.sql"] {
            std::fs::write(remote.join(format!("hourly/{stem}.{ext}")), b"x").unwrap();
        }
    }
    kb.ok(&["backup", "--time", "2025-01-01T02:00:00Z"]);
    // The third backup also deletes the first on the remote (keep 2).
    let crowded = calls(&kb.ok(&["backup", "--time", "2025-01-01T03:00:00Z"]));
    assert!(
        crowded <= empty + 1,
        "rclone calls: {empty} with an empty remote, {crowded} with 3,000 objects"
    );
    assert!(crowded <= 8, "a handful of calls: {crowded}");
    assert_eq!(
        files_under(&remote)
            .iter()
            .filter(|f| f.starts_with("hourly/other_"))
            .count(),
        3000,
        "another database's files are never touched"
    );
}

/// BACKUP_REMOTE_PRUNE=false: kbackup never deletes on the remote (nor renames,
/// which deletes a source), so write-only credentials suffice; status and the
/// metrics count what the remote holds beyond the policy.
#[test]
fn a_remote_without_pruning_is_never_deleted_from_and_says_what_it_keeps() {
    let db = cluster().sample_db("noprune");
    let mut kb = Kb::direct(&db);
    let remote = kb.home.path().join("remote");
    local_remote(&mut kb, &remote);
    let metrics = kb.home.path().join("kbackup.prom");
    kb.set("BACKUP_REMOTE_PRUNE", "false")
        .set("BACKUP_KEEP_HOURLY", "1")
        .set("BACKUP_KEEP_DAILY", "0")
        .set("BACKUP_KEEP_WEEKLY", "0")
        .set("BACKUP_METRICS_FILE", metrics.to_str().unwrap())
        .set("DEBUG", "true");
    for h in 1..=3 {
        let r = kb.ok(&["backup", "--time", &format!("2025-04-01T0{h}:00:00Z")]);
        let err = r.stderr();
        let rclone_text = err
            .lines()
            .filter(|l| l.contains("running: rclone"))
            .collect::<Vec<_>>()
            .join("\n");
        for verb in [" delete ", " deletefile ", " moveto ", " purge "] {
            assert!(!rclone_text.contains(verb), "{verb}: {rclone_text}");
        }
    }
    // Locally the policy holds; the remote keeps all three.
    assert_eq!(kb.dumps("hourly").len(), 1, "{:?}", kb.dumps("hourly"));
    let on_remote: Vec<String> = files_under(&remote)
        .into_iter()
        .filter(|f| f.starts_with("hourly/") && f.ends_with(".dump.zst"))
        .collect();
    assert_eq!(on_remote.len(), 3, "{on_remote:?}");
    assert!(
        !files_under(&remote)
            .iter()
            .any(|f| f.contains("kbackup-partial")),
        "no temporary names left behind"
    );
    let status = kb.ok(&["status", "--max-age", "100000d"]).stdout();
    assert!(
        status.contains("2 of them beyond the retention policy"),
        "{status}"
    );
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains(&format!(
            "kbackup_remote_backups_beyond_policy{{database=\"{db}\",remote=\"offsite\"}} 2"
        )),
        "{prom}"
    );
    // A restore from it works as from any remote.
    restores_from_the_remote_alone(&kb, &db, "np");
}

/// Several destinations (RCLONE_REMOTES): each synced and checked on its own;
/// one that is down fails alone, named in the alert, the exit status, status
/// and the metrics (`remote` label), while the other gets every backup.
#[test]
fn two_remotes_side_by_side_with_one_down() {
    let db = cluster().sample_db("tworem");
    let mut kb = Kb::direct(&db);
    let up = kb.home.path().join("up");
    let down_port = common::net::free_port();
    let prom = kb.home.path().join("kbackup.prom");
    let ntfy = Recorder::start(Mode::Ok);
    kb.set("RCLONE_CONFIG", "/dev/null")
        .set("RCLONE_CONFIG_OFFSITE_TYPE", "local")
        .set("RCLONE_CONFIG_DOWN_TYPE", "webdav")
        .set(
            "RCLONE_CONFIG_DOWN_URL",
            &format!("http://127.0.0.1:{down_port}/"),
        )
        .set("RCLONE_CONFIG_DOWN_VENDOR", "other")
        .set(
            "RCLONE_FLAGS",
            "--retries 1 --low-level-retries 1 --contimeout 2s",
        )
        .set(
            "RCLONE_REMOTES",
            &format!("down:backups, offsite:{}", up.display()),
        )
        .set("BACKUP_METRICS_FILE", prom.to_str().unwrap())
        .set("NTFY_URL", &ntfy.url)
        .set("NTFY_TOPIC", "backups");

    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(r.stderr().contains("down:backups"), "{}", r.stderr());
    let local = kb.dumps("hourly");
    assert_eq!(local.len(), 1, "the local backup is kept");
    assert!(
        up.join(&local[0]).exists(),
        "the working destination got it"
    );
    let alert = ntfy.wait(1);
    assert!(
        alert.iter().any(|a| a.body.contains("down:backups")),
        "{alert:?}"
    );
    assert!(
        !alert.iter().any(|a| a.body.contains(up.to_str().unwrap())),
        "{alert:?}"
    );

    // status names each destination; unhealthy for the one that failed.
    let s = kb.run(&["status"]);
    assert_ne!(s.code(), 0, "{}", s.all());
    assert!(
        s.stdout().contains("Off-site sync (down): FAILED"),
        "{}",
        s.stdout()
    );
    assert!(
        s.stdout().contains("Off-site sync (offsite): succeeded"),
        "{}",
        s.stdout()
    );
    let j: serde_json::Value =
        serde_json::from_str(&kb.run(&["status", "--json"]).stdout()).unwrap();
    let offsite = j["offsite"].as_array().expect("offsite array");
    assert_eq!(offsite.len(), 2, "{j}");
    assert_eq!(offsite[0]["label"], "down");
    assert_eq!(offsite[0]["last_sync"]["ok"], false);
    assert_eq!(offsite[1]["last_sync"]["ok"], true);

    let text = std::fs::read_to_string(&prom).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let success = |remote: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "kbackup_last_sync_success"
                    && s.labels.get("remote") == Some(remote)
                    && s.labels.get("database") == Some(db.as_str())
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                _ => panic!("not a gauge"),
            })
            .unwrap_or_else(|| panic!("no sync series for {remote}:\n{text}"))
    };
    assert_eq!(success("down"), 0.0);
    assert_eq!(success("offsite"), 1.0);

    // `sync` alone: the same, and the working destination restores on its own.
    assert_eq!(kb.run(&["sync"]).code(), 1);
    let r = kb.run(&["list", "--remote", "--from", "nope"]);
    assert_eq!(r.code(), 2, "{}", r.all());
    assert!(r.stderr().contains("down, offsite"), "{}", r.stderr());
    kb.ok(&["list", "--remote", "--from", "offsite"]);
    std::fs::remove_dir_all(&kb.store).unwrap();
    let target = format!("{db}_from_up");
    kb.ok(&[
        "restore",
        "--remote",
        "--from",
        "offsite",
        "--latest",
        "--target-db",
        &target,
        "--yes",
    ]);
    assert_eq!(cluster().fingerprint(&db), cluster().fingerprint(&target));
}

/// `[[remote]]` tables: a cold destination keeps more than the database's
/// policy says, the other applies it; same-named rclone remotes are told
/// apart by their labels.
#[test]
fn each_destination_keeps_its_own_counts() {
    let db = cluster().sample_db("coldrem");
    let mut kb = Kb::direct(&db);
    let (hot, cold) = (kb.home.path().join("hot"), kb.home.path().join("cold"));
    let toml = kb.home.path().join("kbackup.toml");
    std::fs::write(
        &toml,
        format!(
            "[[remote]]\nname = \"disk\"\npath = \"{}\"\n\n[[remote]]\nname = \"disk\"\npath = \"{}\"\nlabel = \"cold\"\nkeep_hourly = 5\nprune = true\n",
            hot.display(),
            cold.display()
        ),
    )
    .unwrap();
    kb.set("KBACKUP_CONFIG", toml.to_str().unwrap())
        .set("RCLONE_CONFIG", "/dev/null")
        .set("RCLONE_CONFIG_DISK_TYPE", "local")
        .set("BACKUP_KEEP_HOURLY", "2")
        .set("BACKUP_KEEP_DAILY", "0")
        .set("BACKUP_KEEP_WEEKLY", "0");
    for h in 1..=7 {
        kb.ok(&["backup", "--time", &format!("2025-01-01T{h:02}:00:00Z")]);
    }
    let dumps = |dir: &std::path::Path| {
        let mut v: Vec<String> = files_under(dir)
            .into_iter()
            .filter(|f| f.ends_with(".dump.zst"))
            .collect();
        v.sort();
        v
    };
    let hourly = |hours: std::ops::RangeInclusive<u32>| -> Vec<String> {
        hours
            .map(|h| format!("hourly/{db}_2025-01-01_{h:02}-00-00.dump.zst"))
            .collect()
    };
    assert_eq!(dumps(&hot), hourly(6..=7));
    assert_eq!(dumps(&cold), hourly(3..=7));
    assert_eq!(kb.dumps("hourly").len(), 2);
    // (Unhealthy: these backups are from 2025; the destinations are what is read here.)
    let j: serde_json::Value =
        serde_json::from_str(&kb.run(&["status", "--json"]).stdout()).unwrap();
    let labels: Vec<&str> = j["offsite"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, [format!("disk:{}", hot.display()).as_str(), "cold"]);

    // The same destination twice is refused before anything runs.
    std::fs::write(
        &toml,
        format!("[[remote]]\nname = \"disk\"\npath = \"{0}\"\n\n[[remote]]\nname = \"disk\"\npath = \"{0}\"\nlabel = \"again\"\n", hot.display()),
    )
    .unwrap();
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 2, "{}", r.all());
    assert!(r.stderr().contains("configured twice"), "{}", r.stderr());
}
