//! The security settings that are lists of entries, read from the config
//! file's YAML tree: `client_identities` (which client certificates may
//! connect, under which name, with which limits) and `key_policies` (what
//! each key may be used for, and by whom). Issue 18.
//!
//! Owns: the typed shapes ([`ClientIdentity`], [`KeyPolicy`], [`OpFilter`]),
//! their validation with file:line messages, their `-o` rendering (flow
//! YAML that parses back to the same value) and the bounds
//! ([`MAX_CLIENT_IDENTITIES`], ...). The scalar security keys
//! (`client_max_rps`, `audit_*`) are ordinary table entries.
//!
//! Must not: look at certificates, keys or requests. The engine compiles
//! these into what its verifier and dispatch check (`engine/src/security.rs`).

use crate::output::yaml_quote;
use crate::yaml::{self, Kind, Node};
use crate::{ConfigError, Origin};
use keycore_protocol::{Hash, OpClass, Ski, SKI_LEN};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// Most `client_identities` entries. Each identity is a metrics label, a bit
/// in every key's allowed-clients mask and a slot in each core's limiter
/// table, so this bounds label cardinality and per-core memory (identities
/// seen without a configured list are capped by the same number; the rest
/// share the label `other`).
pub const MAX_CLIENT_IDENTITIES: usize = 64;
/// Most `key_policies` entries (matched against each key once, at start-up).
pub const MAX_KEY_POLICIES: usize = 4096;
/// Most name patterns or SPKI pins in one identity (several pins let an
/// edge's certificates rotate without a gap).
pub const MAX_MATCHERS: usize = 64;
/// Largest per-identity `max_rps` / `client_max_rps`.
pub const MAX_RPS: u64 = 100_000_000;
/// Largest per-identity `max_connections` / `client_max_connections`.
pub const MAX_CONNECTIONS: u64 = 100_000_000;

/// The issue-18 settings (`client_*`, `key_policies`, `audit_*`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Security {
    /// `client_identities`; empty: any certificate chaining to
    /// `cloudflare_ca_cert` is accepted, its identity is its subject CN.
    pub client_identities: Vec<ClientIdentity>,
    /// `key_policies`, first match per key wins.
    pub key_policies: Vec<KeyPolicy>,
    /// `client_max_rps`: key operations per second per identity; 0 = none.
    pub client_max_rps: u32,
    /// `client_max_connections`: connections per identity; 0 = none.
    pub client_max_connections: u32,
    /// `audit_file`; `None`: no audit trail.
    pub audit_file: Option<PathBuf>,
    /// `audit_interval`.
    pub audit_interval: Duration,
    /// `audit_max_bytes`: rotate once the file reaches this size.
    pub audit_max_bytes: u64,
    /// `audit_keep`: rotated files kept besides the current one.
    pub audit_keep: u32,
    /// `audit_fail_closed`.
    pub audit_fail_closed: bool,
}

/// One `client_identities` entry: a named set of client certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The identity's name (metrics label, audit records, `clients:` of a
    /// key policy). Letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Patterns (`*` = any run of characters, ASCII case ignored) of which
    /// one must match the certificate's subject CN or one of its DNS or URI
    /// SANs. Empty: any name.
    pub names: Vec<String>,
    /// SHA-256 of the certificate's DER SubjectPublicKeyInfo; one must
    /// match. Empty: any key.
    pub spki_sha256: Vec<[u8; 32]>,
    /// Key operations per second for this identity (overrides
    /// `client_max_rps`; 0 = none).
    pub max_rps: Option<u32>,
    /// Concurrent connections for this identity (overrides
    /// `client_max_connections`; 0 = none).
    pub max_connections: Option<u32>,
}

/// A kind of operation a key policy can refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpFilter {
    /// Raw RSA decrypt (the TLS 1.2 RSA key exchange's oracle).
    RsaDecrypt,
    /// Every RSA PKCS#1 v1.5 signature.
    RsaPkcs1,
    /// Every RSA-PSS signature.
    RsaPss,
    /// Every ECDSA signature.
    Ecdsa,
    /// Ed25519.
    Ed25519,
    /// Any signature over this hash (e.g. `sha1`, `md5sha1`).
    Hash(Hash),
}

