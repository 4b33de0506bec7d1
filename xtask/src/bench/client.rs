//! The suite's own mTLS client (tokio-rustls), for what oha cannot do: hold connections open,
//! and make full handshakes with session resumption off.

use std::io::BufReader;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::peers::{Certs, SMALL_BYTES, SMALL_PATH};

/// The client side of mTLS with the suite's client identity. `resume: false` turns session
/// resumption off, so every connection is a full handshake.
pub fn client_config(certs: &Certs, resume: bool) -> Result<Arc<rustls::ClientConfig>> {
    let read = |p: std::path::PathBuf| -> Result<Vec<u8>> {
        std::fs::read(&p).with_context(|| format!("reading {p:?}"))
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut BufReader::new(&read(certs.ca())?[..])) {
        roots.add(c?)?;
    }
    let chain = rustls_pemfile::certs(&mut BufReader::new(&read(certs.client_cert())?[..]))
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut BufReader::new(&read(certs.client_key())?[..]))?
        .context("no private key in the client key file")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// One connection: handshake, one request, read the whole 1 KB response, keep it open.
pub async fn open(connector: TlsConnector, port: u16) -> Result<TlsStream<TcpStream>> {
    open_from(connector, port, Ipv4Addr::LOCALHOST).await
}

/// [`open`] from the loopback address `source`, so that many held connections can come from
/// many sources and each stays under a proxy's per-source connection cap.
pub async fn open_from(
    connector: TlsConnector,
    port: u16,
    source: Ipv4Addr,
) -> Result<TlsStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let tcp = socket
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await?;
    let name = ServerName::try_from("test.com")?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(format!("GET {SMALL_PATH} HTTP/1.1\r\nHost: test.com\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    // Bounded: a response bigger than 64 KB or a closed stream ends the loop.
    while buf.len() < 64 * 1024 {
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            bail!("the proxy closed the connection before the response ended");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if buf.len() >= end + 4 + SMALL_BYTES {
                if !buf.starts_with(b"HTTP/1.1 200") {
                    bail!("not a 200: {}", String::from_utf8_lossy(&buf[..end]));
                }
                return Ok(tls);
            }
        }
    }
    bail!("response too long")
}
