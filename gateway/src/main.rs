//! `portcullis`: the daemon and its command-line tools.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use portcullis::admin::graph::prometheus::PrometheusUrl;
use portcullis::admin::Admin;
use portcullis::config::{self, Settings};
use portcullis::mesh::{self, KernelSync, MeshOptions};
use portcullis::policy::explain::{explain, ExplainRequest};
use portcullis::proxy::inbound::Inbound;
use portcullis::proxy::limits::{parse_size, Deadline, Limits};
use portcullis::proxy::outbound::Outbound;
use portcullis::proxy::telemetry::access_log::{AccessLog, AccessLogFormat, AccessLogTarget};
use portcullis::proxy::{self, Drain, Gateway, Ingress};
use portcullis::reconcile::{Reconciler, SnapshotBus};
use portcullis::snapshot::{self, Snapshot};

/// A service-mesh security gateway that enforces mutual TLS with help from the Linux kernel.
///
/// Portcullis reads Istio resources (Gateway, VirtualService, ServiceEntry, WorkloadEntry,
/// AuthorizationPolicy, PeerAuthentication, Secret) from YAML files and serves them:
///
/// - as an ingress gateway: TLS termination (MUTUAL, SIMPLE, PASSTHROUGH) with SPIFFE client
///   identities and AuthorizationPolicy in front of your upstreams (`run -c policies/`);
///
/// - as a mesh node (`run --mesh-credential NAME`): eBPF programs steer the workload's ports
///   to a rustls terminator and reset plaintext in the kernel under STRICT, and capture the
///   workload's outbound connections to upgrade them to mutual TLS (`--capture-cgroup`).
///
/// Metrics, health, config dump and a mesh graph are on the admin listener (127.0.0.1:15000).
#[derive(Parser)]
#[command(name = "portcullis", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr. The level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PORTCULLIS_LOG_FORMAT")]
    log_format: LogFormat,
    /// Worker threads that serve connections (Envoy's --concurrency). Default: the CPUs this
    /// process may run on, i.e. its CPU affinity (`taskset`, cpusets) and cgroup CPU quota, not
    /// the machine's count, so `taskset -c 0 portcullis run …` gets one worker. More workers
    /// than those CPUs only adds context switches.
    #[arg(long, global = true, value_name = "N", value_parser = parse_workers)]
    workers: Option<NonZeroUsize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// Remove the kernel programs: detach every link and delete every pin (same as
    /// `portcullis kernel uninstall`). STRICT ports are open to plaintext afterwards.
    Uninstall(portcullis::kernel::cli::UninstallArgs),
    /// Show which AuthorizationPolicy allows or denies a request, and why.
    ///
    /// Compiles the configuration exactly as `run` does and evaluates the described request
    /// with the same code the daemon's 403 path uses, after the same path normalization
    /// (--path-normalization). Prints ALLOW or DENY, the policy and rule index that decided
    /// (or, when no ALLOW policy matched, every ALLOW policy tried), the normalized path, and
    /// the policies that apply to this gateway; or REFUSED when the daemon would answer 400
    /// to the path before asking any policy.
    ///
    /// Exit status: 0 when the request is allowed, 1 when it is denied or refused, 2 on a
    /// usage or configuration error.
    Explain(ExplainArgs),
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// A YAML file or a directory of them (repeatable). Multi-document files are fine.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE|DIR",
        required_unless_present = "files"
    )]
    config: Vec<PathBuf>,
    /// More configuration files or directories, as plain arguments (`portcullis check policies/`).
    #[arg(value_name = "FILE|DIR")]
    files: Vec<PathBuf>,
    /// Directory holding credentials as `<credentialName>/{tls.crt,tls.key,ca.crt}` (repeatable).
    /// Secrets in the configuration are looked up first.
    #[arg(long = "credentials", value_name = "DIR")]
    credentials: Vec<PathBuf>,
    /// This gateway's labels, matched by `Gateway.spec.selector` and policy selectors.
    #[arg(long = "label", value_name = "KEY=VALUE", default_value = "istio=ingressgateway", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The namespace this gateway runs in. Secrets are read from this namespace only.
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// Istio's root namespace: policies there apply to every workload.
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    /// Run the mesh terminator for this node's workload (described by a WorkloadEntry), with
    /// the credential of this name as its identity and its `ca.crt` as the mesh CA.
    #[arg(long, value_name = "NAME")]
    mesh_credential: Option<String>,
    /// This node's own WorkloadEntry (`name` or `namespace/name`) when the configuration
    /// describes several workloads; the others are mesh destinations.
    #[arg(long, value_name = "NAME")]
    workload: Option<String>,
    /// SPIFFE trust domain of workload identities. The mesh side refuses peers of any other.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// How request paths are normalized before routing and authorization, by Istio's
    /// `meshConfig.pathNormalization` names: NONE, BASE, MERGE_SLASHES or
    /// DECODE_AND_MERGE_SLASHES. The upstream receives the normalized path. Istio's default
    /// is BASE; ours, MERGE_SLASHES, also merges `//`. In every mode but NONE and
    /// DECODE_AND_MERGE_SLASHES an encoded slash (%2F, %5C) is refused with 400.
    #[arg(long, value_name = "MODE", default_value = "MERGE_SLASHES")]
    path_normalization: portcullis::policy::path::PathNormalization,
    /// Another trust domain whose workloads the mesh side accepts (repeatable; Istio's
    /// `trustDomainAliases`).
    #[arg(long = "trust-domain-alias", value_name = "DOMAIN")]
    trust_domain_aliases: Vec<String>,
    /// Inbound ports of this node left outside the mesh whatever PeerAuthentication says
    /// (comma-separated; Istio's `excludeInboundPorts`): never steered to the terminator nor
    /// reset by the kernel, so plaintext reaches them. For a VM's own SSH, say; every port
    /// excluded is one STRICT does not protect.
    #[arg(long, value_name = "PORT,...", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    exclude_inbound_ports: Vec<u16>,
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
    /// Admin listener (metrics, health, config dump) as ADDR:PORT, or `off`. Keep it on
    /// loopback: it is unauthenticated.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:15000", value_parser = parse_admin)]
    admin: AdminAddr,
    /// Where the access log goes: `stderr`, `stdout`, `off`, or a file path (appended to).
    #[arg(long, value_name = "stderr|stdout|off|PATH", default_value = "stderr")]
    access_log: AccessLogTarget,
    /// Access log line format.
    #[arg(long, value_enum, default_value_t = AccessLogFormat::Text)]
    access_log_format: AccessLogFormat,
    /// A Prometheus that scrapes every node (`http://HOST:PORT`): the admin listener's
    /// `/graph` then shows the whole mesh from it, as Kiali does, instead of this daemon's
    /// own traffic.
    #[arg(long, value_name = "URL")]
    prometheus: Option<PrometheusUrl>,
    #[command(flatten)]
    mesh: MeshArgs,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Deadlines and caps (README: "Deadlines and caps"). Durations: `10s`, `500ms`, `2m`; `0` or
