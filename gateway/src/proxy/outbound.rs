//! The mesh originator: the listener the kernel's `capture` program redirects a local
//! workload's plaintext connections to. For each one it learns where the client was going,
//! opens mutual TLS to that destination presenting this node's workload certificate, checks
//! the server's identity by secure naming, and carries the client's HTTP requests over it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tracing::Instrument;

use super::http::Body;
use super::serve::{self, accept_loop, DrainSignal, HttpConn};
use super::telemetry::access_log::AccessEntry;
use super::telemetry::metrics::{split_service, RequestHandles, RequestLabels, RequestProtocol};
use super::telemetry::{Reporter, ResponseFlags, SecurityPolicy};
use super::{Gateway, Stats};
use crate::identity::PeerCertificate;
use crate::snapshot::model::{MeshDestination, MeshInbound};
use crate::tls::client::mesh_client_config;

/// Where a redirected connection was originally going (the kernel's capture map, or a fixed
/// answer in tests).
pub trait OriginalDestination: Send + Sync + 'static {
    fn original_destination(&self, client: SocketAddr) -> Option<SocketAddr>;
}

impl<F> OriginalDestination for F
where
    F: Fn(SocketAddr) -> Option<SocketAddr> + Send + Sync + 'static,
{
    fn original_destination(&self, client: SocketAddr) -> Option<SocketAddr> {
        self(client)
    }
}

/// The originator's listener: where the kernel's capture delivers the local workload's
/// plaintext connections to mesh destinations.
pub struct Outbound {
    gateway: Arc<Gateway>,
    listener: TcpListener,
    lookup: Arc<dyn OriginalDestination>,
    own_ports: Arc<BTreeSet<u16>>,
}

impl Outbound {
    pub fn new(
        gateway: Arc<Gateway>,
        listener: TcpListener,
        lookup: Arc<dyn OriginalDestination>,
    ) -> Self {
        let own_ports = listener
            .local_addr()
            .map(|a| a.port())
            .into_iter()
            .collect();
        Self {
            gateway,
            listener,
            lookup,
            own_ports: Arc::new(own_ports),
        }
    }

    /// The daemon's other ports (terminator, admin): never an original destination, so no
    /// captured connection can make the daemon call itself.
    pub fn refusing(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        Arc::make_mut(&mut self.own_ports).extend(ports);
        self
    }

    /// Accepts until the drain starts.
    pub async fn run(self, drain: DrainSignal) {
        let Self {
            gateway,
            listener,
            lookup,
            own_ports,
        } = self;
        let admission = gateway.admission();
        let conn_drain = drain.clone();
        accept_loop(
            listener,
            "originator",
            admission,
            drain,
            move |stream: TcpStream, client, permit| {
                let (gateway, lookup, own_ports, drain) = (
                    gateway.clone(),
                    lookup.clone(),
                    own_ports.clone(),
                    conn_drain.clone(),
                );
                async move {
                    let _permit = permit;
                    let Some(original) = lookup.original_destination(client) else {
                        tracing::warn!(%client, "outbound: no original destination recorded for this connection; closing");
                        return;
                    };
                    if own_ports.contains(&original.port()) {
                        tracing::warn!(%client, destination = %original, "outbound: refused, the destination is one of the daemon's own ports");
                        return;
                    }
                    let span = tracing::info_span!("outbound", %client, destination = %original);
                    handle(gateway, stream, original, drain).instrument(span).await;
                }
            },
        )
        .await;
    }
}

/// One captured client connection's upgraded upstream, and what its requests are reported as.
struct Upstream {
    sender: Mutex<hyper::client::conn::http1::SendRequest<Incoming>>,
    /// `reporter="source"` labels of this connection (response code 0: filled per status).
    labels: RequestLabels,
    /// Resolved metric handles by (status, flags): the label set is built once per status.
    by_status: std::sync::Mutex<Vec<((u16, ResponseFlags), RequestHandles)>>,
    client: SocketAddr,
    destination: String,
}

impl Upstream {
    fn handles(&self, gateway: &Gateway, status: u16, flags: ResponseFlags) -> RequestHandles {
        let mut cache = self
            .by_status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, h)) = cache.iter().find(|(k, _)| *k == (status, flags)) {
            return h.clone();
        }
        let mut labels = self.labels.clone();
        labels.response_code = status;
        labels.response_flags = flags;
        let h = gateway.metrics.request_handles(&labels);
        // A client cycling through status codes must not grow this without bound.
        if cache.len() < 16 {
            cache.push(((status, flags), h.clone()));
        }
        h
    }
}