/// The `deny_ops` words.
pub const OP_FILTERS: &[(&str, OpFilter)] = &[
    ("rsa_decrypt", OpFilter::RsaDecrypt),
    ("rsa_pkcs1", OpFilter::RsaPkcs1),
    ("rsa_pss", OpFilter::RsaPss),
    ("ecdsa", OpFilter::Ecdsa),
    ("ed25519", OpFilter::Ed25519),
    ("md5sha1", OpFilter::Hash(Hash::Md5Sha1)),
    ("sha1", OpFilter::Hash(Hash::Sha1)),
    ("sha224", OpFilter::Hash(Hash::Sha224)),
    ("sha256", OpFilter::Hash(Hash::Sha256)),
    ("sha384", OpFilter::Hash(Hash::Sha384)),
    ("sha512", OpFilter::Hash(Hash::Sha512)),
];

impl OpFilter {
    /// Whether a request of this class is caught by the filter.
    pub fn matches(self, class: OpClass) -> bool {
        match (self, class) {
            (OpFilter::RsaDecrypt, OpClass::RsaDecrypt)
            | (OpFilter::RsaPkcs1, OpClass::RsaPkcs1(_))
            | (OpFilter::RsaPss, OpClass::RsaPss(_))
            | (OpFilter::Ecdsa, OpClass::Ecdsa(_))
            | (OpFilter::Ed25519, OpClass::Ed25519) => true,
            (OpFilter::Hash(h), OpClass::RsaPkcs1(x) | OpClass::RsaPss(x) | OpClass::Ecdsa(x)) => {
                h == x
            }
            _ => false,
        }
    }

    /// The word written in the file.
    pub fn word(self) -> &'static str {
        OP_FILTERS
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(w, _)| w)
    }
}

/// One `key_policies` entry. It applies to the keys it selects (both
/// selectors given: both must hold; none: every key); a key takes the first
/// entry that selects it, and a key no entry selects is unrestricted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    /// `ski:` (40 hex digits): exactly this key.
    pub ski: Option<Ski>,
    /// `store:`: keys whose source (file path or URI, as loaded) starts
    /// with this text, e.g. a `dir:` store's directory.
    pub store: Option<String>,
    /// `deny_ops:` operations refused for the selected keys.
    pub deny_ops: Vec<OpFilter>,
    /// `clients:` the identities (by name) that may use the selected keys;
    /// `None`: every identity.
    pub clients: Option<Vec<String>>,
}

impl KeyPolicy {
    /// Whether this entry selects a key with this SKI and source.
    pub fn selects(&self, ski: &Ski, source: &str) -> bool {
        self.ski.is_none_or(|s| &s == ski)
            && self.store.as_deref().is_none_or(|p| source.starts_with(p))
    }
}

fn err(origin: Origin, key: &str, message: impl ToString) -> ConfigError {
    ConfigError::Value {
        origin,
        key: key.to_owned(),
        message: message.to_string(),
    }
}

/// The text of a scalar node, or an error naming what was found.
fn scalar<'n>(
    n: &'n Node,
    at: &dyn Fn(usize) -> Origin,
    key: &str,
) -> Result<&'n str, ConfigError> {
    match &n.kind {
        Kind::Scalar(s) => Ok(s.as_str()),
        other => Err(err(
            at(n.line),
            key,
            format!("expected a single value, found {}", other.describe()),
        )),
    }
}

/// A list of scalars (a single scalar counts as a list of one).
fn scalars<'n>(
    n: &'n Node,
    at: &dyn Fn(usize) -> Origin,
    key: &str,
) -> Result<Vec<(&'n str, usize)>, ConfigError> {
    match &n.kind {
        Kind::Null => Ok(Vec::new()),
        Kind::Scalar(s) => Ok(vec![(s.as_str(), n.line)]),
        Kind::Seq(items) => items
            .iter()
            .map(|i| scalar(i, at, key).map(|s| (s, i.line)))
            .collect(),
        Kind::Map(_) => Err(err(
            at(n.line),
            key,
            "expected a list of values, found a mapping",
        )),
    }
}

