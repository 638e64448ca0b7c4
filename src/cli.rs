//! The command line: `run`, `check-config`, `demo`. Configuration is read and validated before
//! anything connects; a bad one exits with [`EXIT_BAD_CONFIG`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing::error;

use crate::clock::SystemClock;
use crate::config::{Config, EXIT_BAD_CONFIG};
use crate::telemetry::{self, LogFormat};

/// Used when `--config` is not given and the file exists in the working directory.
const DEFAULT_CONFIG_FILE: &str = "callkeeper.toml";

#[derive(Debug, Parser)]
#[command(
    name = "callkeeper",
    version,
    about = "Keeps contact-centre callback promises."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log output format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "CALLKEEPER_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the worker until SIGTERM or Ctrl-C.
    Run {
        /// TOML config file (default: ./callkeeper.toml when present). `CALLKEEPER__SECTION__KEY`
        /// environment variables override it.
        #[arg(long, short, env = "CALLKEEPER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a config file (with environment overrides) and explain every problem.
    CheckConfig {
        #[arg(long, short, env = "CALLKEEPER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Show the whole flow in one command: a worker on a scratch database, a local webhook
    /// receiver that prints each verified webhook, and a few sample requests.
    Demo,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; only warnings and errors join it.
    let default_level = if matches!(cli.command, Command::Demo) {
        "warn"
    } else {
        "info"
    };
    telemetry::init_logging(cli.log_format, default_level);
    match cli.command {
        Command::CheckConfig { config } => match load(config.as_deref()) {
            Ok((config, path)) => {
                println!(
                    "{}: OK ({} queues: {})",
                    path,
                    config.queues.len(),
                    config.queues.keys().cloned().collect::<Vec<_>>().join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config } => {
            let config = match load(config.as_deref()) {
                Ok((config, _)) => config,
                Err(code) => return code,
            };
            runtime().block_on(run(config))
        }
        Command::Demo => runtime().block_on(async {
            match crate::demo::run().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = %format!("{e:#}"), "Demo failed.");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Loads and validates; on failure prints every problem and returns the exit code.
fn load(path: Option<&Path>) -> Result<(Config, String), ExitCode> {
    let path = path.map(Path::to_path_buf).or_else(|| {
        let default = PathBuf::from(DEFAULT_CONFIG_FILE);
        default.exists().then_some(default)
    });
    let shown = path
        .as_ref()
        .map_or("built-in defaults".to_string(), |p| p.display().to_string());
    match Config::load(path.as_deref()) {
        Ok(config) => Ok((config, shown)),
        Err(e) => {
            eprintln!("{shown}: {e}");
            Err(ExitCode::from(EXIT_BAD_CONFIG as u8))
        }
    }
}

async fn run(config: Config) -> ExitCode {
    let running = match crate::app::start(config, Arc::new(SystemClock)).await {
        Ok(running) => running,
        Err(e) => {
            error!(error = %format!("{e:#}"), "callkeeper could not start.");
            return ExitCode::FAILURE;
        }
    };
    match running.run_until(terminate_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %format!("{e:#}"), "callkeeper stopped with an error.");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM (what orchestrators send) or Ctrl-C.
async fn terminate_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
