//! RFC 7512 `pkcs11:` URIs, parsed into a validated [`Pkcs11Uri`].
//!
//! Owns: the syntax (path and query attributes, percent-decoding to bytes),
//! the refusal rules (duplicates, `pin-value` with `pin-source`, unknown
//! attributes) and keycore's own `x-` settings. Pure: no file is read and no
//! library is loaded here (`pin-source` is read by [`Pkcs11Uri::pin`] at
//! start-up), so every rule is unit-tested without a token.
//!
//! Must not: echo a PIN. Every error names the URI through
//! [`redact`], which replaces the value of `pin-value` by `***`.

use super::policy::{Action, ErrorPolicy, Vendor};
use std::fmt;
use std::io::Read as _;
use std::time::Duration;
use zeroize::Zeroizing;

/// `CKU_USER`: the normal user (Luna "crypto officer", CloudHSM CU).
pub const CKU_USER: u64 = 1;
/// `CKU_CRYPTO_USER` (Thales Luna `CKU_LIMITED_USER`, 0x80000001): a
/// partition role that may use keys but not create or change them.
pub const CKU_CRYPTO_USER: u64 = 0x8000_0001;

/// Longest URI accepted: a config line, not a document. Bounds every copy.
pub const MAX_URI_LEN: usize = 4096;
/// Largest `max-sessions` / `x-sessions-per-core` accepted: more sessions
/// than this per token is a typo, and each costs HSM memory.
pub const MAX_SESSIONS: u32 = 1024;
/// Longest `x-op-timeout`: a stuck HSM call must not hold a request longer.
pub const MAX_OP_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a URI was refused. Always names the URI (PIN redacted) and the
/// attribute involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriError {
    /// The URI with any `pin-value` replaced by `***`.
    pub uri: String,
    /// The attribute the problem is in (`"scheme"` for the prefix).
    pub attribute: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PKCS#11 URI {}: attribute `{}`: {}",
            self.uri, self.attribute, self.reason
        )
    }
}

impl std::error::Error for UriError {}

/// How a token's requests are carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DispatchMode {
    /// On the reactor thread: right for in-process tokens (SoftHSM), where a
    /// sign is pure CPU and a thread hop only adds latency.
    Inline,
    /// On worker threads owning sessions: right for network HSMs, whose calls
    /// block for milliseconds.
    Offload,
}

/// The `type=` path attribute (RFC 7512 section 2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectType {
    /// `type=private`: the only type a key server can use.
    Private,
}

/// A parsed, validated `pkcs11:` URI. Byte-valued attributes stay bytes
/// (`id=%03` is the one byte 0x03); text attributes must be UTF-8.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// The URI as written, PIN redacted (for messages and logs).
    pub display: String,
    /// `token`: token label (CK_TOKEN_INFO.label, without its padding).
    pub token: Option<String>,
    /// `manufacturer`: token manufacturer ID.
    pub manufacturer: Option<String>,
    /// `serial`: token serial number.
    pub serial: Option<String>,
    /// `model`: token model.
    pub model: Option<String>,
    /// `slot-id`: slot number (decimal).
    pub slot_id: Option<u64>,
    /// `slot-description`.
    pub slot_description: Option<String>,
    /// `slot-manufacturer`.
    pub slot_manufacturer: Option<String>,
    /// `library-manufacturer`.
    pub library_manufacturer: Option<String>,
    /// `library-description`.
    pub library_description: Option<String>,
    /// `library-version` as (major, minor); `M` alone means `M.0`.
    pub library_version: Option<(u8, u8)>,
    /// `object`: CKA_LABEL, as bytes.
    pub object: Option<Vec<u8>>,
    /// `id`: CKA_ID, as bytes.
    pub id: Option<Vec<u8>>,
    /// `type`.
    pub object_type: Option<ObjectType>,
    /// `module-path`: the PKCS#11 library to load.
    pub module_path: Option<String>,
    /// `module-name`: a library name looked up in the usual directories.
    pub module_name: Option<String>,
    /// `pin-value`, as bytes (never printed).
    pin_value: Option<Zeroizing<Vec<u8>>>,
    /// `pin-source`: `file:` URI or plain path of a file holding the PIN.
    pub pin_source: Option<String>,
    /// The reference's `max-sessions`: most sessions this key may use
    /// (keycore: over all cores together).
    pub max_sessions: Option<u32>,
    /// `x-sessions-per-core`: sessions each core opens on this token.
    pub sessions_per_core: Option<u32>,
    /// `x-login-user`: `CKU_USER` (default) or `CKU_CRYPTO_USER`.
    pub login_user: u64,
    /// `x-dispatch`: inline or offload (default chosen by the store).
    pub dispatch: Option<DispatchMode>,
    /// `x-op-timeout`: longest one offloaded operation may take.
    pub op_timeout: Option<Duration>,
    /// `x-vendor`: the error-policy preset (default: from the module's file
    /// name, see `policy::Vendor::detect`).
    pub vendor: Option<Vendor>,
    /// `x-on-error`: per-code overrides of the error policy.
    pub on_error: Vec<(u64, Action)>,
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the redacted form: a PIN must never reach a log through `{:?}`.
        f.debug_tuple("Pkcs11Uri").field(&self.display).finish()
    }
}

