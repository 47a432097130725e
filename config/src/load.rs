//! Loading: find and read the config file, layer the sources (flag, then
//! environment, then file, then default) for every key of the table, and
//! remember where each value came from.
//!
//! Owns: [`load`], [`resolve`], [`from_yaml_str`], the file layer (keys
//! matched case-insensitively, unknown keys warned about with their line, a
//! key set twice refused), the environment layer (`KEYLESS_<KEY>`, then the
//! key's aliases; an empty variable counts as unset, as in viper), and the
//! two keys whose shape is not a scalar (`cores`, `private_key_stores`).
//! Must not: know any key's type (the table's setters do).

use crate::table::{Input, Setting, SETTINGS};
use crate::yaml::{self, Kind, Node};
use crate::{
    env_var_name, flag_name, parse, Config, ConfigError, Cores, CpuListError, KeyStore, Loaded,
    Origin, ServeArgs, ValueError, DEFAULT_CONFIG_PATHS, ENV_PRIVATE_KEY_DIRS,
    ENV_PRIVATE_KEY_FILES, MAX_CONFIG_FILE_BYTES, MAX_CPU_ID,
};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Load the configuration for `keycore serve`: the config file (see
/// `-c`), then `KEYLESS_*` (and alias) variables from the process
/// environment, then `args`.
pub fn load(args: &ServeArgs) -> Result<Loaded, ConfigError> {
    let path: Option<PathBuf> = match &args.config_file {
        Some(p) => Some(p.clone()),
        None => DEFAULT_CONFIG_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file()),
    };
    let text = match &path {
        Some(p) => Some(read_config_file(p)?),
        None => None,
    };
    let env = |name: &str| std::env::var(name).ok();
    let file = match (&text, &path) {
        (Some(t), Some(p)) => Some((t.as_str(), p.as_path())),
        _ => None,
    };
    let mut loaded = resolve(file, &env, args)?;
    loaded.warnings.extend(unknown_env_warnings(
        std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()),
    ));
    Ok(loaded)
}

/// Parse a config file's text as if it were the only source besides `env`
/// (no flags). `origin` is the name used in messages.
pub fn from_yaml_str(
    text: &str,
    origin: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    resolve(Some((text, origin)), env, &ServeArgs::default())
}

/// Layer all sources: `file` (text and the name used in messages), `env`
/// (variable lookup), `args` (flags). Whether enrollment must run (the
/// registration keys set and no certificate yet) is decided by the caller
/// that can act on it (`keycore serve`, `keycore enroll`), not here.
pub fn resolve(
    file: Option<(&str, &Path)>,
    env: &dyn Fn(&str) -> Option<String>,
    args: &ServeArgs,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let root = match file {
        Some((text, path)) => yaml::parse(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            line: e.line,
            column: e.column,
            message: e.message,
        })?,
        None => None,
    };
    let file_layer = match (file, &root) {
        (Some((_, path)), Some(root)) => Some(FileLayer::new(path, root, &mut warnings)?),
        _ => None,
    };
    let layers = Layers {
        file: file_layer,
        env,
        args,
    };
    let (config, origins) = layers.build(&mut warnings)?;
    Ok(Loaded {
        config,
        warnings,
        source: file.map(|(_, p)| p.to_owned()),
        origins,
    })
}

/// The file's text, wiped when dropped (it may hold PINs in `pkcs11:` URIs
/// and API tokens). The parsed values are not: see SECURITY.md.
fn read_config_file(path: &Path) -> Result<Zeroizing<String>, ConfigError> {
    let read_err = |source: io::Error| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let f = fs::File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ConfigError::NotFound {
                path: path.to_owned(),
            }
        } else {
            read_err(e)
        }
    })?;
    // Room for the whole file up front (as stated, plus one byte to see the
    // end), so reading it does not reallocate and leave unwiped copies.
    let stated = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Zeroizing::new(Vec::with_capacity(
        stated.min(MAX_CONFIG_FILE_BYTES) as usize + 1,
    ));
    f.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_CONFIG_FILE_BYTES} bytes; is this the right file?"),
        )));
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Zeroizing::new(text.to_owned())),
        Err(e) => Err(read_err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.valid_up_to()),
        ))),
    }
}

