//! The one reconciler: watch the configuration files, compile, publish.
//!
//! Every part of the daemon that follows the configuration subscribes to the same
//! [`SnapshotBus`]: the ingress listeners (ports bound and unbound live), the mesh terminator
//! and originator (each request is decided by the newest snapshot), open connections (a
//! client certificate that the new server settings refuse closes its connection), the kernel
//! maps and the capture ([`crate::mesh::KernelSync`]). `portcullis kernel run` runs the same
//! reconciler with the kernel as its only subscriber, so one YAML always gives one set of maps.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::watch::{fingerprint, Fingerprint};
use crate::config::ConfigErrors;
use crate::snapshot::Snapshot;

/// The current snapshot and the channel that announces the next one.
#[derive(Clone, Debug)]
pub struct SnapshotBus {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl SnapshotBus {
    pub fn new(initial: Snapshot) -> Self {
        let (tx, _) = watch::channel(Arc::new(initial));
        Self { tx: Arc::new(tx) }
    }

    /// The newest snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver that wakes on every later publish.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Replaces the snapshot whole and wakes every subscriber.
    pub fn publish(&self, snapshot: Snapshot) {
        self.tx.send_replace(Arc::new(snapshot));
    }
}

/// What compiles the files into a snapshot (`portcullis run` and `kernel run` pass theirs).
pub type Compile = Box<dyn Fn() -> Result<Snapshot, ConfigErrors> + Send + Sync>;

/// Polls the files behind a configuration and publishes each good compile.
pub struct Reconciler {
    paths: Vec<PathBuf>,
    compile: Compile,
    every: Duration,
    bus: SnapshotBus,
    /// The files as they were when the published snapshot was read: taken in `new`, so an
    /// edit made before `run` starts is not missed.
    last: Fingerprint,
}

impl Reconciler {
    /// `paths`: configuration files and directories, credential directories included (a
    /// renewed certificate is a reload too). `every`: the polling period.
    pub fn new(paths: Vec<PathBuf>, compile: Compile, every: Duration, bus: SnapshotBus) -> Self {
        Self {
            last: fingerprint(&paths),
            paths,
            compile,
            every,
            bus,
        }
    }

    /// Reloads on any change since `seen`, a fingerprint taken before the published snapshot
    /// was read (an edit made while the daemon started is then not missed).
    pub fn since(mut self, seen: Fingerprint) -> Self {
        self.last = seen;
        self
    }

    /// Runs until the task is dropped. A configuration that does not compile is reported
    /// once and the last good one stays in force; the next edit is tried again.
    pub async fn run(self) {
        let mut last = self.last.clone();
        loop {
            tokio::time::sleep(self.every).await;
            let now = fingerprint(&self.paths);
            if now == last {
                continue;
            }
            last = now;
            self.reload();
        }
    }

    fn reload(&self) {
        match (self.compile)() {
            Ok(snapshot) => {
                tracing::info!("configuration reloaded");
                self.bus.publish(snapshot);
            }
            Err(e) => {
                tracing::error!("configuration not applied, the last good one stays in force: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Resources, Settings};
    use crate::snapshot::compile;

    #[tokio::test]
    async fn a_good_edit_is_published_and_a_bad_one_is_not() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("ns.yaml");
        std::fs::write(&file, "").expect("write");
        let bus =
            SnapshotBus::new(compile(Resources::default(), Settings::default()).expect("empty"));
        let mut rx = bus.subscribe();
        let paths = vec![file.clone()];
        let load = {
            let paths = paths.clone();
            Box::new(move || compile(crate::config::load_paths(&paths)?, Settings::default()))
                as Compile
        };
        let task = tokio::spawn(
            Reconciler::new(paths, load, Duration::from_millis(20), bus.clone()).run(),
        );
        let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/authz.yaml");
        std::fs::copy(policy, &file).expect("copy");
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("the good edit is published in time")
            .expect("published");
        assert_eq!(bus.current().resources.authorization_policies.len(), 1);
        std::fs::write(&file, "kind: AuthorizationPolicy\nspec: [not, a, map]\n").expect("write");
        // Wait until the bad edit has been seen (two polls), then check nothing was published.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !rx.has_changed().expect("open"),
            "a bad edit is not published"
        );
        assert_eq!(bus.current().resources.authorization_policies.len(), 1);
        task.abort();
    }
}
