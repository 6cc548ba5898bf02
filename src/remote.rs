//! Off-site copies with rclone: any backend rclone knows (Drive, S3, GCS, SFTP,
//! WebDAV...). Every call goes through the one process runner; kbackup's own
//! RCLONE_REMOTE_* settings are kept out of rclone's environment (rclone reads
//! RCLONE_* variables as its own options).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, FixedOffset};
use serde::Deserialize;

use crate::config::RemoteConfig;
use crate::process::{Cmd, ProcessError};

/// rclone 1.53 is the oldest with every flag used here (lsjson --files-only, check --one-way).
const MIN_VERSION: (u32, u32) = (1, 53);
const LIST_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct Remote {
    cfg: RemoteConfig,
    /// Show transfer progress (stderr is a terminal).
    progress: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RemoteFile {
    #[serde(rename = "Path")]
    pub path: String,
    #[serde(rename = "Size")]
    pub size: i64,
    #[serde(rename = "ModTime")]
    pub mod_time: DateTime<FixedOffset>,
}

impl Remote {
    pub fn new(cfg: RemoteConfig) -> Remote {
        let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
        Remote { cfg, progress }
    }

    /// `gdrive:kairon-backups`
    pub fn root(&self) -> String {
        self.cfg.root()
    }

    /// Whether retention may delete here (BACKUP_REMOTE_PRUNE).
    /// How status, metrics and alerts name this destination.
    pub fn label(&self) -> &str {
        &self.cfg.label
    }

    /// The retention this destination applies (its own keep counts over `base`).
    pub fn policy(&self, base: &crate::retention::Policy) -> crate::retention::Policy {
        self.cfg.policy(base)
    }

    pub fn prunes(&self) -> bool {
        self.cfg.prune
    }

    fn at(&self, rel: &str) -> String {
        if self.cfg.path.is_empty() {
            format!("{}:{rel}", self.cfg.name)
        } else {
            format!("{}/{rel}", self.root())
        }
    }

    fn rclone(&self) -> Cmd {
        let mut c = Cmd::new("rclone");
        for var in ["RCLONE_REMOTE_NAME", "RCLONE_REMOTE_PATH", "RCLONE_FLAGS"] {
            c = c.env_remove(var);
        }
        if let Some(conf) = &self.cfg.config {
            c = c.arg("--config").arg(conf);
        }
        // Secret-bearing flags go to rclone's environment, never its argv.
        let (args, env) = crate::secrets::split_rclone_flags(&self.cfg.flags);
        for (k, v) in env {
            c = c.secret_env(&k, v);
        }
        c.args(args)
    }

    /// Long transfers show progress on a terminal; under cron they stay quiet.
    fn transfer(&self) -> Cmd {
        if self.progress {
            self.rclone()
                .args([
                    "--stats",
                    "2s",
                    "--stats-one-line",
                    "--stats-log-level",
                    "NOTICE",
                ])
                .show_stderr(true)
        } else {
            self.rclone()
        }
    }

    /// rclone exists and is recent enough: the seed's "rclone not found" case, made clear.
    pub async fn check_rclone(&self) -> Result<()> {
        let out = match self.rclone().arg("version").output(Some(Duration::from_secs(30))).await {
            Ok(o) => o,
            Err(ProcessError::NotFound { .. }) => bail!(
                "rclone not found: RCLONE_REMOTE_NAME={} asks for off-site copies, which need rclone \
                 (apt-get install rclone, or https://rclone.org/install/), configured with `rclone config`",
                self.cfg.name
            ),
            Err(e) => return Err(anyhow!(e).context("cannot run rclone")),
        };
        let text = String::from_utf8_lossy(&out);
        let version = parse_version(&text)
            .ok_or_else(|| anyhow!("cannot read rclone's version from {text:?}"))?;
        if version < MIN_VERSION {
            bail!(
                "rclone {}.{} is too old: kbackup needs {}.{} or newer",
                version.0,
                version.1,
                MIN_VERSION.0,
                MIN_VERSION.1
            );
        }
        Ok(())
    }

    /// Proves the destination reachable and writable: a small probe object is
    /// written, read back and compared, then removed (`doctor`). With pruning
    /// off kbackup may not delete there: only a listing is tried.
    pub async fn probe(&self) -> Result<&'static str> {
        if !self.cfg.prune {
            self.list().await?;
            return Ok("listed (BACKUP_REMOTE_PRUNE=false: no probe object is written, since kbackup never deletes there)");
        }
        // A probe an interrupted run left (killed between writing and
        // removing it) goes first: probes never pile up.
        let _ = self
            .rclone()
            .args([
                "delete",
                "--max-depth",
                "1",
                "--include",
                "/.kbackup-doctor-*",
            ])
            .arg(self.root())
            .output(Some(LIST_TIMEOUT))
            .await;
        let rel = format!(".kbackup-doctor-{}", std::process::id());
        let body = format!("kbackup doctor probe {}\n", chrono::Utc::now().to_rfc3339());
        let dir = tempfile::tempdir().context("a temporary folder for the probe")?;
        std::fs::write(dir.path().join(&rel), &body)?;
        self.rclone()
            .arg("copyto")
            .arg(dir.path().join(&rel))
            .arg(self.at(&rel))
            .output(Some(LIST_TIMEOUT))
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("cannot write a probe object to {}", self.root()))?;
        let read = self
            .rclone()
            .arg("cat")
            .arg(self.at(&rel))
            .output(Some(LIST_TIMEOUT))
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("cannot read the probe object back from {}", self.root()));
        let removed = self
            .rclone()
            .arg("deletefile")
            .arg(self.at(&rel))
            .output(Some(LIST_TIMEOUT))
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("cannot remove the probe object {rel} from {}", self.root()));
        if read? != body.as_bytes() {
            bail!(
                "the probe object read back from {} differs from what was written",
                self.root()
            );
        }
        removed?;
        Ok("a probe object written, read back and removed")
    }

    /// Every file under the remote folder (an absent folder is empty).
    pub async fn list(&self) -> Result<Vec<RemoteFile>> {
        let cmd = self
            .rclone()
            .args(["lsjson", "-R", "--files-only", "--no-mimetype"])
            .arg(self.root());
        match cmd.output(Some(LIST_TIMEOUT)).await {
            Ok(out) => serde_json::from_slice(&out).context("rclone lsjson output"),
            Err(ProcessError::Failed { code: Some(3), .. }) => Ok(vec![]),
            Err(e) => Err(anyhow!(e)).with_context(|| format!("cannot list {}", self.root())),
        }
    }

    /// Copies `files` (relative to `local_root`) to the same paths on the remote.
    /// rclone checks each transfer's size and, where both sides have a common
    /// hash, its checksum.
    pub async fn upload(
        &self,
        local_root: &Path,
        files: &[String],
        timeout: Option<Duration>,
    ) -> Result<()> {
        let list = files_from(local_root, files)?;
        self.transfer()
            .args(["copy", "--no-traverse", "--files-from-raw"])
            .arg(list.path())
            .arg(local_root)
            .arg(self.root())
            .output(timeout)
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("uploading to {}", self.root()))?;
        Ok(())
    }

    /// Uploads one file so that it appears under its name only once complete:
    /// to `<rel>.kbackup-partial`, then renamed on the remote (a server-side
    /// move where the backend has one). A server that keeps writing what an
    /// interrupted client sent (rclone's WebDAV server does) leaves only a
    /// `.partial`, never a cut-off dump listed as a backup. `timeout` bounds
    /// the transfer.
    pub async fn upload_whole(
        &self,
        local_root: &Path,
        rel: &str,
        timeout: Option<Duration>,
    ) -> Result<()> {
        // A remote kbackup may not delete on (BACKUP_REMOTE_PRUNE=false) cannot
        // rename either (a rename deletes the source): the dump goes straight
        // to its name. Object stores make an upload appear whole or not at all.
        if !self.cfg.prune {
            self.transfer()
                .arg("copyto")
                .arg(local_root.join(rel))
                .arg(self.at(rel))
                .output(timeout)
                .await
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("uploading {rel} to {}", self.root()))?;
            return Ok(());
        }
        let partial = format!("{rel}.kbackup-partial");
        self.transfer()
            .arg("copyto")
            .arg(local_root.join(rel))
            .arg(self.at(&partial))
            .output(timeout)
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("uploading {rel} to {}", self.root()))?;
        self.rclone()
            .arg("moveto")
            .arg(self.at(&partial))
            .arg(self.at(rel))
            .output(Some(LIST_TIMEOUT))
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("moving the uploaded {rel} into place on {}", self.root()))?;
        Ok(())
    }

    /// Checks uploaded files against the local ones: size, and hash where the
    /// backend has one.
    pub async fn check(&self, local_root: &Path, files: &[String]) -> Result<()> {
        let list = files_from(local_root, files)?;
        self.rclone()
            .args(["check", "--one-way", "--files-from-raw"])
            .arg(list.path())
            .arg(local_root)
            .arg(self.root())
            .output(Some(LIST_TIMEOUT))
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("the uploaded files do not match on {}", self.root()))?;
        Ok(())
    }

    /// Deletes `files` in two rclone calls however many there are: the dumps
    /// first, then their sidecars (a sidecar left without its dump, should the
    /// second call fail, is ignored by every reader; a dump is never left
    /// without the manifest that says whose it is).
    pub async fn delete(&self, local_root: &Path, files: &[String]) -> Result<()> {
        let (dumps, sidecars): (Vec<String>, Vec<String>) = files.iter().cloned().partition(|f| {
            crate::naming::Format::split(f.rsplit('/').next().unwrap_or("")).is_some()
        });
        for batch in [dumps, sidecars] {
            if batch.is_empty() {
                continue;
            }
            let list = files_from(local_root, &batch)?;
            // One attempt: a retry lists the remote again, and a server whose
            // failed DELETE hid the file from its listing (rclone's own WebDAV
            // server caches it so) would make the retry "succeed".
            self.rclone()
                .args(["delete", "--retries", "1", "--files-from-raw"])
                .arg(list.path())
                .arg(self.root())
                .output(Some(LIST_TIMEOUT))
                .await
                .map_err(|e| anyhow!(e))
                .with_context(|| {
                    format!("cannot delete {} file(s) from {}", batch.len(), self.root())
                })?;
        }
        Ok(())
    }

    /// A small file's content (a manifest).
    pub async fn cat(&self, rel: &str) -> Result<Vec<u8>> {
        self.rclone()
            .arg("cat")
            .arg(self.at(rel))
            .output(Some(LIST_TIMEOUT))
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("cannot read {}", self.at(rel)))
    }

    /// Downloads one file to `to`.
    pub async fn download(&self, rel: &str, to: &Path, timeout: Option<Duration>) -> Result<()> {
        self.transfer()
            .arg("copyto")
            .arg(self.at(rel))
            .arg(to)
            .output(timeout)
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("cannot download {}", self.at(rel)))?;
        Ok(())
    }
}