/// Warnings for `KEYLESS_*` variables that match no key (a typo would
/// otherwise be silently ignored).
pub(crate) fn unknown_env_warnings(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut known: Vec<String> = SETTINGS.iter().map(|s| env_var_name(s.name)).collect();
    known.push(ENV_PRIVATE_KEY_DIRS.to_owned());
    known.push(ENV_PRIVATE_KEY_FILES.to_owned());
    let mut out: Vec<String> = names
        .filter(|n| n.starts_with("KEYLESS_") && !known.contains(n))
        .filter(|n| n != "KEYLESS_PRIVATE_KEY_STORES") // warned about in build
        .map(|n| format!("environment variable {n} matches no config key; ignored"))
        .collect();
    out.sort();
    out
}

/// The top-level keys of a config file, lower-cased (viper, which the
/// reference uses, matches keys case-insensitively).
struct FileLayer<'a> {
    path: &'a Path,
    keys: HashMap<String, &'a Node>,
    /// The line of each key (a list value starts on a later line).
    key_lines: HashMap<String, usize>,
}

impl<'a> FileLayer<'a> {
    fn new(
        path: &'a Path,
        root: &'a Node,
        warnings: &mut Vec<String>,
    ) -> Result<Self, ConfigError> {
        let Kind::Map(pairs) = &root.kind else {
            return Err(ConfigError::Syntax {
                path: path.to_owned(),
                line: root.line,
                column: 1,
                message: format!(
                    "expected a mapping of `key: value` lines at the top level, found {}",
                    root.kind.describe()
                ),
            });
        };
        let known = |k: &str| SETTINGS.iter().any(|s| s.name == k);
        let mut keys: HashMap<String, &'a Node> = HashMap::new();
        let mut key_lines: HashMap<String, usize> = HashMap::new();
        for (key, line, value) in yaml::map_entries(pairs) {
            let Some(key) = key else {
                warnings.push(format!(
                    "{}:{line}: a key that is not text; ignored",
                    path.display()
                ));
                continue;
            };
            let lower = key.to_ascii_lowercase();
            if !known(&lower) {
                let underscored = lower.replace('-', "_");
                let hint = if known(&underscored) {
                    format!(" (did you mean \"{underscored}\"?)")
                } else {
                    String::new()
                };
                warnings.push(format!(
                    "{}:{line}: unknown key \"{key}\" ignored{hint}",
                    path.display()
                ));
                continue;
            }
            if let Some(first) = key_lines.get(&lower) {
                return Err(ConfigError::Value {
                    origin: Origin::File {
                        path: path.to_owned(),
                        line,
                    },
                    key: lower,
                    message: format!("set twice (first on line {first})"),
                });
            }
            key_lines.insert(lower.clone(), line);
            keys.insert(lower, value);
        }
        Ok(FileLayer {
            path,
            keys,
            key_lines,
        })
    }
}

/// A raw value before parsing: text from a flag or variable, or a node of
/// the file's tree.
enum Raw<'a> {
    Text(String),
    Node(&'a Node),
}

fn value_error(origin: Origin, key: &str, message: impl ToString) -> ConfigError {
    ConfigError::Value {
        origin,
        key: key.to_owned(),
        message: message.to_string(),
    }
}

struct Layers<'a> {
    file: Option<FileLayer<'a>>,
    env: &'a dyn Fn(&str) -> Option<String>,
    args: &'a ServeArgs,
}