async fn handle(
    gateway: Arc<Gateway>,
    client: TcpStream,
    original: SocketAddr,
    drain: DrainSignal,
) {
    let client_addr = client.peer_addr().unwrap_or(original);
    let snapshot = gateway.snapshot();
    let Some(mesh) = snapshot.mesh.as_ref() else {
        tracing::warn!("the configuration has no mesh section; closing");
        return;
    };
    let Some(dest) = mesh.destinations.get(&original) else {
        // Capture is only installed for mesh destinations; a miss means the config changed.
        tracing::warn!("not a mesh destination any more; closing");
        return;
    };
    let upstream = match connect(mesh, dest, original).await {
        Ok(u) => u,
        Err(why) => {
            Stats::bump(&gateway.stats.tls_handshake_failures);
            tracing::warn!(reason = %why, "outbound mTLS to the destination failed");
            return;
        }
    };
    let (tls, server_identity) = upstream;
    let (sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tls)).await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %e, "outbound HTTP/1.1 handshake failed");
            return;
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "outbound upstream connection ended");
        }
    });
    let conn = Arc::new(Upstream {
        sender: Mutex::new(sender),
        labels: labels(mesh, dest, &server_identity),
        by_status: std::sync::Mutex::new(Vec::new()),
        client: client_addr,
        destination: original.to_string(),
    });
    let http = HttpConn {
        peer: client_addr,
        limits: gateway.limits.clone(),
        metrics: gateway.metrics.clone(),
        drain,
        reloads: None,
    };
    // The upstream leg is HTTP/1.1, so the client's leg is too.
    serve::serve_http1(client, http, move |req: Request<Incoming>| {
        let (gateway, conn) = (gateway.clone(), conn.clone());
        async move { forward(&gateway, &conn, req).await }
    })
    .await;
}

/// Opens mutual TLS to `original`, requiring one of the destination's identities.
async fn connect(
    mesh: &MeshInbound,
    dest: &MeshDestination,
    original: SocketAddr,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, String), String> {
    let config = mesh_client_config(&mesh.credential, dest.identities.clone(), &[b"http/1.1"])
        .map_err(|e| e.to_string())?;
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        TcpStream::connect(original),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    // Secure naming checks the SPIFFE id, not this name; the address is what was dialed.
    let name = ServerName::IpAddress(original.ip().into());
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let server = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| PeerCertificate::from_der(leaf).ok())
        .and_then(|p| p.identity)
        .map_or_else(|| "unknown".to_owned(), |i| i.uri());
    tracing::debug!(server = %server, "outbound mTLS established");
    Ok((tls, server))
}

/// The `reporter="source"` labels for requests to `dest` (the response code is set per request).
fn labels(mesh: &MeshInbound, dest: &MeshDestination, server: &str) -> RequestLabels {
    let own = mesh
        .credential
        .certified_key
        .cert
        .first()
        .and_then(|leaf| PeerCertificate::from_der(leaf).ok())
        .and_then(|p| p.identity)
        .map_or_else(|| "unknown".to_owned(), |i| i.uri());
    let (service_name, service_namespace) = split_service(&dest.service);
    RequestLabels {
        reporter: Reporter::Source,
        source_workload: mesh.workload_name.clone(),
        source_workload_namespace: mesh.workload_namespace.clone(),
        source_principal: own,
        source_app: "unknown".to_owned(),
        destination_workload: dest.workload.clone(),
        destination_workload_namespace: dest.namespace.clone(),
        destination_principal: server.to_owned(),
        destination_service: dest.service.clone(),
        destination_service_name: service_name.to_owned(),
        destination_service_namespace: if service_namespace == "unknown" {
            dest.namespace.clone()
        } else {
            service_namespace.to_owned()
        },
        request_protocol: RequestProtocol::http,
        response_code: 0,
        response_flags: ResponseFlags::None,
        connection_security_policy: SecurityPolicy::MutualTls,
    }
}

async fn forward(gateway: &Gateway, conn: &Upstream, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().to_string());
    let authority = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let result = {
        let mut sender = conn.sender.lock().await;
        match sender.ready().await {
            Ok(()) => sender.send_request(req).await,
            Err(e) => Err(e),
        }
    };
    let (resp, flags) = match result {
        Ok(resp) => (resp.map(BodyExt::boxed), ResponseFlags::None),
        Err(e) => {
            tracing::warn!(error = %e, "outbound request failed");
            let mut resp = Response::new(
                Full::new(bytes::Bytes::from_static(
                    b"upstream reset before response headers",
                ))
                .map_err(|never| match never {})
                .boxed(),
            );
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            (resp, ResponseFlags::UpstreamConnectionTermination)
        }
    };
    let status = resp.status().as_u16();
    let duration = started.elapsed();
    conn.handles(gateway, status, flags).record(duration, 0, 0);
    gateway.access_log.write(&AccessEntry {
        kind: "outbound",
        peer: Some(conn.client),
        sni: None,
        // On outbound lines, the identity the server proved (secure naming).
        principal: Some(&conn.labels.destination_principal),
        method: Some(method.as_str()),
        authority: authority.as_deref(),
        path: Some(&path),
        status: Some(status),
        duration_ms: duration.as_millis() as u64,
        bytes_received: 0,
        bytes_sent: 0,
        authz: None,
        policy: None,
        upstream: Some(&conn.destination),
        response_flags: flags,
    });
    resp
}

