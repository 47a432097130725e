//! The only `unsafe` code of the software key backend: thin owners of aws-lc
//! objects (`EVP_PKEY`, `RSA`, `EC_KEY`, an Ed25519 secret) and the handful of
//! aws-lc calls that aws-lc-rs does not expose.
//!
//! Why FFI at all: aws-lc-rs (1.19) signs only what TLS 1.3 needs. It has no
//! PKCS#1 v1.5 signature over a bare MD5‖SHA1 digest or over SHA-224, no raw
//! RSA decryption (`c^d mod n` with the padding kept), and its `sign_digest`
//! for ECDSA requires the digest length of the key's own hash, while the
//! protocol lets the edge send any length. Its Ed25519 and `sign_digest` paths
//! also allocate a `Vec` and an `EVP_PKEY_CTX` per call, which the hot path
//! avoids by calling `ED25519_sign`, `RSA_sign_raw`, `RSA_sign_pss_mgf1`,
//! `RSA_decrypt` and `ECDSA_sign` directly.
//!
//! What this module must not do: interpret key material, build padding or do
//! any big-number arithmetic. Every function here is a checked wrapper around
//! one aws-lc call; policy (which sizes and curves are allowed, digest lengths)
//! lives in `software.rs`, in safe code.
//!
//! Thread safety: aws-lc documents `RSA` and `EC_KEY` objects as usable from
//! many threads at once by non-mutating functions, and lists the signing and
//! decryption functions as non-mutating (aws-lc `include/openssl/rsa.h`,
//! sections "Allocation and destruction", "Encryption / Decryption" and
//! "Signing / Verification"; `include/openssl/ec_key.h`, "EC key objects").
//! Blinding values and the lazily built Montgomery contexts are guarded by the
//! `RSA`'s own lock inside aws-lc. Nothing here calls a mutating function after
//! construction, so the owners are `Send + Sync`.

use aws_lc_sys as ffi;
use core::ffi::c_int;
use core::ptr::NonNull;
use keycore_protocol::Hash;

/// Any aws-lc failure. The reason is on aws-lc's thread-local error queue,
/// which is cleared here so it never grows or leaks into a later call; the
/// caller maps this to a protocol error or a load error of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Failed;

/// Drop whatever aws-lc queued on this thread and report failure.
fn failed() -> Failed {
    // SAFETY: ERR_clear_error only touches this thread's error queue.
    unsafe { ffi::ERR_clear_error() };
    Failed
}

/// Map an aws-lc "1 on success" return to a Result.
fn check(rc: c_int) -> Result<(), Failed> {
    if rc == 1 {
        Ok(())
    } else {
        Err(failed())
    }
}

/// A `CBS` (aws-lc's read cursor) over a borrowed slice.
fn cbs(der: &[u8]) -> ffi::CBS {
    ffi::CBS {
        data: der.as_ptr(),
        len: der.len(),
    }
}

/// Which DER structure a private key is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DerFormat {
    /// PKCS#8 `PrivateKeyInfo` ("PRIVATE KEY").
    Pkcs8,
    /// PKCS#1 `RSAPrivateKey` ("RSA PRIVATE KEY").
    Pkcs1,
    /// SEC1 / RFC 5915 `ECPrivateKey` ("EC PRIVATE KEY"), with its curve.
    Sec1,
}

/// An owned `EVP_PKEY`: the parsed private key before it is split by kind.
#[derive(Debug)]
pub(crate) struct Pkey(NonNull<ffi::EVP_PKEY>);

// SAFETY: the EVP_PKEY is exclusively owned and only read after parsing
// (evp.h: non-mutating functions may be used concurrently).
unsafe impl Send for Pkey {}
// SAFETY: as above; no method takes `&self` and mutates.
unsafe impl Sync for Pkey {}

impl Drop for Pkey {
    fn drop(&mut self) {
        // SAFETY: we own one reference, taken at construction.
        unsafe { ffi::EVP_PKEY_free(self.0.as_ptr()) }
    }
}

