//! Tests of the whole layering: file + environment + flags → Config.
//! Sample files live in `engine/testdata/config/`.

use super::*;
use crate::load::unknown_env_warnings;
use clap::{CommandFactory, Parser};
use std::fs;
use std::path::Path;

fn no_env(_: &str) -> Option<String> {
    None
}

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

fn read(name: &str) -> String {
    fs::read_to_string(testdata(name)).unwrap()
}

/// Resolve a file's text with `env` and `args`.
fn resolve_all_present(
    text: &str,
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    args: &ServeArgs,
) -> Result<Loaded, ConfigError> {
    resolve(Some((text, Path::new(name))), env, args)
}

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// The error and its whole source chain on one line, as the binary prints
/// it (a variant's own message no longer repeats its source's).
fn err_text(r: Result<Loaded, ConfigError>) -> String {
    match r {
        Ok(l) => panic!("expected an error, got {:?}", l.config),
        Err(e) => keycore_keys::error_chain(&e),
    }
}

#[test]
fn operator_gokeyless_yaml_loads_unchanged() {
    let loaded = resolve_all_present(
        &read("gokeyless.yaml"),
        "gokeyless.yaml",
        &no_env,
        &ServeArgs::default(),
    )
    .unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(c.loglevel, LogLevel::Warning);
    assert_eq!(c.hostname, "keyless.example.com");
    assert_eq!(c.zone_id, "023e105f4ecef8ad9ca31a8372d0c353");
    assert!(c.origin_ca_api_key.expose().starts_with("v1.0-e24fd"));
    assert_eq!(c.auth_cert, Path::new("/etc/keyless/server.pem"));
    assert_eq!(c.auth_key, Path::new("/etc/keyless/server-key.pem"));
    assert_eq!(c.auth_csr, Path::new("/etc/keyless/server.csr"));
    assert_eq!(
        c.cloudflare_ca_cert,
        Path::new("/etc/keyless/keyless_cacert.pem")
    );
    assert_eq!(
        c.private_key_stores,
        vec![
            KeyStore::Dir("/etc/keyless/keys".into()),
            KeyStore::File("/etc/keyless/extra/site.example.com.key".into()),
            KeyStore::Uri(
                "pkcs11:token=SoftHSM2%20Token;id=%03?module-path=/usr/lib/softhsm/libsofthsm2.so\
                 &pin-value=1234&max-sessions=4"
                    .into()
            ),
            KeyStore::Uri(
                "https://example-vault.vault.azure.net/keys/keyless-rsa/\
                 0123456789abcdef0123456789abcdef"
                    .into()
            ),
            KeyStore::Uri(
                "projects/my-project/locations/global/keyRings/keyless/cryptoKeys/ecdsa/\
                 cryptoKeyVersions/1"
                    .into()
            ),
        ]
    );
    assert_eq!(c.port, 2407);
    assert_eq!(c.metrics_port, 2406, "quoted \"2406\" reads as a number");
    assert_eq!(
        c.pid_file.as_deref(),
        Some(Path::new("/run/keyless/gokeyless.pid"))
    );
    assert_eq!(
        c.current_time,
        Some(epoch_plus(1_714_564_800)),
        "2024-05-01T12:00:00Z"
    );
    assert!(c.tracing_enabled);
    assert_eq!(c.tracing_address, "localhost:6831");
    assert_eq!(c.tracing_sample_rate, 0.25);
    assert_eq!(c.sign_timeout, Some(Duration::from_millis(500)));
    assert_eq!(c.sign_retry_count, 2);
    // keycore's own keys are absent: defaults.
    let d = Config::default();
    assert_eq!(c.listen_address, d.listen_address);
    assert_eq!(c.cores, Cores::All);
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(30));
    assert_eq!(c.key_load_errors, KeyLoadErrors::Fail);
    assert_eq!(c.listen_addr().to_string(), "0.0.0.0:2407");
    assert_eq!(c.metrics_addr().unwrap().to_string(), "0.0.0.0:2406");
}

fn epoch_plus(secs: u64) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn keycore_keys_load_beside_gokeyless_ones() {
    let c = resolve_all_present(
        &read("keycore-extras.yaml"),
        "keycore-extras.yaml",
        &no_env,
        &ServeArgs::default(),
    )
    .unwrap()
    .config;
    assert_eq!(c.port, 12407);
    assert_eq!(c.metrics_port, 0);
    assert_eq!(c.metrics_addr(), None, "metrics_port 0 disables metrics");
    assert_eq!(c.listen_addr().to_string(), "127.0.0.1:12407");
    assert_eq!(c.metrics_address.to_string(), "::1");
    assert_eq!(c.cores, Cores::Count(1));
    assert_eq!(c.limits.max_connections_per_core, 100);
    assert_eq!(c.limits.max_in_flight_per_connection, 64);
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(90));
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(2));
    assert_eq!(c.limits.drain_timeout, Duration::from_millis(500));
    assert!(c.tls12_only);
    assert_eq!(c.limits.read_buffer_bytes, 131_072);
    assert_eq!(
        c.limits.write_buffer_bytes,
        keycore_protocol::MAX_MESSAGE_LEN
    );
    assert_eq!(c.key_load_errors, KeyLoadErrors::Skip);
    assert_eq!(c.pkcs11.dispatch, Pkcs11Dispatch::Offload);
}

