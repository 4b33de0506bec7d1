//! `portcullis certs`: writes the walkthrough's demo certificates without openssl.

use std::path::PathBuf;

use anyhow::Context as _;

use super::{issue_demo_set, IssueRequest, KeyType, MAX_DAYS};

/// Arguments of `portcullis certs`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Make a demo CA, server and client certificate set (no openssl needed)",
    long_about = "Make the certificate set of the ingress mTLS walkthrough: a CA (cacert.pem, \
cakey.pem), a server certificate with a DNS SAN per --host (servercert.pem, serverkey.pem), a \
client certificate with a SPIFFE URI SAN (clientcert.pem, client.key.pem), and for each host a \
credential directory DIR/<host>/{tls.crt,tls.key,ca.crt} to name as a Gateway's \
credentialName. Private keys are written with mode 0600. Existing files are left alone unless \
--force is given."
)]
pub struct CertsArgs {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// DNS name (or IP address) of the server certificate; repeat for more SANs.
    #[arg(long = "host", value_name = "HOST", default_value = "test.com")]
    pub hosts: Vec<String>,
    /// SPIFFE id of the client certificate (its URI SAN); the principal is the part after
    /// spiffe://.
    #[arg(long, value_name = "SPIFFE_ID", default_value = "spiffe://test.client")]
    pub client_id: String,
    /// Key algorithm. rsa-2048 runs the openssl CLI to make the keys (the ring backend
    /// cannot generate RSA keys).
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,
    /// Validity of every certificate, in days.
    #[arg(long, value_name = "N", default_value_t = 365,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
    pub days: u32,
    /// Replace existing files instead of refusing.
    #[arg(long)]
    pub force: bool,
    /// A mesh workload identity `NAME=SPIFFE_ID` (repeatable): its certificate and key go to
    /// DIR/NAME/{tls.crt,tls.key,ca.crt}, signed by the same CA, for `run --mesh-credential NAME`.
    #[arg(long = "workload", value_name = "NAME=SPIFFE_ID", value_parser = parse_workload)]
    pub workloads: Vec<(String, String)>,
}

fn parse_workload(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, id)) if !name.is_empty() && id.starts_with("spiffe://") => {
            Ok((name.to_owned(), id.to_owned()))
        }
        _ => Err(format!("{s:?} is not NAME=spiffe://…")),
    }
}

/// Writes the set and prints where each file went.
pub async fn run(args: CertsArgs) -> anyhow::Result<()> {
    let req = IssueRequest {
        out_dir: args.out,
        server_hosts: args.hosts,
        client_spiffe_id: args.client_id,
        key_type: args.key_type,
        days: args.days,
        force: args.force,
        workloads: args.workloads,
    };
    // Key generation (and, for RSA, the openssl child) blocks; keep it off the runtime threads.
    let out_dir = req.out_dir.clone();
    let files = tokio::task::spawn_blocking(move || issue_demo_set(&req))
        .await
        .context("the certificate issuing task failed")?
        .with_context(|| format!("making demo certificates in {}", out_dir.display()))?;
    println!(
        "CA:     {} {}",
        files.ca_cert.display(),
        files.ca_key.display()
    );
    println!(
        "server: {} {}",
        files.server_cert.display(),
        files.server_key.display()
    );
    println!(
        "client: {} {}",
        files.client_cert.display(),
        files.client_key.display()
    );
    for dir in &files.credential_dirs {
        println!("credential: {}/{{tls.crt,tls.key,ca.crt}}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: CertsArgs,
    }

    #[test]
    fn defaults_are_the_walkthrough() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["certs", "--out", "certs"]).expect("parse");
        assert_eq!(cli.args.hosts, ["test.com"]);
        assert_eq!(cli.args.client_id, "spiffe://test.client");
        assert_eq!(cli.args.key_type, KeyType::EcdsaP256);
        assert_eq!(cli.args.days, 365);
        assert!(!cli.args.force);
    }

    #[test]
    fn options_parse_and_days_are_bounded() {
        let cli = Cli::try_parse_from([
            "certs",
            "--out",
            "d",
            "--host",
            "a.test",
            "--host",
            "b.test",
            "--key-type",
            "rsa-2048",
            "--days",
            "7",
            "--force",
        ])
        .expect("parse");
        assert_eq!(cli.args.hosts, ["a.test", "b.test"]);
        assert_eq!(cli.args.key_type, KeyType::Rsa2048);
        assert_eq!(cli.args.days, 7);
        assert!(cli.args.force);
        assert!(Cli::try_parse_from(["certs", "--out", "d", "--days", "0"]).is_err());
        assert!(Cli::try_parse_from(["certs"]).is_err(), "--out is required");
    }

    #[tokio::test]
    async fn run_writes_the_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("demo");
        let cli = Cli::try_parse_from(["certs", "--out", out.to_str().expect("utf-8 path")])
            .expect("parse");
        run(cli.args).await.expect("run");
        assert!(out.join("test.com/tls.key").is_file());
    }
}
