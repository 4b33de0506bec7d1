//! Each HTTPS server routes only its own hosts. A SIMPLE server (`simple.test`) and a MUTUAL
//! server (`mutual.test`) share one port; a client that completes the SIMPLE handshake and
//! then asks for the MUTUAL host — by `Host`, by `:authority`, by HTTP/1.1 absolute-form, or
//! on an HTTP/2 connection it reuses as a browser coalescing connections would — must not
//! reach the MUTUAL backend without a client certificate. It gets `421 Misdirected Request`,
//! which tells an HTTP/2 client to retry on a new connection (with the right SNI).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use e2e::process::{run, Daemon, LineChild};
use e2e::rawhttp::{require_h2, Proto, RawClient, RawRequest};
use e2e::walkthrough::curl;
use e2e::{free_port, portcullis_bin, wait_for_port};

/// The Gateway's servers on the one port: which hosts each serves, in which mode.
#[derive(Clone, Copy)]
enum Servers {
    /// `simple.test` SIMPLE, `mutual.test` MUTUAL: the usual layout.
    SimpleAndMutual,
    /// One SIMPLE server for both hosts (before a reload moves `mutual.test` out).
    OneSimple,
    /// `simple.test` switched to MUTUAL, `mutual.test` MUTUAL.
    BothMutual,
    /// A wildcard `*.test` SIMPLE, `mutual.test` MUTUAL: the wildcard matches both hosts.
    WildcardSimpleAndMutual,
}

fn config_with(servers: Servers, port: u16, simple_backend: u16, mutual_backend: u16) -> String {
    let servers = match servers {
        Servers::SimpleAndMutual => format!(
            r#"  - hosts: [simple.test]
    port: {{number: {port}, name: https-simple, protocol: HTTPS}}
    tls: {{mode: SIMPLE, credentialName: simple.test}}
  - hosts: [mutual.test]
    port: {{number: {port}, name: https-mutual, protocol: HTTPS}}
    tls: {{mode: MUTUAL, credentialName: mutual.test}}"#
        ),
        Servers::OneSimple => format!(
            r#"  - hosts: [simple.test, mutual.test]
    port: {{number: {port}, name: https-simple, protocol: HTTPS}}
    tls: {{mode: SIMPLE, credentialName: simple.test}}"#
        ),
        Servers::BothMutual => format!(
            r#"  - hosts: [simple.test]
    port: {{number: {port}, name: https-simple, protocol: HTTPS}}
    tls: {{mode: MUTUAL, credentialName: simple.test}}
  - hosts: [mutual.test]
    port: {{number: {port}, name: https-mutual, protocol: HTTPS}}
    tls: {{mode: MUTUAL, credentialName: mutual.test}}"#
        ),
        Servers::WildcardSimpleAndMutual => format!(
            r#"  - hosts: ["*.test"]
    port: {{number: {port}, name: https-simple, protocol: HTTPS}}
    tls: {{mode: SIMPLE, credentialName: simple.test}}
  - hosts: [mutual.test]
    port: {{number: {port}, name: https-mutual, protocol: HTTPS}}
    tls: {{mode: MUTUAL, credentialName: mutual.test}}"#
        ),
    };
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{servers}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: simple, namespace: default}}
spec:
  hosts: [simple.test]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: simple.backend}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: mutual, namespace: default}}
spec:
  hosts: [mutual.test]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: mutual.backend}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: simple, namespace: default}}
spec:
  hosts: [simple.backend]
  ports: [{{number: {simple_backend}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: mutual, namespace: default}}
spec:
  hosts: [mutual.backend]
  ports: [{{number: {mutual_backend}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"#
    )
}

fn backend(name: &str, dir: &Path) -> Result<(u16, Daemon)> {
    let port = free_port()?;
    let mut cmd = Command::new(portcullis_bin()?);
    cmd.args(["httpbin", "--listen", &format!("127.0.0.1:{port}")]);
    let d = Daemon::spawn(name, cmd, dir)?;
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20),
    )?;
    Ok((port, d))
}

struct Setup {
    port: u16,
    admin: u16,
    certs: std::path::PathBuf,
    file: std::path::PathBuf,
    backends: (u16, u16),
    gateway: Daemon,
    _backends: [Daemon; 2],
}

