//! A `redis-server` of a test's own, for faults the shared one must never see (a pause, a
//! usage hash so large that reading it blocks Redis for everyone).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A throwaway `redis-server` on a free port; killed when dropped.
pub struct PrivateRedis {
    child: Child,
    pub url: String,
    dir: std::path::PathBuf,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        // Its own empty directory: a redis-server loads the dump.rdb of its working directory.
        let dir = std::env::temp_dir().join(format!("crabglamp-private-redis-{port}"));
        std::fs::create_dir_all(&dir).expect("a directory for the private Redis");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test installs it)");
        let url = format!("redis://127.0.0.1:{port}/0");
        let client = redis::Client::open(url.as_str()).expect("redis url");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the private Redis did not answer within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        PrivateRedis { child, url, dir }
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal the private Redis");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
