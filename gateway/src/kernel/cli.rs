//! `portcullis kernel …`: install, watch, switch and remove the kernel path by hand or from
//! a daemon. Wired into `main.rs` as `Kernel(kernel::cli::KernelArgs)`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use super::bpffs::{PinLayout, DEFAULT_PIN_DIR};
use super::capture::{attached_cgroups, install_capture, open_capture, CaptureOptions};
use super::loader::{install, open, status, uninstall, InstallOptions, Origin};
use super::maps::{KernelMaps, PortSetting};
use crate::config::{load_paths, ConfigError, ConfigErrors, Resources, Settings};
use crate::mesh::KernelSync;
use crate::policy::peer_auth::{PeerAuthMode, DEFAULT_ROOT_NAMESPACE};
use crate::reconcile::{Reconciler, SnapshotBus};
use crate::snapshot::mesh::workload_port_modes;
use crate::snapshot::model::DEFAULT_PORT;
use crate::snapshot::{compile, Snapshot};

/// The kernel path: sk_lookup steering, the STRICT plaintext reset, outbound capture.
#[derive(Debug, Args)]
pub struct KernelArgs {
    #[command(subcommand)]
    pub command: KernelCommand,
}

/// Subcommands of `portcullis kernel`.
#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Load (or adopt pinned) programs, attach them, set port modes, and exit. Enforcement
    /// stays after exit: the programs, maps and links are pinned.
    Attach(AttachArgs),
    /// Like `attach`, then stay running: PeerAuthentication from the config decides each
    /// workload port's mode, and edits to the config are applied to the maps within a second.
    Run(RunArgs),
    /// Change port modes in the pinned maps (no program reload).
    SetMode(SetModeArgs),
    /// Show what is attached, the port modes and the counters.
    Status(StatusArgs),
    /// Detach every link and remove every pin (outbound capture included).
    Uninstall(UninstallArgs),
    /// Outbound capture: a workload cgroup's plaintext connects to mesh destinations go to the
    /// outbound proxy (cgroup connect4 + sock_ops).
    Capture(CaptureArgs),
}

/// `capture`.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    #[command(subcommand)]
    pub command: CaptureCommand,
}

/// Subcommands of `portcullis kernel capture`.
#[derive(Debug, Subcommand)]
pub enum CaptureCommand {
    /// Load (or adopt pinned) the capture programs, attach them to a cgroup, make the mesh
    /// destinations exactly the `--dest` list, and exit. Capture stays: everything is pinned.
    Attach(CaptureAttachArgs),
    /// Show the outbound listener, the mesh destinations, the cgroups and the counter.
    Status(PinDirArg),
    /// Print the original destination of an accepted connection, by its peer address. The
    /// entry is consumed, as the proxy consumes it.
    OriginalDst(OriginalDstArgs),
}

/// `capture attach`.
#[derive(Debug, Args)]
pub struct CaptureAttachArgs {
    #[command(flatten)]
    pub pin: PinDirArg,
    /// The workload's cgroup v2 directory, e.g. /sys/fs/cgroup/unified/NAME.
    #[arg(long, value_name = "DIR")]
    pub cgroup: PathBuf,
    /// The outbound proxy's listener.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddrV4,
    /// A mesh destination `IP:PORT` whose connects are captured; repeatable.
    #[arg(long = "dest", value_name = "IP:PORT")]
    pub dests: Vec<SocketAddrV4>,
}

/// `capture original-dst`.
#[derive(Debug, Args)]
pub struct OriginalDstArgs {
    #[command(flatten)]
    pub pin: PinDirArg,
    /// The accepted connection's peer address (the client's source address and port).
    #[arg(value_name = "CLIENT")]
    pub client: SocketAddr,
}

/// The pin directory.
#[derive(Debug, Args)]
pub struct PinDirArg {
    /// Where programs, maps and links are pinned (one directory per network namespace).
    #[arg(long, env = "PORTCULLIS_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// `uninstall`.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub pins: PinDirArg,
    /// Remove the pins even when they serve another network namespace that is still alive.
    /// That ends STRICT there: its plaintext is no longer refused.
    #[arg(long)]
    pub force: bool,
}

