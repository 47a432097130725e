//! `keycore`: the one CLI binary.
//!
//! Subcommands: `serve` (the key server, reading an unchanged gokeyless.yaml),
//! `reload` (SIGHUP to the running server named by `pid_file`, then its result),
//! `enroll` (the server's own certificate from the CDN API, or a CSR for the dashboard),
//! `edge` (HTTPS with certificates only; signatures from key servers),
//! `loadgen` (edge-traffic load generator), `demo` (throwaway PKI + server +
//! load on loopback, the README's first command), `tune` (client- and
//! server-side sweeps), `plan` (capacity planner).
//! This file only parses arguments, sets up logging and hands over to the
//! library crates; it holds no logic of its own.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use keycore_engine::config::LogFormat;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod demo;
mod demo_edge;

/// keycore: a Keyless SSL key server, its load generator and tools.
#[derive(Parser, Debug)]
#[command(name = "keycore", version, disable_version_flag = true)]
struct Cli {
    /// Print the version and exit (as the reference's `-v`).
    #[arg(short = 'v', long = "version", global = true)]
    version: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the key server (reads gokeyless.yaml; see README "Configuration").
    Serve(Box<ServeCmd>),
    /// Reload a running `keycore serve`: signal the process in `pid_file`
    /// (SIGHUP) and wait for the outcome on its metrics listener. Takes the
    /// same -c/flags/environment as serve, to find pid_file and metrics.
    Reload(Box<ReloadCmd>),
    /// Obtain the server's own certificate from the CDN's certificates API
    /// (hostname, zone_id, enroll_api_token from the config), or with
    /// --manual write a key and CSR for the dashboard.
    Enroll(Box<EnrollCmd>),
    /// HTTPS terminator with certificates but no private keys: every
    /// handshake signature comes from a key server (keyless).
    Edge(Box<keycore_edge::EdgeArgs>),
    /// Drive edge-like load against key servers and report latency
    /// (`keycore loadgen merge LOG...` merges several instances' logs).
    Loadgen(Box<LoadgenCmd>),
    /// Generate a throwaway PKI and keys, serve them on loopback, drive load, print results.
    Demo(Box<demo::DemoArgs>),
    /// Write a throwaway PKI (CA, server and client certificates) and keys of
    /// every kind into a directory, for trials and benchmarks. Not for production.
    Pki {
        /// Directory to write into (created if missing).
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Sweep client concurrency against a running server, or (with
    /// --serve-config and --set) launch `keycore serve` per point with one
    /// setting changed, and recommend the config with the most throughput
    /// within the p99 SLO.
    Tune(Box<keycore_tuning::TuneArgs>),
    /// Capacity plan: key-server cores/instances and HSMs (or cloud quota)
    /// per vendor profile for a peak of new TLS handshakes, with the
    /// arithmetic and every figure's source.
    Plan(Box<keycore_tuning::plan::PlanArgs>),
    /// Probe a running server's metrics listener (container HEALTHCHECK,
    /// exec probes): exit 0 on HTTP 200, 1 otherwise, printing the answer.
    Healthcheck {
        /// Metrics listener address.
        #[arg(long, default_value = "127.0.0.1:2406")]
        addr: std::net::SocketAddr,
        /// `/healthz` (liveness) or `/readyz` (readiness).
        #[arg(long, default_value = "/healthz")]
        path: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
    },
}

/// `keycore loadgen`: a run, or `merge` of several runs' interval logs.
#[derive(clap::Args, Debug)]
#[command(subcommand_negates_reqs = true)]
struct LoadgenCmd {
    #[command(subcommand)]
    sub: Option<LoadgenSub>,
    // Optional: absent when `merge` is given (its required flags are
    // negated by the subcommand and would fail to convert otherwise).
    #[command(flatten)]
    args: Option<keycore_loadgen::LoadgenArgs>,
}

#[derive(Subcommand, Debug)]
enum LoadgenSub {
    /// Merge the HdrHistogram interval logs (--hdr-log) of several loadgen
    /// instances into one report; percentiles come from the merged
    /// histograms, never from averaging.
    Merge(keycore_loadgen::merge::MergeArgs),
}

/// `keycore serve`: the config flags plus what only the command has.
#[derive(clap::Args, Debug)]
struct ServeCmd {
    /// Validate the configuration, TLS material and every key store (PKCS#11
    /// login, cloud key fetch) as start-up would, print a summary table and
    /// exit 0 if nothing failed, 1 otherwise. Binds no port.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    args: keycore_engine::config::ServeArgs,
}

/// `keycore reload`.
#[derive(clap::Args, Debug)]
struct ReloadCmd {
    /// Wait at most this long for the server's answer (its reload may wait on
    /// an HSM login or a cloud key fetch).
    #[arg(long, default_value_t = 90)]
    timeout_secs: u64,
    #[command(flatten)]
    args: keycore_engine::config::ServeArgs,
}

/// `keycore enroll`: the config flags plus the command's own.
#[derive(clap::Args, Debug)]
struct EnrollCmd {
    /// Manual activation: write the key (auth_key) and CSR (auth_csr) and
    /// print the CSR for the dashboard; no API call. Needs only hostname.
    #[arg(long)]
    manual: bool,
    /// Replace an existing auth_cert/auth_key (default: refuse).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    args: keycore_engine::config::ServeArgs,
}

fn main() {
    let cli = Cli::parse();
    if cli.version {
        println!("keycore {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let r = match cli.cmd {
        Some(Cmd::Serve(cmd)) => serve(cmd.args, cmd.check),
        Some(Cmd::Reload(cmd)) => reload(&cmd),
        Some(Cmd::Enroll(cmd)) => enroll(&cmd),
        Some(Cmd::Edge(args)) => edge(&args),
        Some(Cmd::Loadgen(cmd)) => {
            init_logging(2, LogFormat::Text);
            match &cmd.sub {
                Some(LoadgenSub::Merge(m)) => keycore_loadgen::merge::run(m).map_err(Into::into),
                None => match &cmd.args {
                    Some(a) if a.compare_report.is_some() => {
                        keycore_tuning::compare::run_cli(a).map_err(Into::into)
                    }
                    Some(a) => keycore_loadgen::run_cli(a).map_err(Into::into),
                    None => Err(anyhow::anyhow!(
                        "keycore loadgen: give --server ... or `merge LOG...`"
                    )),
                },
            }
        }
        Some(Cmd::Demo(args)) => {
            init_logging(2, LogFormat::Text);
            demo::run(&args)
        }
        Some(Cmd::Pki { dir }) => pki(&dir),
        Some(Cmd::Healthcheck {
            addr,
            path,
            timeout_secs,
        }) => {
            let timeout = std::time::Duration::from_secs(timeout_secs.max(1));
            match keycore_engine::endpoint::probe(addr, &path, timeout) {
                Ok((200, body)) => {
                    print!("{body}");
                    Ok(())
                }
                Ok((code, body)) => {
                    print!("{body}");
                    Err(anyhow::anyhow!("{path} answered {code}"))
                }
                Err(e) => Err(anyhow::anyhow!("{addr}{path}: {e}")),
            }
        }
        Some(Cmd::Tune(args)) => {
            init_logging(2, LogFormat::Text);
            keycore_tuning::run_cli(&args).map_err(Into::into)
        }
        Some(Cmd::Plan(args)) => keycore_tuning::plan::run_cli(&args).map_err(Into::into),
        None => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            Ok(())
        }
    };
    if let Err(e) = r {
        eprintln!("keycore: error: {e:#}");
        std::process::exit(1);
    }
}

fn pki(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let p = keycore_engine::pki::generate(dir)?;
    println!("CA:               {}", p.ca_cert.display());
    println!(
        "server cert/key:  {} {}",
        p.server_cert.display(),
        p.server_key.display()
    );
    println!(
        "client cert/key:  {} {}",
        p.client_cert.display(),
        p.client_key.display()
    );
    println!("keys:             {}", p.keys_dir.display());
    Ok(())
}

/// Map the reference's numeric log levels (0 debug … 5 fatal) to tracing.
/// Text lines carry ANSI colours only when stderr is a terminal (a file or
/// journald gets plain text, issue 12 item 12); `json` writes one object per
/// line.
fn init_logging(level: u8, format: LogFormat) {
    let lvl = match level {
        0 => "debug",
        1 => "info",
        2 => "warn",
        _ => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYCORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(lvl));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => b.json().with_ansi(false).try_init(),
    };
}

fn serve(args: keycore_engine::config::ServeArgs, check: bool) -> Result<()> {
    let loaded = keycore_engine::config::load(&args)?;
    init_logging(loaded.config.loglevel.number(), loaded.config.log_format);
    if check {
        let report =
            keycore_engine::check::run(&loaded.config, loaded.source.as_deref(), &loaded.warnings);
        print!("{}", report.render());
        std::process::exit(if report.passed() { 0 } else { 1 });
    }
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    if args.output_config {
        print!("{}", loaded.effective_yaml(args.show_secrets));
        return Ok(());
    }
    // As the reference: enroll first when the registration keys are set
    // and there is no certificate yet; `--config-only` stops after that.
    match keycore_engine::enroll::decide(&loaded.config) {
        keycore_engine::enroll::Decision::Nothing => {
            if args.config_only {
                println!("configuration is valid; nothing to enroll (auth_cert and auth_key exist, or no hostname/zone_id/credential set)");
            }
        }
        keycore_engine::enroll::Decision::Enroll => {
            keycore_engine::enroll::enroll(&loaded.config, false)?;
        }
        keycore_engine::enroll::Decision::Incomplete(why) => anyhow::bail!(why),
    }
    if args.config_only {
        return Ok(());
    }
    match &loaded.source {
        Some(p) => tracing::info!(config = %p.display(), "configuration loaded"),
        None => tracing::info!("no configuration file found; using defaults and environment"),
    }
    // Handlers first: a signal that arrives while keys load (or between the
    // listener coming up and the signal thread starting) waits in the
    // queue instead of taking the default action (SIGHUP's is to die).
    let signals = operator_signals()?;
    // What reload_watch compares with: the files as they were before
    // start-up read them.
    let watched = loaded
        .config
        .reload_watch
        .map(|_| keycore_engine::reload::watch_digest(&loaded.config, loaded.source.as_deref()).0);
    let running = keycore_engine::launch::launch(&loaded.config)?;
    tracing::info!(addr = %running.server.addr, "serving");
    // systemd Type=notify: ready only once every core listens and the
    // metrics endpoint is up (a no-op without $NOTIFY_SOCKET).
    let ready = format!(
        "READY=1\nMAINPID={}\nSTATUS=serving on {}",
        std::process::id(),
        running.server.addr
    );
    notify(&ready);
    match std::env::current_exe() {
        Ok(exe) => running.reloader.check_logins_with(exe),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot find this executable: a reload cannot check a changed PIN of a PKCS#11 token that is already open"
        ),
    }
    if let (Some(every), Some(initial)) = (loaded.config.reload_watch, watched) {
        let args = args.clone();
        keycore_engine::reload::watch(
            running.reloader.clone(),
            every,
            loaded.source.clone(),
            initial,
            move || read_config(&args),
        )
        .context("start the reload_watch thread")?;
    }
    let reloads = reload_thread(running.reloader.clone(), args, ready)?;
    let first = watch_signals(
        signals,
        running.server.control(),
        loaded.config.pid_file.clone(),
        reloads,
    )?;
    let _ = first.recv();
    tracing::info!(
        "signal received; draining (a second SIGTERM/SIGINT shortens the drain, a third exits at once)"
    );
    notify("STOPPING=1\nSTATUS=draining");
    running.stop()?;
    tracing::info!("stopped");
    Ok(())
}

