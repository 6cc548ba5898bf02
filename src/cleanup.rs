//! Undo guards: what a run must undo if it does not finish.
//!
//! A step that changes something outside its own memory (creates a scratch
//! database, closes the target to connections, writes a large temporary file,
//! drops the target of an in-place restore) registers its undo *before* it
//! runs, and disarms it with [`Registered::done`] once the step is over or
//! undone on the normal path. Whatever is still registered when the command ends
//! (an error returned anywhere, an early return, SIGINT/SIGTERM/SIGHUP) is run by
//! `main` through [`run_pending`]: the whole class of "cleanup only on the happy
//! path" goes away.
//!
//! SQL undo actions are also journaled in `BACKUP_DIR/.kbackup/undo/` (server
//! and statements, never a password), so that what a `kill -9` stranded is found
//! by the next run and undone by `kbackup cleanup`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::DbConfig;
use crate::postgres::Postgres;

enum Undo {
    /// Statements run on the maintenance database.
    Sql {
        pg: Postgres,
        statements: Vec<String>,
        journal: Option<PathBuf>,
    },
    /// A temporary file or folder to remove (if its owner has not already).
    File(PathBuf),
    /// A temporary file inside the server's container (docker mode).
    ContainerFile {
        pg: Postgres,
        path: String,
        journal: Option<PathBuf>,
    },
    /// Something that cannot be undone, said plainly if the run stops.
    Notice {
        message: String,
        journal: Option<PathBuf>,
    },
}

struct Action {
    id: u64,
    undo: Undo,
}

static PENDING: Mutex<Vec<Action>> = Mutex::new(Vec::new());
static NEXT: Mutex<u64> = Mutex::new(0);
static JOURNAL: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The folder of the undo journal in a store.
pub fn journal_dir(store_root: &Path) -> PathBuf {
    store_root.join(crate::store::STATE_DIR).join("undo")
}

/// Journals SQL undo actions in `store_root` from now on (commands that may
/// change a server call this; dry runs do not).
pub fn journal_in(store_root: &Path) {
    *JOURNAL.lock().unwrap_or_else(|e| e.into_inner()) = Some(journal_dir(store_root));
}

/// A registered undo action. It stays registered until [`done`](Registered::done):
/// dropping it (as an interrupt drops the command's future, or `?` returns
/// early) keeps it, so that `run_pending` finds it.
#[must_use = "call done() once the step is over or undone"]
pub struct Registered(u64);

impl Registered {
    /// The step is over (or was undone on the normal path): forget the action.
    pub fn done(self) {
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = pending.iter().position(|a| a.id == self.0) {
            match pending.remove(i).undo {
                Undo::Sql {
                    journal: Some(p), ..
                }
                | Undo::ContainerFile {
                    journal: Some(p), ..
                }
                | Undo::Notice {
                    journal: Some(p), ..
                } => {
                    let _ = std::fs::remove_file(p);
                }
                _ => {}
            }
        }
    }
}

/// Registers the action that `make` builds from its id.
fn push_with(make: impl FnOnce(u64) -> Undo) -> Registered {
    let mut n = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    *n += 1;
    let undo = make(*n);
    PENDING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Action { id: *n, undo });
    Registered(*n)
}

fn push(undo: Undo) -> Registered {
    push_with(|_| undo)
}

/// Registers statements (run on the maintenance database) that undo a step:
/// call it before the step's own statement.
pub fn register(pg: &Postgres, statements: Vec<String>) -> Registered {
    push_with(|id| Undo::Sql {
        journal: journal_entry(
            Entry {
                pid: std::process::id(),
                session: Some(crate::postgres::session_name().to_string()),
                run: None,
                server: Some(ServerRef::of(&pg.db)),
                statements: statements.clone(),
                note: None,
                incomplete: None,
                container_file: None,
            },
            id,
        ),
        pg: pg.clone(),
        statements,
    })
}

/// Registers the removal of `path` inside the container of `pg` (docker
/// mode): call it before the file is written. Journaled, so that a run killed
/// outright leaves nothing in the container that the next run does not find.
pub fn remove_in_container(pg: &Postgres, path: &str) -> Registered {
    push_with(|id| Undo::ContainerFile {
        journal: journal_entry(
            Entry {
                container_file: pg.db.container.clone().map(|container| ContainerFile {
                    container,
                    path: path.to_string(),
                }),
                ..Entry::of_this_run()
            },
            id,
        ),
        pg: pg.clone(),
        path: path.to_string(),
    })
}

/// Removes `path` inside `container` (a missing file is no error).
pub async fn remove_container_file(container: &str, path: &str) -> anyhow::Result<()> {
    crate::process::Cmd::new("docker")
        .args(["exec", container, "rm", "-f", "--", path])
        .label("docker exec rm")
        .output(Some(Duration::from_secs(60)))
        .await
        .map(|_| ())
        .map_err(|e| {
            anyhow::anyhow!(e).context(format!("cannot remove {path} in container {container}"))
        })
}

