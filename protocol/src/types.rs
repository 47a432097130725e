//! Open newtypes for the protocol's numbers: tags, opcodes and error codes.
//!
//! They are open (any `u8` is a value) because the wire can carry values this
//! code does not know: unknown tags must be skipped, unknown opcodes answered
//! with an error, and both must survive logging. `Debug` names known values and
//! prints unknown ones in hex.

use core::fmt;

macro_rules! open_u8 {
    ($(#[$doc:meta])* $name:ident { $($(#[$cdoc:meta])* $konst:ident = $val:expr, $text:expr;)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u8);

        impl $name {
            $($(#[$cdoc])* pub const $konst: $name = $name($val);)*

            /// The name of a known value, `None` for an unknown one.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($val => Some($text),)*
                    _ => None,
                }
            }

            /// Whether this value is one the protocol defines.
            pub const fn is_known(self) -> bool {
                self.name().is_some()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => write!(f, "{}(0x{:02x})", n, self.0),
                    None => write!(f, "{}(unknown 0x{:02x})", stringify!($name), self.0),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "0x{:02x}", self.0),
                }
            }
        }

        impl From<u8> for $name {
            fn from(v: u8) -> Self {
                $name(v)
            }
        }
    };
}

open_u8! {
    /// An item tag.
    Tag {
        /// SHA-256 of the upper-case hex RSA modulus (legacy lookup), 32 bytes.
        CERT_DIGEST = 0x01, "CertDigest";
        /// Server name indication, bytes.
        SNI = 0x02, "SNI";
        /// Client IP, 4 or 16 bytes.
        CLIENT_IP = 0x03, "ClientIP";
        /// Subject key identifier, 20 bytes.
        SKI = 0x04, "SKI";
        /// Server IP, 4 or 16 bytes.
        SERVER_IP = 0x05, "ServerIP";
        /// Certificate ID, string.
        CERT_ID = 0x06, "CertID";
        /// Opcode, exactly one byte.
        OPCODE = 0x11, "Opcode";
        /// Payload: digest / message / ciphertext, or the result.
        PAYLOAD = 0x12, "Payload";
        /// Custom function name for `Op::CUSTOM`.
        CUSTOM_FUNC_NAME = 0x13, "CustomFuncName";
        /// Extra bytes.
        EXTRA = 0x14, "Extra";
        /// Tracing span context.
        SPAN_CONTEXT = 0x15, "SpanContext";
        /// Request context (JSON).
        REQ_CONTEXT = 0x16, "ReqContext";
        /// Compliance region, exactly one byte.
        COMPLIANCE_REGION = 0x17, "ComplianceRegion";
        /// Padding, ignored.
        PADDING = 0x20, "Padding";
    }
}

open_u8! {
    /// An operation code.
    Op {
        /// Raw RSA decrypt.
        RSA_DECRYPT = 0x01, "OpRSADecrypt";
        /// RSA PKCS#1 v1.5 over MD5‖SHA1, no DigestInfo.
        RSA_SIGN_MD5SHA1 = 0x02, "OpRSASignMD5SHA1";
        /// RSA PKCS#1 v1.5, SHA-1.
        RSA_SIGN_SHA1 = 0x03, "OpRSASignSHA1";
        /// RSA PKCS#1 v1.5, SHA-224.
        RSA_SIGN_SHA224 = 0x04, "OpRSASignSHA224";
        /// RSA PKCS#1 v1.5, SHA-256.
        RSA_SIGN_SHA256 = 0x05, "OpRSASignSHA256";
        /// RSA PKCS#1 v1.5, SHA-384.
        RSA_SIGN_SHA384 = 0x06, "OpRSASignSHA384";
        /// RSA PKCS#1 v1.5, SHA-512.
        RSA_SIGN_SHA512 = 0x07, "OpRSASignSHA512";
        /// RSA-PSS, SHA-256.
        RSA_PSS_SIGN_SHA256 = 0x35, "OpRSAPSSSignSHA256";
        /// RSA-PSS, SHA-384.
        RSA_PSS_SIGN_SHA384 = 0x36, "OpRSAPSSSignSHA384";
        /// RSA-PSS, SHA-512.
        RSA_PSS_SIGN_SHA512 = 0x37, "OpRSAPSSSignSHA512";
        /// ECDSA over an MD5‖SHA1 digest.
        ECDSA_SIGN_MD5SHA1 = 0x12, "OpECDSASignMD5SHA1";
        /// ECDSA, SHA-1.
        ECDSA_SIGN_SHA1 = 0x13, "OpECDSASignSHA1";
        /// ECDSA, SHA-224.
        ECDSA_SIGN_SHA224 = 0x14, "OpECDSASignSHA224";
        /// ECDSA, SHA-256.
        ECDSA_SIGN_SHA256 = 0x15, "OpECDSASignSHA256";
        /// ECDSA, SHA-384.
        ECDSA_SIGN_SHA384 = 0x16, "OpECDSASignSHA384";
        /// ECDSA, SHA-512.
        ECDSA_SIGN_SHA512 = 0x17, "OpECDSASignSHA512";
        /// Ed25519 over the whole message.
        ED25519_SIGN = 0x18, "OpEd25519Sign";
        /// Seal a blob.
        SEAL = 0x21, "OpSeal";
        /// Unseal a blob.
        UNSEAL = 0x22, "OpUnseal";
        /// Opaque RPC.
        RPC = 0x23, "OpRPC";
        /// Custom operation named by `Tag::CUSTOM_FUNC_NAME`.
        CUSTOM = 0x24, "OpCustom";
        /// Successful response.
        RESPONSE = 0xF0, "OpResponse";
        /// Ping.
        PING = 0xF1, "OpPing";
        /// Pong.
        PONG = 0xF2, "OpPong";
        /// Error response; payload is one `ErrorCode` byte.
        ERROR = 0xFF, "OpError";
    }
}