#[test]
fn empty_file_and_no_file_give_defaults() {
    for text in ["", "# only a comment\n", "---\n", "~\n"] {
        let loaded = from_yaml_str(text, Path::new("gokeyless.yaml"), &no_env).unwrap();
        assert_eq!(loaded.config, Config::default(), "{text:?}");
        assert!(loaded.warnings.is_empty());
        assert_eq!(loaded.source.as_deref(), Some(Path::new("gokeyless.yaml")));
    }
    let empty = from_yaml_str(&read("empty.yaml"), Path::new("empty.yaml"), &no_env).unwrap();
    assert_eq!(empty.config, Config::default());
    let none = resolve(None, &no_env, &ServeArgs::default()).unwrap();
    assert_eq!(none.config, Config::default());
    assert_eq!(none.source, None);
}

#[test]
fn null_values_mean_default_and_keys_ignore_case() {
    let c = from_yaml_str(
        "port:\nhostname: ~\nMetrics_Port: 9100\n",
        Path::new("g.yaml"),
        &no_env,
    )
    .unwrap()
    .config;
    assert_eq!(c.port, 2407);
    assert_eq!(c.hostname, "");
    assert_eq!(c.metrics_port, 9100);
}

#[test]
fn each_bad_value_names_file_line_and_key() {
    // (key, value as written, expected message after `g.yaml:3: key "<key>": `)
    let cases: &[(&str, &str, &str)] = &[
        ("port", "abc", "expected an integer 0..=65535, got \"abc\""),
        ("port", "-1", "expected an integer 0..=65535, got \"-1\""),
        ("port", "65536", "expected an integer 0..=65535"),
        ("port", "[1, 2]", "expected a single value, found a list"),
        (
            "metrics_port",
            "-1",
            "expected an integer 0..=65535, got \"-1\"",
        ),
        ("loglevel", "6", "expected an integer 0..=5"),
        (
            "loglevel",
            "info",
            "expected an integer 0..=5, got \"info\"",
        ),
        ("auth_cert", "\"\"", "expected a non-empty value"),
        ("current_time", "yesterday", "expected an RFC 3339 time"),
        (
            "tracing_enabled",
            "maybe",
            "expected true or false, got \"maybe\"",
        ),
        ("tracing_sample_rate", "1.5", "expected a number 0..=1"),
        ("sign_timeout", "500", "missing unit"),
        ("sign_timeout", "3d", "unknown unit \"d\""),
        ("sign_retry_count", "many", "expected an integer 0..=1000"),
        ("listen_address", "localhost", "expected an IP address"),
        (
            "metrics_address",
            "{a: 1}",
            "expected a single value, found a mapping",
        ),
        ("cores", "0", "expected \"all\", a count"),
        ("cores", "3-1", "runs backwards"),
        ("cores", "[0, 0]", "listed twice"),
        ("cores", "[[0]]", "list items must be CPU ids"),
        (
            "max_connections_per_core",
            "0",
            "expected an integer 1..=1000000",
        ),
        (
            "max_in_flight_per_connection",
            "0",
            "expected an integer 1..=65536",
        ),
        ("idle_timeout", "0s", "greater than zero"),
        ("reactor_spin", "2s", "at most 1s"),
        ("handshake_timeout", "\"\"", "expected a duration"),
        ("drain_timeout", "-1s", "negative"),
        ("tls12_only", "2", "expected true or false"),
        (
            "read_buffer_bytes",
            "100",
            "expected an integer 65543..=67108864",
        ),
        (
            "write_buffer_bytes",
            "1e9",
            "expected an integer 65543..=67108864",
        ),
        (
            "key_load_errors",
            "ignore",
            "expected one of \"fail\", \"skip\"",
        ),
        (
            "pkcs11_dispatch",
            "thread",
            "expected one of \"auto\", \"inline\", \"offload\"",
        ),
        ("log_format", "xml", "expected one of \"text\", \"json\""),
    ];
    for (key, value, want) in cases {
        let text = format!("# comment\npid_file: /run/k.pid\n{key}: {value}\n");
        let msg = err_text(from_yaml_str(&text, Path::new("g.yaml"), &no_env));
        let prefix = format!("g.yaml:3: key \"{key}\": ");
        assert!(
            msg.starts_with(&prefix) && msg.contains(want),
            "{key}: {value}\n  got:  {msg}\n  want: {prefix}...{want}"
        );
    }
}