/// Registers a temporary file (or folder) to remove when the run ends, however
/// it ends: its owner normally removes it first; a blocking thread still
/// writing it when a signal stops the run would not.
pub fn remove_at_exit(path: &Path) {
    let _ = push(Undo::File(path.to_path_buf()));
}

/// A notice that `database` is incomplete until the step is done: a run killed
/// before then leaves it journaled, and the next backup refuses to back that
/// database up (it would become the newest backup of a half-restored database).
pub fn notice_incomplete(message: String, database: &str) -> Registered {
    notice_about(message, Some(database.to_string()))
}

/// Registers what to tell the operator if the run stops before `done` (also
/// journaled: a run killed outright is reported by the next one).
fn notice_about(message: String, incomplete: Option<String>) -> Registered {
    push_with(|id| Undo::Notice {
        journal: journal_entry(
            Entry {
                note: Some(message.clone()),
                incomplete,
                ..Entry::of_this_run()
            },
            id,
        ),
        message,
    })
}

/// Runs every registered undo action, newest first; returns the notices of
/// steps that cannot be undone (to be said in the final error).
pub async fn run_pending() -> Vec<String> {
    let actions: Vec<Action> =
        std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()));
    if !actions.is_empty() {
        crate::postgres::begin_undo();
    }
    let mut notices = Vec::new();
    for a in actions.into_iter().rev() {
        match a.undo {
            Undo::Sql {
                pg,
                statements,
                journal,
            } => {
                let what = statements.join("; ");
                if what.is_empty() {
                    tracing::warn!("Undoing: end this run's sessions");
                } else {
                    tracing::warn!("Undoing: end this run's sessions; {what}");
                }
                let sql = undo_sql(Some(crate::postgres::session_name()), &statements);
                match pg.admin(&sql, Some(Duration::from_secs(30))).await {
                    Ok(_) => {
                        if let Some(p) = journal {
                            let _ = std::fs::remove_file(p);
                        }
                    }
                    Err(e) => {
                        tracing::error!(
                            "could not undo ({what}): {e:#}; `kbackup cleanup` will try again"
                        );
                        // The run's last word must not claim it was undone.
                        notices.push(format!(
                            "Could not undo ({what}): run `kbackup cleanup` once the server answers."
                        ));
                    }
                }
            }
            Undo::File(p) => {
                let removed = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                if removed.is_ok() {
                    tracing::warn!("Removed the temporary file {}", p.display());
                }
            }
            Undo::ContainerFile { pg, path, journal } => {
                let Some(container) = pg.db.container.as_deref() else {
                    continue;
                };
                match remove_container_file(container, &path).await {
                    Ok(()) => {
                        tracing::warn!(
                            "Removed the temporary file {path} in container {container}"
                        );
                        if let Some(p) = journal {
                            let _ = std::fs::remove_file(p);
                        }
                    }
                    Err(e) => {
                        tracing::error!("{e:#}; `kbackup cleanup` will try again");
                        notices.push(format!(
                            "Could not remove {path} in container {container}: run `kbackup cleanup` once the container runs."
                        ));
                    }
                }
            }
            Undo::Notice { message, journal } => {
                notices.push(message);
                if let Some(p) = journal {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
    notices
}

/// What an undo runs: the run's sessions ended first (a statement in flight
/// when the run stopped must not land after its undo), then `statements`.
pub fn undo_sql(session: Option<&str>, statements: &[String]) -> Vec<String> {
    session
        .map(crate::postgres::end_sessions_sql)
        .into_iter()
        .chain(statements.iter().cloned())
        .collect()
}

/// One journaled undo action, as `kbackup cleanup` reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The kbackup process that registered it.
    pub pid: u32,
    /// The application_name of its sessions, ended before the statements run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Its run (see `run_id`): alive while it holds its lock.
    #[serde(default)]
    pub run: Option<String>,
    /// Where the statements run (None: a note only).
    pub server: Option<ServerRef>,
    pub statements: Vec<String>,
    /// What the operator must know (a step that cannot be undone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A database this run left incomplete (an in-place restore killed midway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
    /// A temporary file this run wrote inside the server's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_file: Option<ContainerFile>,
}

/// A file inside a container (docker mode), by the container's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerFile {
    pub container: String,
    pub path: String,
}

impl Entry {
    /// An entry of this process that undoes nothing yet.
    fn of_this_run() -> Entry {
        Entry {
            pid: std::process::id(),
            session: None,
            run: None,
            server: None,
            statements: vec![],
            note: None,
            incomplete: None,
            container_file: None,
        }
    }
}

/// Where the statements run: the connection settings without any password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRef {
    pub host: Option<String>,
    pub port: u16,
    pub container: Option<String>,
    pub user: String,
    pub maintenance_db: String,
}

