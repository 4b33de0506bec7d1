//! Reads the first bytes of a connection without consuming them: is it TLS, and if so, which
//! server name and protocols does its ClientHello ask for.
//!
//! Passthrough routing needs the SNI before any TLS state exists, and PERMISSIVE mode needs to
//! tell mTLS from plaintext on the same port; both look at the same bytes.

/// What the first record of a connection says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirstBytes {
    /// Not enough bytes yet to decide.
    NeedMore,
    /// Not a TLS handshake record: plaintext.
    Plaintext,
    /// A complete TLS ClientHello.
    ClientHello(ClientHelloInfo),
    /// It starts like TLS but the ClientHello is malformed or too large.
    BadTls(&'static str),
}

/// The parts of a ClientHello used for routing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    pub server_name: Option<String>,
    pub alpn: Vec<Vec<u8>>,
}

/// The largest ClientHello record we wait for (one TLS record).
pub const MAX_HELLO: usize = 5 + 16 * 1024;

/// True when `b` starts a TLS handshake record (`16 03 01..04`), the test the kernel's STRICT
/// program makes too.
pub fn is_tls_record_start(b: &[u8]) -> bool {
    matches!(b, [0x16, 0x03, 0x01..=0x04, ..])
}

/// Classifies the bytes received so far.
pub fn classify(buf: &[u8]) -> FirstBytes {
    if buf.len() < 3 {
        return match buf {
            [] | [0x16] | [0x16, 0x03] => FirstBytes::NeedMore,
            _ => FirstBytes::Plaintext,
        };
    }
    if !is_tls_record_start(buf) {
        return FirstBytes::Plaintext;
    }
    if buf.len() < 5 {
        return FirstBytes::NeedMore;
    }
    let record_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if record_len > MAX_HELLO - 5 {
        return FirstBytes::BadTls("record longer than 16 KiB");
    }
    if buf.len() < 5 + record_len {
        return FirstBytes::NeedMore;
    }
    match parse_client_hello(&buf[5..5 + record_len]) {
        Some(info) => FirstBytes::ClientHello(info),
        None => FirstBytes::BadTls("malformed ClientHello"),
    }
}

/// A cursor over a byte slice whose reads fail (return None) past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Option<Reader<'a>> {
        let n = usize::from(self.u8()?);
        self.take(n).map(Reader)
    }
    fn vec16(&mut self) -> Option<Reader<'a>> {
        let n = usize::from(self.u16()?);
        self.take(n).map(Reader)
    }
}

fn parse_client_hello(record: &[u8]) -> Option<ClientHelloInfo> {
    let mut r = Reader(record);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    // A ClientHello fragmented over several records is legal but never seen from real clients
    // within 16 KiB; treat it as malformed rather than buffer without bound.
    let len = r.u24()?;
    let mut hello = Reader(r.take(len)?);
    hello.take(2 + 32)?; // legacy_version, random
    hello.vec8()?; // session id
    hello.vec16()?; // cipher suites
    hello.vec8()?; // compression methods
    let mut info = ClientHelloInfo::default();
    let Some(mut exts) = hello.vec16() else {
        return Some(info); // no extensions (TLS 1.0-style hello)
    };
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let mut body = exts.vec16()?;
        match ty {
            0 => {
                let mut list = body.vec16()?;
                while !list.0.is_empty() {
                    let name_type = list.u8()?;
                    let name = list.vec16()?;
                    if name_type == 0 {
                        info.server_name =
                            Some(std::str::from_utf8(name.0).ok()?.to_ascii_lowercase());
                    }
                }
            }
            16 => {
                let mut list = body.vec16()?;
                while !list.0.is_empty() {
                    info.alpn.push(list.vec8()?.0.to_vec());
                }
            }
            _ => {}
        }
    }
    Some(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello, made by rustls's client for `name`, with ALPN h2 and http/1.1.
    fn real_hello(name: &str) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        roots.roots.clear();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(crate::tls::provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut config = config;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), server_name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn reads_sni_and_alpn_from_a_real_client_hello() {
        let hello = real_hello("Test.com");
        let FirstBytes::ClientHello(info) = classify(&hello) else {
            panic!("not classified as a hello: {:?}", classify(&hello));
        };
        assert_eq!(info.server_name.as_deref(), Some("test.com"));
        assert_eq!(info.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn waits_for_the_whole_record() {
        let hello = real_hello("test.com");
        for cut in [0, 1, 2, 4, 5, hello.len() - 1] {
            assert_eq!(
                classify(&hello[..cut]),
                FirstBytes::NeedMore,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn plaintext_is_recognised_from_the_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), FirstBytes::Plaintext);
        assert_eq!(classify(b"PRI * HTTP/2.0"), FirstBytes::Plaintext);
        assert_eq!(classify(b"\x16\x03\x09"), FirstBytes::Plaintext);
        assert_eq!(classify(b"G"), FirstBytes::Plaintext);
    }

    #[test]
    fn malformed_hellos_are_rejected_not_buffered() {
        assert_eq!(
            classify(b"\x16\x03\x01\xff\xff"),
            FirstBytes::BadTls("record longer than 16 KiB")
        );
        assert_eq!(
            classify(b"\x16\x03\x01\x00\x02\x01\x00"),
            FirstBytes::BadTls("malformed ClientHello")
        );
    }
}