/// A `--files-from-raw` list in a temporary file next to the store.
fn files_from(local_root: &Path, files: &[String]) -> Result<tempfile::NamedTempFile> {
    let mut f = crate::store::state_temp(local_root, "files")?;
    for rel in files {
        writeln!(f, "{rel}")?;
    }
    f.flush()?;
    Ok(f)
}

/// `rclone v1.60.1-DEV` -> (1, 60).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text
        .split_whitespace()
        .find(|w| w.starts_with('v'))?
        .trim_start_matches('v');
    let mut parts = v.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_version("rclone v1.60.1-DEV\n- os/version: debian"),
            Some((1, 60))
        );
        assert_eq!(parse_version("rclone v1.53.3"), Some((1, 53)));
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn paths_join_the_remote_folder() {
        let r = |path: &str| {
            Remote::new(RemoteConfig {
                label: "gdrive".into(),
                name: "gdrive".into(),
                path: path.into(),
                config: None,
                flags: vec![],
                prune: true,
                keep: Default::default(),
            })
        };
        assert_eq!(
            r("kairon-backups").at("hourly/x.dump.zst"),
            "gdrive:kairon-backups/hourly/x.dump.zst"
        );
        assert_eq!(r("").at("hourly/x.dump.zst"), "gdrive:hourly/x.dump.zst");
        assert_eq!(r("a/b/").root(), "gdrive:a/b");
    }
}
