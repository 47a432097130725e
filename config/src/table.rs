//! The table of settings: one entry per config key, the only place a key's
//! name, type, default, environment names, documentation and validation
//! are written. The flag and its help (`args.rs`), YAML parsing and the
//! layering (`load.rs`), `-o` output and the README table (`output.rs`) and
//! [`Config::default`] all read it.
//!
//! Owns: [`SETTINGS`]. Must not: read files or the environment (it only
//! describes keys and converts one value's text).
//!
//! Adding a key: a field in [`Config`] (or one of its parts) plus one entry
//! here; see docs/CONTRIBUTING.md "Add a config key".

use crate::duration::format_duration;
use crate::output::{yaml_quote, yaml_quote_path};
use crate::parse::{self, ValueError};
use crate::rfc3339::{format_rfc3339, parse_rfc3339};
use crate::{
    Config, KeyLoadErrors, LogFormat, LogLevel, Pkcs11Dispatch, SecretString, MAX_BUFFER_BYTES,
    MAX_CONNECTIONS_PER_CORE_LIMIT, MAX_IN_FLIGHT_PER_CONNECTION_LIMIT, MAX_SIGN_RETRY_COUNT,
    MIN_BUFFER_BYTES,
};
use std::path::PathBuf;

/// A setter's body: store the parsed value, succeed.
macro_rules! set {
    ($place:expr, $value:expr) => {{
        $place = $value;
        Ok(())
    }};
}

/// Groups of keys, in the order the README, `--help` and `-o` list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Keys the reference server (gokeyless) defines; their meaning is fixed.
    Reference,
    /// keycore's own server keys.
    Server,
    /// Per-connection and per-core limits (`Config::limits`).
    Limits,
    /// PKCS#11 backend tunables (`Config::pkcs11`).
    Pkcs11,
    /// Cloud KMS backend tunables (`Config::kms`).
    Kms,
    /// Client identities, key policies, per-identity limits, audit trail
    /// (`Config::security`).
    Security,
    /// Enrollment with the CDN's certificates API (`Config::enroll`).
    Enroll,
}

impl Section {
    /// Every section, in order.
    pub const ALL: [Section; 7] = [
        Section::Reference,
        Section::Server,
        Section::Limits,
        Section::Pkcs11,
        Section::Kms,
        Section::Security,
        Section::Enroll,
    ];

    /// Heading used in the README and `-o`.
    pub fn title(self) -> &'static str {
        match self {
            Section::Reference => "Reference keys (gokeyless.yaml)",
            Section::Server => "keycore server keys",
            Section::Limits => "Limits",
            Section::Pkcs11 => "PKCS#11 backend",
            Section::Kms => "Cloud KMS backend (credentials stay in the environment)",
            Section::Security => "Client identities, key policies, audit trail (SECURITY.md)",
            Section::Enroll => "Enrollment (the server's own certificate from the CDN API)",
        }
    }
}

/// An extra environment variable that sets a key (older `KEYCORE_*` names,
/// provider SDK names). Looked at after `KEYLESS_<KEY>`, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alias {
    /// The variable.
    pub name: &'static str,
    /// The variable holds whole milliseconds (`KEYCORE_KMS_OP_TIMEOUT_MS`):
    /// a bare number gets `ms` appended before the duration parser reads it.
    pub millis: bool,
}

/// Whether `-o` may print a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    /// Not secret.
    No,
    /// The whole value is secret.
    Whole,
    /// `pin-value` attributes of PKCS#11 URIs in the value are secret.
    UriPins,
}

/// How a key's value is read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Input {
    /// One scalar, from a flag, a variable or the file.
    Scalar(fn(&mut Config, &str) -> Result<(), ValueError>),
    /// `cores`: a scalar or a YAML list of ids (load.rs).
    Cores,
    /// `private_key_stores`: a list of entries, replaced by the
    /// `--private-key-dirs/--private-key-files` flags (load.rs).
    KeyStores,
    /// `client_identities`: a list of entries, file only (security.rs).
    Identities,
    /// `key_policies`: a list of entries, file only (security.rs).
    KeyPolicies,
}

/// One config key.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The YAML key; the flag is `--` + the name with dashes, the variable
    /// `KEYLESS_` + the name upper-cased.
    pub name: &'static str,
    /// Its group.
    pub section: Section,
    /// Placeholder in `--help` (`PORT`, `DURATION`, `fail|skip`).
    pub value_name: &'static str,
    /// The default as it would be written in the file ("" = empty). Parsed
    /// by the same setter as any other value to build [`Config::default`].
    pub default: &'static str,
    /// One or two sentences: meaning, range, what changing it costs.
    pub doc: &'static str,
    /// Extra environment variables.
    pub aliases: &'static [Alias],
    /// Whether `-o` hides it.
    pub secret: Secret,
    /// A boolean whose flag alone means true (`--tls12-only`).
    pub switch: bool,
    pub(crate) input: Input,
    /// The value as YAML text (quoted where needed), for `-o`.
    pub(crate) show: fn(&Config) -> String,
}

impl Setting {
    const fn new(
        section: Section,
        name: &'static str,
        value_name: &'static str,
        default: &'static str,
        doc: &'static str,
        set: fn(&mut Config, &str) -> Result<(), ValueError>,
        show: fn(&Config) -> String,
    ) -> Setting {
        Setting {
            name,
            section,
            value_name,
            default,
            doc,
            aliases: &[],
            secret: Secret::No,
            switch: false,
            input: Input::Scalar(set),
            show,
        }
    }

    const fn aliases(mut self, aliases: &'static [Alias]) -> Setting {
        self.aliases = aliases;
        self
    }