#[test]
fn the_brief_example_message_is_exact() {
    let text = "loglevel: 1\nhostname: \"\"\nzone_id: \"\"\n\nauth_cert: server.pem\n\nport: abc\n";
    let msg = err_text(from_yaml_str(text, Path::new("gokeyless.yaml"), &no_env));
    assert_eq!(
        msg,
        "gokeyless.yaml:7: key \"port\": expected an integer 0..=65535, got \"abc\""
    );
}

#[test]
fn unknown_keys_are_warnings_with_their_line() {
    let loaded = from_yaml_str(
        &read("unknown-key.yaml"),
        Path::new("unknown-key.yaml"),
        &no_env,
    )
    .unwrap();
    assert_eq!(loaded.config.metrics_port, 2406);
    assert_eq!(
        loaded.warnings,
        vec![
            "unknown-key.yaml:2: unknown key \"metrics-port\" ignored (did you mean \
             \"metrics_port\"?)"
                .to_owned(),
            "unknown-key.yaml:3: unknown key \"keyless_mode\" ignored".to_owned(),
        ]
    );
}

#[test]
fn a_key_set_twice_is_refused() {
    let msg = err_text(from_yaml_str(
        "port: 1\nmetrics_port: 2\nPort: 3\n",
        Path::new("g.yaml"),
        &no_env,
    ));
    assert_eq!(msg, "g.yaml:3: key \"port\": set twice (first on line 1)");
}

#[test]
fn syntax_errors_and_wrong_shapes_name_the_file() {
    let msg = err_text(from_yaml_str(
        "port: 1\nprivate_key_stores: [\n",
        Path::new("g.yaml"),
        &no_env,
    ));
    assert!(msg.starts_with("g.yaml:"), "{msg}");
    let msg = err_text(from_yaml_str("- port\n", Path::new("g.yaml"), &no_env));
    assert!(
        msg.starts_with("g.yaml:1:1: expected a mapping") && msg.contains("found a list"),
        "{msg}"
    );
    let msg = err_text(from_yaml_str(
        "private_key_stores: /etc/keys\n",
        Path::new("g.yaml"),
        &no_env,
    ));
    assert!(
        msg.starts_with("g.yaml:1: key \"private_key_stores\": expected a list"),
        "{msg}"
    );
}

#[test]
fn store_entry_with_dir_and_file_is_refused() {
    let msg = err_text(from_yaml_str(
        &read("store-dir-and-file.yaml"),
        Path::new("store-dir-and-file.yaml"),
        &no_env,
    ));
    assert_eq!(
        msg,
        "store-dir-and-file.yaml:4: key \"private_key_stores[1]\": entry has both \"dir\" \
         (line 3) and \"file\" (line 4); each entry needs exactly one of dir:, file:, uri:"
    );
}

#[test]
fn store_entry_with_none_is_refused() {
    let msg = err_text(from_yaml_str(
        &read("store-empty-entry.yaml"),
        Path::new("store-empty-entry.yaml"),
        &no_env,
    ));
    assert_eq!(
        msg,
        "store-empty-entry.yaml:3: key \"private_key_stores[1]\": entry has none of dir:, file:, \
         uri: (each entry needs exactly one)"
    );
    let msg = err_text(from_yaml_str(
        "private_key_stores:\n  - dir:\n",
        Path::new("g.yaml"),
        &no_env,
    ));
    assert!(msg.contains("\"dir\" needs a non-empty value"), "{msg}");
    let loaded = from_yaml_str(
        "private_key_stores:\n  - dir: /k\n    pattern: x\n",
        Path::new("g.yaml"),
        &no_env,
    )
    .unwrap();
    assert_eq!(
        loaded.warnings,
        vec!["g.yaml:3: unknown key \"pattern\" in private_key_stores[0] ignored".to_owned()]
    );
}

#[test]
fn env_overrides_file_and_names_the_variable() {
    let text = "port: 1000\nauth_cert: a.pem\nmetrics_port: 9\n";
    static ENV: &[(&str, &str)] = &[
        ("KEYLESS_PORT", "2000"),
        ("KEYLESS_AUTH_CERT", "/etc/b.pem"),
        ("KEYLESS_METRICS_PORT", ""), // empty counts as unset, as in viper
        ("KEYLESS_IDLE_TIMEOUT", "5s"),
    ];
    let c = from_yaml_str(text, Path::new("g.yaml"), &env_of(ENV))
        .unwrap()
        .config;
    assert_eq!(c.port, 2000);
    assert_eq!(c.auth_cert, Path::new("/etc/b.pem"));
    assert_eq!(c.metrics_port, 9);
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(5));

    static BAD: &[(&str, &str)] = &[("KEYLESS_PORT", "http")];
    let msg = err_text(from_yaml_str(text, Path::new("g.yaml"), &env_of(BAD)));
    assert_eq!(
        msg,
        "environment variable KEYLESS_PORT: key \"port\": expected an integer 0..=65535, got \
         \"http\""
    );
}

