//! Software keys: loading private key files (PEM or DER; PKCS#1, PKCS#8,
//! SEC1) and performing the protocol's key operations in-process with
//! aws-lc.
//!
//! This module owns the policy: which key kinds and sizes are served (RSA
//! 2048–4096 bits, ECDSA P-256/P-384/P-521, Ed25519), how an opcode maps to a
//! primitive, and which inputs are refused (a digest of the wrong length for
//! RSA, an op that does not fit the key). It must not contain `unsafe` or
//! cryptography of its own: the aws-lc calls live in `keys/sys.rs`, padding
//! and big-number work stay inside aws-lc.
//!
//! Loading happens once at start-up and may allocate and format freely;
//! [`SoftwareKey::perform`] is the hot path and allocates nothing beyond
//! growing the caller's `out` buffer.

use crate::sys::{self, DerFormat, Pkey};
use crate::{legacy_digest_from_spki, ski_from_spki};
use crate::{Backend, KeyEntry, KeyKind, PrivateKeyOps};
use keycore_protocol::{ErrorCode, Hash, OpClass};
use rustls_pki_types::pem::{PemObject, SectionKind};
use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Smallest RSA modulus served. Below 2048 bits a key is considered broken
/// (NIST SP 800-131A) and the edge would be signing with it on our behalf.
pub const MIN_RSA_BITS: usize = 2048;

/// Largest RSA modulus served. Larger keys are legal but each signature costs
/// roughly 8x a 2048-bit one per doubling; refusing them keeps one slow key
/// from dominating a core's latency.
pub const MAX_RSA_BITS: usize = 4096;

/// Largest key file read. A PEM 4096-bit RSA key is about 3.3 KB; anything
/// near this limit is not a key file and is refused before being read whole.
pub const MAX_KEY_FILE_LEN: u64 = 1 << 20;

/// Deepest directory nesting followed by [`load_dir`]. Together with the
/// visited set this bounds the walk even on odd filesystems.
pub const MAX_DIR_DEPTH: usize = 32;

/// Longest PKCS#1 v1.5 encoded digest: the SHA-512 DigestInfo prefix (19
/// bytes) and a 64-byte digest.
const MAX_DIGEST_INFO_LEN: usize = 19 + 64;

const _: () =
    assert!(Hash::Sha512.digest_info_prefix().len() + Hash::Sha512.len() == MAX_DIGEST_INFO_LEN);
const _: () = assert!(MIN_RSA_BITS <= MAX_RSA_BITS);

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyLoadReason {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The file is larger than [`MAX_KEY_FILE_LEN`].
    #[error("file is {len} bytes, more than the {max}-byte limit for a key file")]
    TooLarge {
        /// Actual length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Zero bytes.
    #[error("file is empty")]
    Empty,
    /// A FIFO, socket or device named like a key file: reading it could
    /// block start-up forever (a FIFO with no writer) or never end.
    #[error("not a regular file (a {0}); a key must be a regular file")]
    NotRegular(&'static str),
    /// PEM with no private key section.
    #[error(
        "no private key found (expected a PEM \"RSA PRIVATE KEY\", \"PRIVATE KEY\" or \
         \"EC PRIVATE KEY\" section, or DER)"
    )]
    NoPrivateKey,
    /// More than one private key in one file: which one was meant is unclear.
    #[error("{0} private keys in one file; put each key in its own file")]
    MultipleKeys(usize),
    /// A passphrase-protected key.
    #[error(
        "the key is encrypted; keycore needs it unencrypted (e.g. `openssl pkey -in IN -out OUT`)"
    )]
    Encrypted,
    /// The PEM framing or base64 is broken.
    #[error("bad PEM: {0}")]
    Pem(String),
    /// Not a parseable private key in the expected (or any known) structure.
    #[error("not a valid {0} private key")]
    Malformed(&'static str),
    /// RSA outside [`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`].
    #[error("RSA key of {0} bits; only {MIN_RSA_BITS} to {MAX_RSA_BITS} bits are supported")]
    RsaSize(usize),
    /// An EC key on a curve other than P-256, P-384, P-521.
    #[error("EC key on curve {0}; only P-256, P-384 and P-521 are supported")]
    Curve(String),
    /// Neither RSA, EC nor Ed25519.
    #[error("unsupported key algorithm {0}; only RSA, ECDSA and Ed25519 are supported")]
    Algorithm(String),
    /// aws-lc could not derive the public key.
    #[error("cannot derive the public key")]
    PublicKey,
}