#[cfg(test)]
mod tests {
    //! Both mesh halves in process: this originator dials a terminator (`inbound`) in front of
    //! a real httpbin, with real curl as the plaintext client. The kernel's capture is
    //! replaced by a fixed original destination (tested with the kernel in `tests/`).

    use std::collections::BTreeMap;
    use std::process::Command;

    use super::*;
    use crate::identity::certs::{Ca, KeyType};
    use crate::identity::Identity;
    use crate::policy::peer_auth::PeerAuthMode;
    use crate::snapshot::testing::{mesh_inbound, snapshot_with};

    fn gateway(mesh: MeshInbound) -> Arc<Gateway> {
        Gateway::new(snapshot_with(mesh))
    }

    async fn curl(url: String) -> (i32, String) {
        tokio::task::spawn_blocking(move || {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "5", &url])
                .output()
                .expect("curl");
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        })
        .await
        .expect("join")
    }

    /// Starts app + terminator for `server_id` and an originator expecting `expected`;
    /// returns the originator's address and both gateways.
    async fn start(expected: &str) -> (SocketAddr, Arc<Gateway>) {
        let ca = Ca::generate("mesh", KeyType::EcdsaP256, 1).expect("ca");
        let terminator = TcpListener::bind("127.0.0.2:0").await.expect("bind");
        let server_addr = terminator.local_addr().expect("addr");
        let app = TcpListener::bind(("127.0.0.1", server_addr.port()))
            .await
            .expect("app");
        tokio::spawn(crate::backend::httpbin::serve(
            app,
            std::future::pending::<()>(),
        ));
        let server = gateway(mesh_inbound(
            &ca,
            "spiffe://cluster.local/ns/default/sa/hello",
            "hello",
            BTreeMap::new(),
            BTreeMap::from([(server_addr.port(), PeerAuthMode::Strict)]),
        ));
        tokio::spawn(
            super::super::inbound::Inbound::new(server, terminator)
                .serving_direct_dials()
                .run(crate::proxy::DrainSignal::never()),
        );

        let dest = MeshDestination {
            workload: "hello".into(),
            namespace: "default".into(),
            service: "hello.default.svc.cluster.local".into(),
            identities: vec![Identity::from_uri(expected).expect("id")],
        };
        let client = gateway(mesh_inbound(
            &ca,
            "spiffe://cluster.local/ns/default/sa/sleep",
            "sleep",
            BTreeMap::from([(server_addr, dest)]),
            BTreeMap::new(),
        ));
        let outbound = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = outbound.local_addr().expect("addr");
        let lookup = move |_client: SocketAddr| Some(server_addr);
        tokio::spawn(
            Outbound::new(client.clone(), outbound, Arc::new(lookup))
                .run(crate::proxy::DrainSignal::never()),
        );
        (addr, client)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plaintext_is_upgraded_to_mutual_tls_with_secure_naming() {
        let (addr, client) = start("spiffe://cluster.local/ns/default/sa/hello").await;
        let (code, body) = curl(format!("http://{addr}/headers")).await;
        assert_eq!(code, 0, "{body}");
        assert!(
            body.contains("URI=spiffe://cluster.local/ns/default/sa/sleep"),
            "the server verified the client's identity: {body}"
        );
        let metrics = client.metrics.encode().expect("encode");
        let line = metrics
            .lines()
            .find(|l| l.starts_with("istio_requests_total{") && l.contains(r#"reporter="source""#))
            .unwrap_or_else(|| panic!("no source-reported request:\n{metrics}"));
        for want in [
            r#"source_workload="sleep""#,
            r#"destination_workload="hello""#,
            r#"destination_principal="spiffe://cluster.local/ns/default/sa/hello""#,
            r#"connection_security_policy="mutual_tls""#,
            r#"response_code="200""#,
        ] {
            assert!(line.contains(want), "{want} missing: {line}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_impostor_server_identity_is_refused() {
        let (addr, client) = start("spiffe://cluster.local/ns/default/sa/payments").await;
        let (code, body) = curl(format!("http://{addr}/get")).await;
        assert_ne!(
            code, 0,
            "the request must not reach a server with the wrong identity: {body}"
        );
        assert!(body.is_empty(), "{body}");
        assert_eq!(
            client
                .stats
                .tls_handshake_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
