//! PostgreSQL and Redis for the sandbox: the ones named by `DATABASE_URL`/`REDIS_URL`, else the
//! ones on localhost's default ports, else throwaway servers started from the binaries on the
//! machine in a temporary directory (stopped and removed when the sandbox ends).
//!
//! It never installs anything: when a binary is missing the error says what to install.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crabglamp_operator::store::redact_url;

/// Why a service could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A server binary is not installed.
    #[error(
        "{binary} not found; install it (Debian/Ubuntu: `apt-get install -y {package}`) or set {env} to a running server"
    )]
    Missing {
        /// The binary looked for.
        binary: &'static str,
        /// The Debian package providing it.
        package: &'static str,
        /// The variable that would avoid it.
        env: &'static str,
    },
    /// A command failed.
    #[error("{what} failed: {detail}")]
    Failed {
        /// What was attempted.
        what: String,
        /// Its output or error.
        detail: String,
    },
    /// The URL given does not answer.
    #[error("{env} is set but nothing answers at {url}")]
    Unreachable {
        /// The variable.
        env: &'static str,
        /// Its value (credentials removed).
        url: String,
    },
    /// I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A service the sandbox uses, and how to clean it up.
pub struct Service {
    /// Its URL.
    pub url: String,
    /// Where it came from, for the banner.
    pub origin: String,
    cleanup: Cleanup,
}

enum Cleanup {
    None,
    Postgres { pg_ctl: PathBuf, data: PathBuf },
    Child(Child),
}

impl Service {
    /// Stops a throwaway server.
    pub async fn stop(self) {
        match self.cleanup {
            Cleanup::None => {}
            Cleanup::Postgres { pg_ctl, data } => {
                let mut cmd = as_postgres_user(&pg_ctl);
                cmd.arg("-D").arg(&data).args(["-m", "immediate", "stop"]).stdout(Stdio::null()).stderr(Stdio::null());
                let _ = cmd.status().await;
            }
            Cleanup::Child(mut child) => {
                let _ = child.kill().await;
            }
        }
    }
}

async fn port_open(port: u16) -> bool {
    tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(("127.0.0.1", port)))
        .await
        .is_ok_and(|r| r.is_ok())
}

async fn postgres_answers(url: &str) -> bool {
    use sqlx::Connection;
    matches!(tokio::time::timeout(Duration::from_secs(3), sqlx::PgConnection::connect(url)).await, Ok(Ok(_)))
}

async fn redis_answers(url: &str) -> bool {
    let hostport = url.trim_start_matches("redis://").split('/').next().unwrap_or_default();
    let hostport = hostport.rsplit('@').next().unwrap_or_default().to_owned();
    let attempt = async {
        let mut s = TcpStream::connect(hostport).await?;
        s.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await?;
        Ok::<bool, std::io::Error>(buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), attempt).await, Ok(Ok(true)))
}

async fn free_port() -> Result<u16, std::io::Error> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    // Debian keeps the server binaries out of PATH.
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Whether this process runs as root (by its uid: `USER` may be stale or unset in containers).
fn is_root() -> bool {
    Path::new("/proc/self").metadata().is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    })
}

/// initdb refuses to run as root: run PostgreSQL as the `postgres` user Debian's package creates.
fn as_postgres_user(binary: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(binary);
        c
    } else {
        Command::new(binary)
    }
}

async fn run(mut cmd: Command, what: &str) -> Result<(), ServiceError> {
    let out = cmd.stdin(Stdio::null()).output().await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ServiceError::Failed {
            what: what.to_owned(),
            detail: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        })
    }
}

/// PostgreSQL: `DATABASE_URL`, else 127.0.0.1:5432 as `postgres`, else (or when `fresh`) a
/// throwaway server in `dir`.
pub async fn postgres(dir: &Path, fresh: bool) -> Result<Service, ServiceError> {
    if !fresh && let Some(found) = existing_postgres().await? {
        return Ok(found);
    }
    start_postgres(dir).await
}

async fn existing_postgres() -> Result<Option<Service>, ServiceError> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !postgres_answers(&url).await {
            return Err(ServiceError::Unreachable { env: "DATABASE_URL", url: redact_url(&url) });
        }
        return Ok(Some(Service { url, origin: "DATABASE_URL".into(), cleanup: Cleanup::None }));
    }
    let local = "postgres://postgres@127.0.0.1:5432/postgres".to_owned();
    if port_open(5432).await && postgres_answers(&local).await {
        return Ok(Some(Service { url: local, origin: "found on 127.0.0.1:5432".into(), cleanup: Cleanup::None }));
    }
    Ok(None)
}

async fn start_postgres(dir: &Path) -> Result<Service, ServiceError> {
    let missing = || ServiceError::Missing { binary: "initdb/pg_ctl", package: "postgresql", env: "DATABASE_URL" };
    let initdb = find_binary("initdb").ok_or_else(missing)?;
    let pg_ctl = find_binary("pg_ctl").ok_or_else(missing)?;
    let data = dir.join("pg");
    std::fs::create_dir_all(&data)?;
    if is_root() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        run(
            {
                let mut c = Command::new("chown");
                c.arg("postgres").arg(&data);
                c
            },
            "chown of the PostgreSQL data directory",
        )
        .await?;
    }
    let port = free_port().await?;
    let mut init = as_postgres_user(&initdb);
    init.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8"]);
    run(init, "initdb").await?;
    let mut start = as_postgres_user(&pg_ctl);
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(data.join("server.log"))
        .arg("-w")
        .arg("-o")
        .arg(format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", data.display()))
        .arg("start");
    run(start, "pg_ctl start").await?;
    Ok(Service {
        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        origin: format!("throwaway server in {}", data.display()),
        cleanup: Cleanup::Postgres { pg_ctl, data },
    })
}

/// Redis: `REDIS_URL`, else 127.0.0.1:6379, else (or when `fresh`) a throwaway `redis-server`
/// in `dir`.
pub async fn redis(dir: &Path, fresh: bool) -> Result<Service, ServiceError> {
    if !fresh && let Some(found) = existing_redis().await? {
        return Ok(found);
    }
    start_redis(dir).await
}

async fn existing_redis() -> Result<Option<Service>, ServiceError> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        if !redis_answers(&url).await {
            return Err(ServiceError::Unreachable { env: "REDIS_URL", url: redact_url(&url) });
        }
        return Ok(Some(Service { url, origin: "REDIS_URL".into(), cleanup: Cleanup::None }));
    }
    let local = "redis://127.0.0.1:6379".to_owned();
    if redis_answers(&local).await {
        return Ok(Some(Service { url: local, origin: "found on 127.0.0.1:6379".into(), cleanup: Cleanup::None }));
    }
    Ok(None)
}

async fn start_redis(dir: &Path) -> Result<Service, ServiceError> {
    let binary = find_binary("redis-server").ok_or(ServiceError::Missing {
        binary: "redis-server",
        package: "redis-server",
        env: "REDIS_URL",
    })?;
    let port = free_port().await?;
    let child = Command::new(binary)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !redis_answers(&url).await {
        if tokio::time::Instant::now() > deadline {
            return Err(ServiceError::Failed {
                what: "redis-server".into(),
                detail: "did not answer within 10 s".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Service { url, origin: format!("throwaway server in {}", dir.display()), cleanup: Cleanup::Child(child) })
}

#[cfg(test)]
mod tests {
    use crabglamp_operator::store::redact_url;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/app"), "postgres://app:****@db:5432/app");
        assert_eq!(redact_url("redis://:s3cret@127.0.0.1:6379"), "redis://:****@127.0.0.1:6379");
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