/// A key that could not be loaded: which one, and why.
#[derive(Debug, thiserror::Error)]
#[error("key {path}: {reason}")]
pub struct KeyLoadError {
    /// The file path (or other origin) of the key.
    pub path: String,
    /// What is wrong with it.
    pub reason: KeyLoadReason,
}

impl KeyLoadError {
    fn new(path: &str, reason: KeyLoadReason) -> Self {
        KeyLoadError {
            path: path.to_owned(),
            reason,
        }
    }
}

/// The private half, by kind.
#[derive(Debug)]
enum Secret {
    Rsa(sys::Rsa),
    Ec(sys::EcKey),
    Ed25519(sys::Ed25519Secret),
}

/// An in-memory private key, signing with aws-lc on the calling thread.
pub struct SoftwareKey {
    kind: KeyKind,
    spki_der: Vec<u8>,
    secret: Secret,
}

impl fmt::Debug for SoftwareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareKey")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Grow `out` by `max` bytes, let `f` fill a prefix of them, keep what it
/// wrote. On failure `out` is left as it was.
#[inline]
fn append(
    out: &mut Vec<u8>,
    max: usize,
    f: impl FnOnce(&mut [u8]) -> Result<usize, sys::Failed>,
) -> Result<(), ErrorCode> {
    let start = out.len();
    out.resize(start + max, 0);
    match f(&mut out[start..]) {
        Ok(n) if n <= max => {
            out.truncate(start + n);
            Ok(())
        }
        _ => {
            out.truncate(start);
            Err(ErrorCode::CRYPTO)
        }
    }
}

impl SoftwareKey {
    /// Parse one private key from DER in the given structure.
    fn from_der(der: &[u8], format: DerFormat) -> Result<SoftwareKey, KeyLoadReason> {
        let pkey =
            Pkey::parse(der, format).map_err(|_| KeyLoadReason::Malformed(format_name(format)))?;
        Self::from_pkey(&pkey)
    }

    fn from_pkey(pkey: &Pkey) -> Result<SoftwareKey, KeyLoadReason> {
        let (kind, secret) = match pkey.id() {
            sys::PKEY_RSA => {
                let rsa = pkey.rsa().ok_or(KeyLoadReason::Malformed("RSA"))?;
                let bits = rsa.bits();
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                    return Err(KeyLoadReason::RsaSize(bits));
                }
                (KeyKind::Rsa { bits }, Secret::Rsa(rsa))
            }
            sys::PKEY_EC => {
                let ec = pkey.ec().ok_or(KeyLoadReason::Malformed("EC"))?;
                let kind = match ec.curve_nid() {
                    sys::NID_P256 => KeyKind::EcdsaP256,
                    sys::NID_P384 => KeyKind::EcdsaP384,
                    sys::NID_P521 => KeyKind::EcdsaP521,
                    0 => return Err(KeyLoadReason::Curve("(unnamed)".into())),
                    nid => return Err(KeyLoadReason::Curve(sys::curve_name(nid))),
                };
                (kind, Secret::Ec(ec))
            }
            sys::PKEY_ED25519 => {
                let k = pkey.ed25519().ok_or(KeyLoadReason::Malformed("Ed25519"))?;
                (KeyKind::Ed25519, Secret::Ed25519(k))
            }
            other => return Err(KeyLoadReason::Algorithm(sys::pkey_type_name(other))),
        };
        let spki_der = pkey.spki_der().map_err(|_| KeyLoadReason::PublicKey)?;
        Ok(SoftwareKey {
            kind,
            spki_der,
            secret,
        })
    }

    /// Wrap this key as an index entry: SKI and (for RSA) legacy digest
    /// computed from the public key.
    pub fn into_entry(self, source: &str) -> Result<KeyEntry, KeyLoadError> {
        let ski = ski_from_spki(&self.spki_der)
            .map_err(|_| KeyLoadError::new(source, KeyLoadReason::PublicKey))?;
        let legacy_digest = match self.kind {
            KeyKind::Rsa { .. } => Some(
                legacy_digest_from_spki(&self.spki_der)
                    .map_err(|_| KeyLoadError::new(source, KeyLoadReason::PublicKey))?,
            ),
            _ => None,
        };
        Ok(KeyEntry {
            ski,
            legacy_digest,
            kind: self.kind,
            spki_der: self.spki_der.clone(),
            source: source.to_owned(),
            backend: Backend::Inline(Box::new(self)),
        })
    }
}