#[test]
fn flag_overrides_env_and_names_the_flag() {
    static ENV: &[(&str, &str)] = &[("KEYLESS_PORT", "2000"), ("KEYLESS_LOGLEVEL", "3")];
    let args = ServeArgs::default().with("port", "3000");
    let c = resolve_all_present("port: 1000\n", "g.yaml", &env_of(ENV), &args)
        .unwrap()
        .config;
    assert_eq!(c.port, 3000);
    assert_eq!(
        c.loglevel,
        LogLevel::Error,
        "env still applies to other keys"
    );

    let args = ServeArgs::default().with("max_connections_per_core", "none");
    let msg = err_text(resolve_all_present("", "g.yaml", &env_of(ENV), &args));
    assert_eq!(
        msg,
        "flag --max-connections-per-core: key \"max_connections_per_core\": expected an integer \
         1..=1000000, got \"none\""
    );
}

#[test]
fn private_key_dirs_and_files_replace_stores() {
    let file = read("gokeyless.yaml");
    let args = ServeArgs {
        private_key_dirs: Some("/a, /b".into()),
        ..ServeArgs::default()
    };
    let c = resolve_all_present(&file, "g.yaml", &no_env, &args)
        .unwrap()
        .config;
    assert_eq!(
        c.private_key_stores,
        vec![KeyStore::Dir("/a".into()), KeyStore::Dir("/b".into())]
    );

    let args = ServeArgs {
        private_key_files: Some("/k/one.key,/k/two.key".into()),
        private_key_dirs: Some("/d".into()),
        ..ServeArgs::default()
    };
    let c = resolve_all_present(&file, "g.yaml", &no_env, &args)
        .unwrap()
        .config;
    assert_eq!(
        c.private_key_stores,
        vec![
            KeyStore::Dir("/d".into()),
            KeyStore::File("/k/one.key".into()),
            KeyStore::File("/k/two.key".into()),
        ]
    );

    // The environment forms, below the flags.
    static ENV: &[(&str, &str)] = &[
        ("KEYLESS_PRIVATE_KEY_FILES", "/e/x.key"),
        ("KEYLESS_PRIVATE_KEY_STORES", "ignored"),
    ];
    let loaded = resolve_all_present(&file, "g.yaml", &env_of(ENV), &ServeArgs::default()).unwrap();
    assert_eq!(
        loaded.config.private_key_stores,
        vec![KeyStore::File("/e/x.key".into())]
    );
    assert!(
        loaded.warnings[0].contains("KEYLESS_PRIVATE_KEY_STORES is ignored"),
        "{:?}",
        loaded.warnings
    );
    let args = ServeArgs {
        private_key_dirs: Some(String::new()),
        ..ServeArgs::default()
    };
    let c = resolve_all_present(&file, "g.yaml", &env_of(ENV), &args)
        .unwrap()
        .config;
    assert!(
        c.private_key_stores.is_empty(),
        "an empty flag clears the stores"
    );
}

#[test]
fn enrollment_keys_load_and_secrets_stay_out_of_debug() {
    // Registration keys with no certificate yet are not a config error any
    // more: serve / enroll decide (and enroll) with them.
    let text = "auth_cert: /nonexistent/server.pem\nhostname: keyless.example.com\nzone_id: z1\n\
                enroll_api_token: tok-secret-1\nenroll_endpoint: https://127.0.0.1:9/v4/certificates/\n\
                enroll_timeout: 5s\n";
    let l = from_yaml_str(text, Path::new("g.yaml"), &no_env).unwrap();
    let c = &l.config;
    assert_eq!(c.hostname, "keyless.example.com");
    assert_eq!(c.enroll.api_token.expose(), "tok-secret-1");
    assert_eq!(c.enroll.endpoint, "https://127.0.0.1:9/v4/certificates/");
    assert_eq!(c.enroll.timeout, Duration::from_secs(5));
    assert!(!format!("{c:?}").contains("tok-secret-1"));
    let out = l.effective_yaml(false);
    assert!(!out.contains("tok-secret-1"), "{out}");
    assert!(
        out.contains("enroll_api_token: \"<redacted>\"  # g.yaml:4"),
        "{out}"
    );
    assert!(l
        .effective_yaml(true)
        .contains("enroll_api_token: \"tok-secret-1\""));
    // The token is sent only over https.
    let err = from_yaml_str(
        "enroll_endpoint: http://api.example.com/\n",
        Path::new("g.yaml"),
        &no_env,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("expected an https:// URL"), "{err}");
    // KEYLESS_* works as for every key.
    let env = env_of(&[("KEYLESS_ENROLL_API_TOKEN", "from-env")]);
    let c = from_yaml_str("", Path::new("g.yaml"), &env).unwrap().config;
    assert_eq!(c.enroll.api_token.expose(), "from-env");
}

