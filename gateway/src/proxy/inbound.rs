//! The mesh terminator: the listener the kernel's `steer` program delivers mesh connections
//! to. Each connection's local address is its original destination (sk_lookup keeps it), so
//! the port needs no lookup table: TLS clients are terminated with the workload's
//! certificate, must present a certificate from the mesh CA, pass AuthorizationPolicy and
//! reach the app on loopback at that port; plaintext clients are served only where the port
//! is not STRICT (PERMISSIVE), with no principal.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::conn::{ConnInfo, InboundTarget};
use super::io::Prefixed;
use super::limits::LimitReason;
use super::listener::{read_first_bytes, serve_http, terminate};
use super::serve::{self, accept_loop, ConnPermit, DrainSignal, Revalidate};
use super::{Gateway, Stats};
use crate::policy::peer_auth::PeerAuthMode;
use crate::tls::verify_client_chain;

/// Default app address: the workload's own loopback.
pub const APP_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The mesh terminator's listener.
///
/// The terminator is never a target: a connection whose original destination port is one of
/// the daemon's own (the terminator's, the admin's, the originator's) was not steered here by
/// the kernel, or was steered at the daemon itself. It is refused before a byte is read, so
/// no request can make the daemon forward to itself (one plaintext request to 15006 used to
/// loop until the process ran out of descriptors).
pub struct Inbound {
    gateway: Arc<Gateway>,
    listener: TcpListener,
    own_ports: BTreeSet<u16>,
}

impl Inbound {
    /// Serves steered connections on `listener`; its own port is refused as a destination.
    pub fn new(gateway: Arc<Gateway>, listener: TcpListener) -> Self {
        let own_ports = listener
            .local_addr()
            .map(|a| a.port())
            .into_iter()
            .collect();
        Self {
            gateway,
            listener,
            own_ports,
        }
    }

    /// More of the daemon's own ports (admin, originator) to refuse as destinations.
    pub fn refusing(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.own_ports.extend(ports);
        self
    }

    /// Serves clients that dial the listener directly, as if the kernel had steered them
    /// there: in-process tests stand in for the steering this way. Never in the daemon.
    pub fn serving_direct_dials(mut self) -> Self {
        self.own_ports.clear();
        self
    }

    /// Accepts until the drain starts. The mesh side of each request comes from the newest
    /// snapshot ([`crate::snapshot::Snapshot::mesh`]), so a reload changes modes and policies
    /// at once, for open connections too.
    pub async fn run(self, drain: DrainSignal) {
        let Self {
            gateway,
            listener,
            own_ports,
        } = self;
        let own_ports = Arc::new(own_ports);
        let admission = gateway.admission();
        let conn_drain = drain.clone();
        accept_loop(
            listener,
            "terminator",
            admission,
            drain,
            move |stream: TcpStream, peer, permit| {
                // The steered socket's local address is the client's original destination.
                let original = stream.local_addr().unwrap_or(peer);
                let span = tracing::info_span!("inbound", %peer, port = original.port(), principal = tracing::field::Empty);
                handle(
                    gateway.clone(),
                    stream,
                    peer,
                    original,
                    own_ports.clone(),
                    conn_drain.clone(),
                    permit,
                )
                .instrument(span)
            },
        )
        .await;
    }
}

