//! Log capture for a test binary: every line of our crates at debug (`RUST_LOG` overrides),
//! kept in memory so leak tests can search it for secrets, and printed only when
//! `CRABGLAMP_TEST_LOGS` is set. One capture per test binary (each links this crate once).

static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        if std::env::var_os("CRABGLAMP_TEST_LOGS").is_some() {
            eprint!("{}", String::from_utf8_lossy(buf));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (once per binary; later calls do nothing).
pub fn install() {
    let filter = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| "info,crabglamp_operator=debug,crabglamp_sandbox=debug,kube=debug".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(|| Capture)
        .try_init();
}

/// Everything logged so far by this test binary.
pub fn captured() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned()
}
