//! `portcullis`: the daemon and its command-line tools.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use portcullis::config::{self, Settings};
use portcullis::proxy::{self, Gateway};

/// A service-mesh security gateway that enforces mutual TLS with help from the Linux kernel.
///
/// Portcullis reads Istio resources (Gateway, VirtualService, ServiceEntry,
/// AuthorizationPolicy, PeerAuthentication, Secret) from YAML files and serves them: TLS
/// termination with client-certificate verification, SPIFFE identities, and
/// AuthorizationPolicy enforcement in front of your upstreams.
#[derive(Parser)]
#[command(name = "portcullis", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr. The level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PORTCULLIS_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway on a configuration.
    Run(RunArgs),
    /// Validate a configuration and print every error, without starting anything.
    Check(ConfigArgs),
    /// Make a demo CA, server and client certificates (no openssl needed).
    Certs(portcullis::identity::certs::cli::CertsArgs),
    /// Run the built-in httpbin-compatible backend.
    Httpbin(portcullis::backend::httpbin::cli::HttpbinArgs),
    /// The kernel path: eBPF steering and the STRICT plaintext reset (attach, run, set-mode, status, uninstall).
    Kernel(portcullis::kernel::cli::KernelArgs),
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// A YAML file or a directory of them (repeatable). Multi-document files are fine.
    #[arg(short = 'c', long = "config", required = true, value_name = "FILE|DIR")]
    config: Vec<PathBuf>,
    /// Directory holding credentials as `<credentialName>/{tls.crt,tls.key,ca.crt}` (repeatable).
    /// Secrets in the configuration are looked up first.
    #[arg(long = "credentials", value_name = "DIR")]
    credentials: Vec<PathBuf>,
    /// This gateway's labels, matched by `Gateway.spec.selector` and policy selectors.
    #[arg(long = "label", value_name = "KEY=VALUE", default_value = "istio=ingressgateway", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The namespace this gateway runs in.
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// Istio's root namespace: policies there apply to every workload.
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address the Gateway ports are bound on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Added to every Gateway port number (run a config that names 80/443 without root).
    #[arg(long, default_value_t = 0)]
    port_offset: u16,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(args: &ConfigArgs) -> Result<config::Snapshot, config::ConfigErrors> {
    let settings = Settings {
        root_namespace: args.root_namespace.clone(),
        gateway_labels: args.labels.iter().cloned().collect(),
        gateway_namespace: args.namespace.clone(),
        credential_dirs: args.credentials.clone(),
    };
    config::compile(config::load_paths(&args.config)?, settings)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Check(args) => check(&args),
            Command::Certs(args) => portcullis::identity::certs::cli::run(args).await,
            Command::Httpbin(args) => portcullis::backend::httpbin::cli::run(args).await,
            Command::Kernel(args) => portcullis::kernel::cli::run(args),
        }
    })
}

fn check(args: &ConfigArgs) -> Result<()> {
    let snapshot = load(args)?;
    println!(
        "configuration OK: {} listener(s), {} virtual service(s), {} credential(s), {} authorization policies",
        snapshot.listeners.len(),
        snapshot.routes.virtual_hosts.len(),
        snapshot.credentials.len(),
        snapshot.resources.authorization_policies.len(),
    );
    for l in &snapshot.listeners {
        for s in &l.servers {
            let hosts: Vec<String> = s.hosts.iter().map(ToString::to_string).collect();
            let tls = match &s.tls {
                None => "plain HTTP".to_owned(),
                Some(config::model::ServerTls::Passthrough) => "TLS PASSTHROUGH".to_owned(),
                Some(config::model::ServerTls::Terminate {
                    mode,
                    credential_name,
                    ..
                }) => {
                    format!("TLS {mode:?} with credential {credential_name}")
                }
            };
            println!(
                "  port {} ({}): {} hosts [{}], {tls}",
                l.port,
                s.port_name,
                s.gateway,
                hosts.join(", ")
            );
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> Result<()> {
    let snapshot = load(&args.config)?;
    let gateway = Gateway::new(snapshot);
    let listeners = proxy::bind_listeners(&gateway, args.bind, args.port_offset)?;
    if listeners.is_empty() {
        anyhow::bail!("the configuration declares no Gateway server for this gateway's labels: nothing to listen on");
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "portcullis started");
    proxy::serve(gateway, listeners, shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
