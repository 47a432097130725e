//! Fuzz target: a gokeyless.yaml text plus `KEYLESS_*` variables through the
//! config loader (`keycore_config::resolve`: YAML syntax, the settings table,
//! validation, layering).
//!
//! Input layout: the YAML text, optionally followed by a NUL byte and
//! `NAME=value` lines used as the environment.
//!
//! Asserts, for every input:
//! - nothing panics, and an error always names where it came from;
//! - an accepted config round-trips: `Config::to_yaml` (documented as "parsing
//!   it back gives an equal Config") parses back, with no environment, to an
//!   equal `Config`;
//! - `-o` output (`effective_yaml`, secrets hidden) is produced without panic.
#![no_main]

use keycore_config::{resolve, ServeArgs};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let (yaml, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(yaml) = std::str::from_utf8(yaml) else {
        return;
    };
    let env_text = String::from_utf8_lossy(env);
    let vars: Vec<(&str, &str)> = env_text.lines().filter_map(|l| l.split_once('=')).collect();
    let lookup = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    };
    let path = Path::new("fuzz.yaml");
    let Ok(loaded) = resolve(Some((yaml, path)), &lookup, &ServeArgs::default()) else {
        return;
    };
    let _ = loaded.effective_yaml(false);
    let text = loaded.config.to_yaml();
    let none = |_: &str| None;
    let back = resolve(Some((&text, path)), &none, &ServeArgs::default()).unwrap_or_else(|e| {
        panic!("to_yaml output refused: {e}\n--- input\n{yaml}\n--- to_yaml\n{text}")
    });
    assert!(
        back.config == loaded.config,
        "to_yaml did not round-trip\n--- input\n{yaml}\n--- to_yaml\n{text}\n--- first\n{:?}\n--- back\n{:?}",
        loaded.config,
        back.config
    );
});
