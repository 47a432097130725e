//! Writing the configuration out: `-o` YAML (with each value's source and
//! secrets hidden) and the README's configuration table, both from the
//! table.
//!
//! Owns: YAML quoting, secret redaction, the README table text. Must not:
//! parse (load.rs) or print (the binary prints).

use crate::table::{Input, Secret, Section, SETTINGS};
use crate::{Config, KeyStore, Origin};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// What `-o` prints in place of a secret.
pub(crate) const REDACTED: &str = "<redacted>";

/// A YAML double-quoted string: safe for any text (colons, `#`, leading
/// spaces, PKCS#11 URIs with `%` and `?`).
pub(crate) fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            // Characters YAML forbids unescaped even in quotes (C1 controls,
            // surrogates are impossible in a Rust str, BOM, the two
            // non-characters outside YAML's printable set: U+FFFE and U+FFFF,
            // the latter found by the config_yaml fuzz target).
            c if ('\u{80}'..='\u{9f}').contains(&c)
                || c == '\u{feff}'
                || c == '\u{fffe}'
                || c == '\u{ffff}' =>
            {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(crate) fn yaml_quote_path(p: &Path) -> String {
    yaml_quote(&p.to_string_lossy())
}

/// `uri` with the value of every `pin-value` attribute replaced (PKCS#11
/// URIs carry the user PIN there, RFC 7512 section 2.4).
pub fn redact_uri_pins(uri: &str) -> String {
    if !uri
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("pkcs11:"))
    {
        return uri.to_owned();
    }
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    // Attributes are separated by `;` (path) and `&` (query), the query
    // starting at `?`; a pin-value may sit in either.
    while let Some(i) = rest.find([';', '&', '?', ':']) {
        let (head, tail) = rest.split_at(i + 1);
        out.push_str(head);
        rest = tail;
        // `get`, not `[..10]`: the tenth byte may fall inside a multi-byte
        // character (found by the config_yaml fuzz target).
        if rest
            .get(..10)
            .is_some_and(|p| p.eq_ignore_ascii_case("pin-value="))
        {
            out.push_str(&rest[..10]);
            out.push_str(REDACTED);
            let end = rest[10..].find([';', '&']).map_or(rest.len(), |j| j + 10);
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

fn origin_comment(origin: Option<&Origin>) -> String {
    match origin {
        None => "default".to_owned(),
        Some(Origin::File { path, line }) => format!("{}:{line}", path.display()),
        Some(Origin::Env { var }) => format!("env {var}"),
        Some(Origin::Flag { flag }) => format!("flag {flag}"),
    }
}

fn stores_yaml(stores: &[KeyStore], show_secrets: bool) -> String {
    if stores.is_empty() {
        return "[]".to_owned();
    }
    let mut s = String::new();
    for store in stores {
        let (k, v) = match store {
            KeyStore::Dir(p) => ("dir", yaml_quote_path(p)),
            KeyStore::File(p) => ("file", yaml_quote_path(p)),
            KeyStore::Uri(u) if show_secrets => ("uri", yaml_quote(u)),
            KeyStore::Uri(u) => ("uri", yaml_quote(&redact_uri_pins(u))),
        };
        let _ = write!(s, "\n  - {k}: {v}");
    }
    s
}

/// Every key as YAML, in table order. With `origins`, each line ends with
/// its source as a comment and sections get a heading comment; without,
/// the text is plain (round-trips to an equal `Config`).
pub(crate) fn yaml(
    c: &Config,
    origins: Option<&BTreeMap<&'static str, Origin>>,
    show_secrets: bool,
) -> String {
    let mut out = String::from("# keycore effective configuration\n");
    if origins.is_some() && !show_secrets {
        out.push_str("# secrets are shown as \"<redacted>\"; --show-secrets prints them\n");
    }
    let mut section: Option<Section> = None;
    for s in SETTINGS {
        if origins.is_some() && section != Some(s.section) {
            section = Some(s.section);
            let _ = writeln!(out, "\n# --- {}", s.section.title());
        }
        let value = match (s.input, s.secret) {
            (Input::KeyStores, _) => stores_yaml(&c.private_key_stores, show_secrets),
            (_, Secret::Whole) if !show_secrets => {
                let v = (s.show)(c);
                if v == "\"\"" {
                    v
                } else {
                    yaml_quote(REDACTED)
                }
            }
            _ => (s.show)(c),
        };
        match origins {
            Some(o) => {
                let comment = origin_comment(o.get(s.name));
                // A multi-line value (the store list) carries its comment on
                // the key's line.
                match value.strip_prefix('\n') {
                    Some(rest) => {
                        let _ = writeln!(out, "{}:  # {comment}\n{rest}", s.name);
                    }
                    None => {
                        let _ = writeln!(out, "{}: {value}  # {comment}", s.name);
                    }
                }
            }
            None => {
                let _ = writeln!(out, "{}: {value}", s.name);
            }
        }
    }
    out
}

/// Escape `|` for a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The README's configuration table (between its `config-table` markers),
/// rendered from the table: one Markdown table per section with key,
/// default, environment names and meaning. `readme_matches_the_table`
/// fails when README.md differs.
pub fn readme_table() -> String {
    let mut out = String::new();
    for section in Section::ALL {
        let _ = writeln!(out, "\n#### {}\n", section.title());
        out.push_str("| key | default | environment | meaning |\n|---|---|---|---|\n");
        for s in SETTINGS.iter().filter(|s| s.section == section) {
            let default = if s.default.is_empty() {
                "empty".to_owned()
            } else {
                format!("`{}`", s.default)
            };
            let mut env: Vec<String> = s.env_names().iter().map(|e| format!("`{e}`")).collect();
            if s.file_only() {
                env.push("file only".to_owned());
            }
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} |",
                s.name,
                cell(&default),
                env.join(", "),
                cell(s.doc)
            );
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every character YAML does not allow raw in a double-quoted scalar
    /// comes back unchanged through `yaml_quote` and the loader.
    #[test]
    fn quoted_text_round_trips_through_the_loader() {
        let odd = "a\u{0}\u{1b}\u{7f}\u{85}\u{9f}\u{feff}\u{fffe}\u{ffff}\u{fffd}\u{10ffff}\"\\\r\n\t: #%z";
        let yaml = format!("pid_file: {}\n", yaml_quote(odd));
        let none = |_: &str| None;
        let loaded = crate::resolve(
            Some((&yaml, Path::new("t.yaml"))),
            &none,
            &crate::ServeArgs::default(),
        )
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(
            loaded.config.pid_file.as_deref(),
            Some(Path::new(odd)),
            "{yaml}"
        );
    }

    #[test]
    fn pins_are_redacted_in_path_and_query() {
        assert_eq!(
            redact_uri_pins(
                "pkcs11:token=a;id=%01?module-path=/x.so&pin-value=1234&max-sessions=4"
            ),
            "pkcs11:token=a;id=%01?module-path=/x.so&pin-value=<redacted>&max-sessions=4"
        );
        assert_eq!(
            redact_uri_pins("pkcs11:token=a;pin-value=9;id=%01"),
            "pkcs11:token=a;pin-value=<redacted>;id=%01"
        );
        assert_eq!(
            redact_uri_pins("pkcs11:token=a?PIN-VALUE=#1"),
            "pkcs11:token=a?PIN-VALUE=<redacted>"
        );
        assert_eq!(
            redact_uri_pins("pkcs11:token=a?pin-source=/etc/pin"),
            "pkcs11:token=a?pin-source=/etc/pin"
        );
        let azure = "https://v.vault.azure.net/keys/k/1";
        assert_eq!(redact_uri_pins(azure), azure);
    }

    /// A multi-byte character within ten bytes after a separator used to
    /// panic (byte slice inside a character); the fuzz target found it.
    #[test]
    fn multibyte_text_after_a_separator_is_left_alone() {
        // Three 4-byte characters: byte 10 after the `;` is inside the third.
        let uri = "pkcs11:token=t;\u{10ffff}\u{10ffff}\u{10ffff}&pin-value=7";
        assert_eq!(
            redact_uri_pins(uri),
            "pkcs11:token=t;\u{10ffff}\u{10ffff}\u{10ffff}&pin-value=<redacted>"
        );
        let uri = "pkcs11:token=t?port: 2407\u{5a8b}V&x=1";
        assert_eq!(redact_uri_pins(uri), uri);
    }
}