/// Options shared by `attach` and `run`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub pin: PinDirArg,
    /// Interface whose ingress gets the STRICT classifier; repeatable. Without it, every
    /// interface of the namespace gets it (loopback included), with an address or not.
    #[arg(long = "iface", value_name = "NAME")]
    pub interfaces: Vec<String>,
    /// Port mode, `PORT=strict|permissive|disable`; repeatable. With `run --config` these
    /// override what the config says.
    #[arg(long = "port", value_name = "PORT=MODE")]
    pub ports: Vec<PortArg>,
    /// Mode of every port without a `--port` (or config) entry of its own, on the node's
    /// non-loopback addresses: `strict|permissive|disable`. With `run --config` it overrides
    /// the workload-wide PeerAuthentication.
    #[arg(long = "default", value_name = "MODE", value_parser = parse_mode)]
    pub default_mode: Option<PeerAuthMode>,
    /// Steer the configured ports to the terminator's listener (sk_lookup).
    #[arg(long)]
    pub steer: bool,
    /// Turn on aya-log lines from the kernel programs (takes effect on a fresh load).
    #[arg(long)]
    pub kernel_log: bool,
}

/// `run`: attach, then follow the config.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Istio YAML files or directories (WorkloadEntry, ServiceEntry, PeerAuthentication).
    #[arg(long = "config", value_name = "PATH")]
    pub config: Vec<PathBuf>,
    /// Istio's root namespace: a PeerAuthentication there without selector is mesh-wide.
    #[arg(long, default_value = DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
    /// How often the config is checked for changes.
    #[arg(long, default_value_t = 200)]
    pub poll_ms: u64,
    /// This node's own WorkloadEntry (`name` or `namespace/name`) when the configuration
    /// describes several (as `portcullis run --workload`).
    #[arg(long, value_name = "NAME")]
    pub workload: Option<String>,
    /// Inbound ports left outside the mesh whatever PeerAuthentication says (as `portcullis
    /// run --exclude-inbound-ports`, so both compute the same maps).
    #[arg(long, value_name = "PORT,...", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub exclude_inbound_ports: Vec<u16>,
}

/// `set-mode`.
#[derive(Debug, Args)]
pub struct SetModeArgs {
    #[command(flatten)]
    pub pin: PinDirArg,
    /// `PORT=strict|permissive|disable|remove`.
    #[arg(value_name = "PORT=MODE", required = true)]
    pub ports: Vec<PortArg>,
    /// Steer these ports to the terminator.
    #[arg(long)]
    pub steer: bool,
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pin: PinDirArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `PORT=MODE` on the command line; `None` mode means remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortArg {
    pub port: u16,
    pub mode: Option<PeerAuthMode>,
}

impl FromStr for PortArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, mode) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected PORT=MODE, e.g. 80=strict"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{port}` is not a TCP port"))?;
        let mode = match mode.to_ascii_lowercase().as_str() {
            "remove" => None,
            other => Some(
                PeerAuthMode::parse(&other.to_ascii_uppercase())?
                    .ok_or_else(|| format!("`{mode}`: UNSET is not a mode for a port"))?,
            ),
        };
        Ok(Self { port, mode })
    }
}

fn parse_mode(s: &str) -> Result<PeerAuthMode, String> {
    PeerAuthMode::parse(&s.to_ascii_uppercase())?
        .ok_or_else(|| format!("`{s}`: UNSET is not a mode here"))
}