open_u8! {
    /// An error code, the one-byte payload of an `Op::ERROR` response.
    ErrorCode {
        /// No error.
        NONE = 0x00, "no error";
        /// The key operation failed.
        CRYPTO = 0x01, "cryptography error";
        /// A 20-byte SKI matched no key.
        KEY_NOT_FOUND = 0x02, "key not found";
        /// Read error.
        READ = 0x03, "read error";
        /// Version mismatch.
        VERSION_MISMATCH = 0x04, "version mismatch";
        /// Unknown or missing opcode.
        BAD_OPCODE = 0x05, "bad opcode";
        /// Response-class opcode in a request.
        UNEXPECTED_OPCODE = 0x06, "unexpected opcode";
        /// Malformed message.
        FORMAT = 0x07, "malformed message";
        /// No SKI, key store failure, unsupported operation.
        INTERNAL = 0x08, "internal error";
        /// Certificate not found.
        CERT_NOT_FOUND = 0x09, "certificate not found";
        /// Sealed blob expired.
        EXPIRED = 0x0A, "sealing key expired";
        /// Upstream key server misconfigured.
        REMOTE_CONFIGURATION = 0x0B, "remote configuration error";
    }
}

/// The hash an opcode names. For RSA PKCS#1 and PSS it fixes the digest length
/// and DigestInfo; for ECDSA it only selects the hash (the reference does not
/// enforce the digest length there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hash {
    /// MD5‖SHA1 (TLS 1.0/1.1), 36 bytes, no DigestInfo.
    Md5Sha1,
    /// SHA-1, 20 bytes.
    Sha1,
    /// SHA-224, 28 bytes.
    Sha224,
    /// SHA-256, 32 bytes.
    Sha256,
    /// SHA-384, 48 bytes.
    Sha384,
    /// SHA-512, 64 bytes.
    Sha512,
}

