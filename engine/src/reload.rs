//! Reload (issue 14): re-read the configuration, every key store and the TLS
//! material, and swap them in without a restart (SIGHUP, `keycore reload`).
//!
//! Owns: [`build`] (turn a `Config` into the served state, the scrape's
//! loaded part and the store records; start-up runs the same function, so
//! start-up and reload cannot load differently), [`Reloader`] (one reload at
//! a time: read, compare, build, publish or refuse, count) and the
//! [`ReloadReport`] an operator sees.
//!
//! Design:
//! - **All or nothing.** Everything is built before anything is published:
//!   the config file, every software key, every backend store (a PKCS#11
//!   login, a cloud key fetch), the TLS configuration. Any error (bad YAML,
//!   unreadable key, wrong PIN, unreachable KMS) leaves the running state
//!   untouched, is logged with its reason (which names the file or URI;
//!   PINs are never printed) and counted in
//!   `keycore_reload_total{result="error"}`.
//! - **Publish.** A built state is stored in the process's
//!   [`Swap<Served>`](crate::swap::Swap); each core's control task takes it
//!   up within `CONTROL_POLL` (20 ms) and wakes its connections (see
//!   `server/served.rs`: no lock on the data path, in-flight operations keep
//!   the generation they started on, TLS changes apply to new connections).
//!   The scrape's part ([`Loaded`]) is swapped the same way.
//! - **Kept stores.** A backend store whose URIs (PINs included) and
//!   settings are unchanged is kept open, the same `Arc`; each core keeps
//!   its part of it (PKCS#11 sessions, worker threads), and the store is
//!   asked for its keys again (`KeyStore::rescan`: a PKCS#11 store searches
//!   its tokens on their login sessions; a failed search refuses the
//!   reload like any other load error). Software keys are
//!   always read again (cheap; a replaced file takes effect). Changed
//!   PKCS#11 URIs while a PKCS#11 store is open are first checked in a
//!   child `keycore serve --check` ([`Reloader::check_logins_with`]): this
//!   process's tokens are logged in, so its own `C_Login` cannot tell a
//!   wrong new PIN.
//! - **Restart-only settings** (port, cores, limits, metrics address, log
//!   settings, ...: everything not in `keycore_config::APPLIED_BY_RELOAD`
//!   or the `pkcs11_*`/`kms_*` tunables) keep their running values; a
//!   change to one is logged as needing a restart and listed in the report,
//!   never silently dropped.
//! - **Watching** (`reload_watch`, off by default): a thread stats the
//!   files a reload reads every interval and reloads once a change has
//!   held still for one more interval ([`watch`]); the same reload as
//!   SIGHUP, serialised with it.
//!
//! Must not: run on a reactor (it reads files and may wait on an HSM or a
//! cloud service), or publish a partly built state.

