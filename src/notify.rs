//! Alerts that never stay silent, and never change a job's result.
//!
//! Every failure (backup, rotation, off-site sync, verify, a run skipped because
//! the store is locked) calls [`alert`] where it happens. Channels: ntfy (Title,
//! Priority, Tags headers), Slack (incoming webhook), email (SMTP via lettre), a
//! generic JSON webhook, and a healthchecks.io-style ping URL (start, success,
//! fail) for dead-man's-switch monitoring. Success messages are opt-in per
//! channel. Each channel has a time budget (BACKUP_NOTIFY_TIMEOUT) that its one
//! retry must fit in, and channels are sent concurrently: a channel that hangs
//! delays the job by at most that budget. A channel that fails is logged.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use chrono::Local;
use serde_json::json;

use crate::config::{Alerting, Config, Email, NotifyConfig, Ntfy, SmtpTls};

/// Where alerts go and which database they are about: the whole settings, or
/// only the alert settings when the others could not be used.
pub trait Channels: Sync {
    fn db_name(&self) -> &str;
    fn notify(&self) -> &NotifyConfig;
}

impl Channels for Config {
    fn db_name(&self) -> &str {
        &self.db.name
    }
    fn notify(&self) -> &NotifyConfig {
        &self.notify
    }
}

impl Channels for Alerting {
    fn db_name(&self) -> &str {
        &self.db
    }
    fn notify(&self) -> &NotifyConfig {
        &self.notify
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Backup,
    Rotate,
    Sync,
    Verify,
    /// A verification that could not run (its server, not the backups).
    VerifyCannotRun,
    Restore,
    Cleanup,
    Locked,
    Test,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Backup => "backup",
            Kind::Rotate => "rotate",
            Kind::Sync => "sync",
            Kind::Verify | Kind::VerifyCannotRun => "verify",
            Kind::Restore => "restore",
            Kind::Cleanup => "cleanup",
            Kind::Locked => "locked",
            Kind::Test => "test",
        }
    }

    /// What the operator should look at.
    fn hint(self) -> &'static str {
        match self {
            Kind::Backup | Kind::Rotate => {
                "Run `kbackup status` and read BACKUP_DIR/backup.log; `kbackup backup --dry-run` shows what the job would do."
            }
            Kind::Sync => {
                "The local backup is kept. Check the remote (`rclone lsd REMOTE:`, credentials, quota); the next run uploads whatever is missing, or run `kbackup sync`."
            }
            Kind::Verify => "Do not rely on the failed backups; `kbackup verify --json` names the failing checks.",
            Kind::VerifyCannotRun => {
                "The backups were not judged: make the verification server usable (reachable, its container running, the role allowed CREATEDB) and run `kbackup verify` again."
            }
            Kind::Restore => {
                "Read the error: a restore that fails before its swap leaves the target as it was; `kbackup cleanup --dry-run` lists anything a stopped run left."
            }
            Kind::Cleanup => "`kbackup cleanup --dry-run` lists what is still left; the error names what could not be cleared.",
            Kind::Locked => {
                "Another kbackup run still holds the store: a backup that hangs (a lock wait, a slow remote)? The message names its pid."
            }
            Kind::Test => "Nothing to do: this is a test of the alert channels.",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Alert {
    pub kind: Kind,
    /// One line: what failed, on which database.
    pub title: String,
    /// The error.
    pub body: String,
}

/// A success, for the channels that opted in (size and duration, as the Kaizen seed sends).
#[derive(Debug, Clone)]
pub struct Success {
    pub title: String,
    pub body: String,
}

struct Message {
    ok: bool,
    kind: Kind,
    title: String,
    text: String,
    error: Option<String>,
}

pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn failure_message(cfg: &impl Channels, a: &Alert) -> Message {
    let host = host_name();
    Message {
        ok: false,
        kind: a.kind,
        title: format!(
            "kbackup {} {}: {} on {host}",
            a.kind.name(),
            if a.kind == Kind::VerifyCannotRun {
                "COULD NOT RUN"
            } else {
                "FAILED"
            },
            cfg.db_name()
        ),
        text: format!(
            "{}\n\nDatabase: {}\nHost: {host}\nTime: {}\n\nError: {}\n\nWhat to look at: {}",
            a.title,
            cfg.db_name(),
            Local::now().format("%Y-%m-%d %H:%M:%S %:z"),
            a.body,
            a.kind.hint()
        ),
        error: Some(a.body.clone()),
    }
}

static ALERTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this run has raised an alert already (so a failure alerts once).
pub fn alerted() -> bool {
    ALERTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Raises a failure alert on every configured channel (and the healthcheck's /fail).
/// Raises a failure alert: queued, and sent by [`send_queued`] once the run's
/// error has been said (main does it as every run ends), so the log reads
/// error first, then "alert sent".
pub async fn alert(cfg: &impl Channels, a: Alert) {
    ALERTED.store(true, std::sync::atomic::Ordering::SeqCst);
    let m = failure_message(cfg, &a);
    QUEUE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((m, a.kind));
}

static QUEUE: std::sync::Mutex<Vec<(Message, Kind)>> = std::sync::Mutex::new(Vec::new());

/// Sends the alerts this run raised, on every configured channel (and the
/// healthcheck's /fail for the scheduled job's kinds).
pub async fn send_queued(cfg: &impl Channels) {
    let queued = std::mem::take(&mut *QUEUE.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(one) = merged(queued) {
        let (m, kind) = one;
        let ping = async {
            // The healthcheck follows the scheduled job: backup and what it runs.
            if matches!(
                kind,
                Kind::Backup | Kind::Rotate | Kind::Sync | Kind::Locked
            ) {
                ping(cfg, "/fail", &m.text).await;
            }
        };
        let ((tried, sent), ()) = tokio::join!(send_all(cfg, &m, false), ping);
        // Said as it happened: nothing when no channel is set (or --no-alerts).
        match (tried, sent) {
            (0, _) => {}
            (_, 0) => tracing::warn!("The alert reached no channel: {}", m.title),
            _ => tracing::info!("Alert sent: {}", m.title),
        }
    }
}

/// A run pages once: several alerts raised by one run (a database's backup
/// and another's sync) become one message listing each. Its kind is the
/// first's, or a scheduled job's when any is (so the healthcheck hears /fail).
fn merged(mut queued: Vec<(Message, Kind)>) -> Option<(Message, Kind)> {
    if queued.len() <= 1 {
        return queued.pop();
    }
    let scheduled = |k: &Kind| matches!(k, Kind::Backup | Kind::Rotate | Kind::Sync | Kind::Locked);
    let kind = queued
        .iter()
        .map(|(_, k)| *k)
        .find(scheduled)
        .unwrap_or(queued[0].1);
    let host = host_name();
    let firsts: Vec<&str> = queued
        .iter()
        .map(|(m, _)| m.text.lines().next().unwrap_or(""))
        .collect();
    let m = Message {
        ok: false,
        kind,
        title: format!(
            "kbackup: {} failures on {host}: {}",
            queued.len(),
            firsts.join("; ")
        ),
        text: queued
            .iter()
            .map(|(m, _)| m.text.as_str())
            .collect::<Vec<_>>()
            .join("\n\n----\n\n"),
        error: Some(
            queued
                .iter()
                .filter_map(|(m, _)| m.error.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    };
    Some((m, kind))
}

/// Tells the channels that opted in that a backup succeeded, and pings the healthcheck.
pub async fn success(cfg: &impl Channels, s: Success) {
    let host = host_name();
    let m = Message {
        ok: true,
        kind: Kind::Backup,
        title: format!("kbackup backup OK: {} on {host}", cfg.db_name()),
        text: format!("{}\n\n{}", s.title, s.body),
        error: None,
    };
    tokio::join!(send_all(cfg, &m, true), ping(cfg, "", &m.text));
}

/// The healthcheck's /start ping, when a backup begins.
pub async fn started(cfg: &impl Channels) {
    ping(cfg, "/start", "").await;
}

/// `kbackup notify --test`: a test message on every channel; the results per channel.
pub async fn test(cfg: &impl Channels) -> Vec<(&'static str, Result<()>)> {
    let host = host_name();
    let m = Message {
        ok: true,
        kind: Kind::Test,
        title: format!("kbackup: Test notification from {host}"),
        text: format!(
            "Test notification from kbackup on {host} for database {}. If you read this, alerts reach you.",
            cfg.db_name()
        ),
        error: None,
    };
    let mut results = channels(cfg, &m, false).await;
    if let Some(url) = &cfg.notify().healthcheck {
        // A success ping: harmless, and proves the URL is right.
        results.push((
            "healthcheck",
            budget(cfg.notify().timeout, |t| {
                post_text(url.expose().to_string(), m.text.clone(), t)
            })
            .await,
        ));
    }
    results
}

/// Sends on every channel; (channels tried, channels that took it).
async fn send_all(cfg: &impl Channels, m: &Message, success_only: bool) -> (usize, usize) {
    let results = channels(cfg, m, success_only).await;
    let mut sent = 0;
    for (channel, result) in &results {
        match result {
            Ok(()) => {
                sent += 1;
                tracing::debug!("alert sent via {channel}")
            }
            Err(e) => {
                tracing::warn!("alert via {channel} failed (the job's result is unchanged): {e:#}")
            }
        }
    }
    (results.len(), sent)
}

/// Sends on every configured channel at once; `success_only` keeps the channels
/// that opted in to success messages.
async fn channels(
    cfg: &impl Channels,
    m: &Message,
    success_only: bool,
) -> Vec<(&'static str, Result<()>)> {
    let n = cfg.notify();
    let t = n.timeout;
    let wanted = |on_success: bool| !success_only || on_success;
    let ntfy = async {
        match &n.ntfy {
            Some(c) if wanted(c.on_success) => Some(("ntfy", budget(t, |t| ntfy(c, m, t)).await)),
            _ => None,
        }
    };
    let slack = async {
        match &n.slack {
            Some((url, on)) if wanted(*on) => {
                let body = json!({ "text": format!("*{}*\n{}", m.title, m.text) });
                Some((
                    "slack",
                    budget(t, |t| post_json(url.expose().to_string(), body.clone(), t)).await,
                ))
            }
            _ => None,
        }
    };
    let email = async {
        match &n.email {
            Some(c) if wanted(c.on_success) => Some(("email", budget(t, |t| email(c, m, t)).await)),
            _ => None,
        }
    };
    let webhook = async {
        match &n.webhook {
            Some((url, on)) if wanted(*on) => {
                let body = json!({
                    "event": m.kind.name(),
                    "ok": m.ok,
                    "database": cfg.db_name(),
                    "host": host_name(),
                    "title": m.title,
                    "message": m.text,
                    "error": m.error,
                    "time": Local::now().to_rfc3339(),
                });
                Some((
                    "webhook",
                    budget(t, |t| post_json(url.expose().to_string(), body.clone(), t)).await,
                ))
            }
            _ => None,
        }
    };
    let (a, b, c, d) = tokio::join!(ntfy, slack, email, webhook);
    [a, b, c, d].into_iter().flatten().collect()
}

async fn ping(cfg: &impl Channels, suffix: &str, body: &str) {
    let Some(url) = &cfg.notify().healthcheck else {
        return;
    };
    let target = format!("{}{suffix}", url.expose().trim_end_matches('/'));
    let body = body.chars().take(10_000).collect::<String>();
    if let Err(e) = budget(cfg.notify().timeout, |t| {
        post_text(target.clone(), body.clone(), t)
    })
    .await
    {
        tracing::warn!("healthcheck ping{suffix} failed (the job's result is unchanged): {e:#}");
    }
}

/// Runs `attempt` at most twice, each with half the budget, all within the budget.
async fn budget<F, Fut>(total: Duration, attempt: F) -> Result<()>
where
    F: Fn(Duration) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let each = total / 2;
    let tries = async {
        match attempt(each).await {
            Ok(()) => Ok(()),
            Err(first) => {
                tracing::debug!("alert attempt failed ({first:#}); retrying once");
                attempt(each).await
            }
        }
    };
    tokio::time::timeout(total, tries)
        .await
        .map_err(|_| anyhow!("no answer within {}", humantime::format_duration(total)))?
}

fn client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("kbackup/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("HTTP client")
}

async fn check(resp: reqwest::Response) -> Result<()> {
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    // The response body is not shown: servers echo the request's path,
    // which holds the webhook's token.
    bail!("HTTP {status} (the response is not shown: it may echo the address, a secret)")
}

/// A request's error with every cause under it ("error sending request:
/// client error (Connect): tcp connect error: Connection refused"), its URL
/// (a secret) left out.
fn causes(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

async fn post_json(url: String, body: serde_json::Value, t: Duration) -> Result<()> {
    // The URL is a secret (it carries the webhook's token): errors name the host only.
    let host = reqwest::Url::parse(&url)
        .ok()
        .and_then(|u| u.host_str().map(String::from))
        .unwrap_or_default();
    let resp = client(t)?
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| anyhow!("POST to {host}: {}", causes(e)))?;
    check(resp).await
}

async fn post_text(url: String, body: String, t: Duration) -> Result<()> {
    let host = reqwest::Url::parse(&url)
        .ok()
        .and_then(|u| u.host_str().map(String::from))
        .unwrap_or_default();
    let resp = client(t)?
        .post(&url)
        .body(body)
        .send()
        .await
        .map_err(|e| anyhow!("POST to {host}: {}", causes(e)))?;
    check(resp).await
}

async fn ntfy(c: &Ntfy, m: &Message, t: Duration) -> Result<()> {
    let url = format!("{}/{}", c.url.trim_end_matches('/'), c.topic);
    let (priority, tags) = if m.ok {
        ("default", "white_check_mark")
    } else {
        (c.priority.as_str(), c.tags.as_str())
    };
    let mut req = client(t)?
        .post(&url)
        .header("Title", header_safe(&m.title))
        .header("Priority", priority)
        .body(m.text.clone());
    if !tags.is_empty() {
        req = req.header("Tags", tags);
    }
    if let Some(token) = &c.token {
        req = req.bearer_auth(token.expose());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow!("POST to {}: {}", crate::secrets::show_url(&url), causes(e)))?;
    check(resp).await
}

/// HTTP header values must be visible ASCII: ntfy titles are kept readable.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

async fn email(c: &Email, m: &Message, t: Duration) -> Result<()> {
    use lettre::message::{header::ContentType, Mailbox};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message as Mail, Tokio1Executor};

    let from: Mailbox = match &c.from {
        Some(f) => f.parse()?,
        None => format!("kbackup@{}", host_name())
            .parse()
            .unwrap_or_else(|_| "kbackup@localhost".parse().expect("valid")),
    };
    let mut builder = Mail::builder()
        .from(from)
        .subject(&m.title)
        .header(ContentType::TEXT_PLAIN);
    for to in &c.to {
        builder = builder.to(to.parse()?);
    }
    let mail = builder.body(m.text.clone())?;
    let mut transport = match c.tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host),
        SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&c.host)?,
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&c.host)?,
    }
    .port(c.port)
    .timeout(Some(t));
    if let (Some(user), Some(pass)) = (&c.user, &c.password) {
        transport =
            transport.credentials(Credentials::new(user.clone(), pass.expose().to_string()));
    }
    transport
        .build()
        .send(mail)
        .await
        .map_err(|e| anyhow!("SMTP {}:{}: {e}", c.host, c.port))?;
    Ok(())
}