impl Setup {
    fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, Servers::SimpleAndMutual)
    }

    fn start_with(dir: &Path, servers: Servers) -> Result<Self> {
        let certs = dir.join("certs");
        let out = run(Command::new(portcullis_bin()?)
            .arg("certs")
            .arg("--out")
            .arg(&certs)
            .args(["--host", "simple.test", "--host", "mutual.test"]))?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (simple_port, simple) = backend("simple-backend", dir)?;
        let (mutual_port, mutual) = backend("mutual-backend", dir)?;
        let port = free_port()?;
        let admin = free_port()?;
        let file = dir.join("gw.yaml");
        std::fs::write(&file, config_with(servers, port, simple_port, mutual_port))?;
        let mut cmd = Command::new(portcullis_bin()?);
        cmd.arg("run")
            .arg("-c")
            .arg(&file)
            .arg("--credentials")
            .arg(&certs)
            .args([
                "--bind",
                "127.0.0.1",
                "--admin",
                &format!("127.0.0.1:{admin}"),
                "--reload-ms",
                "100",
            ]);
        let gateway = Daemon::spawn("portcullis", cmd, dir)?;
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(20),
        )
        .with_context(|| format!("gateway did not start:\n{}", gateway.log()))?;
        Ok(Self {
            port,
            admin,
            certs,
            file,
            backends: (simple_port, mutual_port),
            gateway,
            _backends: [simple, mutual],
        })
    }

    /// curl to `https://<sni>:port/get` with more arguments; returns the status code.
    fn curl(&self, sni: &str, client_cert: bool, extra: &[&str]) -> Result<String> {
        let resolve = format!("{sni}:{}:127.0.0.1", self.port);
        let ca = self.certs.join("cacert.pem");
        let mut args = vec![
            "--resolve",
            &resolve,
            "--cacert",
            ca.to_str().context("ca")?,
        ];
        let (cert, key) = (
            self.certs.join("clientcert.pem"),
            self.certs.join("client.key.pem"),
        );
        if client_cert {
            args.extend([
                "--cert",
                cert.to_str().context("cert")?,
                "--key",
                key.to_str().context("key")?,
            ]);
        }
        args.extend(extra);
        Ok(curl(&format!("https://{sni}:{}/get", self.port), &args)?.0)
    }

    fn raw(&self, sni: &str, client_cert: bool) -> RawClient {
        RawClient {
            port: self.port,
            sni: sni.to_owned(),
            ca: self.certs.join("cacert.pem"),
            identity: client_cert.then(|| {
                (
                    self.certs.join("clientcert.pem"),
                    self.certs.join("client.key.pem"),
                )
            }),
        }
    }
}

/// The MUTUAL server's host in the spellings a host match must see through, sent on a
/// connection that completed a SIMPLE handshake.
const MISDIRECTED_SPELLINGS: [&str; 4] = [
    "mutual.test",
    "MUTUAL.test",
    "mutual.test:443",
    "mutual.test.",
];

/// Each server serves its own host: the SIMPLE one without a certificate, the MUTUAL one
/// with a certificate only.
fn controls(s: &Setup, proto: &str, expect: &mut impl FnMut(&str, String, &str)) -> Result<()> {
    expect(
        &format!("{proto} simple"),
        s.curl("simple.test", false, &[proto])?,
        "200",
    );
    expect(
        &format!("{proto} mutual with cert"),
        s.curl("mutual.test", true, &[proto])?,
        "200",
    );
    expect(
        &format!("{proto} mutual without cert"),
        s.curl("mutual.test", false, &[proto])?,
        "000",
    );
    Ok(())
}