#[test]
fn missing_explicit_config_file_is_refused() {
    let args = ServeArgs {
        config_file: Some("/nonexistent/keycore/gokeyless.yaml".into()),
        ..ServeArgs::default()
    };
    let err = load(&args).unwrap_err();
    assert!(matches!(err, ConfigError::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "config file /nonexistent/keycore/gokeyless.yaml does not exist"
    );
}

/// A file that cannot be read names the file; the cause is the source,
/// not repeated in the message (the binary prints the chain).
#[test]
fn an_unreadable_config_file_names_the_file_and_keeps_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let args = ServeArgs {
        // A directory opens but does not read.
        config_file: Some(dir.path().to_path_buf()),
        ..ServeArgs::default()
    };
    let err = load(&args).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("config file {}", dir.path().display())
    );
    let cause = std::error::Error::source(&err)
        .expect("the I/O error")
        .to_string();
    assert!(!err.to_string().contains(&cause), "{err}");
}

#[test]
fn load_reads_the_named_file() {
    let args = ServeArgs {
        config_file: Some(testdata("keycore-extras.yaml")),
        ..ServeArgs::default()
    };
    let loaded = load(&args).unwrap();
    assert_eq!(loaded.config.port, 12407);
    assert_eq!(
        loaded.source.as_deref(),
        Some(testdata("keycore-extras.yaml").as_path())
    );
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin.yaml");
    fs::write(&bin, b"port: \xff\xfe\n").unwrap();
    let args = ServeArgs {
        config_file: Some(bin),
        ..ServeArgs::default()
    };
    assert!(err_text(load(&args)).contains("not UTF-8"));
}

#[test]
fn output_config_round_trips() {
    let mut tricky = Config {
        hostname: "a \"quoted\" name: with # and \\ and ünïcødé".into(),
        tracing_address: "  leading space".into(),
        pid_file: Some("/run/k.pid".into()),
        sign_timeout: Some(Duration::new(1, 500)),
        current_time: Some(epoch_plus(1) + Duration::from_nanos(7)),
        tracing_sample_rate: 0.1,
        cores: Cores::Count(1),
        ..Config::default()
    };
    tricky.private_key_stores = vec![
        KeyStore::Dir("dir with: colon".into()),
        KeyStore::Uri("pkcs11:token=a%20b;id=%01?pin-value=#1".into()),
    ];
    let mut sources = vec![
        Config::default(),
        tricky,
        resolve_all_present(&read("gokeyless.yaml"), "g", &no_env, &ServeArgs::default())
            .unwrap()
            .config,
        resolve_all_present(
            &read("keycore-extras.yaml"),
            "g",
            &no_env,
            &ServeArgs::default(),
        )
        .unwrap()
        .config,
    ];
    if let Some(first) = core_affinity::get_core_ids().and_then(|ids| ids.first().copied()) {
        sources.push(Config {
            cores: Cores::List(vec![first.id]),
            ..Config::default()
        });
    }
    for c in sources {
        let yaml = c.to_yaml();
        let back = resolve_all_present(&yaml, "out.yaml", &no_env, &ServeArgs::default())
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert!(back.warnings.is_empty(), "{:?}", back.warnings);
        assert_eq!(back.config, c, "\n{yaml}");
        for key in SETTINGS.iter().map(|s| s.name) {
            assert!(
                yaml.contains(&format!("\n{key}: ")),
                "{key} missing:\n{yaml}"
            );
        }
    }
}

#[test]
fn cores_accept_counts_lists_and_ranges() {
    let get = |v: &str| {
        from_yaml_str(&format!("cores: {v}\n"), Path::new("g"), &no_env).map(|l| l.config.cores)
    };
    assert_eq!(get("all").unwrap(), Cores::All);
    assert_eq!(get("2").unwrap(), Cores::Count(2));
    let available: Vec<usize> = core_affinity::get_core_ids()
        .map(|v| v.into_iter().map(|c| c.id).collect())
        .unwrap_or_default();
    if let Some(&first) = available.first() {
        assert_eq!(
            get(&format!("[{first}]")).unwrap(),
            Cores::List(vec![first])
        );
        assert_eq!(
            get(&format!("\"{first}-{first}\"")).unwrap(),
            Cores::List(vec![first])
        );
        let missing = (0..=MAX_CPU_ID).find(|i| !available.contains(i)).unwrap();
        let msg = err_text(from_yaml_str(
            &format!("cores: [{missing}]\n"),
            Path::new("g"),
            &no_env,
        ));
        assert!(msg.contains("is not available to this process"), "{msg}");
        let n = available.len() + 1;
        let loaded = from_yaml_str(&format!("cores: {n}\n"), Path::new("g"), &no_env).unwrap();
        assert!(
            loaded.warnings[0].contains("more than one"),
            "{:?}",
            loaded.warnings
        );
    }
    let c = Config {
        cores: Cores::Count(3),
        ..Config::default()
    };
    assert_eq!(c.core_ids(&[4, 6]), vec![4, 6, 4]);
    assert_eq!(c.core_ids(&[]), vec![0, 1, 2]);
}