impl<'a> Layers<'a> {
    /// The highest-precedence value for `s`: flag, non-empty `KEYLESS_*`
    /// variable, non-empty alias variable (an empty one counts as unset, as
    /// in viper), non-null file value. `None` means the default applies.
    fn find(&self, s: &Setting) -> Option<(Raw<'a>, Origin)> {
        if let Some(v) = self.args.flag_for(s.name) {
            return Some((
                Raw::Text(v.to_owned()),
                Origin::Flag {
                    flag: flag_name(s.name),
                },
            ));
        }
        let var = env_var_name(s.name);
        if let Some(v) = (self.env)(&var).filter(|v| !v.is_empty()) {
            return Some((Raw::Text(v), Origin::Env { var }));
        }
        for a in s.aliases {
            if let Some(v) = (self.env)(a.name).filter(|v| !v.is_empty()) {
                // `KEYCORE_KMS_OP_TIMEOUT_MS=1500` meant 1500 ms; anything
                // else goes to the parser as written (and gets its message).
                let v = if a.millis && v.trim().bytes().all(|b| b.is_ascii_digit()) {
                    format!("{}ms", v.trim())
                } else {
                    v
                };
                return Some((
                    Raw::Text(v),
                    Origin::Env {
                        var: a.name.to_owned(),
                    },
                ));
            }
        }
        let file = self.file.as_ref()?;
        let node = *file.keys.get(s.name)?;
        if node.kind == Kind::Null {
            return None;
        }
        Some((
            Raw::Node(node),
            Origin::File {
                path: file.path.to_owned(),
                line: node.line,
            },
        ))
    }

    fn build(
        &self,
        warnings: &mut Vec<String>,
    ) -> Result<(Config, BTreeMap<&'static str, Origin>), ConfigError> {
        let mut c = Config::default();
        let mut origins = BTreeMap::new();
        for s in SETTINGS {
            match s.input {
                Input::Scalar(set) => {
                    let Some((raw, origin)) = self.find(s) else {
                        continue;
                    };
                    let text = match &raw {
                        Raw::Text(t) => t.as_str(),
                        Raw::Node(Node {
                            kind: Kind::Scalar(t),
                            ..
                        }) => t.as_str(),
                        Raw::Node(n) => {
                            return Err(value_error(
                                origin,
                                s.name,
                                format!("expected a single value, found {}", n.kind.describe()),
                            ))
                        }
                    };
                    set(&mut c, text).map_err(|e| value_error(origin.clone(), s.name, e))?;
                    origins.insert(s.name, origin);
                }
                Input::Cores => {
                    if let Some((raw, origin)) = self.find(s) {
                        c.cores = self.cores(raw, &origin, warnings)?;
                        origins.insert(s.name, origin);
                    }
                }
                Input::KeyStores => {
                    let (stores, origin) = self.key_stores(warnings)?;
                    c.private_key_stores = stores;
                    if let Some(o) = origin {
                        origins.insert(s.name, o);
                    }
                }
                Input::Identities | Input::KeyPolicies => {
                    let Some((node, origin)) = self.file_list(s, warnings) else {
                        continue;
                    };
                    let file = self.file.as_ref().expect("file_list found a file");
                    let at = |line: usize| Origin::File {
                        path: file.path.to_owned(),
                        line,
                    };
                    if matches!(s.input, Input::Identities) {
                        c.security.client_identities =
                            crate::security::parse_identities(node, &at, warnings)?;
                    } else {
                        // Table order puts client_identities first, so the
                        // names a policy's `clients:` refers to are known.
                        c.security.key_policies = crate::security::parse_policies(
                            node,
                            &at,
                            &c.security.client_identities,
                            warnings,
                        )?;
                    }
                    origins.insert(s.name, origin);
                }
            }
        }
        Ok((c, origins))
    }

    /// A file-only list key's node and origin (`None`: not in the file).
    /// Its `KEYLESS_*` variable cannot carry a list: warned about.
    fn file_list(&self, s: &Setting, warnings: &mut Vec<String>) -> Option<(&'a Node, Origin)> {
        let var = env_var_name(s.name);
        if (self.env)(&var).is_some_and(|v| !v.is_empty()) {
            warnings.push(format!(
                "environment variable {var} is ignored: {} is a list of entries, set only in \
                 the config file",
                s.name
            ));
        }
        let file = self.file.as_ref()?;
        let node = *file.keys.get(s.name)?;
        if node.kind == Kind::Null {
            return None;
        }
        let line = file.key_lines.get(s.name).copied().unwrap_or(node.line);
        Some((
            node,
            Origin::File {
                path: file.path.to_owned(),
                line,
            },
        ))
    }

