//! Alerts on real receivers on loopback: an HTTP receiver standing in for the
//! ntfy, Slack, webhook and healthchecks.io servers, and a real SMTP server.

mod common;

use std::time::{Duration, Instant};

use common::net::{Mode, Recorder, SmtpSink};
use common::*;

struct Channels {
    ntfy: Recorder,
    slack: Recorder,
    webhook: Recorder,
    health: Recorder,
    smtp: SmtpSink,
}

fn all_channels(kb: &mut Kb) -> Channels {
    let ch = Channels {
        ntfy: Recorder::start(Mode::Ok),
        slack: Recorder::start(Mode::Ok),
        webhook: Recorder::start(Mode::Ok),
        health: Recorder::start(Mode::Ok),
        smtp: SmtpSink::start(),
    };
    kb.set("NTFY_URL", &ch.ntfy.url)
        .set("NTFY_TOPIC", "kairon-backups")
        .set("NTFY_TOKEN", "tk_secret123")
        .set(
            "SLACK_WEBHOOK_URL",
            &format!("{}/services/T/B/X", ch.slack.url),
        )
        .set("BACKUP_WEBHOOK_URL", &format!("{}/hook", ch.webhook.url))
        .set(
            "BACKUP_HEALTHCHECK_URL",
            &format!("{}/ping/abc", ch.health.url),
        )
        .set("BACKUP_EMAIL_RECIPIENT", "ops@example.com")
        .set("BACKUP_SMTP_HOST", "127.0.0.1")
        .set("BACKUP_SMTP_PORT", &ch.smtp.port.to_string());
    ch
}

#[test]
fn a_failed_backup_reaches_every_channel() {
    let db = cluster().new_db("afail");
    let mut kb = Kb::direct(&db);
    let ch = all_channels(&mut kb);
    kb.set("POSTGRES_HOST", "/tmp/no-such-server");
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("Cannot connect to database"),
        "the original error is shown: {}",
        r.stderr()
    );

    let n = &ch.ntfy.wait(1)[0];
    assert_eq!(
        (n.method.as_str(), n.path.as_str()),
        ("POST", "/kairon-backups")
    );
    assert!(
        n.headers["title"].contains("backup FAILED") && n.headers["title"].contains(&db),
        "{n:?}"
    );
    assert_eq!(n.headers["priority"], "high");
    assert_eq!(n.headers["tags"], "warning,floppy_disk");
    assert_eq!(n.headers["authorization"], "Bearer tk_secret123");
    assert!(
        n.body.contains("Cannot connect to database") && n.body.contains("What to look at"),
        "{}",
        n.body
    );
    assert!(
        n.body.contains(&format!("Database: {db}")) && n.body.contains("Host: "),
        "{}",
        n.body
    );

    let s = &ch.slack.wait(1)[0];
    assert_eq!(s.path, "/services/T/B/X");
    let v: serde_json::Value = serde_json::from_str(&s.body).unwrap();
    assert!(v["text"].as_str().unwrap().contains("backup FAILED"), "{v}");

    let w = &ch.webhook.wait(1)[0];
    let v: serde_json::Value = serde_json::from_str(&w.body).unwrap();
    assert_eq!(v["event"], "backup");
    assert_eq!(v["ok"], false);
    assert_eq!(v["database"], db.as_str());
    assert!(
        v["error"].as_str().unwrap().contains("Cannot connect"),
        "{v}"
    );

    let pings: Vec<String> = ch.health.wait(2).iter().map(|r| r.path.clone()).collect();
    assert_eq!(pings, ["/ping/abc/start", "/ping/abc/fail"]);

    let mail = wait_for(10, "the alert email", || {
        ch.smtp.messages().into_iter().next()
    });
    assert!(
        mail.contains("To: ops@example.com") && mail.contains("backup FAILED"),
        "{mail}"
    );
    // The token never shows in logs.
    assert!(!r.stderr().contains("tk_secret123"));
}

