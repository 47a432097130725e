//! Flags of `keycore serve`: a few fixed ones (`-c`, `-o`, ...) and one per
//! table key, built from [`SETTINGS`] with clap's builder API so a key's
//! flag, placeholder and help (with its default and environment names)
//! cannot drift from the table.
//!
//! Owns: [`ServeArgs`] and its clap wiring. Must not: parse values (flags
//! are taken as text and checked by the same setter as the file, so a value
//! means the same everywhere).

use crate::table::SETTINGS;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Flags of `keycore serve`. Every config key has a flag (dashes for
/// underscores) that overrides the `KEYLESS_<KEY>` environment variable,
/// which overrides the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeArgs {
    /// `-c/--config-file`.
    pub config_file: Option<PathBuf>,
    /// `-o/--output-config`: print the effective configuration and exit.
    pub output_config: bool,
    /// `--show-secrets`: with `-o`, print secrets instead of `<redacted>`.
    pub show_secrets: bool,
    /// `--config-only`.
    pub config_only: bool,
    /// `--private-key-dirs`.
    pub private_key_dirs: Option<String>,
    /// `--private-key-files`.
    pub private_key_files: Option<String>,
    /// Table keys given as flags: key → text as typed.
    pub values: BTreeMap<&'static str, String>,
}

impl ServeArgs {
    /// `self` with the flag for `key` set to `value` (tests, embedders).
    /// Panics on a key that is not in the table: a typo in code, not input.
    pub fn with(mut self, key: &str, value: &str) -> ServeArgs {
        let s = crate::table::setting(key).unwrap_or_else(|| panic!("no config key {key:?}"));
        self.values.insert(s.name, value.to_owned());
        self
    }

    /// The flag's value for a config key, if given on the command line.
    pub(crate) fn flag_for(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

const CONFIG_FILE: &str = "config_file";
const OUTPUT_CONFIG: &str = "output_config";
const SHOW_SECRETS: &str = "show_secrets";
const CONFIG_ONLY: &str = "config_only";
const PRIVATE_KEY_DIRS: &str = "private_key_dirs";
const PRIVATE_KEY_FILES: &str = "private_key_files";

fn help_for(s: &crate::Setting) -> String {
    let default = if s.default.is_empty() {
        "empty".to_owned()
    } else {
        s.default.to_owned()
    };
    format!(
        "{} Default: {default}. Env: {}.",
        s.doc,
        s.env_names().join(", ")
    )
}

impl Args for ServeArgs {
    fn augment_args(cmd: Command) -> Command {
        let mut cmd = cmd
            .arg(
                Arg::new(CONFIG_FILE)
                    .short('c')
                    .long("config-file")
                    .visible_alias("config_file")
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help(
                        "Config file (YAML, gokeyless.yaml format). Default: ./gokeyless.yaml if \
                         it exists, else /etc/keyless/gokeyless.yaml if it exists, else built-in \
                         defaults only. A file named here must exist.",
                    ),
            )
            .arg(
                Arg::new(OUTPUT_CONFIG)
                    .short('o')
                    .long("output-config")
                    .action(ArgAction::SetTrue)
                    .help(
                        "Print the effective configuration (every setting with its source: \
                         default, file:line, env or flag) as YAML and exit. Default: off.",
                    ),
            )
            .arg(
                Arg::new(SHOW_SECRETS)
                    .long("show-secrets")
                    .action(ArgAction::SetTrue)
                    .help(
                        "With -o, print secrets (origin_ca_api_key, enroll_api_token, PINs in \
                         PKCS#11 URIs) \
                         instead of <redacted>. Default: off.",
                    ),
            )
            .arg(
                Arg::new(CONFIG_ONLY)
                    .long("config-only")
                    .action(ArgAction::SetTrue)
                    .help(
                        "As the reference: run certificate enrollment only (when hostname, \
                         zone_id and a credential are set and auth_cert/auth_key are missing), \
                         then exit without serving. Default: off.",
                    ),
            )
            .arg(
                Arg::new(PRIVATE_KEY_DIRS)
                    .long("private-key-dirs")
                    .value_name("DIRS")
                    .help(
                        "Comma-separated directories of *.key files; replaces \
                         private_key_stores (together with --private-key-files). Env: \
                         KEYLESS_PRIVATE_KEY_DIRS. Default: unset.",
                    ),
            )
            .arg(
                Arg::new(PRIVATE_KEY_FILES)
                    .long("private-key-files")
                    .value_name("FILES")
                    .help(
                        "Comma-separated key files; replaces private_key_stores (together \
                         with --private-key-dirs). Env: KEYLESS_PRIVATE_KEY_FILES. Default: \
                         unset.",
                    ),
            );
        for s in SETTINGS.iter().filter(|s| s.has_flag()) {
            let mut arg = Arg::new(s.name)
                .long(s.name.replace('_', "-"))
                .value_name(s.value_name)
                .help(help_for(s));
            if s.switch {
                arg = arg
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true");
            }
            cmd = cmd.arg(arg);
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut a = ServeArgs::default();
        a.update_from_arg_matches(m)?;
        Ok(a)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(p) = m.get_one::<PathBuf>(CONFIG_FILE) {
            self.config_file = Some(p.clone());
        }
        self.output_config |= m.get_flag(OUTPUT_CONFIG);
        self.show_secrets |= m.get_flag(SHOW_SECRETS);
        self.config_only |= m.get_flag(CONFIG_ONLY);
        if let Some(v) = m.get_one::<String>(PRIVATE_KEY_DIRS) {
            self.private_key_dirs = Some(v.clone());
        }
        if let Some(v) = m.get_one::<String>(PRIVATE_KEY_FILES) {
            self.private_key_files = Some(v.clone());
        }
        for s in SETTINGS.iter().filter(|s| s.has_flag()) {
            if let Some(v) = m.get_one::<String>(s.name) {
                self.values.insert(s.name, v.clone());
            }
        }
        Ok(())
    }
}
