//! XFCC is how an upstream learns who the gateway verified: a value that escapes its field
//! lets a client with an odd certificate claim another identity (`DNS=x;URI=spiffe://admin`).
//!
//! Input: `subject \0 uri \x01 uri … \0 dns \x01 dns …` (any UTF-8; certificate fields are
//! IA5 or UTF8String and a CA may sign whatever a CSR asks for).
//!
//! Properties:
//! - `xfcc` reads back, by Envoy's documented grammar, as exactly one element holding exactly
//!   `Hash`, `Subject`, the first `URI` and every `DNS`, with the values given.
//! - `Identity::from_uri` never panics, and an identity it returns prints back as a URI that
//!   parses to the same identity (policies match on the printed principal).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::identity::{Identity, PeerCertificate};
use portcullis::proxy::headers::xfcc;
use portcullis_fuzz::{fields, xfcc_reads_back};

fuzz_target!(|data: &[u8]| {
    let f = fields(data, 3);
    let list = |i: usize| -> Vec<String> {
        f[i].as_deref()
            .map(|s| s.split('\x01').map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let (uris, dns_names) = (list(1), list(2));
    for uri in &uris {
        if let Some(id) = Identity::from_uri(uri) {
            assert_eq!(Identity::from_uri(&id.uri()).as_ref(), Some(&id), "{uri:?}");
            assert_eq!(id.uri(), format!("spiffe://{}", id.principal()));
        }
    }
    let cert = PeerCertificate {
        identity: uris.iter().find_map(|u| Identity::from_uri(u)),
        uris,
        dns_names,
        subject: f[0].clone().unwrap_or_default(),
        sha256_hex: "00ff".repeat(16),
    };
    xfcc_reads_back(&cert, &xfcc(&cert));
});
