//! Parsers for single setting values, shared by the file, the environment
//! and the flags so a value means the same thing wherever it is written.
//!
//! Owns: text → typed value, and [`ValueError`] saying what was expected.
//! Must not: know where the text came from (the caller adds file/line,
//! variable or flag to the message).

use crate::duration::{parse_duration, DurationError};
use crate::rfc3339::TimeError;
use std::net::IpAddr;
use std::time::Duration;

/// Why one value was refused. The text is what the operator wrote.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    /// Not a decimal integer in range.
    #[error("expected an integer {min}..={max}, got {text:?}")]
    Integer {
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
        /// As written.
        text: String,
    },
    /// Not a boolean spelling.
    #[error("expected true or false, got {text:?}")]
    Boolean {
        /// As written.
        text: String,
    },
    /// Not a finite number in range.
    #[error("expected a number {min}..={max}, got {text:?}")]
    Number {
        /// Smallest accepted.
        min: f64,
        /// Largest accepted.
        max: f64,
        /// As written.
        text: String,
    },
    /// Not an IP address.
    #[error("expected an IP address such as \"0.0.0.0\", \"127.0.0.1\" or \"::\", got {text:?}")]
    Ip {
        /// As written.
        text: String,
    },
    /// Empty where a value is required.
    #[error("expected a non-empty value")]
    Empty,
    /// Not one of the listed words.
    #[error("expected one of {choices}, got {text:?}")]
    OneOf {
        /// The accepted words, quoted and comma-separated.
        choices: String,
        /// As written.
        text: String,
    },
    /// A malformed duration.
    #[error(transparent)]
    Duration(#[from] DurationError),
    /// A duration of zero where a positive one is needed.
    #[error("expected a duration greater than zero, got {text:?}")]
    ZeroDuration {
        /// As written.
        text: String,
    },
    /// A duration above the key's limit.
    #[error("expected a duration of at most {max}, got {text:?}")]
    LongDuration {
        /// The limit, as a duration is written.
        max: String,
        /// As written.
        text: String,
    },
    /// A malformed RFC 3339 time.
    #[error(transparent)]
    Time(#[from] TimeError),
    /// Not an `http://` or `https://` URL.
    #[error("expected an http:// or https:// URL, got {text:?}")]
    Url {
        /// As written.
        text: String,
    },
    /// Not an `https://` URL where a credential is sent.
    #[error("expected an https:// URL (the request carries a credential), got {text:?}")]
    HttpsUrl {
        /// As written.
        text: String,
    },
    /// A CPU list that does not describe a set of CPUs.
    #[error("{0}")]
    Cpus(CpuListError),
}

/// Why a CPU list was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CpuListError {
    /// `3-1`.
    #[error("CPU range {0:?} runs backwards")]
    Backwards(String),
    /// `1,1`.
    #[error("CPU {0} is listed twice")]
    Twice(usize),
    /// Nothing listed.
    #[error("expected at least one CPU id")]
    None,
    /// Neither `all`, a count, nor ids.
    #[error(
        "expected \"all\", a count 1..={max} or CPU ids like \"0,2\" or \"0-3\", got {text:?}"
    )]
    Shape {
        /// Largest count.
        max: usize,
        /// As written.
        text: String,
    },
}

/// An integer in `min..=max`. Decimal only (a leading `+` is allowed).
pub fn int_in(text: &str, min: u64, max: u64) -> Result<u64, ValueError> {
    let t = text.trim();
    let digits = t.strip_prefix('+').unwrap_or(t);
    let expected = || ValueError::Integer {
        min,
        max,
        text: text.to_owned(),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(expected());
    }
    match digits.parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(expected()),
    }
}

/// A boolean, in the spellings gokeyless configs use (YAML 1.1 and Go's
/// `strconv.ParseBool`): true/false, yes/no, on/off, t/f, 1/0; any case.
pub fn boolean(text: &str) -> Result<bool, ValueError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "t" | "y" | "1" => Ok(true),
        "false" | "no" | "off" | "f" | "n" | "0" => Ok(false),
        _ => Err(ValueError::Boolean {
            text: text.to_owned(),
        }),
    }
}