async fn handle(
    gateway: Arc<Gateway>,
    mut stream: TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
    own_ports: Arc<BTreeSet<u16>>,
    drain: DrainSignal,
    permit: ConnPermit,
) {
    let _permit = permit;
    Stats::bump(&gateway.stats.inbound_accepted);
    // IPv4 clients of a dual-stack listener show as ::ffff:a.b.c.d.
    let original = SocketAddr::new(original.ip().to_canonical(), original.port());
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let port = original.port();
    if own_ports.contains(&port) {
        Stats::bump(&gateway.stats.inbound_refused_own_port);
        tracing::warn!(
            destination = %original,
            "refused: the destination is the daemon's own port (not steered by the kernel)"
        );
        return;
    }
    let snapshot = gateway.snapshot();
    let Some(mesh) = snapshot.mesh.as_ref() else {
        tracing::warn!("the configuration no longer has a mesh section; closing");
        return;
    };
    let mode = mesh.mode(port);
    let first = serve::within(
        gateway.limits.tls_handshake_timeout,
        read_first_bytes(&mut stream),
    )
    .await;
    let (prefix, hello) = match first {
        Ok(Ok(r)) => r,
        Ok(Err(why)) if why.is_empty_connection() => {
            // Under STRICT this is the kernel's reset of a plaintext client: expected.
            Stats::bump(&gateway.stats.inbound_no_data);
            tracing::debug!(reason = %why, "inbound connection ended before its first byte");
            return;
        }
        Ok(Err(why)) => {
            tracing::warn!(reason = %why, "inbound connection closed before its first request");
            return;
        }
        Err(()) => {
            LimitReason::tls_handshake_timeout.fire(&gateway.metrics, Some(peer));
            return;
        }
    };
    let target = Arc::new(InboundTarget {
        app: SocketAddr::new(APP_LOOPBACK, port),
        workload_name: mesh.workload_name.clone(),
        workload_namespace: mesh.workload_namespace.clone(),
    });
    let mut conn = ConnInfo::new(peer, original, port);
    conn.sni = hello.as_ref().and_then(|h| h.server_name.clone());
    conn.inbound = Some(target);
    // The handshake verifies the peer under this snapshot's mesh CA and trust domains.
    conn.verified_generation.set(snapshot.generation);
    match hello {
        Some(_) => {
            Stats::bump(&gateway.stats.inbound_tls);
            // Boxed for the reason given in `listener::handle_connection`.
            let tls = Box::pin(serve::within(
                gateway.limits.tls_handshake_timeout,
                terminate(&gateway, &mesh.tls, prefix, stream, &mut conn),
            ))
            .await;
            match tls {
                Ok(Some(tls)) => {
                    let revalidate = recheck_peer(&gateway, &conn);
                    Box::pin(serve_http(gateway.clone(), conn, tls, drain, revalidate)).await
                }
                Ok(None) => {}
                Err(()) => LimitReason::tls_handshake_timeout.fire(&gateway.metrics, Some(peer)),
            }
        }
        None if mode == PeerAuthMode::Strict => {
            // The kernel resets these before they reach us; this is the userspace backstop
            // for a window where the maps and this config disagree.
            tracing::warn!("plaintext on a STRICT port reached the terminator; closing");
        }
        None => {
            Stats::bump(&gateway.stats.inbound_plaintext);
            Box::pin(serve_http(
                gateway.clone(),
                conn,
                Prefixed::new(prefix, stream),
                drain,
                None,
            ))
            .await
        }
    }
}