fn format_name(f: DerFormat) -> &'static str {
    match f {
        DerFormat::Pkcs8 => "PKCS#8",
        DerFormat::Pkcs1 => "PKCS#1 RSA",
        DerFormat::Sec1 => "SEC1 EC",
    }
}

impl PrivateKeyOps for SoftwareKey {
    fn kind(&self) -> KeyKind {
        self.kind
    }

    fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    #[inline]
    fn perform(&self, op: OpClass, input: &[u8], out: &mut Vec<u8>) -> Result<(), ErrorCode> {
        match (op, &self.secret) {
            // Input lengths were checked once, by dispatch, with
            // `crate::check_input` (the one rule). What is left here keeps an
            // unchecked caller from panicking or reading out of bounds; it is
            // not a second copy of the rule.
            (OpClass::RsaPkcs1(hash), Secret::Rsa(rsa)) => {
                // DigestInfo‖digest on the stack (bare digest for MD5‖SHA1).
                let prefix = hash.digest_info_prefix();
                let n = prefix.len() + input.len();
                let mut buf = [0u8; MAX_DIGEST_INFO_LEN];
                let encoded = buf.get_mut(..n).ok_or(ErrorCode::CRYPTO)?;
                encoded[..prefix.len()].copy_from_slice(prefix);
                encoded[prefix.len()..].copy_from_slice(input);
                append(out, rsa.size(), |dst| rsa.sign_pkcs1(encoded, dst))
            }
            (OpClass::RsaPss(hash), Secret::Rsa(rsa)) => {
                append(out, rsa.size(), |dst| rsa.sign_pss(hash, input, dst))
            }
            (OpClass::RsaDecrypt, Secret::Rsa(rsa)) => {
                // aws-lc refuses input that is not the modulus length or not
                // below n, and the trivial values 0, 1 and n-1 (whose result
                // is the input); no real ciphertext is one of those.
                append(out, rsa.size(), |dst| rsa.decrypt_raw(input, dst))
            }
            // The hash only names what the edge hashed with; ECDSA signs the
            // digest as given (truncated by aws-lc if longer than the order).
            (OpClass::Ecdsa(_), Secret::Ec(ec)) => {
                append(out, ec.max_sig_len(), |dst| ec.sign(input, dst))
            }
            (OpClass::Ed25519, Secret::Ed25519(k)) => {
                let mut sig = [0u8; 64];
                k.sign(input, &mut sig).map_err(|_| ErrorCode::CRYPTO)?;
                out.extend_from_slice(&sig);
                Ok(())
            }
            _ => Err(ErrorCode::CRYPTO),
        }
    }
}