/// The URI with the value of every `pin-value` attribute replaced by
/// `***`, truncated to [`MAX_URI_LEN`]; safe to print. Deliberately lenient
/// about where the attribute is: in the query or (wrongly) in the path,
/// with a percent-encoded, upper-case or blank-padded name (`pin%2Dvalue`,
/// ` PIN-VALUE `), after a `?` or a stray `&`: a malformed URI is printed in
/// error messages too, and must not leak its PIN there.
pub fn redact(uri: &str) -> String {
    let uri = truncate(uri, MAX_URI_LEN);
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    loop {
        let end = rest.find([';', '&', '?']).unwrap_or(rest.len());
        let (part, tail) = rest.split_at(end);
        match part.split_once('=') {
            Some((k, _)) if is_pin_name(k) => {
                out.push_str(k);
                out.push_str("=***");
            }
            _ => out.push_str(part),
        }
        let Some(sep) = tail.chars().next() else {
            break;
        };
        out.push(sep);
        rest = &tail[sep.len_utf8()..];
    }
    out
}

/// Whether an attribute name, as written, means `pin-value`.
fn is_pin_name(raw: &str) -> bool {
    let decoded = pct_decode(raw).unwrap_or_else(|_| raw.as_bytes().to_vec());
    let name = String::from_utf8_lossy(&decoded);
    let name = name.trim().to_ascii_lowercase();
    // The scheme may precede the first path attribute.
    let name = name.strip_prefix("pkcs11:").unwrap_or(&name);
    name == "pin-value"
}

/// Largest `pin-source` file read: a PIN is a line, not a document; a
/// misconfigured path to a large file must not be read into memory.
pub const MAX_PIN_FILE: u64 = 4096;

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A `%` not followed by two hex digits (the text from the `%`).
#[derive(Debug, thiserror::Error)]
#[error("bad percent-encoding {0:?} (need % and two hex digits)")]
struct BadPercent(String);

/// Percent-decode `s` to bytes. `%` must be followed by two hex digits;
/// other characters are taken as their UTF-8 bytes (lenient about
/// characters RFC 3986 would want escaped, as the reference was).
fn pct_decode(s: &str) -> Result<Vec<u8>, BadPercent> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
            match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => {
                    let end = (i + 3).min(b.len());
                    return Err(BadPercent(String::from_utf8_lossy(&b[i..end]).into_owned()));
                }
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Parse a duration such as `500ms`, `2s`, `1500us`: the workspace's one
/// duration parser (Go syntax), re-exported with its typed error.
pub use keycore_config::parse_duration;