fn int(text: &str, max: u64, at: Origin, key: &str) -> Result<u32, ConfigError> {
    crate::parse::int_in(text, 0, max)
        .map(|v| v as u32)
        .map_err(|e| err(at, key, e))
}

/// Decode 2n hex digits (colons allowed between bytes, as `openssl` prints).
fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// One entry of a list-of-mappings key (`client_identities`,
/// `key_policies`): its name in messages (`key[i]`), its line and its
/// `k: v` fields (merge keys resolved).
struct Item<'n> {
    key: String,
    line: usize,
    fields: Vec<(Option<&'n str>, usize, &'n Node)>,
}

impl Item<'_> {
    /// The warning for a field this entry does not know (`known`: the
    /// fields it does, for the message).
    fn unknown(
        &self,
        at: &dyn Fn(usize) -> Origin,
        k: Option<&str>,
        line: usize,
        known: &str,
    ) -> String {
        format!(
            "{}: unknown key {} in {} ignored ({known})",
            at(line),
            k.map_or("(not text)".to_owned(), |k| format!("\"{k}\"")),
            self.key
        )
    }
}

/// The entries of a list-of-mappings key, each checked to be a mapping
/// (a null node: no entries), at most `max` of them; `shape` shows one
/// entry in messages. The one opening both readers share.
fn items<'n>(
    node: &'n Node,
    at: &dyn Fn(usize) -> Origin,
    key: &str,
    shape: &str,
    max: usize,
) -> Result<Vec<Item<'n>>, ConfigError> {
    let list = match &node.kind {
        Kind::Null => return Ok(Vec::new()),
        Kind::Seq(list) => list,
        other => {
            return Err(err(
                at(node.line),
                key,
                format!(
                    "expected a list of entries ({shape}), found {}",
                    other.describe()
                ),
            ))
        }
    };
    if list.len() > max {
        return Err(err(
            at(node.line),
            key,
            format!("{} entries; at most {max}", list.len()),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, n)| {
            let ek = format!("{key}[{i}]");
            match &n.kind {
                Kind::Map(pairs) => Ok(Item {
                    key: ek,
                    line: n.line,
                    fields: yaml::map_entries(pairs),
                }),
                other => Err(err(
                    at(n.line),
                    &ek,
                    format!("expected a mapping ({shape}), found {}", other.describe()),
                )),
            }
        })
        .collect()
}

