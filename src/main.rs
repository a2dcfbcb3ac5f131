//! The `line-auth-proxy` command: parses arguments, loads and validates the
//! configuration (every problem printed, exit 2), initialises tracing, installs
//! the rustls provider and the panic hook, and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use line_auth_proxy::config::{self, CONFIG_FILE_ENV};
use line_auth_proxy::{LogFormat, error_chain, init_tracing};

/// musl's malloc costs the static build (the container image's) twice the
/// CPU per request; mimalloc brings it back to the glibc build's.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    #[cfg_attr(not(feature = "dev"), command(hide = true))]
    Dev {
        /// Proxy listener of the demo (port 0: any free port, printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Admin listener of the demo.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    line_auth_proxy::install_crypto_provider();
    match cli.command {
        Some(Command::Dev { listen, admin_listen }) => dev(cli.log_format, listen, admin_listen),
        Some(Command::Check) => match load(cli.config) {
            Ok((loaded, _)) => {
                println!(
                    "configuration OK{}",
                    match loaded.warnings.len() {
                        0 => String::new(),
                        n => format!(" ({n} warning(s) above)"),
                    }
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        None => {
            let (config, source) = match load(cli.config) {
                Ok((loaded, source)) => (loaded.config, source),
                Err(code) => return code,
            };
            if let Err(e) = init_tracing(cli.log_format, config.audit_file()) {
                let path = config.audit_file().map_or(String::new(), |p| p.display().to_string());
                eprintln!("error: log.audit_file: cannot open {path}: {e}");
                return ExitCode::from(2);
            }
            line_auth_proxy::install_panic_hook();
            let workers = line_auth_proxy::workers::Workers::choose(config.workers());
            runtime(workers, line_auth_proxy::run_reloading(config, source, line_auth_proxy::shutdown_signals()))
        }
    }
}

#[cfg(feature = "dev")]
fn dev(format: LogFormat, listen: std::net::SocketAddr, admin_listen: std::net::SocketAddr) -> ExitCode {
    if let Err(e) = init_tracing(format, None) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    line_auth_proxy::install_panic_hook();
    runtime(line_auth_proxy::workers::Workers::choose(None), line_auth_proxy::dev::run(listen, admin_listen))
}

#[cfg(not(feature = "dev"))]
fn dev(_: LogFormat, _: std::net::SocketAddr, _: std::net::SocketAddr) -> ExitCode {
    eprintln!("error: this build has no `dev` command (built without the `dev` feature)");
    ExitCode::from(2)
}

/// Loads the file named by `--config` (or `LINE_AUTH_PROXY_CONFIG`) and the
/// environment overlay, or the environment alone; prints every warning and
/// every problem. Also returns where it came from, for reloads.
fn load(path: Option<PathBuf>) -> Result<(config::Loaded, config::Source), ExitCode> {
    let env = config::process_environment().map_err(|problems| {
        for p in &problems.errors {
            eprintln!("error: {p}");
        }
        ExitCode::from(2)
    })?;
    let shown = match &path {
        Some(path) => path.display().to_string(),
        None => "the environment (no --config FILE and no LINE_AUTH_PROXY_CONFIG)".to_owned(),
    };
    let source = config::Source::new(path, env);
    match config::load(source.path(), source.env().iter().cloned()) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            if source.path().is_none() {
                // Not a problem, but easy to miss: [[routes]] has no
                // environment form.
                eprintln!(
                    "note: configured from the environment alone: routes can be written only in a file, so every request takes the default route (a LINE access token)"
                );
            }
            Ok((loaded, source))
        }
        Err(problems) => {
            for w in &problems.warnings {
                eprintln!("warning: {w}");
            }
            for p in &problems.errors {
                eprintln!("error: {p}");
            }
            eprintln!("{} problem(s) in {shown}", problems.errors.len());
            Err(ExitCode::from(2))
        }
    }
}

fn runtime<F>(workers: line_auth_proxy::workers::Workers, future: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), line_auth_proxy::RunError>>,
{
    // One worker (a sidecar's usual CPU limit, or taskset): a current-thread
    // runtime does the same work without cross-thread wake-ups and queues.
    let mut builder = if workers.count == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut multi = tokio::runtime::Builder::new_multi_thread();
        multi.worker_threads(workers.count);
        multi
    };
    tracing::info!(workers = workers.count, workers_from = workers.from, "runtime threads");
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let ended = rt.block_on(future);
    if let Err(e) = &ended {
        tracing::error!(error = %error_chain(e), "line-auth-proxy failed");
    }
    // Tasks that outlive the server's own force close (it writes the access
    // lines of the connections it cuts) end here, before the flush; blocking
    // work (a DNS lookup) gets one second instead of holding up the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    // Log lines still buffered go out before the exit (and before the
    // error line below, which is stderr's last).
    line_auth_proxy::log_writer::flush();
    match ended {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}