#[test]
fn a_simple_handshake_does_not_reach_the_mutual_server() -> Result<()> {
    require_h2()?;
    let tmp = tempfile::tempdir()?;
    let s = Setup::start(tmp.path())?;
    let mut failures = Vec::new();
    let mut expect = |what: &str, got: String, want: &str| {
        if got != want {
            failures.push(format!("{what}: got {got}, want {want}"));
        }
    };

    for proto in ["--http1.1", "--http2"] {
        // Controls: each server serves its own host.
        controls(&s, proto, &mut expect)?;
        // The attack: SIMPLE handshake, the MUTUAL server's host (curl sends a custom Host as
        // :authority on HTTP/2), in the spellings a host match must see through.
        for host in MISDIRECTED_SPELLINGS {
            let header = format!("Host: {host}");
            expect(
                &format!("{proto} SNI simple.test, {header}"),
                s.curl("simple.test", false, &[proto, "-H", &header])?,
                "421",
            );
        }
        // And the other way round: a client certificate does not open the SIMPLE server's
        // routes on the MUTUAL server's connection either.
        expect(
            &format!("{proto} SNI mutual.test, Host: simple.test"),
            s.curl("mutual.test", true, &[proto, "-H", "Host: simple.test"])?,
            "421",
        );
    }

    // HTTP/1.1 absolute-form names the authority in the request line; a Host that disagrees
    // with it is refused (400) before any server is chosen.
    let raw = s.raw("simple.test", false);
    let mut absolute = RawRequest::get("simple.test", "https://mutual.test/get");
    absolute.host = Some("simple.test".to_owned());
    let out = raw.send(
        Proto::H1,
        &[
            absolute,
            RawRequest::get("simple.test", "https://simple.test/get"),
        ],
        false,
    )?;
    expect(
        "h1 absolute-form https://mutual.test/get, Host: simple.test",
        out[0].clone(),
        "400",
    );
    expect(
        "h1 absolute-form https://simple.test/get",
        out[1].clone(),
        "200",
    );

    // One HTTP/2 connection reused for both origins, as a browser coalesces connections when
    // the certificate covers both names: the MUTUAL host is refused on it, the SIMPLE host
    // still served, and a `host` header that disagrees with `:authority` is refused.
    let mut host_header = RawRequest::get("simple.test", "/get");
    host_header.host = Some("mutual.test".to_owned());
    let out = raw.send(
        Proto::H2,
        &[
            RawRequest::get("simple.test", "/get"),
            RawRequest::get("mutual.test", "/get"),
            RawRequest::get("simple.test", "/get"),
            host_header,
        ],
        true,
    )?;
    expect("h2 coalesced: simple.test", out[0].clone(), "200");
    expect("h2 coalesced: mutual.test", out[1].clone(), "421");
    expect("h2 coalesced: simple.test again", out[2].clone(), "200");
    expect(
        "h2 :authority simple.test, host: mutual.test",
        out[3].clone(),
        "400",
    );

    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        s.gateway.log()
    );
    // No misdirected request reached an upstream, and each was counted.
    let log = s.gateway.log();
    let misdirected: Vec<&str> = log.lines().filter(|l| l.contains("status=421")).collect();
    assert_eq!(misdirected.len(), 11, "{log}");
    for line in misdirected {
        assert!(line.contains("upstream=-"), "{line}");
    }
    let (_, metrics) = curl(
        &format!("http://127.0.0.1:{}/stats/prometheus", s.admin),
        &[],
    )?;
    assert!(
        metrics.contains("portcullis_requests_refused_total{reason=\"misdirected\"} 11"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_requests_refused_total{reason=\"authority_mismatch\"} 2"),
        "{metrics}"
    );
    Ok(())
}

/// A wildcard SIMPLE server (`*.test`) matches `mutual.test` as well, the host of a more
/// specific MUTUAL server on the same port. Its connections used to reach the MUTUAL host's
/// routes without a client certificate; a host must now pick the connection's server as an SNI
/// would, so they get 421.
#[test]
fn a_wildcard_simple_server_does_not_reach_the_mutual_host() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let s = Setup::start_with(tmp.path(), Servers::WildcardSimpleAndMutual)?;
    let mut failures = Vec::new();
    let mut expect = |what: &str, got: String, want: &str| {
        if got != want {
            failures.push(format!("{what}: got {got}, want {want}"));
        }
    };
    for proto in ["--http1.1", "--http2"] {
        controls(&s, proto, &mut expect)?;
        for host in MISDIRECTED_SPELLINGS {
            let header = format!("Host: {host}");
            expect(
                &format!("{proto} SNI simple.test (wildcard SIMPLE), {header}"),
                s.curl("simple.test", false, &[proto, "-H", &header])?,
                "421",
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        s.gateway.log()
    );
    let log = s.gateway.log();
    for line in log.lines().filter(|l| l.contains("status=421")) {
        assert!(line.contains("upstream=-"), "{line}");
    }
    Ok(())
}

/// One kept-alive HTTP/1.1 TLS connection (Python's http.client over ssl), never reopened:
/// reads `host path` per line on stdin and answers the status, or `CLOSED` once the gateway
/// has closed it.
const KEEPALIVE_CLIENT: &str = r#"
import http.client, socket, ssl, sys
port, sni, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
if len(sys.argv) > 5:
    ctx.load_cert_chain(sys.argv[4], sys.argv[5])
class Conn(http.client.HTTPSConnection):
    def connect(self):
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=sni)
conn = Conn(sni, port, context=ctx)
conn.auto_open = 0
conn.connect()
for line in sys.stdin:
    host, path = line.split()
    try:
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        r.read()
        print(r.status, flush=True)
    except Exception as e:
        print("CLOSED", type(e).__name__, flush=True)
"#;

/// One kept-alive connection, a request per [`KeepAlive::get`].
struct KeepAlive(LineChild);

impl KeepAlive {
    fn open(s: &Setup, sni: &str, client_cert: bool) -> Result<Self> {
        let mut cmd = Command::new("python3");
        cmd.arg("-c")
            .arg(KEEPALIVE_CLIENT)
            .arg(s.port.to_string())
            .arg(sni)
            .arg(s.certs.join("cacert.pem"));
        if client_cert {
            cmd.arg(s.certs.join("clientcert.pem"))
                .arg(s.certs.join("client.key.pem"));
        }
        LineChild::spawn(&mut cmd).map(Self)
    }

