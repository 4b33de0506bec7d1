//! Lifecycle end to end: an open connection follows reloads (issue 12 part 4), SIGTERM drains
//! without losing a request in flight (issue 14 part 2), and the mesh terminator is never a
//! target (issue 13: one plaintext request to its own port used to loop until the daemon ran
//! out of descriptors).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use e2e::process::LineChild;
use e2e::walkthrough::{curl, Walkthrough};
use e2e::{free_port, wait_for_port};

const DENY_200: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-200, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {principals: [test.client]}}]\n    to: [{operation: {paths: [/status/200]}}]\n";

/// One kept-alive mutual-TLS HTTP/1.1 connection (Python's http.client over ssl): reads a
/// path per line on stdin, answers the status, or `CLOSED` once the server has closed it.
const KEEPALIVE_CLIENT: &str = r#"
import http.client, socket, ssl, sys
port, ca, cert, key = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
class Conn(http.client.HTTPSConnection):
    # test.com, reached on loopback.
    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port))
        self.sock = ctx.wrap_socket(sock, server_hostname="test.com")
conn = Conn("test.com", int(port), context=ctx)
# Never reconnect: the point is the one connection.
conn.auto_open = 0
conn.connect()
for line in sys.stdin:
    try:
        conn.request("GET", line.strip(), headers={"Host": "test.com"})
        r = conn.getresponse()
        r.read()
        print(r.status, flush=True)
    except Exception as e:
        print("CLOSED", type(e).__name__, flush=True)
"#;

/// One kept-alive connection, a request per [`KeepAlive::get`].
struct KeepAlive(LineChild);

impl KeepAlive {
    fn open(w: &Walkthrough, port: u16) -> Result<Self> {
        LineChild::spawn(
            Command::new("python3")
                .arg("-c")
                .arg(KEEPALIVE_CLIENT)
                .arg(port.to_string())
                .arg(w.certs.ca_cert())
                .arg(w.certs.client_cert())
                .arg(w.certs.client_key()),
        )
        .map(Self)
    }

    fn get(&mut self, path: &str) -> Result<String> {
        self.0.ask(path)
    }
}

fn replace(path: &std::path::Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn eventually(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what}: not within {:?}", start.elapsed())
}

#[test]
fn an_open_connection_follows_policy_and_client_ca_changes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let w = Walkthrough::prepare(tmp.path())?;
    let gw = w.start_gateway(&["--admin", "off", "--reload-ms", "100"])?;
    let mut conn = KeepAlive::open(&w, gw.https_port)?;
    assert_eq!(conn.get("/status/200")?, "200");

    // Revoke: test.client may no longer read /status/200. A new connection sees it first...
    replace(&w.config.join("deny-200.yaml"), DENY_200.as_bytes())?;
    eventually("the policy applies to new connections", || {
        Ok(gw.https("/status/200", e2e::walkthrough::Identity::Client)? == "403")
    })?;
    // ...and so does the connection opened before the change.
    assert_eq!(
        conn.get("/status/200")?,
        "403",
        "a revoked principal keeps no access on its kept-alive connection"
    );
    assert_eq!(conn.get("/status/201")?, "201");

    // The server's client CA changes to one that never signed this client: the open
    // connection is closed, not left serving under the old CA.
    let other = tmp.path().join("other-ca");
    std::fs::create_dir_all(&other)?;
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-subj", "/CN=another CA", "-days", "1"])
        .args(["-keyout", "ca.key", "-out", "ca.crt"])
        .current_dir(&other)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log_len = gw.daemon.log().len();
    replace(
        &w.credentials.join("test.com/ca.crt"),
        &std::fs::read(other.join("ca.crt"))?,
    )?;
    eventually("the connection is refused after the reload", || {
        Ok(gw.daemon.log()[log_len..].contains("re-checked after a reload: refused"))
    })?;
    // The daemon gives it at most a second to finish what is in flight (nothing here).
    std::thread::sleep(Duration::from_millis(1500));
    let answer = conn.get("/status/201")?;
    assert!(
        answer.starts_with("CLOSED"),
        "the connection whose client certificate no longer passes is closed: {answer}"
    );
    Ok(())
}

