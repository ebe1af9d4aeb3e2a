//! The operator under test as its own process: the release `crabglamp-operator run` binary
//! pointed at the stand-ins, so its memory is measured apart from theirs (`VmHWM` from
//! `/proc/<pid>/status`). Its reconciles come from its JSON log: one `crabglamp::reconcile`
//! line per finished reconcile, carrying the kind, the object's name and the duration.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One finished reconcile, as the operator logged it.
#[derive(Clone, Debug)]
pub struct Reconcile {
    pub at: Instant,
    pub kind: String,
    /// The object's name (the benchmark's objects share one namespace).
    pub object: String,
    pub ok: bool,
    pub elapsed: Duration,
}

#[derive(Default)]
struct Log {
    reconciles: Vec<Reconcile>,
    /// Warnings and errors, the last few kept for the report.
    warnings: usize,
    last_warnings: Vec<String>,
}

/// A running operator process.
pub struct OperatorProcess {
    child: Child,
    log: Arc<Mutex<Log>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_log(stderr: impl std::io::Read, log: &Mutex<Log>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { return };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        let fields = &json["fields"];
        if json["target"] == crabglamp_operator::controllers::lifecycle::RECONCILE_LOG_TARGET {
            let reconcile = Reconcile {
                at: Instant::now(),
                kind: fields["kind"].as_str().unwrap_or_default().to_owned(),
                object: fields["object_name"].as_str().unwrap_or_default().to_owned(),
                ok: fields["outcome"] == "ok",
                elapsed: Duration::from_micros(fields["elapsed_us"].as_u64().unwrap_or_default()),
            };
            lock(log).reconciles.push(reconcile);
        } else if json["level"] == "WARN" || json["level"] == "ERROR" {
            let mut log = lock(log);
            log.warnings += 1;
            if log.last_warnings.len() < 5 {
                log.last_warnings.push(line);
            }
        }
    }
}

impl OperatorProcess {
    /// Starts `crabglamp-operator run` with these settings (the environment of `run`).
    /// `CRABGLAMP_BENCH_OPERATOR_WRAPPER` (e.g. `heaptrack -o /tmp/operator`) runs it under a
    /// profiler; the peak RSS printed is then the wrapper's, not the operator's.
    pub fn spawn(env: &[(String, String)]) -> std::io::Result<Self> {
        let binary = env!("CARGO_BIN_EXE_crabglamp-operator");
        let wrapper = std::env::var("CRABGLAMP_BENCH_OPERATOR_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(words).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command.arg("run").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for proxy in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
            command.env_remove(proxy);
        }
        command.env("CRABGLAMP_LOG_FORMAT", "json").env(
            "RUST_LOG",
            format!("warn,{}=debug", crabglamp_operator::controllers::lifecycle::RECONCILE_LOG_TARGET),
        );
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = command.spawn()?;
        let log = Arc::new(Mutex::new(Log::default()));
        let stderr = child.stderr.take().ok_or_else(|| std::io::Error::other("no stderr pipe"))?;
        let shared = Arc::clone(&log);
        let reader = std::thread::spawn(move || read_log(stderr, &shared));
        Ok(OperatorProcess { child, log, reader: Some(reader) })
    }

    /// The process's peak resident set (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Reconciles logged so far.
    pub fn reconciles(&self) -> Vec<Reconcile> {
        lock(&self.log).reconciles.clone()
    }

    /// Warnings and errors logged so far, and the first few of them.
    pub fn warnings(&self) -> (usize, Vec<String>) {
        let log = lock(&self.log);
        (log.warnings, log.last_warnings.clone())
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM (a graceful stop), then waits for it to exit.
    pub fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The `p`-th percentile (0-100) of some durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