impl Hash {
    /// Digest length in bytes.
    pub const fn len(self) -> usize {
        match self {
            Hash::Md5Sha1 => 36,
            Hash::Sha1 => 20,
            Hash::Sha224 => 28,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// Never empty; present so clippy's `len_without_is_empty` is satisfied honestly.
    pub const fn is_empty(self) -> bool {
        false
    }

    /// The DER DigestInfo prefix that PKCS#1 v1.5 puts before the digest
    /// (RFC 8017 section 9.2 note 1). Empty for MD5‖SHA1, which TLS signs bare.
    pub const fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Md5Sha1 => &[],
            Hash::Sha1 => &[
                0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
                0x14,
            ],
            Hash::Sha224 => &[
                0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x04, 0x05, 0x00, 0x04, 0x1c,
            ],
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

/// What an opcode asks for, grouped the way a server dispatches it: one
/// handler per family, chosen by one `match`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// Raw RSA decrypt (`c^d mod n`, padding kept).
    RsaDecrypt,
    /// RSA PKCS#1 v1.5 signature over a digest of this hash.
    RsaPkcs1(Hash),
    /// RSA-PSS over a digest of this hash, MGF1 same hash, salt = hash length.
    RsaPss(Hash),
    /// ECDSA over a digest; the hash is advisory.
    Ecdsa(Hash),
    /// Ed25519 over the whole message.
    Ed25519,
    /// Seal.
    Seal,
    /// Unseal.
    Unseal,
    /// RPC.
    Rpc,
    /// Custom operation.
    Custom,
    /// Ping, answered with pong.
    Ping,
    /// A response-class opcode (response, pong, error) sent as a request.
    ResponseClass,
    /// Anything else.
    Unknown,
}

impl Op {
    /// The family this opcode belongs to.
    pub const fn class(self) -> OpClass {
        use Hash::*;
        match self.0 {
            0x01 => OpClass::RsaDecrypt,
            0x02 => OpClass::RsaPkcs1(Md5Sha1),
            0x03 => OpClass::RsaPkcs1(Sha1),
            0x04 => OpClass::RsaPkcs1(Sha224),
            0x05 => OpClass::RsaPkcs1(Sha256),
            0x06 => OpClass::RsaPkcs1(Sha384),
            0x07 => OpClass::RsaPkcs1(Sha512),
            0x35 => OpClass::RsaPss(Sha256),
            0x36 => OpClass::RsaPss(Sha384),
            0x37 => OpClass::RsaPss(Sha512),
            0x12 => OpClass::Ecdsa(Md5Sha1),
            0x13 => OpClass::Ecdsa(Sha1),
            0x14 => OpClass::Ecdsa(Sha224),
            0x15 => OpClass::Ecdsa(Sha256),
            0x16 => OpClass::Ecdsa(Sha384),
            0x17 => OpClass::Ecdsa(Sha512),
            0x18 => OpClass::Ed25519,
            0x21 => OpClass::Seal,
            0x22 => OpClass::Unseal,
            0x23 => OpClass::Rpc,
            0x24 => OpClass::Custom,
            0xF1 => OpClass::Ping,
            0xF0 | 0xF2 | 0xFF => OpClass::ResponseClass,
            _ => OpClass::Unknown,
        }
    }

    /// Every opcode the protocol defines, for tables and tests.
    pub const ALL: [Op; 25] = [
        Op::RSA_DECRYPT,
        Op::RSA_SIGN_MD5SHA1,
        Op::RSA_SIGN_SHA1,
        Op::RSA_SIGN_SHA224,
        Op::RSA_SIGN_SHA256,
        Op::RSA_SIGN_SHA384,
        Op::RSA_SIGN_SHA512,
        Op::RSA_PSS_SIGN_SHA256,
        Op::RSA_PSS_SIGN_SHA384,
        Op::RSA_PSS_SIGN_SHA512,
        Op::ECDSA_SIGN_MD5SHA1,
        Op::ECDSA_SIGN_SHA1,
        Op::ECDSA_SIGN_SHA224,
        Op::ECDSA_SIGN_SHA256,
        Op::ECDSA_SIGN_SHA384,
        Op::ECDSA_SIGN_SHA512,
        Op::ED25519_SIGN,
        Op::SEAL,
        Op::UNSEAL,
        Op::RPC,
        Op::CUSTOM,
        Op::RESPONSE,
        Op::PING,
        Op::PONG,
        Op::ERROR,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_names_known_and_hex_for_unknown() {
        assert_eq!(format!("{:?}", Op::PING), "OpPing(0xf1)");
        assert_eq!(format!("{:?}", Op(0x99)), "Op(unknown 0x99)");
        assert_eq!(format!("{}", Tag(0x7e)), "0x7e");
        assert_eq!(format!("{}", ErrorCode::KEY_NOT_FOUND), "key not found");
    }

    #[test]
    fn every_defined_opcode_is_known_and_classified() {
        for op in Op::ALL {
            assert!(op.is_known(), "{op:?}");
        }
        for v in 0..=255u8 {
            let op = Op(v);
            assert_eq!(op.is_known(), op.class() != OpClass::Unknown, "{op:?}");
            // ALL is a hand-written array: a new opcode must be added to it
            // too, or the tests that walk it (every opcode on every key kind)
            // silently skip the new one. Found by doing the add-an-opcode
            // recipe (docs/CONTRIBUTING.md).
            assert_eq!(op.is_known(), Op::ALL.contains(&op), "{op:?} and Op::ALL");
        }
    }

    #[test]
    fn digest_info_prefix_lengths_match_der() {
        for h in [
            Hash::Sha1,
            Hash::Sha224,
            Hash::Sha256,
            Hash::Sha384,
            Hash::Sha512,
        ] {
            let p = h.digest_info_prefix();
            // Outer SEQUENCE length covers everything after its 2-byte header,
            // including the digest itself.
            assert_eq!(p[1] as usize, p.len() - 2 + h.len(), "{h:?}");
            assert_eq!(*p.last().unwrap() as usize, h.len(), "{h:?}");
        }
        assert!(Hash::Md5Sha1.digest_info_prefix().is_empty());
    }
}