    /// `cores`: `all`, a count, a comma/range string, or a YAML list of ids.
    fn cores(
        &self,
        raw: Raw<'_>,
        origin: &Origin,
        warnings: &mut Vec<String>,
    ) -> Result<Cores, ConfigError> {
        const KEY: &str = "cores";
        let cores = match &raw {
            Raw::Text(t) => parse_cores_text(t),
            Raw::Node(Node {
                kind: Kind::Scalar(t),
                ..
            }) => parse_cores_text(t),
            Raw::Node(Node {
                kind: Kind::Seq(items),
                ..
            }) => {
                let mut ids: Vec<&str> = Vec::with_capacity(items.len());
                for item in items {
                    match &item.kind {
                        Kind::Scalar(s) if !s.contains(',') => ids.push(s),
                        other => {
                            return Err(value_error(
                                origin.clone(),
                                KEY,
                                format!(
                                    "list items must be CPU ids or ranges, found {} on line {}",
                                    other.describe(),
                                    item.line
                                ),
                            ))
                        }
                    }
                }
                parse::cpu_list(&ids, MAX_CPU_ID).map(Cores::List)
            }
            Raw::Node(n) => {
                return Err(value_error(
                    origin.clone(),
                    KEY,
                    format!(
                        "expected \"all\", a count or a list of CPU ids, found {}",
                        n.kind.describe()
                    ),
                ))
            }
        }
        .map_err(|m| value_error(origin.clone(), KEY, m))?;

        // Check against the CPUs this process may run on, when known.
        let available: Vec<usize> = core_affinity::get_core_ids()
            .map(|ids| ids.into_iter().map(|c| c.id).collect())
            .unwrap_or_default();
        match &cores {
            Cores::List(ids) if !available.is_empty() => {
                if let Some(bad) = ids.iter().find(|id| !available.contains(id)) {
                    let avail: Vec<String> = available.iter().map(usize::to_string).collect();
                    return Err(value_error(
                        origin.clone(),
                        KEY,
                        format!(
                            "CPU {bad} is not available to this process (available: {})",
                            avail.join(",")
                        ),
                    ));
                }
            }
            Cores::Count(n) if !available.is_empty() && *n > available.len() => {
                warnings.push(format!(
                    "{origin}: key \"cores\": {n} reactors on {} available CPUs; some CPUs will \
                     run more than one",
                    available.len()
                ));
            }
            _ => {}
        }
        Ok(cores)
    }