use crate::config::Config;
use crate::load::{self, Built};
use crate::metrics::Registry;
use crate::registry::StoreRecord;
use crate::security::{AuditMsg, AuditTx, Identities};
use crate::server::Served;
use crate::swap::Swap;
use keycore_keys::{error_chain, Ski};
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Why a reload was refused (the running state is untouched). The
/// configuration's, a key store's or the TLS material's own error is the
/// source.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration could not be read (the reader's error as is).
    #[error(transparent)]
    Read(Box<dyn std::error::Error + Send + Sync>),
    /// A key store or the TLS material failed to load.
    #[error(transparent)]
    Build(#[from] load::LoadError),
    /// An earlier reload's build is still hung in a key store call.
    #[error("a previous reload is still waiting on a key store call (it overran reload_timeout); restart keycore if it never returns")]
    Stuck,
    /// This reload's build overran `reload_timeout`.
    #[error("loading the key stores and TLS material did not finish within reload_timeout ({0:?}); a key store call is hung (an HSM login, a module load)")]
    Timeout(Duration),
    /// A thread or the login-check child could not be run or waited for.
    #[error("{what}")]
    Io {
        /// What failed.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The PKCS#11 login check child overran its time.
    #[error("PKCS#11 login check of the changed URIs did not finish within {0:?}")]
    LoginCheckTimeout(Duration),
    /// The PKCS#11 login check child failed (its FAIL lines, or its status).
    #[error("PKCS#11 login check of the changed URIs (in a fresh process, as this one's tokens are logged in already) failed: {0}")]
    LoginCheckFailed(String),
}

/// Count a successful load (start-up or reload) in the registry.
pub fn record_success(registry: &Registry) {
    let ms = UNIX_EPOCH
        .elapsed()
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    registry.reload.last_success_unix_ms.store(ms, Relaxed);
}

/// What an applied reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Keys served now.
    pub keys: usize,
    /// Sources (path or URI) of keys that were not served before.
    pub added: Vec<String>,
    /// Sources of keys no longer served (answered `0x02` from now on).
    pub removed: Vec<String>,
    /// Backend stores kept open (unchanged URIs and settings).
    pub stores_kept: Vec<&'static str>,
    /// Backend stores opened afresh.
    pub stores_opened: Vec<&'static str>,
    /// Applied settings that changed (besides key material in files).
    pub applied: Vec<&'static str>,
    /// Settings that changed in the configuration but need a restart; their
    /// running values stay.
    pub restart_needed: Vec<&'static str>,
    /// How long the reload took, in milliseconds.
    pub millis: u64,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} keys ({} added, {} removed) in {} ms",
            self.keys,
            self.added.len(),
            self.removed.len(),
            self.millis
        )?;
        if !self.stores_kept.is_empty() {
            write!(f, "; kept open: {}", self.stores_kept.join(", "))?;
        }
        if !self.stores_opened.is_empty() {
            write!(f, "; opened: {}", self.stores_opened.join(", "))?;
        }
        if !self.applied.is_empty() {
            write!(f, "; changed settings applied: {}", self.applied.join(", "))?;
        }
        if !self.restart_needed.is_empty() {
            write!(
                f,
                "; NOT applied, need a restart: {}",
                self.restart_needed.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Reloads the running server. One reload runs at a time (a second caller
/// waits for the first to finish, then reloads again: the file may have
/// changed meanwhile).
pub struct Reloader {
    state: Mutex<InForce>,
    served: Arc<Swap<Served>>,
    registry: Arc<Registry>,
    /// The client-identity table (kept for the process's life: ids,
    /// labels and connection counts; each reload compiles its
    /// `client_identities` against it).
    identities: Arc<Identities>,
    /// The audit writer: a reload is recorded, with its key loads and
    /// unloads.
    audit: Option<AuditTx>,
    /// The `keycore` executable that checks PKCS#11 logins in a fresh
    /// process (see [`Reloader::check_logins_with`]).
    login_check: Mutex<Option<std::path::PathBuf>>,
    /// Set while a build that overran `reload_timeout` still runs (hung in
    /// a key store call); cleared when it returns.
    stuck: Arc<std::sync::atomic::AtomicBool>,
}

/// The configuration in force and the stores it opened.
struct InForce {
    config: Config,
    records: Vec<StoreRecord>,
}

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for a server started from `config` (with the stores it
    /// opened), serving through `served` and scraped through `registry`.
    pub fn new(
        config: Config,
        records: Vec<StoreRecord>,
        served: Arc<Swap<Served>>,
        registry: Arc<Registry>,
        identities: Arc<Identities>,
        audit: Option<AuditTx>,
    ) -> Reloader {
        Reloader {
            state: Mutex::new(InForce { config, records }),
            served,
            registry,
            identities,
            audit,
            login_check: Mutex::new(None),
            stuck: Arc::default(),
        }
    }

    /// [`build`] on a helper thread, waited for at most `reload_timeout`.
    /// A build past it is refused and left to finish on its own (a call
    /// into an HSM module cannot be cancelled); its result is dropped when
    /// it does, and until then every reload is refused, so at most one such
    /// thread exists.
    fn build_within(&self, cfg: &Config, previous: &[StoreRecord]) -> Result<Built, ReloadError> {
        use std::sync::atomic::Ordering;
        if self.stuck.load(Ordering::Acquire) {
            return Err(ReloadError::Stuck);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (cfg2, previous2, identities) =
            (cfg.clone(), previous.to_vec(), self.identities.clone());
        let stuck = self.stuck.clone();
        std::thread::Builder::new()
            .name("keycore-reload-build".into())
            .spawn(move || {
                let r = load::build(&cfg2, &previous2, &identities);
                // A receiver that gave up drops the result (and with it any
                // store it opened).
                let _ = tx.send(r);
                stuck.store(false, Ordering::Release);
            })
            .map_err(|source| ReloadError::Io {
                what: "start the reload build thread".into(),
                source,
            })?;
        match rx.recv_timeout(cfg.reload_timeout) {
            Ok(r) => Ok(r?),
            Err(_) => {
                self.stuck.store(true, Ordering::Release);
                // The builder may have finished between the timeout and the
                // store above; its late clear must not be lost.
                if let Ok(r) = rx.try_recv() {
                    self.stuck.store(false, Ordering::Release);
                    return Ok(r?);
                }
                Err(ReloadError::Timeout(cfg.reload_timeout))
            }
        }
    }

    /// Check the PINs of a reload's PKCS#11 URIs with `keycore serve
    /// --check` run as `exe` in a child process before reopening the
    /// PKCS#11 store, whenever one is open already.
    ///
    /// Why a child: PKCS#11 logins are per process. While this process has
    /// a token open and logged in, `C_Login` with any PIN (a wrong new one
    /// too) answers "already logged in", so a reload could never find out
    /// that a changed PIN is wrong. A fresh process has no login yet.
    pub fn check_logins_with(&self, exe: std::path::PathBuf) {
        *self.login_check.lock().unwrap_or_else(|p| p.into_inner()) = Some(exe);
    }

    /// Reload: `read` gives the configuration as it is now (file,
    /// environment and the original flags); then every key store and the
    /// TLS material are loaded and, if all of it succeeded, published. On
    /// error the running state is untouched; the error says why.
    /// Logged and counted either way.
    pub fn reload<E>(
        &self,
        read: impl FnOnce() -> Result<Config, E>,
    ) -> Result<ReloadReport, ReloadError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let t0 = Instant::now();
        tracing::info!("reload: reading the configuration, key stores and TLS material");
        let r = read()
            .map_err(|e| ReloadError::Read(e.into()))
            .and_then(|new| self.apply(&mut state, &new, t0));
        match &r {
            Ok(report) => {
                *self
                    .registry
                    .reload
                    .restart_needed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = report.restart_needed.clone();
                self.registry.reload.ok.fetch_add(1, Relaxed);
                record_success(&self.registry);
                for s in &report.added {
                    tracing::info!(source = %s, "reload: key added");
                }
                for s in &report.removed {
                    tracing::info!(source = %s, "reload: key removed");
                }
                for s in &report.restart_needed {
                    tracing::warn!(
                        setting = s,
                        "reload: setting changed but needs a restart; the running value stays"
                    );
                }
                tracing::info!("reload applied: {report}");
            }
            Err(e) => {
                self.registry.reload.error.fetch_add(1, Relaxed);
                tracing::error!(
                    "reload refused, the previous configuration keeps serving: {}",
                    error_chain(e)
                );
            }
        }
        r
    }

    fn apply(
        &self,
        state: &mut InForce,
        new: &Config,
        t0: Instant,
    ) -> Result<ReloadReport, ReloadError> {
        let changed = keycore_config::changed_settings(&state.config, new);
        let effective = state.config.with_reloaded(new);
        let exe = self
            .login_check
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(exe) = exe {
            check_changed_logins(&exe, &state.config, &effective)?;
        }
        // A new audit_file must open before anything is published (all or
        // nothing); the writer reopens it once the reload applies.
        let (was, now) = (&state.config.security, &effective.security);
        let audit_moved = was.audit_file != now.audit_file
            || was.audit_max_bytes != now.audit_max_bytes
            || was.audit_keep != now.audit_keep;
        if was.audit_file != now.audit_file {
            if let Some(p) = &now.audit_file {
                crate::audit::open_append(p).map_err(|source| ReloadError::Io {
                    what: format!("audit_file {}: cannot open: {source}", p.display()),
                    source,
                })?;
            }
        }
        let built = self.build_within(&effective, &state.records)?;
        let old = self.served.get();
        let report = ReloadReport {
            keys: built.served.keys.len(),
            added: sources_not_in(&built.served, &old),
            removed: sources_not_in(&old, &built.served),
            stores_kept: built.kept.clone(),
            stores_opened: built.opened.clone(),
            applied: changed
                .iter()
                .filter(|s| s.applied_by_reload())
                .map(|s| s.name)
                .collect(),
            restart_needed: changed
                .iter()
                .filter(|s| !s.applied_by_reload())
                .map(|s| s.name)
                .collect(),
            millis: t0.elapsed().as_millis() as u64,
        };
        // Scrape first, then the cores: a scrape never shows fewer stores
        // than the cores use.
        self.registry.loaded.store(Arc::new(built.loaded));
        if let Some(tx) = &self.audit {
            if audit_moved {
                // First, so the reload's own records go to the new file.
                let _ = tx.send_blocking(AuditMsg::Settings {
                    path: now.audit_file.clone(),
                    max_bytes: now.audit_max_bytes,
                    keep: now.audit_keep,
                });
            }
            // The writer learns the new generation's key labels before the
            // cores serve it; counts name keys by (epoch, index), so those
            // of the old generation keep their labels.
            // Reloads are serialised (the state lock), so the generation
            // the store below creates is the next one.
            let _ = tx.send_blocking(AuditMsg::Keys {
                epoch: (self.served.generation() + 1) as u8,
                labels: crate::audit::key_labels(&built.served.keys),
            });
            tx.event(
                "reload",
                &[
                    ("keys", &report.keys.to_string()),
                    ("added", &report.added.len().to_string()),
                    ("removed", &report.removed.len().to_string()),
                ],
            );
            for src in &report.added {
                tx.event(
                    "key_load",
                    &[("source", &keycore_config::redact_uri_pins(src))],
                );
            }
            for src in &report.removed {
                tx.event(
                    "key_unload",
                    &[("source", &keycore_config::redact_uri_pins(src))],
                );
            }
        }
        self.served.store(Arc::new(built.served));
        // The identity slots the served generation configures are never
        // given to another name.
        self.identities.set_in_force(&effective.security);
        state.config = effective;
        state.records = built.records;
        Ok(report)
    }
}

impl Reloader {
    /// The configuration in force (after the last applied reload). Waits
    /// while a reload runs.
    pub fn config(&self) -> Config {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .config
            .clone()
    }
}

/// Most files a watch look stats; beyond it the rest is not watched (and
/// the look says so once).
pub const WATCH_MAX_FILES: usize = 100_000;

/// Shortest `reload_watch` interval used (a smaller one would only burn
/// CPU on stat calls).
pub const WATCH_MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// A digest of everything a reload reads from files: the config file, the
/// TLS files, every `file:` key and every `*.key` under a `dir:` store
/// (path, size, modification time, inode), so a change, an addition, a
/// removal or a rename shows. Missing files count as such. Stats at most
/// [`WATCH_MAX_FILES`] files; the bool says whether it had to stop early.
pub fn watch_digest(cfg: &Config, config_file: Option<&std::path::Path>) -> (u64, bool) {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let seen = std::cell::Cell::new(0usize);
    let stat = |p: &std::path::Path, h: &mut std::collections::hash_map::DefaultHasher| {
        seen.set(seen.get() + 1);
        p.hash(h);
        match std::fs::metadata(p) {
            Ok(m) => (m.len(), m.mtime(), m.mtime_nsec(), m.ino()).hash(h),
            Err(e) => e.kind().hash(h),
        }
    };
    for p in config_file.into_iter().chain([
        cfg.auth_cert.as_path(),
        cfg.auth_key.as_path(),
        cfg.cloudflare_ca_cert.as_path(),
    ]) {
        stat(p, &mut h);
    }
    let mut full = false;
    for store in &cfg.private_key_stores {
        match store {
            crate::config::KeyStore::File(f) => stat(f, &mut h),
            crate::config::KeyStore::Dir(d) => {
                // Iterative walk, sorted per directory so the digest does not
                // depend on readdir order; symlinked directories are not
                // followed (as the key loader's walk).
                let mut stack = vec![d.clone()];
                while let Some(dir) = stack.pop() {
                    // Not the directory's own mtime: any file written there
                    // (an editor's backup, a note) would change it.
                    dir.hash(&mut h);
                    let rd = match std::fs::read_dir(&dir) {
                        Ok(rd) => rd,
                        Err(e) => {
                            e.kind().hash(&mut h);
                            continue;
                        }
                    };
                    let mut names: Vec<_> = rd.filter_map(|e| e.ok()).collect();
                    names.sort_by_key(|e| e.file_name());
                    for e in names {
                        if seen.get() >= WATCH_MAX_FILES {
                            full = true;
                            break;
                        }
                        let p = e.path();
                        match e.file_type() {
                            Ok(t) if t.is_dir() => stack.push(p),
                            _ if p.extension().is_some_and(|x| x == "key") => stat(&p, &mut h),
                            _ => {}
                        }
                    }
                }
            }
            crate::config::KeyStore::Uri(u) => u.hash(&mut h),
        }
    }
    (h.finish(), full)
}

/// Watch what a reload reads (see [`watch_digest`]) every `interval` and
/// reload through `reloader` with `read` once a change has stayed unchanged
/// for one more look (so a key file being copied, or a certificate and its
/// key replaced one after the other, is taken as one change). A reload that
/// fails is not retried until the files change again. Runs until the
/// process exits (its own thread). `initial` is the digest taken before
/// start-up read the files (so a change made while the server was starting
/// is seen, at the cost of one reload that finds nothing new).
pub fn watch<E>(
    reloader: Arc<Reloader>,
    interval: std::time::Duration,
    config_file: Option<std::path::PathBuf>,
    initial: u64,
    read: impl Fn() -> Result<Config, E> + Send + 'static,
) -> std::io::Result<()>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let interval = interval.max(WATCH_MIN_INTERVAL);
    std::thread::Builder::new()
        .name("keycore-watch".into())
        .spawn(move || {
            let look = |r: &Reloader| {
                let (d, full) = watch_digest(&r.config(), config_file.as_deref());
                if full {
                    tracing::warn!(
                        max = WATCH_MAX_FILES,
                        "reload_watch: more key files than it looks at; changes beyond them need SIGHUP"
                    );
                }
                d
            };
            let mut applied = initial;
            let mut pending = None;
            loop {
                std::thread::sleep(interval);
                let now = look(&reloader);
                if now == applied {
                    pending = None;
                } else if pending == Some(now) {
                    tracing::info!("reload_watch: files changed; reloading");
                    let _ = reloader.reload(&read);
                    // The config in force may name other paths now.
                    applied = look(&reloader);
                    pending = None;
                } else {
                    pending = Some(now);
                }
            }
        })
        .map(|_| ())
}

/// The PKCS#11 URIs of a configuration, in order.
fn pkcs11_uris(cfg: &Config) -> Vec<&str> {
    cfg.private_key_stores
        .iter()
        .filter_map(|s| match s {
            crate::config::KeyStore::Uri(u)
                if crate::registry::claim(u).is_some_and(|b| b.name == "pkcs11") =>
            {
                Some(u.as_str())
            }
            _ => None,
        })
        .collect()
}

/// Longest a login check child may take (module load, login, key lookup).
const LOGIN_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// When the reload would reopen the PKCS#11 store while one is open (its
/// URIs changed, so a PIN may have), check the new URIs' logins in a child
/// `exe serve --check` reading a config of those URIs alone on its stdin
/// (never a file: it holds the PINs). `KEYLESS_*` variables are not passed
/// on (they would replace the key stores); everything else is (module
/// settings such as `SOFTHSM2_CONF`).
fn check_changed_logins(
    exe: &std::path::Path,
    old: &Config,
    new: &Config,
) -> Result<(), ReloadError> {
    use std::io::{Read as _, Write as _};
    let (was, now) = (pkcs11_uris(old), pkcs11_uris(new));
    if was.is_empty() || now.is_empty() || was == now {
        return Ok(());
    }
    let mut only = new.clone();
    only.private_key_stores = now
        .iter()
        .map(|u| crate::config::KeyStore::Uri(u.to_string()))
        .collect();
    let mut cmd = std::process::Command::new(exe);
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("KEYLESS_")) {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["serve", "--check", "-c", "/dev/stdin"])
        .env("KEYCORE_LOG", "error")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|source| ReloadError::Io {
            what: format!("PKCS#11 login check: cannot run {}", exe.display()),
            source,
        })?;
    let yaml = only.to_yaml();
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(yaml.as_bytes());
    }
    let deadline = Instant::now() + LOGIN_CHECK_TIMEOUT;
    let status = loop {
        let waited = child.try_wait().map_err(|source| ReloadError::Io {
            what: format!("PKCS#11 login check: waiting for {}", exe.display()),
            source,
        })?;
        if let Some(s) = waited {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ReloadError::LoginCheckTimeout(LOGIN_CHECK_TIMEOUT));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if status.success() {
        return Ok(());
    }
    let fails: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("FAIL "))
        .map(str::trim)
        .collect();
    Err(ReloadError::LoginCheckFailed(if fails.is_empty() {
        format!("{status}")
    } else {
        fails.join("; ")
    }))
}