/// A finite float in `min..=max`.
pub fn float_in(text: &str, min: f64, max: f64) -> Result<f64, ValueError> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= min && v <= max => Ok(v),
        _ => Err(ValueError::Number {
            min,
            max,
            text: text.to_owned(),
        }),
    }
}

/// An IP address (v4 or v6) to bind to. Host names are refused: binding
/// must not depend on DNS at start-up.
pub fn ip(text: &str) -> Result<IpAddr, ValueError> {
    text.trim().parse().map_err(|_| ValueError::Ip {
        text: text.to_owned(),
    })
}

/// A duration in Go syntax that must be greater than zero.
pub fn positive_duration(text: &str) -> Result<Duration, ValueError> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err(ValueError::ZeroDuration {
            text: text.to_owned(),
        });
    }
    Ok(d)
}

/// An optional duration: empty, `0` or `0s` mean "none".
pub fn optional_duration(text: &str) -> Result<Option<Duration>, ValueError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let d = parse_duration(text)?;
    Ok((!d.is_zero()).then_some(d))
}

/// Like [`optional_duration`], refusing durations longer than `max`.
pub fn optional_duration_at_most(
    text: &str,
    max: Duration,
) -> Result<Option<Duration>, ValueError> {
    let d = optional_duration(text)?;
    if d.is_some_and(|d| d > max) {
        return Err(ValueError::LongDuration {
            max: crate::duration::format_duration(max),
            text: text.to_owned(),
        });
    }
    Ok(d)
}

/// A non-empty string (paths, URIs).
pub fn non_empty(text: &str) -> Result<String, ValueError> {
    if text.trim().is_empty() {
        return Err(ValueError::Empty);
    }
    Ok(text.to_owned())
}

/// An `http://` or `https://` URL (endpoints of cloud services and their
/// stand-ins). Only the scheme and a non-empty rest are checked; the HTTP
/// client owns the rest.
pub fn url(text: &str) -> Result<String, ValueError> {
    let t = text.trim();
    let rest = t
        .strip_prefix("https://")
        .or_else(|| t.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.contains(char::is_whitespace) => Ok(t.to_owned()),
        _ => Err(ValueError::Url {
            text: text.to_owned(),
        }),
    }
}

/// An `https://` URL (an endpoint a credential is sent to).
pub fn https_url(text: &str) -> Result<String, ValueError> {
    let t = text.trim();
    match t.strip_prefix("https://") {
        Some(r) if !r.is_empty() && !r.contains(char::is_whitespace) => Ok(t.to_owned()),
        _ => Err(ValueError::HttpsUrl {
            text: text.to_owned(),
        }),
    }
}

/// An optional URL: empty means `None`.
pub fn optional_url(text: &str) -> Result<Option<String>, ValueError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    url(text).map(Some)
}

/// One of a fixed set of lower-case words.
pub fn one_of<T: Copy>(text: &str, choices: &[(&str, T)]) -> Result<T, ValueError> {
    let t = text.trim().to_ascii_lowercase();
    choices
        .iter()
        .find(|(name, _)| *name == t)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            ValueError::OneOf {
                choices: names.join(", "),
                text: text.to_owned(),
            }
        })
}