/// `off` turns a deadline off. Each one that fires is logged and counted in
/// `portcullis_limits_total{reason}`.
#[derive(clap::Args)]
#[command(next_help_heading = "Deadlines and caps")]
struct LimitArgs {
    /// The whole TLS handshake, ClientHello included (ingress and mesh terminator).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    tls_handshake_timeout: Deadline,
    /// HTTP/1 request headers must be complete this long after their first byte.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    header_read_timeout: Deadline,
    /// Close a connection with no request in flight for this long (HTTP/1 keep-alive and
    /// HTTP/2).
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    idle_timeout: Deadline,
    /// HTTP/2 PING interval; a PING not answered within 20s closes the connection.
    #[arg(
        long = "http2-keepalive",
        value_name = "DURATION",
        default_value = "60s"
    )]
    http2_keepalive: Deadline,
    /// Close connections gracefully (GOAWAY / `Connection: close`) at this age.
    #[arg(long, value_name = "DURATION", default_value = "off")]
    max_connection_age: Deadline,
    /// Upstream TCP connect (then 503, flag UF).
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    upstream_connect_timeout: Deadline,
    /// Request header bytes: HTTP/1 → 431; HTTP/2 → SETTINGS_MAX_HEADER_LIST_SIZE.
    #[arg(long, value_name = "SIZE", default_value = "60KiB", value_parser = parse_size)]
    max_request_headers_size: usize,
    /// Request header count; over it → 431.
    #[arg(long, value_name = "N", default_value_t = 100)]
    max_request_headers: usize,
    /// HTTP/2 streams open at once per connection.
    #[arg(long, value_name = "N", default_value_t = 100)]
    http2_max_concurrent_streams: u32,
    /// Downstream connections open at once, all listeners together; over it a new
    /// connection is closed at once. Default: (RLIMIT_NOFILE, raised to its hard limit at
    /// start, minus 64) × 0.9.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Connections open at once from one client IP address.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_connections_per_source: usize,
    /// Requests in flight to one upstream endpoint; over it → 503, flag UO.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    upstream_max_connections: usize,
    /// On SIGTERM/SIGINT: how long in-flight requests may finish before exit (a second
    /// signal exits at once).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = proxy::limits::parse_duration)]
    drain_timeout: std::time::Duration,
}

