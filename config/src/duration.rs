//! Go duration strings (`"500ms"`, `"2s"`, `"1m30s"`, `"1.5h"`), the syntax
//! gokeyless.yaml uses for `sign_timeout`; keycore's own timeouts use it too
//! so an operator writes one syntax everywhere. The workspace's one duration
//! parser: the PKCS#11 URI's `x-op-timeout` uses it too.
//!
//! Owns: parsing to [`Duration`] and formatting back to a string that parses
//! to the same value. Must not: accept negative durations (no keycore setting
//! means anything by one) or bare numbers other than `0` (Go's config layer
//! reads a bare `500` as 500 ns, a silent trap; refusing it is louder).

use std::time::Duration;

/// Why a duration string was refused. Messages quote the text as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// `-1s`.
    #[error("a duration must not be negative, got {0:?}")]
    Negative(String),
    /// Empty text.
    #[error("expected a duration like \"500ms\", \"2s\" or \"1m30s\", got {0:?}")]
    Empty(String),
    /// A unit without a number (`s`, `.s`).
    #[error("expected a number in duration {0:?} (like \"500ms\", \"2s\", \"1m30s\")")]
    NoNumber(String),
    /// A number without a unit (`500`).
    #[error(
        "missing unit in duration {text:?}: write e.g. \"{number}ms\" or \"{number}s\" (a bare \
         number is not accepted: the reference would read it as nanoseconds)"
    )]
    MissingUnit {
        /// As written.
        text: String,
        /// The number without its unit.
        number: String,
    },
    /// `3d`.
    #[error("unknown unit {unit:?} in duration {text:?} (units: ns, us, ms, s, m, h)")]
    UnknownUnit {
        /// The unit found.
        unit: String,
        /// As written.
        text: String,
    },
    /// Larger than Go's `time.Duration`.
    #[error("duration {0:?} is out of range (at most ~292 years)")]
    OutOfRange(String),
}

/// Largest duration accepted: Go's `time.Duration` is an `i64` of
/// nanoseconds, so anything larger could not have come from a valid
/// gokeyless setting either (~292 years).
const MAX_DURATION_NS: u128 = i64::MAX as u128;

/// Fraction digits kept per component. The fraction is multiplied by the
/// unit before dividing: 10^20 times the largest unit (3.6e12 ns) is 3.6e32,
/// well inside a `u128` (3.4e38). The 30 digits kept before overflowed it
/// (found by the `pkcs11_uri` fuzz target: `x-op-timeout=500ms.1127...4m`
/// panicked in a debug build and would have wrapped to a wrong timeout in a
/// release build). 20 digits lose nothing: for `ns`..`s` (powers of ten)
/// 20 digits are exact to the nanosecond, and for `m` and `h` (a factor of
/// 3 in the unit) no finite decimal lands on a whole nanosecond beyond them,
/// so the truncated result is the same as Go's.
const MAX_FRACTION_DIGITS: u32 = 20;

