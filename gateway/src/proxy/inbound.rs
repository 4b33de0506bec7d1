//! The mesh terminator: the listener the kernel's `steer` program delivers mesh connections
//! to. Each connection's local address is its original destination (sk_lookup keeps it), so
//! the port needs no lookup table: TLS clients are terminated with the workload's
//! certificate, must present a certificate from the mesh CA, pass AuthorizationPolicy and
//! reach the app on loopback at that port; plaintext clients are served only where the port
//! is not STRICT (PERMISSIVE), with no principal.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use super::conn::{ConnInfo, InboundTarget};
use super::io::Prefixed;
use super::listener::{
    read_first_bytes, serve_http, terminate, CLOSED_BEFORE_HELLO, RESET_BEFORE_HELLO,
};
use super::{Gateway, Stats};
use crate::policy::peer_auth::PeerAuthMode;

/// Default app address: the workload's own loopback.
pub const APP_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Accepts steered connections until `shutdown` resolves.
/// The mesh side of each connection comes from the snapshot current when it is accepted
/// ([`crate::config::Snapshot::mesh`]), so a reload changes modes and policies for new
/// connections at once.
pub async fn serve_inbound(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, mut stop) = watch::channel(false);
    let accept = async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stop.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "inbound accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            Stats::bump(&gateway.stats.inbound_accepted);
            let _ = stream.set_nodelay(true);
            // The steered socket's local address is the client's original destination.
            let Ok(original) = stream.local_addr() else {
                continue;
            };
            let span = tracing::info_span!("inbound", %peer, port = original.port(), principal = tracing::field::Empty);
            tokio::spawn(handle(gateway.clone(), stream, peer, original).instrument(span));
        }
    };
    tokio::select! {
        _ = accept => {},
        _ = shutdown => { let _ = stop_tx.send(true); },
    }
}

async fn handle(
    gateway: Arc<Gateway>,
    mut stream: TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
) {
    let snapshot = gateway.snapshot();
    let Some(mesh) = snapshot.mesh.as_ref() else {
        tracing::warn!("the configuration no longer has a mesh section; closing");
        return;
    };
    // IPv4 clients of a dual-stack listener show as ::ffff:a.b.c.d.
    let original = SocketAddr::new(original.ip().to_canonical(), original.port());
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let port = original.port();
    let mode = mesh.mode(port);
    let (prefix, hello) = match read_first_bytes(&mut stream).await {
        Ok(r) => r,
        Err(why) => {
            if why == CLOSED_BEFORE_HELLO || why == RESET_BEFORE_HELLO {
                // Under STRICT this is the kernel's reset of a plaintext client: expected.
                Stats::bump(&gateway.stats.inbound_no_data);
                tracing::debug!(
                    reason = why,
                    "inbound connection ended before its first byte"
                );
            } else {
                tracing::warn!(
                    reason = why,
                    "inbound connection closed before its first request"
                );
            }
            return;
        }
    };
    let target = Arc::new(InboundTarget {
        app: SocketAddr::new(APP_LOOPBACK, port),
        authz: mesh.authz.clone(),
        workload_name: mesh.workload_name.clone(),
        workload_namespace: mesh.workload_namespace.clone(),
    });
    let mut conn = ConnInfo::new(peer, original, port);
    conn.sni = hello.as_ref().and_then(|h| h.server_name.clone());
    conn.inbound = Some(target);
    match hello {
        Some(_) => {
            Stats::bump(&gateway.stats.inbound_tls);
            if let Some(tls) = terminate(&gateway, &mesh.tls, prefix, stream, &mut conn).await {
                serve_http(gateway, snapshot.clone(), conn, tls).await;
            }
        }
        None if mode == PeerAuthMode::Strict => {
            // The kernel resets these before they reach us; this is the userspace backstop
            // for a window where the maps and this config disagree.
            tracing::warn!("plaintext on a STRICT port reached the terminator; closing");
        }
        None => {
            Stats::bump(&gateway.stats.inbound_plaintext);
            serve_http(
                gateway,
                snapshot.clone(),
                conn,
                Prefixed::new(prefix, stream),
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    //! The terminator in process, with a real httpbin behind it and real curl in front: what
    //! the kernel's steering delivers, minus the kernel (tested in `tests/kernel_*`).

    use std::collections::BTreeMap;
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::config::model::MeshInbound;
    use crate::config::{compile, load_paths, Resources, Settings};
    use crate::identity::certs::{issue_workload_cert, Ca, KeyType};
    use crate::policy::authz::Authorizer;
    use crate::policy::authz::AuthzScope;
    use crate::tls::{server_config, Credential, ServerTlsMode, TlsVersions};

    const DENY_SLEEP_418: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-teapot, namespace: default}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]\n    to: [{operation: {paths: [/status/418]}}]\n";

    struct Setup {
        dir: tempfile::TempDir,
        port: u16,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
    }

    async fn start(mode: PeerAuthMode) -> Setup {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = Ca::generate("mesh CA", KeyType::EcdsaP256, 1).expect("ca");
        let server = issue_workload_cert(
            &ca,
            "spiffe://cluster.local/ns/default/sa/server",
            &["server".into()],
            KeyType::EcdsaP256,
            1,
        )
        .expect("server cert");
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
        let cred = Credential::from_pem(
            server.cert_pem.as_bytes(),
            server.key_pem.as_bytes(),
            Some(ca.cert_pem().as_bytes()),
        )
        .expect("credential");
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
        tokio::spawn(serve_inbound(gateway, listener, async move {
            let _ = rx.await;
            let _ = app_tx.send(());
        }));
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
