//! The binary: parse the command line, load and validate config, set up
//! logging, bind, serve until SIGTERM/SIGINT, drain, exit.
//!
//! A bad config or command line prints one line naming the field and exits
//! 64 (EX_USAGE) before any socket opens. `health` loads no config: it is a
//! client of a running plugin (see [`redis_cache_plugin::probe`]).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use redis_cache_plugin::{
    config::{self, Config, ConfigError},
    probe::{self, Probe, ProbeTls},
    serve, telemetry,
};
use tokio::net::TcpListener;

/// mimalloc instead of glibc malloc: the hot path allocates small, short-lived
/// buffers (keys, RESP frames, protobuf messages) on several threads, where
/// glibc's arenas showed up as 22 % of CPU on MGet (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a bad config or command line (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

/// The runtime's worker threads; tokio's own name for the setting, read
/// here so that a bad value is one line rather than tokio's panic.
const WORKER_THREADS_ENV: &str = "TOKIO_WORKER_THREADS";

/// gRPC cache sidecar over Redis/Valkey with Vault-issued ACL credentials.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file [default: $PRISM_PLUGIN_CONFIG, else ./config.yaml]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Port to serve on: overrides control_plane.port and PRISM_PLUGIN_PORT
    /// (how Prism's proxy starts a plugin)
    #[arg(long, global = true, value_name = "N")]
    grpc_port: Option<u16>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the cache (the default).
    Serve,
    /// Validate the config and print it with secrets redacted.
    CheckConfig,
    /// Ask a running plugin's grpc.health.v1 Check; exit 0 only on SERVING.
    ///
    /// For Docker HEALTHCHECK and Kubernetes exec probes in images without a
    /// shell. Exit codes as grpc_health_probe: 2 cannot connect, 3 the RPC
    /// failed or timed out, 4 not SERVING, 64 bad arguments.
    Health(HealthArgs),
}

#[derive(clap::Args)]
struct HealthArgs {
    /// Plugin address, host:port [default: 127.0.0.1:--grpc-port, else 127.0.0.1:$PRISM_PLUGIN_PORT, else 127.0.0.1:9092]
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// Health service name: "" (overall), cache.v1.Cache, or the plugin name
    #[arg(long, value_name = "NAME", default_value = "")]
    service: String,
    /// Deadline for connecting and the check together (250ms, 1s, ...; at most 1h)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = probe::parse_timeout)]
    timeout: Duration,
    /// Dial with TLS (the plugin's control_plane.tls); needs --ca
    #[arg(long, requires = "ca")]
    tls: bool,
    /// CA certificate (PEM) that signed the plugin's certificate
    #[arg(long, value_name = "FILE", requires = "tls")]
    ca: Option<String>,
    /// Client certificate (PEM) for mTLS; with --key
    #[arg(long, value_name = "FILE", requires_all = ["tls", "key"])]
    cert: Option<String>,
    /// Client private key (PEM) for mTLS; with --cert
    #[arg(long, value_name = "FILE", requires_all = ["tls", "cert"])]
    key: Option<String>,
    /// Name to verify in the plugin's certificate [default: the address' host]
    #[arg(long, value_name = "NAME", requires = "tls")]
    server_name: Option<String>,
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Health(args) => health(args, cli.grpc_port),
        Command::CheckConfig => match load_config(cli.config, cli.grpc_port) {
            Ok(config) => {
                print!("{}", config.redacted_yaml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Serve => match load_config(cli.config, cli.grpc_port) {
            Ok(config) => run(config),
            Err(code) => code,
        },
    }
}

/// Parses argv; `--help`/`--version` exit 0, a usage error exits 64.
fn parse_cli() -> Result<Cli, ExitCode> {
    let command = Cli::command().after_help(env_help());
    let parsed = command
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    parsed.map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(EX_USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// The environment section of `--help`, from the overlay's own list.
fn env_help() -> String {
    let mut out = String::from("Environment (overrides the config file):\n");
    out.push_str(&format!(
        "  {:<22}config file path (when --config is not given)\n",
        config::CONFIG_ENV
    ));
    for var in config::ENV_VARS {
        out.push_str(&format!("  {:<22}{}\n", var.name, var.field));
    }
    out.push_str(&format!(
        "  {WORKER_THREADS_ENV:<22}runtime worker threads (default: one per CPU the process may use)\n"
    ));
    out
}

/// `TOKIO_WORKER_THREADS` when set: a positive integer, else an error line.
fn worker_threads() -> Result<Option<usize>, String> {
    let Some(raw) = std::env::var_os(WORKER_THREADS_ENV) else {
        return Ok(None);
    };
    match raw.to_str().map(|v| v.trim().parse::<usize>()) {
        Some(Ok(n)) if n > 0 => Ok(Some(n)),
        _ => Err(format!(
            "{WORKER_THREADS_ENV}: must be a positive integer (threads), got {raw:?}"
        )),
    }
}

/// The config from file and environment; `--grpc-port` last, over both.
fn load_config(flag: Option<PathBuf>, grpc_port: Option<u16>) -> Result<Config, ExitCode> {
    let env = std::env::vars().collect();
    let path = Config::resolve_path(flag, &env);
    let mut config = Config::load(&path).map_err(|e| usage_error(&e))?;
    if let Some(port) = grpc_port {
        config.control_plane.port = port;
        // Every rule sees the port the plugin will really use.
        config.validate().map_err(|e| usage_error(&e))?;
    }
    Ok(config)
}

fn usage_error(e: &ConfigError) -> ExitCode {
    eprintln!("redis-cache-plugin: {e}");
    ExitCode::from(EX_USAGE)
}

fn health(args: HealthArgs, grpc_port: Option<u16>) -> ExitCode {
    let addr = args.addr.unwrap_or_else(|| default_probe_addr(grpc_port));
    let tls = args.tls.then(|| ProbeTls {
        ca_file: args.ca.unwrap_or_default(),
        cert_file: args.cert,
        key_file: args.key,
        server_name: args.server_name,
    });
    let probe = Probe {
        addr,
        service: args.service,
        timeout: args.timeout,
        tls,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redis-cache-plugin health: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(probe.check()) {
        Ok(()) => {
            eprintln!("status: SERVING");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("redis-cache-plugin health: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Loopback on the port the plugin in the same container listens on:
/// `--grpc-port`, else `PRISM_PLUGIN_PORT`, else 9092.
fn default_probe_addr(grpc_port: Option<u16>) -> String {
    let env = || {
        std::env::var("PRISM_PLUGIN_PORT")
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok())
    };
    let port = grpc_port.or_else(env).unwrap_or(9092);
    format!("127.0.0.1:{port}")
}

fn run(config: Config) -> ExitCode {
    if let Err(e) = telemetry::init(&config.log.level, config.log.format) {
        eprintln!("redis-cache-plugin: invalid config: log.level: {e}");
        return ExitCode::from(EX_USAGE);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match worker_threads() {
        Ok(Some(n)) => {
            builder.worker_threads(n);
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("redis-cache-plugin: {e}");
            return ExitCode::from(EX_USAGE);
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redis-cache-plugin: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve_until_signal(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "exiting");
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: our error messages already
/// include their source's text, which `{:#}` would print a second time.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("inner detail")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] Inner);

    #[test]
    fn error_chain_says_each_cause_once() {
        assert_eq!(
            error_chain(&anyhow::Error::new(Outer(Inner))),
            "outer: inner detail"
        );
        let with_context = anyhow::Error::new(std::io::Error::other("refused")).context("listen");
        assert_eq!(error_chain(&with_context), "listen: refused");
    }
}