/// `client_identities` from its YAML node.
pub(crate) fn parse_identities(
    node: &Node,
    at: &dyn Fn(usize) -> Origin,
    warnings: &mut Vec<String>,
) -> Result<Vec<ClientIdentity>, ConfigError> {
    const KEY: &str = "client_identities";
    let mut out: Vec<ClientIdentity> = Vec::new();
    for item in items(
        node,
        at,
        KEY,
        "`- name: ..., names: [...], spki_sha256: [...]`",
        MAX_CLIENT_IDENTITIES,
    )? {
        let ek = &item.key;
        let mut id = ClientIdentity {
            name: String::new(),
            names: Vec::new(),
            spki_sha256: Vec::new(),
            max_rps: None,
            max_connections: None,
        };
        for &(k, line, v) in &item.fields {
            match k.map(str::to_ascii_lowercase).as_deref() {
                Some("name") => id.name = scalar(v, at, ek)?.trim().to_owned(),
                Some("names") => {
                    for (p, l) in scalars(v, at, ek)? {
                        if p.trim().is_empty() {
                            return Err(err(at(l), ek, "an empty name pattern"));
                        }
                        id.names.push(p.trim().to_owned());
                    }
                }
                Some("spki_sha256") => {
                    for (p, l) in scalars(v, at, ek)? {
                        let pin = hex::<32>(p.trim()).ok_or_else(|| {
                            err(
                                at(l),
                                ek,
                                format!(
                                    "spki_sha256: expected 64 hex digits (sha256 of the DER \
                                     public key), got {p:?}"
                                ),
                            )
                        })?;
                        id.spki_sha256.push(pin);
                    }
                }
                Some("max_rps") => {
                    id.max_rps = Some(int(scalar(v, at, ek)?, MAX_RPS, at(v.line), ek)?)
                }
                Some("max_connections") => {
                    id.max_connections =
                        Some(int(scalar(v, at, ek)?, MAX_CONNECTIONS, at(v.line), ek)?)
                }
                _ => warnings.push(item.unknown(
                    at,
                    k,
                    line,
                    "name, names, spki_sha256, max_rps, max_connections",
                )),
            }
        }
        if id.name.is_empty()
            || !id
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            || id.name == "other"
        {
            return Err(err(
                at(item.line),
                ek,
                format!(
                    "name: expected letters, digits, '-', '_' or '.' (and not \"other\", the \
                     overflow label), got {:?}",
                    id.name
                ),
            ));
        }
        if out.iter().any(|o| o.name == id.name) {
            return Err(err(
                at(item.line),
                ek,
                format!("name {:?} used twice", id.name),
            ));
        }
        if id.names.is_empty() && id.spki_sha256.is_empty() {
            return Err(err(
                at(item.line),
                ek,
                "needs names: or spki_sha256: (an identity matching every certificate would \
                 make the allow-list a no-op)",
            ));
        }
        if id.names.len() > MAX_MATCHERS || id.spki_sha256.len() > MAX_MATCHERS {
            return Err(err(
                at(item.line),
                ek,
                format!("at most {MAX_MATCHERS} names and {MAX_MATCHERS} pins"),
            ));
        }
        out.push(id);
    }
    Ok(out)
}

