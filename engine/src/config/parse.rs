//! Parsers for single setting values, shared by the file, the environment
//! and the flags so a value means the same thing wherever it is written.
//!
//! Owns: text → typed value with a message saying what was expected. Must
//! not: know where the text came from (the caller adds file/line, variable
//! or flag to the message).

use super::duration::parse_duration;
use std::net::IpAddr;
use std::time::Duration;

/// An integer in `min..=max`. Decimal only (a leading `+` is allowed).
pub fn int_in(text: &str, min: u64, max: u64) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.strip_prefix('+').unwrap_or(t);
    let expected = || format!("expected an integer {min}..={max}, got {text:?}");
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
pub fn boolean(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "t" | "y" | "1" => Ok(true),
        "false" | "no" | "off" | "f" | "n" | "0" => Ok(false),
        _ => Err(format!("expected true or false, got {text:?}")),
    }
}

/// A finite float in `min..=max`.
pub fn float_in(text: &str, min: f64, max: f64) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= min && v <= max => Ok(v),
        _ => Err(format!("expected a number {min}..={max}, got {text:?}")),
    }
}

/// An IP address (v4 or v6) to bind to. Host names are refused: binding
/// must not depend on DNS at start-up.
pub fn ip(text: &str) -> Result<IpAddr, String> {
    text.trim().parse().map_err(|_| {
        format!("expected an IP address such as \"0.0.0.0\", \"127.0.0.1\" or \"::\", got {text:?}")
    })
}

/// A duration in Go syntax that must be greater than zero.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err(format!(
            "expected a duration greater than zero, got {text:?}"
        ));
    }
    Ok(d)
}

/// An optional duration: empty, `0` or `0s` mean "none".
pub fn optional_duration(text: &str) -> Result<Option<Duration>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let d = parse_duration(text)?;
    Ok((!d.is_zero()).then_some(d))
}

/// A non-empty string (paths, URIs).
pub fn non_empty(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("expected a non-empty value".to_owned());
    }
    Ok(text.to_owned())
}

/// One of a fixed set of lower-case words.
pub fn one_of<T: Copy>(text: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let t = text.trim().to_ascii_lowercase();
    choices
        .iter()
        .find(|(name, _)| *name == t)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            format!("expected one of {}, got {text:?}", names.join(", "))
        })
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
pub fn cpu_list(items: &[&str], max_cpu_id: usize) -> Result<Vec<usize>, String> {
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
            return Err(format!("CPU range {item:?} runs backwards"));
        }
        for cpu in lo..=hi {
            if out.contains(&cpu) {
                return Err(format!("CPU {cpu} is listed twice"));
            }
            out.push(cpu);
        }
    }
    if out.is_empty() {
        return Err("expected at least one CPU id".to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_accept_quoted_forms_and_check_range() {
        assert_eq!(int_in("2407", 0, 65535), Ok(2407));
        assert_eq!(int_in(" +7 ", 0, 65535), Ok(7));
        let err = int_in("abc", 0, 65535).unwrap_err();
        assert_eq!(err, "expected an integer 0..=65535, got \"abc\"");
        assert!(int_in("65536", 0, 65535).is_err());
        assert!(int_in("-1", 0, 65535).is_err());
        assert!(int_in("1.5", 0, 9).is_err());
        assert!(int_in("", 0, 9).is_err());
        assert!(int_in("99999999999999999999999", 0, 9).is_err());
    }

    #[test]
    fn booleans_in_go_and_yaml_spellings() {
        for t in ["true", "True", "YES", "on", "1", "t"] {
            assert_eq!(boolean(t), Ok(true), "{t}");
        }
        for t in ["false", "FALSE", "no", "off", "0", "f"] {
            assert_eq!(boolean(t), Ok(false), "{t}");
        }
        assert!(boolean("maybe").unwrap_err().contains("\"maybe\""));
    }

    #[test]
    fn floats_ips_and_enums() {
        assert_eq!(float_in("0.25", 0.0, 1.0), Ok(0.25));
        assert!(float_in("NaN", 0.0, 1.0).is_err());
        assert!(float_in("1.5", 0.0, 1.0).is_err());
        assert_eq!(ip("::1").unwrap().to_string(), "::1");
        assert!(ip("localhost").is_err());
        assert_eq!(one_of("Skip", &[("fail", 1), ("skip", 2)]), Ok(2));
        assert_eq!(
            one_of("maybe", &[("fail", 1), ("skip", 2)]).unwrap_err(),
            "expected one of \"fail\", \"skip\", got \"maybe\""
        );
    }

    #[test]
    fn cpu_lists_and_ranges() {
        assert_eq!(cpu_list(&["0", "2-4"], 1023), Ok(vec![0, 2, 3, 4]));
        assert!(cpu_list(&["1", "1"], 1023).unwrap_err().contains("twice"));
        assert!(cpu_list(&["3-1"], 1023).unwrap_err().contains("backwards"));
        assert!(cpu_list(&[], 1023).is_err());
        assert!(cpu_list(&["x"], 1023).is_err());
        assert_eq!(comma_list(" a, ,b ,"), vec!["a", "b"]);
    }
}