/// Runs a `portcullis kernel` subcommand.
pub async fn run(args: KernelArgs) -> Result<()> {
    match args.command {
        KernelCommand::Attach(a) => {
            if let Err(why) = default_is_judged(a.default_mode, a.steer) {
                bail!("`--default strict`: {why}");
            }
            let mut maps = attach(&a)?;
            let mut desired = from_flags(&a.ports, a.steer);
            desired.extend(default_from_flag(&a));
            apply(&mut maps, &desired)?;
            Ok(())
        }
        KernelCommand::Run(r) => run_daemon(r).await,
        KernelCommand::SetMode(s) => {
            let mut maps = open(&s.pin.pin_dir)?;
            for p in &s.ports {
                match p.mode {
                    Some(mode) => maps.set_port(
                        p.port,
                        PortSetting {
                            mode,
                            steer: s.steer,
                        },
                    )?,
                    None => maps.remove_port(p.port)?,
                }
            }
            Ok(())
        }
        KernelCommand::Status(s) => {
            let st = status(&s.pin.pin_dir)?;
            if s.json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
            Ok(())
        }
        KernelCommand::Capture(c) => run_capture(c.command),
        KernelCommand::Uninstall(u) => {
            let p = &u.pins;
            let report = uninstall(&p.pin_dir, u.force)?;
            println!(
                "uninstalled {}: {} links detached, {} pins removed",
                p.pin_dir.display(),
                report.detached.len(),
                report.removed.len()
            );
            Ok(())
        }
    }
}

fn run_capture(command: CaptureCommand) -> Result<()> {
    match command {
        CaptureCommand::Attach(a) => {
            let mut capture = install_capture(&CaptureOptions {
                pin_dir: a.pin.pin_dir.clone(),
                cgroup: a.cgroup.clone(),
                outbound: a.outbound,
            })?;
            capture.set_destinations(&a.dests)?;
            let how = match capture.origin() {
                Origin::Loaded => "loaded and pinned",
                Origin::Adopted => "adopted pinned",
            };
            let dests: Vec<String> = a.dests.iter().map(ToString::to_string).collect();
            eprintln!(
                "portcullis kernel capture: {how} programs under {}; cgroup {} sends [{}] to {}",
                a.pin.pin_dir.display(),
                a.cgroup.display(),
                dests.join(", "),
                a.outbound
            );
            Ok(())
        }
        CaptureCommand::Status(p) => {
            let capture = open_capture(&p.pin_dir)?;
            let outbound = capture
                .outbound()?
                .map_or_else(|| "not set".to_owned(), |a| a.to_string());
            let dests: Vec<String> = capture
                .destinations()?
                .iter()
                .map(ToString::to_string)
                .collect();
            let cgroups: Vec<String> = attached_cgroups(&p.pin_dir)
                .iter()
                .map(ToString::to_string)
                .collect();
            println!("outbound:     {outbound}");
            println!("destinations: [{}]", dests.join(", "));
            println!("cgroup ids:   [{}]", cgroups.join(", "));
            println!("captured:     {}", capture.captured()?);
            Ok(())
        }
        CaptureCommand::OriginalDst(o) => {
            let capture = open_capture(&o.pin.pin_dir)?;
            match capture.original_destination(o.client)? {
                Some(dest) => {
                    println!("{dest}");
                    Ok(())
                }
                None => bail!("no original destination recorded for {}", o.client),
            }
        }
    }
}

fn attach(a: &AttachArgs) -> Result<KernelMaps> {
    let installed = install(&InstallOptions {
        pin_dir: a.pin.pin_dir.clone(),
        interfaces: a.interfaces.clone(),
        kernel_log: a.kernel_log,
    })?;
    let how = match installed.origin {
        Origin::Loaded => "loaded and pinned",
        Origin::Adopted => "adopted pinned",
    };
    eprintln!(
        "portcullis kernel: {how} programs under {}; tc ingress newly attached on [{}]",
        installed.pins.root().display(),
        installed.newly_attached.join(", ")
    );
    Ok(installed.maps)
}

fn from_flags(ports: &[PortArg], steer: bool) -> BTreeMap<u16, PortSetting> {
    ports
        .iter()
        .filter_map(|p| {
            Some((
                p.port,
                PortSetting {
                    mode: p.mode?,
                    steer,
                },
            ))
        })
        .collect()
}