#[test]
fn successes_are_opt_in_per_channel_and_ping_the_healthcheck() {
    let db = cluster().sample_db("aok");
    let mut kb = Kb::direct(&db);
    let ch = all_channels(&mut kb);
    kb.set("NTFY_ON_SUCCESS", "true");
    kb.ok(&["backup"]);
    let n = &ch.ntfy.wait(1)[0];
    assert!(n.headers["title"].contains("backup OK"), "{n:?}");
    assert_eq!(n.headers["priority"], "default");
    assert!(
        n.body.contains("hourly/") && n.body.contains(" in "),
        "size and duration: {}",
        n.body
    );
    let pings: Vec<String> = ch.health.wait(2).iter().map(|r| r.path.clone()).collect();
    assert_eq!(pings, ["/ping/abc/start", "/ping/abc"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        ch.slack.requests().is_empty() && ch.webhook.requests().is_empty(),
        "not opted in"
    );
    assert!(ch.smtp.messages().is_empty());
}

#[test]
fn a_hanging_channel_delays_the_job_by_no_more_than_its_timeout() {
    let db = cluster().new_db("ahang");
    let mut kb = Kb::direct(&db);
    let hang = Recorder::start(Mode::Hang);
    kb.set("NTFY_URL", &hang.url)
        .set("NTFY_TOPIC", "t")
        .set("BACKUP_NOTIFY_TIMEOUT", "2s");
    kb.set("POSTGRES_HOST", "/tmp/no-such-server");
    let start = Instant::now();
    let r = kb.run(&["backup"]);
    let took = start.elapsed();
    assert_eq!(
        r.code(),
        1,
        "the job's result is the backup's, not the channel's"
    );
    assert!(
        r.stderr().contains("Cannot connect to database"),
        "{}",
        r.stderr()
    );
    assert!(
        r.stderr().contains("alert via ntfy failed"),
        "{}",
        r.stderr()
    );
    assert!(!hang.requests().is_empty(), "the alert was attempted");
    assert!(
        took < Duration::from_secs(6),
        "took {took:?} with a 2s budget"
    );
}

#[test]
fn notify_test_reaches_each_channel() {
    let db = cluster().new_db("atest");
    let mut kb = Kb::direct(&db);
    let ch = all_channels(&mut kb);
    let r = kb.ok(&["notify", "--test"]);
    for channel in ["ntfy", "slack", "email", "webhook", "healthcheck"] {
        assert!(
            r.stdout()
                .lines()
                .any(|l| l.starts_with(channel) && l.ends_with("sent")),
            "{channel}: {}",
            r.stdout()
        );
    }
    assert!(ch.ntfy.wait(1)[0].body.contains("Test notification"));
    assert!(ch.slack.wait(1)[0].body.contains("Test notification"));
    assert!(
        wait_for(10, "mail", || ch.smtp.messages().into_iter().next())
            .contains("Test notification")
    );
    // A channel that is down is reported, and the command fails.
    kb.set("SLACK_WEBHOOK_URL", "http://127.0.0.1:9/nothing")
        .set("BACKUP_NOTIFY_TIMEOUT", "2s");
    let r = kb.run(&["notify", "--test"]);
    assert_eq!(r.code(), 1);
    assert!(r.stdout().contains("slack        FAILED"), "{}", r.stdout());
}

#[test]
fn a_run_skipped_because_the_store_is_locked_alerts() {
    let db = cluster().sample_db("alocked");
    let mut kb = Kb::direct(&db);
    let ntfy = Recorder::start(Mode::Ok);
    kb.set("NTFY_URL", &ntfy.url).set("NTFY_TOPIC", "t");
    let lock = LockHolder::exclusive(&db, "events");
    let first = kb
        .command(&["backup"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(20, "pg_dump waiting", || {
        (LockHolder::waiters(&db) > 0).then_some(())
    });
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 3);
    let alerts = ntfy.wait(1);
    assert!(
        alerts[0].headers["title"].contains("locked FAILED"),
        "{:?}",
        alerts[0]
    );
    assert!(
        alerts[0].body.contains("holds the store"),
        "{}",
        alerts[0].body
    );
    drop(lock);
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success());
}

#[test]
fn a_failed_verification_alerts() {
    let db = cluster().sample_db("averify");
    let mut kb = Kb::direct(&db);
    let hook = Recorder::start(Mode::Ok);
    kb.set("BACKUP_WEBHOOK_URL", &hook.url);
    kb.ok(&["backup"]);
    let f = kb.store.join(&kb.dumps("hourly")[0]);
    let mut bytes = std::fs::read(&f).unwrap();
    let n = bytes.len() - 10;
    bytes[n] ^= 0xff;
    std::fs::write(&f, &bytes).unwrap();
    assert_eq!(kb.run(&["verify", "--quick"]).code(), 1);
    let v: serde_json::Value = serde_json::from_str(&hook.wait(1)[0].body).unwrap();
    assert_eq!(v["event"], "verify");
    assert!(v["error"].as_str().unwrap().contains("checksum"), "{v}");
}

/// Defect: no alert when BACKUP_DIR could not be created, for `verify` on an
/// empty store, for a failed restore. Every failing job alerts exactly once;
/// bad input, a dry run and a "no" at the prompt do not.
#[test]
fn every_failing_job_alerts_once_and_only_failures_do() {
    let db = cluster().new_db("aonce");
    cluster().psql(&db, "CREATE TABLE t (x int)");
    let alerts_for = |kb: &mut Kb, args: &[&str]| -> (i32, usize, String) {
        let ntfy = Recorder::start(Mode::Ok);
        kb.set("NTFY_URL", &ntfy.url).set("NTFY_TOPIC", "t");
        let r = kb.run(args);
        // Alerts are sent before the process exits: what arrived is all there is.
        let got = ntfy.requests();
        let title = got
            .first()
            .map(|q| q.headers["title"].clone())
            .unwrap_or_default();
        (r.code(), got.len(), title)
    };

    // BACKUP_DIR that cannot be created (its parent is a file).
    let mut kb = Kb::direct(&db);
    let file = kb.home.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    kb.set("BACKUP_DIR", file.join("store").to_str().unwrap());
    let (code, n, title) = alerts_for(&mut kb, &["backup"]);
    assert_eq!((code, n), (1, 1), "{title}");
    assert!(title.contains("backup FAILED"), "{title}");

    // verify with nothing to verify.
    let mut kb = Kb::direct(&db);
    let (code, n, title) = alerts_for(&mut kb, &["verify"]);
    assert_eq!((code, n), (1, 1), "{title}");
    assert!(title.contains("verify FAILED"), "{title}");

    // A restore of a damaged backup: one alert, not two.
    let mut kb = Kb::direct(&db);
    kb.ok(&["backup"]);
    let dump = kb.store.join(&kb.dumps("hourly")[0]);
    let mut bytes = std::fs::read(&dump).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&dump, bytes).unwrap();
    let (code, n, title) = alerts_for(&mut kb, &["restore", "--latest", "--yes"]);
    assert_eq!((code, n), (1, 1), "{title}");
    assert!(title.contains("restore FAILED"), "{title}");

    // Not failures of a job: bad input (even found under the lock: a named
    // backup that exists), a dry run.
    kb.ok(&["backup", "--name", "dup"]);
    let (code, n, _) = alerts_for(&mut kb, &["backup", "--name", "dup"]);
    assert_eq!((code, n), (2, 0));
    assert!(!kb
        .run(&["status", "--max-age", "100d"])
        .stdout()
        .contains("FAILED"));
    let (code, n, _) = alerts_for(&mut kb, &["backup", "--time", "not a time"]);
    assert_eq!((code, n), (2, 0));
    let (_, n, _) = alerts_for(&mut kb, &["restore", "--latest", "--dry-run"]);
    assert_eq!(n, 0);
}