/// Whether the bytes look like PEM rather than DER.
fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Whether a PEM file holds an encrypted key: PKCS#8 "ENCRYPTED PRIVATE KEY"
/// or a traditional key with RFC 1421 `Proc-Type: 4,ENCRYPTED` headers.
fn is_encrypted_pem(bytes: &[u8]) -> bool {
    const MARKERS: [&[u8]; 2] = [
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----",
        b"Proc-Type: 4,ENCRYPTED",
    ];
    MARKERS
        .iter()
        .any(|m| bytes.windows(m.len()).any(|w| w == *m))
}

/// Load one private key from PEM or DER bytes. `source` names where they came
/// from (a path or URI) in errors and in the entry.
///
/// PEM: the one "RSA PRIVATE KEY", "PRIVATE KEY" or "EC PRIVATE KEY" section
/// (other sections, such as the "EC PARAMETERS" that `openssl ecparam
/// -genkey` writes first, are skipped). DER: PKCS#8, then PKCS#1, then SEC1
/// are tried.
pub fn from_der_or_pem(bytes: &[u8], source: &str) -> Result<KeyEntry, KeyLoadError> {
    let err = |reason| KeyLoadError::new(source, reason);
    if bytes.is_empty() {
        return Err(err(KeyLoadReason::Empty));
    }
    let key = if is_pem(bytes) {
        if is_encrypted_pem(bytes) {
            return Err(err(KeyLoadReason::Encrypted));
        }
        // Each decoded section is wiped when dropped, on every path (a
        // later section that fails to decode returns early).
        let mut found: Vec<(SectionKind, Zeroizing<Vec<u8>>)> = Vec::new();
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
            let (kind, der) = section.map_err(|e| err(KeyLoadReason::Pem(e.to_string())))?;
            let der = Zeroizing::new(der);
            if matches!(
                kind,
                SectionKind::RsaPrivateKey | SectionKind::PrivateKey | SectionKind::EcPrivateKey
            ) {
                found.push((kind, der));
            }
        }
        let result = match found.as_slice() {
            [] => Err(KeyLoadReason::NoPrivateKey),
            [(kind, der)] => {
                let format = match kind {
                    SectionKind::RsaPrivateKey => DerFormat::Pkcs1,
                    SectionKind::EcPrivateKey => DerFormat::Sec1,
                    _ => DerFormat::Pkcs8,
                };
                SoftwareKey::from_der(der, format)
            }
            many => Err(KeyLoadReason::MultipleKeys(many.len())),
        };
        result.map_err(err)?
    } else {
        // DER carries no label: try each structure; they are distinct enough
        // that at most one parses.
        let pkey = [DerFormat::Pkcs8, DerFormat::Pkcs1, DerFormat::Sec1]
            .into_iter()
            .find_map(|format| Pkey::parse(bytes, format).ok())
            .ok_or_else(|| err(KeyLoadReason::Malformed("PKCS#8, PKCS#1 or SEC1")))?;
        SoftwareKey::from_pkey(&pkey).map_err(err)?
    };
    key.into_entry(source)
}

/// Load the private key in one file (PEM or DER).
pub fn load_file(path: &Path) -> Result<KeyEntry, KeyLoadError> {
    let source = path.display().to_string();
    let err = |reason| KeyLoadError::new(&source, reason);
    // O_NONBLOCK: opening a FIFO for reading blocks until a writer comes
    // (forever, at start-up); non-blocking, the open returns and the type
    // check below refuses it. No effect on a regular file's reads.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| err(e.into()))?;
    let meta = file.metadata().map_err(|e| err(e.into()))?;
    if !meta.is_file() {
        return Err(err(KeyLoadReason::NotRegular(file_type_name(&meta))));
    }
    let len = meta.len();
    if len > MAX_KEY_FILE_LEN {
        return Err(err(KeyLoadReason::TooLarge {
            len,
            max: MAX_KEY_FILE_LEN,
        }));
    }
    // The file's bytes (PEM or DER private key) are wiped when dropped, on
    // every path: a read that fails half-way, a file too large, a parse
    // error. One byte of room beyond the stated size so that reading to the
    // end does not reallocate (a reallocation would leave the first copy
    // behind unwiped) unless the file grew meanwhile; `take` bounds that.
    let mut bytes = Zeroizing::new(Vec::with_capacity(len as usize + 1));
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.into()))?;
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(err(KeyLoadReason::TooLarge {
            len: bytes.len() as u64,
            max: MAX_KEY_FILE_LEN,
        }));
    }
    from_der_or_pem(&bytes, &source)
}

