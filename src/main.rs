//! `cchat`: parse flags, start logging, run the node.

use std::ffi::OsString;
use std::process::ExitCode;

use cchat::config::{Args, Config, ConfigError};
use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let argv: Vec<OsString> = std::env::args_os().collect();
    // --help, --version and mistyped flags: clap prints and exits.
    let args = Args::try_parse_from(&argv).unwrap_or_else(|e| e.exit());
    if let Some(path) = args.check_config {
        let checked = Config::load([OsString::from("cchat"), "--config".into(), path.clone().into()]);
        return match checked {
            Ok(_) => {
                println!("ok: {} is a valid cchat configuration", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(admin) = args.drain {
        return match cchat::drain_node(admin, args.security.api_key.as_deref()) {
            Ok(()) => {
                println!("ok: {admin} is draining");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Errors are the operator's to read: one line each, never a backtrace
    // (RUST_BACKTRACE is often set in operators' shells).
    let cfg = match Config::load(argv) {
        Ok(cfg) => cfg,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cchat::server::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