impl Pkcs11Uri {
    /// Parse and validate one `pkcs11:` URI.
    pub fn parse(uri: &str) -> Result<Pkcs11Uri, UriError> {
        let display = redact(uri);
        let err = |attr: &str, reason: String| UriError {
            uri: display.clone(),
            attribute: attr.to_string(),
            reason,
        };
        if uri.len() > MAX_URI_LEN {
            return Err(err(
                "scheme",
                format!("longer than {MAX_URI_LEN} bytes ({})", uri.len()),
            ));
        }
        let rest = match uri.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("pkcs11:") => &uri[7..],
            _ => return Err(err("scheme", "does not start with `pkcs11:`".into())),
        };
        if rest.contains('#') {
            return Err(err("scheme", "a fragment (`#`) is not allowed".into()));
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut u = Pkcs11Uri {
            display: display.clone(),
            token: None,
            manufacturer: None,
            serial: None,
            model: None,
            slot_id: None,
            slot_description: None,
            slot_manufacturer: None,
            library_manufacturer: None,
            library_description: None,
            library_version: None,
            object: None,
            id: None,
            object_type: None,
            module_path: None,
            module_name: None,
            pin_value: None,
            pin_source: None,
            max_sessions: None,
            sessions_per_core: None,
            login_user: CKU_USER,
            dispatch: None,
            op_timeout: None,
            vendor: None,
            on_error: Vec::new(),
        };
        let mut seen: Vec<String> = Vec::new();
        let mut check_dup = |name: &str| -> Result<(), UriError> {
            if seen.iter().any(|s| s == name) {
                return Err(err(name, "given more than once".into()));
            }
            seen.push(name.to_string());
            Ok(())
        };

        for part in path.split(';').filter(|p| !p.is_empty()) {
            let (name, raw) = part
                .split_once('=')
                .ok_or_else(|| err(part, "path attribute without `=value`".into()))?;
            let name = name.to_ascii_lowercase();
            check_dup(&name)?;
            let bytes = pct_decode(raw).map_err(|r| err(&name, r.to_string()))?;
            let text = || {
                String::from_utf8(bytes.clone())
                    .map_err(|_| err(&name, "value is not UTF-8 text".into()))
            };
            match name.as_str() {
                "token" => u.token = Some(text()?),
                "manufacturer" => u.manufacturer = Some(text()?),
                "serial" => u.serial = Some(text()?),
                "model" => u.model = Some(text()?),
                "slot-id" => {
                    let t = text()?;
                    u.slot_id =
                        Some(t.parse().map_err(|_| {
                            err(&name, format!("{t:?} is not a decimal slot number"))
                        })?);
                }
                "slot-description" => u.slot_description = Some(text()?),
                "slot-manufacturer" => u.slot_manufacturer = Some(text()?),
                "library-manufacturer" => u.library_manufacturer = Some(text()?),
                "library-description" => u.library_description = Some(text()?),
                "library-version" => {
                    let t = text()?;
                    let bad = || err(&name, format!("{t:?} is not a version like 2 or 2.40"));
                    let (maj, min) = t.split_once('.').unwrap_or((&t, "0"));
                    u.library_version = Some((
                        maj.parse().map_err(|_| bad())?,
                        min.parse().map_err(|_| bad())?,
                    ));
                }
                "object" => u.object = Some(bytes),
                "id" => u.id = Some(bytes),
                "type" => {
                    let t = text()?;
                    u.object_type = match t.as_str() {
                        "private" => Some(ObjectType::Private),
                        "public" | "cert" | "secret-key" | "data" => {
                            return Err(err(
                                &name,
                                format!(
                                    "type={t}: a key server needs the private key (type=private)"
                                ),
                            ))
                        }
                        _ => return Err(err(&name, format!("unknown object type {t:?}"))),
                    };
                }
                _ => return Err(err(&name, "unknown path attribute".into())),
            }
        }

        for part in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            let (name, raw) = part
                .split_once('=')
                .ok_or_else(|| err(part, "query attribute without `=value`".into()))?;
            let name = name.to_ascii_lowercase();
            check_dup(&name)?;
            let bytes = pct_decode(raw).map_err(|r| err(&name, r.to_string()))?;
            let text = || {
                String::from_utf8(bytes.clone())
                    .map_err(|_| err(&name, "value is not UTF-8 text".into()))
            };
            let count = |t: String, what: &str| -> Result<u32, UriError> {
                match t.parse::<u32>() {
                    Ok(n) if (1..=MAX_SESSIONS).contains(&n) => Ok(n),
                    _ => Err(err(
                        &name,
                        format!("{t:?} is not a {what} between 1 and {MAX_SESSIONS}"),
                    )),
                }
            };
            match name.as_str() {
                "module-path" => u.module_path = Some(text()?),
                "module-name" => u.module_name = Some(text()?),
                "pin-value" => u.pin_value = Some(Zeroizing::new(bytes)),
                "pin-source" => u.pin_source = Some(text()?),
                "max-sessions" => u.max_sessions = Some(count(text()?, "session count")?),
                "x-sessions-per-core" => {
                    u.sessions_per_core = Some(count(text()?, "session count")?)
                }
                "x-login-user" => {
                    let t = text()?;
                    u.login_user = match t.as_str() {
                        "user" | "crypto-officer" => CKU_USER,
                        "crypto-user" => CKU_CRYPTO_USER,
                        _ => {
                            return Err(err(
                                &name,
                                format!("{t:?}: expected `user` or `crypto-user`"),
                            ))
                        }
                    };
                }
                "x-dispatch" => {
                    let t = text()?;
                    u.dispatch = Some(match t.as_str() {
                        "inline" => DispatchMode::Inline,
                        "offload" => DispatchMode::Offload,
                        _ => {
                            return Err(err(
                                &name,
                                format!("{t:?}: expected `inline` or `offload`"),
                            ))
                        }
                    });
                }
                "x-op-timeout" => {
                    let d = parse_duration(&text()?).map_err(|e| err(&name, e.to_string()))?;
                    if d.is_zero() || d > MAX_OP_TIMEOUT {
                        return Err(err(
                            &name,
                            format!("must be above 0 and at most {MAX_OP_TIMEOUT:?}"),
                        ));
                    }
                    u.op_timeout = Some(d);
                }
                "x-vendor" => {
                    let t = text()?;
                    u.vendor = Some(Vendor::parse(&t).ok_or_else(|| {
                        err(
                            &name,
                            format!("{t:?}: expected generic, softhsm, cloudhsm, luna, kmsp11, yubihsm or nshield"),
                        )
                    })?);
                }
                "x-on-error" => {
                    u.on_error = ErrorPolicy::parse_overrides(&text()?)
                        .map_err(|r| err(&name, r.to_string()))?;
                }
                _ => return Err(err(&name, "unknown query attribute".into())),
            }
        }

