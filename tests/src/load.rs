//! A bounded load loop of real curl clients for the lifecycle tests: each worker runs one curl
//! after another, each curl sending a batch of requests over one keep-alive connection, and
//! sorts every request's outcome into served, refused (nothing listened: the connect failed)
//! and lost (anything else: a reset, an empty reply, a timeout, a 5xx).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::process::run;

/// How a worker talks to the gateway.
#[derive(Clone, Debug)]
pub enum Transport {
    /// Plain HTTP/1.1 to `127.0.0.1:port`.
    Plain { port: u16 },
    /// mTLS to `test.com:port` with the walkthrough's client certificate; `h2` or HTTP/1.1.
    Mtls {
        port: u16,
        h2: bool,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

impl Transport {
    fn args(&self) -> (Vec<String>, String) {
        match self {
            Transport::Plain { port } => (Vec::new(), format!("http://127.0.0.1:{port}")),
            Transport::Mtls {
                port,
                h2,
                ca,
                cert,
                key,
            } => {
                let mut args = vec![
                    "--resolve".to_owned(),
                    format!("test.com:{port}:127.0.0.1"),
                    "--cacert".to_owned(),
                    ca.display().to_string(),
                    "--cert".to_owned(),
                    cert.display().to_string(),
                    "--key".to_owned(),
                    key.display().to_string(),
                ];
                args.push(if *h2 { "--http2" } else { "--http1.1" }.to_owned());
                (args, format!("https://test.com:{port}"))
            }
        }
    }
}

/// What the workers saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub served: u64,
    /// The connect failed: the gateway was not listening (after a stop).
    pub refused: u64,
    pub lost: u64,
    /// A few of the lost ones, with curl's message.
    pub lost_samples: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.served += other.served;
        self.refused += other.refused;
        self.lost += other.lost;
        for s in &other.lost_samples {
            if self.lost_samples.len() < 20 {
                self.lost_samples.push(s.clone());
            }
        }
    }
}

/// Running workers; [`Load::stop`] joins them and returns the tally.
pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// One worker per transport. Each curl sends `batch` requests: `/get`, with every
    /// `slow_every`-th one `/delay/1` (0: none). Workers stop by themselves after `limit`.
    pub fn start(
        transports: &[Transport],
        batch: usize,
        slow_every: usize,
        limit: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let workers = transports
            .iter()
            .cloned()
            .map(|t| {
                let (stop, tally) = (stop.clone(), tally.clone());
                std::thread::spawn(move || worker(&t, batch, slow_every, limit, &stop, &tally))
            })
            .collect();
        Self {
            stop,
            tally,
            workers,
        }
    }

    /// The tally so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Stops the workers after their current curl and returns the tally.
    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            let _ = w.join();
        }
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

fn worker(
    t: &Transport,
    batch: usize,
    slow_every: usize,
    limit: Duration,
    stop: &AtomicBool,
    tally: &Mutex<Tally>,
) {
    let (base_args, base) = t.args();
    let start = Instant::now();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) && start.elapsed() < limit {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "30",
            "-w",
            "%{http_code} %{exitcode} %{errormsg}\\n",
        ])
        .args(&base_args);
        for _ in 0..batch {
            n += 1;
            let path = if slow_every > 0 && n.is_multiple_of(slow_every) {
                "/delay/1".to_owned()
            } else {
                format!("/get?n={n}")
            };
            cmd.args(["-o", "/dev/null"]).arg(format!("{base}{path}"));
        }
        let Ok(out) = run(&mut cmd) else {
            continue;
        };
        let mut mine = Tally::default();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut parts = line.splitn(3, ' ');
            let code = parts.next().unwrap_or("");
            let exit = parts.next().unwrap_or("");
            let msg = parts.next().unwrap_or("");
            if code == "200" {
                mine.served += 1;
            } else if code == "000" && exit == "7" {
                mine.refused += 1;
            } else {
                mine.lost += 1;
                mine.lost_samples.push(format!("{t:?}: {line}"));
            }
            let _ = msg;
        }
        let refused = mine.refused > 0;
        if let Ok(mut all) = tally.lock() {
            all.add(&mine);
        }
        if refused {
            // Nothing listens: do not spin.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
