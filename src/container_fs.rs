//! Docker mode on the Docker host itself: files in the server container's
//! `/tmp` reached from the host through `/proc/<pid>/root`, so that the dump
//! and the restore's copy of the archive move through the kernel, not through
//! `docker exec`'s stream (which, on two cores, takes as much CPU as pg_dump:
//! see the README's Benchmark).
//!
//! Used only when proven to work for this container: kbackup runs on the
//! engine's host with the rights to enter the container's filesystem (root),
//! and a token written from the host reads back through `docker exec`. Any
//! other setup (kbackup in a container, a remote DOCKER_HOST, a user without
//! those rights) uses `docker exec` as before.
//!
//! Every path is resolved inside the container's root (`openat2` with
//! `RESOLVE_IN_ROOT`): a symlink the container planted in its `/tmp` cannot
//! lead a write out of the container. Files are made exclusively (never an
//! existing one) and belong to the user `docker exec` runs as in the container.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::postgres::Postgres;
use crate::process::Cmd;

/// The container's `/tmp`, seen from the host.
pub struct ContainerFs {
    /// `/tmp` inside the container (an O_PATH descriptor).
    tmp: OwnedFd,
    /// The host uid and gid of the user `docker exec` runs as in the container.
    owner: (u32, u32),
}

const ASK: Duration = Duration::from_secs(30);

impl ContainerFs {
    /// The container's `/tmp` when it can be reached from here (see the
    /// module's documentation); None otherwise (said at debug level).
    pub async fn open(pg: &Postgres) -> Option<ContainerFs> {
        match Self::probe(pg).await {
            Ok(fs) => Some(fs),
            Err(why) => {
                tracing::debug!("files in the container go through docker exec: {why}");
                None
            }
        }
    }

