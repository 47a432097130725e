//! Which settings differ between two configurations, and which of those a
//! reload (SIGHUP, `keycore reload`) applies to the running server.
//!
//! Owns: [`APPLIED_BY_RELOAD`] (the one list of keys a reload applies),
//! [`Setting::applied_by_reload`] and [`changed_settings`]. Everything not
//! applied by a reload needs a restart: the engine reports such keys when a
//! reload finds them changed (logged and in the reload's result), never
//! silently ignores them.
//!
//! Must not: decide how a change is applied (the engine's reload does).

use crate::table::{Input, Section, Setting, SETTINGS};
use crate::Config;

/// Keys a reload applies (besides every `pkcs11_*` and `kms_*` tunable,
/// which take effect when their backend's store is reopened): the TLS
/// material and settings (new connections), the key stores, and how key
/// loading and PKCS#11 operations behave. A key added to the config that a
/// reload should apply is added here.
pub const APPLIED_BY_RELOAD: &[&str] = &[
    "auth_cert",
    "auth_key",
    "cloudflare_ca_cert",
    "private_key_stores",
    "tls12_only",
    "current_time",
    "key_load_errors",
    "sign_timeout",
    "reload_timeout",
    "key_policies",
    "client_identities",
    "client_max_rps",
    "client_max_connections",
    "audit_file",
    "audit_max_bytes",
    "audit_keep",
];

impl Setting {
    /// Whether a reload applies this key (else a change needs a restart).
    pub fn applied_by_reload(&self) -> bool {
        matches!(self.section, Section::Pkcs11 | Section::Kms)
            || APPLIED_BY_RELOAD.contains(&self.name)
    }
}

impl Config {
    /// The configuration a reload runs with: `self` (the one in force) with
    /// every key of [`APPLIED_BY_RELOAD`] and every `pkcs11_*`/`kms_*`
    /// tunable taken from `new`. Keys that need a restart keep their running
    /// values (so, e.g., the PKCS#11 store is not reopened for a `cores`
    /// change that has not happened).
    pub fn with_reloaded(&self, new: &Config) -> Config {
        let mut c = self.clone();
        c.auth_cert = new.auth_cert.clone();
        c.auth_key = new.auth_key.clone();
        c.cloudflare_ca_cert = new.cloudflare_ca_cert.clone();
        c.private_key_stores = new.private_key_stores.clone();
        c.tls12_only = new.tls12_only;
        c.current_time = new.current_time;
        c.key_load_errors = new.key_load_errors;
        c.sign_timeout = new.sign_timeout;
        c.reload_timeout = new.reload_timeout;
        // The allow-list, the per-identity limits and the key policies
        // (whose `clients:` name those identities) change together.
        c.security.key_policies = new.security.key_policies.clone();
        c.security.client_identities = new.security.client_identities.clone();
        c.security.client_max_rps = new.security.client_max_rps;
        c.security.client_max_connections = new.security.client_max_connections;
        // Where and how the audit writer writes (it reopens the file);
        // audit_interval and audit_fail_closed need a restart.
        c.security.audit_file = new.security.audit_file.clone();
        c.security.audit_max_bytes = new.security.audit_max_bytes;
        c.security.audit_keep = new.security.audit_keep;
        c.pkcs11 = new.pkcs11.clone();
        c.kms = new.kms.clone();
        c
    }
}

/// The settings whose values differ between `old` and `new`, in table
/// order (compared through the same text `-o` prints, so two values that
/// print the same are the same).
pub fn changed_settings(old: &Config, new: &Config) -> Vec<&'static Setting> {
    SETTINGS
        .iter()
        .filter(|s| match s.input {
            // The two list-shaped keys are printed by output.rs, not their
            // showers.
            Input::KeyStores => old.private_key_stores != new.private_key_stores,
            Input::Cores => old.cores != new.cores,
            Input::Scalar(_) | Input::Identities | Input::KeyPolicies => {
                (s.show)(old) != (s.show)(new)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reloaded_key_is_in_the_table() {
        for name in APPLIED_BY_RELOAD {
            assert!(
                SETTINGS.iter().any(|s| s.name == *name),
                "{name} is not a config key"
            );
        }
    }

    #[test]
    fn a_reload_takes_exactly_the_reloadable_keys() {
        let old = Config::default();
        let text = "port: 1\ncores: 3\nloglevel: 0\nmetrics_port: 7\nidle_timeout: 3s\nauth_cert: a.pem\n\
                    auth_key: a.key\ncloudflare_ca_cert: ca.pem\ntls12_only: true\nkey_load_errors: skip\n\
                    sign_timeout: 1s\ncurrent_time: 2020-01-01T00:00:00Z\npkcs11_sessions_per_core: 9\n\
                    kms_verify: false\nprivate_key_stores:\n  - dir: /k\n";
        let new = crate::from_yaml_str(text, std::path::Path::new("t.yaml"), &|_| None)
            .unwrap()
            .config;
        let changed = changed_settings(&old, &new);
        let applied = changed_settings(&old, &old.with_reloaded(&new));
        let want: Vec<&str> = changed
            .iter()
            .filter(|s| s.applied_by_reload())
            .map(|s| s.name)
            .collect();
        let got: Vec<&str> = applied.iter().map(|s| s.name).collect();
        assert_eq!(got, want);
        assert!(want.len() >= 10, "{want:?}");
        let restart: Vec<&str> = changed
            .iter()
            .filter(|s| !s.applied_by_reload())
            .map(|s| s.name)
            .collect();
        assert_eq!(
            restart,
            ["loglevel", "port", "metrics_port", "cores", "idle_timeout"]
        );
        for s in &changed {
            assert_eq!(got.contains(&s.name), s.applied_by_reload(), "{}", s.name);
        }
    }

    #[test]
    fn changes_are_found_and_classified() {
        let a = Config::default();
        let mut b = a.clone();
        assert!(changed_settings(&a, &b).is_empty());
        b.port = 9999;
        b.auth_cert = "other.pem".into();
        b.pkcs11.sessions_per_core = 7;
        let names: Vec<(&str, bool)> = changed_settings(&a, &b)
            .iter()
            .map(|s| (s.name, s.applied_by_reload()))
            .collect();
        assert_eq!(
            names,
            [
                ("auth_cert", true),
                ("port", false),
                ("pkcs11_sessions_per_core", true)
            ]
        );
    }
}