#[test]
fn sigterm_drains_requests_in_flight_and_exits_zero() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let w = Walkthrough::prepare(tmp.path())?;
    let mut gw = w.start_gateway(&["--admin", "off", "--drain-timeout", "8s"])?;
    // Long enough that every request is surely in flight when the signal comes, even on a
    // loaded machine, and short enough to finish within the drain period.
    let url = format!("http://127.0.0.1:{}/delay/4", gw.http_port);
    // Ten requests that are in flight when the signal arrives.
    let clients: Vec<_> = (0..10)
        .map(|_| {
            Command::new("curl")
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "15",
                ])
                .args(["-H", "Host: test.com", &url])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on the daemon we started.
    unsafe { libc::kill(gw.daemon.pid() as i32, libc::SIGTERM) };
    let mut codes = Vec::new();
    for c in clients {
        let out = c.wait_with_output()?;
        codes.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    assert!(
        codes.iter().all(|c| c == "200"),
        "every request in flight finishes: {codes:?}\n{}",
        gw.daemon.log()
    );
    let status = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            gw.daemon.try_wait()
        })
        .context("the daemon exits after the drain")?;
    assert_eq!(status.code(), Some(0), "{}", gw.daemon.log());
    assert!(gw.daemon.log().contains("draining"), "{}", gw.daemon.log());
    Ok(())
}

const WORKLOAD: &str = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: hello, namespace: default}\nspec:\n  address: 127.0.0.1\n  labels: {app: hello}\n  serviceAccount: hello\n  ports: {http: 80}\n";

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

#[test]
fn the_terminator_port_is_never_a_destination() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let w = Walkthrough::prepare(tmp.path())?;
    std::fs::write(w.config.join("workload.yaml"), WORKLOAD)?;
    let terminator: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let gw = w.start_gateway(&[
        "--admin",
        "off",
        "--mesh-credential",
        "test.com",
        "--no-kernel",
        "--terminator",
        &terminator.to_string(),
    ])?;
    wait_for_port(terminator, Duration::from_secs(10))?;
    let pid = gw.daemon.pid();
    let before = open_fds(pid)?;
    // Plaintext, TLS without a certificate, HTTP/2 prior knowledge: straight at the
    // terminator's own port, as no steered connection ever arrives.
    let url = format!("http://{terminator}/get");
    let tls_url = format!("https://{terminator}/get");
    for extra in [
        &["--max-time", "5"][..],
        &["--max-time", "5", "--http2-prior-knowledge"],
        &["--max-time", "5", "-H", "Connection: keep-alive"],
    ] {
        let (code, body) = curl(&url, extra)?;
        assert_ne!(
            code, "200",
            "plaintext to the terminator's port is refused: {body}"
        );
    }
    let (code, _) = curl(&tls_url, &["--max-time", "5", "-k"])?;
    assert_ne!(code, "200");
    std::thread::sleep(Duration::from_millis(300));
    let after = open_fds(pid)?;
    assert!(
        after <= before + 4,
        "the daemon's descriptors stay flat: {before} before, {after} after\n{}",
        gw.daemon.log()
    );
    let log = gw.daemon.log();
    assert!(
        log.contains("refused: the destination is the daemon's own port"),
        "{log}"
    );
    Ok(())
}

#[test]
fn gateway_ports_added_and_removed_by_a_reload_are_bound_and_unbound_live() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let w = Walkthrough::prepare(tmp.path())?;
    let gw = w.start_gateway(&["--admin", "off", "--reload-ms", "100"])?;
    let offset = gw.http_port - 80;
    let extra_url = format!("http://127.0.0.1:{}/status/200", 81 + offset);
    assert_eq!(
        curl(&extra_url, &["--max-time", "5"])?.0,
        "000",
        "nothing listens on 81 yet"
    );
    let gateway_yaml = w.config.join("gateway.yaml");
    let original = std::fs::read_to_string(&gateway_yaml)?;
    let with_81 = original.replace(
        "  - hosts: [test.com]\n",
        "  - hosts: ['*']\n    port: {name: extra, number: 81, protocol: HTTP}\n  - hosts: [test.com]\n",
    );
    assert_ne!(with_81, original, "the walkthrough Gateway changed shape");
    replace(&gateway_yaml, with_81.as_bytes())?;
    eventually("port 81 is bound by the reload", || {
        Ok(curl(&extra_url, &["--max-time", "5"])?.0 == "200")
    })?;
    // The ports that were there all along never stopped serving.
    assert_eq!(gw.http("/status/200")?, "200");
    replace(&gateway_yaml, original.as_bytes())?;
    eventually("port 81 is unbound by the reload", || {
        Ok(curl(&extra_url, &["--max-time", "5"])?.0 == "000")
    })?;
    assert_eq!(gw.http("/status/200")?, "200");
    Ok(())
}