impl LimitArgs {
    /// The limits, with the connection cap derived from `nofile` unless given.
    fn resolve(&self, nofile: u64) -> Limits {
        Limits {
            tls_handshake_timeout: self.tls_handshake_timeout.0,
            header_read_timeout: self.header_read_timeout.0,
            idle_timeout: self.idle_timeout.0,
            http2_keepalive: self.http2_keepalive.0,
            max_connection_age: self.max_connection_age.0,
            upstream_connect_timeout: self.upstream_connect_timeout.0,
            max_request_headers_size: self.max_request_headers_size,
            max_request_headers: self.max_request_headers,
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
            max_connections: self
                .max_connections
                .unwrap_or_else(|| Limits::derived_max_connections(nofile)),
            max_connections_per_source: self.max_connections_per_source,
            upstream_max_connections: self.upstream_max_connections,
            drain_timeout: self.drain_timeout,
        }
    }
}

/// The mesh side (with --mesh-credential): terminator and kernel programs.
#[derive(clap::Args)]
struct MeshArgs {
    /// Where the terminator listens; the kernel steers workload ports to this socket. `[::]`
    /// serves IPv4 and IPv6.
    #[arg(long, default_value = "[::]:15006")]
    terminator: SocketAddr,
    /// Interface whose ingress gets the in-kernel STRICT reset (repeatable). Without it, every
    /// interface of the namespace gets it (loopback included), with an address or not: fail
    /// closed by default.
    #[arg(long = "iface", value_name = "NAME")]
    interfaces: Vec<String>,
    /// Do not load the kernel programs (no steering, no in-kernel reset): the terminator then
    /// serves only clients that dial it directly.
    #[arg(long)]
    no_kernel: bool,
    /// bpffs directory where programs, maps and links are pinned (one per network namespace).
    #[arg(long, env = "PORTCULLIS_PIN_DIR", default_value = portcullis::kernel::bpffs::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// The local workload's cgroup v2 directory: its plaintext connections to mesh
    /// destinations are captured in the kernel and upgraded to mutual TLS by this node.
    #[arg(long, value_name = "DIR")]
    capture_cgroup: Option<PathBuf>,
    /// Log the kernel programs' debug lines (steer, strict) into this log. Takes effect when
    /// the programs are loaded fresh (after `portcullis uninstall`).
    #[arg(long)]
    kernel_log: bool,
    /// Where captured connections land (the originator's listener).
    #[arg(long, default_value = "127.0.0.1:15001")]
    outbound: std::net::SocketAddrV4,
    /// How often the configuration files are checked for changes, in milliseconds (0: never).
    #[arg(long, default_value_t = 250)]
    reload_ms: u64,
}