/// Defect: a settings error (`BACKUP_KEEP_DAILY=7d` in .env) stopped the cron
/// job with exit 2 and nothing else: no alert, nothing in backup.log. Now the
/// alert settings that are usable carry it, the log has it, and the message
/// names the files the settings came from; a cron line that forgot to `cd`
/// is told that no ./.env was found there. Near misses are warned about.
#[test]
fn a_settings_error_alerts_and_names_the_files_read() {
    let db = cluster().new_db("asettings");
    let kb = Kb::direct(&db);
    kb.ok(&["backup"]);
    let ntfy = Recorder::start(Mode::Ok);
    let env_file = kb.home.path().join(".env");
    std::fs::write(
        &env_file,
        format!(
            "NTFY_URL={}\nNTFY_TOPIC=backups\nBACKUP_KEEP_DAILY=7d\n",
            ntfy.url
        ),
    )
    .unwrap();
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 2, "{}", r.all());
    assert!(
        r.stderr().contains("BACKUP_KEEP_DAILY")
            && r.stderr()
                .contains(&format!(".env file {}", env_file.display())),
        "{}",
        r.all()
    );
    let got = ntfy.wait(1);
    assert!(
        got[0].headers["title"].contains("backup FAILED")
            && got[0].body.contains("BACKUP_KEEP_DAILY"),
        "{:?}",
        got[0]
    );
    let log = std::fs::read_to_string(kb.store.join("backup.log")).unwrap();
    assert!(log.contains("BACKUP_KEEP_DAILY"), "{log}");

    // Reports and dry runs say it, but do not page.
    let before = ntfy.requests().len();
    assert_eq!(kb.run(&["list"]).code(), 2);
    assert_eq!(kb.run(&["backup", "--dry-run"]).code(), 2);
    assert_eq!(ntfy.requests().len(), before);

    // A near miss is warned about, naming the setting it probably meant.
    std::fs::write(
        &env_file,
        "BACKUP_KEEP_DAYLY=14\nCONTAINER_BD=postgres-db\n",
    )
    .unwrap();
    let r = kb.ok(&["backup"]);
    for (typo, meant) in [
        ("BACKUP_KEEP_DAYLY", "BACKUP_KEEP_DAILY"),
        ("CONTAINER_BD", "CONTAINER_DB"),
    ] {
        assert!(
            r.stderr()
                .contains(&format!("{typo} (in {})", env_file.display()))
                && r.stderr().contains(&format!("did you mean {meant}?")),
            "{}",
            r.all()
        );
    }

    // Cron without `cd`: the settings live in a .env the job never reads.
    let cron = kb
        .wrapped(&["env", "-i", "PATH=/usr/bin:/bin"], &["backup"])
        .current_dir("/")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&cron.stderr);
    assert_eq!(cron.status.code(), Some(2), "{err}");
    assert!(
        err.contains("missing database name")
            && err.contains("no .env file (none in the current folder /"),
        "{err}"
    );
}

