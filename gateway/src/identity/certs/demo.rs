//! The walkthrough's certificate set on disk, under the file names `make-certs.sh` uses, plus
//! the `<host>/{tls.crt,tls.key,ca.crt}` credential directories the gateway reads.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::{host_san, issue_leaf, issue_workload_cert, Ca, CertsError, KeyType, DEMO_CA_NAME};

/// Private keys are readable by their owner only, like `openssl req -nodes` under a 077 umask.
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// What [`issue_demo_set`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    /// Directory the files go to; created if missing.
    pub out_dir: PathBuf,
    /// DNS names (or IP addresses) of the server certificate; the first is its common name.
    /// Each also gets a credential directory `<out_dir>/<host>/`.
    pub server_hosts: Vec<String>,
    /// The client certificate's SPIFFE id (its only URI SAN).
    pub client_spiffe_id: String,
    /// Key algorithm of all three keys.
    pub key_type: KeyType,
    /// Validity of all three certificates, in days.
    pub days: u32,
    /// Replace files that already exist instead of refusing.
    pub force: bool,
    /// Mesh workload identities: `(name, spiffe id)` each get a certificate with that SPIFFE
    /// id (and `name` as a DNS SAN) in a credential directory `<out_dir>/<name>/`, for
    /// `--mesh-credential name`.
    pub workloads: Vec<(String, String)>,
}

impl Default for IssueRequest {
    /// The walkthrough's set: `test.com` and `spiffe://test.client`, ECDSA P-256, one year,
    /// into the current directory.
    fn default() -> Self {
        Self {
            out_dir: PathBuf::from("."),
            server_hosts: vec!["test.com".to_owned()],
            client_spiffe_id: "spiffe://test.client".to_owned(),
            key_type: KeyType::default(),
            days: 365,
            force: false,
            workloads: Vec::new(),
        }
    }
}

/// Where [`issue_demo_set`] wrote each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedFiles {
    /// `cacert.pem`
    pub ca_cert: PathBuf,
    /// `cakey.pem`
    pub ca_key: PathBuf,
    /// `servercert.pem`
    pub server_cert: PathBuf,
    /// `serverkey.pem`
    pub server_key: PathBuf,
    /// `clientcert.pem`
    pub client_cert: PathBuf,
    /// `client.key.pem`
    pub client_key: PathBuf,
    /// One `<out_dir>/<host>` per server host, each holding `tls.crt`, `tls.key`, `ca.crt`.
    pub credential_dirs: Vec<PathBuf>,
}

/// Makes a CA, a server certificate and a client certificate signed by it, and writes them.
///
/// Nothing is written unless every certificate was issued, and, without `force`, unless none of
/// the files exists yet.
///
/// # Errors
/// Bad hosts, SPIFFE id or validity; key or signing failures; an existing file without `force`;
/// a file that cannot be written (the error names it).
pub fn issue_demo_set(req: &IssueRequest) -> Result<IssuedFiles, CertsError> {
    // A host named twice would be written twice; once is what was meant.
    let mut hosts: Vec<&String> = Vec::new();
    for host in &req.server_hosts {
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    let first_host = hosts.first().ok_or(CertsError::NoServerHost)?;
    let server_sans = hosts
        .iter()
        .map(|h| host_san(h))
        .collect::<Result<Vec<_>, _>>()?;

    let ca = Ca::generate(DEMO_CA_NAME, req.key_type, req.days)?;
    let server = issue_leaf(
        &ca,
        "server certificate",
        first_host,
        server_sans,
        req.key_type,
        req.days,
    )?;
    let client = issue_workload_cert(&ca, &req.client_spiffe_id, &[], req.key_type, req.days)?;
    let workloads = req
        .workloads
        .iter()
        .map(|(name, id)| {
            host_san(name)?;
            Ok((
                name,
                issue_workload_cert(&ca, id, std::slice::from_ref(name), req.key_type, req.days)?,
            ))
        })
        .collect::<Result<Vec<_>, CertsError>>()?;

    let out = &req.out_dir;
    let files = IssuedFiles {
        ca_cert: out.join("cacert.pem"),
        ca_key: out.join("cakey.pem"),
        server_cert: out.join("servercert.pem"),
        server_key: out.join("serverkey.pem"),
        client_cert: out.join("clientcert.pem"),
        client_key: out.join("client.key.pem"),
        credential_dirs: hosts
            .iter()
            .map(|h| out.join(h))
            .chain(workloads.iter().map(|(name, _)| out.join(name)))
            .collect(),
    };
    let ca_key = ca.key_pem();
    let mut writes: Vec<(PathBuf, &str, u32)> = vec![
        (files.ca_cert.clone(), ca.cert_pem(), CERT_MODE),
        (files.ca_key.clone(), &ca_key, KEY_MODE),
        (files.server_cert.clone(), &server.cert_pem, CERT_MODE),
        (files.server_key.clone(), &server.key_pem, KEY_MODE),
        (files.client_cert.clone(), &client.cert_pem, CERT_MODE),
        (files.client_key.clone(), &client.key_pem, KEY_MODE),
    ];
    for host in &hosts {
        let dir = out.join(host);
        writes.push((dir.join("tls.crt"), &server.cert_pem, CERT_MODE));
        writes.push((dir.join("tls.key"), &server.key_pem, KEY_MODE));
        writes.push((dir.join("ca.crt"), ca.cert_pem(), CERT_MODE));
    }
    for (name, cert) in &workloads {
        let dir = out.join(name);
        writes.push((dir.join("tls.crt"), &cert.cert_pem, CERT_MODE));
        writes.push((dir.join("tls.key"), &cert.key_pem, KEY_MODE));
        writes.push((dir.join("ca.crt"), ca.cert_pem(), CERT_MODE));
    }

    if !req.force {
        for (path, _, _) in &writes {
            match fs::symlink_metadata(path) {
                Ok(_) => return Err(CertsError::AlreadyExists { path: path.clone() }),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => return Err(io_error(path, source)),
            }
        }
    }
    for dir in std::iter::once(out).chain(&files.credential_dirs) {
        fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
    }
    for (path, contents, mode) in &writes {
        write_new(path, contents, *mode, req.force)?;
    }
    Ok(files)
}

/// Writes `contents` to a file created with `mode`. A key must never exist, even for an
/// instant, with wider permissions, so with `force` the old file is removed rather than
/// truncated (truncating keeps its old mode).
fn write_new(path: &Path, contents: &str, mode: u32, force: bool) -> Result<(), CertsError> {
    if force {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(io_error(path, source)),
        }
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            ErrorKind::AlreadyExists => CertsError::AlreadyExists {
                path: path.to_owned(),
            },
            _ => io_error(path, source),
        })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| io_error(path, source))
}

fn io_error(path: &Path, source: std::io::Error) -> CertsError {
    CertsError::Io {
        path: path.to_owned(),
        source,
    }
}