/// `--workers`: at least one, with an error that says why rather than clap's range message.
fn parse_workers(s: &str) -> Result<NonZeroUsize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of worker threads"))?;
    NonZeroUsize::new(n).ok_or_else(|| {
        "0 workers would serve nothing: give at least 1 (default: the CPUs this process may run on)"
            .to_owned()
    })
}

/// The worker count when `--workers` is absent: `available_parallelism` reads the affinity
/// mask and the cgroup quota, which is what a pinned or containerized daemon may use.
fn default_workers() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// `--admin`: an address, or `None` for `off`.
#[derive(Clone, Copy, Debug)]
struct AdminAddr(Option<SocketAddr>);

fn parse_admin(s: &str) -> Result<AdminAddr, String> {
    if s == "off" {
        return Ok(AdminAddr(None));
    }
    s.parse()
        .map(|a| AdminAddr(Some(a)))
        .map_err(|e| format!("{s:?} is neither `off` nor ADDR:PORT: {e}"))
}

#[derive(clap::Args)]
struct ExplainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The client's SPIFFE id (`spiffe://test.client` or `test.client`); omit for plaintext.
    #[arg(long)]
    principal: Option<String>,
    /// The client's namespace (the daemon reads it from the SPIFFE id).
    #[arg(long)]
    source_namespace: Option<String>,
    /// The client address the gateway sees.
    #[arg(long, default_value = "127.0.0.1")]
    source_ip: IpAddr,
    /// The original client (x-forwarded-for), when it differs from --source-ip.
    #[arg(long)]
    remote_ip: Option<IpAddr>,
    #[arg(long, default_value = "GET")]
    method: String,
    /// The request's :authority / Host, with the port when the client sends one.
    #[arg(long)]
    host: String,
    #[arg(long, default_value = "/")]
    path: String,
    /// The Gateway port the request arrives on (before --port-offset).
    #[arg(long, default_value_t = 443)]
    port: u16,
    /// A request header (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_label)]
    headers: Vec<(String, String)>,
    /// The TLS server name; defaults to --host without its port.
    #[arg(long)]
    sni: Option<String>,
}