#[test]
fn unknown_keyless_env_vars_are_warned_about() {
    let w = unknown_env_warnings(
        [
            "KEYLESS_PORT",
            "KEYLESS_PROT",
            "PATH",
            "KEYLESS_PRIVATE_KEY_DIRS",
        ]
        .into_iter()
        .map(String::from),
    );
    assert_eq!(
        w,
        vec!["environment variable KEYLESS_PROT matches no config key; ignored".to_owned()]
    );
}

/// A wrapper as the CLI would flatten `ServeArgs`.
#[derive(clap::Parser, Debug)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn parse_flags(args: &[&str]) -> ServeArgs {
    Cli::try_parse_from(std::iter::once("keycore").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .serve
}

#[test]
fn flags_parse_with_reference_spellings() {
    Cli::command().debug_assert();
    for spelling in [
        &["-c", "/x.yaml"][..],
        &["--config_file", "/x.yaml"],
        &["--config-file", "/x.yaml"],
        &["--config_file=/x.yaml"],
    ] {
        assert_eq!(
            parse_flags(spelling).config_file.as_deref(),
            Some(Path::new("/x.yaml")),
            "{spelling:?}"
        );
    }
    let a = parse_flags(&[
        "-o",
        "--config-only",
        "--metrics-port",
        "0",
        "--tracing-enabled",
        "--tls12-only=false",
        "--private-key-dirs",
        "/a,/b",
        "--sign-timeout",
        "2s",
    ]);
    assert!(a.output_config && a.config_only);
    assert_eq!(a.flag_for("metrics_port"), Some("0"));
    assert_eq!(a.flag_for("tracing_enabled"), Some("true"));
    assert_eq!(a.flag_for("tls12_only"), Some("false"));
    let c = resolve(None, &no_env, &a).unwrap().config;
    assert_eq!(c.metrics_port, 0);
    assert!(c.tracing_enabled && !c.tls12_only);
    assert_eq!(c.sign_timeout, Some(Duration::from_secs(2)));
    assert_eq!(c.private_key_stores.len(), 2);
    // Every key has its flag: a flag for each key overrides an empty config
    // (the lists have none: their flags or the file carry them).
    for key in SETTINGS.iter().filter(|s| s.has_flag()).map(|s| s.name) {
        let flag = flag_name(key);
        let cmd = Cli::command();
        assert!(
            cmd.get_arguments()
                .any(|a| a.get_long().map(|l| format!("--{l}")) == Some(flag.clone())),
            "no flag {flag}"
        );
    }
}

#[test]
fn every_flag_help_states_its_default() {
    let cmd = Cli::command();
    for arg in cmd.get_arguments() {
        let name = arg.get_id().as_str();
        if name == "help" {
            continue;
        }
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        assert!(
            help.contains("Default"),
            "flag {name} help does not state its default: {help:?}"
        );
    }
}

#[test]
fn every_default_parses_and_shows_back() {
    // Config::default() is built from the table's default texts; showing a
    // default and parsing it back must give the same value, and an empty
    // default must show as empty (README "empty" = -o "").
    let d = Config::default();
    let yaml = d.to_yaml();
    let back = resolve_all_present(&yaml, "d.yaml", &no_env, &ServeArgs::default()).unwrap();
    assert_eq!(back.config, d, "\n{yaml}");
    for s in SETTINGS {
        if s.default.is_empty() && s.has_flag() {
            assert_eq!((s.show)(&d), "\"\"", "{}", s.name);
        }
    }
    assert_eq!(d.port, 2407);
    assert_eq!(d.metrics_port, 2406);
    assert_eq!(d.limits.write_buffer_bytes, 65_544);
    assert_eq!(d.limits.read_buffer_bytes, 65_544);
    assert_eq!(Limits::default(), d.limits);
    assert_eq!(Limits::default().validate(), Ok(()));
    assert_eq!(d.kms.gcp_endpoint, "https://cloudkms.googleapis.com");
    assert_eq!(d.kms.op_timeout, Duration::from_secs(5));
    assert!(d.kms.verify);
    assert_eq!(d.pkcs11.sessions_per_core, 2);
    assert_eq!(d.pkcs11_op_timeout(), PKCS11_OP_TIMEOUT_FALLBACK);
}

