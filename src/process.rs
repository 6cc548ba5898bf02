//! The one runner for every child process (pg_dump, pg_dumpall, psql, docker).
//!
//! A command is data ([`Cmd`]): program, arguments, environment; its `Display`
//! is the shell-escaped command line with secret environment values elided, for
//! logs and dry-runs. Running it: stdin is closed, stderr is drained on its own
//! task (a chatty child can never block on a full pipe) and its tail kept for the
//! error, stdout is captured or streamed to a consumer on a blocking thread, the
//! exit status is always checked, a timeout kills the child, and a child whose
//! caller goes away (Ctrl-C, an error elsewhere) is killed: no orphans.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::fd::AsRawFd;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

const STDERR_TAIL_LINES: usize = 30;

/// See [`Cmd::on_stderr`].
pub type StderrHook = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(String, OsString, bool)>,
    /// Variables of ours the child must not see (rclone reads RCLONE_* itself).
    env_remove: Vec<String>,
    /// Copy the child's stderr lines to ours as they come (progress on a terminal).
    show_stderr: bool,
    /// Sees each stderr line first; a line it answers false to is not kept
    /// for the error message (a verbose child's chatter).
    on_stderr: Option<StderrHook>,
    /// Short name for messages: "pg_dump", "docker".
    label: String,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref().to_owned();
        let label = std::path::Path::new(&program)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        Cmd {
            program,
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            show_stderr: false,
            on_stderr: None,
            label,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.to_string(), value.as_ref().to_owned(), false));
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.env_remove.push(key.to_string());
        self
    }

    pub fn show_stderr(mut self, show: bool) -> Self {
        self.show_stderr = show;
        self
    }

    /// Hands each stderr line (redacted) to `hook` as it comes; lines it
    /// answers false to are left out of the error message's tail.
    pub fn on_stderr(mut self, hook: StderrHook) -> Self {
        self.on_stderr = Some(hook);
        self
    }

    /// An environment variable whose value never appears in logs or errors.
    pub fn secret_env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        crate::secrets::register(&value.as_ref().to_string_lossy());
        self.env
            .push((key.to_string(), value.as_ref().to_owned(), true));
        self
    }

    pub fn label(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
    }

    pub fn argv(&self) -> impl Iterator<Item = &OsStr> {
        std::iter::once(self.program.as_os_str()).chain(self.args.iter().map(|a| a.as_os_str()))
    }

    fn command(&self, stdin: bool) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.program);
        for k in &self.env_remove {
            c.env_remove(k);
        }
        c.args(&self.args)
            .envs(self.env.iter().map(|(k, v, _)| (k, v)))
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // If kbackup itself is killed (SIGKILL: no destructors run), the kernel
        // kills the child too, instead of leaving a pg_dump running unsupervised.
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            c.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }

    /// Spawns the child with its stderr read as it comes (see `drain_stderr`).
    fn start(
        &self,
        stdin: bool,
    ) -> Result<(tokio::process::Child, tokio::task::JoinHandle<String>), ProcessError> {
        let mut child = self.spawn(stdin)?;
        let stderr = drain_stderr(
            child.stderr.take(),
            self.label.clone(),
            self.show_stderr,
            self.on_stderr.clone(),
        );
        Ok((child, stderr))
    }

    fn spawn(&self, stdin: bool) -> Result<tokio::process::Child, ProcessError> {
        tracing::debug!("running: {self}");
        self.command(stdin).spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ProcessError::NotFound {
                    program: self.program.to_string_lossy().into_owned(),
                }
            } else {
                ProcessError::Spawn {
                    program: self.program.to_string_lossy().into_owned(),
                    source: e,
                }
            }
        })
    }

    /// Runs to completion and returns stdout; a non-zero exit is an error.
    pub async fn output(&self, timeout: Option<Duration>) -> Result<Vec<u8>, ProcessError> {
        let (mut child, stderr) = self.start(false)?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let read = async {
            let mut buf = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut buf)
                .await
                .map(|_| buf)
        };
        let run = async {
            let (out, status) = tokio::join!(read, child.wait());
            (out, status)
        };
        let (out, status) = match timeout {
            Some(d) => tokio::time::timeout(d, run)
                .await
                .map_err(|_| ProcessError::TimedOut {
                    label: self.label.clone(),
                    after: d,
                })?,
            None => run.await,
        };
        let status = status.map_err(|e| self.spawn_err(e))?;
        let tail = stderr.await.unwrap_or_default();
        self.check(status, tail)?;
        out.map_err(|e| self.spawn_err(e))
    }

    /// Runs with stdout handed to `consume` on a blocking thread, as a plain
    /// blocking `File`. If the consumer fails the child is killed; if the child
    /// fails its error wins (it is the cause; the consumer saw a short stream).
    pub async fn stream<T, F>(
        &self,
        timeout: Option<Duration>,
        consume: F,
    ) -> Result<T, StreamError>
    where
        T: Send + 'static,
        F: FnOnce(std::fs::File) -> anyhow::Result<T> + Send + 'static,
    {
        let (mut child, stderr) = self.start(false)?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let file = self.blocking_file(stdout.into_owned_fd())?;
        let task = tokio::task::spawn_blocking(move || consume(file));
        let (status, local, killed) = self.supervise(&mut child, task, timeout, || {}).await?;
        self.settle(status, stderr.await.unwrap_or_default(), local, killed)
    }

    /// Runs with stdin written by `produce` on a blocking thread (closing it ends
    /// the input); returns stdout. A failing producer kills the child; a child
    /// that fails first (the producer then sees a broken pipe) reports its error.
    pub async fn feed<F>(
        &self,
        timeout: Option<Duration>,
        produce: F,
    ) -> Result<Vec<u8>, StreamError>
    where
        F: FnOnce(std::fs::File) -> anyhow::Result<()> + Send + 'static,
    {
        let (mut child, stderr) = self.start(true)?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let out = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut buf).await;
            buf
        });
        let stdin = child.stdin.take().expect("stdin is piped");
        let file = self.blocking_file(stdin.into_owned_fd())?;
        let task = tokio::task::spawn_blocking(move || produce(file));
        let (status, local, killed) = self.supervise(&mut child, task, timeout, || {}).await?;
        self.settle(status, stderr.await.unwrap_or_default(), local, killed)?;
        Ok(out.await.unwrap_or_default())
    }

    fn blocking_file(
        &self,
        fd: std::io::Result<std::os::fd::OwnedFd>,
    ) -> Result<std::fs::File, ProcessError> {
        let fd = fd.map_err(|e| self.spawn_err(e))?;
        set_blocking(&fd).map_err(|e| self.spawn_err(e))?;
        Ok(std::fs::File::from(fd))
    }

    /// Waits for the child and the blocking task together: kills the child when
    /// the task fails or the timeout passes. Returns the exit status, the task's
    /// result, and whether we killed the child.
    /// Runs the child (its output drained) while `work` runs on a blocking
    /// thread, for a child that hands its data over another way than its
    /// stdout (a FIFO). `exited` is called once the child is gone, whatever
    /// way: `work` may be waiting for the child (a FIFO it never opened) and
    /// must be let go. Errors as in [`stream`](Self::stream).
    pub async fn beside<T, F>(
        &self,
        timeout: Option<Duration>,
        work: F,
        exited: impl FnOnce(),
    ) -> Result<T, StreamError>
    where
        T: Send + 'static,
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    {
        let (mut child, stderr) = self.start(false)?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await;
        });
        let task = tokio::task::spawn_blocking(work);
        let (status, local, killed) = self.supervise(&mut child, task, timeout, exited).await?;
        self.settle(status, stderr.await.unwrap_or_default(), local, killed)
    }

    async fn supervise<T: Send + 'static>(
        &self,
        child: &mut tokio::process::Child,
        mut task: tokio::task::JoinHandle<anyhow::Result<T>>,
        timeout: Option<Duration>,
        exited: impl FnOnce(),
    ) -> Result<(ExitStatus, anyhow::Result<T>, bool), ProcessError> {
        let deadline = async {
            match timeout {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let joined = |r: Result<anyhow::Result<T>, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| Err(anyhow::anyhow!("{} stream task panicked: {e}", self.label)))
        };
        let mut done = None;
        let mut killed = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.map_err(|e| self.spawn_err(e))?,
                r = &mut task, if done.is_none() => {
                    let r = joined(r);
                    // A broken pipe means the child went away by itself: wait for
                    // its status and let its error speak. Any other failure is ours.
                    if r.as_ref().is_err_and(|e| !is_broken_pipe(e)) {
                        killed = child.start_kill().is_ok();
                    }
                    done = Some(r);
                }
                _ = &mut deadline => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    exited();
                    return Err(ProcessError::TimedOut { label: self.label.clone(), after: timeout.unwrap_or_default() });
                }
            }
        };
        exited();
        let done = match done {
            Some(r) => r,
            None => joined(task.await),
        };
        Ok((status, done, killed))
    }

    /// Which error wins: ours when we killed the child for it, or when the child
    /// died of the broken pipe our failure left it (SIGPIPE, or a shell's 141);
    /// else the child's.
    fn settle<T>(
        &self,
        status: ExitStatus,
        stderr: String,
        local: anyhow::Result<T>,
        killed: bool,
    ) -> Result<T, StreamError> {
        match local {
            // Our failure is the cause only if the child died of our kill (or of
            // the broken pipe it left); a child that had already failed by itself
            // (the server went away, so its output ended early) speaks first.
            Err(e) if (killed && died_of_kill(status)) || died_of_sigpipe(status) => {
                Err(StreamError::Local(e))
            }
            Err(e) => {
                self.check(status, stderr)?;
                Err(StreamError::Local(e))
            }
            Ok(v) => {
                self.check(status, stderr)?;
                Ok(v)
            }
        }
    }

    fn spawn_err(&self, e: std::io::Error) -> ProcessError {
        ProcessError::Spawn {
            program: self.program.to_string_lossy().into_owned(),
            source: e,
        }
    }

    fn check(&self, status: ExitStatus, stderr: String) -> Result<(), ProcessError> {
        if status.success() {
            if !stderr.trim().is_empty() {
                tracing::debug!("{} stderr: {}", self.label, stderr.trim());
            }
            return Ok(());
        }
        Err(ProcessError::Failed {
            label: self.label.clone(),
            status: describe_status(status),
            code: status.code(),
            stderr: stderr.trim().to_string(),
        })
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quote = |s: &OsStr| {
            let s = s.to_string_lossy();
            // Words made only of these need no quoting (as Python's shlex.quote).
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c))
                && !s.starts_with('=');
            if plain {
                return s.into_owned();
            }
            shlex::try_quote(&s)
                .map(|q| q.into_owned())
                .unwrap_or_else(|_| format!("{s:?}"))
        };
        let mut parts: Vec<String> = self
            .env
            .iter()
            .map(|(k, v, secret)| {
                if *secret {
                    format!("{k}=<redacted>")
                } else {
                    format!("{k}={}", quote(v))
                }
            })
            .collect();
        parts.extend(self.argv().map(quote));
        f.write_str(&parts.join(" "))
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cmd({self})")
    }
}

