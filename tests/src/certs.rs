//! Test certificates made with the real `openssl` CLI, the way an operator following Istio's
//! "mTLS on the ingress gateway" walkthrough makes them (the same steps and configuration files
//! as `shared/openssl-certs/make-certs.sh`, kept in `tests/fixtures/openssl/` so a plain clone
//! runs the suite).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::process::run;

/// Paths of the walkthrough's files in one directory.
pub struct OpensslCerts {
    pub dir: PathBuf,
}

impl OpensslCerts {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("cacert.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("servercert.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("serverkey.pem")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("clientcert.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key.pem")
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/openssl")
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = run(Command::new("openssl").args(args).current_dir(dir))?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Makes the CA, server (`DNS:test.com`) and client (`URI:spiffe://test.client`) certificates in
/// `dir` with `openssl req` / `openssl ca`, accepting every default.
pub fn make_openssl_certs(dir: &Path) -> Result<OpensslCerts> {
    for cnf in ["ca.cnf", "server.cnf", "client.cnf"] {
        std::fs::copy(fixtures().join(cnf), dir.join(cnf))
            .with_context(|| format!("copying {cnf}"))?;
    }
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-config",
            "ca.cnf",
            "-newkey",
            "rsa:4096",
            "-sha256",
            "-nodes",
            "-out",
            "cacert.pem",
            "-outform",
            "PEM",
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-config",
            "server.cnf",
            "-newkey",
            "rsa:2048",
            "-sha256",
            "-nodes",
            "-out",
            "server.csr",
            "-outform",
            "PEM",
            "-batch",
        ],
    )?;
    std::fs::write(dir.join("index.txt"), "")?;
    std::fs::write(dir.join("serial.txt"), "01\n")?;
    ca_sign(dir, "server.csr", "servercert.pem")?;
    openssl(
        dir,
        &[
            "req",
            "-config",
            "client.cnf",
            "-newkey",
            "rsa:2048",
            "-sha256",
            "-nodes",
            "-out",
            "clientcert.csr",
            "-outform",
            "PEM",
            "-batch",
        ],
    )?;
    ca_sign(dir, "clientcert.csr", "clientcert.pem")?;
    let certs = OpensslCerts {
        dir: dir.to_owned(),
    };
    for p in [
        certs.ca_cert(),
        certs.server_cert(),
        certs.server_key(),
        certs.client_cert(),
        certs.client_key(),
    ] {
        if !p.exists() {
            bail!("openssl did not make {}", p.display());
        }
    }
    Ok(certs)
}

/// `openssl ca` as the walkthrough runs it: the CA in `dir` signs `csr` into `out`, copying
/// the request's extensions.
fn ca_sign(dir: &Path, csr: &str, out: &str) -> Result<()> {
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-policy",
            "signing_policy",
            "-extensions",
            "signing_req",
            "-out",
            out,
            "-infiles",
            csr,
        ],
    )
}

/// A client key and certificate signed by the walkthrough CA in `dir` with `openssl req` +
/// `openssl ca` (which copies the request's extensions), named `<name>.{key,pem}`, with
/// `subjectAltName=<san>` when `san` is given (`URI:spiffe://x,DNS:y`: openssl takes any URI).
pub fn openssl_client(dir: &Path, name: &str, san: Option<&str>) -> Result<()> {
    openssl_client_ext(dir, name, san.map(|s| format!("subjectAltName={s}")))
}

/// [`openssl_client`] with the request extension `ext` spelled in OpenSSL's config syntax,
/// e.g. `2.5.29.17=DER:<hex>` for a subjectAltName with exactly the bytes an attacker chose
/// (the walkthrough CA copies it, as CAs with `copy_extensions = copy` do).
pub fn openssl_client_ext(dir: &Path, name: &str, ext: Option<String>) -> Result<()> {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let pem = format!("{name}.pem");
    let subj = format!("/CN={name}");
    let mut req = vec![
        "req", "-new", "-newkey", "rsa:2048", "-sha256", "-nodes", "-keyout", &key, "-out", &csr,
        "-subj", &subj,
    ];
    if let Some(ext) = &ext {
        req.extend(["-addext", ext]);
    }
    openssl(dir, &req)?;
    ca_sign(dir, &csr, &pem)
}