    /// `private_key_stores`, or its replacement by the dirs/files flags
    /// (both flags together form the list: dirs first) or, failing those, by
    /// the `KEYLESS_PRIVATE_KEY_DIRS`/`_FILES` variables. Also returns where
    /// the list came from (`None`: default, empty).
    fn key_stores(
        &self,
        warnings: &mut Vec<String>,
    ) -> Result<(Vec<KeyStore>, Option<Origin>), ConfigError> {
        let from_lists = |dirs: Option<&str>, files: Option<&str>| -> Vec<KeyStore> {
            let mut out: Vec<KeyStore> = Vec::new();
            for d in dirs.map(parse::comma_list).unwrap_or_default() {
                out.push(KeyStore::Dir(PathBuf::from(d)));
            }
            for f in files.map(parse::comma_list).unwrap_or_default() {
                out.push(KeyStore::File(PathBuf::from(f)));
            }
            out
        };
        let (fd, ff) = (
            self.args.private_key_dirs.as_deref(),
            self.args.private_key_files.as_deref(),
        );
        if fd.is_some() || ff.is_some() {
            let flag = if fd.is_some() {
                "--private-key-dirs"
            } else {
                "--private-key-files"
            };
            return Ok((
                from_lists(fd, ff),
                Some(Origin::Flag {
                    flag: flag.to_owned(),
                }),
            ));
        }
        let env = |name: &str| (self.env)(name).filter(|v| !v.is_empty());
        if env(&env_var_name("private_key_stores")).is_some() {
            warnings.push(format!(
                "environment variable {} is ignored (a list of entries cannot be written as one \
                 variable); use {ENV_PRIVATE_KEY_DIRS} and {ENV_PRIVATE_KEY_FILES}",
                env_var_name("private_key_stores")
            ));
        }
        let (ed, ef) = (env(ENV_PRIVATE_KEY_DIRS), env(ENV_PRIVATE_KEY_FILES));
        if ed.is_some() || ef.is_some() {
            let var = if ed.is_some() {
                ENV_PRIVATE_KEY_DIRS
            } else {
                ENV_PRIVATE_KEY_FILES
            };
            return Ok((
                from_lists(ed.as_deref(), ef.as_deref()),
                Some(Origin::Env {
                    var: var.to_owned(),
                }),
            ));
        }
        const KEY: &str = "private_key_stores";
        let Some(file) = &self.file else {
            return Ok((Vec::new(), None));
        };
        let Some(node) = file.keys.get(KEY).copied() else {
            return Ok((Vec::new(), None));
        };
        let at = |line: usize| Origin::File {
            path: file.path.to_owned(),
            line,
        };
        let items = match &node.kind {
            Kind::Null => return Ok((Vec::new(), None)),
            Kind::Seq(items) => items,
            other => {
                return Err(value_error(
                    at(node.line),
                    KEY,
                    format!(
                        "expected a list of entries (`- dir: ...`, `- file: ...`, `- uri: ...`), \
                         found {}",
                        other.describe()
                    ),
                ))
            }
        };
        let mut stores = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let entry_key = format!("{KEY}[{i}]");
            let Kind::Map(pairs) = &item.kind else {
                return Err(value_error(
                    at(item.line),
                    &entry_key,
                    format!(
                        "expected an entry with one of dir:, file:, uri:, found {}",
                        item.kind.describe()
                    ),
                ));
            };
            let mut found: Vec<(&'static str, usize, &Node)> = Vec::new();
            for (k, line, v) in yaml::map_entries(pairs) {
                let lower = k.map(str::to_ascii_lowercase);
                match lower.as_deref() {
                    Some("dir") => found.push(("dir", line, v)),
                    Some("file") => found.push(("file", line, v)),
                    Some("uri") => found.push(("uri", line, v)),
                    _ => warnings.push(format!(
                        "{}: unknown key {} in {entry_key} ignored",
                        at(line),
                        k.map_or("(not text)".to_owned(), |k| format!("\"{k}\""))
                    )),
                }
            }
            let (kind, line, value) = match found.as_slice() {
                [one] => *one,
                [] => {
                    return Err(value_error(
                        at(item.line),
                        &entry_key,
                        "entry has none of dir:, file:, uri: (each entry needs exactly one)",
                    ))
                }
                [a, b, ..] => {
                    return Err(value_error(
                        at(b.1),
                        &entry_key,
                        format!(
                            "entry has both \"{}\" (line {}) and \"{}\" (line {}); each entry \
                             needs exactly one of dir:, file:, uri:",
                            a.0, a.1, b.0, b.1
                        ),
                    ))
                }
            };
            let text = match &value.kind {
                Kind::Scalar(s) if !s.trim().is_empty() => s.clone(),
                other => {
                    return Err(value_error(
                        at(line.max(value.line)),
                        &entry_key,
                        format!(
                            "\"{kind}\" needs a non-empty value, found {}",
                            other.describe()
                        ),
                    ))
                }
            };
            stores.push(match kind {
                "dir" => KeyStore::Dir(PathBuf::from(text)),
                "file" => KeyStore::File(PathBuf::from(text)),
                _ => KeyStore::Uri(text),
            });
        }
        let key_line = file.key_lines.get(KEY).copied().unwrap_or(node.line);
        Ok((stores, Some(at(key_line))))
    }
}

/// `cores` written as text: `all`, a count, or ids/ranges with `,`/`-`.
pub(crate) fn parse_cores_text(t: &str) -> Result<Cores, ValueError> {
    let t = t.trim();
    if t.eq_ignore_ascii_case("all") {
        return Ok(Cores::All);
    }
    if t.contains(',') || t.contains('-') {
        let items: Vec<&str> = t.split(',').collect();
        return parse::cpu_list(&items, MAX_CPU_ID).map(Cores::List);
    }
    parse::int_in(t, 1, MAX_CPU_ID as u64 + 1)
        .map(|n| Cores::Count(n as usize))
        .map_err(|_| {
            ValueError::Cpus(CpuListError::Shape {
                max: MAX_CPU_ID + 1,
                text: t.to_owned(),
            })
        })
}
