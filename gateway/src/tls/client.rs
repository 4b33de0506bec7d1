//! Client-side rustls configurations for the outbound side of the mesh: present the
//! workload's certificate and check the server's identity by **secure naming** — the server
//! must chain to the mesh CA *and* carry one of the SPIFFE ids the destination service is
//! allowed to run as, whatever DNS name was dialed. (Istio calls this secure naming: it stops
//! a compromised DNS or a redirected connection from reaching an impostor with a valid
//! certificate for some other workload.)

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

use super::{provider, Credential, CredentialError};
use crate::identity::{Identity, PeerCertificate};

/// Verifies the chain against the mesh CA, then requires a SPIFFE id from `allowed`.
#[derive(Debug)]
pub struct SecureNaming {
    roots: Arc<RootCertStore>,
    allowed: Vec<Identity>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SecureNaming {
    pub fn new(roots: Arc<RootCertStore>, allowed: Vec<Identity>) -> Self {
        Self {
            roots,
            allowed,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SecureNaming {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        // The DNS name dialed is deliberately not checked: mesh identities are SPIFFE ids.
        let peer = PeerCertificate::from_der(end_entity.as_ref())
            .map_err(|e| Error::General(e.to_string()))?;
        match &peer.identity {
            Some(id) if self.allowed.contains(id) => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(Error::General(format!(
                "secure naming: server identity {id} is not one of [{}]",
                self.allowed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            None => Err(Error::General(
                "secure naming: the server certificate has no SPIFFE id".to_owned(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client configuration that presents `cred` (the workload's certificate) and accepts only
/// servers that chain to `cred`'s `ca.crt` and carry one of `allowed`.
pub fn mesh_client_config(
    cred: &Credential,
    allowed: Vec<Identity>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, CredentialError> {
    let roots = cred
        .roots
        .clone()
        .ok_or(CredentialError::NoCertificate { field: "ca.crt" })?;
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| CredentialError::BadTrustAnchor {
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SecureNaming::new(roots, allowed)))
        .with_client_cert_resolver(Arc::new(FixedClientCert(cred.certified_key.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::certs::{Ca, KeyType};
    use crate::tls::{server_config, ServerTlsMode, TlsVersions};

    fn cred(ca: &Ca, id: &str) -> Credential {
        crate::snapshot::testing::workload_credential(ca, id, &[])
    }

    /// Runs a handshake in memory; Ok with the principal the server saw, or the client's error.
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<Option<String>, String> {
        let name = ServerName::try_from("anything.dialed.local").expect("name");
        let mut c = rustls::ClientConnection::new(client, name).map_err(|e| e.to_string())?;
        let mut s = rustls::ServerConnection::new(server).map_err(|e| e.to_string())?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).map_err(|e| e.to_string())?;
            s.read_tls(&mut &buf[..]).map_err(|e| e.to_string())?;
            s.process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
            buf.clear();
            s.write_tls(&mut buf).map_err(|e| e.to_string())?;
            c.read_tls(&mut &buf[..]).map_err(|e| e.to_string())?;
            c.process_new_packets()
                .map_err(|e| format!("client: {e}"))?;
            if !c.is_handshaking() && !s.is_handshaking() {
                let leaf = s
                    .peer_certificates()
                    .and_then(|p| p.first())
                    .ok_or("no client cert")?;
                return Ok(PeerCertificate::from_der(leaf)
                    .map_err(|e| e.to_string())?
                    .principal());
            }
        }
        Err("handshake did not finish".to_owned())
    }

    fn id(uri: &str) -> Identity {
        Identity::from_uri(uri).expect("spiffe id")
    }

    #[test]
    fn secure_naming_accepts_only_the_expected_server_identity() {
        let ca = Ca::generate("mesh", KeyType::EcdsaP256, 1).expect("ca");
        let server = cred(&ca, "spiffe://cluster.local/ns/default/sa/server");
        let client = cred(&ca, "spiffe://cluster.local/ns/default/sa/sleep");
        let server_cfg = server_config(&server, ServerTlsMode::Mutual, TlsVersions::default(), &[])
            .expect("server");

        let good = mesh_client_config(
            &client,
            vec![id("spiffe://cluster.local/ns/default/sa/server")],
            &[],
        )
        .expect("client");
        assert_eq!(
            handshake(good, server_cfg.clone()),
            Ok(Some("cluster.local/ns/default/sa/sleep".to_owned())),
            "mutual TLS both ways, whatever name was dialed"
        );

        let wrong = mesh_client_config(
            &client,
            vec![id("spiffe://cluster.local/ns/default/sa/payments")],
            &[],
        )
        .expect("client");
        let err = handshake(wrong, server_cfg.clone()).expect_err("impostor identity");
        assert!(err.contains("secure naming: server identity spiffe://cluster.local/ns/default/sa/server is not one of"), "{err}");

        let other_ca = Ca::generate("other", KeyType::EcdsaP256, 1).expect("ca");
        let foreign = cred(&other_ca, "spiffe://cluster.local/ns/default/sa/server");
        let foreign_cfg =
            server_config(&foreign, ServerTlsMode::Mutual, TlsVersions::default(), &[])
                .expect("server");
        let client_cfg = mesh_client_config(
            &client,
            vec![id("spiffe://cluster.local/ns/default/sa/server")],
            &[],
        )
        .expect("client");
        let err = handshake(client_cfg, foreign_cfg).expect_err("untrusted CA");
        assert!(
            err.contains("UnknownIssuer") || err.contains("unknown issuer"),
            "{err}"
        );
    }
}
