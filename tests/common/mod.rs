//! Test harness: a real PostgreSQL cluster per test binary, real Docker, and a
//! builder that runs the real kbackup binary against them.
//!
//! Servers are started under a watchdog shell that holds a pipe from this test
//! process: when the process exits, however it exits, the pipe closes and the
//! watchdog stops the server and removes its files. Nothing outlives the tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod docker;
pub mod net;

/// Watchdog pipes, held open until the test process exits.
static WATCHDOGS: Mutex<Vec<(Child, ChildStdin)>> = Mutex::new(Vec::new());

/// Runs `script` under `sh` (as `user` when given); `on_exit` runs when this
/// test process goes away.
pub fn spawn_guarded(user: Option<&str>, script: &str, on_exit: &str) {
    let full = format!("{script} & child=$!\nread _ignored\n{on_exit}\n");
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--", "sh", "-c", &full]);
            c
        }
        None => {
            let mut c = Command::new("sh");
            c.args(["-c", &full]);
            c
        }
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start watchdog shell");
    let stdin = child.stdin.take().unwrap();
    WATCHDOGS.lock().unwrap().push((child, stdin));
}

pub fn require_tool(path: &str, what: &str) {
    let found = if path.contains('/') {
        Path::new(path).exists()
    } else {
        Command::new("sh")
            .args(["-c", &format!("command -v {path}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    assert!(found, "{what} is missing ({path} not found): run scripts/test.sh, which installs what the tests need");
}

pub fn pg_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<_> = std::fs::read_dir(root)
        .unwrap_or_else(|_| {
            panic!(
                "PostgreSQL server is missing (no {}): run scripts/test.sh",
                root.display()
            )
        })
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("PostgreSQL server (initdb) is missing: run scripts/test.sh")
}

/// Where scripts/test.sh (`ensure pgversions`) installs the other PostgreSQL
/// versions: `<dir>/<major>/{bin,lib,share}`.
pub fn pg_versions_dir() -> PathBuf {
    std::env::var_os("KBACKUP_TEST_PG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/kbackup-test/pg".into())
}

/// The server programs of PostgreSQL `major`: Debian's for 15, else the cached install.
pub fn server_bin(major: u32) -> PathBuf {
    if major == 15 {
        return pg_bin();
    }
    let bin = pg_versions_dir().join(major.to_string()).join("bin");
    assert!(
        bin.join("postgres").exists(),
        "PostgreSQL {major} is missing ({} not found): run scripts/test.sh, which installs it (ensure pgversions)",
        bin.join("postgres").display()
    );
    bin
}

/// The newest client tools that dump a server of `major`: Debian's 15 for 15
/// (its own), 17 (the PyPI build) for every other version it can dump.
pub fn client_bin(major: u32) -> PathBuf {
    if major == 15 {
        return pg_bin();
    }
    let bin = pg_versions_dir().join("17").join("bin");
    assert!(
        bin.join("pg_dump").exists(),
        "the PostgreSQL 17 client tools are missing ({} not found): run scripts/test.sh (ensure pgversions)",
        bin.join("pg_dump").display()
    );
    bin
}

/// A throwaway cluster, socket-only, trust for everyone but `pwuser`.
pub struct Cluster {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    /// The server's major version.
    pub major: u32,
}

pub const PW_USER: &str = "pwuser";
pub const PW_SECRET: &str = "S3cr3t-pw-do-not-leak";

pub fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| start_cluster(15))
}

/// Another server, for what must run away from the first (verification).
pub fn second_cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| start_cluster(15))
}

/// One cluster of PostgreSQL `major` per test binary (15: the same as `cluster()`).
pub fn cluster_of(major: u32) -> &'static Cluster {
    if major == 15 {
        return cluster();
    }
    static ALL: Mutex<BTreeMap<u32, &'static Cluster>> = Mutex::new(BTreeMap::new());
    let mut all = ALL.lock().unwrap_or_else(|e| e.into_inner());
    all.entry(major)
        .or_insert_with(|| Box::leak(Box::new(start_cluster(major))))
}

/// A cluster of PostgreSQL `major` whose server runs with `env` added (e.g.
/// `LANGUAGE=de`: a server that speaks German), for the tests that need one.
pub fn cluster_with_env(major: u32, env: &str) -> Cluster {
    start_cluster_env(major, env)
}

