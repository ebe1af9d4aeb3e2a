//! A fresh PostgreSQL database per test, dropped afterwards, on the real server that
//! `DATABASE_URL` names (or localhost). Fails loudly, with directions, when there is none.

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The server's maintenance URL: `DATABASE_URL`, else the local default.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(url: &str, database: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("DATABASE_URL is a URL");
    parsed.set_path(&format!("/{database}"));
    parsed.to_string()
}

/// A throwaway database with all migrations applied.
pub struct TestDb {
    /// Pool on the test database.
    pub pool: PgPool,
    /// URL of the test database (for the CLI and psql).
    pub url: String,
    name: String,
}

impl TestDb {
    /// Creates and migrates a new database.
    pub async fn fresh() -> TestDb {
        let db = Self::empty().await;
        crabglamp_operator::store::migrate(&db.pool).await.expect("migrations apply");
        db
    }

    /// Creates a new database without migrating it.
    pub async fn empty() -> TestDb {
        let admin = admin_url();
        let admin_pool = PgPoolOptions::new().max_connections(1).connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {}: {e}\n\
                 These tests need a real PostgreSQL server. Run `scripts/test`, which finds or starts one, \
                 or set DATABASE_URL to a server where this user may CREATE DATABASE.",
                crabglamp_operator::store::redact_url(&admin)
            )
        });
        let name = format!("crabglamp_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin_pool).await.expect("create test database");
        admin_pool.close().await;
        let url = with_database(&admin, &name);
        let pool = PgPoolOptions::new().max_connections(20).connect(&url).await.expect("connect to test database");
        TestDb { pool, url, name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot block on itself: use a thread with
        // a runtime of its own. FORCE ends connections the pool still holds.
        let name = self.name.clone();
        let admin = admin_url();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(pool) = PgPoolOptions::new().max_connections(1).connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&pool).await;
                }
            });
        })
        .join();
    }
}
