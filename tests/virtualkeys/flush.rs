//! `KeyCache::clear_namespace` outlasting the client's response deadline: it scans the whole
//! server, so a busy Redis can answer late. Played against a Redis of the test's own (the shared
//! one is never paused), frozen with SIGSTOP so the first attempts time out for certain.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crabglamp_operator::cache::KeyCache;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A throwaway `redis-server` on a free port; killed when dropped.
struct PrivateRedis {
    child: Child,
    url: String,
}

impl PrivateRedis {
    async fn start() -> PrivateRedis {
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
        PrivateRedis { child, url }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal the private Redis");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_flush_that_outlasts_the_response_deadline_is_retried_until_it_lands() {
    let redis = PrivateRedis::start().await;
    let cache = KeyCache::connect(&redis.url, "flush-test:").await.expect("connect");
    let mut raw = redis::Client::open(redis.url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    for name in ["flush-test:a", "flush-test:b", "other:c"] {
        redis::cmd("SET").arg(name).arg("1").query_async::<()>(&mut raw).await.expect("seed a key");
    }

    // Frozen for three response deadlines (500 ms each): one attempt alone would fail.
    redis.signal(Signal::SIGSTOP);
    let paused = std::sync::Arc::new(redis);
    let resume = {
        let redis = paused.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            redis.signal(Signal::SIGCONT);
        })
    };
    let flushed = cache.clear_namespace().await;
    resume.await.expect("resume task");
    flushed.expect("the flush lands once Redis answers again");

    let left: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut raw).await.expect("list keys");
    assert_eq!(left, vec!["other:c".to_owned()], "the namespace is gone, the rest untouched");
}