fn start_cluster(major: u32) -> Cluster {
    start_cluster_env(major, "")
}

fn start_cluster_env(major: u32, extra_env: &str) -> Cluster {
    let bin = server_bin(major);
    // The npm builds need their own lib/ (scripts/lib.sh made its links).
    let lib = bin.parent().unwrap().join("lib");
    let env = format!("LD_LIBRARY_PATH={} {extra_env}", lib.display());
    let dir = tempfile::Builder::new()
        .prefix("kbt-")
        .tempdir_in("/tmp")
        .unwrap()
        .keep();
    let socket = dir.join("s");
    let data = dir.join("data");
    std::fs::create_dir_all(&socket).unwrap();
    run_ok(Command::new("chown").args(["-R", "postgres:", dir.to_str().unwrap()]));
    run_ok(
        Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                "env",
                &format!("LD_LIBRARY_PATH={}", lib.display()),
            ])
            .arg(bin.join("initdb"))
            .args([
                "--no-sync",
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-D",
                data.to_str().unwrap(),
            ]),
    );
    let hba = format!("local all {PW_USER} scram-sha-256\nlocal all all trust\n");
    std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
    let port = 5432;
    let script = format!(
        "{env} {} -D {} -c listen_addresses= -k {} -p {port} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c max_prepared_transactions=10 >{}/log 2>&1",
        bin.join("postgres").display(),
        data.display(),
        socket.display(),
        dir.display()
    );
    spawn_guarded(
        Some("postgres"),
        &script,
        &format!("kill -INT $child; wait $child; rm -rf {}", dir.display()),
    );
    let c = Cluster {
        dir,
        socket,
        port,
        major,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.try_psql("postgres", "SELECT 1").is_err() {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not start; see {}/log",
            c.dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.psql(
        "postgres",
        &format!("CREATE ROLE {PW_USER} LOGIN SUPERUSER PASSWORD '{PW_SECRET}'"),
    );
    c
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// psql for scripts: no psqlrc, quiet, unaligned, tuples only, stop at the first error.
pub const PSQL_FLAGS: [&str; 6] = ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"];

/// The check `name` of a `verify --json` report.
pub fn check_named(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
        .clone()
}

impl Cluster {
    pub fn psql_cmd(&self, db: &str) -> Command {
        let mut c = Command::new(pg_bin().join("psql"));
        c.args(PSQL_FLAGS)
            .args(["-U", "postgres", "-h"])
            .arg(&self.socket)
            .args(["-p", &self.port.to_string(), "-d", db]);
        c
    }

    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = self
            .psql_cmd(db)
            .args(["-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql {db}: {sql}: {e}"))
    }

    pub fn psql_file(&self, db: &str, file: &Path, vars: &[(&str, &str)]) {
        let mut c = self.psql_cmd(db);
        for (k, v) in vars {
            c.args(["-v", &format!("{k}={v}")]);
        }
        run_ok(c.arg("-f").arg(file));
    }

    /// A new, empty database with a name unique in this cluster.
    pub fn new_db(&self, hint: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{hint}_{}", N.fetch_add(1, Ordering::SeqCst));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// Three databases whose names begin each other's (`x`, `x_staging`,
    /// `x_2`), each with a one-row table.
    pub fn nested_databases(&self, hint: &str) -> [String; 3] {
        let app = self.new_db(hint);
        let staging = format!("{app}_staging");
        let two = format!("{app}_2");
        for d in [&staging, &two] {
            self.psql("postgres", &format!("CREATE DATABASE {d}"));
        }
        for d in [&app, &staging, &two] {
            self.psql(d, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
        }
        [app, staging, two]
    }

    /// A database with a few tables, a sequence, a view, a large object.
    pub fn sample_db(&self, hint: &str) -> String {
        let db = self.new_db(hint);
        self.psql(&db, SAMPLE_SQL);
        db
    }

    /// Row count and an order-independent content checksum for every user table.
    pub fn fingerprint(&self, db: &str) -> BTreeMap<String, (u64, String)> {
        let tables = self.psql(
            db,
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
             WHERE schemaname NOT IN ('pg_catalog','information_schema') ORDER BY 1",
        );
        tables
            .lines()
            .filter(|t| !t.is_empty())
            .map(|t| {
                let r = self.psql(
                    db,
                    &format!("SELECT count(*) || '|' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') FROM {t} x"),
                );
                let (n, sum) = r.split_once('|').unwrap();
                (t.to_string(), (n.parse().unwrap(), sum.to_string()))
            })
            .collect()
    }
}

pub const SAMPLE_SQL: &str = r#"
CREATE TABLE events (id bigserial PRIMARY KEY, kind text NOT NULL, payload jsonb, at timestamptz DEFAULT now());
CREATE TABLE traces (id bigserial PRIMARY KEY, event_id bigint REFERENCES events(id), note text);
INSERT INTO events (kind, payload) SELECT 'k' || (g % 7), jsonb_build_object('n', g, 'text', E'line\nbreak\ttab') FROM generate_series(1, 2000) g;
INSERT INTO traces (event_id, note) SELECT g, CASE WHEN g % 10 = 0 THEN NULL ELSE 'étape ' || g END FROM generate_series(1, 2000) g;
CREATE TABLE "Quoted Names" ("Col" text);
INSERT INTO "Quoted Names" VALUES ('a'), ('b');
CREATE TABLE empty_table (x int);
CREATE VIEW recent AS SELECT * FROM events ORDER BY id DESC LIMIT 5;
SELECT lo_from_bytea(0, 'large object payload');
"#;

/// Many kinds of objects, as the restore drill asks.
pub const DRILL_SQL: &str = r#"
DO $$ BEGIN CREATE ROLE drill_owner LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN CREATE ROLE drill_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
CREATE EXTENSION citext;
CREATE SCHEMA app AUTHORIZATION drill_owner;
CREATE SCHEMA "Weird Schema";
CREATE SCHEMA données;
CREATE TABLE app.items (id serial PRIMARY KEY, name citext NOT NULL, tags text[], doc jsonb, blob bytea,
                        price numeric(30,10), made timestamptz, updated int DEFAULT 0);
INSERT INTO app.items (name, tags, doc, blob, price, made)
  SELECT 'Item ' || g || E'\ttab\\back', ARRAY['a' || g, NULL, 'é'], jsonb_build_object('g', g, 'nested', jsonb_build_array(g, 'x')),
         decode(md5(g::text), 'hex'), g * 1.0000000001, timestamptz '2025-01-01' + g * interval '1 hour'
  FROM generate_series(1, 500) g;
INSERT INTO app.items (name, tags, doc, blob, price, made) VALUES (E'multi\nline', '{}', 'null', '', NULL, NULL);
CREATE TABLE app.lines (id bigserial PRIMARY KEY, item_id int NOT NULL REFERENCES app.items(id), qty int CHECK (qty > 0));
INSERT INTO app.lines (item_id, qty) SELECT 1 + g % 500, 1 + g % 9 FROM generate_series(1, 1500) g;
CREATE TABLE "Weird Schema"."Mixed Case ""Table""" ("Ünïcödé col" text, "select" int);
INSERT INTO "Weird Schema"."Mixed Case ""Table""" VALUES ('ä', 1), ('日本語', 2), (NULL, NULL);
CREATE TABLE données.résumé (id int, texte text);
INSERT INTO données.résumé SELECT g, 'ligne ' || g FROM generate_series(1, 30) g;
CREATE TABLE app.events (id bigint, at date NOT NULL, payload text) PARTITION BY RANGE (at);
CREATE TABLE app.events_2025_01 PARTITION OF app.events FOR VALUES FROM ('2025-01-01') TO ('2025-02-01');
CREATE TABLE app.events_2025_02 PARTITION OF app.events FOR VALUES FROM ('2025-02-01') TO ('2025-03-01');
CREATE TABLE app.events_other PARTITION OF app.events DEFAULT;
INSERT INTO app.events SELECT g, date '2025-01-01' + (g % 80), 'p' || g FROM generate_series(1, 800) g;
CREATE SEQUENCE app.counter START 100;
SELECT nextval('app.counter') FROM generate_series(1, 7);
CREATE VIEW app.expensive AS SELECT id, name FROM app.items WHERE price > 250;
CREATE MATERIALIZED VIEW app.item_count AS SELECT count(*) AS n FROM app.items;
CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN NEW.updated := NEW.updated + 1; RETURN NEW; END $f$;
CREATE TRIGGER items_touch BEFORE UPDATE ON app.items FOR EACH ROW EXECUTE FUNCTION app.touch();
SELECT lo_from_bytea(0, convert_to('first large object', 'UTF8'));
SELECT lo_from_bytea(0, decode(repeat('00ff', 5000), 'hex'));
COMMENT ON TABLE app.items IS 'Things we sell';
COMMENT ON COLUMN app.items.price IS 'in euros';
ALTER TABLE app.items OWNER TO drill_owner;
ALTER TABLE app.lines OWNER TO drill_owner;
GRANT SELECT ON app.items TO drill_reader;
GRANT USAGE ON SCHEMA app TO drill_reader;
"#;

/// Everything the drill compares besides table contents.
pub fn drill_extras(c: &Cluster, db: &str) -> Vec<String> {
    [
        "SELECT last_value || '/' || is_called FROM app.counter",
        "SELECT count(*) || '/' || md5(string_agg(md5(lo_get(oid)), ',' ORDER BY md5(lo_get(oid)))) FROM pg_largeobject_metadata",
        "SELECT obj_description('app.items'::regclass, 'pg_class')",
        "SELECT col_description('app.items'::regclass, 8)",
        "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'app.items'::regclass",
        "SELECT has_table_privilege('drill_reader', 'app.items', 'SELECT')::text",
        "SELECT extversion IS NOT NULL FROM pg_extension WHERE extname = 'citext'",
        "SELECT n FROM app.item_count",
        "SELECT count(*) FROM app.expensive",
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'items_touch'",
        "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'app'",
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'app.events'::regclass",
    ]
    .iter()
    .map(|q| c.psql(db, q))
    .collect()
}

/// One test's world: a store folder and the environment kbackup runs with.
pub struct Kb {
    pub home: tempfile::TempDir,
    pub store: PathBuf,
    pub env: BTreeMap<String, String>,
}

impl Kb {
    /// kbackup pointed at `db` in the harness cluster, direct mode.
    pub fn direct(db: &str) -> Kb {
        Kb::on(cluster(), db, &pg_bin())
    }

    /// kbackup pointed at `db` on cluster `c`, with the client tools in `bin`.
    /// No other client is searched for (POSTGRES_CLIENT_PATHS holds only an empty folder).
    pub fn on(c: &Cluster, db: &str, bin: &Path) -> Kb {
        let mut kb = Kb::bare();
        let none = kb.home.path().join("no-other-clients");
        std::fs::create_dir_all(&none).unwrap();
        kb.set("DB_NAME", db)
            .set("DB_USER", "postgres")
            .set("POSTGRES_HOST", c.socket.to_str().unwrap())
            .set("POSTGRES_PORT", &c.port.to_string())
            .set("POSTGRES_BIN_DIR", bin.to_str().unwrap())
            .set("POSTGRES_CLIENT_PATHS", none.to_str().unwrap());
        kb
    }

    /// No database settings yet.
    pub fn bare() -> Kb {
        let home = tempfile::Builder::new()
            .prefix("kbs-")
            .tempdir_in("/tmp")
            .unwrap();
        let store = home.path().join("store");
        let mut env = BTreeMap::new();
        env.insert("BACKUP_DIR".into(), store.to_str().unwrap().into());
        env.insert("TZ".into(), "UTC".into());
        Kb { home, store, env }
    }

    /// Sets a variable for the runs; `BACKUP_DIR` also moves `store` (what
    /// `files`, `dumps` and the assertions read).
    pub fn set(&mut self, k: &str, v: &str) -> &mut Self {
        if k == "BACKUP_DIR" {
            self.store = PathBuf::from(v);
        }
        self.env.insert(k.into(), v.into());
        self
    }

    pub fn unset(&mut self, k: &str) -> &mut Self {
        self.env.remove(k);
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kbackup"));
        c.args(args);
        self.environment(&mut c);
        c
    }

    /// kbackup `args` run under `wrapper` (`prlimit --as=N --`, `unshare --pid
    /// --fork`, `bash -c '"$0" "$@" | true'`...), in this world's environment.
    pub fn wrapped(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let mut c = Command::new(wrapper[0]);
        c.args(&wrapper[1..])
            .arg(env!("CARGO_BIN_EXE_kbackup"))
            .args(args);
        self.environment(&mut c);
        c
    }

    /// This world's environment, folder and (null) stdin on `c`.
    pub fn environment(&self, c: &mut Command) {
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .envs(&self.env)
            .current_dir(self.home.path())
            .stdin(Stdio::null());
        if let Ok(h) = std::env::var("DOCKER_HOST") {
            c.env("DOCKER_HOST", h);
        }
    }

    /// Starts kbackup in the background, its output captured (for signals and kills).
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kbackup")
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("run kbackup");
        Run {
            out,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Runs and asserts exit 0.
    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code(), 0, "kbackup {:?} failed:\n{}", args, r.all());
        r
    }

    pub fn list_json(&self) -> Vec<serde_json::Value> {
        let r = self.ok(&["list", "--json"]);
        serde_json::from_str(&r.stdout()).expect("list --json is JSON")
    }

    /// Every file under the store (relative paths), sorted.
    /// The store's files, its index aside (a cache of what the others hold,
    /// written by whichever run reads the folders first).
    pub fn files(&self) -> Vec<String> {
        files_under(&self.store)
            .into_iter()
            .filter(|f| f != ".kbackup/index.json")
            .collect()
    }

    /// The dumps in one tier folder.
    pub fn dumps(&self, tier: &str) -> Vec<String> {
        self.files()
            .into_iter()
            .filter(|f| {
                f.starts_with(&format!("{tier}/"))
                    && (f.ends_with(".dump.zst")
                        || f.ends_with(".dump")
                        || f.ends_with(".dump.zst.age"))
            })
            .collect()
    }
}

/// Every file under `dir`, as paths relative to it.
pub fn files_under(dir: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.insert(
                    e.path()
                        .strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out
}

pub fn sha256_file(p: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(p));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Every dump under `root` (a store, or a remote's folder) is a complete
/// backup: it has its manifest, and its bytes are the ones the manifest records.
pub fn assert_whole_dumps(root: &Path, what: &str) {
    for f in files_under(root)
        .iter()
        .filter(|f| f.ends_with(".dump.zst"))
    {
        let manifest = root.join(f.replace(".dump.zst", ".manifest.json"));
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&manifest)
                .unwrap_or_else(|e| panic!("{what}: {f} has no manifest: {e}")),
        )
        .unwrap_or_else(|e| panic!("{what}: {f}: a manifest that does not parse: {e}"));
        assert_eq!(
            m["file"]["sha256"].as_str().unwrap(),
            sha256_file(&root.join(f)),
            "{what}: {f}"
        );
    }
}

/// A real tmpfs mounted at `path` (a tiny disk, another filesystem), unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        Tmpfs::mount_with(path, &format!("size={size}"))
    }

    /// Mounted with tmpfs `options` (`size=1m,nr_inodes=40`).
    pub fn mount_with(path: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", options, "tmpfs"])
                .arg(path),
        );
        Tmpfs(path.to_path_buf())
    }

    /// Changes its options in place (a smaller inode or byte limit).
    pub fn remount(&self, options: &str) {
        run_ok(
            Command::new("mount")
                .args(["-o", &format!("remount,{options}")])
                .arg(&self.0),
        );
    }

    /// Inodes in use.
    pub fn inodes_used(&self) -> u64 {
        let out = run_ok(
            Command::new("stat")
                .args(["-f", "-c", "%c %d"])
                .arg(&self.0),
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut n = text.split_whitespace().map(|v| v.parse::<u64>().unwrap());
        let (total, free) = (n.next().unwrap(), n.next().unwrap());
        total - free
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

pub struct Run {
    pub out: Output,
    pub args: Vec<String>,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn all(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout(), self.stderr())
    }
}

/// Writes what the seed's backup.sh wrote: `pg_dump -Fc` of `db` at `rel` in the store.
pub fn seed_dump(kb: &Kb, db: &str, rel: &str) {
    let out = kb.store.join(rel);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    pg_dump_to_file(cluster(), &pg_bin(), db, &out, &[]);
}

/// `pg_dump -Fc [extra] -f out db` of cluster `c` with the tools in `bin`.
pub fn pg_dump_to_file(c: &Cluster, bin: &Path, db: &str, out: &Path, extra: &[&str]) {
    run_ok(
        Command::new(bin.join("pg_dump"))
            .arg("-Fc")
            .args(extra)
            .args(["-h", c.socket.to_str().unwrap(), "-U", "postgres", "-f"])
            .arg(out)
            .arg(db),
    );
}

/// Restores a kbackup file by hand, as the README documents:
/// `zstd -dc FILE | pg_restore --no-owner -d DB`.
pub fn manual_restore(file: &Path, db: &str) {
    let c = cluster();
    let pg_restore = pg_bin().join("pg_restore");
    let script = format!(
        "set -o pipefail; zstd -dc '{}' | '{}' -h '{}' -p {} -U postgres --exit-on-error -d '{db}'",
        file.display(),
        pg_restore.display(),
        c.socket.display(),
        c.port
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "manual restore of {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts kbackup on a real pseudo-terminal (util-linux `script`); its input is
/// the returned child's stdin.
pub fn on_terminal_spawn(kb: &Kb, args: &[&str]) -> Child {
    let cmdline = std::iter::once(env!("CARGO_BIN_EXE_kbackup").to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut script = Command::new("script");
    script.args(["-qec", &cmdline, "/dev/null"]);
    kb.environment(&mut script);
    script
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux script")
}

/// Runs kbackup on a real pseudo-terminal (util-linux `script`), typing `answer`.
pub fn on_terminal(kb: &Kb, args: &[&str], answer: &str) -> (i32, String) {
    let mut child = on_terminal_spawn(kb, args);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // The program may be done already, with nothing to answer: ignore a closed pipe.
    let _ = child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(format!("{answer}\n").as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Polls until `f` returns Some, or panics after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose argv contains `needle`: (pid, argv joined by spaces).
pub fn processes_matching(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv = String::from_utf8_lossy(&raw).replace('\0', " ");
        if argv.contains(needle) {
            out.push((pid, argv));
        }
    }
    out
}

/// Every argv and environment on the machine, for leak checks.
pub fn all_argv() -> Vec<String> {
    processes_matching("").into_iter().map(|(_, a)| a).collect()
}

/// Waits for `child` while sampling every argv on the machine: returns those
/// that contained `needle` at some point (a leak check), and how it ended.
pub fn argv_containing_while_it_runs(child: Child, needle: &str) -> (Vec<String>, Output) {
    let pid = child.id();
    let mut seen = Vec::new();
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z")) {
        seen.extend(all_argv().into_iter().filter(|a| a.contains(needle)));
        std::thread::sleep(Duration::from_millis(1));
    }
    (seen, child.wait_with_output().unwrap())
}

/// A psql session holding a lock until dropped: makes pg_dump wait, for real.
pub struct LockHolder {
    child: Child,
}

impl LockHolder {
    pub fn exclusive(db: &str, table: &str) -> LockHolder {
        LockHolder::hold(
            cluster(),
            db,
            &format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"),
            &format!("relation = '{table}'::regclass AND mode = 'AccessExclusiveLock'"),
        )
    }

    /// `pg_database` locked against writes: every CREATE/DROP/ALTER DATABASE
    /// on the cluster waits (connections do not) until the holder is dropped.
    pub fn databases(c: &Cluster) -> LockHolder {
        LockHolder::hold(
            c,
            "postgres",
            "LOCK TABLE pg_database IN SHARE MODE",
            "relation = 'pg_database'::regclass AND mode = 'ShareLock'",
        )
    }

    /// Database settings (`ALTER DATABASE ... SET`) locked against writes.
    pub fn database_settings(c: &Cluster) -> LockHolder {
        LockHolder::hold(
            c,
            "postgres",
            "LOCK TABLE pg_db_role_setting IN SHARE MODE",
            "relation = 'pg_db_role_setting'::regclass AND mode = 'ShareLock'",
        )
    }

    /// Runs `lock` in an open transaction in `db` and waits until pg_locks
    /// shows it granted (`which`: its pg_locks condition).
    fn hold(c: &Cluster, db: &str, lock: &str, which: &str) -> LockHolder {
        let mut child = c
            .psql_cmd(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "BEGIN; {lock}; SELECT 'locked';").unwrap();
        stdin.flush().unwrap();
        wait_for(10, "the lock", || {
            let n = c.psql(
                db,
                &format!("SELECT count(*) FROM pg_locks WHERE {which} AND granted"),
            );
            (n == "1").then_some(())
        });
        LockHolder { child }
    }

    /// Sessions waiting on a lock in `db` (pg_dump blocked behind us).
    pub fn waiters(db: &str) -> u32 {
        cluster()
            .psql(db, &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND wait_event_type = 'Lock'"))
            .parse()
            .unwrap()
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