/// `--default MODE` as the map's default entry (key 0).
fn default_from_flag(a: &AttachArgs) -> Option<(u16, PortSetting)> {
    a.default_mode.map(|mode| {
        (
            DEFAULT_PORT,
            PortSetting {
                mode,
                steer: a.steer,
            },
        )
    })
}

fn apply(maps: &mut KernelMaps, desired: &BTreeMap<u16, PortSetting>) -> Result<()> {
    let changed = maps.sync_ports(desired)?;
    if changed > 0 {
        let list: Vec<String> = desired
            .iter()
            .map(|(port, s)| match *port {
                DEFAULT_PORT => format!("default={}", s.mode),
                port => format!("{port}={}", s.mode),
            })
            .collect();
        eprintln!("portcullis kernel: port modes now [{}]", list.join(", "));
    }
    Ok(())
}

/// The snapshot `kernel run` follows: the same compile as `portcullis run`, with no Gateway
/// listeners (no gateway labels), checked for the workload's port modes so that a config
/// that would leave them undecided is refused like any bad edit.
fn compile_for_kernel(r: &RunArgs) -> Result<Snapshot, ConfigErrors> {
    let settings = Settings {
        root_namespace: r.root_namespace.clone(),
        gateway_labels: BTreeMap::new(),
        local_workload: r.workload.clone(),
        exclude_inbound_ports: r.exclude_inbound_ports.clone(),
        ..Settings::default()
    };
    let resources = if r.config.is_empty() {
        Resources::default()
    } else {
        load_paths(&r.config)?
    };
    let snapshot = compile(resources, settings)?;
    let modes =
        workload_port_modes(&snapshot.resources, &snapshot.settings).map_err(ConfigErrors)?;
    // `--default` wins over the configuration's workload-wide mode (checked at start).
    if r.attach.default_mode.is_none() {
        if let Err(why) = default_is_judged(modes.get(&DEFAULT_PORT).copied(), r.attach.steer) {
            return Err(ConfigErrors(vec![ConfigError::file(
                "--steer",
                format!("the workload-wide STRICT PeerAuthentication: {why}"),
            )]));
        }
    }
    Ok(snapshot)
}

/// Refuses a STRICT default without steering.
///
/// The tc check leaves the node's ephemeral port range (`net.ipv4.ip_local_port_range`,
/// 32768–60999 by default) out of the default, because replies to the node's own outbound
/// connections arrive there and their first payload is a server's, not a ClientHello: judging
/// them would reset every outgoing TLS connection the node makes. Only steering covers those
/// ports (a connection steered to the terminator never reaches the app unjudged), so a STRICT
/// default without `--steer` would silently leave ~28000 ports plaintext-open. Judging them in
/// tc instead needs to tell an accepted socket from a connected one, which `bpf_tcp_sock` does
/// not say; probing for a listener on the local port (a second lookup with a tuple no
/// established socket matches) could, but rests on connect() never picking a port a listener
/// holds, which `SO_REUSEADDR` binds break. Refusing is the sound answer for now. A port in
/// that range named with `--port PORT=strict` has its own entry and is judged.
fn default_is_judged(default: Option<PeerAuthMode>, steer: bool) -> Result<(), String> {
    if default == Some(PeerAuthMode::Strict) && !steer {
        let (low, high) = super::maps::ephemeral_range();
        return Err(format!(
            "a STRICT default needs --steer: the kernel's plaintext check skips this node's \
             ephemeral port range ({low}-{high}), where replies to its own connections arrive, \
             and only steering to the terminator covers it; add --steer (with the terminator \
             running: `portcullis run --mesh-credential`), or make the default PERMISSIVE and \
             name STRICT ports with --port PORT=strict"
        ));
    }
    Ok(())
}

