//! The binary: parse the command line, load and validate config, set up
//! logging, bind, serve until SIGTERM/SIGINT, drain, exit.
//!
//! A bad config prints one line naming the field and exits 64 (EX_USAGE)
//! before any socket opens.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use redis_cache_plugin::{
    config::{Config, ConfigError},
    serve, telemetry,
};
use tokio::net::TcpListener;

/// Exit code for a bad config or command line (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

/// gRPC cache sidecar over Redis/Valkey with Vault-issued ACL credentials.
///
/// Environment (overrides the file): REDIS_ADDRESS, REDIS_USERNAME,
/// REDIS_PASSWORD, REDIS_DATABASE, REDIS_POOL_SIZE, REDIS_KEY_PREFIX,
/// REDIS_VAULT_ENABLED, REDIS_VAULT_PATH, PRISM_LOG_LEVEL, PRISM_PLUGIN_PORT,
/// VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT, VAULT_NAMESPACE.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Config file [default: $PRISM_PLUGIN_CONFIG, else ./config.yaml]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the cache (the default).
    Serve,
    /// Validate the config and print it with secrets redacted.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = std::env::vars().collect();
    let path = Config::resolve_path(cli.config.clone(), &env);
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            print!("{}", config.redacted_yaml());
            ExitCode::SUCCESS
        }
        Command::Serve => run(config),
    }
}

fn usage_error(e: &ConfigError) -> ExitCode {
    eprintln!("redis-cache-plugin: {e}");
    ExitCode::from(EX_USAGE)
}

fn run(config: Config) -> ExitCode {
    if let Err(e) = telemetry::init(&config.log.level, config.log.format) {
        eprintln!("redis-cache-plugin: invalid config: log.level: {e}");
        return ExitCode::from(EX_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redis-cache-plugin: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve_until_signal(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            ExitCode::FAILURE
        }
    }
}

async fn serve_until_signal(config: Config) -> anyhow::Result<()> {
    let ip = config.control_plane.listen.parse()?;
    let addr = SocketAddr::new(ip, config.control_plane.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    serve(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