/// The aws-lc key type ids this backend knows.
pub(crate) const PKEY_RSA: c_int = ffi::EVP_PKEY_RSA;
/// `EVP_PKEY_EC`.
pub(crate) const PKEY_EC: c_int = ffi::EVP_PKEY_EC;
/// `EVP_PKEY_ED25519`.
pub(crate) const PKEY_ED25519: c_int = ffi::EVP_PKEY_ED25519;
/// NIDs of the supported curves.
pub(crate) const NID_P256: c_int = ffi::NID_X9_62_prime256v1;
/// P-384.
pub(crate) const NID_P384: c_int = ffi::NID_secp384r1;
/// P-521.
pub(crate) const NID_P521: c_int = ffi::NID_secp521r1;

impl Pkey {
    /// Parse `der` as `format`. Trailing bytes after the structure are refused.
    /// aws-lc checks internal consistency while parsing (RSA CRT values, the
    /// EC public point matching the private scalar).
    pub(crate) fn parse(der: &[u8], format: DerFormat) -> Result<Pkey, Failed> {
        let mut c = cbs(der);
        // SAFETY: `c` borrows `der`, which outlives every call below; each
        // parser returns a new owned object or NULL; ownership of the inner
        // RSA/EC_KEY passes to the EVP_PKEY in `assign` (freed by us if that
        // fails).
        unsafe {
            ffi::CRYPTO_library_init();
            let pkey = match format {
                DerFormat::Pkcs8 => ffi::EVP_parse_private_key(&mut c),
                DerFormat::Pkcs1 => {
                    let rsa = ffi::RSA_parse_private_key(&mut c);
                    if rsa.is_null() {
                        return Err(failed());
                    }
                    Self::wrap(
                        rsa,
                        |p, k| ffi::EVP_PKEY_assign_RSA(p, k),
                        |k| ffi::RSA_free(k),
                    )
                }
                DerFormat::Sec1 => {
                    let ec = ffi::EC_KEY_parse_private_key(&mut c, core::ptr::null());
                    if ec.is_null() {
                        return Err(failed());
                    }
                    Self::wrap(
                        ec,
                        |p, k| ffi::EVP_PKEY_assign_EC_KEY(p, k),
                        |k| ffi::EC_KEY_free(k),
                    )
                }
            };
            let pkey = Pkey(NonNull::new(pkey).ok_or_else(failed)?);
            if ffi::CBS_len(&c) != 0 {
                return Err(Failed);
            }
            Ok(pkey)
        }
    }

    /// Put an inner key into a fresh EVP_PKEY; NULL on failure (inner freed).
    ///
    /// # Safety
    /// `key` must be a valid owned pointer that `assign` takes ownership of on
    /// success and `free` releases.
    unsafe fn wrap<K>(
        key: *mut K,
        assign: impl FnOnce(*mut ffi::EVP_PKEY, *mut K) -> c_int,
        free: impl FnOnce(*mut K),
    ) -> *mut ffi::EVP_PKEY {
        // SAFETY: EVP_PKEY_new has no preconditions.
        let pkey = unsafe { ffi::EVP_PKEY_new() };
        if pkey.is_null() || assign(pkey, key) != 1 {
            free(key);
            // SAFETY: EVP_PKEY_free accepts NULL.
            unsafe { ffi::EVP_PKEY_free(pkey) };
            return core::ptr::null_mut();
        }
        pkey
    }

    /// The aws-lc key type (`EVP_PKEY_RSA`, `EVP_PKEY_EC`, ...).
    pub(crate) fn id(&self) -> c_int {
        // SAFETY: valid pointer, read-only.
        unsafe { ffi::EVP_PKEY_id(self.0.as_ptr()) }
    }