/// Sources of the keys of `a` whose SKI `b` does not serve.
fn sources_not_in(a: &Served, b: &Served) -> Vec<String> {
    let have: HashSet<&Ski> = b.keys.entries().iter().map(|e| &e.ski).collect();
    a.keys
        .entries()
        .iter()
        .filter(|e| !have.contains(&e.ski))
        .map(|e| e.source.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyStore;

    #[test]
    fn the_watch_digest_sees_added_removed_and_replaced_key_files_only() {
        let d = tempfile::tempdir().unwrap();
        let keys = d.path().join("keys");
        std::fs::create_dir_all(keys.join("sub")).unwrap();
        std::fs::write(keys.join("a.key"), "a").unwrap();
        let cfg = Config {
            private_key_stores: vec![KeyStore::Dir(keys.clone())],
            auth_cert: d.path().join("cert.pem"),
            ..Config::default()
        };
        let digest = || watch_digest(&cfg, None).0;
        let d0 = digest();
        assert_eq!(digest(), d0, "nothing changed");
        std::fs::write(keys.join("notes.txt"), "x").unwrap();
        assert_eq!(digest(), d0, "only *.key files count");
        std::fs::write(keys.join("sub/b.key"), "b").unwrap();
        let d1 = digest();
        assert_ne!(d1, d0, "a key added in a subdirectory");
        std::fs::write(keys.join("a.key"), "aa").unwrap();
        let d2 = digest();
        assert_ne!(d2, d1, "a key rewritten");
        std::fs::remove_file(keys.join("sub/b.key")).unwrap();
        assert_ne!(digest(), d2, "a key removed");
        let before = digest();
        std::fs::write(d.path().join("cert.pem"), "c").unwrap();
        assert_ne!(digest(), before, "the certificate appeared");
    }
}
