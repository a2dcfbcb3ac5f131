//! The `line-auth-proxy` command: parses arguments, loads and validates the
//! configuration (every problem printed, exit 2), initialises tracing, installs
//! the rustls provider and hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use line_auth_proxy::config::{self, CONFIG_FILE_ENV};
use line_auth_proxy::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "line-auth-proxy",
    version,
    about = "Verifies LINE Login tokens with the LINE Platform and forwards trusted identity headers"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = CONFIG_FILE_ENV, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration file: print every problem, exit 0 or 2.
    Check,
    /// Run a demo: mock LINE Platform, echo upstream and the proxy; prints curl lines.
    Dev {
        /// Proxy listener of the demo.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listener of the demo.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    line_auth_proxy::install_crypto_provider();
    match cli.command {
        Some(Command::Dev { listen, admin_listen }) => {
            telemetry::init_tracing(cli.log_format);
            runtime(line_auth_proxy::dev::run(listen, admin_listen))
        }
        Some(Command::Check) => match load(cli.config) {
            Ok(_) => {
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        None => {
            let config = match load(cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::init_tracing(cli.log_format);
            runtime(line_auth_proxy::run(config, line_auth_proxy::shutdown_signal()))
        }
    }
}

/// Loads the file named by `--config` or the environment; prints every problem.
fn load(path: Option<PathBuf>) -> Result<config::Config, ExitCode> {
    let Some(path) = path else {
        eprintln!("error: no configuration: pass --config FILE or set {CONFIG_FILE_ENV}");
        return Err(ExitCode::from(2));
    };
    config::load(Some(&path), std::env::vars()).map_err(|problems| {
        for p in &problems.0 {
            eprintln!("error: {}: {}", p.key, p.message);
        }
        eprintln!("{} problem(s) in {}", problems.0.len(), path.display());
        ExitCode::from(2)
    })
}

fn runtime<F>(future: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), line_auth_proxy::RunError>>,
{
    // One core (a sidecar's usual CPU limit, or taskset): a current-thread
    // runtime does the same work without cross-thread wake-ups and queues.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "line-auth-proxy failed");
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