/// The word for `value` in a `one_of` table (for output).
pub fn word_of<T: Copy + PartialEq>(value: T, choices: &[(&'static str, T)]) -> &'static str {
    choices
        .iter()
        .find(|(_, v)| *v == value)
        .map_or("?", |(n, _)| n)
}

/// A comma-separated list, items trimmed, empty items dropped.
pub fn comma_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// CPU ids: `0,2,4`, ranges `0-3`, or a mix; at least one, no duplicates.
pub fn cpu_list(items: &[&str], max_cpu_id: usize) -> Result<Vec<usize>, ValueError> {
    let mut out: Vec<usize> = Vec::new();
    let id = |t: &str| int_in(t, 0, max_cpu_id as u64).map(|v| v as usize);
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => (id(a)?, id(b)?),
            None => (id(item)?, id(item)?),
        };
        if lo > hi {
            return Err(ValueError::Cpus(CpuListError::Backwards(item.to_owned())));
        }
        for cpu in lo..=hi {
            if out.contains(&cpu) {
                return Err(ValueError::Cpus(CpuListError::Twice(cpu)));
            }
            out.push(cpu);
        }
    }
    if out.is_empty() {
        return Err(ValueError::Cpus(CpuListError::None));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg<T: std::fmt::Debug>(r: Result<T, ValueError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn integers_accept_quoted_forms_and_check_range() {
        assert_eq!(int_in("2407", 0, 65535), Ok(2407));
        assert_eq!(int_in(" +7 ", 0, 65535), Ok(7));
        assert_eq!(
            msg(int_in("abc", 0, 65535)),
            "expected an integer 0..=65535, got \"abc\""
        );
        assert!(int_in("65536", 0, 65535).is_err());
        assert!(int_in("-1", 0, 65535).is_err());
        assert!(int_in("1.5", 0, 9).is_err());
        assert!(int_in("", 0, 9).is_err());
        assert!(int_in("99999999999999999999999", 0, 9).is_err());
    }

    #[test]
    fn bounded_optional_durations() {
        let max = Duration::from_secs(1);
        assert_eq!(optional_duration_at_most("", max), Ok(None));
        assert_eq!(optional_duration_at_most("0s", max), Ok(None));
        assert_eq!(
            optional_duration_at_most("200us", max),
            Ok(Some(Duration::from_micros(200)))
        );
        assert_eq!(optional_duration_at_most("1s", max), Ok(Some(max)));
        assert_eq!(
            msg(optional_duration_at_most("50s", max)),
            "expected a duration of at most 1s, got \"50s\""
        );
        assert!(optional_duration_at_most("fast", max).is_err());
    }

    #[test]
    fn booleans_in_go_and_yaml_spellings() {
        for t in ["true", "True", "YES", "on", "1", "t"] {
            assert_eq!(boolean(t), Ok(true), "{t}");
        }
        for t in ["false", "FALSE", "no", "off", "0", "f"] {
            assert_eq!(boolean(t), Ok(false), "{t}");
        }
        assert!(msg(boolean("maybe")).contains("\"maybe\""));
    }

    #[test]
    fn floats_ips_urls_and_enums() {
        assert_eq!(float_in("0.25", 0.0, 1.0), Ok(0.25));
        assert!(float_in("NaN", 0.0, 1.0).is_err());
        assert!(float_in("1.5", 0.0, 1.0).is_err());
        assert_eq!(ip("::1").unwrap().to_string(), "::1");
        assert!(ip("localhost").is_err());
        assert_eq!(
            url(" https://a.example/x "),
            Ok("https://a.example/x".into())
        );
        assert!(url("ftp://a").is_err() && url("https://").is_err());
        assert_eq!(optional_url(""), Ok(None));
        assert_eq!(one_of("Skip", &[("fail", 1), ("skip", 2)]), Ok(2));
        assert_eq!(
            msg(one_of("maybe", &[("fail", 1), ("skip", 2)])),
            "expected one of \"fail\", \"skip\", got \"maybe\""
        );
        assert_eq!(word_of(2, &[("fail", 1), ("skip", 2)]), "skip");
    }

    #[test]
    fn cpu_lists_and_ranges() {
        assert_eq!(cpu_list(&["0", "2-4"], 1023), Ok(vec![0, 2, 3, 4]));
        assert!(msg(cpu_list(&["1", "1"], 1023)).contains("twice"));
        assert!(msg(cpu_list(&["3-1"], 1023)).contains("backwards"));
        assert!(cpu_list(&[], 1023).is_err());
        assert!(cpu_list(&["x"], 1023).is_err());
        assert_eq!(comma_list(" a, ,b ,"), vec!["a", "b"]);
    }
}