/// What kind of non-regular file this is, for the error.
fn file_type_name(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let t = m.file_type();
    if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

/// Whether a file name is a key file: at least one character, then ".key".
fn is_key_file_name(name: &std::ffi::OsStr) -> bool {
    let b = name.as_encoded_bytes();
    b.len() > 4 && b.ends_with(b".key")
}

/// Load every `*.key` file under `dir`, recursively, in sorted path order.
/// Symlinks are followed; a directory or file reached twice (a symlink loop,
/// or two links to one file) is visited once, under the first path the
/// sorted walk reaches it by. Each file gives one result; an unreadable
/// directory or a dangling `*.key` link gives an error naming it, in its
/// place in the order.
pub fn load_dir(dir: &Path) -> Vec<Result<KeyEntry, KeyLoadError>> {
    let mut walk = Walk::default();
    walk.dir(dir, 0);
    let mut found = walk.found;
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
        .into_iter()
        .map(|(path, problem)| match problem {
            None => load_file(&path),
            Some(e) => Err(e),
        })
        .collect()
}

/// State of one [`load_dir`] walk.
#[derive(Default)]
struct Walk {
    /// Canonical paths of directories already walked (breaks symlink loops).
    seen_dirs: HashSet<PathBuf>,
    /// Canonical paths of key files already found.
    seen_files: HashSet<PathBuf>,
    /// Key files to load, or the error found in their place.
    found: Vec<(PathBuf, Option<KeyLoadError>)>,
}

impl Walk {
    fn problem(&mut self, path: &Path, reason: KeyLoadReason) {
        let e = KeyLoadError::new(&path.display().to_string(), reason);
        self.found.push((path.to_path_buf(), Some(e)));
    }

    fn dir(&mut self, dir: &Path, depth: usize) {
        let canonical = match std::fs::canonicalize(dir) {
            Ok(c) => c,
            Err(e) => return self.problem(dir, e.into()),
        };
        if !self.seen_dirs.insert(canonical) {
            return; // already walked: a symlink loop or a second link
        }
        if depth > MAX_DIR_DEPTH {
            let e =
                std::io::Error::other(format!("nested more than {MAX_DIR_DEPTH} directories deep"));
            return self.problem(dir, e.into());
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => return self.problem(dir, e.into()),
        };
        let mut children: Vec<PathBuf> = Vec::new();
        for entry in entries {
            match entry {
                Ok(e) => children.push(e.path()),
                Err(e) => self.problem(dir, e.into()),
            }
        }
        children.sort();
        for child in children {
            let is_key = child.file_name().is_some_and(is_key_file_name);
            // metadata() follows symlinks; a dangling link matters only if it
            // is named like a key file.
            match std::fs::metadata(&child) {
                Ok(m) if m.is_dir() => self.dir(&child, depth + 1),
                // Refused here, before any open: a FIFO would block it.
                Ok(m) if is_key && !m.is_file() => {
                    self.problem(&child, KeyLoadReason::NotRegular(file_type_name(&m)))
                }
                Ok(_) if is_key => {
                    let canonical = std::fs::canonicalize(&child).unwrap_or_else(|_| child.clone());
                    if self.seen_files.insert(canonical) {
                        self.found.push((child, None));
                    }
                }
                Ok(_) => {}
                Err(e) if is_key => self.problem(&child, e.into()),
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