#[test]
fn every_field_comes_from_the_table() {
    // Each field of Config (and of its parts) is a table key, possibly with
    // its part's prefix: a field without an entry would be invisible to -o,
    // the flags and the README.
    // Field names of the Debug text, quoted values (paths, URLs) left out.
    let mut debug = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for ch in format!("{:?}", Config::default()).chars() {
        match (quoted, escaped, ch) {
            (true, false, '\\') => escaped = true,
            (true, true, _) => escaped = false,
            (_, false, '"') => quoted = !quoted,
            (false, _, c) => debug.push(c),
            _ => {}
        }
    }
    let names: Vec<&str> = debug
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter_map(|t| t.strip_suffix(':'))
        .filter(|t| !t.is_empty() && !t.contains(':'))
        .collect();
    assert!(names.len() > 40, "{names:?}");
    let known = |k: &str| SETTINGS.iter().any(|s| s.name == k);
    for f in names {
        if [
            "limits",
            "pkcs11",
            "kms",
            "security",
            "enroll",
            "max_body_len",
        ]
        .contains(&f)
        {
            continue;
        }
        assert!(
            known(f)
                || known(&format!("pkcs11_{f}"))
                || known(&format!("kms_{f}"))
                || known(&format!("enroll_{f}")),
            "Config field {f} has no table entry"
        );
    }
    // Names are unique and lower-case with underscores (they are YAML keys,
    // flags and variable names at once).
    for (i, s) in SETTINGS.iter().enumerate() {
        assert!(
            s.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{}",
            s.name
        );
        assert!(
            SETTINGS[i + 1..].iter().all(|o| o.name != s.name),
            "{} twice",
            s.name
        );
    }
}

#[test]
fn reference_keys_and_defaults_are_the_references() {
    // /work/shared/CONFIG.md's table: names, order and defaults.
    let reference: &[(&str, &str)] = &[
        ("loglevel", "1"),
        ("hostname", ""),
        ("zone_id", ""),
        ("origin_ca_api_key", ""),
        ("auth_cert", "server.pem"),
        ("auth_key", "server-key.pem"),
        ("auth_csr", "server.csr"),
        ("cloudflare_ca_cert", "keyless_cacert.pem"),
        ("private_key_stores", ""),
        ("port", "2407"),
        ("metrics_port", "2406"),
        ("pid_file", ""),
        ("current_time", ""),
        ("tracing_enabled", "false"),
        ("tracing_address", ""),
        ("tracing_sample_rate", "0"),
        ("sign_timeout", ""),
        ("sign_retry_count", "0"),
    ];
    let ours: Vec<(&str, &str)> = SETTINGS
        .iter()
        .filter(|s| s.section == Section::Reference)
        .map(|s| (s.name, s.default))
        .collect();
    assert_eq!(ours, reference);
}

#[test]
fn readme_matches_the_table() {
    // The README's configuration table is rendered from the table. To
    // update it after changing the table: KEYCORE_BLESS_README=1 cargo test
    // -p keycore-config readme_matches_the_table
    const BEGIN: &str = "<!-- config-table:begin (generated from config/src/table.rs) -->";
    const END: &str = "<!-- config-table:end -->";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = fs::read_to_string(&path).unwrap();
    let start = readme
        .find(BEGIN)
        .expect("README.md has no config-table:begin marker")
        + BEGIN.len();
    let end = readme[start..]
        .find(END)
        .expect("README.md has no config-table:end marker")
        + start;
    let want = readme_table();
    if readme[start..end] != want {
        if std::env::var_os("KEYCORE_BLESS_README").is_some() {
            let updated = format!("{}{want}{}", &readme[..start], &readme[end..]);
            fs::write(&path, updated).unwrap();
            return;
        }
        panic!(
            "README.md's configuration table differs from config/src/table.rs; rerun with \
             KEYCORE_BLESS_README=1 to rewrite it. Rendered:\n{want}"
        );
    }
}

#[test]
fn help_and_readme_carry_every_key_default_and_env_name() {
    let table = readme_table();
    let cmd = Cli::command();
    for s in SETTINGS {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", s.name)))
            .unwrap_or_else(|| panic!("{} not in the README table", s.name));
        for env in s.env_names() {
            assert!(row.contains(&env), "{}: {env} missing in {row}", s.name);
        }
        if !s.has_flag() {
            continue;
        }
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id().as_str() == s.name)
            .unwrap();
        let help = arg.get_help().unwrap().to_string();
        let default = if s.default.is_empty() {
            "empty"
        } else {
            s.default
        };
        assert!(
            help.contains(&format!("Default: {default}.")),
            "{}: {help}",
            s.name
        );
    }
}

