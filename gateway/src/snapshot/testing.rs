//! Test-time mesh settings: a workload's credential from a test CA and a snapshot carrying
//! them, for the terminator's and the originator's unit tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::model::{MeshDestination, MeshInbound};
use super::Snapshot;
use crate::config::{Resources, Settings};
use crate::identity::certs::{issue_workload_cert, Ca, KeyType};
use crate::policy::authz::{Authorizer, AuthzScope};
use crate::policy::peer_auth::PeerAuthMode;
use crate::tls::{server_config, Credential, ServerTlsMode, TlsVersions};

/// A credential for SPIFFE id `id` (and DNS names `dns`) issued by `ca`, trusting `ca`.
pub(crate) fn workload_credential(ca: &Ca, id: &str, dns: &[String]) -> Credential {
    let c = issue_workload_cert(ca, id, dns, KeyType::EcdsaP256, 1).expect("cert");
    Credential::from_pem(
        c.cert_pem.as_bytes(),
        c.key_pem.as_bytes(),
        Some(ca.cert_pem().as_bytes()),
    )
    .expect("cred")
}

/// The mesh settings of workload `default/<workload>` running as `id` under `ca`: no
/// policies, the port modes and destinations given.
pub(crate) fn mesh_inbound(
    ca: &Ca,
    id: &str,
    workload: &str,
    destinations: BTreeMap<SocketAddr, MeshDestination>,
    modes: BTreeMap<u16, PeerAuthMode>,
) -> MeshInbound {
    let cred = workload_credential(ca, id, &[]);
    MeshInbound {
        client_checks: Default::default(),
        credential_name: workload.into(),
        tls: server_config(
            &cred,
            ServerTlsMode::Mutual,
            TlsVersions::default(),
            &[b"h2", b"http/1.1"],
        )
        .expect("tls"),
        credential: Arc::new(cred),
        authz: Arc::new(Authorizer::compile(&[], &AuthzScope::default()).expect("authz")),
        modes,
        workload: format!("default/{workload}"),
        workload_name: workload.into(),
        workload_namespace: "default".into(),
        destinations,
    }
}

/// An otherwise empty snapshot (a generation of its own) carrying `mesh`.
pub(crate) fn snapshot_with(mesh: MeshInbound) -> Snapshot {
    let mut snapshot = super::compile(Resources::default(), Settings::default()).expect("snapshot");
    snapshot.mesh = Some(mesh);
    snapshot
}
