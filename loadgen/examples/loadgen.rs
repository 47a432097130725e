//! `cargo run -p keycore-loadgen --example loadgen -- --server 127.0.0.1:2407 ...`
//!
//! The same flags as `keycore loadgen` ([`keycore_loadgen::LoadgenArgs`]),
//! for running the generator without building the whole `keycore` binary.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "loadgen", about = "Keyless edge-traffic load generator")]
struct Cli {
    #[command(flatten)]
    args: keycore_loadgen::LoadgenArgs,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = keycore_loadgen::run_cli(&cli.args) {
        eprintln!("loadgen: error: {}", keycore_keys::error_chain(&e));
        std::process::exit(1);
    }
}