    async fn probe(pg: &Postgres) -> Result<ContainerFs, String> {
        let container = pg.db.container.as_deref().ok_or("not in docker mode")?;
        let pid = Cmd::new("docker")
            .args(["inspect", "--format", "{{.State.Pid}}", container])
            .output(Some(ASK))
            .await
            .map_err(|e| format!("docker inspect: {e}"))?;
        let pid: u32 = String::from_utf8_lossy(&pid)
            .trim()
            .parse()
            .map_err(|_| "no process id from docker inspect".to_string())?;
        if pid == 0 {
            return Err("the container is not running".into());
        }
        let root = open_path(
            None,
            &format!("/proc/{pid}/root"),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| format!("/proc/{pid}/root: {e}"))?;
        let tmp = open_path(Some(&root), "tmp", libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(|e| format!("/tmp in the container: {e}"))?;
        // The same container, seen from both sides: a token written from
        // here must read back through docker exec (a pid of another
        // machine's or namespace's process would not show it).
        let token = format!("{:016x}{:016x}", rand_u64(), rand_u64());
        let name = format!("kbackup-probe-{token}");
        // Removed whatever happens to this run (journaled like any file it
        // leaves in the container).
        let guard = crate::cleanup::remove_in_container(pg, &format!("/tmp/{name}"));
        let file = create_in(&tmp, &name, 0o644).map_err(|e| format!("writing a probe: {e}"))?;
        let written = io::Write::write_all(&mut &file, token.as_bytes());
        drop(file);
        let answer = pg
            .in_container(
                &["sh", "-c", &format!("id -u && id -g && cat /tmp/{name}")],
                false,
            )
            .ok_or("not in docker mode")?
            .output(Some(ASK))
            .await;
        if unlink_in(&tmp, &name).is_ok() {
            guard.done();
        }
        written.map_err(|e| format!("writing a probe: {e}"))?;
        let answer = answer.map_err(|e| format!("docker exec: {e}"))?;
        let text = String::from_utf8_lossy(&answer);
        let mut lines = text.lines();
        let (uid, gid, seen) = (lines.next(), lines.next(), lines.next());
        if seen != Some(token.as_str()) {
            return Err("a file written from the host is not seen in the container".into());
        }
        let parse = |s: Option<&str>| s.and_then(|s| s.trim().parse::<u32>().ok());
        let (uid, gid) = (parse(uid).ok_or("no uid")?, parse(gid).ok_or("no gid")?);
        let map = |kind: &str, id: u32| -> Result<u32, String> {
            let text = std::fs::read_to_string(format!("/proc/{pid}/{kind}_map"))
                .map_err(|e| format!("/proc/{pid}/{kind}_map: {e}"))?;
            host_id(&text, id).ok_or_else(|| format!("{kind} {id} has no host id"))
        };
        Ok(ContainerFs {
            tmp,
            owner: (map("uid", uid)?, map("gid", gid)?),
        })
    }

    /// Makes `/tmp/<name>` for writing: a new file (never an existing one),
    /// 0600, owned by the container's exec user.
    pub fn create(&self, name: &str) -> io::Result<File> {
        let fd = create_in(&self.tmp, name, 0o600)?;
        self.chown(name)?;
        Ok(fd)
    }

    /// Makes the FIFO `/tmp/<name>` (0600, owned by the container's exec user).
    pub fn mkfifo(&self, name: &str) -> io::Result<()> {
        let c = CString::new(name).map_err(io::Error::other)?;
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        if unsafe { libc::mkfifoat(self.tmp.as_raw_fd(), c.as_ptr(), 0o600) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.chown(name)
    }

    /// Opens `/tmp/<name>` for reading (for a FIFO: waits for its writer).
    pub fn open_read(&self, name: &str) -> io::Result<File> {
        open_path(Some(&self.tmp), name, libc::O_RDONLY, 0).map(File::from)
    }

    /// Lets go of a reader of the FIFO `/tmp/<name>` whose writer is gone
    /// (or never came): opens it for writing and closes it, so that a reader
    /// waiting in [`open_read`](Self::open_read) sees the end. The reader may
    /// not be waiting yet (its thread not started): tried until `opened`
    /// says it is past its open, on a thread of its own (for up to a minute).
    pub fn release_reader(
        self: &std::sync::Arc<Self>,
        name: &str,
        opened: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        let (fs, name) = (self.clone(), name.to_string());
        std::thread::spawn(move || {
            for _ in 0..6000 {
                if opened.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let writer = open_path(Some(&fs.tmp), &name, libc::O_WRONLY | libc::O_NONBLOCK, 0);
                if writer.is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    }

    /// Bytes free in the container's `/tmp`.
    pub fn free_space(&self) -> io::Result<u64> {
        let fd = open_path(Some(&self.tmp), ".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        // SAFETY: a zeroed statvfs is a valid out-parameter for fstatvfs.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a pointer to a statvfs.
        if unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }

    pub fn remove(&self, name: &str) -> io::Result<()> {
        match unlink_in(&self.tmp, name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn chown(&self, name: &str) -> io::Result<()> {
        let c = CString::new(name).map_err(io::Error::other)?;
        let (uid, gid) = self.owner;
        // SAFETY: a valid directory descriptor and a NUL-terminated name; the
        // file was just made by this process, and links are not followed.
        let r = unsafe {
            libc::fchownat(
                self.tmp.as_raw_fd(),
                c.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The host id of `id` inside a user namespace, from its `uid_map` or
/// `gid_map` text (lines of `inside outside count`).
fn host_id(map: &str, id: u32) -> Option<u32> {
    map.lines().find_map(|l| {
        let mut f = l.split_whitespace().map(|x| x.parse::<u64>().ok());
        let (inside, outside, count) = (f.next()??, f.next()??, f.next()??);
        let id = u64::from(id);
        (id >= inside && id < inside + count)
            .then(|| u32::try_from(outside + (id - inside)).ok())
            .flatten()
    })
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: a valid buffer of its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        // Only the probe's uniqueness depends on it.
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(b)
}

/// `openat2(dir, path, flags, mode)` with every path resolved inside `dir`'s
/// root when `dir` is given (RESOLVE_IN_ROOT), and links in the last
/// component never followed; `dir` None opens an absolute host path.
fn open_path(dir: Option<&OwnedFd>, path: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = CString::new(std::ffi::OsStr::new(path).as_bytes()).map_err(io::Error::other)?;
    // SAFETY: open_how is plain integers; zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    // The host path (/proc/<pid>/root) is itself a link to follow.
    let nofollow = if dir.is_some() { libc::O_NOFOLLOW } else { 0 };
    how.flags = (flags | libc::O_CLOEXEC | nofollow) as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve = if dir.is_some() {
        libc::RESOLVE_IN_ROOT
    } else {
        0
    };
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: openat2 with a valid descriptor (or AT_FDCWD), a NUL-terminated
    // path and an open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn create_in(dir: &OwnedFd, name: &str, mode: u32) -> io::Result<File> {
    open_path(
        Some(dir),
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        mode,
    )
    .map(File::from)
}

fn unlink_in(dir: &OwnedFd, name: &str) -> io::Result<()> {
    let c = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_through_the_namespace() {
        assert_eq!(
            host_id("         0          0 4294967295\n", 999),
            Some(999)
        );
        let remapped = "0 100000 65536\n";
        assert_eq!(host_id(remapped, 0), Some(100000));
        assert_eq!(host_id(remapped, 70), Some(100070));
        assert_eq!(host_id(remapped, 65536), None);
        assert_eq!(host_id("", 0), None);
    }

    #[test]
    fn paths_stay_inside_the_root_they_are_resolved_in() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("tmp")).unwrap();
        // A planted absolute symlink, and a relative one climbing out.
        std::os::unix::fs::symlink(outside.path(), root.path().join("tmp/abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.path().join("tmp/up")).unwrap();
        let dir = open_path(
            None,
            &root.path().display().to_string(),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .unwrap();
        for via in ["tmp/abs/x", "tmp/up/x"] {
            let _ = create_in(&dir, via, 0o600);
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // A link as the last component is never opened.
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("tmp/link"))
            .unwrap();
        assert!(create_in(&dir, "tmp/link", 0o600).is_err());
        assert!(open_path(Some(&dir), "tmp/link", libc::O_RDONLY, 0).is_err());
        assert_eq!(
            std::fs::read_to_string(outside.path().join("secret")).unwrap(),
            "s"
        );
    }
}
