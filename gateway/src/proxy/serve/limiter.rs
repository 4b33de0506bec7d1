//! The downstream connection caps (`--max-connections`, `--max-connections-per-source`):
//! who is admitted, and a permit that frees the place when the connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::proxy::limits::LimitReason;

/// The downstream connection caps, shared by every listener of the process.
#[derive(Debug)]
pub struct ConnLimiter {
    max: usize,
    per_source: usize,
    open: AtomicUsize,
    by_source: Mutex<HashMap<IpAddr, usize>>,
    closed: Notify,
}

/// One admitted connection; dropping it frees its place under the caps.
#[derive(Debug)]
pub struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    source: IpAddr,
}

impl ConnLimiter {
    pub fn new(max: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_source,
            open: AtomicUsize::new(0),
            by_source: Mutex::new(HashMap::new()),
            closed: Notify::new(),
        })
    }

    /// Admits a connection from `source`, or says which cap it is over.
    pub fn try_admit(self: &Arc<Self>, source: IpAddr) -> Result<ConnPermit, LimitReason> {
        let source = source.to_canonical();
        let mut by_source = self
            .by_source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.open.load(Ordering::Relaxed) >= self.max {
            return Err(LimitReason::max_connections);
        }
        let n = by_source.entry(source).or_insert(0);
        if *n >= self.per_source {
            return Err(LimitReason::max_connections_per_source);
        }
        *n += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(ConnPermit {
            limiter: self.clone(),
            source,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Resolves when no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut by_source = self
            .limiter
            .by_source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(n) = by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_source.remove(&self.source);
            }
        }
        if self.limiter.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.limiter.closed.notify_waiters();
        }
    }
}