/// `key_policies` from its YAML node; `identities` are the configured
/// `client_identities` (a policy's `clients:` must name them).
pub(crate) fn parse_policies(
    node: &Node,
    at: &dyn Fn(usize) -> Origin,
    identities: &[ClientIdentity],
    warnings: &mut Vec<String>,
) -> Result<Vec<KeyPolicy>, ConfigError> {
    const KEY: &str = "key_policies";
    let mut out = Vec::new();
    for item in items(
        node,
        at,
        KEY,
        "`- ski: ..., store: ..., deny_ops: [...], clients: [...]`",
        MAX_KEY_POLICIES,
    )? {
        let ek = &item.key;
        let mut p = KeyPolicy {
            ski: None,
            store: None,
            deny_ops: Vec::new(),
            clients: None,
        };
        for &(k, line, v) in &item.fields {
            match k.map(str::to_ascii_lowercase).as_deref() {
                Some("ski") => {
                    let t = scalar(v, at, ek)?.trim();
                    p.ski = Some(hex::<SKI_LEN>(t).ok_or_else(|| {
                        err(
                            at(v.line),
                            ek,
                            format!("ski: expected 40 hex digits, got {t:?}"),
                        )
                    })?);
                }
                Some("store") => {
                    let t = scalar(v, at, ek)?.trim();
                    if t.is_empty() {
                        return Err(err(at(v.line), ek, "store: expected a non-empty value"));
                    }
                    p.store = Some(t.to_owned());
                }
                Some("deny_ops") => {
                    for (w, l) in scalars(v, at, ek)? {
                        let f = crate::parse::one_of(w.trim(), OP_FILTERS)
                            .map_err(|e| err(at(l), ek, format!("deny_ops: {e}")))?;
                        if !p.deny_ops.contains(&f) {
                            p.deny_ops.push(f);
                        }
                    }
                }
                Some("clients") => {
                    let mut names = Vec::new();
                    for (n, l) in scalars(v, at, ek)? {
                        let n = n.trim();
                        if !identities.iter().any(|i| i.name == n) {
                            return Err(err(
                                at(l),
                                ek,
                                format!(
                                    "clients: {n:?} is not a client_identities name (known: {})",
                                    identities
                                        .iter()
                                        .map(|i| i.name.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            ));
                        }
                        names.push(n.to_owned());
                    }
                    p.clients = Some(names);
                }
                _ => warnings.push(item.unknown(at, k, line, "ski, store, deny_ops, clients")),
            }
        }
        if p.deny_ops.is_empty() && p.clients.is_none() {
            warnings.push(format!(
                "{}: {ek} restricts nothing (no deny_ops, no clients); the keys it selects \
                 are unrestricted",
                at(item.line)
            ));
        }
        out.push(p);
    }
    Ok(out)
}

/// `client_identities` as `-o` YAML (`[]` or one flow mapping per line).
pub(crate) fn identities_yaml(ids: &[ClientIdentity]) -> String {
    if ids.is_empty() {
        return "[]".to_owned();
    }
    let mut s = String::new();
    for id in ids {
        let names: Vec<String> = id.names.iter().map(|n| yaml_quote(n)).collect();
        let pins: Vec<String> = id.spki_sha256.iter().map(|p| to_hex(p)).collect();
        let _ = write!(
            s,
            "\n  - {{name: {}, names: [{}], spki_sha256: [{}]",
            yaml_quote(&id.name),
            names.join(", "),
            pins.join(", ")
        );
        if let Some(r) = id.max_rps {
            let _ = write!(s, ", max_rps: {r}");
        }
        if let Some(c) = id.max_connections {
            let _ = write!(s, ", max_connections: {c}");
        }
        s.push('}');
    }
    s
}

/// `key_policies` as `-o` YAML.
pub(crate) fn policies_yaml(ps: &[KeyPolicy]) -> String {
    if ps.is_empty() {
        return "[]".to_owned();
    }
    let mut s = String::new();
    for p in ps {
        let mut fields: Vec<String> = Vec::new();
        if let Some(ski) = &p.ski {
            fields.push(format!("ski: {}", to_hex(ski)));
        }
        if let Some(st) = &p.store {
            fields.push(format!("store: {}", yaml_quote(st)));
        }
        let ops: Vec<&str> = p.deny_ops.iter().map(|f| f.word()).collect();
        fields.push(format!("deny_ops: [{}]", ops.join(", ")));
        if let Some(c) = &p.clients {
            let c: Vec<String> = c.iter().map(|n| yaml_quote(n)).collect();
            fields.push(format!("clients: [{}]", c.join(", ")));
        }
        let _ = write!(s, "\n  - {{{}}}", fields.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{from_yaml_str, Config};
    use std::path::Path;

    fn load(text: &str) -> Result<crate::Loaded, ConfigError> {
        from_yaml_str(text, Path::new("g.yaml"), &|_| None)
    }

    const PIN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn identities_and_policies_parse_and_round_trip() {
        let text = format!(
            "client_identities:\n  - name: edge-a\n    names: [\"*.edge-a.example\", \"keycore demo client\"]\n    spki_sha256:\n      - {PIN}\n      - \"{}\"\n    max_rps: 100\n  - name: edge-b\n    names: edge-b\n    max_connections: 3\nkey_policies:\n  - store: /keys/legacy\n    deny_ops: [rsa_decrypt, sha1, md5sha1]\n  - ski: 0102030405060708090a0b0c0d0e0f1011121314\n    clients: [edge-a]\n",
            PIN.to_uppercase()
        );
        let l = load(&text).unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let s = &l.config.security;
        assert_eq!(s.client_identities.len(), 2);
        let a = &s.client_identities[0];
        assert_eq!(a.name, "edge-a");
        assert_eq!(a.names, ["*.edge-a.example", "keycore demo client"]);
        assert_eq!(a.spki_sha256.len(), 2);
        assert_eq!(a.spki_sha256[0], a.spki_sha256[1]);
        assert_eq!((a.max_rps, a.max_connections), (Some(100), None));
        assert_eq!(s.client_identities[1].names, ["edge-b"]);
        assert_eq!(s.client_identities[1].max_connections, Some(3));
        assert_eq!(s.key_policies.len(), 2);
        assert_eq!(
            s.key_policies[0].deny_ops,
            [
                OpFilter::RsaDecrypt,
                OpFilter::Hash(Hash::Sha1),
                OpFilter::Hash(Hash::Md5Sha1)
            ]
        );
        assert_eq!(
            s.key_policies[1].clients.as_deref(),
            Some(&["edge-a".to_owned()][..])
        );
        assert_eq!(s.key_policies[1].ski.unwrap()[19], 0x14);
        // -o output parses back to the same configuration.
        let yaml = l.config.to_yaml();
        let back = load(&yaml).unwrap();
        assert_eq!(back.config.security, l.config.security, "\n{yaml}");
        assert_eq!(Config::default().security.client_identities, []);
    }

    #[test]
    fn bad_entries_name_their_line() {
        for (text, line, needle) in [
            ("client_identities:\n  - name: a\n", 2, "needs names"),
            (
                "client_identities:\n  - name: a\n    spki_sha256: [abc]\n",
                3,
                "64 hex digits",
            ),
            (
                "client_identities:\n  - {name: a, names: [x]}\n  - {name: a, names: [y]}\n",
                3,
                "used twice",
            ),
            (
                "client_identities:\n  - {name: other, names: [x]}\n",
                2,
                "overflow",
            ),
            (
                "key_policies:\n  - deny_ops: [rsa_sign]\n",
                2,
                "rsa_decrypt",
            ),
            ("key_policies:\n  - ski: 12\n", 2, "40 hex"),
            (
                "client_identities:\n  - {name: a, names: [x]}\nkey_policies:\n  - clients: [b]\n",
                4,
                "not a client_identities name",
            ),
            ("key_policies: 3\n", 1, "list of entries"),
            // The shared entry reader: the same checks for both lists.
            (
                "client_identities:\n  - edge-a\n",
                2,
                "client_identities[0]",
            ),
            ("key_policies:\n  - {}\n  - [a]\n", 3, "key_policies[1]"),
            ("client_identities: {a: 1}\n", 1, "list of entries"),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(e.contains(&format!("g.yaml:{line}")), "{text}: {e}");
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn op_filters_match_families_and_hashes() {
        use keycore_protocol::Op;
        let class = |b: u8| Op(b).class();
        assert!(OpFilter::RsaDecrypt.matches(class(0x01)));
        assert!(!OpFilter::RsaDecrypt.matches(class(0x05)));
        assert!(OpFilter::Hash(Hash::Sha1).matches(class(0x03)));
        assert!(OpFilter::Hash(Hash::Sha1).matches(class(0x13)));
        assert!(OpFilter::Hash(Hash::Md5Sha1).matches(class(0x02)));
        assert!(!OpFilter::Hash(Hash::Sha1).matches(class(0x15)));
        assert!(OpFilter::Ecdsa.matches(class(0x15)));
        assert!(!OpFilter::Ecdsa.matches(class(0x18)));
        assert!(OpFilter::Ed25519.matches(class(0x18)));
        assert!(!OpFilter::Hash(Hash::Sha256).matches(class(0xF1)));
        for (w, f) in OP_FILTERS {
            assert_eq!(f.word(), *w);
        }
    }

    #[test]
    fn policy_selectors() {
        let p = KeyPolicy {
            ski: None,
            store: Some("/keys/a".into()),
            deny_ops: vec![],
            clients: None,
        };
        assert!(p.selects(&[0; 20], "/keys/a/x.key"));
        assert!(!p.selects(&[0; 20], "/keys/b/x.key"));
        let p = KeyPolicy {
            ski: Some([1; 20]),
            ..p
        };
        assert!(p.selects(&[1; 20], "/keys/a/x.key"));
        assert!(!p.selects(&[2; 20], "/keys/a/x.key"));
    }
}
