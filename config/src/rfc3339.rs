//! RFC 3339 timestamps, parsed and printed without a date-time dependency:
//! the workspace's one parser (`current_time`, a fixed "now" for
//! certificate checks in tests; cloud credential expiry times in the KMS
//! backend).
//!
//! Owns: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` ↔ [`SystemTime`]. Must
//! not: guess at other formats (a wrong clock for certificate checks is worse
//! than a refused start-up), or accept leap second 60 (Go's parser refuses it
//! too, so no existing config can contain one).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a time was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, or a field out of range.
    #[error("expected an RFC 3339 time like \"2024-05-01T12:00:00Z\", got {text:?} ({why})")]
    Malformed {
        /// As written.
        text: String,
        /// Which part is wrong.
        why: &'static str,
    },
}

const NS_PER_SEC: i128 = 1_000_000_000;
const SECS_PER_DAY: i128 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parse an RFC 3339 timestamp, e.g. `2024-05-01T12:00:00Z` or
/// `2024-05-01T14:00:00.5+02:00`.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, TimeError> {
    let bad = |why: &'static str| TimeError::Malformed {
        text: text.to_owned(),
        why,
    };
    let s = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Result<u32, TimeError> {
        let part = s.get(range).ok_or_else(|| bad("too short"))?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad("digit expected"));
        }
        Ok(part
            .iter()
            .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0')))
    };
    let sep = |i: usize, want: &[u8]| -> Result<(), TimeError> {
        match s.get(i) {
            Some(c) if want.contains(c) => Ok(()),
            _ => Err(bad("wrong separator")),
        }
    };
    let year = i64::from(num(0..4)?);
    sep(4, b"-")?;
    let month = num(5..7)?;
    sep(7, b"-")?;
    let day = num(8..10)?;
    sep(10, b"Tt")?;
    let hour = num(11..13)?;
    sep(13, b":")?;
    let minute = num(14..16)?;
    sep(16, b":")?;
    let second = num(17..19)?;
    if !(1..=12).contains(&month) {
        return Err(bad("month out of range"));
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err(bad("day out of range"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad("time of day out of range"));
    }
    let mut i = 19;
    let mut nanos: i128 = 0;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        let mut scale = NS_PER_SEC;
        while let Some(b) = s.get(i).filter(|b| b.is_ascii_digit()) {
            if scale > 1 {
                scale /= 10;
                nanos += i128::from(b - b'0') * scale;
            }
            i += 1;
        }
        if i == start {
            return Err(bad("digits expected after '.'"));
        }
    }
    let offset_secs: i128 = match s.get(i) {
        Some(b'Z' | b'z') if i + 1 == s.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == s.len() => {
            let oh = num(i + 1..i + 3)?;
            sep(i + 3, b":")?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return Err(bad("offset out of range"));
            }
            let off = i128::from(oh * 3600 + om * 60);
            if sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return Err(bad("expected Z or a ±HH:MM offset at the end")),
    };
    let secs = i128::from(days_from_civil(year, month, day)) * SECS_PER_DAY
        + i128::from(hour * 3600 + minute * 60 + second)
        - offset_secs;
    let total_ns = secs * NS_PER_SEC + nanos;
    let magnitude = Duration::new(
        (total_ns.unsigned_abs() / NS_PER_SEC as u128) as u64,
        (total_ns.unsigned_abs() % NS_PER_SEC as u128) as u32,
    );
    let t = if total_ns >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    t.ok_or_else(|| bad("not representable on this system"))
}

/// Format as RFC 3339 in UTC with as many fraction digits as needed (none
/// for whole seconds), so that [`parse_rfc3339`] gives back the same time.
pub fn format_rfc3339(t: SystemTime) -> String {
    let total_ns: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    let secs = total_ns.div_euclid(NS_PER_SEC);
    let nanos = total_ns.rem_euclid(NS_PER_SEC);
    let days = secs.div_euclid(SECS_PER_DAY) as i64;
    let sod = secs.rem_euclid(SECS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn parses_utc_offsets_and_fractions() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(UNIX_EPOCH));
        assert_eq!(
            parse_rfc3339("2024-05-01T12:00:00Z"),
            Ok(at(1_714_564_800, 0))
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T14:00:00.5+02:00"),
            Ok(at(1_714_564_800, 500_000_000))
        );
        assert_eq!(
            parse_rfc3339("2024-05-01t07:30:00.123456789-04:30"),
            Ok(at(1_714_564_800, 123_456_789))
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00Z"),
            Ok(at(951_782_400, 0))
        );
        assert_eq!(
            parse_rfc3339("1969-12-31T23:59:59Z"),
            Ok(UNIX_EPOCH - Duration::from_secs(1))
        );
    }

    #[test]
    fn refuses_malformed_times() {
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01 12:00:00Z",
            "2024-05-01T12:00:00",
            "2024-13-01T12:00:00Z",
            "2023-02-29T12:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T23:59:60Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+0200",
            "2024-05-01T12:00:00Zjunk",
            "yesterday",
        ] {
            let err = parse_rfc3339(bad).expect_err(bad).to_string();
            assert!(err.contains("RFC 3339"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn format_round_trips() {
        for t in [
            UNIX_EPOCH,
            at(1_714_564_800, 0),
            at(1_714_564_800, 500_000_000),
            at(4_102_444_799, 1),
            UNIX_EPOCH - Duration::new(86_400 * 400, 250),
        ] {
            let s = format_rfc3339(t);
            assert_eq!(parse_rfc3339(&s), Ok(t), "{s}");
        }
        assert_eq!(
            format_rfc3339(at(1_714_564_800, 500_000_000)),
            "2024-05-01T12:00:00.5Z"
        );
    }
}