        if u.pin_value.is_some() && u.pin_source.is_some() {
            return Err(err(
                "pin-source",
                "`pin-value` and `pin-source` together: give only one".into(),
            ));
        }
        if u.module_path.is_none() && u.module_name.is_none() {
            return Err(err(
                "module-path",
                "no module: give `module-path=/path/to/lib.so` (or `module-name`)".into(),
            ));
        }
        Ok(u)
    }

    /// The PIN: `pin-value`, else the first line of the `pin-source` file
    /// (`file:` URI or plain path, read now), else none.
    /// Every copy is wiped when dropped.
    pub fn pin(&self) -> Result<Option<Zeroizing<Vec<u8>>>, UriError> {
        if let Some(p) = &self.pin_value {
            return Ok(Some(p.clone()));
        }
        let Some(src) = &self.pin_source else {
            return Ok(None);
        };
        let path = src
            .strip_prefix("file://")
            .or_else(|| src.strip_prefix("file:"))
            .unwrap_or(src);
        let err = |reason: String| UriError {
            uri: self.display.clone(),
            attribute: "pin-source".into(),
            reason,
        };
        // Checked before opening: opening a FIFO blocks until a writer
        // comes, and a device may never end.
        let meta =
            std::fs::metadata(path).map_err(|e| err(format!("cannot read {path:?}: {e}")))?;
        if !meta.is_file() {
            return Err(err(format!("{path:?} is not a regular file")));
        }
        let f = std::fs::File::open(path).map_err(|e| err(format!("cannot read {path:?}: {e}")))?;
        // Wiped when dropped, on every path (a read failing half-way too);
        // room for the whole bounded read up front, so no reallocation
        // leaves an unwiped copy behind.
        let mut data = Zeroizing::new(Vec::with_capacity(MAX_PIN_FILE as usize + 1));
        f.take(MAX_PIN_FILE + 1)
            .read_to_end(&mut data)
            .map_err(|e| err(format!("cannot read {path:?}: {e}")))?;
        if data.len() as u64 > MAX_PIN_FILE {
            return Err(err(format!(
                "{path:?} is larger than {MAX_PIN_FILE} bytes; it should hold the PIN on its first line"
            )));
        }
        let line = data.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Ok(Some(Zeroizing::new(line.to_vec())))
    }

    /// Whether this URI gives a PIN (by value or source).
    pub fn has_pin(&self) -> bool {
        self.pin_value.is_some() || self.pin_source.is_some()
    }

    /// An error about this URI's `attribute`.
    pub fn error(&self, attribute: &str, reason: impl Into<String>) -> UriError {
        UriError {
            uri: self.display.clone(),
            attribute: attribute.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SO: &str = "module-path=/usr/lib/softhsm/libsofthsm2.so";

    fn parse(s: &str) -> Result<Pkcs11Uri, UriError> {
        Pkcs11Uri::parse(s)
    }

    #[test]
    fn reference_example_parses() {
        let u = parse(
            "pkcs11:token=SoftHSM2%20Token;id=%03?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("SoftHSM2 Token"));
        assert_eq!(u.id.as_deref(), Some(&[3u8][..]));
        assert_eq!(
            u.module_path.as_deref(),
            Some("/usr/lib/softhsm/libsofthsm2.so")
        );
        assert_eq!(
            u.pin().unwrap().as_deref().map(Vec::as_slice),
            Some(&b"1234"[..])
        );
        assert_eq!(u.login_user, CKU_USER);
        assert!(!u.display.contains("1234"));
    }

    #[test]
    fn every_path_attribute() {
        let u = parse(&format!(
            "pkcs11:token=T;manufacturer=M;serial=S;model=Mo;slot-id=42;slot-description=SD;\
             slot-manufacturer=SM;library-manufacturer=LM;library-description=LD;\
             library-version=2.40;object=my%20key;id=%01%02%ff;type=private?{SO}"
        ))
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("T"));
        assert_eq!(u.manufacturer.as_deref(), Some("M"));
        assert_eq!(u.serial.as_deref(), Some("S"));
        assert_eq!(u.model.as_deref(), Some("Mo"));
        assert_eq!(u.slot_id, Some(42));
        assert_eq!(u.slot_description.as_deref(), Some("SD"));
        assert_eq!(u.slot_manufacturer.as_deref(), Some("SM"));
        assert_eq!(u.library_manufacturer.as_deref(), Some("LM"));
        assert_eq!(u.library_description.as_deref(), Some("LD"));
        assert_eq!(u.library_version, Some((2, 40)));
        assert_eq!(u.object.as_deref(), Some(&b"my key"[..]));
        assert_eq!(u.id.as_deref(), Some(&[1u8, 2, 0xff][..]));
        assert_eq!(u.object_type, Some(ObjectType::Private));
    }

    #[test]
    fn library_version_major_only_is_minor_zero() {
        let u = parse(&format!("pkcs11:library-version=3?{SO}")).unwrap();
        assert_eq!(u.library_version, Some((3, 0)));
        let e = parse(&format!("pkcs11:library-version=x.1?{SO}")).unwrap_err();
        assert_eq!(e.attribute, "library-version");
    }

    #[test]
    fn percent_decoding_is_to_bytes_not_text() {
        let u = parse(&format!("pkcs11:id=%00%80%FF;object=a%2Fb?{SO}")).unwrap();
        assert_eq!(u.id.as_deref(), Some(&[0u8, 0x80, 0xff][..]));
        assert_eq!(u.object.as_deref(), Some(&b"a/b"[..]));
    }

    #[test]
    fn bad_percent_encoding_names_attribute() {
        for bad in ["%", "%0", "%zz", "a%g1"] {
            let e = parse(&format!("pkcs11:id={bad}?{SO}")).unwrap_err();
            assert_eq!(e.attribute, "id", "{bad}");
            assert!(e.reason.contains("percent"), "{e}");
        }
    }

    #[test]
    fn text_attribute_must_be_utf8() {
        let e = parse(&format!("pkcs11:token=%ff?{SO}")).unwrap_err();
        assert_eq!(e.attribute, "token");
    }

    #[test]
    fn duplicates_refused_in_path_and_query() {
        let e = parse(&format!("pkcs11:token=a;token=b?{SO}")).unwrap_err();
        assert_eq!(e.attribute, "token");
        assert!(e.reason.contains("more than once"));
        let e = parse(&format!("pkcs11:token=a?{SO}&{SO}")).unwrap_err();
        assert_eq!(e.attribute, "module-path");
    }

    #[test]
    fn pin_value_and_pin_source_together_refused() {
        let e = parse(&format!("pkcs11:token=a?{SO}&pin-value=1&pin-source=/x")).unwrap_err();
        assert_eq!(e.attribute, "pin-source");
        assert!(!e.to_string().contains("pin-value=1"), "{e}");
    }

    #[test]
    fn reference_max_sessions_accepted() {
        let u = parse(&format!(
            "pkcs11:token=a;id=%01?{SO}&pin-value=1&max-sessions=4"
        ))
        .unwrap();
        assert_eq!(u.max_sessions, Some(4));
        let e = parse(&format!("pkcs11:token=a?{SO}&max-sessions=0")).unwrap_err();
        assert_eq!(e.attribute, "max-sessions");
        let e = parse(&format!("pkcs11:token=a?{SO}&max-sessions=99999")).unwrap_err();
        assert_eq!(e.attribute, "max-sessions");
    }

    #[test]
    fn vendor_settings() {
        let u = parse(&format!(
            "pkcs11:token=a?{SO}&x-sessions-per-core=3&x-login-user=crypto-user&x-dispatch=offload&x-op-timeout=500ms"
        ))
        .unwrap();
        assert_eq!(u.sessions_per_core, Some(3));
        assert_eq!(u.login_user, CKU_CRYPTO_USER);
        assert_eq!(u.login_user, 0x8000_0001);
        assert_eq!(u.dispatch, Some(DispatchMode::Offload));
        assert_eq!(u.op_timeout, Some(Duration::from_millis(500)));
        let u = parse(&format!(
            "pkcs11:token=a?{SO}&x-dispatch=inline&x-op-timeout=2s"
        ))
        .unwrap();
        assert_eq!(u.dispatch, Some(DispatchMode::Inline));
        assert_eq!(u.op_timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn vendor_settings_bad_values_name_attribute() {
        for (q, attr) in [
            ("x-login-user=admin", "x-login-user"),
            ("x-dispatch=sometimes", "x-dispatch"),
            ("x-op-timeout=5", "x-op-timeout"),
            ("x-op-timeout=0ms", "x-op-timeout"),
            ("x-op-timeout=10m", "x-op-timeout"),
            ("x-op-timeout=120s", "x-op-timeout"),
            ("x-sessions-per-core=-1", "x-sessions-per-core"),
            ("x-unknown=1", "x-unknown"),
            ("frobnicate=1", "frobnicate"),
        ] {
            let e = parse(&format!("pkcs11:token=a?{SO}&{q}")).unwrap_err();
            assert_eq!(e.attribute, attr, "{q}: {e}");
            assert!(e.to_string().contains("pkcs11:token=a"), "{e}");
        }
    }

    #[test]
    fn unknown_path_attribute_and_bad_type_refused() {
        let e = parse(&format!("pkcs11:colour=blue?{SO}")).unwrap_err();
        assert_eq!(e.attribute, "colour");
        let e = parse(&format!("pkcs11:type=cert?{SO}")).unwrap_err();
        assert_eq!(e.attribute, "type");
        let e = parse(&format!("pkcs11:type=bogus?{SO}")).unwrap_err();
        assert_eq!(e.attribute, "type");
        let e = parse(&format!("pkcs11:token?{SO}")).unwrap_err();
        assert_eq!(e.attribute, "token");
    }

    #[test]
    fn slot_id_must_be_decimal() {
        let e = parse(&format!("pkcs11:slot-id=0x10?{SO}")).unwrap_err();
        assert_eq!(e.attribute, "slot-id");
        assert_eq!(
            parse(&format!("pkcs11:slot-id=16?{SO}")).unwrap().slot_id,
            Some(16)
        );
    }

    #[test]
    fn scheme_and_module_required() {
        assert_eq!(parse("pkcs12:token=a").unwrap_err().attribute, "scheme");
        assert_eq!(parse("").unwrap_err().attribute, "scheme");
        assert_eq!(
            parse("pkcs11:token=a#frag").unwrap_err().attribute,
            "scheme"
        );
        assert_eq!(
            parse("pkcs11:token=a").unwrap_err().attribute,
            "module-path"
        );
        let u = parse("PKCS11:token=a?module-name=softhsm2").unwrap();
        assert_eq!(u.module_name.as_deref(), Some("softhsm2"));
        let long = format!("pkcs11:object={}?{SO}", "a".repeat(MAX_URI_LEN));
        assert_eq!(parse(&long).unwrap_err().attribute, "scheme");
    }

    #[test]
    fn every_holder_of_pin_bytes_wipes_them_on_drop() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>(_: &T) {}
        let u = parse(&format!("pkcs11:token=t?{SO}&pin-value=1234")).unwrap();
        // The URI's own copy, and each copy `pin()` hands out (to the
        // login, which passes it to cryptoki's own wiping RawAuthPin).
        wiped_on_drop(u.pin_value.as_ref().unwrap());
        let pin = u.pin().unwrap().unwrap();
        wiped_on_drop(&pin);
        wiped_on_drop(&super::super::token::Pin(pin.clone()).0);
        // What the drop does, done by hand: the bytes are zero after it.
        let mut copy = pin.to_vec();
        super::super::token::wipe(&mut copy);
        assert_eq!(copy, [0u8; 4]);
        // The pin-source path: read into a wiped buffer, returned as one.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pin");
        std::fs::write(&f, "5678\nrest").unwrap();
        let u = parse(&format!("pkcs11:token=t?{SO}&pin-source={}", f.display())).unwrap();
        let p = u.pin().unwrap().unwrap();
        wiped_on_drop(&p);
        assert_eq!(p.as_slice(), b"5678");
    }

    #[test]
    fn pin_never_printed() {
        let u = parse(&format!("pkcs11:token=a?{SO}&pin-value=s3cret")).unwrap();
        assert!(!format!("{u:?}").contains("s3cret"));
        assert!(!u.display.contains("s3cret"));
        let e = parse(&format!("pkcs11:token=a?pin-value=s3cret&{SO}&bogus=1")).unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert_eq!(
            redact("pkcs11:a?PIN-VALUE=x&b=c"),
            "pkcs11:a?PIN-VALUE=***&b=c"
        );
    }

    /// Issue 12 item 8: malformed URIs are printed in errors too; none may
    /// show its PIN.
    #[test]
    fn pin_never_printed_for_malformed_uris() {
        for bad in [
            "pkcs11:token=a;pin-value=s3cret?module-path=/x.so",
            "pkcs11:token=a?module-path=/x.so&pin%2Dvalue=s3cret",
            "pkcs11:token=a?module-path=/x.so& pin-value =s3cret",
            "pkcs11:token=a&pin-value=s3cret",
            "pkcs11:pin-value=s3cret",
            "PKCS11:token=a?Pin-Value=s3cret&bogus",
            "pkcs11:token=a?pin-value=s3cret%zz",
            "pkcs11:token=a??pin-value=s3cret",
        ] {
            assert!(!redact(bad).contains("s3cret"), "{bad} -> {}", redact(bad));
            if let Err(e) = parse(bad) {
                assert!(!e.to_string().contains("s3cret"), "{bad}: {e}");
            }
        }
        // Everything else is kept as written.
        assert_eq!(
            redact("pkcs11:token=a;id=%01?module-path=/x.so&pin-value=1&x=y"),
            "pkcs11:token=a;id=%01?module-path=/x.so&pin-value=***&x=y"
        );
    }

    #[test]
    fn pin_source_is_bounded_and_regular() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'1'; MAX_PIN_FILE as usize + 1]).unwrap();
        let u = parse(&format!("pkcs11:token=a?{SO}&pin-source={}", big.display())).unwrap();
        let e = u.pin().unwrap_err();
        assert!(e.reason.contains("larger than"), "{e}");
        // A FIFO would block start-up forever if opened.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let u = parse(&format!(
            "pkcs11:token=a?{SO}&pin-source={}",
            fifo.display()
        ))
        .unwrap();
        let e = u.pin().unwrap_err();
        assert!(e.reason.contains("not a regular file"), "{e}");
    }

    #[test]
    fn policy_attributes() {
        let u = parse(&format!(
            "pkcs11:token=a?{SO}&x-vendor=kmsp11&x-on-error=CKR_FUNCTION_FAILED:busy,0x80000041:session"
        ))
        .unwrap();
        assert_eq!(u.vendor, Some(Vendor::Kmsp11));
        assert_eq!(
            u.on_error,
            vec![(0x06, Action::Busy), (0x8000_0041, Action::Session)]
        );
        let e = parse(&format!("pkcs11:token=a?{SO}&x-vendor=thales")).unwrap_err();
        assert_eq!(e.attribute, "x-vendor");
        let e = parse(&format!(
            "pkcs11:token=a?{SO}&x-on-error=CKR_DEVICE_ERROR:panic"
        ))
        .unwrap_err();
        assert_eq!(e.attribute, "x-on-error");
    }

    #[test]
    fn pin_source_file_plain_and_file_uri() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, b"98 76\n").unwrap();
        let plain = parse(&format!("pkcs11:token=a?{SO}&pin-source={}", p.display())).unwrap();
        assert_eq!(
            plain.pin().unwrap().as_deref().map(Vec::as_slice),
            Some(&b"98 76"[..])
        );
        let furi = parse(&format!(
            "pkcs11:token=a?{SO}&pin-source=file:{}",
            p.display()
        ))
        .unwrap();
        assert_eq!(
            furi.pin().unwrap().as_deref().map(Vec::as_slice),
            Some(&b"98 76"[..])
        );
        let missing = parse(&format!("pkcs11:token=a?{SO}&pin-source=/nonexistent/pin")).unwrap();
        let e = missing.pin().unwrap_err();
        assert_eq!(e.attribute, "pin-source");
        assert!(e.reason.contains("/nonexistent/pin"));
        let none = parse(&format!("pkcs11:token=a?{SO}")).unwrap();
        assert_eq!(none.pin().unwrap(), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1500us"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_duration("7ms"), Ok(Duration::from_millis(7)));
        assert!(parse_duration("ms").is_err());
        // One parser for the workspace (Go syntax): hours are accepted, a
        // bare number still is not.
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5").is_err());
    }

    #[test]
    fn empty_attributes_between_separators_are_skipped() {
        let u = parse(&format!("pkcs11:;token=a;;?&{SO}&")).unwrap();
        assert_eq!(u.token.as_deref(), Some("a"));
    }
}