/// Defect: `verify` blamed the backup for its environment (a mistyped
/// container: "FAIL test restore", every copy marked FAILED, "verification
/// failed" alerted). A server that cannot be reached, or a role that may not
/// create databases, is the run's failure: exit 1, its own alert, nothing
/// recorded against the backup.
#[test]
fn a_verification_that_cannot_run_never_marks_the_backup() {
    let c = cluster();
    let db = c.sample_db("vcannot");
    let mut kb = Kb::direct(&db);
    let hook = Recorder::start(Mode::Ok);
    kb.set("BACKUP_WEBHOOK_URL", &hook.url);
    kb.ok(&["backup"]);
    c.psql(
        "postgres",
        "DO $$ BEGIN CREATE ROLE vcannot_reader LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    );
    let nowhere = kb.home.path().join("no-server");
    std::fs::create_dir_all(&nowhere).unwrap();
    for (what, args, user, says) in [
        (
            "unreachable",
            vec!["verify", "--server", nowhere.to_str().unwrap()],
            "postgres",
            "connect",
        ),
        (
            "no CREATEDB",
            vec!["verify"],
            "vcannot_reader",
            "may not create databases",
        ),
    ] {
        kb.set("DB_USER", user);
        let before = hook.requests().len();
        let r = kb.run(&args);
        assert_eq!(r.code(), 1, "{what}: {}", r.all());
        assert!(
            r.stderr().contains("the verification could not run") && r.stderr().contains(says),
            "{what}: {}",
            r.all()
        );
        let alerts = hook.wait(before + 1);
        assert_eq!(alerts.len(), before + 1, "{what}: one alert");
        let v: serde_json::Value = serde_json::from_str(&alerts[before].body).unwrap();
        assert!(
            v["title"].as_str().unwrap().contains("COULD NOT RUN"),
            "{what}: {v}"
        );
        kb.set("DB_USER", "postgres");
        let list = kb.run(&["list"]).stdout();
        assert!(
            !list.contains("FAILED"),
            "{what}: the backup was marked: {list}"
        );
    }
    // The same backup verifies where it can run.
    kb.ok(&["verify"]);
}

/// Defect: an alert endpoint that is down was reported as "error sending
/// request", with nothing of why. The causes under it are named.
#[test]
fn an_alert_endpoint_that_is_down_is_named_with_its_cause() {
    let db = cluster().new_db("adown");
    let mut kb = Kb::direct(&db);
    let port = common::net::free_port();
    kb.set("NTFY_URL", &format!("http://127.0.0.1:{port}"))
        .set("NTFY_TOPIC", "t")
        .set("BACKUP_KEEP_DAILY", "x");
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 2, "{}", r.all());
    assert!(
        r.stderr().contains("alert via ntfy failed") && r.stderr().contains("Connection refused"),
        "{}",
        r.all()
    );

    // One that answers 500: said with its status; the other channels still get
    // the alert and the job's exit code is its own.
    let failing = Recorder::start(Mode::Fail);
    let hook = Recorder::start(Mode::Ok);
    kb.set("NTFY_URL", &failing.url)
        .set("BACKUP_WEBHOOK_URL", &hook.url);
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 2, "{}", r.all());
    assert!(
        r.stderr().contains("alert via ntfy failed") && r.stderr().contains("500"),
        "{}",
        r.all()
    );
    assert_eq!(failing.requests().len(), 2, "tried twice within its budget");
    assert_eq!(hook.wait(1).len(), 1);
}
