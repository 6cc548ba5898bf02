//! A real Docker engine for the docker-exec path, started by the tests.
//!
//! No registry is reachable, so the image is made locally: `docker import` of a
//! tarball holding only the `bin lib lib64 sbin` symlinks into `usr/`, empty
//! folders and an entry script; the container runs the host's PostgreSQL with
//! the host's `/usr` and `/etc` mounted read-only.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{pg_bin, require_tool, run_ok, spawn_guarded};

pub struct Docker {
    pub host: String,
    pub dir: PathBuf,
}

pub const IMAGE: &str = "kbt-pg:1";

/// The engine, started once per test binary; sets DOCKER_HOST for kbackup runs.
pub fn engine() -> &'static Docker {
    static D: OnceLock<Docker> = OnceLock::new();
    D.get_or_init(|| {
        require_tool("dockerd", "the Docker engine (docker.io)");
        require_tool("docker", "the Docker CLI");
        let dir = tempfile::Builder::new()
            .prefix("kbd-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let sock = dir.join("docker.sock");
        let exec_root = dir.join("exec");
        let script = format!(
            "dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=overlay2 \
             --data-root={d}/data --exec-root={e} -H unix://{s} --pidfile {d}/pid >{d}/log 2>&1",
            d = dir.display(),
            e = exec_root.display(),
            s = sock.display()
        );
        let cleanup = format!(
            "kill -TERM $child; wait $child; umount {e}/netns/default 2>/dev/null; rm -rf {d}",
            e = exec_root.display(),
            d = dir.display()
        );
        spawn_guarded(None, &script, &cleanup);
        let host = format!("unix://{}", sock.display());
        // SAFETY: set once, before any kbackup child is spawned by this test binary.
        unsafe { std::env::set_var("DOCKER_HOST", &host) };
        let d = Docker { host, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !d
            .cmd(&["info"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
        {
            assert!(
                Instant::now() < deadline,
                "dockerd did not start; see {}/log",
                d.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d.import_image();
        d
    })
}

impl Docker {
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.args(args).env("DOCKER_HOST", &self.host);
        c
    }

    pub fn ok(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&run_ok(&mut self.cmd(args)).stdout)
            .trim()
            .to_string()
    }

    fn import_image(&self) {
        self.import(IMAGE, &pg_bin().display().to_string(), None);
    }

    /// The image whose PostgreSQL (server and client tools) is the cached
    /// install of version `major`, mounted at /opt/pg: made on first use.
    pub fn image_of(&self, major: u32) -> String {
        static MADE: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
        let image = format!("kbt-pg{major}:1");
        let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
        if !made.contains(&major) {
            let path = "/opt/pg/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
            self.import(&image, "/opt/pg/bin", Some(path));
            made.push(major);
        }
        image
    }

    /// A running PostgreSQL `major` container named `name` with that version's
    /// own client tools first on its PATH, ready for connections.
    pub fn postgres_container_of(&self, name: &str, major: u32) {
        let image = self.image_of(major);
        let install = super::server_bin(major)
            .parent()
            .unwrap()
            .display()
            .to_string();
        let mount = format!("{install}:/opt/pg:ro");
        self.run_image(&image, name, &["-v", &mount], &[]);
        self.wait_ready(name);
    }

    fn import(&self, image: &str, bin: &str, path: Option<&str>) {
        let root = self
            .dir
            .join(format!("rootfs-{}", image.replace([':', '/'], "-")));
        for d in [
            "usr",
            "etc",
            "tmp",
            "proc",
            "sys",
            "dev",
            "var/run/postgresql",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for l in ["bin", "lib", "lib64", "sbin"] {
            std::os::unix::fs::symlink(format!("usr/{l}"), root.join(l)).unwrap();
        }
        let entry = format!(
            "#!/bin/sh\nset -e\nmkdir -p /pgdata /var/run/postgresql\nchown postgres /pgdata /var/run/postgresql\nchmod 1777 /tmp\n\
             runuser -u postgres -- {bin}/initdb --no-sync -A trust -U postgres -E UTF8 --locale=C.UTF-8 -D /pgdata >/dev/null\n\
             exec runuser -u postgres -- {bin}/postgres -D /pgdata -c listen_addresses= -c unix_socket_directories=/var/run/postgresql,/tmp -c fsync=off\n",
        );
        let entry_path = root.join("entry.sh");
        std::fs::write(&entry_path, entry).unwrap();
        run_ok(Command::new("chmod").arg("755").arg(&entry_path));
        let env = path
            .map(|p| format!("-c 'ENV PATH={p}' "))
            .unwrap_or_default();
        let script = format!(
            "tar -C {} -c . | docker import {env}-c 'CMD [\"/entry.sh\"]' - {image}",
            root.display()
        );
        run_ok(
            Command::new("sh")
                .args(["-c", &script])
                .env("DOCKER_HOST", &self.host),
        );
    }

    /// Starts a container of the test image with the host's /usr and /etc, no network.
    /// `options` go before the image, `command` after it.
    pub fn run_container(&self, name: &str, options: &[&str], command: &[&str]) {
        self.run_image(IMAGE, name, options, command);
    }

    fn run_image(&self, image: &str, name: &str, options: &[&str], command: &[&str]) {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "-v",
            "/usr:/usr:ro",
            "-v",
            "/etc:/etc:ro",
        ];
        args.extend_from_slice(options);
        args.push(image);
        args.extend_from_slice(command);
        self.ok(&args);
    }

    /// A running PostgreSQL container named `name`, ready for connections.
    pub fn postgres_container(&self, name: &str) {
        self.postgres_container_with(name, &[]);
    }

    /// The same, with `options` for `docker run` (`--tmpfs /tmp:size=64k`).
    pub fn postgres_container_with(&self, name: &str, options: &[&str]) {
        self.run_container(name, options, &[]);
        self.wait_ready(name);
    }

    /// The files kbackup left in the container's /tmp.
    pub fn kbackup_files_in_tmp(&self, name: &str) -> Vec<String> {
        self.ok(&["exec", name, "ls", "-a", "/tmp"])
            .lines()
            .filter(|f| f.starts_with("kbackup"))
            .map(str::to_string)
            .collect()
    }

    fn wait_ready(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .cmd(&["exec", name, "psql", "-U", "postgres", "-Atc", "SELECT 1"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
        {
            if Instant::now() > deadline {
                let logs = self.cmd(&["logs", name]).output().unwrap();
                panic!(
                    "PostgreSQL in container {name} did not start: {}{}",
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A psql session in `container` holding an exclusive lock on `table` until
    /// the returned child is killed: makes a pg_dump there wait, for real.
    pub fn lock_table(&self, container: &str, db: &str, table: &str) -> std::process::Child {
        use std::io::Write;
        let mut locker = self
            .cmd(&["exec", "-i", container, "psql", "-U", "postgres", "-d", db])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        writeln!(
            locker.stdin.as_mut().unwrap(),
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT 1;"
        )
        .unwrap();
        let granted = format!(
            "SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass AND granted"
        );
        super::wait_for(20, "the lock in the container", || {
            (self.psql(container, db, &granted) == "1").then_some(())
        });
        locker
    }

    pub fn psql(&self, container: &str, db: &str, sql: &str) -> String {
        let mut args = vec!["exec", container, "psql"];
        args.extend(super::PSQL_FLAGS);
        args.extend(["-U", "postgres", "-d", db, "-c", sql]);
        self.ok(&args)
    }
}
