//! Process plumbing a service manager expects: the pid file, the open-file
//! limit, and systemd's readiness notification.
//!
//! Owns: [`PidFile`] (written without following symlinks, removed on exit
//! only if it still names this process), [`signal_pid_file`] (what
//! `keycore reload` signals, refusing stale files), [`raise_nofile_limit`] (soft limit
//! up to the hard one, with the figure the config needs), and
//! [`sd_notify`] (`READY=1` / `STOPPING=1` / `STATUS=` datagrams to
//! `$NOTIFY_SOCKET`, the whole protocol `Type=notify` needs — no libsystemd).
//!
//! Must not: run on a reactor; these are start-up and shutdown steps.

use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A pid file owned by this process; removed by [`PidFile::remove`] or drop.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Write this process's id to `path`.
    ///
    /// The pid is written to a fresh temporary file in the same directory
    /// (created with `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0644, so an attacker's
    /// symlink or pre-created file there is refused) and renamed over
    /// `path`. `rename(2)` replaces a symlink at `path` instead of following
    /// it, so a link planted at the pid file's name can never make keycore
    /// overwrite its target (issue 12 item 10). A stale pid file from a
    /// crash is simply replaced.
    pub fn create(path: &Path) -> std::io::Result<PidFile> {
        let pid = std::process::id();
        write_file_atomic(path, format!("{pid}\n").as_bytes(), 0o644)?;
        Ok(PidFile {
            path: path.to_owned(),
            pid,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the file if it still holds this process's id (another
    /// instance may have replaced it; never delete theirs).
    pub fn remove(&self) {
        remove_pid_file_if(&self.path, self.pid);
    }
}

/// Write `contents` to `path` as a new file with exactly `mode`, atomically
/// and without following a symlink (the pid file, enrollment's key, CSR and
/// certificate).
///
/// The bytes go to a fresh temporary file in the same directory (created
/// with `O_CREAT|O_EXCL|O_NOFOLLOW`, so an attacker's symlink or pre-created
/// file there is refused; mode set with `fchmod`, so the umask cannot widen
/// or narrow it), are synced, and the file is renamed over `path`.
/// `rename(2)` replaces a symlink at `path` instead of following it, so a
/// link planted at the name never makes keycore overwrite its target; a
/// reader sees the old file or the whole new one, never a part.
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Remove the pid file at `path` if it is a regular file holding `pid`
/// (for exits that do not own a [`PidFile`], e.g. the third signal).
pub fn remove_pid_file_if(path: &Path, pid: u32) {
    let ours = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_file())
        .unwrap_or(false)
        && std::fs::read_to_string(path)
            .map(|s| s.trim() == pid.to_string())
            .unwrap_or(false);
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Why [`signal_pid_file`] could not signal the server.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// No pid file configured.
    #[error("pid_file is not set in the configuration, so there is no process to signal; set pid_file (or --pid-file) for keycore serve and keycore reload")]
    NoPidFile,
    /// The file is missing or unreadable.
    #[error("pid_file {path}: cannot read it (is keycore serve running with this configuration?)")]
    Unreadable {
        /// The pid file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no process id.
    #[error("pid_file {path}: does not hold a process id")]
    NotAPid {
        /// The pid file.
        path: PathBuf,
    },
    /// No such process.
    #[error("pid_file {path}: process {pid} is not running (a stale pid file from a server that did not exit cleanly)")]
    Stale {
        /// The pid file.
        path: PathBuf,
        /// The pid it names.
        pid: u32,
    },
    /// The process is not keycore (the pid was reused).
    #[error("pid_file {path}: process {pid} is {comm:?}, not keycore (a stale pid file whose pid was reused); not signalled")]
    NotKeycore {
        /// The pid file.
        path: PathBuf,
        /// The pid it names.
        pid: u32,
        /// What runs under that pid.
        comm: String,
    },
    /// kill(2) failed (permissions).
    #[error("cannot signal process {pid} from pid_file {path}")]
    Kill {
        /// The pid file.
        path: PathBuf,
        /// The pid it names.
        pid: u32,
        /// Why.
        source: std::io::Error,
    },
}

/// Largest pid file read (a pid is at most 7 digits and a newline).
const MAX_PID_FILE_BYTES: u64 = 64;

/// Send `signal` to the keycore process named by the pid file at `path`
/// (`keycore reload`). Refuses a missing, malformed or stale file, and a
/// pid that now belongs to a process that is not keycore (checked through
/// `/proc/PID/comm` where it is readable). Returns the pid signalled.
pub fn signal_pid_file(path: Option<&Path>, signal: i32) -> Result<u32, SignalError> {
    use std::io::Read as _;
    let path = path.ok_or(SignalError::NoPidFile)?;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PID_FILE_BYTES).read_to_string(&mut text))
        .map_err(|source| SignalError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
    let pid: u32 = text
        .trim()
        .parse()
        .ok()
        .filter(|&p| p > 1 && p <= i32::MAX as u32)
        .ok_or_else(|| SignalError::NotAPid {
            path: path.to_owned(),
        })?;
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid as i32, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return Err(SignalError::Stale {
            path: path.to_owned(),
            pid,
        });
    }
    if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        let comm = comm.trim().to_owned();
        // comm is the executable's name cut to 15 bytes; reactor threads
        // rename themselves, the process (main thread) keeps it.
        if !comm.starts_with("keycore") {
            return Err(SignalError::NotKeycore {
                path: path.to_owned(),
                pid,
                comm,
            });
        }
    }
    // SAFETY: kill(2) on a pid read from the server's pid file, checked above.
    if unsafe { libc::kill(pid as i32, signal) } != 0 {
        return Err(SignalError::Kill {
            path: path.to_owned(),
            pid,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(pid)
}

/// The open-file limit before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// Soft limit found at start.
    pub before: u64,
    /// Soft limit now.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
    /// What the configuration can use at once.
    pub needed: u64,
}

impl NofileLimit {
    /// True when the soft limit covers `needed`.
    pub fn enough(&self) -> bool {
        self.soft >= self.needed
    }
}

/// Descriptors beyond connections: listeners, key files while loading,
/// PKCS#11 module sockets, KMS HTTP connections, the metrics endpoint's
/// connections, log and pid files, eventfds and io_uring rings per core.
pub const NOFILE_SLACK: u64 = 1024;

/// File descriptors a configuration can hold at once:
/// `cores × max_connections_per_core + NOFILE_SLACK`.
pub fn nofile_needed(cores: usize, max_connections_per_core: u64) -> u64 {
    (cores as u64)
        .saturating_mul(max_connections_per_core)
        .saturating_add(NOFILE_SLACK)
}

/// Raise RLIMIT_NOFILE's soft limit to the hard limit (never lowers it).
/// An unlimited hard limit is capped at the kernel's `fs.nr_open`, the most
/// `setrlimit` accepts.
pub fn raise_nofile_limit(needed: u64) -> std::io::Result<NofileLimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = r.rlim_cur;
    let mut target = r.rlim_max;
    if target == libc::RLIM_INFINITY {
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if target > r.rlim_cur {
        let new = libc::rlimit {
            rlim_cur: target,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            r.rlim_cur = target;
        }
    }
    Ok(NofileLimit {
        before,
        soft: r.rlim_cur,
        hard: r.rlim_max,
        needed,
    })
}

/// Send a state to systemd (`sd_notify(3)` protocol) if `$NOTIFY_SOCKET` is
/// set. Returns whether a message was sent. Without a service manager
/// (no variable) it is a no-op, so `Type=simple` and containers are fine.
pub fn sd_notify(state: &str) -> std::io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(s) if !s.is_empty() => notify_to(&s, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Send `state` to the datagram socket `socket` (a path, or `@name` for an
/// abstract socket, as `$NOTIFY_SOCKET` spells it).
pub fn notify_to(socket: &OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = socket.as_bytes();
    let addr = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name)?
    } else {
        SocketAddr::from_pathname(Path::new(socket))?
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_pid_file_refuses_missing_malformed_stale_and_foreign_pids() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.pid");
        let e = signal_pid_file(None, 0).unwrap_err();
        assert!(matches!(e, SignalError::NoPidFile), "{e}");
        let e = signal_pid_file(Some(&p), 0).unwrap_err();
        assert!(matches!(e, SignalError::Unreadable { .. }), "{e}");
        // The cause comes once, as the chain's next link.
        let e = keycore_keys::error_chain(&e);
        assert!(e.contains("k.pid") && e.contains("cannot read"), "{e}");
        assert_eq!(e.matches("No such file").count(), 1, "{e}");
        std::fs::write(&p, "banana\n").unwrap();
        let e = signal_pid_file(Some(&p), 0).unwrap_err();
        assert!(matches!(e, SignalError::NotAPid { .. }), "{e}");
        // A child that has exited and been reaped: its pid names no process
        // (until the kernel reuses it, which takes a full pid cycle).
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let dead = c.id();
        c.wait().unwrap();
        std::fs::write(&p, format!("{dead}\n")).unwrap();
        let e = signal_pid_file(Some(&p), 0).unwrap_err();
        assert!(
            matches!(e, SignalError::Stale { pid, .. } if pid == dead),
            "{e}"
        );
        // A live process that is not keycore (this test binary).
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(&p, format!("{}\n", sleeper.id())).unwrap();
        let e = signal_pid_file(Some(&p), libc::SIGTERM).unwrap_err();
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert!(
            matches!(&e, SignalError::NotKeycore { comm, .. } if comm == "sleep"),
            "{e}"
        );
    }

    #[test]
    fn pid_file_replaces_a_planted_symlink_instead_of_following_it() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let pid = d.path().join("keycore.pid");
        std::os::unix::fs::symlink(&victim, &pid).unwrap();
        let f = PidFile::create(&pid).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        let meta = std::fs::symlink_metadata(&pid).unwrap();
        assert!(meta.file_type().is_file(), "pid file is a regular file now");
        assert_eq!(
            std::fs::read_to_string(&pid).unwrap(),
            format!("{}\n", std::process::id())
        );
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
        drop(f);
        assert!(!pid.exists(), "removed on exit");
        assert!(victim.exists());
    }

    #[test]
    fn pid_file_of_another_process_is_not_removed() {
        let d = tempfile::tempdir().unwrap();
        let pid = d.path().join("keycore.pid");
        let f = PidFile::create(&pid).unwrap();
        std::fs::write(&pid, "1\n").unwrap(); // another instance took over
        f.remove();
        assert_eq!(std::fs::read_to_string(&pid).unwrap(), "1\n");
        // A stale file from a crash is replaced.
        let g = PidFile::create(&pid).unwrap();
        assert_eq!(
            std::fs::read_to_string(g.path()).unwrap().trim(),
            std::process::id().to_string()
        );
    }

    #[test]
    fn pid_file_in_a_missing_directory_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(PidFile::create(&d.path().join("no/such/dir/k.pid")).is_err());
    }

    #[test]
    fn nofile_soft_limit_reaches_the_hard_limit() {
        let l = raise_nofile_limit(nofile_needed(2, 4096)).unwrap();
        assert!(l.soft >= l.before);
        assert!(l.soft <= l.hard || l.hard == libc::RLIM_INFINITY);
        assert_eq!(l.needed, 2 * 4096 + NOFILE_SLACK);
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
        assert_eq!(r.rlim_cur, l.soft, "the process really has the new limit");
    }

    #[test]
    fn sd_notify_sends_datagrams_to_path_and_abstract_sockets() {
        use std::os::unix::net::UnixDatagram;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify.sock");
        let rx = UnixDatagram::bind(&p).unwrap();
        notify_to(p.as_os_str(), "READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("keycore-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        assert!(notify_to(d.path().join("none").as_os_str(), "READY=1").is_err());
    }
}