    /// DER SubjectPublicKeyInfo of the public half.
    pub(crate) fn spki_der(&self) -> Result<Vec<u8>, Failed> {
        // SAFETY: the CBB is initialised before use and cleaned up on every
        // path; CBB_finish hands us an OPENSSL_malloc'd buffer that we copy
        // and free.
        unsafe {
            let mut cbb: ffi::CBB = core::mem::zeroed();
            if ffi::CBB_init(&mut cbb, 256) != 1 {
                return Err(failed());
            }
            if ffi::EVP_marshal_public_key(&mut cbb, self.0.as_ptr()) != 1 {
                ffi::CBB_cleanup(&mut cbb);
                return Err(failed());
            }
            let mut data: *mut u8 = core::ptr::null_mut();
            let mut len = 0usize;
            if ffi::CBB_finish(&mut cbb, &mut data, &mut len) != 1 {
                ffi::CBB_cleanup(&mut cbb);
                return Err(failed());
            }
            let v = core::slice::from_raw_parts(data, len).to_vec();
            ffi::OPENSSL_free(data.cast());
            Ok(v)
        }
    }

    /// The RSA key inside (a new reference), if this is RSA.
    pub(crate) fn rsa(&self) -> Option<Rsa> {
        // SAFETY: get1 returns a new reference (or NULL) that Rsa owns.
        let p = unsafe { ffi::EVP_PKEY_get1_RSA(self.0.as_ptr()) };
        NonNull::new(p).map(Rsa)
    }

    /// The EC key inside (a new reference), if this is EC.
    pub(crate) fn ec(&self) -> Option<EcKey> {
        // SAFETY: get1 returns a new reference (or NULL) that EcKey owns.
        let p = unsafe { ffi::EVP_PKEY_get1_EC_KEY(self.0.as_ptr()) };
        NonNull::new(p).map(EcKey)
    }

    /// The Ed25519 signing secret, if this is Ed25519.
    pub(crate) fn ed25519(&self) -> Option<Ed25519Secret> {
        let mut seed = [0u8; 32];
        let mut len = seed.len();
        let mut secret = Ed25519Secret([0u8; 64]);
        let mut public = [0u8; 32];
        // SAFETY: out buffers are sized as aws-lc requires (32-byte seed in,
        // 32-byte public and 64-byte private out); `len` is checked.
        unsafe {
            if ffi::EVP_PKEY_get_raw_private_key(self.0.as_ptr(), seed.as_mut_ptr(), &mut len) != 1
                || len != seed.len()
            {
                ffi::OPENSSL_cleanse(seed.as_mut_ptr().cast(), seed.len());
                failed();
                return None;
            }
            ffi::ED25519_keypair_from_seed(
                public.as_mut_ptr(),
                secret.0.as_mut_ptr(),
                seed.as_ptr(),
            );
            ffi::OPENSSL_cleanse(seed.as_mut_ptr().cast(), seed.len());
        }
        Some(secret)
    }
}