    const fn secret(mut self, secret: Secret) -> Setting {
        self.secret = secret;
        self
    }

    const fn switch(mut self) -> Setting {
        self.switch = true;
        self
    }

    const fn input(mut self, input: Input) -> Setting {
        self.input = input;
        self
    }

    /// Whether the key has a `--flag` (every key but the lists:
    /// `private_key_stores`, whose flags are
    /// `--private-key-dirs/--private-key-files`, and the file-only
    /// `client_identities` and `key_policies`).
    pub fn has_flag(&self) -> bool {
        !matches!(
            self.input,
            Input::KeyStores | Input::Identities | Input::KeyPolicies
        )
    }

    /// Whether the key can be set only in the config file (a list of
    /// entries that has no one-line form).
    pub fn file_only(&self) -> bool {
        matches!(self.input, Input::Identities | Input::KeyPolicies)
    }

    /// The environment variables that set this key, in precedence order.
    pub fn env_names(&self) -> Vec<String> {
        if matches!(self.input, Input::KeyStores) {
            return vec![
                crate::ENV_PRIVATE_KEY_DIRS.to_owned(),
                crate::ENV_PRIVATE_KEY_FILES.to_owned(),
            ];
        }
        if self.file_only() {
            return Vec::new();
        }
        std::iter::once(crate::env_var_name(self.name))
            .chain(self.aliases.iter().map(|a| a.name.to_owned()))
            .collect()
    }

    /// Set the table default on `c`. Panics if the default does not parse:
    /// a bug in this file, caught by `every_default_parses_and_shows_back`.
    pub(crate) fn apply_default(&self, c: &mut Config) {
        let r = match self.input {
            Input::Scalar(set) => set(c, self.default),
            Input::Cores => crate::load::parse_cores_text(self.default).map(|v| c.cores = v),
            Input::KeyStores => {
                c.private_key_stores.clear();
                Ok(())
            }
            Input::Identities => {
                c.security.client_identities.clear();
                Ok(())
            }
            Input::KeyPolicies => {
                c.security.key_policies.clear();
                Ok(())
            }
        };
        if let Err(e) = r {
            panic!("default of {} does not parse: {e}", self.name);
        }
    }
}

/// Look a key up by name.
pub(crate) fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

const fn alias(name: &'static str) -> Alias {
    Alias {
        name,
        millis: false,
    }
}

const fn alias_ms(name: &'static str) -> Alias {
    Alias { name, millis: true }
}

fn opt_path(t: &str) -> Option<PathBuf> {
    (!t.trim().is_empty()).then(|| PathBuf::from(t))
}

fn show_opt_path(p: &Option<PathBuf>) -> String {
    yaml_quote(
        &p.as_deref()
            .map_or(String::new(), |p| p.to_string_lossy().into_owned()),
    )
}

fn show_opt_text(t: &Option<String>) -> String {
    yaml_quote(t.as_deref().unwrap_or(""))
}

fn count(t: &str, min: u64, max: u64) -> Result<usize, ValueError> {
    parse::int_in(t, min, max).map(|v| v as usize)
}

fn buffer(t: &str) -> Result<usize, ValueError> {
    count(t, MIN_BUFFER_BYTES as u64, MAX_BUFFER_BYTES as u64)
}

/// Longest `reactor_spin`: beyond a second, polling is simply never
/// sleeping, and a typo (`50s` for `50us`) would burn a core for nothing.
const MAX_REACTOR_SPIN: std::time::Duration = std::time::Duration::from_secs(1);

fn rate(t: &str) -> Result<u32, ValueError> {
    parse::int_in(t, 1, 1_000_000).map(|v| v as u32)
}

fn in_flight(t: &str) -> Result<u32, ValueError> {
    parse::int_in(t, 1, 65_536).map(|v| v as u32)
}

const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];
const KEY_LOAD_ERRORS: &[(&str, KeyLoadErrors)] =
    &[("fail", KeyLoadErrors::Fail), ("skip", KeyLoadErrors::Skip)];
const PKCS11_DISPATCH: &[(&str, Pkcs11Dispatch)] = &[
    ("auto", Pkcs11Dispatch::Auto),
    ("inline", Pkcs11Dispatch::Inline),
    ("offload", Pkcs11Dispatch::Offload),
];

use Section::{Enroll, Kms, Limits, Pkcs11, Reference, Security, Server};

