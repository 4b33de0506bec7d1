//! The drain: one signal that tells every listener to stop accepting and every connection to
//! close gracefully.

use tokio::sync::watch;

/// Starts the drain: listeners stop accepting, open connections close gracefully.
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<bool>,
}

/// What a listener or a connection watches to learn that the drain started.
#[derive(Clone, Debug)]
pub struct DrainSignal {
    rx: watch::Receiver<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        Self {
            tx: watch::channel(false).0,
        }
    }

    pub fn signal(&self) -> DrainSignal {
        DrainSignal {
            rx: self.tx.subscribe(),
        }
    }

    pub fn start(&self) {
        self.tx.send_replace(true);
    }
}

impl DrainSignal {
    /// A signal that never fires (tests, and listeners that live as long as the process).
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // The sender is leaked on purpose: a dropped sender would read as "drain".
        std::mem::forget(tx);
        Self { rx }
    }

    /// Resolves once the drain has started (or its [`Drain`] is gone).
    pub async fn draining(&mut self) {
        let _ = self.rx.wait_for(|d| *d).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}
