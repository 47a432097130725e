//! [`SecretString`]: a credential held in the configuration (the enrollment
//! API token, the legacy service key).
//!
//! Owns: how a secret may be seen. Its `Debug` never shows the value (a
//! `{:?}` of the whole `Config` in a log or a panic message stays clean),
//! there is no `Display`, and the bytes are zeroed when the value is
//! dropped or replaced (`zeroize`), so a freed buffer does not keep the
//! token for a later heap read. `-o` prints it only with `--show-secrets`
//! (the table marks the key `Secret::Whole`).
//! Must not: hand the value out except through [`SecretString::expose`],
//! whose callers put it into a request header and nowhere else.

use std::fmt;
use zeroize::Zeroizing;

/// A secret text value; empty means "not set".
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Wrap a value (the caller's copy is the caller's to clear).
    pub fn new(value: &str) -> SecretString {
        SecretString(Zeroizing::new(value.to_owned()))
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is unset.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("SecretString(empty)")
        } else {
            f.write_str("SecretString(<redacted>)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SecretString;

    #[test]
    fn debug_never_shows_the_value() {
        let s = SecretString::new("tok-0123456789");
        assert_eq!(format!("{s:?}"), "SecretString(<redacted>)");
        assert_eq!(s.expose(), "tok-0123456789");
        assert!(!s.is_empty() && SecretString::default().is_empty());
        assert_eq!(
            format!("{:?}", SecretString::default()),
            "SecretString(empty)"
        );
    }
}