/// The thread that runs reloads, off the signal thread (a reload may wait
/// on an HSM or a cloud service; a stop signal must still be handled
/// meanwhile). The returned sender holds at most one pending request:
/// SIGHUPs arriving while one is queued are folded into it (the queued
/// reload reads the files as they are when it runs).
fn reload_thread(
    reloader: std::sync::Arc<keycore_engine::reload::Reloader>,
    args: keycore_engine::config::ServeArgs,
    ready: String,
) -> Result<std::sync::mpsc::SyncSender<()>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("keycore-reload".into())
        .spawn(move || {
            for () in rx {
                notify("RELOADING=1\nSTATUS=reloading");
                let _ = reloader.reload(|| read_config(&args));
                notify(&ready);
            }
        })
        .context("start reload thread")?;
    Ok(tx)
}

/// The configuration as `serve` reads it (file, environment, `args`), its
/// warnings logged: what every reload starts from.
fn read_config(args: &keycore_engine::config::ServeArgs) -> Result<keycore_engine::config::Config> {
    let loaded = keycore_engine::config::load(args)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded.config)
}

/// `keycore reload`: signal the server in `pid_file`, then watch
/// `keycore_reload_total` on its metrics listener for the outcome.
fn reload(cmd: &ReloadCmd) -> Result<()> {
    use keycore_engine::endpoint::probe;
    use std::time::{Duration, Instant};
    init_logging(2, LogFormat::Text);
    let cfg = keycore_engine::config::load(&cmd.args)?.config;
    // The metrics listener as a local client reaches it (0.0.0.0 / :: mean
    // "every interface", so loopback).
    let metrics = cfg.metrics_addr().map(|mut a| {
        if a.ip().is_unspecified() {
            a.set_ip(if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        a
    });
    let timeout = Duration::from_secs(cmd.timeout_secs.max(1));
    let counts = |a| -> Option<(u64, u64)> {
        let (code, body) = probe(a, "/metrics", Duration::from_secs(5)).ok()?;
        if code != 200 {
            return None;
        }
        reload_counts(&body)
    };
    let before = metrics.and_then(counts);
    let pid =
        keycore_engine::ops::signal_pid_file(cfg.pid_file.as_deref(), signal_hook::consts::SIGHUP)?;
    let (Some(addr), Some(before)) = (metrics, before) else {
        println!("sent SIGHUP to keycore (pid {pid}); its metrics listener is not reachable, so see its log for the result");
        return Ok(());
    };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        match counts(addr) {
            Some((ok, _)) if ok > before.0 => {
                println!("reload applied (pid {pid}); what changed is in the server's log");
                let pending = restart_needed(addr);
                if !pending.is_empty() {
                    println!(
                        "changed in the config but NOT applied, need a restart: {}",
                        pending.join(", ")
                    );
                }
                return Ok(());
            }
            Some((_, err)) if err > before.1 => {
                anyhow::bail!("reload refused by pid {pid}: the previous configuration keeps serving; the reason is in the server's log (check first with `keycore serve --check`)");
            }
            _ => {}
        }
    }
    anyhow::bail!("sent SIGHUP to pid {pid} but saw no reload result on {addr} within {timeout:?}")
}

/// The settings `keycore_config_restart_needed` lists on a scrape.
fn restart_needed(addr: std::net::SocketAddr) -> Vec<String> {
    let Ok((200, body)) =
        keycore_engine::endpoint::probe(addr, "/metrics", std::time::Duration::from_secs(5))
    else {
        return Vec::new();
    };
    body.lines()
        .filter_map(|l| l.strip_prefix("keycore_config_restart_needed{setting=\""))
        .filter_map(|l| l.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// `keycore_reload_total` {ok, error} from a scrape.
fn reload_counts(body: &str) -> Option<(u64, u64)> {
    let get = |result: &str| -> Option<u64> {
        let prefix = format!("keycore_reload_total{{result=\"{result}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((get("ok")?, get("error")?))
}

fn enroll(cmd: &EnrollCmd) -> Result<()> {
    let loaded = keycore_engine::config::load(&cmd.args)?;
    init_logging(loaded.config.loglevel.number(), loaded.config.log_format);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let cfg = &loaded.config;
    if cmd.manual {
        let csr = keycore_engine::enroll::manual(cfg, cmd.force)?;
        eprintln!(
            "key written to {} and CSR to {}; submit this CSR in the dashboard and save the \
             certificate it returns as {}:",
            cfg.auth_key.display(),
            cfg.auth_csr.display(),
            cfg.auth_cert.display()
        );
        print!("{csr}");
        return Ok(());
    }
    let done = keycore_engine::enroll::enroll(cfg, cmd.force)?;
    println!(
        "enrolled: certificate {}, key {}, CSR {}",
        done.cert.display(),
        done.key.display(),
        done.csr.display()
    );
    Ok(())
}

fn notify(state: &str) {
    if let Err(e) = keycore_engine::ops::sd_notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

fn edge(args: &keycore_edge::EdgeArgs) -> Result<()> {
    init_logging(1, LogFormat::Text);
    let e = keycore_edge::start_cli(args)?;
    wait_for_signal()?;
    tracing::info!("signal received; stopping");
    e.stop();
    Ok(())
}

/// Block until SIGTERM or SIGINT.
fn wait_for_signal() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("install signal handlers")?;
    let _ = signals.forever().next();
    Ok(())
}

/// The signals `serve` handles, caught from now on (queued until
/// [`watch_signals`] reads them).
fn operator_signals() -> Result<signal_hook::iterator::Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGQUIT])
        .context("install signal handlers")
}

/// Handle signals on their own thread for the life of the process:
/// the first SIGTERM/SIGINT starts the drain (the returned receiver gets
/// it), the second hurries it, the third exits at once (status 1, pid file
/// removed). SIGHUP asks the reload thread for a reload (`reloads`);
/// SIGUSR1/SIGUSR2/SIGQUIT have no job: each is logged and ignored, so no
/// operator signal kills a serving process silently.
fn watch_signals(
    mut signals: signal_hook::iterator::Signals,
    control: keycore_engine::server::ServerControl,
    pid_file: Option<std::path::PathBuf>,
    reloads: std::sync::mpsc::SyncSender<()>,
) -> Result<std::sync::mpsc::Receiver<()>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("keycore-signals".into())
        .spawn(move || {
            let mut stops = 0;
            for sig in signals.forever() {
                match sig {
                    SIGTERM | SIGINT => {
                        stops += 1;
                        match stops {
                            1 => {
                                let _ = tx.send(());
                            }
                            2 => {
                                tracing::warn!(
                                    signal = sig,
                                    "second stop signal: shortening the drain"
                                );
                                control.hurry();
                            }
                            _ => {
                                tracing::error!(signal = sig, "third stop signal: exiting now");
                                if let Some(p) = &pid_file {
                                    keycore_engine::ops::remove_pid_file_if(p, std::process::id());
                                }
                                std::process::exit(1);
                            }
                        }
                    }
                    SIGHUP if stops > 0 => {
                        tracing::warn!("SIGHUP received while draining; no reload")
                    }
                    SIGHUP => match reloads.try_send(()) {
                        Ok(()) => tracing::info!("SIGHUP received: reloading"),
                        Err(std::sync::mpsc::TrySendError::Full(())) => tracing::info!(
                            "SIGHUP received: a reload is already queued; it will read the files as they are then"
                        ),
                        Err(std::sync::mpsc::TrySendError::Disconnected(())) => {
                            tracing::error!("SIGHUP received but the reload thread is gone; not reloaded")
                        }
                    },
                    other => {
                        tracing::warn!(signal = other, "signal has no job in keycore; ignored")
                    }
                }
            }
        })
        .context("start signal thread")?;
    Ok(rx)
}
