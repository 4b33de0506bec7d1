//! Upstreams that misbehave (issue 14 part 1): one that accepts and never answers, one that
//! resets, one that is not there, one whose accept queue is full (its SYNs are dropped), and a
//! per-upstream connection cap that overflows. Every request gets an answer with Envoy's
//! response flag in the access log (`UT`, `UC`, `UF`, `UO`), never a hang.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use e2e::free_port;
use e2e::hostile::{wait_limit, Setup};
use e2e::walkthrough::curl;
use socket2::{Domain, Protocol, Socket, Type};

/// A misbehaving upstream on loopback, stopped on drop.
struct BadUpstream {
    port: u16,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    _held: Vec<Socket>,
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// Accepts, reads, never answers.
    Hang,
    /// Accepts, reads the request, resets the connection (SO_LINGER 0).
    Reset,
}

impl BadUpstream {
    fn start(behaviour: Behaviour) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buf = [0u8; 8192];
                        let _ = s.read(&mut buf);
                        match behaviour {
                            Behaviour::Hang => held.push(s),
                            Behaviour::Reset => {
                                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                                drop(s);
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self {
            port,
            stop,
            handle: Some(handle),
            _held: Vec::new(),
        })
    }

    /// A listener that never accepts, with its accept queue already full: the kernel drops
    /// further SYNs, so a connect to it hangs until the connector's own timeout.
    fn full_queue() -> Result<Self> {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        listener.listen(0)?;
        let addr = listener
            .local_addr()?
            .as_socket()
            .ok_or_else(|| anyhow::anyhow!("no address"))?;
        let mut held = vec![listener];
        // Backlog 0 admits one queued connection; a few more make sure it is full.
        for _ in 0..3 {
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            s.set_nonblocking(true)?;
            let _ = s.connect(&addr.into());
            held.push(s);
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(Self {
            port: addr.port(),
            stop: Arc::new(AtomicBool::new(true)),
            handle: None,
            _held: held,
        })
    }
}

impl Drop for BadUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A VirtualService for host `NAME.test` to a ServiceEntry `NAME` on `port`, for each bad
/// upstream; `hang` has a 1s route timeout. (The walkthrough's `*` route still goes to
/// httpbin.)
fn routes(hang: u16, reset: u16, absent: u16, syn: u16) -> String {
    let mut yaml = String::new();
    for (name, port) in [
        ("hang", hang),
        ("reset", reset),
        ("absent", absent),
        ("syn", syn),
    ] {
        let timeout = if name == "hang" {
            "    timeout: 1s\n"
        } else {
            ""
        };
        yaml += &format!(
            "---\napiVersion: networking.istio.io/v1beta1\nkind: VirtualService\n\
             metadata: {{name: {name}, namespace: default}}\n\
             spec:\n  hosts: [{name}.test]\n  gateways: [httpbin]\n  http:\n  \
             - route:\n    - destination: {{host: {name}.default.svc.cluster.local, \
             port: {{number: 8000}}}}\n{timeout}\
             ---\napiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\n\
             metadata: {{name: {name}, namespace: default}}\n\
             spec:\n  hosts: [{name}.default.svc.cluster.local]\n  \
             ports: [{{number: 8000, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  \
             endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n"
        );
    }
    yaml
}

/// The access-log line of the request to `path`, waited for (bounded).
fn access_line(s: &Setup, path: &str) -> String {
    let needle = format!("path={path} ");
    for _ in 0..50 {
        if let Some(line) =
            s.gw.daemon
                .log()
                .lines()
                .find(|l| l.contains(" access ") && l.contains(&needle))
        {
            return line.to_owned();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    String::new()
}

struct Upstreams {
    hang: BadUpstream,
    reset: BadUpstream,
    syn: BadUpstream,
    absent: u16,
}

fn start(extra: &[&str]) -> Result<(Setup, Upstreams)> {
    let up = Upstreams {
        hang: BadUpstream::start(Behaviour::Hang)?,
        reset: BadUpstream::start(Behaviour::Reset)?,
        syn: BadUpstream::full_queue()?,
        absent: free_port()?,
    };
    let s = Setup::start_custom(extra, None, |w| {
        std::fs::write(
            w.config.join("bad-upstreams.yaml"),
            routes(up.hang.port, up.reset.port, up.absent, up.syn.port),
        )?;
        Ok(())
    })?;
    Ok((s, up))
}

/// GET `path` on the plain-HTTP port with `Host: host`.
fn get(s: &Setup, host: &str, path: &str) -> Result<(String, String, Duration)> {
    let start = Instant::now();
    let (code, body) = curl(
        &format!("http://127.0.0.1:{}{path}", s.gw.http_port),
        &["--max-time", "20", "-H", &format!("Host: {host}")],
    )?;
    Ok((code, body, start.elapsed()))
}

#[test]
fn misbehaving_upstreams_get_an_answer_with_envoys_flag_never_a_hang() -> Result<()> {
    // Defaults only, so this runs against the old code too.
    let (mut s, _up) = start(&[])?;

    let (code, body, took) = get(&s, "hang.test", "/hang/1")?;
    let line = access_line(&s, "/hang/1");
    eprintln!(
        "upstream that never answers (route timeout 1s): {code} {body:?} in {took:?}\n  {line}"
    );
    assert_eq!(code, "504");
    assert_eq!(body, "upstream request timeout");
    assert!(line.contains("response_flags=UT"), "{line}");

    let (code, body, took) = get(&s, "reset.test", "/reset/1")?;
    let line = access_line(&s, "/reset/1");
    eprintln!("upstream that resets: {code} {body:?} in {took:?}\n  {line}");
    assert!(code == "502" || code == "503", "{code} {body}");
    assert!(
        !line.contains("response_flags=-") && line.contains("response_flags="),
        "a reset carries a flag: {line}"
    );

    let (code, body, took) = get(&s, "absent.test", "/absent/1")?;
    let line = access_line(&s, "/absent/1");
    eprintln!("upstream that is not there: {code} {body:?} in {took:?}\n  {line}");
    assert_eq!(code, "503");
    assert!(line.contains("response_flags=UF"), "{line}");

    wait_limit(&s.admin, "upstream_request_timeout", 1.0)?;
    s.assert_alive_and_serving("after the bad upstreams")
}

#[test]
fn upstream_whose_syns_are_dropped_hits_the_connect_timeout() -> Result<()> {
    let (mut s, _up) = start(&["--upstream-connect-timeout", "1s"])?;
    let (code, body, took) = get(&s, "syn.test", "/syn/1")?;
    let line = access_line(&s, "/syn/1");
    eprintln!("upstream whose SYNs are dropped (connect timeout 1s): {code} {body:?} in {took:?}\n  {line}");
    assert_eq!(code, "503");
    assert!(line.contains("response_flags=UF"), "{line}");

    wait_limit(&s.admin, "upstream_connect_timeout", 1.0)?;
    s.assert_alive_and_serving("after the connect timeout")
}

#[test]
fn upstream_connection_cap_overflows_with_503_uo() -> Result<()> {
    let (mut s, _up) = start(&["--upstream-max-connections", "2"])?;
    let port = s.gw.http_port;
    let workers: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let path = format!("/delay/3?n={i}");
                curl(
                    &format!("http://127.0.0.1:{port}{path}"),
                    &["--max-time", "20", "-o", "/dev/null"],
                )
                .map(|(code, _)| code)
                .unwrap_or_else(|e| format!("error {e}"))
            })
        })
        .collect();
    let codes: Vec<String> = workers
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|_| "panic".to_owned()))
        .collect();
    let ok = codes.iter().filter(|c| *c == "200").count();
    let overflow = codes.iter().filter(|c| *c == "503").count();
    eprintln!("6 concurrent /delay/3 with --upstream-max-connections 2: {codes:?}");
    assert_eq!(ok + overflow, 6, "every request is answered: {codes:?}");
    assert!(
        (1..=2).contains(&ok),
        "at most the cap reach the upstream: {codes:?}"
    );
    let log = s.gw.daemon.log();
    let uo = log
        .lines()
        .filter(|l| l.contains(" access ") && l.contains("response_flags=UO"))
        .count();
    eprintln!("access-log lines with UO: {uo}");
    assert_eq!(uo, overflow, "each overflow is logged with UO");
    wait_limit(&s.admin, "upstream_overflow", overflow as f64)?;
    s.assert_alive_and_serving("after the overflow")
}