/// `kernel run`: the daemon's reconciler with the kernel maps as its only subscriber.
async fn run_daemon(r: RunArgs) -> Result<()> {
    if r.config.is_empty() && r.attach.ports.is_empty() && r.attach.default_mode.is_none() {
        bail!("`kernel run` needs --config (Istio YAML), --port PORT=MODE or --default MODE");
    }
    if let Err(why) = default_is_judged(r.attach.default_mode, r.attach.steer) {
        bail!("`--default strict`: {why}");
    }
    let initial = compile_for_kernel(&r).map_err(|e| anyhow::anyhow!("{e}"))?;
    let maps = attach(&r.attach)?;
    super::interfaces::spawn_watcher(
        PinLayout::new(&r.attach.pin.pin_dir),
        r.attach.interfaces.clone(),
    )?;
    let mut sync = KernelSync::new(Some(maps), None, r.attach.steer).with_overrides(
        from_flags(&r.attach.ports, r.attach.steer)
            .into_iter()
            .chain(default_from_flag(&r.attach))
            .collect(),
    );
    let changed = sync.apply(&initial)?;
    eprintln!(
        "portcullis kernel: port modes now [{}] ({changed} changed)",
        sync.desired(&initial)
            .iter()
            .map(|(port, s)| format!("{port}={}", s.mode))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let bus = SnapshotBus::new(initial);
    let paths = r.config.clone();
    let pin_dir = r.attach.pin.pin_dir.clone();
    let poll = Duration::from_millis(r.poll_ms.max(10));
    let reconciler = Reconciler::new(
        paths,
        Box::new(move || compile_for_kernel(&r)),
        poll,
        bus.clone(),
    );
    tokio::spawn(sync.run(bus.subscribe()));
    tokio::spawn(reconciler.run());
    let mut every = tokio::time::interval(Duration::from_secs(30));
    every.tick().await;
    loop {
        every.tick().await;
        if let Ok(st) = status(&pin_dir) {
            eprintln!("portcullis kernel: counters {:?}", st.counters.total);
        }
    }
}

fn print_status(st: &super::loader::Status) {
    println!("pin dir:   {}", st.pin_dir.display());
    println!(
        "steer:     {}",
        if st.steer_attached {
            "attached (sk_lookup on this netns)"
        } else {
            "not attached"
        }
    );
    println!("tc ingress: [{}]", st.interfaces.join(", "));
    let ids: Vec<String> = st
        .program_ids
        .iter()
        .map(|(name, id)| format!("{name}={id}"))
        .collect();
    println!("programs:  {}", ids.join(" "));
    println!(
        "default:   {}{}",
        st.default.mode,
        if st.default.steer { ", steered" } else { "" }
    );
    for (port, s) in &st.ports {
        println!(
            "port {port}: {}{}",
            s.mode,
            if s.steer { ", steered" } else { "" }
        );
    }
    let t = &st.counters.total;
    println!(
        "counters:  steered={} reset={} passed={} dropped={}",
        t.steered, t.reset, t.passed, t.dropped
    );
    for (port, c) in &st.counters.per_port {
        println!(
            "  port {port}: steered={} reset={} passed={} dropped={}",
            c.steered, c.reset, c.passed, c.dropped
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_args() {
        assert_eq!(
            "80=strict".parse::<PortArg>(),
            Ok(PortArg {
                port: 80,
                mode: Some(PeerAuthMode::Strict)
            })
        );
        assert_eq!(
            "8080=PERMISSIVE".parse::<PortArg>().map(|p| p.mode),
            Ok(Some(PeerAuthMode::Permissive))
        );
        assert_eq!("80=remove".parse::<PortArg>().map(|p| p.mode), Ok(None));
        assert!("80".parse::<PortArg>().is_err());
        assert!("0=strict".parse::<PortArg>().is_err());
        assert!("80=unset".parse::<PortArg>().is_err());
        assert!("80=on".parse::<PortArg>().is_err());
    }

    #[test]
    fn a_strict_default_needs_steering() {
        let why = default_is_judged(Some(PeerAuthMode::Strict), false)
            .err()
            .unwrap_or_default();
        assert!(
            why.contains("needs --steer") && why.contains("ephemeral"),
            "{why}"
        );
        assert!(default_is_judged(Some(PeerAuthMode::Strict), true).is_ok());
        assert!(default_is_judged(Some(PeerAuthMode::Permissive), false).is_ok());
        assert!(default_is_judged(None, false).is_ok());
    }
}
