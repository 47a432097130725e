//! Rendering an error with its causes on one line.
//!
//! Owns: the one `a: b: c` rendering of a `source()` chain, for the places
//! that keep an error as text (a partition's last error, a `/readyz`
//! reason, a URI error's reason). Must not: decide what an error says; each
//! library's error enum does that, with its cause as `#[source]`.

use std::error::Error;

/// `e` followed by each of its causes, separated by `": "`.
pub fn error_chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening key.pem")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn renders_every_cause_in_order() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(error_chain(&e), "opening key.pem: disk on fire");
    }
}