/// A curve's name for error messages: aws-lc's NIST name when it has one
/// ("P-224"), else a few well-known others, else the NID.
pub(crate) fn curve_name(nid: c_int) -> String {
    if nid == ffi::NID_secp256k1 {
        return "secp256k1".into();
    }
    // SAFETY: EC_curve_nid2nist returns NULL or a pointer to a static C string.
    unsafe {
        let p = ffi::EC_curve_nid2nist(nid);
        if p.is_null() {
            format!("NID {nid}")
        } else {
            core::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// An EVP_PKEY type's name for error messages.
pub(crate) fn pkey_type_name(id: c_int) -> String {
    match id {
        ffi::EVP_PKEY_RSA_PSS => "RSA-PSS (restricted RSA key)".into(),
        ffi::EVP_PKEY_DSA => "DSA".into(),
        ffi::EVP_PKEY_X25519 => "X25519".into(),
        ffi::EVP_PKEY_ED448 => "Ed448".into(),
        ffi::EVP_PKEY_DH => "DH".into(),
        ffi::EVP_PKEY_PQDSA => "ML-DSA".into(),
        ffi::EVP_PKEY_KEM => "KEM".into(),
        other => format!("(EVP_PKEY type {other})"),
    }
}

/// An owned `RSA` private key.
#[derive(Debug)]
pub(crate) struct Rsa(NonNull<ffi::RSA>);

// SAFETY: see the module comment: RSA signing/decryption are documented
// non-mutating and safe to call concurrently; we never call a mutating
// function after construction.
unsafe impl Send for Rsa {}
// SAFETY: as above.
unsafe impl Sync for Rsa {}

impl Drop for Rsa {
    fn drop(&mut self) {
        // SAFETY: we own one reference.
        unsafe { ffi::RSA_free(self.0.as_ptr()) }
    }
}

/// The EVP_MD for a hash, for PSS. MD5‖SHA1 has none here (not a PSS hash).
fn evp_md(hash: Hash) -> Option<*const ffi::EVP_MD> {
    // SAFETY: these return pointers to static method tables.
    unsafe {
        Some(match hash {
            Hash::Md5Sha1 => return None,
            Hash::Sha1 => ffi::EVP_sha1(),
            Hash::Sha224 => ffi::EVP_sha224(),
            Hash::Sha256 => ffi::EVP_sha256(),
            Hash::Sha384 => ffi::EVP_sha384(),
            Hash::Sha512 => ffi::EVP_sha512(),
        })
    }
}

impl Rsa {
    /// Modulus size in bits.
    pub(crate) fn bits(&self) -> usize {
        // SAFETY: valid pointer, read-only.
        unsafe { ffi::RSA_bits(self.0.as_ptr()) as usize }
    }

    /// Modulus size in bytes (k): the length of every signature and of the
    /// decrypt input and output.
    pub(crate) fn size(&self) -> usize {
        // SAFETY: valid pointer, read-only.
        unsafe { ffi::RSA_size(self.0.as_ptr()) as usize }
    }

    /// RSASSA-PKCS1-v1_5: pad `encoded` (DigestInfo‖digest, or the bare 36
    /// bytes for MD5‖SHA1) with type-1 padding and apply the private key.
    /// `out` must hold `size()` bytes; returns the bytes written.
    #[inline]
    pub(crate) fn sign_pkcs1(&self, encoded: &[u8], out: &mut [u8]) -> Result<usize, Failed> {
        let mut n = 0usize;
        // SAFETY: pointers and lengths come from live slices; aws-lc writes at
        // most `out.len()` bytes; RSA_sign_raw is non-mutating (rsa.h).
        check(unsafe {
            ffi::RSA_sign_raw(
                self.0.as_ptr(),
                &mut n,
                out.as_mut_ptr(),
                out.len(),
                encoded.as_ptr(),
                encoded.len(),
                ffi::RSA_PKCS1_PADDING,
            )
        })?;
        Ok(n)
    }

    /// RSASSA-PSS over `digest` (of `hash`), MGF1 with the same hash, salt
    /// length = hash length.
    #[inline]
    pub(crate) fn sign_pss(
        &self,
        hash: Hash,
        digest: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Failed> {
        let md = evp_md(hash).ok_or(Failed)?;
        // A safety precondition, not request policy (that is check_input):
        // the PSS encoder reads the hash's length of digest.
        if digest.len() != hash.len() {
            return Err(Failed);
        }
        let mut n = 0usize;
        // SAFETY: as sign_pkcs1; `md` is a static table; a NULL mgf1_md means
        // "same as md"; `digest` holds the hash's length (checked above).
        check(unsafe {
            ffi::RSA_sign_pss_mgf1(
                self.0.as_ptr(),
                &mut n,
                out.as_mut_ptr(),
                out.len(),
                digest.as_ptr(),
                digest.len(),
                md,
                core::ptr::null(),
                ffi::RSA_PSS_SALTLEN_DIGEST,
            )
        })?;
        Ok(n)
    }

    /// Raw RSA decryption: `input^d mod n`, written as exactly `size()` bytes
    /// with no padding check or removal. aws-lc refuses input that is not
    /// `size()` bytes or is not less than n.
    #[inline]
    pub(crate) fn decrypt_raw(&self, input: &[u8], out: &mut [u8]) -> Result<usize, Failed> {
        let mut n = 0usize;
        // SAFETY: as sign_pkcs1; RSA_decrypt is non-mutating (rsa.h).
        check(unsafe {
            ffi::RSA_decrypt(
                self.0.as_ptr(),
                &mut n,
                out.as_mut_ptr(),
                out.len(),
                input.as_ptr(),
                input.len(),
                ffi::RSA_NO_PADDING,
            )
        })?;
        Ok(n)
    }
}

#[cfg(test)]
impl Rsa {
    /// Test-only: the raw public operation `sig^e mod n` (k bytes), to check
    /// a signature's encoded message byte for byte.
    pub(crate) fn public_raw(&self, sig: &[u8]) -> Result<Vec<u8>, Failed> {
        let mut out = vec![0u8; self.size()];
        let mut n = 0usize;
        // SAFETY: as sign_pkcs1; RSA_verify_raw writes at most out.len() bytes.
        check(unsafe {
            ffi::RSA_verify_raw(
                self.0.as_ptr(),
                &mut n,
                out.as_mut_ptr(),
                out.len(),
                sig.as_ptr(),
                sig.len(),
                ffi::RSA_NO_PADDING,
            )
        })?;
        out.truncate(n);
        Ok(out)
    }
}

/// An owned `EC_KEY` private key.
#[derive(Debug)]
pub(crate) struct EcKey(NonNull<ffi::EC_KEY>);

// SAFETY: see the module comment: ECDSA_sign takes a const EC_KEY and is
// non-mutating (ec_key.h); nothing mutates the key after construction.
unsafe impl Send for EcKey {}
// SAFETY: as above.
unsafe impl Sync for EcKey {}

impl Drop for EcKey {
    fn drop(&mut self) {
        // SAFETY: we own one reference.
        unsafe { ffi::EC_KEY_free(self.0.as_ptr()) }
    }
}

impl EcKey {
    /// The curve's NID, or 0 for a curve aws-lc can't name.
    pub(crate) fn curve_nid(&self) -> c_int {
        // SAFETY: valid pointer; the group is owned by the key.
        unsafe {
            let g = ffi::EC_KEY_get0_group(self.0.as_ptr());
            if g.is_null() {
                0
            } else {
                ffi::EC_GROUP_get_curve_name(g)
            }
        }
    }

    /// Longest DER signature this key can produce.
    pub(crate) fn max_sig_len(&self) -> usize {
        // SAFETY: valid pointer, read-only.
        unsafe { ffi::ECDSA_size(self.0.as_ptr()) }
    }

    /// ECDSA over `digest` (any length: aws-lc truncates it to the order's
    /// bit length as FIPS 186 says), DER `SEQUENCE { r, s }` into `out`, which
    /// must hold `max_sig_len()` bytes.
    #[inline]
    pub(crate) fn sign(&self, digest: &[u8], out: &mut [u8]) -> Result<usize, Failed> {
        if out.len() < self.max_sig_len() {
            return Err(Failed);
        }
        let mut n: core::ffi::c_uint = 0;
        // SAFETY: `out` has ECDSA_size bytes as aws-lc requires; the digest
        // slice is live for the call; ECDSA_sign takes a const key.
        check(unsafe {
            ffi::ECDSA_sign(
                0,
                digest.as_ptr(),
                digest.len(),
                out.as_mut_ptr(),
                &mut n,
                self.0.as_ptr(),
            )
        })?;
        Ok(n as usize)
    }
}

/// An Ed25519 private key in aws-lc's 64-byte form (seed‖public key), wiped
/// on drop.
pub(crate) struct Ed25519Secret([u8; 64]);

impl core::fmt::Debug for Ed25519Secret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Ed25519Secret(..)")
    }
}

impl Drop for Ed25519Secret {
    fn drop(&mut self) {
        // SAFETY: cleanses exactly our own 64 bytes; not optimised away.
        unsafe { ffi::OPENSSL_cleanse(self.0.as_mut_ptr().cast(), self.0.len()) }
    }
}

impl Ed25519Secret {
    /// Sign the whole `msg` (PureEdDSA) into `out`.
    #[inline]
    pub(crate) fn sign(&self, msg: &[u8], out: &mut [u8; 64]) -> Result<(), Failed> {
        // SAFETY: out is 64 bytes, the secret is 64 bytes, msg is a live slice;
        // ED25519_sign fails only on allocation failure.
        check(unsafe {
            ffi::ED25519_sign(out.as_mut_ptr(), msg.as_ptr(), msg.len(), self.0.as_ptr())
        })
    }
}