fn died_of_kill(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGKILL) || status.code() == Some(128 + libc::SIGKILL)
}

fn died_of_sigpipe(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGPIPE) || status.code() == Some(128 + libc::SIGPIPE)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn set_blocking(fd: &std::os::fd::OwnedFd) -> std::io::Result<()> {
    // tokio hands out the pipe non-blocking; the consumer reads it with plain blocking reads.
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a valid, owned descriptor; no memory is passed.
    unsafe {
        let flags = libc::fcntl(raw, libc::F_GETFL);
        if flags < 0 || libc::fcntl(raw, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The longest stderr line kept (a child printing megabytes without a newline
/// is still drained; only the start of such a line is kept).
const STDERR_LINE_MAX: usize = 4096;
/// How much of one stderr line is read before it is redacted and cut to
/// [`STDERR_LINE_MAX`]: a secret across the cut is still found whole.
const STDERR_READ_MAX: usize = 64 * 1024;

/// Drains a child's stderr to its end, whatever it holds: bytes, not text (a
/// line that is not UTF-8 is converted lossily, never a reason to stop reading
/// and leave the child to die of SIGPIPE). Keeps the last lines, each capped.
fn drain_stderr(
    stderr: Option<tokio::process::ChildStderr>,
    label: String,
    show: bool,
    hook: Option<StderrHook>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let Some(stderr) = stderr else {
            return String::new();
        };
        let mut reader = BufReader::new(stderr);
        let mut tail: std::collections::VecDeque<String> = Default::default();
        let mut keep = |raw: &[u8]| {
            let line = String::from_utf8_lossy(raw);
            // Whatever a child prints goes nowhere with a secret in it.
            let line = crate::secrets::redact(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            let mut cut = STDERR_LINE_MAX.min(line.len());
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            let line = &line[..cut];
            tracing::trace!("{label}: {line}");
            if show {
                eprintln!("{line}");
            }
            if hook.as_ref().is_some_and(|h| !h(line)) {
                return;
            }
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        };
        let mut line: Vec<u8> = Vec::new();
        loop {
            let chunk = match reader.fill_buf().await {
                Ok(c) if !c.is_empty() => c,
                _ => break,
            };
            let (take, ends) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            let room = STDERR_READ_MAX.saturating_sub(line.len());
            line.extend_from_slice(&chunk[..take.min(room)]);
            reader.consume(take);
            if ends {
                keep(&line);
                line.clear();
            }
        }
        if !line.is_empty() {
            keep(&line);
        }
        tail.into_iter().collect::<Vec<_>>().join("\n")
    })
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{program} not found")]
    NotFound { program: String },
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{label} failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Failed {
        label: String,
        status: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("{label} did not finish within {}; it was stopped", humantime::format_duration(*after))]
    TimedOut { label: String, after: Duration },
}

impl ProcessError {
    pub fn stderr(&self) -> &str {
        match self {
            ProcessError::Failed { stderr, .. } => stderr,
            _ => "",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Our side of the pipe failed (the consumer or producer on the blocking thread).
    #[error(transparent)]
    Local(anyhow::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_elides_secrets_and_quotes() {
        let c = Cmd::new("pg_dump")
            .arg("--format=custom")
            .arg("--dbname")
            .arg("my db")
            .secret_env("PGPASSWORD", "hunter2");
        let s = c.to_string();
        assert_eq!(
            s,
            "PGPASSWORD=<redacted> pg_dump --format=custom --dbname 'my db'"
        );
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    /// Defect: the stderr reader stopped at the first non-UTF-8 line and dropped
    /// the pipe; the child died of SIGPIPE and its real message was lost.
    #[tokio::test]
    async fn non_utf8_and_endless_stderr_lines_are_drained_to_the_real_error() {
        let script = "printf 'caf\\351 \\377\\376\\n' >&2; head -c 300000 /dev/zero | tr '\\0' x >&2; \
                      echo >&2; i=0; while [ $i -lt 2000 ]; do echo \"noise $i\" >&2; i=$((i+1)); done; \
                      echo 'the real error' >&2; exit 7";
        let e = Cmd::new("sh")
            .args(["-c", script])
            .output(Some(Duration::from_secs(20)))
            .await
            .unwrap_err();
        match &e {
            ProcessError::Failed { code, stderr, .. } => {
                assert_eq!(*code, Some(7), "{e}");
                assert!(stderr.ends_with("the real error"), "{stderr}");
                assert!(
                    stderr.lines().all(|l| l.len() <= STDERR_LINE_MAX),
                    "lines are capped"
                );
            }
            other => panic!("{other:?}"),
        }
        // The lossy line itself, when it is among the last kept.
        let e = Cmd::new("sh")
            .args(["-c", "printf 'caf\\351\\n' >&2; exit 2"])
            .output(None)
            .await
            .unwrap_err();
        assert_eq!(e.stderr(), "caf\u{FFFD}");
    }

    #[tokio::test]
    async fn failure_carries_status_and_stderr_tail() {
        let e = Cmd::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .output(None)
            .await
            .unwrap_err();
        let t = e.to_string();
        assert!(t.contains("exit code 3") && t.contains("boom"), "{t}");
        let e = Cmd::new("/nonexistent/pg_dump")
            .output(None)
            .await
            .unwrap_err();
        assert!(matches!(e, ProcessError::NotFound { .. }));
    }

    #[tokio::test]
    async fn timeout_kills_the_child() {
        let start = std::time::Instant::now();
        let e = Cmd::new("sleep")
            .arg("30")
            .output(Some(Duration::from_millis(200)))
            .await
            .unwrap_err();
        assert!(matches!(e, ProcessError::TimedOut { .. }));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn stream_reads_everything_and_checks_status() {
        use std::io::Read;
        let n = Cmd::new("sh")
            .args(["-c", "head -c 3000000 /dev/zero; echo noise >&2"])
            .stream(None, |mut f| {
                let mut v = Vec::new();
                f.read_to_end(&mut v)?;
                Ok(v.len())
            })
            .await
            .unwrap();
        assert_eq!(n, 3_000_000);
        let e = Cmd::new("sh")
            .args(["-c", "echo partial; exit 1"])
            .stream(None, |mut f| {
                let mut v = Vec::new();
                f.read_to_end(&mut v)?;
                Ok(v.len())
            })
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            StreamError::Process(ProcessError::Failed { .. })
        ));
    }

    #[tokio::test]
    async fn a_failing_consumer_kills_a_chatty_child() {
        let start = std::time::Instant::now();
        let e = Cmd::new("sh")
            .args(["-c", "yes"])
            .stream(None, |_f| -> anyhow::Result<()> {
                anyhow::bail!("disk full")
            })
            .await
            .unwrap_err();
        // We killed the child because the consumer failed: the consumer's error is the cause.
        assert!(
            matches!(&e, StreamError::Local(c) if c.to_string() == "disk full"),
            "{e}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}

#[cfg(test)]
mod feed_tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn feed_streams_stdin_and_returns_stdout() {
        let out = Cmd::new("wc")
            .arg("-c")
            .feed(None, |mut f| {
                for _ in 0..100 {
                    f.write_all(&[b'x'; 10_000])?;
                }
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out).trim(), "1000000");
    }

    #[tokio::test]
    async fn a_child_that_stops_reading_reports_its_own_error() {
        let e = Cmd::new("sh")
            .args([
                "-c",
                "head -c 10 >/dev/null; echo restore broke >&2; exit 4",
            ])
            .feed(None, |mut f| loop {
                f.write_all(&[0u8; 65536])?;
            })
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("restore broke") && e.to_string().contains("exit code 4"),
            "{e}"
        );
    }
}
