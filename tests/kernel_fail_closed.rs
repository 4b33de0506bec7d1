//! Issue 13: ways to start the kernel path that used to leave STRICT ports unprotected without
//! saying so, each now refused or covered (as root, in namespaces made here):
//! - a daemon under `ip netns exec`, whose pins would live on a private bpffs that dies with it;
//! - a STRICT default without steering, which leaves the ephemeral port range unjudged;
//! - one pin directory shared by two network namespaces;
//! - interfaces added, or deleted and re-created, after the daemon started (tc-only mode).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use e2e::hello::HelloApp;
use e2e::mesh::Pins;
use e2e::netns::{ip, Topology};
use e2e::process::Daemon;
use e2e::{is_root, portcullis_bin, skip_not_root};

/// A workload under mesh-wide STRICT: the workload-wide default of `kernel run --config`.
const MESH_STRICT: &str = "\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: hello, namespace: default}
spec: {address: 10.231.0.1, labels: {app: hello}, serviceAccount: hello, ports: {http: 80}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";

/// A pin directory on the host's bpffs, unique to this test.
fn pin_dir(tag: &str) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/portcullis-fc-{tag}-{}",
        std::process::id()
    ))
}

/// Runs `cmd`, a start that must be refused: fails if it still runs after 20 s or exits 0.
/// Returns its output.
fn expect_refused(what: &str, cmd: Command, logs: &Path) -> Result<String> {
    let mut d = Daemon::spawn(what, cmd, logs)?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = d.try_wait() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!(
                "{what}: still running after 20 s, not refused:\n{}",
                d.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = d.log();
    ensure!(!status.success(), "{what}: exited 0, not refused:\n{log}");
    Ok(log)
}

/// `ip netns exec` gives the daemon a mount namespace of its own with a fresh /sys, so the
/// host's /sys/fs/bpf is hidden. The daemon used to mount a private bpffs there and pin on it:
/// the pins died with the process, and `kill -9` left the ports open. Now it refuses to start,
/// says why and what to run instead, and pins nothing; under `nsenter --net` (every other
/// kernel test) it starts as before.
#[test]
fn daemon_under_ip_netns_exec_is_refused() -> Result<()> {
    let name = "daemon_under_ip_netns_exec_is_refused";
    if !is_root() {
        skip_not_root(name);
        return Ok(());
    }
    let bin = portcullis_bin()?;
    let logs = tempfile::tempdir()?;
    let topo = Topology::create("fcipx")?;
    let pins = Pins::new(&topo.server, pin_dir("ipx"))?;
    let dir = pins.dir.to_str().unwrap_or_default().to_owned();
    for (what, args) in [
        (
            "kernel-run",
            vec!["kernel", "run", "--port", "80=strict", "--pin-dir", &dir],
        ),
        (
            "kernel-attach",
            vec!["kernel", "attach", "--port", "80=strict", "--pin-dir", &dir],
        ),
    ] {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &topo.server])
            .arg(&bin)
            .args(&args);
        // The same with a bpffs mounted first inside that private mount namespace: it is a
        // bpffs, but an instance the host never sees, so it dies with the namespace too.
        let mut premounted = Command::new("ip");
        premounted
            .args(["netns", "exec", &topo.server, "sh", "-c"])
            .arg(r#"mount -t bpf bpf /sys/fs/bpf && exec "$0" "$@""#)
            .arg(&bin)
            .args(&args);
        for (what, cmd) in [
            (what.to_owned(), cmd),
            (format!("{what}-premounted"), premounted),
        ] {
            let log = expect_refused(&what, cmd, logs.path())?;
            for needle in ["ip netns exec", "nsenter --net=/run/netns/", "--pin-dir"] {
                ensure!(
                    log.contains(needle),
                    "{what}: the refusal does not mention `{needle}`:\n{log}"
                );
            }
            ensure!(
                !pins.dir.exists(),
                "{what}: something was pinned on the host's bpffs"
            );
        }
    }
    // The same start under nsenter pins on the host's bpffs.
    let mut cmd = Topology::nsenter(&topo.server, &bin);
    cmd.args(["kernel", "attach", "--port", "80=strict", "--pin-dir", &dir]);
    let out = e2e::process::run(&mut cmd)?;
    ensure!(
        out.status.success() && pins.dir.join("links").exists(),
        "kernel attach under nsenter: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The tc check's default skips the node's ephemeral port range (replies to the node's own
/// connections arrive there), and only steering covers it. A STRICT default without `--steer`
/// used to leave ports 32768–60999 plaintext-open; now `kernel run` and `kernel attach` refuse
/// it, whether it comes from `--default strict` or from a mesh-wide STRICT in `--config`.
#[test]
fn strict_default_without_steering_is_refused() -> Result<()> {
    let name = "strict_default_without_steering_is_refused";
    if !is_root() {
        skip_not_root(name);
        return Ok(());
    }
    let bin = portcullis_bin()?;
    let logs = tempfile::tempdir()?;
    let config = logs.path().join("mesh.yaml");
    std::fs::write(&config, MESH_STRICT)?;
    let config = config.to_str().unwrap_or_default().to_owned();
    let topo = Topology::create("fcsteer")?;
    let pins = Pins::new(&topo.server, pin_dir("steer"))?;
    let dir = pins.dir.to_str().unwrap_or_default().to_owned();
    let cases: [(&str, Vec<&str>); 3] = [
        (
            "run-default",
            vec!["kernel", "run", "--default", "strict", "--pin-dir", &dir],
        ),
        (
            "attach-default",
            vec!["kernel", "attach", "--default", "strict", "--pin-dir", &dir],
        ),
        (
            "run-config",
            vec!["kernel", "run", "--config", &config, "--pin-dir", &dir],
        ),
    ];
    for (what, args) in cases {
        let mut cmd = Topology::nsenter(&topo.server, &bin);
        cmd.args(&args);
        let log = expect_refused(what, cmd, logs.path())?;
        ensure!(
            log.contains("needs --steer") && log.contains("ephemeral port range"),
            "{what}: the refusal does not say why:\n{log}"
        );
        ensure!(!pins.dir.exists(), "{what}: something was attached");
    }
    // With steering the same default is accepted.
    let out = e2e::process::run(Topology::nsenter(&topo.server, &bin).args([
        "kernel",
        "attach",
        "--default",
        "strict",
        "--steer",
        "--pin-dir",
        &dir,
    ]))?;
    ensure!(
        out.status.success(),
        "kernel attach --default strict --steer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Two network namespaces given one pin directory: the second daemon used to find the first
/// one's pins complete, adopt them and run without any steering or check in its own namespace
/// (while `kernel status` there said "attached"). The pinned sk_lookup link records its
/// namespace; a daemon in another namespace now refuses the pins, naming both namespaces, and
/// `status`/`set-mode` refuse them too. Its own pin directory works.
#[test]
fn pins_of_another_network_namespace_are_refused() -> Result<()> {
    let name = "pins_of_another_network_namespace_are_refused";
    if !is_root() {
        skip_not_root(name);
        return Ok(());
    }
    let bin = portcullis_bin()?;
    let logs = tempfile::tempdir()?;
    let first = Topology::create("fcns1")?;
    let second = Topology::create("fcns2")?;
    let shared = Pins::new(&first.server, pin_dir("shared"))?;
    let own = Pins::new(&second.server, pin_dir("own"))?;
    let dir = shared.dir.to_str().unwrap_or_default().to_owned();
    let attach = |ns: &str, dir: &str| -> Result<std::process::Output> {
        e2e::process::run(Topology::nsenter(ns, &bin).args([
            "kernel",
            "attach",
            "--port",
            "80=strict",
            "--pin-dir",
            dir,
        ]))
    };
    let out = attach(&first.server, &dir)?;
    ensure!(
        out.status.success(),
        "kernel attach in the first namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut run = Topology::nsenter(&second.server, &bin);
    run.args(["kernel", "run", "--port", "80=strict", "--pin-dir", &dir]);
    let log = expect_refused("second-run", run, logs.path())?;
    for needle in [
        first.server.as_str(),
        second.server.as_str(),
        "one pin directory serves one network namespace",
    ] {
        ensure!(
            log.contains(needle),
            "the refusal does not name `{needle}`:\n{log}"
        );
    }
    for args in [
        vec!["kernel", "status", "--pin-dir", &dir],
        vec!["kernel", "set-mode", "80=disable", "--pin-dir", &dir],
        vec!["kernel", "uninstall", "--pin-dir", &dir],
    ] {
        let out = e2e::process::run(Topology::nsenter(&second.server, &bin).args(&args))?;
        ensure!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains(first.server.as_str()),
            "{args:?} from the second namespace: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The first namespace's pins are all still there and still work (the refused uninstall
    // removed nothing), and the second has its own.
    let out = e2e::process::run(Topology::nsenter(&first.server, &bin).args([
        "kernel",
        "status",
        "--pin-dir",
        &dir,
    ]))?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("port 80: STRICT"),
        "status in the first namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = attach(&second.server, own.dir.to_str().unwrap_or_default())?;
    ensure!(
        out.status.success(),
        "kernel attach with its own pin dir: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Said on purpose, the other namespace's pins can go.
    let out = e2e::process::run(Topology::nsenter(&second.server, &bin).args([
        "kernel",
        "uninstall",
        "--force",
        "--pin-dir",
        &dir,
    ]))?;
    ensure!(
        out.status.success() && !shared.dir.exists(),
        "uninstall --force from the second namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `kernel status` for the pins in `dir`, as printed.
fn kernel_status(ns: &str, dir: &str) -> Result<String> {
    let out = e2e::process::run(Topology::nsenter(ns, &portcullis_bin()?).args([
        "kernel",
        "status",
        "--pin-dir",
        dir,
    ]))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a `kernel status` lists `iface` among the devices whose ingress runs the check.
fn tc_covers(status: &str, iface: &str) -> bool {
    status
        .lines()
        .any(|l| l.starts_with("tc ingress:") && l.contains(iface))
}

/// Polls `done` until it holds: a bounded wait for a state, never for a duration. After 20 s
/// it fails with `what` and `context()` (status and daemon logs).
fn wait_until(
    what: &str,
    mut done: impl FnMut() -> Result<bool>,
    context: impl Fn() -> String,
) -> Result<()> {
    let start = Instant::now();
    while !done()? {
        ensure!(
            start.elapsed() < Duration::from_secs(20),
            "{what} never happened:\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// tc-only STRICT on port 80 in the server namespace: `kernel run --port 80=strict`, no
/// steering, no `--iface`, so the daemon itself finds the interfaces to cover.
fn tc_only_strict(topo: &Topology, dir: &str, label: &str, logs: &Path) -> Result<Daemon> {
    let mut cmd = Topology::nsenter(&topo.server, &portcullis_bin()?);
    cmd.args(["kernel", "run", "--port", "80=strict", "--pin-dir", dir]);
    Daemon::spawn(label, cmd, logs)
}

/// A plaintext `curl url` from `ns` is reset (curl's exit 56) and the app reads none of it.
fn plaintext_is_reset(ns: &str, url: &str, app: &HelloApp, over: &str) -> Result<()> {
    let read_before = app.bytes_read();
    let (code, stdout, stderr) = e2e::mesh::curl_in(ns, None, url, Duration::from_secs(5))?;
    ensure!(
        code == Some(56),
        "plaintext over {over} is reset: exit {code:?} {stdout:?} {stderr:?}"
    );
    ensure!(
        app.bytes_read() == read_before,
        "BYPASS: the app read plaintext over {over}"
    );
    Ok(())
}

/// A veth pair `name` in the server namespace with `server_addr` (a /24) and `name-o` in the
/// outside one with `outside_addr`, both up.
fn add_veth(topo: &Topology, name: &str, server_addr: &str, outside_addr: &str) -> Result<()> {
    let (s, o) = (topo.server.as_str(), topo.outside.as_str());
    let peer = format!("{name}-o");
    let (server_cidr, outside_cidr) = (format!("{server_addr}/24"), format!("{outside_addr}/24"));
    for args in [
        [
            "link", "add", name, "netns", s, "type", "veth", "peer", "name", &peer, "netns", o,
        ]
        .as_slice(),
        &["-n", s, "addr", "add", &server_cidr, "dev", name],
        &["-n", o, "addr", "add", &outside_cidr, "dev", &peer],
        &["-n", s, "link", "set", name, "up"],
        &["-n", o, "link", "set", &peer, "up"],
    ] {
        ip(args)?;
    }
    Ok(())
}

/// A veth pair `pc-bare` (server, no address, IPv6 off) / `pc-bare-o` (outside, 10.236.0.2),
/// with routes that send the outside's traffic for the server's main address over it.
fn add_bare_interface(topo: &Topology) -> Result<()> {
    let (s, o) = (topo.server.as_str(), topo.outside.as_str());
    let server = e2e::netns::SERVER_V4.to_string();
    for args in [
        [
            "link",
            "add",
            "pc-bare",
            "netns",
            s,
            "type",
            "veth",
            "peer",
            "name",
            "pc-bare-o",
            "netns",
            o,
        ]
        .as_slice(),
        &[
            "netns",
            "exec",
            s,
            "sysctl",
            "-qw",
            "net.ipv6.conf.pc-bare.disable_ipv6=1",
        ],
        &["-n", o, "addr", "add", "10.236.0.2/24", "dev", "pc-bare-o"],
        &["-n", s, "link", "set", "pc-bare", "up"],
        &["-n", o, "link", "set", "pc-bare-o", "up"],
        &["-n", s, "route", "add", "10.236.0.2/32", "dev", "pc-bare"],
        &[
            "-n",
            o,
            "route",
            "add",
            &server,
            "dev",
            "pc-bare-o",
            "src",
            "10.236.0.2",
        ],
        &[
            "netns",
            "exec",
            s,
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.rp_filter=0",
        ],
    ] {
        ip(args)?;
    }
    let out =
        e2e::process::run(Command::new("ip").args(["-n", s, "addr", "show", "dev", "pc-bare"]))?;
    let shown = String::from_utf8_lossy(&out.stdout);
    ensure!(!shown.contains("inet"), "pc-bare has an address: {shown}");
    Ok(())
}

/// tc-only STRICT (`kernel run --port 80=strict`, no steering, no `--iface`): the daemon used
/// to attach to the interfaces present at start only, so an interface added later, or one
/// deleted and re-created under the same name (its pinned link defunct), carried plaintext to
/// the app unjudged. The daemon now follows link and address changes and attaches to such
/// interfaces: plaintext over them is reset, and the app reads nothing.
#[test]
fn interfaces_added_or_bounced_after_start_are_covered() -> Result<()> {
    let name = "interfaces_added_or_bounced_after_start_are_covered";
    if !is_root() {
        skip_not_root(name);
        return Ok(());
    }
    let logs = tempfile::tempdir()?;
    let topo = Topology::create("fciface")?;
    let (s, o) = (topo.server.as_str(), topo.outside.as_str());
    let app = HelloApp::start(&topo.server)?;
    let pins = Pins::new(&topo.server, pin_dir("iface"))?;
    let dir = pins.dir.to_str().unwrap_or_default().to_owned();
    let status = || kernel_status(s, &dir);
    let mut daemon = tc_only_strict(&topo, &dir, "kernel-run", logs.path())?;
    let context = |d: &Daemon| format!("{}\n{}", status().unwrap_or_default(), d.log());
    wait_until(
        "port 80 STRICT",
        || Ok(status()?.lines().any(|l| l.trim() == "port 80: STRICT")),
        || context(&daemon),
    )?;
    for round in ["added", "bounced"] {
        let seen = daemon.log().matches("pc-late").count();
        // Gone already on the first round; the second re-creates it under the same names.
        let _ = ip(&["-n", s, "link", "del", "pc-late"]);
        add_veth(&topo, "pc-late", "10.235.0.1", "10.235.0.2")?;
        // The daemon logs each attach; a bounce must produce a new one.
        wait_until(
            &format!("attach to the {round} interface"),
            || Ok(daemon.log().matches("pc-late").count() > seen),
            || context(&daemon),
        )?;
        plaintext_is_reset(
            o,
            "http://10.235.0.1:80/",
            &app,
            &format!("the {round} interface"),
        )?;
    }
    let st = status()?;
    ensure!(
        tc_covers(&st, "pc-late"),
        "status lists the late interface:\n{st}"
    );
    // A rename: the link lives on under the pin of the old name. Attaching again to the same
    // device fails, and that failure used to stop the rescan before any interface sorting
    // after it (pc-bare, next) and to stop every restart. `pc-aaa` sorts first on purpose.
    ip(&["-n", s, "link", "set", "pc-late", "down"])?;
    ip(&["-n", s, "link", "set", "pc-late", "name", "pc-aaa"])?;
    ip(&["-n", s, "link", "set", "pc-aaa", "up"])?;
    wait_until(
        "the pin to follow the rename",
        || Ok(tc_covers(&status()?, "pc-aaa")),
        || context(&daemon),
    )?;
    plaintext_is_reset(o, "http://10.235.0.1:80/", &app, "the renamed interface")?;
    // An interface with no address at all (IPv6 off, so not even a link-local one), only a
    // route — a host-side container veth. Linux still delivers what arrives on it for the
    // server's address held by pc-srv, so it must be judged too.
    let seen = daemon.log().matches("pc-bare").count();
    add_bare_interface(&topo)?;
    wait_until(
        "attach to the interface without an address",
        || Ok(daemon.log().matches("pc-bare").count() > seen),
        || context(&daemon),
    )?;
    let url = format!("http://{}:80/", e2e::netns::SERVER_V4);
    plaintext_is_reset(o, &url, &app, "the interface without an address")?;
    // kill -9 and a restart with the same arguments adopt all of it (a renamed interface used
    // to make every restart exit at once).
    daemon.kill();
    let mut again = tc_only_strict(&topo, &dir, "kernel-run-again", logs.path())?;
    let start = Instant::now();
    while !again.log().contains("port modes now") {
        if let Some(st) = again.try_wait() {
            bail!("the restarted daemon exited ({st}):\n{}", again.log());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(20),
            "restart never became ready:\n{}",
            again.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    ensure!(
        again.try_wait().is_none(),
        "the restarted daemon exited:\n{}",
        again.log()
    );
    let st = status()?;
    for iface in ["pc-aaa", "pc-bare"] {
        ensure!(
            tc_covers(&st, iface),
            "after the restart, status lists {iface}:\n{st}"
        );
    }
    // A device moved to another namespace takes its link along (its pin stays here): that must
    // not stop the interfaces that come after it from being attached.
    ip(&["-n", s, "link", "set", "pc-aaa", "netns", o])?;
    add_veth(&topo, "pc-zzz", "10.237.0.1", "10.237.0.2")?;
    wait_until(
        "attach to the interface added after a move",
        || Ok(tc_covers(&status()?, "pc-zzz")),
        || context(&again),
    )?;
    plaintext_is_reset(
        o,
        "http://10.237.0.1:80/",
        &app,
        "the interface added after a move",
    )
}

/// A layer-3 device (tun here; WireGuard and IP tunnels alike) carries packets that start at
/// the IP header. The tc check used to parse them as Ethernet, read the IP addresses as an
/// EtherType and pass everything, while `status` listed the device as covered. Such devices
/// get the layer-3 variant now, which judges the same way and drops plaintext (it has no link
/// header to answer with a reset). IPv4 over a device present at start, IPv6 over one added
/// while the daemon runs.
#[test]
fn plaintext_over_a_layer3_device_is_dropped() -> Result<()> {
    let name = "plaintext_over_a_layer3_device_is_dropped";
    if !is_root() {
        skip_not_root(name);
        return Ok(());
    }
    let logs = tempfile::tempdir()?;
    let topo = Topology::create("fctun")?;
    let app = HelloApp::start(&topo.server)?;
    let pins = Pins::new(&topo.server, pin_dir("tun"))?;
    let dir = pins.dir.to_str().unwrap_or_default().to_owned();
    let mut v4 = tun_client(&topo, "pc-tun", "10.242.0.2", e2e::netns::SERVER_V4.into())?;
    let daemon = tc_only_strict(&topo, &dir, "kernel-run", logs.path())?;
    tun_case(&topo, &app, &dir, &daemon, &mut v4, "pc-tun")?;
    let mut v6 = tun_client(
        &topo,
        "pc-tun6",
        "fd00:242::2",
        e2e::netns::SERVER_V6.into(),
    )?;
    tun_case(&topo, &app, &dir, &daemon, &mut v6, "pc-tun6")
}

/// `fixtures/tun_client.py` on a new tun device `tun` in the server namespace, up, with a
/// route to `client` over it; the client talks to `server`:80.
fn tun_client(
    topo: &Topology,
    tun: &str,
    client: &str,
    server: std::net::IpAddr,
) -> Result<e2e::process::LineChild> {
    let s = topo.server.as_str();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tun_client.py");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{s}"))
        .arg("python3")
        .arg(&script)
        .args([tun, client, &server.to_string(), "80"]);
    let mut child = e2e::process::LineChild::spawn(&mut cmd)?;
    ensure!(child.ask("create")? == "created", "{tun} not created");
    let host_route = if server.is_ipv4() {
        format!("{client}/32")
    } else {
        format!("{client}/128")
    };
    ip(&["-n", s, "link", "set", tun, "up"])?;
    ip(&["-n", s, "route", "add", &host_route, "dev", tun])?;
    Ok(child)
}

/// Over `tun`, once the daemon covers it: the head of a ClientHello is let through (judged,
/// not blanket-dropped), plaintext is not acked and the app reads none of it.
fn tun_case(
    topo: &Topology,
    app: &HelloApp,
    dir: &str,
    daemon: &Daemon,
    client: &mut e2e::process::LineChild,
    tun: &str,
) -> Result<()> {
    let s = topo.server.as_str();
    wait_until(
        &format!("the check on {tun}"),
        || {
            let st = kernel_status(s, dir)?;
            Ok(tc_covers(&st, tun) && st.lines().any(|l| l.trim() == "port 80: STRICT"))
        },
        || {
            format!(
                "{}\n{}",
                kernel_status(s, dir).unwrap_or_default(),
                daemon.log()
            )
        },
    )?;
    let read_before = app.bytes_read();
    let outcome = client.ask("hello")?;
    ensure!(
        outcome == "handshake ok, data acked",
        "a ClientHello over {tun}: {outcome}\n{}",
        daemon.log()
    );
    // The app reads those 211 bytes on its own time: wait for them before counting.
    let start = Instant::now();
    while app.bytes_read() < read_before + 211 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let read_before = app.bytes_read();
    let outcome = client.ask("plain")?;
    ensure!(
        outcome == "handshake ok, data not acked",
        "plaintext over {tun}: {outcome}\n{}",
        daemon.log()
    );
    ensure!(
        app.bytes_read() == read_before,
        "BYPASS: the app read plaintext that arrived over the layer-3 device {tun}"
    );
    Ok(())
}

/// SRv6 decapsulates IPv4-in-IPv6 for the node itself (an SRH to its address with
/// `seg6_enabled`, or a seg6local End.DX4 SID) and delivers the inner packet without another
/// tc pass, so the tc check used to see an IPv6 packet that is "not TCP" and let the inner
/// plaintext reach the app (attack review), with the daemon up and after kill -9. Such
/// packets are dropped now while anything is STRICT.
#[test]
fn plaintext_inside_srv6_is_dropped() -> Result<()> {
    let name = "plaintext_inside_srv6_is_dropped";
    if !is_root() {
        skip_not_root(name);
        return Ok(());
    }
    let logs = tempfile::tempdir()?;
    let topo = Topology::create("fcsrv6")?;
    let (s, o) = (topo.server.as_str(), topo.outside.as_str());
    let app = HelloApp::start(&topo.server)?;
    let pins = Pins::new(&topo.server, pin_dir("srv6"))?;
    let dir = pins.dir.to_str().unwrap_or_default().to_owned();
    let server = e2e::netns::SERVER_V4.to_string();
    let sid = "fd00:231::100";
    ip(&[
        "netns",
        "exec",
        s,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.seg6_enabled=1",
        &format!("net.ipv6.conf.{}.seg6_enabled=1", e2e::netns::SERVER_IF),
    ])?;
    ip(&[
        "-n",
        s,
        "-6",
        "route",
        "add",
        &format!("{sid}/128"),
        "encap",
        "seg6local",
        "action",
        "End.DX4",
        "nh4",
        &server,
        "dev",
        e2e::netns::SERVER_IF,
    ])?;
    // The SID is no address of the server's, so nothing answers neighbour discovery for it.
    let out = e2e::process::run(
        Topology::exec(s, "cat").arg(format!("/sys/class/net/{}/address", e2e::netns::SERVER_IF)),
    )?;
    let mac = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ip(&[
        "-n",
        o,
        "-6",
        "neigh",
        "replace",
        sid,
        "lladdr",
        &mac,
        "dev",
        "pc-out",
        "nud",
        "permanent",
    ])?;
    let server_v6 = e2e::netns::SERVER_V6.to_string();
    let url = format!("http://{server}:80/");
    // Each way in: (what, the segment the outside's route to the server's IPv4 goes through).
    let ways = [
        ("an SRH to the server", server_v6.as_str()),
        ("an End.DX4 SID", sid),
    ];
    let through = |segment: &str| {
        ip(&[
            "-n",
            o,
            "route",
            "replace",
            &format!("{server}/32"),
            "encap",
            "seg6",
            "mode",
            "encap",
            "segs",
            segment,
            "dev",
            "pc-out",
        ])
    };
    // Controls, before any daemon: each way carries plaintext to the app, so the checks
    // below can fail.
    for (what, segment) in ways {
        through(segment)?;
        let before = app.bytes_read();
        let (code, _, stderr) = e2e::mesh::curl_in(o, None, &url, Duration::from_secs(5))?;
        ensure!(
            code == Some(0) && app.bytes_read() > before,
            "control: plaintext through {what} does not reach the app: exit {code:?} {stderr}"
        );
    }
    let mut daemon = tc_only_strict(&topo, &dir, "kernel-run", logs.path())?;
    wait_until(
        "port 80 STRICT",
        || {
            Ok(kernel_status(s, &dir)?
                .lines()
                .any(|l| l.trim() == "port 80: STRICT"))
        },
        || daemon.log(),
    )?;
    for round in ["daemon up", "after kill -9"] {
        for (what, segment) in ways {
            through(segment)?;
            let before = app.bytes_read();
            let (code, _, _) = e2e::mesh::curl_in(o, None, &url, Duration::from_secs(2))?;
            ensure!(
                code != Some(0) && app.bytes_read() == before,
                "BYPASS ({round}): plaintext through {what} reached the app (curl exit {code:?})"
            );
        }
        daemon.kill();
    }
    Ok(())
}
