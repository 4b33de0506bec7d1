//! Reloads: an edited policy or a renewed credential takes effect without a restart, and a
//! bad one is reported while the last good configuration keeps serving.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use e2e::walkthrough::{Identity, Walkthrough};

const DENY_200: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-200, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {principals: [test.client]}}]\n    to: [{operation: {paths: [/status/200]}}]\n";

/// Polls `f` until it returns true (bounded).
fn eventually(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..100 {
        if f()? {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what}: not within {:?}", start.elapsed())
}

/// Writes a file the way an operator's tooling should: whole, then renamed into place.
fn replace(path: &std::path::Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[test]
fn policy_and_credential_reloads_keep_the_last_good_config() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let w = Walkthrough::prepare(tmp.path())?;
    let gw = w.start_gateway(&["--admin", "off", "--reload-ms", "100"])?;
    assert_eq!(gw.https("/status/418", Identity::Client)?, "403");
    assert_eq!(gw.https("/status/200", Identity::Client)?, "200");

    // A policy with a typo: reported, and the running policy stays.
    let extra = w.config.join("deny-200.yaml");
    replace(&extra, DENY_200.replace("paths:", "pathz:").as_bytes())?;
    eventually("the bad policy is reported", || {
        Ok(gw.daemon.log().contains("configuration not applied")
            && gw.daemon.log().contains("pathz"))
    })?;
    assert_eq!(gw.https("/status/418", Identity::Client)?, "403");
    assert_eq!(gw.https("/status/200", Identity::Client)?, "200");

    // The fixed policy takes effect without a restart.
    replace(&extra, DENY_200.as_bytes())?;
    let took = eventually("the new policy applies", || {
        Ok(gw.https("/status/200", Identity::Client)? == "403")
    })?;
    eprintln!("policy reload took effect in {took:?}");
    assert_eq!(gw.https("/status/418", Identity::Client)?, "403");
    assert_eq!(gw.https("/status/418", Identity::Server)?, "418");

    // A credential whose key does not match its certificate: reported, the old one serves.
    let key = w.credentials.join("test.com/tls.key");
    let good_key = std::fs::read(&key)?;
    replace(&key, &std::fs::read(w.certs.client_key())?)?;
    eventually("the bad credential is reported", || {
        Ok(gw
            .daemon
            .log()
            .contains("tls.key does not match the certificate"))
    })?;
    assert_eq!(
        gw.https("/status/418", Identity::Server)?,
        "418",
        "the last good certificate still serves"
    );
    replace(&key, &good_key)?;
    let log_len = gw.daemon.log().len();
    eventually("the restored credential reloads", || {
        Ok(gw.daemon.log()[log_len..].contains("configuration reloaded"))
    })?;
    assert_eq!(gw.https("/status/418", Identity::Server)?, "418");
    Ok(())
}
