//! `PeerCertificate::from_der` reads the leaf of every verified client chain (and, through
//! x509-parser, whatever DER a fuzzer makes): it must never panic, and what it reads must
//! be consistent.
//!
//! Properties:
//! - `from_der` never panics on any bytes.
//! - A parsed certificate has at most one URI SAN that claims the `spiffe` scheme (in any
//!   case), which is a valid SPIFFE ID and its identity (anything else fails `from_der`); the
//!   identity prints back as a URI that parses to the same identity; the hash is 64 lowercase
//!   hex digits.
//! - Its XFCC reads back as exactly its fields (see the `xfcc` target).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::identity::spiffe::claims_spiffe;
use portcullis::identity::{Identity, PeerCertificate};
use portcullis::proxy::headers::xfcc;
use portcullis_fuzz::xfcc_reads_back;

fuzz_target!(|data: &[u8]| {
    let Ok(cert) = PeerCertificate::from_der(data) else {
        return;
    };
    assert_eq!(
        cert.identity,
        cert.uris.iter().find_map(|u| Identity::from_uri(u))
    );
    let claimed = cert.uris.iter().filter(|u| claims_spiffe(u)).count();
    assert_eq!(
        claimed,
        usize::from(cert.identity.is_some()),
        "{:?}",
        cert.uris
    );
    if let Some(id) = &cert.identity {
        assert_eq!(Identity::from_uri(&id.uri()).as_ref(), Some(id));
        assert_eq!(cert.principal(), Some(id.principal()));
    }
    assert_eq!(cert.sha256_hex.len(), 64);
    assert!(cert
        .sha256_hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    xfcc_reads_back(&cert, &xfcc(&cert));
});