#[test]
fn effective_yaml_names_each_source_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    fs::write(&cert, "x").unwrap();
    fs::write(&key, "x").unwrap();
    let text = format!(
        "auth_cert: {}\nauth_key: {}\norigin_ca_api_key: v1.0-secret-key\nprivate_key_stores:\n  \
         - uri: pkcs11:token=t;id=%01?module-path=/m.so&pin-value=4321\n  - dir: /keys\n",
        cert.display(),
        key.display()
    );
    static ENV: &[(&str, &str)] = &[
        ("KEYLESS_IDLE_TIMEOUT", "5s"),
        ("KEYCORE_AZURE_MAX_RPS", "50"),
        ("KEYCORE_KMS_OP_TIMEOUT_MS", "1500"),
    ];
    let args = ServeArgs::default()
        .with("port", "3000")
        .with("kms_verify", "false");
    let loaded = resolve(Some((&text, Path::new("g.yaml"))), &env_of(ENV), &args).unwrap();
    let c = &loaded.config;
    assert_eq!(c.kms.azure_max_rps, 50);
    assert_eq!(c.kms.op_timeout, Duration::from_millis(1500));
    assert!(!c.kms.verify);
    let out = loaded.effective_yaml(false);
    for line in [
        "port: 3000  # flag --port",
        "idle_timeout: \"5s\"  # env KEYLESS_IDLE_TIMEOUT",
        "kms_azure_max_rps: 50  # env KEYCORE_AZURE_MAX_RPS",
        "kms_op_timeout: \"1s500ms\"  # env KEYCORE_KMS_OP_TIMEOUT_MS",
        "kms_verify: false  # flag --kms-verify",
        "origin_ca_api_key: \"<redacted>\"  # g.yaml:3",
        "private_key_stores:  # g.yaml:4",
        "  - uri: \"pkcs11:token=t;id=%01?module-path=/m.so&pin-value=<redacted>\"",
        "metrics_port: 2406  # default",
        "pkcs11_sessions_per_core: 2  # default",
        "kms_gcp_endpoint: \"https://cloudkms.googleapis.com\"  # default",
        "max_handshakes_per_core: 256  # default",
        "log_format: text  # default",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
    }
    assert!(
        !out.contains("4321") && !out.contains("secret-key"),
        "{out}"
    );
    // Every key is there once.
    for s in SETTINGS {
        let n = out
            .lines()
            .filter(|l| l.starts_with(&format!("{}:", s.name)))
            .count();
        assert_eq!(n, 1, "{}", s.name);
    }
    // With --show-secrets the output parses back to the same config.
    let shown = loaded.effective_yaml(true);
    assert!(shown.contains("pin-value=4321") && shown.contains("v1.0-secret-key"));
    let back = resolve(
        Some((&shown, Path::new("o.yaml"))),
        &no_env,
        &ServeArgs::default(),
    )
    .unwrap();
    assert_eq!(&back.config, c);
}

#[test]
fn kms_aliases_rank_below_keyless_names_and_name_themselves_in_errors() {
    static ENV: &[(&str, &str)] = &[
        ("KEYLESS_KMS_GCP_MAX_RPS", "7"),
        ("KEYCORE_GCP_MAX_RPS", "9"),
        ("AZURE_AUTHORITY_HOST", "https://login.example"),
        ("KEYCORE_AWS_STS_ENDPOINT", "http://127.0.0.1:9"),
    ];
    let l = resolve(None, &env_of(ENV), &ServeArgs::default()).unwrap();
    assert_eq!(l.config.kms.gcp_max_rps, 7);
    assert_eq!(
        l.config.kms.azure_authority.as_deref(),
        Some("https://login.example")
    );
    assert_eq!(
        l.config.kms.aws_sts_endpoint.as_deref(),
        Some("http://127.0.0.1:9")
    );
    static BAD: &[(&str, &str)] = &[("KEYCORE_GCP_MAX_RPS", "fast")];
    let msg = err_text(resolve(None, &env_of(BAD), &ServeArgs::default()));
    assert_eq!(
        msg,
        "environment variable KEYCORE_GCP_MAX_RPS: key \"kms_gcp_max_rps\": expected an integer \
         1..=1000000, got \"fast\""
    );
    static URL: &[(&str, &str)] = &[("KEYCORE_AZURE_ENDPOINT", "vault.local")];
    let msg = err_text(resolve(None, &env_of(URL), &ServeArgs::default()));
    assert!(msg.contains("expected an http:// or https:// URL"), "{msg}");
    let msg = err_text(from_yaml_str(
        "log_format: xml\n",
        Path::new("g.yaml"),
        &no_env,
    ));
    assert_eq!(
        msg,
        "g.yaml:1: key \"log_format\": expected one of \"text\", \"json\", got \"xml\""
    );
    let c = from_yaml_str(
        "sign_timeout: 750ms\nmax_handshakes_per_source: 8\n",
        Path::new("g.yaml"),
        &no_env,
    )
    .unwrap()
    .config;
    assert_eq!(c.pkcs11_op_timeout(), Duration::from_millis(750));
    assert_eq!(c.limits.max_handshakes_per_source, 8);
}