    fn get(&mut self, host: &str) -> Result<String> {
        self.0.ask(&format!("{host} /get"))
    }
}

impl Setup {
    /// Rewrites the configuration and waits until a new connection sees it: `probe` returns
    /// true once the new servers decide.
    fn reload(&self, servers: Servers, probe: impl Fn() -> Result<bool>) -> Result<()> {
        let tmp = self.file.with_extension("tmp-write");
        std::fs::write(
            &tmp,
            config_with(servers, self.port, self.backends.0, self.backends.1),
        )?;
        std::fs::rename(&tmp, &self.file)?;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if probe()? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("the reload did not apply:\n{}", self.gateway.log())
    }
}

/// Hosts as a client may spell `mutual.test`: each must follow the host to its new server.
const MUTUAL_SPELLINGS: [&str; 4] = [
    "mutual.test",
    "MUTUAL.test",
    "mutual.test:443",
    "mUtUaL.tEsT:443",
];

#[test]
fn a_reload_moving_a_host_to_a_mutual_server_reaches_connections_already_open() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let s = Setup::start_with(tmp.path(), Servers::OneSimple)?;
    // Opened while one SIMPLE server serves both hosts, without a client certificate: one
    // with SNI simple.test, one with SNI mutual.test.
    let mut by_simple = KeepAlive::open(&s, "simple.test", false)?;
    let mut by_mutual = KeepAlive::open(&s, "mutual.test", false)?;
    for host in MUTUAL_SPELLINGS {
        assert_eq!(by_simple.get(host)?, "200", "before the reload: {host}");
    }
    assert_eq!(by_mutual.get("mutual.test")?, "200");

    // mutual.test moves to its own MUTUAL server: a new connection without a certificate
    // for it now fails its handshake...
    s.reload(Servers::SimpleAndMutual, || {
        Ok(s.curl("mutual.test", false, &["--http1.1"])? == "000")
    })?;
    // ...and the connections opened before do not keep the old server's hosts or its
    // lack of a client-certificate requirement.
    for host in MUTUAL_SPELLINGS {
        assert_eq!(
            by_simple.get(host)?,
            "421",
            "SNI simple.test, Host {host}, after the move\n{}",
            s.gateway.log()
        );
    }
    assert_eq!(
        by_simple.get("simple.test")?,
        "200",
        "its own host is still served"
    );
    let answer = by_mutual.get("mutual.test")?;
    assert!(
        answer == "421" || answer.starts_with("CLOSED"),
        "SNI mutual.test without a certificate, after the move: {answer}\n{}",
        s.gateway.log()
    );
    // The reload closed it (or the 421 did): nothing more is served on it.
    let answer = by_mutual.get("simple.test")?;
    assert!(answer.starts_with("CLOSED"), "{answer}");
    // With a certificate, on a new connection, the moved host is served by its new server.
    assert_eq!(s.curl("mutual.test", true, &["--http1.1"])?, "200");
    // On the SIMPLE connection, only the four requests made before the move reached
    // mutual.test.
    let log = s.gateway.log();
    let served = log
        .lines()
        .map(str::to_ascii_lowercase)
        .filter(|l| {
            l.contains("sni=simple.test")
                && l.contains("authority=mutual.test")
                && l.contains("status=200")
        })
        .count();
    assert_eq!(served, 4, "{log}");
    Ok(())
}

#[test]
fn a_server_switched_to_mutual_closes_its_open_connections_without_a_certificate() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let s = Setup::start(tmp.path())?;
    let mut plain = KeepAlive::open(&s, "simple.test", false)?;
    let mut other = KeepAlive::open(&s, "simple.test", false)?;
    assert_eq!(plain.get("simple.test")?, "200");
    assert_eq!(other.get("SIMPLE.test")?, "200");
    let log_len = s.gateway.log().len();
    s.reload(Servers::BothMutual, || {
        Ok(s.curl("simple.test", false, &["--http1.1"])? == "000")
    })?;
    // Refused per request at once (never served under the old SIMPLE mode)...
    for (conn, host) in [(&mut plain, "simple.test"), (&mut other, "simple.test:443")] {
        let answer = conn.get(host)?;
        assert!(
            answer == "421" || answer.starts_with("CLOSED"),
            "Host {host} on a SIMPLE connection after the switch to MUTUAL: {answer}\n{}",
            s.gateway.log()
        );
        let answer = conn.get(host)?;
        assert!(answer.starts_with("CLOSED"), "then closed: {answer}");
    }
    // ...and closed by the reload's re-check.
    let log = s.gateway.log();
    assert!(
        log[log_len..].contains("now requires a client certificate and none was presented"),
        "{log}"
    );
    assert_eq!(s.curl("simple.test", true, &["--http1.1"])?, "200");
    Ok(())
}