/// Every config key, in the order of the README and `-o`: the reference's
/// keys first (their names, defaults and meaning are the reference's), then
/// keycore's.
pub static SETTINGS: &[Setting] = &[
    // ----- the reference's keys -------------------------------------------
    Setting::new(
        Reference,
        "loglevel",
        "0-5",
        "1",
        "0 debug, 1 info, 2 warning, 3 error, 4 critical, 5 fatal.",
        |c, t| set!(c.loglevel, LogLevel::from_number(parse::int_in(t, 0, 5)?)),
        |c| c.loglevel.number().to_string(),
    ),
    Setting::new(
        Reference,
        "hostname",
        "NAME",
        "",
        "Enrollment: the name the server's certificate is issued for (CSR SAN). With zone_id \
         and a credential (enroll_api_token or origin_ca_api_key) set and no auth_cert/auth_key \
         yet, serve enrolls first; `keycore enroll` runs it explicitly.",
        |c, t| set!(c.hostname, t.to_owned()),
        |c| yaml_quote(&c.hostname),
    ),
    Setting::new(
        Reference,
        "zone_id",
        "ID",
        "",
        "Enrollment: the zone the certificate belongs to (see hostname).",
        |c, t| set!(c.zone_id, t.to_owned()),
        |c| yaml_quote(&c.zone_id),
    ),
    Setting::new(
        Reference,
        "origin_ca_api_key",
        "KEY",
        "",
        "Enrollment: the legacy Origin CA service key, sent as X-Auth-User-Service-Key (retired \
         by the API on 2026-09-30: warned; enroll_api_token is preferred when both are set). A \
         secret: -o prints it only with --show-secrets.",
        |c, t| set!(c.origin_ca_api_key, SecretString::new(t.trim())),
        |c| yaml_quote(c.origin_ca_api_key.expose()),
    )
    .secret(Secret::Whole),
    Setting::new(
        Reference,
        "auth_cert",
        "FILE",
        "server.pem",
        "The server's TLS certificate chain (PEM).",
        |c, t| set!(c.auth_cert, parse::non_empty(t)?.into()),
        |c| yaml_quote_path(&c.auth_cert),
    ),
    Setting::new(
        Reference,
        "auth_key",
        "FILE",
        "server-key.pem",
        "The server's TLS private key (PEM).",
        |c, t| set!(c.auth_key, parse::non_empty(t)?.into()),
        |c| yaml_quote_path(&c.auth_key),
    ),
    Setting::new(
        Reference,
        "auth_csr",
        "FILE",
        "server.csr",
        "Enrollment writes the certificate signing request here (PEM, mode 0600).",
        |c, t| set!(c.auth_csr, parse::non_empty(t)?.into()),
        |c| yaml_quote_path(&c.auth_csr),
    ),
    Setting::new(
        Reference,
        "cloudflare_ca_cert",
        "FILE",
        "keyless_cacert.pem",
        "CA that client (edge) certificates must chain to (PEM).",
        |c, t| set!(c.cloudflare_ca_cert, parse::non_empty(t)?.into()),
        |c| yaml_quote_path(&c.cloudflare_ca_cert),
    ),
    Setting::new(
        Reference,
        "private_key_stores",
        "LIST",
        "",
        "List; each entry has exactly one of dir: (recursive *.key), file:, uri: (PKCS#11 URI or \
         cloud KMS key). Replaced by --private-key-dirs / --private-key-files (comma-separated). \
         PINs in URIs are secrets: -o hides them unless --show-secrets.",
        |_, _| Ok(()),
        |_| String::new(),
    )
    .input(Input::KeyStores)
    .secret(Secret::UriPins),
    Setting::new(
        Reference,
        "port",
        "PORT",
        "2407",
        "Keyless listener port; 0 = any free port (tests, demo).",
        |c, t| set!(c.port, parse::int_in(t, 0, 65535)? as u16),
        |c| c.port.to_string(),
    ),
    Setting::new(
        Reference,
        "metrics_port",
        "PORT",
        "2406",
        "Prometheus /metrics port; 0 disables it.",
        |c, t| set!(c.metrics_port, parse::int_in(t, 0, 65535)? as u16),
        |c| c.metrics_port.to_string(),
    ),
    Setting::new(
        Reference,
        "pid_file",
        "FILE",
        "",
        "File to write the process id to; empty = none. Written to a new file and renamed into place (a symlink at that name is replaced, never followed); removed on exit.",
        |c, t| set!(c.pid_file, opt_path(t)),
        |c| show_opt_path(&c.pid_file),
    ),
    Setting::new(
        Reference,
        "current_time",
        "TIME",
        "",
        "RFC 3339 time used instead of now for certificate checks (testing); empty = the clock.",
        |c, t| {
            c.current_time = match t.trim() {
                "" => None,
                t => Some(parse_rfc3339(t)?),
            };
            Ok(())
        },
        |c| yaml_quote(&c.current_time.map_or(String::new(), format_rfc3339)),
    ),
    Setting::new(
        Reference,
        "tracing_enabled",
        "BOOL",
        "false",
        "The reference's Jaeger switch, mapped onto OpenTelemetry: export one span per sampled \
         request over OTLP/HTTP (JSON) to tracing_address. Off costs nothing on the data path.",
        |c, t| set!(c.tracing_enabled, parse::boolean(t)?),
        |c| c.tracing_enabled.to_string(),
    )
    .switch(),
    Setting::new(
        Reference,
        "tracing_address",
        "ADDR",
        "",
        "OTLP/HTTP receiver: host:port (spans go to http://host:port/v1/traces) or a full \
         http:// URL; empty = 127.0.0.1:4318. A Jaeger agent's UDP port (6831) does not speak \
         OTLP: use the collector's OTLP/HTTP port (4318).",
        |c, t| set!(c.tracing_address, t.to_owned()),
        |c| yaml_quote(&c.tracing_address),
    ),
    Setting::new(
        Reference,
        "tracing_sample_rate",
        "RATE",
        "0",
        "Fraction of requests traced, 0..=1 (sampled on the reactor without a lock); a request \
         whose span context (tag 0x15) says sampled is traced whatever the rate.",
        |c, t| set!(c.tracing_sample_rate, parse::float_in(t, 0.0, 1.0)?),
        |c| format!("{:?}", c.tracing_sample_rate),
    ),
    Setting::new(
        Reference,
        "sign_timeout",
        "DURATION",
        "",
        "Time limit for one sign attempt (Go syntax: 500ms, 2s); empty = none. Used as the \
         PKCS#11 per-operation timeout unless pkcs11_op_timeout is set.",
        |c, t| set!(c.sign_timeout, parse::optional_duration(t)?),
        |c| yaml_quote(&c.sign_timeout.map_or(String::new(), format_duration)),
    ),
    Setting::new(
        Reference,
        "sign_retry_count",
        "N",
        "0",
        "Retries of a failed sign, 0..=1000: parsed, not applied (warned); PKCS#11 keys retry \
         once on a healthy session after a recoverable error.",
        |c, t| {
            set!(
                c.sign_retry_count,
                parse::int_in(t, 0, u64::from(MAX_SIGN_RETRY_COUNT))? as u32
            )
        },
        |c| c.sign_retry_count.to_string(),
    ),
    // ----- keycore's server keys ------------------------------------------
    Setting::new(
        Server,
        "listen_address",
        "IP",
        "0.0.0.0",
        "Keyless bind IP (the reference listens on all interfaces); narrowing it costs only \
         reachability.",
        |c, t| set!(c.listen_address, parse::ip(t)?),
        |c| yaml_quote(&c.listen_address.to_string()),
    ),
    Setting::new(
        Server,
        "metrics_address",
        "IP",
        "0.0.0.0",
        "Metrics bind IP; 127.0.0.1 hides /metrics from remote scrapers.",
        |c, t| set!(c.metrics_address, parse::ip(t)?),
        |c| yaml_quote(&c.metrics_address.to_string()),
    ),
    Setting::new(
        Server,
        "cores",
        "CORES",
        "all",
        "all, a count (4) or CPU ids ([0,2], \"0-3\"); one pinned reactor per core. Fewer leave \
         CPU to other processes at the cost of peak throughput.",
        |_, _| Ok(()),
        |c| match &c.cores {
            crate::Cores::All => "all".to_owned(),
            crate::Cores::Count(n) => n.to_string(),
            crate::Cores::List(ids) => {
                let ids: Vec<String> = ids.iter().map(usize::to_string).collect();
                format!("[{}]", ids.join(", "))
            }
        },
    )
    .input(Input::Cores),
    Setting::new(
        Server,
        "reactor_spin",
        "DURATION",
        "",
        "How long each core's reactor keeps polling its sockets and timers after it runs out of \
         work, before it sleeps in the kernel (0 or empty = sleep at once), at most 1s. A \
         sleeping core takes time to wake when a request arrives (tens of microseconds, and on \
         a VM far longer in the tail), which lands in the request's latency; polling keeps \
         the core awake through gaps shorter than this, at the cost of CPU: an idle core \
         spins for this long after each burst of work, so a core with requests arriving more \
         often than this never sleeps (bench/RESULTS.md, \"Latency targets\").",
        |c, t| set!(
                c.limits.reactor_spin,
                parse::optional_duration_at_most(t, MAX_REACTOR_SPIN)?
            ),
        |c| yaml_quote(&c.limits.reactor_spin.map_or(String::new(), format_duration)),
    ),
    Setting::new(
        Server,
        "tls12_only",
        "BOOL",
        "false",
        "false offers TLS 1.3 and 1.2; true is the reference's TLS 1.2-only behaviour (costs \
         TLS 1.3's shorter handshake).",
        |c, t| set!(c.tls12_only, parse::boolean(t)?),
        |c| c.tls12_only.to_string(),
    )
    .switch(),
    Setting::new(
        Server,
        "key_load_errors",
        "fail|skip",
        "fail",
        "fail (as the reference: a bad key stops start-up, naming it) or skip (log and \
         continue, at the risk of silently serving fewer keys).",
        |c, t| set!(c.key_load_errors, parse::one_of(t, KEY_LOAD_ERRORS)?),
        |c| parse::word_of(c.key_load_errors, KEY_LOAD_ERRORS).to_owned(),
    ),
    Setting::new(
        Server,
        "log_format",
        "text|json",
        "text",
        "Log lines on stderr: text (ANSI colours only when stderr is a terminal) or json (one \
         object per line, for log shippers).",
        |c, t| set!(c.log_format, parse::one_of(t, LOG_FORMATS)?),
        |c| parse::word_of(c.log_format, LOG_FORMATS).to_owned(),
    ),
    Setting::new(
        Server,
        "reload_watch",
        "DURATION",
        "",
        "Look at the config file, the key directories and files and the TLS files this often \
         and reload when they changed and then stayed unchanged for one more look (debounce); \
         empty = reload only on SIGHUP / keycore reload. Each look is a stat of every key file \
         (at most 100000).",
        |c, t| set!(c.reload_watch, parse::optional_duration(t)?),
        |c| yaml_quote(&c.reload_watch.map_or(String::new(), format_duration)),
    ),
    Setting::new(
        Server,
        "reload_timeout",
        "DURATION",
        "90s",
        "Longest a reload may take to load everything (> 0); past it the reload is refused and \
         the old state keeps serving. A key store still hung in a call then (an HSM login that \
         never returns) refuses further reloads until it returns; a restart clears it.",
        |c, t| set!(c.reload_timeout, parse::positive_duration(t)?),
        |c| format_duration(c.reload_timeout),
    ),
    Setting::new(
        Server,
        "record_file",
        "FILE",
        "",
        "Record the shape of the traffic (per request: arrival time, opcode, key SKI, \
         connection id, core; never payloads, digests, names or PINs) to this file, rotated by \
         record_max_bytes, for `keycore loadgen --replay` (docs/record-format.md). Empty = off. \
         Read at start-up (a change needs a restart). Costs one 36-byte copy per request; when \
         the writer falls behind records are dropped and counted \
         (keycore_record_dropped_total), signing never waits.",
        |c, t| set!(c.record_file, opt_path(t)),
        |c| show_opt_path(&c.record_file),
    ),
    Setting::new(
        Server,
        "record_max_bytes",
        "BYTES",
        "67108864",
        "Rotate the recording once the file reaches this size, 4096..=1099511627776 (36 bytes \
         per request: 64 MiB holds ~1.9 million requests); the disk used is at most \
         (record_files + 1) x this.",
        |c, t| set!(c.record_max_bytes, parse::int_in(t, 4096, 1 << 40)?),
        |c| c.record_max_bytes.to_string(),
    ),
    Setting::new(
        Server,
        "record_files",
        "N",
        "4",
        "Rotated recording files kept (FILE.1 newest .. FILE.N oldest), 1..=1000.",
        |c, t| set!(c.record_files, parse::int_in(t, 1, 1000)? as u32),
        |c| c.record_files.to_string(),
    ),
    Setting::new(
        Server,
        "record_buffer",
        "RECORDS",
        "65536",
        "Records each core buffers for the recording writer, 16..=16777216 (36 bytes each); a \
         core whose buffer is full drops further records (counted) until the writer takes it \
         (every 50 ms).",
        |c, t| set!(c.record_buffer, parse::int_in(t, 16, 1 << 24)? as usize),
        |c| c.record_buffer.to_string(),
    ),
    // ----- limits ---------------------------------------------------------
    Setting::new(
        Limits,
        "max_connections_per_core",
        "N",
        "4096",
        "Authenticated connections one core serves, 1..=1000000 (a connection takes a slot once \
         its TLS handshake has finished); beyond it the connection is closed at once (counted). \
         Bounds per-core memory (each may hold both buffers).",
        |c, t| {
            set!(
                c.limits.max_connections_per_core,
                count(t, 1, u64::from(MAX_CONNECTIONS_PER_CORE_LIMIT))?
            )
        },
        |c| c.limits.max_connections_per_core.to_string(),
    ),
    Setting::new(
        Limits,
        "max_in_flight_per_connection",
        "N",
        "1024",
        "Outstanding requests per connection (read and not yet written out), 1..=65536 (as the \
         reference); reading continues while a send is blocked, and a connection at the limit \
         is not read until answers go out.",
        |c, t| {
            set!(
                c.limits.max_in_flight_per_connection,
                count(t, 1, u64::from(MAX_IN_FLIGHT_PER_CONNECTION_LIMIT))?
            )
        },
        |c| c.limits.max_in_flight_per_connection.to_string(),
    ),
    Setting::new(
        Limits,
        "max_handshakes_per_core",
        "N",
        "256",
        "Connections one core holds in the TLS handshake, 1..=1000000; at the limit the core \
         stops accepting (new connections wait in the listen backlog) and handshakes never take \
         max_connections_per_core slots. 256: a core finishes a handshake in about a \
         millisecond, so a full set clears in well under handshake_timeout during a reconnect \
         storm, while half-open or slow peers can pin only 256 handshake states.",
        |c, t| {
            set!(
                c.limits.max_handshakes_per_core,
                count(t, 1, u64::from(MAX_CONNECTIONS_PER_CORE_LIMIT))?
            )
        },
        |c| c.limits.max_handshakes_per_core.to_string(),
    ),
    Setting::new(
        Limits,
        "max_handshakes_per_source",
        "N",
        "64",
        "Of those, how many one source IP may hold per core, 1..=1000000; further ones are \
         closed at accept (counted, logged at most every 10 s). 64: a quarter of the core's \
         default, so one peer cannot take all handshake slots.",
        |c, t| {
            set!(
                c.limits.max_handshakes_per_source,
                count(t, 1, u64::from(MAX_CONNECTIONS_PER_CORE_LIMIT))?
            )
        },
        |c| c.limits.max_handshakes_per_source.to_string(),
    ),
    Setting::new(
        Limits,
        "idle_timeout",
        "DURATION",
        "30s",
        "As the reference: close a connection with no complete request for this long (> 0). \
         Shorter frees idle connections sooner but makes edges reconnect.",
        |c, t| set!(c.limits.idle_timeout, parse::positive_duration(t)?),
        |c| yaml_quote(&format_duration(c.limits.idle_timeout)),
    ),
    Setting::new(
        Limits,
        "handshake_timeout",
        "DURATION",
        "10s",
        "A TLS handshake not finished by then is dropped and counted (> 0).",
        |c, t| set!(c.limits.handshake_timeout, parse::positive_duration(t)?),
        |c| yaml_quote(&format_duration(c.limits.handshake_timeout)),
    ),
    Setting::new(
        Limits,
        "drain_timeout",
        "DURATION",
        "10s",
        "On SIGTERM/SIGINT: stop accepting, answer what was read, exit within this (> 0).",
        |c, t| set!(c.limits.drain_timeout, parse::positive_duration(t)?),
        |c| yaml_quote(&format_duration(c.limits.drain_timeout)),
    ),
    Setting::new(
        Limits,
        "read_buffer_bytes",
        "BYTES",
        "65544",
        "Largest read buffer per connection (starts at 16 KiB), 65543..=67108864: must hold \
         the largest message (8-byte header + 65535-byte body).",
        |c, t| set!(c.limits.read_buffer_bytes, buffer(t)?),
        |c| c.limits.read_buffer_bytes.to_string(),
    ),
    Setting::new(
        Limits,
        "write_buffer_bytes",
        "BYTES",
        "65544",
        "Per connection, 65543..=67108864: answers ready together are coalesced up to this, \
         then flushed in one TLS write. Larger batches more at the cost of memory.",
        |c, t| set!(c.limits.write_buffer_bytes, buffer(t)?),
        |c| c.limits.write_buffer_bytes.to_string(),
    ),
    // ----- PKCS#11 --------------------------------------------------------
    Setting::new(
        Pkcs11,
        "pkcs11_dispatch",
        "auto|inline|offload",
        "auto",
        "Where PKCS#11 calls run unless the URI says x-dispatch: inline (on the reactor; \
         fastest for local tokens, a slow HSM stalls the core), offload (worker threads) or auto \
         (inline for SoftHSM, offload for the rest).",
        |c, t| set!(c.pkcs11.dispatch, parse::one_of(t, PKCS11_DISPATCH)?),
        |c| parse::word_of(c.pkcs11.dispatch, PKCS11_DISPATCH).to_owned(),
    ),
    Setting::new(
        Pkcs11,
        "pkcs11_sessions_per_core",
        "N",
        "2",
        "Sessions (worker threads) per core per offload token unless the URI says \
         x-sessions-per-core or max-sessions, 1..=256. Each costs a thread and an HSM session; \
         raise it for high-latency HSMs.",
        |c, t| set!(c.pkcs11.sessions_per_core, parse::int_in(t, 1, 256)? as u32),
        |c| c.pkcs11.sessions_per_core.to_string(),
    ),
    Setting::new(
        Pkcs11,
        "pkcs11_op_timeout",
        "DURATION",
        "",
        "Longest one offloaded operation may take before it is answered CRYPTO and its session \
         quarantined, unless the URI says x-op-timeout; empty = sign_timeout if set, else 2s.",
        |c, t| set!(c.pkcs11.op_timeout, parse::optional_duration(t)?),
        |c| yaml_quote(&c.pkcs11.op_timeout.map_or(String::new(), format_duration)),
    ),
    // ----- cloud KMS ------------------------------------------------------
    Setting::new(
        Kms,
        "kms_azure_endpoint",
        "URL",
        "",
        "Replaces https://<vault host> for every Azure key (private endpoint, stand-in); empty \
         = the key URI's host.",
        |c, t| set!(c.kms.azure_endpoint, parse::optional_url(t)?),
        |c| show_opt_text(&c.kms.azure_endpoint),
    )
    .aliases(&[alias("KEYCORE_AZURE_ENDPOINT")]),
    Setting::new(
        Kms,
        "kms_azure_authority",
        "URL",
        "",
        "Azure login host; the token URL is <authority>/<tenant>/oauth2/v2.0/token. Empty = the \
         cloud's (login.microsoftonline.com, ...).",
        |c, t| set!(c.kms.azure_authority, parse::optional_url(t)?),
        |c| show_opt_text(&c.kms.azure_authority),
    )
    .aliases(&[
        alias("KEYCORE_AZURE_AUTHORITY"),
        alias("AZURE_AUTHORITY_HOST"),
    ]),
    Setting::new(
        Kms,
        "kms_azure_imds_endpoint",
        "URL",
        "http://169.254.169.254/metadata/identity/oauth2/token",
        "Azure managed-identity token URL.",
        |c, t| set!(c.kms.azure_imds_endpoint, parse::url(t)?),
        |c| yaml_quote(&c.kms.azure_imds_endpoint),
    )
    .aliases(&[alias("KEYCORE_AZURE_IMDS_ENDPOINT")]),
    Setting::new(
        Kms,
        "kms_azure_max_rps",
        "N",
        "200",
        "Azure requests started per second per vault (token bucket; none for Managed HSM \
         pools), 1..=1000000. Key Vault allows 2,000 per 10 s per vault for HSM RSA-2048 and EC \
         keys.",
        |c, t| set!(c.kms.azure_max_rps, rate(t)?),
        |c| c.kms.azure_max_rps.to_string(),
    )
    .aliases(&[alias("KEYCORE_AZURE_MAX_RPS")]),
    Setting::new(
        Kms,
        "kms_azure_max_in_flight",
        "N",
        "64",
        "Azure requests in flight per vault or pool, 1..=65536; more wait for a slot.",
        |c, t| set!(c.kms.azure_max_in_flight, in_flight(t)?),
        |c| c.kms.azure_max_in_flight.to_string(),
    )
    .aliases(&[alias("KEYCORE_AZURE_MAX_IN_FLIGHT")]),
    Setting::new(
        Kms,
        "kms_gcp_endpoint",
        "URL",
        "https://cloudkms.googleapis.com",
        "Google Cloud KMS endpoint (e.g. a Private Service Connect name, a stand-in).",
        |c, t| set!(c.kms.gcp_endpoint, parse::url(t)?),
        |c| yaml_quote(&c.kms.gcp_endpoint),
    )
    .aliases(&[alias("KEYCORE_GCP_KMS_ENDPOINT")]),
    Setting::new(
        Kms,
        "kms_gcp_token_endpoint",
        "URL",
        "",
        "Google OAuth token URL; empty = the key file's token_uri.",
        |c, t| set!(c.kms.gcp_token_endpoint, parse::optional_url(t)?),
        |c| show_opt_text(&c.kms.gcp_token_endpoint),
    )
    .aliases(&[alias("KEYCORE_GCP_TOKEN_ENDPOINT")]),
    Setting::new(
        Kms,
        "kms_gcp_metadata_endpoint",
        "URL",
        "http://metadata.google.internal",
        "Google metadata server.",
        |c, t| set!(c.kms.gcp_metadata_endpoint, parse::url(t)?),
        |c| yaml_quote(&c.kms.gcp_metadata_endpoint),
    )
    .aliases(&[alias("KEYCORE_GCP_METADATA_ENDPOINT")]),
    Setting::new(
        Kms,
        "kms_gcp_max_rps",
        "N",
        "1000",
        "Google requests started per second, 1..=1000000 (the default quota is 60,000 \
         cryptographic requests per minute per project and region).",
        |c, t| set!(c.kms.gcp_max_rps, rate(t)?),
        |c| c.kms.gcp_max_rps.to_string(),
    )
    .aliases(&[alias("KEYCORE_GCP_MAX_RPS")]),
    Setting::new(
        Kms,
        "kms_gcp_max_in_flight",
        "N",
        "64",
        "Google requests in flight, 1..=65536.",
        |c, t| set!(c.kms.gcp_max_in_flight, in_flight(t)?),
        |c| c.kms.gcp_max_in_flight.to_string(),
    )
    .aliases(&[alias("KEYCORE_GCP_MAX_IN_FLIGHT")]),
    Setting::new(
        Kms,
        "kms_aws_endpoint",
        "URL",
        "",
        "AWS KMS endpoint (VPC endpoint, FIPS endpoint, stand-in); empty = \
         https://kms.<region>.amazonaws.com.",
        |c, t| set!(c.kms.aws_endpoint, parse::optional_url(t)?),
        |c| show_opt_text(&c.kms.aws_endpoint),
    )
    .aliases(&[alias("KEYCORE_AWS_KMS_ENDPOINT")]),
    Setting::new(
        Kms,
        "kms_aws_imds_endpoint",
        "URL",
        "http://169.254.169.254",
        "AWS instance metadata (IMDSv2).",
        |c, t| set!(c.kms.aws_imds_endpoint, parse::url(t)?),
        |c| yaml_quote(&c.kms.aws_imds_endpoint),
    )
    .aliases(&[alias("KEYCORE_AWS_IMDS_ENDPOINT")]),
    Setting::new(
        Kms,
        "kms_aws_sts_endpoint",
        "URL",
        "",
        "AWS STS endpoint for web-identity credentials; empty = regional from AWS_REGION, else \
         https://sts.amazonaws.com.",
        |c, t| set!(c.kms.aws_sts_endpoint, parse::optional_url(t)?),
        |c| show_opt_text(&c.kms.aws_sts_endpoint),
    )
    .aliases(&[alias("KEYCORE_AWS_STS_ENDPOINT")]),
    Setting::new(
        Kms,
        "kms_aws_max_rps",
        "N",
        "1000",
        "AWS requests started per second, 1..=1000000. The RSA and ECC cryptographic-request \
         quotas are 1,000/s each per account and region, shared by every Sign there; one \
         limiter for both never exceeds either.",
        |c, t| set!(c.kms.aws_max_rps, rate(t)?),
        |c| c.kms.aws_max_rps.to_string(),
    )
    .aliases(&[alias("KEYCORE_AWS_MAX_RPS")]),
    Setting::new(
        Kms,
        "kms_aws_max_in_flight",
        "N",
        "64",
        "AWS requests in flight, 1..=65536.",
        |c, t| set!(c.kms.aws_max_in_flight, in_flight(t)?),
        |c| c.kms.aws_max_in_flight.to_string(),
    )
    .aliases(&[alias("KEYCORE_AWS_MAX_IN_FLIGHT")]),
    Setting::new(
        Kms,
        "kms_ca_file",
        "FILE",
        "",
        "PEM bundle trusted besides the system roots (TLS-inspecting proxy, stand-ins); empty = \
         none.",
        |c, t| set!(c.kms.ca_file, opt_path(t)),
        |c| show_opt_path(&c.kms.ca_file),
    )
    .aliases(&[alias("KEYCORE_KMS_CA_FILE")]),
    Setting::new(
        Kms,
        "kms_op_timeout",
        "DURATION",
        "5s",
        "One cloud operation, retries included (> 0); then answered CRYPTO. The alias holds \
         milliseconds.",
        |c, t| set!(c.kms.op_timeout, parse::positive_duration(t)?),
        |c| yaml_quote(&format_duration(c.kms.op_timeout)),
    )
    .aliases(&[alias_ms("KEYCORE_KMS_OP_TIMEOUT_MS")]),
    Setting::new(
        Kms,
        "kms_attempt_timeout",
        "DURATION",
        "2s",
        "One HTTP exchange, connect included (> 0). The alias holds milliseconds.",
        |c, t| set!(c.kms.attempt_timeout, parse::positive_duration(t)?),
        |c| yaml_quote(&format_duration(c.kms.attempt_timeout)),
    )
    .aliases(&[alias_ms("KEYCORE_KMS_ATTEMPT_TIMEOUT_MS")]),
    Setting::new(
        Kms,
        "kms_startup_timeout",
        "DURATION",
        "60s",
        "Fetching every cloud key's public half at start-up (> 0).",
        |c, t| set!(c.kms.startup_timeout, parse::positive_duration(t)?),
        |c| yaml_quote(&format_duration(c.kms.startup_timeout)),
    ),
    Setting::new(
        Kms,
        "kms_verify",
        "BOOL",
        "true",
        "Check every signature a service returns against the key's public half and answer \
         CRYPTO instead of passing a wrong one on.",
        |c, t| set!(c.kms.verify, parse::boolean(t)?),
        |c| c.kms.verify.to_string(),
    )
    .aliases(&[alias("KEYCORE_KMS_VERIFY")])
    .switch(),
    // ----- security (issue 18) -------------------------------------------
    Setting::new(
        Security,
        "client_identities",
        "LIST",
        "",
        "File only. Allow-list of client certificates, each entry named: `- name: edge-a` with \
         `names:` (patterns, `*` = any text, matched against the subject CN and DNS/URI SANs) \
         and/or `spki_sha256:` (hex SHA-256 of the DER public key; several at once for \
         rotation), optional `max_rps:`/`max_connections:`. Empty: every certificate chaining \
         to cloudflare_ca_cert is accepted under its CN. Set: any other certificate is refused \
         in the TLS handshake (counted by reason). At most 64.",
        |_, _| Ok(()),
        |c| crate::security::identities_yaml(&c.security.client_identities),
    )
    .input(Input::Identities),
    Setting::new(
        Security,
        "key_policies",
        "LIST",
        "",
        "File only. Per key or key store: `- ski: HEX` and/or `store: PREFIX` (key file path or \
         URI prefix; neither = every key), `deny_ops: [rsa_decrypt, rsa_pkcs1, rsa_pss, ecdsa, \
         ed25519, md5sha1, sha1, sha224, sha256, sha384, sha512]`, `clients: [identity names]`. \
         First match per key wins; a refused request is answered 0x08 (internal) and counted \
         per key and reason. One bit test per request.",
        |_, _| Ok(()),
        |c| crate::security::policies_yaml(&c.security.key_policies),
    )
    .input(Input::KeyPolicies),
    Setting::new(
        Security,
        "client_max_rps",
        "N",
        "0",
        "Key operations per second per client identity (an identity's max_rps overrides it), \
         0..=100000000; 0 = no limit. Each core enforces rate/cores with a burst of the same \
         (SECURITY.md: how the split stays fair); beyond it answered 0x08 and counted.",
        |c, t| set!(c.security.client_max_rps, parse::int_in(t, 0, crate::MAX_RPS)? as u32),
        |c| c.security.client_max_rps.to_string(),
    ),
    Setting::new(
        Security,
        "client_max_connections",
        "N",
        "0",
        "Concurrent connections per client identity across all cores (an identity's \
         max_connections overrides it), 0..=100000000; 0 = no limit. Beyond it a connection is \
         closed right after its handshake, before any request is read (counted).",
        |c, t| {
            set!(
                c.security.client_max_connections,
                parse::int_in(t, 0, crate::MAX_CONNECTIONS)? as u32
            )
        },
        |c| c.security.client_max_connections.to_string(),
    ),
    Setting::new(
        Security,
        "audit_file",
        "FILE",
        "",
        "Append-only JSON-lines audit trail: per key and client identity, counts of operations \
         by opcode and result every audit_interval, plus key loads, policy refusals and HSM \
         logins as single records; never payloads, digests or PINs. Empty = no audit trail.",
        |c, t| set!(c.security.audit_file, opt_path(t)),
        |c| show_opt_path(&c.security.audit_file),
    ),
    Setting::new(
        Security,
        "audit_interval",
        "DURATION",
        "10s",
        "How often each core hands its counts to the audit writer, which appends them (> 0). \
         Shorter: fresher file and metrics, more lines.",
        |c, t| set!(c.security.audit_interval, parse::positive_duration(t)?),
        |c| yaml_quote(&format_duration(c.security.audit_interval)),
    ),
    Setting::new(
        Security,
        "audit_max_bytes",
        "BYTES",
        "67108864",
        "Rotate the audit file once it reaches this size, 4096..=1099511627776; the disk used \
         is at most (audit_keep + 1) x this.",
        |c, t| set!(c.security.audit_max_bytes, parse::int_in(t, 4096, 1 << 40)?),
        |c| c.security.audit_max_bytes.to_string(),
    ),
    Setting::new(
        Security,
        "audit_keep",
        "N",
        "5",
        "Rotated audit files kept (FILE.1 newest .. FILE.N oldest), 1..=1000.",
        |c, t| set!(c.security.audit_keep, parse::int_in(t, 1, 1000)? as u32),
        |c| c.security.audit_keep.to_string(),
    ),
    Setting::new(
        Security,
        "audit_fail_closed",
        "BOOL",
        "false",
        "false: a lost audit file (directory removed, disk full) is counted and logged and \
         signing goes on. true: while the audit file cannot be written, key operations are \
         refused (0x08), trading availability for a complete trail.",
        |c, t| set!(c.security.audit_fail_closed, parse::boolean(t)?),
        |c| c.security.audit_fail_closed.to_string(),
    )
    .switch(),
    // ----- enrollment -----------------------------------------------------
    Setting::new(
        Enroll,
        "enroll_api_token",
        "TOKEN",
        "",
        "API token for enrollment, sent as Authorization: Bearer (preferred over \
         origin_ca_api_key). A secret: -o prints it only with --show-secrets; never logged.",
        |c, t| set!(c.enroll.api_token, SecretString::new(t.trim())),
        |c| yaml_quote(c.enroll.api_token.expose()),
    )
    .secret(Secret::Whole),
    Setting::new(
        Enroll,
        "enroll_endpoint",
        "URL",
        "https://api.cloudflare.com/client/v4/certificates/",
        "The certificates API enrollment POSTs to (https only: the request carries the \
         credential); change it for a stand-in or a proxy.",
        |c, t| set!(c.enroll.endpoint, parse::https_url(t)?),
        |c| yaml_quote(&c.enroll.endpoint),
    ),
    Setting::new(
        Enroll,
        "enroll_ca_file",
        "FILE",
        "",
        "PEM bundle trusted for enroll_endpoint besides the system roots (TLS-inspecting proxy, \
         stand-ins); empty = none.",
        |c, t| set!(c.enroll.ca_file, opt_path(t)),
        |c| show_opt_path(&c.enroll.ca_file),
    ),
    Setting::new(
        Enroll,
        "enroll_timeout",
        "DURATION",
        "30s",
        "Longest the whole enrollment exchange may take (connect, TLS, request, answer), > 0.",
        |c, t| set!(c.enroll.timeout, parse::positive_duration(t)?),
        |c| yaml_quote(&format_duration(c.enroll.timeout)),
    ),
];