impl ConfigArgs {
    /// Every configuration path, `-c` ones first.
    fn paths(&self) -> Vec<PathBuf> {
        self.config.iter().chain(&self.files).cloned().collect()
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// `kernel_log`: the kernel programs' debug lines (targets `portcullis::strict`,
/// `portcullis::steer`) are shown unless RUST_LOG says otherwise.
fn init_logging(format: LogFormat, kernel_log: bool) {
    let default = if kernel_log {
        "info,portcullis::strict=debug,portcullis::steer=debug"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
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

fn load(args: &ConfigArgs) -> Result<Snapshot, config::ConfigErrors> {
    let settings = Settings {
        root_namespace: args.root_namespace.clone(),
        gateway_labels: args.labels.iter().cloned().collect(),
        gateway_namespace: args.namespace.clone(),
        credential_dirs: args.credentials.clone(),
        mesh_credential: args.mesh_credential.clone(),
        local_workload: args.workload.clone(),
        trust_domain: args.trust_domain.clone(),
        path_normalization: args.path_normalization,
        trust_domain_aliases: args.trust_domain_aliases.clone(),
        exclude_inbound_ports: args.exclude_inbound_ports.clone(),
    };
    snapshot::compile(config::load_paths(&args.paths())?, settings)
}

/// Errors are printed as a cause chain (`error: …: …`), never as a backtrace: what an operator
/// needs is the file, line and field, which the messages carry.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let kernel_log = matches!(&cli.command, Command::Run(run) if run.mesh.kernel_log);
    init_logging(cli.log_format, kernel_log);
    match run_command(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_command(cli: Cli) -> Result<()> {
    let workers = cli.workers.unwrap_or_else(default_workers);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.get())
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run(args, workers).await,
            Command::Check(args) => check(&args),
            Command::Certs(args) => portcullis::identity::certs::cli::run(args).await,
            Command::Httpbin(args) => portcullis::backend::httpbin::cli::run(args).await,
            Command::Kernel(args) => portcullis::kernel::cli::run(args).await,
            Command::Uninstall(pin) => {
                portcullis::kernel::cli::run(portcullis::kernel::cli::KernelArgs {
                    command: portcullis::kernel::cli::KernelCommand::Uninstall(pin),
                })
                .await
            }
            // Exit status 1 means "denied", so errors take 2, like usage errors.
            Command::Explain(args) => explain_cmd(args).or_else(|e| {
                eprintln!("error: {e:#}");
                std::process::exit(2)
            }),
        }
    })
}

fn check(args: &ConfigArgs) -> Result<()> {
    let snapshot = load(args)?;
    for w in &snapshot.warnings {
        println!("{w}");
    }
    println!(
        "configuration OK: {} listener(s), {} virtual service(s), {} credential(s), {} authorization policies",
        snapshot.listeners.len(),
        snapshot.routes.virtual_hosts.len(),
        snapshot.credentials.len(),
        snapshot.resources.authorization_policies.len(),
    );
    println!(
        "  path normalization: {}",
        snapshot.settings.path_normalization
    );
    for l in &snapshot.listeners {
        for s in &l.servers {
            let hosts: Vec<String> = s.hosts.iter().map(ToString::to_string).collect();
            let tls = match &s.tls {
                None => "plain HTTP".to_owned(),
                Some(snapshot::model::ServerTls::Passthrough) => "TLS PASSTHROUGH".to_owned(),
                Some(snapshot::model::ServerTls::Terminate {
                    mode,
                    credential_name,
                    client_checks,
                    ..
                }) => {
                    let checks = client_checks.describe();
                    let checks = if checks.is_empty() {
                        checks
                    } else {
                        format!(", clients checked for {checks}")
                    };
                    format!("TLS {mode:?} with credential {credential_name}{checks}")
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

fn explain_cmd(args: ExplainArgs) -> Result<()> {
    let snapshot = load(&args.config)?;
    // As a client would send it: the canonical host (lowercase, no trailing dot), no port.
    let sni = args.sni.or_else(|| {
        let host = config::hosts::Authority::parse(&args.host)
            .map(|a| a.host().to_owned())
            .unwrap_or_else(|_| config::hosts::authority_host(&args.host));
        (!host.is_empty()).then_some(host)
    });
    let req = ExplainRequest {
        principal: args.principal,
        source_namespace: args.source_namespace,
        source_ip: args.source_ip,
        remote_ip: args.remote_ip,
        method: args.method,
        host: args.host,
        path: args.path,
        path_normalization: snapshot.settings.path_normalization,
        port: args.port,
        headers: args.headers,
        sni,
    };
    let explanation = explain(&snapshot.authz, &req)?;
    print!("{explanation}");
    // Rules of the policies in play that can never match (what `check` warns about).
    let in_play: Vec<String> = explanation
        .applicable
        .iter()
        .map(|(_, p)| format!("AuthorizationPolicy {}/{}", p.namespace, p.name))
        .collect();
    for w in &snapshot.warnings {
        if w.0.resource.as_ref().is_some_and(|r| in_play.contains(r)) {
            println!("note: {w}");
        }
    }
    if !explanation.is_allowed() {
        std::process::exit(1);
    }
    Ok(())
}

/// The ports `run` binds on the mesh side and for admin: never a destination.
fn own_ports(args: &RunArgs) -> Vec<u16> {
    [
        Some(args.mesh.terminator.port()),
        Some(args.mesh.outbound.port()),
        args.admin.0.map(|addr| addr.port()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The exceptions to a workload-wide STRICT: the ports `run` binds on an address other
/// clients can reach (the terminator must not be steered to itself). Ports bound on loopback
/// only (admin and outbound by default) need no exception — loopback destinations arriving on
/// `lo` are never judged — and making one would open that port, on every address, to any app
/// that binds it.
fn exempt_ports(args: &RunArgs) -> Vec<u16> {
    [
        Some(args.mesh.terminator),
        Some(SocketAddr::V4(args.mesh.outbound)),
        args.admin.0,
    ]
    .into_iter()
    .flatten()
    // `::ffff:127.0.0.1` is loopback too.
    .filter(|addr| !addr.ip().to_canonical().is_loopback())
    .map(|addr| addr.port())
    .collect()
}

async fn run(args: RunArgs, workers: NonZeroUsize) -> Result<()> {
    // Before anything opens a descriptor: the connection cap, not EMFILE, should stop a flood.
    let nofile = proxy::limits::raise_nofile_limit().context("reading RLIMIT_NOFILE")?;
    let limits = args.limits.resolve(nofile);
    tracing::info!(?limits, nofile, "deadlines and caps");
    // Credentials are part of the snapshot: a renewed certificate is a reload too. The files
    // are fingerprinted before they are read, so an edit made during startup is not missed.
    let watched: Vec<std::path::PathBuf> = args
        .config
        .paths()
        .into_iter()
        .chain(args.config.credentials.clone())
        .collect();
    let seen = portcullis::config::watch::fingerprint(&watched);
    let snapshot = load(&args.config)?;
    let access_log = AccessLog::open(&args.access_log, args.access_log_format)
        .with_context(|| format!("opening the access log {:?}", args.access_log))?;
    let mesh_enabled = snapshot.mesh.is_some();
    let mesh = if mesh_enabled {
        let opts = MeshOptions {
            terminator: args.mesh.terminator,
            kernel: !args.mesh.no_kernel,
            interfaces: args.mesh.interfaces.clone(),
            pin_dir: args.mesh.pin_dir.clone(),
            capture_cgroup: args.mesh.capture_cgroup.clone(),
            outbound: args.mesh.outbound,
            kernel_log: args.mesh.kernel_log,
            own_ports: exempt_ports(&args),
        };
        Some(mesh::start(&snapshot, &opts)?)
    } else {
        None
    };
    let bus = SnapshotBus::new(snapshot);
    let gateway = Gateway::on_bus(bus.clone(), access_log, limits);
    if mesh.as_ref().is_some_and(|m| m.maps.is_some()) {
        let _ = gateway.kernel_pins.set(args.mesh.pin_dir.clone());
    }
    let drain = Drain::new();
    let mut tasks = Vec::new();
    let admin = match args.admin.0 {
        Some(addr) => {
            let admin = Admin::new(gateway.clone(), args.prometheus.clone());
            let server = admin.clone().bind(addr).await.with_context(|| {
                format!("cannot listen on the admin address {addr} (--admin off disables it)")
            })?;
            tracing::info!(local = %server.local_addr()?, "admin listening");
            tasks.push(tokio::spawn(server.run(drain.signal())));
            Some((admin, addr.port()))
        }
        None => None,
    };
    let ingress = Ingress::new(gateway.clone(), args.bind, args.port_offset)?;
    if ingress.ports().is_empty() && !mesh_enabled {
        anyhow::bail!(
            "nothing to serve: the configuration declares no Gateway server for this gateway's labels, and --mesh-credential is not set"
        );
    }
    tasks.push(tokio::spawn(ingress.run(drain.signal())));
    if let Some(started) = mesh {
        // The daemon's own ports are never a destination (no request makes it call itself).
        let own = own_ports(&args);
        let inbound = Inbound::new(gateway.clone(), started.terminator).refusing(own.clone());
        tasks.push(tokio::spawn(inbound.run(drain.signal())));
        let capture = started.outbound.map(|(listener, capture)| {
            let lookup = Arc::new(mesh::KernelLookup(capture.clone()));
            let outbound = Outbound::new(gateway.clone(), listener, lookup).refusing(own.clone());
            tasks.push(tokio::spawn(outbound.run(drain.signal())));
            capture
        });
        let sync = KernelSync::new(started.maps, capture, true).with_own_ports(exempt_ports(&args));
        tokio::spawn(sync.run(bus.subscribe()));
    }
    if args.mesh.reload_ms > 0 {
        let config_args = args.config;
        let reconciler = Reconciler::new(
            watched,
            Box::new(move || load(&config_args)),
            std::time::Duration::from_millis(args.mesh.reload_ms),
            bus.clone(),
        )
        .since(seen);
        tokio::spawn(reconciler.run());
    }
    if let Some((admin, _)) = &admin {
        admin.mark_ready();
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        workers,
        "portcullis started"
    );
    let first = shutdown_signal().await;
    tracing::info!(signal = first.name(), drain = ?gateway.limits.drain_timeout, "draining: no new connections, open ones finish their requests");
    drain.start();
    let drained = async {
        for t in tasks {
            let _ = t.await;
        }
        gateway.conns.all_closed().await;
    };
    tokio::select! {
        r = tokio::time::timeout(gateway.limits.drain_timeout, drained) => {
            match r {
                Ok(()) => tracing::info!("drained: every connection closed"),
                Err(_) => tracing::warn!(open = gateway.conns.open(), "drain period over; closing what is left"),
            }
        }
        second = shutdown_signal() => {
            tracing::warn!(signal = second.name(), "second signal: exiting at once");
            std::process::exit(second.exit_code());
        }
    }
    Ok(())
}

/// SIGINT or SIGTERM.
#[derive(Clone, Copy, Debug)]
enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }

    /// The shell's convention: 128 + the signal number.
    fn exit_code(self) -> i32 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }
}

async fn shutdown_signal() -> Signal {
    use tokio::signal::unix::{signal, SignalKind};
    let wait = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = wait(SignalKind::interrupt()) => Signal::Interrupt,
        _ = wait(SignalKind::terminate()) => Signal::Terminate,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn workers_is_a_global_option_before_or_after_the_subcommand() {
        for argv in [
            &["portcullis", "--workers", "2", "check", "policies"][..],
            &["portcullis", "check", "policies", "--workers", "2"][..],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            assert_eq!(cli.workers.map(NonZeroUsize::get), Some(2), "{argv:?}");
        }
        let cli = Cli::try_parse_from(["portcullis", "check", "policies"]).unwrap();
        assert!(cli.workers.is_none());
    }

    #[test]
    fn zero_workers_is_refused_with_the_reason() {
        let err = match Cli::try_parse_from(["portcullis", "--workers", "0", "check", "p"]) {
            Ok(_) => panic!("--workers 0 was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("0 workers would serve nothing"), "{err}");
        assert!(parse_workers("two").is_err());
        assert!(parse_workers("-1").is_err());
        assert_eq!(parse_workers("3").map(NonZeroUsize::get), Ok(3));
    }

    #[test]
    fn the_default_follows_the_affinity_mask() {
        // SAFETY: sched_getaffinity writes the set passed, for this thread.
        let allowed = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
                0
            );
            libc::CPU_COUNT(&set) as usize
        };
        // A cgroup quota can only lower it.
        assert!(default_workers().get() <= allowed);
        assert!(default_workers().get() >= 1);
    }
}
