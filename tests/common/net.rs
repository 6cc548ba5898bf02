//! Real network peers on loopback: an HTTP receiver that records what it is
//! sent (what ntfy, Slack, a webhook or healthchecks.io would receive), a WebDAV
//! server (`rclone serve webdav`), and an SMTP server (aiosmtpd).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{require_tool, wait_for};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    /// Answer 200 at once.
    Ok,
    /// Accept, read, and never answer.
    Hang,
    /// Answers 500.
    Fail,
}

pub struct Recorder {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Recorder {
    pub fn start(mode: Mode) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || serve(stream, mode, &log));
            }
        });
        Recorder { url, requests }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived.
    pub fn wait(&self, n: usize) -> Vec<Request> {
        wait_for(15, &format!("{n} request(s) at {}", self.url), || {
            let r = self.requests();
            (r.len() >= n).then_some(r)
        })
    }
}

fn serve(stream: TcpStream, mode: Mode, log: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = reader.read_exact(&mut body);
    log.lock().unwrap().push(Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let mut stream = stream;
    match mode {
        Mode::Ok => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
        Mode::Hang => std::thread::sleep(Duration::from_secs(120)),
        Mode::Fail => {
            let _ = stream.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\nboom",
            );
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, what: &str) {
    wait_for(20, what, || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
}

/// `rclone serve webdav` of a folder, on loopback. Dropping it stops the server.
pub struct Webdav {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Webdav {
    pub fn start(dir: &Path, port: Option<u16>) -> Webdav {
        Webdav::start_with_login(dir, port, None)
    }

    /// A server that asks for `login` (user, password).
    pub fn start_with_login(dir: &Path, port: Option<u16>, login: Option<(&str, &str)>) -> Webdav {
        Webdav::serve(dir, port, login, &[], None)
    }

    /// A server run as user `nobody` (its folder's permissions then decide
    /// what it may change), with rclone's global `flags` (`--bwlimit 20k`).
    pub fn start_as_nobody(dir: &Path, port: Option<u16>, flags: &[&str]) -> Webdav {
        Webdav::serve(dir, port, None, flags, Some("nobody"))
    }

    fn serve(
        dir: &Path,
        port: Option<u16>,
        login: Option<(&str, &str)>,
        flags: &[&str],
        user: Option<&str>,
    ) -> Webdav {
        require_tool("rclone", "rclone");
        std::fs::create_dir_all(dir).unwrap();
        let port = port.unwrap_or_else(free_port);
        // setpriv execs rclone itself: killing the child kills the server.
        let mut cmd = match user {
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={u}"),
                    "--regid=nogroup",
                    "--clear-groups",
                    "rclone",
                ]);
                c
            }
            None => Command::new("rclone"),
        };
        cmd.args(["serve", "webdav", "--addr", &format!("127.0.0.1:{port}")]);
        cmd.args(flags);
        if let Some((user, pass)) = login {
            cmd.args(["--user", user, "--pass", pass]);
        }
        let child = cmd
            .arg(dir)
            .env("RCLONE_CONFIG", "/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_port(port, "rclone serve webdav");
        Webdav {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    /// kbackup settings for this server as remote `dav:`, folder `backups`.
    pub fn settings(&self) -> Vec<(String, String)> {
        [
            ("RCLONE_CONFIG", "/dev/null".to_string()),
            ("RCLONE_CONFIG_DAV_TYPE", "webdav".into()),
            (
                "RCLONE_CONFIG_DAV_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("RCLONE_CONFIG_DAV_VENDOR", "other".into()),
            ("RCLONE_REMOTE_NAME", "dav".into()),
            ("RCLONE_REMOTE_PATH", "backups".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for Webdav {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real S3 endpoint on loopback: moto's server (PyPI `moto[server]`), with
/// one bucket made through rclone's S3 backend.
pub struct S3 {
    child: Child,
    pub port: u16,
    pub bucket: String,
}

impl S3 {
    pub fn start(bucket: &str) -> S3 {
        let has_moto = Command::new("python3")
            .args(["-c", "import moto.server"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            has_moto,
            "moto's S3 server is missing (python3 -c 'import moto.server' failed): run scripts/test.sh, \
             which installs moto[server] from PyPI"
        );
        require_tool("rclone", "rclone");
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_port(port, "moto S3 server");
        let s3 = S3 {
            child,
            port,
            bucket: bucket.to_string(),
        };
        let mut mkdir = Command::new("rclone");
        mkdir.env_clear().args(["mkdir", &format!("s3:{bucket}")]);
        for (k, v) in s3.settings("") {
            mkdir.env(k, v);
        }
        let out = mkdir.output().unwrap();
        assert!(out.status.success(), "rclone mkdir: {out:?}");
        s3
    }

    /// kbackup settings for this endpoint as remote `s3:`, folder `<bucket>/<path>`.
    /// (The environment's AWS_CA_BUNDLE, which breaks rclone's S3 backend over
    /// plain http, is not passed: kbackup runs with a clean environment.)
    pub fn settings(&self, path: &str) -> Vec<(String, String)> {
        [
            ("RCLONE_CONFIG", "/dev/null".to_string()),
            ("RCLONE_CONFIG_S3_TYPE", "s3".into()),
            ("RCLONE_CONFIG_S3_PROVIDER", "Other".into()),
            (
                "RCLONE_CONFIG_S3_ENDPOINT",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("RCLONE_CONFIG_S3_ACCESS_KEY_ID", "kbackup-test".into()),
            (
                "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY",
                "kbackup-test-secret".into(),
            ),
            ("RCLONE_CONFIG_S3_REGION", "us-east-1".into()),
            ("RCLONE_REMOTE_NAME", "s3".into()),
            ("RCLONE_REMOTE_PATH", format!("{}/{path}", self.bucket)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real SMTP server (aiosmtpd) delivering into a maildir.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    maildir: tempfile::TempDir,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        let ok = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "aiosmtpd (the SMTP sink, from PyPI) is missing: run scripts/test.sh, which installs it");
        let maildir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir.path().join("mail"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_port(port, "the aiosmtpd SMTP server");
        SmtpSink {
            child,
            port,
            maildir,
        }
    }

    /// The raw messages received.
    pub fn messages(&self) -> Vec<String> {
        let dir = self.maildir.path().join("mail/new");
        let mut out: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