/// Keep-alive mutual-TLS load: `threads` connections, each sending GET `path` in a loop for
/// `seconds`; prints `ok=N failed=M` and the first failures. A connection the server closes
/// between requests (keep-alive race) is reopened and the request retried once, as every
/// HTTP client does for an idempotent request; anything else counts as failed.
const LOAD: &str = r#"
import http.client, socket, ssl, sys, threading, time
port, ca, cert, key, path, threads, seconds = sys.argv[1:8]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
class Conn(http.client.HTTPSConnection):
    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port))
        self.sock = ctx.wrap_socket(sock, server_hostname="test.com")
ok, failed, why, lock = [0], [0], [], threading.Lock()
deadline = time.time() + float(seconds)
def once(conn):
    conn.request("GET", path, headers={"Host": "test.com"})
    r = conn.getresponse()
    r.read()
    return r.status
def worker():
    conn = Conn("test.com", int(port), context=ctx)
    while time.time() < deadline:
        try:
            try:
                status = once(conn)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                status = once(conn)
            with lock:
                if status == 200:
                    ok[0] += 1
                else:
                    failed[0] += 1
                    why.append(str(status))
        except Exception as e:
            conn.close()
            with lock:
                failed[0] += 1
                why.append(type(e).__name__ + ": " + str(e))
threads = [threading.Thread(target=worker) for _ in range(int(threads))]
for t in threads: t.start()
for t in threads: t.join()
print("ok=%d failed=%d %s" % (ok[0], failed[0], why[:5]), flush=True)
"#;

#[test]
fn a_hundred_reloads_good_and_bad_under_load_fail_no_request() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let w = Walkthrough::prepare(tmp.path())?;
    let gw = w.start_gateway(&["--admin", "off", "--reload-ms", "50"])?;
    let load = Command::new("python3")
        .arg("-c")
        .arg(LOAD)
        .arg(gw.https_port.to_string())
        .arg(w.certs.ca_cert())
        .arg(w.certs.client_cert())
        .arg(w.certs.client_key())
        .args(["/status/200", "4", "20"])
        .stdout(Stdio::piped())
        .spawn()?;
    let policy = w.config.join("extra.yaml");
    let key = w.credentials.join("test.com/tls.key");
    let good_key = std::fs::read(&key)?;
    let bad_key = std::fs::read(w.certs.client_key())?;
    let (mut good, mut bad) = (0, 0);
    let started = Instant::now();
    for i in 0..100 {
        let log_len = gw.daemon.log().len();
        let is_bad = i % 3 == 2;
        match (i % 2, is_bad) {
            // A policy that leaves /status/200 alone, or the same with a typo.
            (0, false) => replace(
                &policy,
                DENY_200
                    .replace("/status/200", &format!("/status/{}", 300 + i))
                    .as_bytes(),
            )?,
            (0, true) => replace(&policy, DENY_200.replace("paths:", "pathz:").as_bytes())?,
            // The credential rewritten as it was, or with a key that does not match.
            (_, false) => replace(&key, &good_key)?,
            (_, true) => replace(&key, &bad_key)?,
        }
        let want = if is_bad {
            "configuration not applied"
        } else {
            "configuration reloaded"
        };
        eventually("the reload is seen", || {
            Ok(gw.daemon.log()[log_len..].contains(want))
        })?;
        if is_bad {
            bad += 1;
            // Back to good, so the next edit is judged on its own.
            let log_len = gw.daemon.log().len();
            replace(&key, &good_key)?;
            replace(&policy, b"")?;
            eventually("the good config is back", || {
                Ok(gw.daemon.log()[log_len..].contains("configuration reloaded"))
            })?;
        } else {
            good += 1;
        }
    }
    let reloads_took = started.elapsed();
    let out = load.wait_with_output()?;
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{good} good and {bad} bad reloads in {reloads_took:?} under load: {report}");
    let failed: u64 = report
        .split_whitespace()
        .find_map(|f| f.strip_prefix("failed="))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no report from the load: {report}"))?;
    let served: u64 = report
        .split_whitespace()
        .find_map(|f| f.strip_prefix("ok="))
        .and_then(|n| n.parse().ok())
        .context("no ok count")?;
    assert_eq!(failed, 0, "no request fails during reloads: {report}");
    assert!(served > 100, "the load ran: {report}");
    Ok(())
}