/// After a reload: does the mesh credential's CA (and trust domains) still accept this
/// peer's certificate? A rotated mesh CA closes connections from peers it no longer trusts.
fn recheck_peer(gateway: &Arc<Gateway>, conn: &ConnInfo) -> Option<Revalidate> {
    if conn.peer_chain.is_empty() {
        return None;
    }
    let (gateway, chain) = (gateway.clone(), conn.peer_chain.clone());
    Some(Box::new(move || {
        let snapshot = gateway.snapshot();
        let verdict = match snapshot.mesh.as_ref() {
            Some(mesh) => verify_client_chain(&mesh.credential, &mesh.client_checks, &chain),
            None => Err("the configuration no longer has a mesh section".to_owned()),
        };
        match verdict {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(reason = %why, "peer certificate re-checked after a reload: refused");
                false
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    //! The terminator in process, with a real httpbin behind it and real curl in front: what
    //! the kernel's steering delivers, minus the kernel (tested in `tests/kernel_*`).

    use std::collections::BTreeMap;
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::config::{load_paths, Resources, Settings};
    use crate::identity::certs::{issue_workload_cert, Ca, KeyType};
    use crate::policy::authz::Authorizer;
    use crate::policy::authz::AuthzScope;
    use crate::snapshot::compile;
    use crate::snapshot::model::MeshInbound;
    use crate::tls::{server_config, ServerTlsMode, TlsVersions};

    const DENY_SLEEP_418: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-teapot, namespace: default}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]\n    to: [{operation: {paths: [/status/418]}}]\n";

    struct Setup {
        dir: tempfile::TempDir,
        port: u16,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
    }

    async fn start(mode: PeerAuthMode) -> Setup {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = Ca::generate("mesh CA", KeyType::EcdsaP256, 1).expect("ca");
        let client = issue_workload_cert(
            &ca,
            "spiffe://cluster.local/ns/default/sa/sleep",
            &[],
            KeyType::EcdsaP256,
            1,
        )
        .expect("client cert");
        for (name, pem) in [
            ("ca.pem", ca.cert_pem().to_owned()),
            ("client.pem", client.cert_pem),
            ("client.key", client.key_pem),
        ] {
            std::fs::write(dir.path().join(name), pem).expect("write");
        }
        let cred = crate::snapshot::testing::workload_credential(
            &ca,
            "spiffe://cluster.local/ns/default/sa/server",
            &["server".into()],
        );
        let tls = server_config(
            &cred,
            ServerTlsMode::Mutual,
            TlsVersions::default(),
            &[b"h2", b"http/1.1"],
        )
        .expect("tls");
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, DENY_SLEEP_418).expect("write");
        let scope = AuthzScope {
            root_namespace: "istio-system".into(),
            workload_namespace: "default".into(),
            workload_labels: BTreeMap::from([("app".into(), "server".into())]),
        };
        let resources = load_paths(&[policy]).expect("policy loads");
        let authz = Arc::new(
            Authorizer::compile(&resources.authorization_policies, &scope).expect("compiles"),
        );

        // The terminator on 127.0.0.2:P stands in for the steered socket; the app listens on
        // 127.0.0.1:P, the same port on loopback, as behind the kernel's steering.
        let listener = TcpListener::bind("127.0.0.2:0")
            .await
            .expect("bind terminator");
        let port = listener.local_addr().expect("addr").port();
        let app = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind app on the same port");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (app_tx, app_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::backend::httpbin::serve(app, async move {
            let _ = app_rx.await;
        }));
        let mut snapshot =
            compile(Resources::default(), Settings::default()).expect("empty snapshot");
        snapshot.mesh = Some(MeshInbound {
            client_checks: Default::default(),
            credential_name: "server".into(),
            credential: Arc::new(cred),
            tls,
            authz,
            modes: BTreeMap::from([(port, mode)]),
            workload: "default/server".into(),
            workload_name: "server".into(),
            workload_namespace: "default".into(),
            destinations: BTreeMap::new(),
        });
        let gateway = Gateway::new(snapshot);
        let drain = crate::proxy::Drain::new();
        tokio::spawn(
            Inbound::new(gateway, listener)
                .serving_direct_dials()
                .run(drain.signal()),
        );
        tokio::spawn(async move {
            let _ = rx.await;
            drain.start();
            let _ = app_tx.send(());
        });
        Setup {
            dir,
            port,
            stop: Some(tx),
        }
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            if let Some(tx) = self.stop.take() {
                let _ = tx.send(());
            }
        }
    }

    /// Runs curl (blocking, off the runtime) and returns (exit code, body + status line).
    async fn curl(dir: &Path, args: Vec<String>) -> (i32, String) {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
                .args(&args)
                .current_dir(dir)
                .output()
                .expect("curl runs");
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        })
        .await
        .expect("join")
    }

    fn mtls_args(port: u16, path: &str) -> Vec<String> {
        vec![
            "--resolve".into(),
            format!("server:{port}:127.0.0.2"),
            "--cacert".into(),
            "ca.pem".into(),
            "--cert".into(),
            "client.pem".into(),
            "--key".into(),
            "client.key".into(),
            format!("https://server:{port}{path}"),
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mtls_clients_are_terminated_authorized_and_reach_the_app() {
        let s = start(PeerAuthMode::Strict).await;
        let (code, out) = curl(s.dir.path(), mtls_args(s.port, "/headers")).await;
        assert_eq!(code, 0, "{out}");
        assert!(out.ends_with("\n200"), "{out}");
        assert!(
            out.contains("URI=spiffe://cluster.local/ns/default/sa/sleep"),
            "the app sees the client identity: {out}"
        );

        let (code, out) = curl(s.dir.path(), mtls_args(s.port, "/status/418")).await;
        assert_eq!(code, 0, "{out}");
        assert_eq!(out, "RBAC: access denied\n403");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn strict_refuses_plaintext_and_clients_without_certificates() {
        let s = start(PeerAuthMode::Strict).await;
        let (code, out) = curl(
            s.dir.path(),
            vec![format!("http://127.0.0.2:{}/get", s.port)],
        )
        .await;
        assert_ne!(
            code, 0,
            "plaintext must not get through under STRICT: {out}"
        );
        let mut no_cert = mtls_args(s.port, "/get");
        no_cert.drain(4..8);
        let (code, out) = curl(s.dir.path(), no_cert).await;
        assert_ne!(code, 0, "TLS without a client certificate must fail: {out}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn permissive_serves_plaintext_without_a_principal() {
        let s = start(PeerAuthMode::Permissive).await;
        let (code, out) = curl(
            s.dir.path(),
            vec![format!("http://127.0.0.2:{}/status/418", s.port)],
        )
        .await;
        assert_eq!(code, 0, "{out}");
        assert!(
            out.ends_with("\n418"),
            "no principal, so the DENY rule does not match: {out}"
        );
        let (code, out) = curl(s.dir.path(), mtls_args(s.port, "/get")).await;
        assert_eq!(code, 0, "{out}");
        assert!(out.ends_with("\n200"), "{out}");
    }
}