impl ServerRef {
    pub fn of(db: &DbConfig) -> ServerRef {
        ServerRef {
            host: db.host.clone(),
            port: db.port,
            container: db.container.clone(),
            user: db.user.clone(),
            maintenance_db: db.maintenance_db.clone(),
        }
    }

    /// `db` pointed at this server; its password kept only when `db` is the same server.
    pub fn apply(&self, db: &DbConfig) -> DbConfig {
        let same = ServerRef::of(db) == *self;
        DbConfig {
            host: self.host.clone(),
            port: self.port,
            container: self.container.clone(),
            user: self.user.clone(),
            maintenance_db: self.maintenance_db.clone(),
            password: if same { db.password.clone() } else { None },
            ..db.clone()
        }
    }
}

fn journal_entry(mut entry: Entry, id: u64) -> Option<PathBuf> {
    let dir = JOURNAL.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
    let root = dir.parent()?.parent()?;
    let run = run_id(root)?;
    entry.run = Some(run.clone());
    let path = dir.join(format!("{run}-{id}.json"));
    let bytes = serde_json::to_vec_pretty(&entry).ok()?;
    match crate::store::write_replace(&path, &bytes) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!("cannot journal an undo action in {}: {e:#}", dir.display());
            None
        }
    }
}

/// The journal's entries left by processes that are gone: (file, entry).
pub fn stranded(store_root: &Path) -> Vec<(PathBuf, Entry)> {
    let Ok(rd) = std::fs::read_dir(journal_dir(store_root)) else {
        return vec![];
    };
    let mut out: Vec<(PathBuf, Entry)> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| {
            let entry: Entry = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            let alive = match &entry.run {
                Some(run) => run_alive(store_root, run),
                None => false,
            };
            (!alive).then(|| (e.path(), entry))
        })
        .collect();
    out.sort_by(|a, b| b.0.cmp(&a.0));
    out
}

/// Checks, before a run changes a server, that its undo steps can be
/// journaled in the store (a full disk would let a `kill -9` strand a scratch
/// database that no later run knows of): this run's lock and a probe entry.
pub fn journal_ready(store_root: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = journal_dir(store_root);
    let probe = dir.join(format!(".probe-{}.json", std::process::id()));
    let ready = (|| -> anyhow::Result<()> {
        run_id(store_root).context("cannot create this run's lock in .kbackup/runs")?;
        crate::store::write_replace(&probe, b"{}")?;
        std::fs::remove_file(&probe)?;
        Ok(())
    })();
    ready.with_context(|| {
        format!(
            "cannot journal this run's undo steps in {}: nothing was changed on the server (a run killed \
             midway could otherwise leave what no later run can find)",
            dir.display()
        )
    })
}

/// This run's identity in a store: `<pid>-<start in ns>`, with an exclusive
/// lock held on `.kbackup/runs/<id>.lock` for as long as the process lives.
/// Whether a run is alive is asked of that lock, not of a pid: a pid means
/// nothing in another pid namespace (a container, a Kubernetes pod), under
/// another binary name, or once reused; a lock is released by the kernel when
/// its holder dies, however it dies.
static RUN: Mutex<Option<(String, std::fs::File, PathBuf)>> = Mutex::new(None);

pub fn run_id(store_root: &Path) -> Option<String> {
    let mut run = RUN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((id, _, _)) = run.as_ref() {
        return Some(id.clone());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = format!("{}-{nanos}", std::process::id());
    let dir = runs_dir(store_root);
    let file = crate::store::private_lock(&dir, &format!("{id}.lock")).ok()?;
    *run = Some((id.clone(), file, dir.join(format!("{id}.lock"))));
    Some(id)
}

/// The run is over (after [`run_pending`]): its lock file goes. A journal entry
/// left by an undo that failed is then seen as stranded, as it should be.
pub fn end_run() {
    if let Some((_, file, path)) = RUN.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = std::fs::remove_file(path);
        drop(file);
    }
}

fn runs_dir(store_root: &Path) -> PathBuf {
    store_root.join(crate::store::STATE_DIR).join("runs")
}

/// The journaled notices of killed runs that left `database` incomplete.
pub fn incomplete(store_root: &Path, database: &str) -> Vec<(PathBuf, Entry)> {
    stranded(store_root)
        .into_iter()
        .filter(|(_, e)| e.incomplete.as_deref() == Some(database))
        .collect()
}

/// Whether the run `id` still holds its lock. A lock file nobody holds is
/// removed (its run is gone).
pub fn run_alive(store_root: &Path, id: &str) -> bool {
    let path = runs_dir(store_root).join(format!("{id}.lock"));
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = std::fs::remove_file(&path);
            false
        }
        Err(_) => true,
    }
}