/// Parse a Go duration string: an optional `+`, then one or more
/// `<number>[.<fraction>]<unit>` with units `ns`, `us` (`µs`, `μs`), `ms`,
/// `s`, `m`, `h`; or the bare `0`. Fractional nanoseconds are truncated, as
/// Go does.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return Err(DurationError::Negative(text.to_owned()));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(DurationError::Empty(text.to_owned()));
    }
    let mut rest = s;
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after) = rest.split_at(int_len);
        let (frac_digits, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(DurationError::NoNumber(text.to_owned()));
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => {
                return Err(DurationError::MissingUnit {
                    text: text.to_owned(),
                    number: int_digits.to_owned(),
                })
            }
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_owned(),
                    text: text.to_owned(),
                })
            }
        };
        let out_of_range = || DurationError::OutOfRange(text.to_owned());
        let mut int: u128 = 0;
        for b in int_digits.bytes() {
            int = int * 10 + u128::from(b - b'0');
            if int > MAX_DURATION_NS {
                return Err(out_of_range());
            }
        }
        let mut frac: u128 = 0;
        let mut scale: u128 = 1;
        for b in frac_digits.bytes().take(MAX_FRACTION_DIGITS as usize) {
            frac = frac * 10 + u128::from(b - b'0');
            scale *= 10;
        }
        total_ns = int
            .checked_mul(unit_ns)
            .and_then(|v| v.checked_add(frac.checked_mul(unit_ns)? / scale))
            .and_then(|v| v.checked_add(total_ns))
            .filter(|v| *v <= MAX_DURATION_NS)
            .ok_or_else(out_of_range)?;
        rest = after;
    }
    let secs = (total_ns / 1_000_000_000) as u64;
    let nanos = (total_ns % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Format a duration so that [`parse_duration`] (and Go) read back exactly
/// the same value: `"0s"`, `"1m30s"`, `"1s500ms"`, `"2h0m5s"` style without
/// the zero parts (`"2h5s"`), which Go's parser also accepts.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_owned();
    }
    const PARTS: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let mut out = String::new();
    let mut rest = ns;
    for (unit, name) in PARTS {
        let n = rest / unit;
        rest %= unit;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn go_duration_forms_parse() {
        let cases: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("500ms", ms(500)),
            ("2s", ms(2000)),
            ("1m30s", ms(90_000)),
            ("1h", Duration::from_secs(3600)),
            ("1.5s", ms(1500)),
            (".5s", ms(500)),
            ("1.s", ms(1000)),
            ("+3s", ms(3000)),
            ("1h2m3s4ms5us6ns", Duration::new(3723, 4_005_006)),
            ("10us", Duration::from_micros(10)),
            ("10\u{b5}s", Duration::from_micros(10)),
            ("10\u{3bc}s", Duration::from_micros(10)),
            ("1.0000000019s", Duration::new(1, 1)), // truncated like Go
            ("  250ms ", ms(250)),
            ("2562047h", Duration::from_secs(2_562_047 * 3600)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).as_ref(), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn bad_durations_are_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "expected a duration"),
            ("500", "missing unit"),
            ("1m30", "missing unit"),
            ("5 s", "unknown unit"),
            ("3d", "unknown unit \"d\""),
            ("-1s", "negative"),
            ("s", "expected a number"),
            (".s", "expected a number"),
            ("abc", "expected a number"),
            ("9999999999999999999999h", "out of range"),
            ("2562048h", "out of range"),
        ];
        for (text, want) in cases {
            let err = parse_duration(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    /// Regression (fuzz, `pkcs11_uri`): a long fraction on a large unit
    /// overflowed the fraction × unit product.
    #[test]
    fn long_fractions_on_every_unit_neither_overflow_nor_change_the_value() {
        let digits = "1127777777777777777777777777777777777777";
        for (unit, ns) in [
            ("ns", 1u128),
            ("us", 1_000),
            ("ms", 1_000_000),
            ("s", 1_000_000_000),
            ("m", 60_000_000_000),
            ("h", 3_600_000_000_000),
        ] {
            let d = parse_duration(&format!("500ms.{digits}{unit}")).unwrap();
            // 0.1127777... of the unit, truncated to whole nanoseconds.
            let frac_ns = 1127777777777777777777u128 * ns / 10u128.pow(22);
            assert_eq!(d.as_nanos(), 500_000_000 + frac_ns, "{unit}");
        }
        assert_eq!(
            parse_duration("0.99999999999999999999999999999999h").unwrap(),
            Duration::from_nanos(3_599_999_999_999)
        );
        assert_eq!(
            parse_duration("1.000000000000000000000000000001s").unwrap(),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            ms(500),
            ms(1500),
            Duration::from_secs(90),
            Duration::new(3723, 4_005_006),
            Duration::from_secs(86_400 * 365),
        ] {
            let s = format_duration(d);
            assert_eq!(parse_duration(&s), Ok(d), "{s}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(ms(1500)), "1s500ms");
    }
}
