//! Loaded PKCS#11 libraries: each path is loaded and `C_Initialize`d once
//! per process, and re-initialised (`C_Finalize` + `C_Initialize`) when a
//! token reports that the library lost its state.
//!
//! Owns: the process-wide module registry, the initialisation flags
//! (`CKF_OS_LOCKING_OK`: SoftHSM and most HSM clients crash under threads
//! without it) and the re-initialisation gate.
//! Must not: keep sessions or handles (that is `session.rs`).
//!
//! Why a gate: PKCS#11 leaves `C_Finalize` while another thread is inside a
//! call undefined (SoftHSM frees the state the call is using). Every call
//! holds the gate for reading; re-initialisation takes it for writing, and
//! gives up rather than wait behind a stuck call ([`REINIT_WAIT`]). The read
//! side is one uncontended atomic on a path that then enters the library's
//! own mutexes, so it costs nothing measurable (see docs/pkcs11/README.md).

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

/// Longest a re-initialisation waits for calls in flight to finish; past
/// it, the recovery is retried later (bounded backoff) instead of blocking.
pub const REINIT_WAIT: Duration = Duration::from_millis(200);

/// Directories searched for `module-name=` (p11-kit's and Debian's).
const MODULE_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/pkcs11",
    "/usr/lib/aarch64-linux-gnu/pkcs11",
    "/usr/lib/pkcs11",
    "/usr/lib64/pkcs11",
    "/usr/lib/softhsm",
    "/usr/local/lib/pkcs11",
];

/// One loaded PKCS#11 library.
#[derive(Debug)]
pub struct Module {
    /// Path it was loaded from.
    pub path: PathBuf,
    /// The library's function list (cheap to clone: an `Arc`).
    pub ctx: Pkcs11,
    /// Read for every call, written only by [`Module::reinit`].
    gate: RwLock<()>,
    /// Bumped by every re-initialisation: sessions opened under an older
    /// generation are dead and must be forgotten, not closed (their handle
    /// numbers may already belong to new sessions).
    generation: AtomicU64,
    /// Serialises re-initialisations (control plane only).
    reinit_lock: Mutex<()>,
}

/// Why a module could not be found, loaded or (re-)initialised. Names the
/// file or name involved; the library's own error is the source.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// `module-path` names no file.
    #[error("module {} does not exist", .0.display())]
    Missing(PathBuf),
    /// Neither `module-path` nor `module-name` was given.
    #[error("no module-path or module-name")]
    Unnamed,
    /// `module-name` with a `/` (a path in disguise).
    #[error("module-name {0:?} must be a bare name")]
    NotBare(String),
    /// `module-name` is in none of the searched directories.
    #[error("module-name {name:?} not found in {}", MODULE_DIRS.join(", "))]
    NotFound {
        /// The name as written.
        name: String,
    },
    /// The file is not a loadable PKCS#11 library.
    #[error("cannot load {}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// What the loader said.
        #[source]
        source: CkError,
    },
    /// `C_Initialize` failed at first load.
    #[error("C_Initialize of {} failed", path.display())]
    Initialize {
        /// The file.
        path: PathBuf,
        /// The library's answer.
        #[source]
        source: CkError,
    },
    /// A re-initialisation gave up waiting for calls in flight.
    #[error("calls still in flight; re-initialisation postponed")]
    Busy,
    /// `C_Initialize` failed on a re-initialisation.
    #[error("C_Initialize failed")]
    Reinitialize(#[source] CkError),
}

fn registry() -> &'static Mutex<Vec<Arc<Module>>> {
    static R: OnceLock<Mutex<Vec<Arc<Module>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Vec::new()))
}

fn init_args() -> CInitializeArgs {
    CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)
}

fn initialize(ctx: &Pkcs11) -> Result<(), CkError> {
    match ctx.initialize(init_args()) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Resolve `module-path` / `module-name` to a file.
pub fn resolve(path: Option<&str>, name: Option<&str>) -> Result<PathBuf, ModuleError> {
    if let Some(p) = path {
        let p = Path::new(p);
        if !p.is_file() {
            return Err(ModuleError::Missing(p.to_path_buf()));
        }
        return Ok(p.to_path_buf());
    }
    let name = name.ok_or(ModuleError::Unnamed)?;
    if name.contains('/') {
        return Err(ModuleError::NotBare(name.to_string()));
    }
    for dir in MODULE_DIRS {
        for file in [
            format!("{name}.so"),
            format!("lib{name}.so"),
            name.to_string(),
        ] {
            let p = Path::new(dir).join(&file);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(ModuleError::NotFound {
        name: name.to_string(),
    })
}

/// The loaded module for `path`, loading and initialising it the first time.
pub fn load(path: &Path) -> Result<Arc<Module>, ModuleError> {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = reg.iter().find(|m| m.path == canon) {
        return Ok(m.clone());
    }
    let ctx = Pkcs11::new(&canon).map_err(|source| ModuleError::Load {
        path: canon.clone(),
        source,
    })?;
    initialize(&ctx).map_err(|source| ModuleError::Initialize {
        path: canon.clone(),
        source,
    })?;
    let m = Arc::new(Module {
        path: canon,
        ctx,
        gate: RwLock::new(()),
        generation: AtomicU64::new(0),
        reinit_lock: Mutex::new(()),
    });
    reg.push(m.clone());
    Ok(m)
}

impl Module {
    /// Hold this for the duration of every call into the library.
    #[inline]
    pub fn enter(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The current generation (see the field).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `C_Finalize` + `C_Initialize`, unless someone already did it since
    /// `seen` (then just `Ok`). Fails rather than wait more than
    /// [`REINIT_WAIT`] for calls in flight.
    pub fn reinit(&self, seen: u64) -> Result<(), ModuleError> {
        let _serial = self.reinit_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation() != seen {
            return Ok(());
        }
        let deadline = Instant::now() + REINIT_WAIT;
        let guard = loop {
            match self.gate.try_write() {
                Ok(g) => break g,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(_) => return Err(ModuleError::Busy),
            }
        };
        // A failed C_Finalize (e.g. already finalised) does not stop us from
        // initialising again.
        let _ = self.ctx.clone().finalize();
        self.generation.fetch_add(1, Ordering::AcqRel);
        let r = initialize(&self.ctx).map_err(ModuleError::Reinitialize);
        drop(guard);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_module_is_a_clear_error() {
        let e = resolve(Some("/nonexistent/libnothing.so"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/libnothing.so"), "{e}");
        let e = resolve(None, Some("no-such-module-xyz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no-such-module-xyz"), "{e}");
        assert!(resolve(None, Some("../evil")).is_err());
    }

    #[test]
    fn not_a_library_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fake.so");
        std::fs::write(&p, b"not an ELF").unwrap();
        let e = keycore_keys::error_chain(&load(&p).unwrap_err());
        assert!(e.contains("fake.so"), "{e}");
        assert!(e.starts_with("cannot load "), "{e}");
    }
}
