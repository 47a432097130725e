//! Why a simulated API refuses a request ([`ApiError`]).
//!
//! Owns: the refusal reasons of the stand-ins' key operations, token and JWT
//! checks, request-field checks and the certificates API. Each message is
//! the text the stand-in puts in its answer (worded as the real service
//! words it where there is one to follow), so a message is whole: an
//! underlying error is a field shown in the text, not a `#[source]` (the
//! client only ever sees the text). Must not: decide status codes or error
//! codes (each API's handler does, per variant where it matters).

use keycore_protocol::{ErrorCode, OpClass};

/// A simulated API's refusal; the message is the answer's error text.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The software key refused the operation.
    #[error("key operation {op:?} failed: {code:?}")]
    KeyOperation {
        /// The operation.
        op: OpClass,
        /// The key's error code.
        code: ErrorCode,
    },
    /// Data too long for a raw PKCS#1 v1.5 signature with this key (or not an RSA key).
    #[error("{len} bytes do not fit a raw PKCS#1 signature")]
    RawPkcs1TooLong {
        /// The data's length.
        len: usize,
    },

    /// No `Authorization` header.
    #[error("no Authorization header")]
    NoAuthorization,
    /// `Authorization` is not `Bearer ...`.
    #[error("Authorization is not a Bearer token")]
    NotBearer,
    /// A bearer token the stand-in never issued.
    #[error("unknown token")]
    UnknownToken,
    /// A token issued for another audience.
    #[error("token is for {issued_for}, not {wanted}")]
    WrongAudience {
        /// The token's audience.
        issued_for: String,
        /// The audience the API wants.
        wanted: String,
    },
    /// A token past its lifetime.
    #[error("token expired")]
    TokenExpired,

    /// An assertion that is not `header.claims.signature`.
    #[error("assertion is not a three-part JWT")]
    JwtShape,
    /// A JWT part that is not base64url.
    #[error("JWT {part} is not base64url")]
    JwtBase64 {
        /// "header", "claims" or "signature".
        part: &'static str,
    },
    /// A JWT part that is not JSON.
    #[error("JWT {part}: {error}")]
    JwtJson {
        /// "header" or "claims".
        part: &'static str,
        /// The parser's error.
        error: serde_json::Error,
    },
    /// A JWT signed with another algorithm than the grant needs.
    #[error("JWT alg is {got}, expected {expected}")]
    JwtAlg {
        /// The header's `alg` (JSON, quoted).
        got: serde_json::Value,
        /// The algorithm wanted.
        expected: String,
    },
    /// A JWT whose signature does not verify with the registered key.
    #[error("JWT signature does not verify")]
    JwtSignature,
    /// A public key that is not a DER SubjectPublicKeyInfo.
    #[error("SPKI: {0}")]
    Spki(x509_parser::nom::Err<x509_parser::error::X509Error>),

    /// Azure: a digest whose length does not fit the algorithm.
    #[error("Invalid digest length {got} for {alg} (expected {expected})")]
    DigestLength {
        /// The algorithm.
        alg: String,
        /// The digest's length.
        got: usize,
        /// The algorithm's digest length.
        expected: usize,
    },
    /// Azure: an ECDSA algorithm for a key on another curve.
    #[error("{0} is not valid for this key")]
    CurveMismatch(String),
    /// Azure: the key's signature did not convert to the JWS `r‖s` form.
    #[error("bad ECDSA signature")]
    EcdsaSignature,
    /// Azure: a signing algorithm the key (or the stand-in) does not do.
    #[error("Algorithm {0} is not supported for this key")]
    SignAlgorithm(String),
    /// Azure: a decrypt algorithm other than RSA1_5, or a key that is not RSA.
    #[error("Algorithm {0} is not supported for decrypt with this key (the stand-in does RSA1_5)")]
    DecryptAlgorithm(String),
    /// Azure: a ciphertext not the modulus' length.
    #[error("ciphertext length does not match the key")]
    CiphertextLength,
    /// Azure: the decrypted block is not PKCS#1 v1.5 type 2.
    #[error("decryption failed (padding)")]
    DecryptPadding,

    /// Google: a CRC32C field that does not match its data.
    #[error("The checksum in field {0} did not match the data.")]
    ChecksumMismatch(&'static str),
    /// Google: a CRC32C field that is not a string.
    #[error("{0} must be an int64 string")]
    ChecksumType(&'static str),
    /// Google: both or neither of `digest` and `data`.
    #[error("Exactly one of digest or data must be set.")]
    DigestOrData,
    /// Google: `digest` is not an object.
    #[error("digest must be an object")]
    DigestNotObject,
    /// Google: `digest` has not exactly one field.
    #[error("digest must have exactly one of sha256, sha384, sha512")]
    DigestFields,
    /// Google: `digest` has no field.
    #[error("empty digest")]
    DigestEmpty,
    /// Google: a `digest` field other than sha256/384/512.
    #[error("unknown digest field {0}")]
    DigestField(String),
    /// Google: `digest`'s or `data`'s value is not base64.
    #[error("{0} must be base64")]
    NotBase64(&'static str),
    /// Google: a digest whose length does not fit its field.
    #[error("Digest of {len} bytes for {field}")]
    DigestFieldLength {
        /// The field (sha256, ...).
        field: String,
        /// The digest's length.
        len: usize,
    },
    /// Google: a digest of another hash than the key version's algorithm.
    #[error("The requested digest type {field} does not match algorithm {alg}.")]
    DigestAlgorithm {
        /// The field (sha256, ...).
        field: String,
        /// The key version's algorithm.
        alg: String,
    },
    /// Google: a digest for an algorithm that signs data.
    #[error("Algorithm {0} does not sign digests.")]
    SignsData(String),
    /// Google: data for an algorithm that signs digests.
    #[error("Algorithm {0} requires a digest, not data.")]
    SignsDigests(String),

    /// Certificates API: a CSR that is not PEM.
    #[error("csr is not PEM: {0}")]
    CsrPem(rustls_pki_types::pem::Error),
    /// Certificates API: a CSR that does not parse.
    #[error("csr does not parse: {0}")]
    CsrDer(x509_parser::nom::Err<x509_parser::error::X509Error>),
    /// Certificates API: a CSR signed with an algorithm the stand-in does not take.
    #[error("csr signature algorithm {0} not supported")]
    CsrAlgorithm(String),
    /// Certificates API: a CSR whose signature does not verify with its own key.
    #[error("csr signature does not verify with its key")]
    CsrSignature,
    /// Certificates API: a CSR whose SAN does not name the host.
    #[error("csr SAN does not name {0}")]
    CsrHost(String),
    /// Certificates API: no CA to sign with (`ca_pem` makes it first).
    #[error("no CA")]
    NoCa,
    /// Certificates API: the stand-in's CA or the certificate could not be made.
    #[error("{0}")]
    Certificate(rcgen::Error),
}
