//! Docker mode (CONTAINER_DB): pg_dump runs inside a real container via `docker exec`.

mod common;

use std::process::Stdio;

use common::docker::engine;
use common::*;

#[test]
fn docker_mode_backup_restores_equal_to_the_source() {
    let d = engine();
    d.postgres_container("kbt-restore");
    d.psql("kbt-restore", "postgres", "CREATE DATABASE kairon");
    d.psql("kbt-restore", "kairon", SAMPLE_SQL);
    let source_counts = d.psql(
        "kbt-restore",
        "kairon",
        "SELECT (SELECT count(*) FROM events) || ',' || (SELECT count(*) FROM traces)",
    );

    let mut kb = Kb::bare();
    kb.set("CONTAINER_DB", "kbt-restore")
        .set("DB_NAME", "kairon")
        .set("DB_USER", "postgres");
    let r = kb.ok(&["backup"]);
    assert!(r.stderr().contains("Backup complete!"), "{}", r.stderr());
    let hourly = kb.dumps("hourly");
    assert_eq!(hourly.len(), 1);
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            kb.store
                .join(hourly[0].replace(".dump.zst", ".manifest.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(m["source"]["mode"], "docker");
    assert_eq!(m["source"]["container"], "kbt-restore");

    // Restore the container's backup into the host cluster and compare.
    let c = cluster();
    let target = c.new_db("from_docker");
    manual_restore(&kb.store.join(&hourly[0]), &target);
    let restored = c.psql(
        &target,
        "SELECT (SELECT count(*) FROM events) || ',' || (SELECT count(*) FROM traces)",
    );
    assert_eq!(restored, source_counts);
    let fp_source = d.psql(
        "kbt-restore",
        "kairon",
        "SELECT md5(string_agg(x::text, ',' ORDER BY x::text)) FROM traces x",
    );
    let fp_restored = c.psql(
        &target,
        "SELECT md5(string_agg(x::text, ',' ORDER BY x::text)) FROM traces x",
    );
    assert_eq!(fp_source, fp_restored);
}

#[test]
fn missing_and_stopped_containers_get_the_seed_errors() {
    let d = engine();
    let mut kb = Kb::bare();
    kb.set("CONTAINER_DB", "no-such-container")
        .set("DB_NAME", "kairon");
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr()
            .contains("PostgreSQL container not found: no-such-container"),
        "{}",
        r.stderr()
    );

    d.postgres_container("kbt-stopped");
    d.ok(&["stop", "-t", "1", "kbt-stopped"]);
    kb.set("CONTAINER_DB", "kbt-stopped");
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr()
            .contains("PostgreSQL container not running: kbt-stopped"),
        "{}",
        r.stderr()
    );
    assert!(kb.dumps("hourly").is_empty());
    // `doctor` says the same, with the seed's remedy.
    let r = kb.run(&["doctor"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(
        r.stdout().contains("FAIL  container kbt-stopped")
            && r.stdout().contains("docker start kbt-stopped"),
        "{}",
        r.stdout()
    );
}

#[test]
fn docker_mode_passes_the_password_by_name_only() {
    let d = engine();
    d.postgres_container("kbt-secret");
    d.psql("kbt-secret", "postgres", "CREATE DATABASE app");
    d.psql(
        "kbt-secret",
        "app",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1)",
    );
    // Hold a lock inside the container so pg_dump waits while we look at it.
    let mut locker = d.lock_table("kbt-secret", "app", "t");

    let mut kb = Kb::bare();
    kb.set("CONTAINER_DB", "kbt-secret")
        .set("DB_NAME", "app")
        .set("POSTGRES_PASSWORD", PW_SECRET);
    let child = kb
        .command(&["backup"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (exec_pid, exec_argv) = wait_for(30, "docker exec pg_dump", || {
        processes_matching("--format=custom")
            .into_iter()
            .find(|(_, a)| a.starts_with("docker exec") && a.contains("kbt-secret"))
    });
    assert!(
        exec_argv.contains("-e PGPASSWORD kbt-secret"),
        "{exec_argv}"
    );
    // Look only once pg_dump is blocked on our lock (not while pg_wrapper is exec'ing it).
    wait_for(30, "pg_dump waiting on the lock", || {
        let n = d.psql("kbt-secret", "app", "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND wait_event_type = 'Lock'");
        (n != "0").then_some(())
    });
    // The pg_dump inside the container is a host process too: it has the password
    // in its environment only. (Any of them: Debian's pg_wrapper may be mid-exec.)
    let environ_of = |pid: u32| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default())
            .replace('\0', "\n")
    };
    let inner: Vec<_> = processes_matching("--format=custom")
        .into_iter()
        .filter(|(p, a)| *p != exec_pid && !a.starts_with("docker") && a.contains("pg_dump"))
        .collect();
    assert!(
        inner.iter().any(|(p, _)| environ_of(*p)
            .lines()
            .any(|l| l == format!("PGPASSWORD={PW_SECRET}"))),
        "no pg_dump in the container got PGPASSWORD: {:?}",
        inner
            .iter()
            .map(|(p, a)| (p, a, environ_of(*p)))
            .collect::<Vec<_>>()
    );
    for a in all_argv() {
        assert!(!a.contains(PW_SECRET), "password in an argv: {a}");
    }
    let _ = locker.kill();
    let _ = locker.wait();
    // Ending the client session releases the lock; the backup finishes.
    d.psql("kbt-secret", "app", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'app' AND state = 'idle in transaction'");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains(PW_SECRET));
}

#[test]
fn pg_dump_missing_in_the_container_is_named() {
    let d = engine();
    // A container without PostgreSQL's client tools on its PATH.
    d.run_container(
        "kbt-notools",
        &["-e", "PATH=/opt/nothing", "--entrypoint", "/usr/bin/sleep"],
        &["300"],
    );
    let mut kb = Kb::bare();
    kb.set("CONTAINER_DB", "kbt-notools").set("DB_NAME", "app");
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(
        r.stderr()
            .contains("pg_dump command not found in container kbt-notools"),
        "{}",
        r.stderr()
    );
}

#[test]
fn docker_mode_restore_swaps_in_the_backup() {
    let d = engine();
    d.postgres_container("kbt-restore2");
    d.psql("kbt-restore2", "postgres", "CREATE DATABASE kairon");
    d.psql("kbt-restore2", "kairon", SAMPLE_SQL);
    let state = |d: &common::docker::Docker| {
        d.psql("kbt-restore2", "kairon", "SELECT count(*) || ':' || md5(string_agg(x::text, ',' ORDER BY x::text)) FROM traces x")
    };
    let at_backup = state(d);
    let mut kb = Kb::bare();
    kb.set("CONTAINER_DB", "kbt-restore2")
        .set("DB_NAME", "kairon")
        .set("DB_USER", "postgres");
    kb.ok(&["backup"]);
    d.psql(
        "kbt-restore2",
        "kairon",
        "DELETE FROM traces WHERE id % 2 = 0",
    );
    let r = kb.ok(&["restore", "--latest", "--yes"]);
    assert!(
        r.stdout().contains("Previous: kept as kairon_pre_restore_"),
        "{}",
        r.stdout()
    );
    assert_eq!(state(d), at_backup);
    let dbs = d.psql(
        "kbt-restore2",
        "postgres",
        "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database",
    );
    assert!(
        dbs.contains("kairon_pre_restore_") && !dbs.contains("_kbrestore_"),
        "{dbs}"
    );
    let old = dbs
        .split(',')
        .find(|n| n.starts_with("kairon_pre_restore_"))
        .unwrap();
    assert_eq!(
        d.psql("kbt-restore2", old, "SELECT count(*) FROM traces"),
        "1000"
    );
}

#[test]
fn verification_can_run_inside_a_container() {
    let d = engine();
    d.postgres_container("kbt-verify");
    let db = cluster().sample_db("dverify");
    let mut kb = Kb::direct(&db);
    kb.ok(&["backup"]);
    kb.set("BACKUP_VERIFY_CONTAINER", "kbt-verify");
    let r = kb.ok(&["verify", "--json"]);
    let reports: Vec<serde_json::Value> = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(reports[0]["server"], "container kbt-verify");
    assert_eq!(reports[0]["passed"], true, "{:#}", reports[0]);
    let restore = check_named(&reports[0], "test restore");
    assert_eq!(restore["outcome"], "pass", "{restore}");
    // The temporary database was dropped inside the container.
    let left = d.psql(
        "kbt-verify",
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname LIKE '%kbverify%'",
    );
    assert_eq!(left, "0");
}

#[test]
fn a_timed_out_dump_leaves_no_pg_dump_running_in_the_container() {
    let d = engine();
    d.postgres_container("kbt-timeout");
    d.psql("kbt-timeout", "postgres", "CREATE DATABASE slowdb");
    d.psql(
        "kbt-timeout",
        "slowdb",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1)",
    );
    let mut locker = d.lock_table("kbt-timeout", "slowdb", "t");
    let mut kb = Kb::bare();
    kb.set("CONTAINER_DB", "kbt-timeout")
        .set("DB_NAME", "slowdb")
        .set("BACKUP_TIMEOUT", "2s");
    let r = kb.run(&["backup"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(
        r.stderr().contains("pg_dump did not finish within 2s"),
        "{}",
        r.stderr()
    );
    // Killing the `docker exec` client does not stop a process in the container;
    // kbackup ended pg_dump's session from the server side.
    wait_for(10, "pg_dump inside the container to end", || {
        let dumps = d.psql("kbt-timeout", "postgres", "SELECT count(*) FROM pg_stat_activity WHERE datname = 'slowdb' AND application_name LIKE 'kbackup-%'");
        (dumps == "0").then_some(())
    });
    wait_for(10, "no pg_dump process", || {
        processes_matching("--format=custom")
            .iter()
            .all(|(_, a)| !a.contains("slowdb"))
            .then_some(())
    });
    let _ = locker.kill();
    let _ = locker.wait();
}

/// Issue 14: a docker-mode restore runs `pg_restore --jobs` inside the
/// container from an uncompressed copy the check pass writes into its /tmp,
/// and that copy is gone after a success, after a failure, after a `kill -9`
/// (the next `kbackup cleanup`), and is never made when /tmp has no room.
#[test]
fn docker_mode_restores_in_parallel_from_a_copy_the_container_never_keeps() {
    let d = engine();
    let c = "kbt-parallel";
    d.postgres_container(c);
    d.psql(c, "postgres", "CREATE DATABASE kairon");
    d.psql(c, "kairon", SAMPLE_SQL);
    d.psql(
        c,
        "kairon",
        "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 400000) g",
    );
    let state = || {
        d.psql(c, "kairon", "SELECT (SELECT count(*) FROM bulk) || ':' || md5(string_agg(x::text, ',' ORDER BY x::text)) FROM traces x")
    };
    let at_backup = state();
    let mut kb = Kb::bare();
    kb.set("CONTAINER_DB", c)
        .set("DB_NAME", "kairon")
        .set("DB_USER", "postgres")
        .set("BACKUP_RESTORE_JOBS", "2");
    kb.ok(&["backup"]);
    d.psql(c, "kairon", "DELETE FROM traces WHERE id % 2 = 0");

    // Success: in parallel, from the copy in the container, which is gone after.
    let r = kb.ok(&["restore", "--latest", "--yes", "--drop-old"]);
    assert!(
        r.stderr().contains("--jobs 2")
            && r.stderr().contains("uncompressed into /tmp of container"),
        "{}",
        r.stderr()
    );
    assert_eq!(state(), at_backup);
    assert_eq!(d.kbackup_files_in_tmp(c), Vec::<String>::new());

    // Failure after the copy was made (roles the server lacks): removed too.
    d.psql(c, "postgres", "CREATE ROLE kbt_owner");
    d.psql(c, "postgres", "CREATE DATABASE owned OWNER kbt_owner");
    d.psql(
        c,
        "owned",
        "SET ROLE kbt_owner; CREATE TABLE t AS SELECT 1 AS x",
    );
    let mut owned = Kb::bare();
    owned
        .set("CONTAINER_DB", c)
        .set("DB_NAME", "owned")
        .set("DB_USER", "postgres")
        .set("BACKUP_RESTORE_JOBS", "2");
    owned.ok(&["backup"]);
    d.psql(c, "postgres", "DROP DATABASE owned");
    d.psql(c, "postgres", "DROP ROLE kbt_owner");
    let r = owned.run(&["restore", "--latest", "--yes"]);
    assert_eq!(r.code(), 1, "{}", r.all());
    assert!(r.stderr().contains("kbt_owner"), "{}", r.stderr());
    assert_eq!(d.kbackup_files_in_tmp(c), Vec::<String>::new());

    // kill -9 while the copy exists: the next `kbackup cleanup` removes it.
    let mut child = kb.spawn(&["restore", "--latest", "--yes", "--drop-old"]);
    wait_for(60, "the copy in the container", || {
        d.kbackup_files_in_tmp(c)
            .iter()
            .any(|f| f.starts_with("kbackup-restore-"))
            .then_some(())
    });
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(d.kbackup_files_in_tmp(c).len(), 1);
    let r = kb.ok(&["cleanup"]);
    assert!(
        r.stdout().contains("in container kbt-parallel"),
        "{}",
        r.stdout()
    );
    assert_eq!(d.kbackup_files_in_tmp(c), Vec::<String>::new());

    // No room in the container's /tmp: the restore streams, and says so.
    let small = "kbt-parallel-small";
    d.postgres_container_with(small, &["--tmpfs", "/tmp:size=64k,mode=1777"]);
    d.psql(small, "postgres", "CREATE DATABASE kairon");
    kb.set("CONTAINER_DB", small);
    let r = kb.ok(&["restore", "--latest", "--yes", "--drop-old"]);
    assert!(
        r.stderr()
            .contains("No uncompressed copy of the archive in container kbt-parallel-small")
            && r.stderr().contains("streams into one pg_restore"),
        "{}",
        r.stderr()
    );
    assert_eq!(
        d.psql(small, "kairon", "SELECT count(*) FROM bulk"),
        "400000"
    );
    assert_eq!(d.kbackup_files_in_tmp(small), Vec::<String>::new());
}

/// Issue 14: on the Docker engine's host, the dump leaves the container
/// through a FIFO in its /tmp read via the container's filesystem (not
/// docker exec's stream, which costs as much CPU as pg_dump); where kbackup
/// cannot see the container's processes (its own pid namespace, as in a
/// sidecar container) it falls back to the stream. Both backups are whole,
/// and nothing is left in the container's /tmp.
#[test]
fn docker_mode_dumps_through_the_containers_filesystem_else_the_stream() {
    let d = engine();
    let c = "kbt-fifo";
    d.postgres_container(c);
    d.psql(c, "postgres", "CREATE DATABASE kairon");
    d.psql(c, "kairon", SAMPLE_SQL);
    let source = d.psql(
        c,
        "kairon",
        "SELECT count(*) || ':' || md5(string_agg(x::text, ',' ORDER BY x::text)) FROM traces x",
    );
    let mut kb = Kb::bare();
    kb.set("CONTAINER_DB", c)
        .set("DB_NAME", "kairon")
        .set("DB_USER", "postgres")
        .set("DEBUG", "true");
    let fast = kb.ok(&["backup"]);
    assert!(
        fast.stderr()
            .contains("--no-sync --file /tmp/kbackup-dump-"),
        "{}",
        fast.stderr()
    );
    let slow = run_ok(&mut kb.wrapped(
        &["unshare", "--pid", "--fork", "--mount", "--mount-proc"],
        &["backup", "--name", "from-the-stream"],
    ));
    let slow = String::from_utf8_lossy(&slow.stderr).to_string();
    assert!(
        slow.contains("files in the container go through docker exec")
            && !slow.contains("--file /tmp/kbackup-dump-"),
        "{slow}"
    );
    assert_eq!(d.kbackup_files_in_tmp(c), Vec::<String>::new());
    // Each restores to the source's content.
    let cl = cluster();
    let both: Vec<String> = kb
        .dumps("hourly")
        .into_iter()
        .take(1)
        .chain(kb.dumps("named"))
        .collect();
    assert_eq!(both.len(), 2, "{both:?}");
    for (i, dump) in both.into_iter().enumerate() {
        let target = cl.new_db(&format!("fifo_{i}"));
        manual_restore(&kb.store.join(&dump), &target);
        assert_eq!(
            cl.psql(&target, "SELECT count(*) || ':' || md5(string_agg(x::text, ',' ORDER BY x::text)) FROM traces x"),
            source,
            "{dump}"
        );
    }
}