/// One HTTP/2 mutual-TLS connection driven with Python's `h2`: `get PATH` answers the status,
/// `wait` reads until the server ends the connection and answers `GOAWAY` (or `EOF`).
const H2_CLIENT: &str = r#"
import socket, ssl, sys
import h2.connection, h2.events, h2.exceptions
port, ca, cert, key = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["h2"])
sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname="test.com")
conn = h2.connection.H2Connection()
conn.initiate_connection()
sock.sendall(conn.data_to_send())
def events():
    data = sock.recv(65535)
    if not data:
        return None
    try:
        evs = conn.receive_data(data)
    except h2.exceptions.ProtocolError:
        # hyper follows its GOAWAY with a PING in the same read; h2 has closed by then.
        if conn.state_machine.state == h2.connection.ConnectionState.CLOSED:
            return [h2.events.ConnectionTerminated()]
        raise
    out = conn.data_to_send()
    if out:
        sock.sendall(out)
    return evs
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "get":
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":path", cmd[1]), (":scheme", "https"), (":authority", "test.com")], end_stream=True)
        sock.sendall(conn.data_to_send())
        status, done = None, False
        while not done:
            evs = events()
            if evs is None:
                status, done = "EOF", True
            for e in evs or []:
                if isinstance(e, h2.events.ResponseReceived):
                    status = dict(e.headers)[b":status"].decode()
                if isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done = True
                if isinstance(e, h2.events.ConnectionTerminated):
                    status, done = status or "GOAWAY", True
        print(status, flush=True)
    elif cmd[0] == "wait":
        sock.settimeout(10)
        answer = "TIMEOUT"
        try:
            while True:
                evs = events()
                if evs is None:
                    answer = "EOF"
                    break
                if any(isinstance(e, h2.events.ConnectionTerminated) for e in evs):
                    answer = "GOAWAY"
                    break
        except socket.timeout:
            pass
        print(answer, flush=True)
"#;

#[test]
fn an_http2_connection_gets_goaway_when_its_client_ca_changes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let w = Walkthrough::prepare(tmp.path())?;
    let gw = w.start_gateway(&["--admin", "off", "--reload-ms", "100"])?;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(H2_CLIENT)
        .arg(gw.https_port.to_string())
        .arg(w.certs.ca_cert())
        .arg(w.certs.client_cert())
        .arg(w.certs.client_key())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut ask = |cmd: &str| -> Result<String> {
        let stdin = child.stdin.as_mut().context("stdin")?;
        writeln!(stdin, "{cmd}")?;
        stdin.flush()?;
        let mut line = String::new();
        out.read_line(&mut line)?;
        Ok(line.trim().to_owned())
    };
    assert_eq!(ask("get /status/200")?, "200");
    replace(&w.config.join("deny-200.yaml"), DENY_200.as_bytes())?;
    eventually("the policy applies", || {
        Ok(gw.https("/status/200", e2e::walkthrough::Identity::Client)? == "403")
    })?;
    assert_eq!(
        ask("get /status/200")?,
        "403",
        "the next stream is decided by the newest policy"
    );
    let other = tmp.path().join("other-ca");
    std::fs::create_dir_all(&other)?;
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-subj", "/CN=another CA", "-days", "1"])
        .args(["-keyout", "ca.key", "-out", "ca.crt"])
        .current_dir(&other)
        .output()?;
    assert!(made.status.success());
    replace(
        &w.credentials.join("test.com/ca.crt"),
        &std::fs::read(other.join("ca.crt"))?,
    )?;
    let answer = ask("wait")?;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        answer,
        "GOAWAY",
        "the server sends GOAWAY to a client its new CA refuses\n{}",
        gw.daemon.log()
    );
    Ok(())
}
