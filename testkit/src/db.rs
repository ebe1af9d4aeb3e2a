//! A fresh PostgreSQL database per test, dropped afterwards, on the real server that
//! `DATABASE_URL` names (or localhost). Fails loudly, with directions, when there is none.
//!
//! [`TestDb::for_operator`] also creates the operator's role with exactly the statements of
//! the README's "Least privilege on a managed PostgreSQL" (read from the README at test time),
//! so every scenario run as that role proves the documented grants suffice.

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
    /// Pool on the test database, as its owner (the role that migrated it).
    pub pool: PgPool,
    /// URL of the test database as its owner (for the CLI and psql).
    pub url: String,
    /// URL the operator under test connects with: the README's least-privilege role after
    /// [`TestDb::for_operator`], else the owner's [`TestDb::url`].
    pub operator_url: String,
    name: String,
    /// The role [`TestDb::for_operator`] created for this database alone, dropped with it.
    role: Option<String>,
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
        TestDb { pool, operator_url: url.clone(), url, name, role: None }
    }

    /// A migrated database (the owner migrates it, as `crabglamp-operator migrate` is run)
    /// and a role for the operator made by the README's least-privilege statements, exactly as
    /// written but for the password, the database's name and the role's name: roles are
    /// cluster-wide and tests run concurrently, so each database gets a role of its own
    /// (dropped with it). [`TestDb::operator_url`] connects as that role.
    pub async fn for_operator() -> TestDb {
        let mut db = Self::fresh().await;
        let role = format!("{}_operator", db.name);
        let password = uuid::Uuid::new_v4().simple().to_string();
        // What PostgreSQL 15 and later do by default for CREATE, and what a cautious owner does
        // for EXECUTE: the operator must get by on the README's grants alone, never on what
        // every role may do in the schema.
        sqlx::raw_sql(
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC; REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC",
        )
        .execute(&db.pool)
        .await
        .expect("revoke what PUBLIC may do in the schema");
        // Recorded before the statements run, so a failure half-way still drops the role.
        db.role = Some(role.clone());
        let statements = substitute_readme_sql(&readme_least_privilege_sql(), &db.name, &role, &password);
        sqlx::raw_sql(&statements)
            .execute(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("the README's least-privilege statements fail: {e}\n{statements}"));
        let may_create: bool = sqlx::query_scalar(
            "SELECT has_schema_privilege($1, 'public', 'CREATE') OR has_database_privilege($1, current_database(), 'CREATE')",
        )
        .bind(&role)
        .fetch_one(&db.pool)
        .await
        .expect("read the role's privileges");
        assert!(!may_create, "the operator's role must not be able to create anything: migrations are the owner's");
        let mut url = url::Url::parse(&db.url).expect("test database URL");
        url.set_username(&role).expect("a URL with a host takes a user name");
        url.set_password(Some(&password)).expect("a URL with a host takes a password");
        db.operator_url = url.to_string();
        db
    }
}

/// The README section whose statements create the operator's role.
const LEAST_PRIVILEGE_HEADING: &str = "### Least privilege on a managed PostgreSQL";

/// The ```sql block of the README's least-privilege section, as written.
fn readme_least_privilege_sql() -> String {
    let path = crate::repo().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut lines = readme.lines().skip_while(|l| l.trim_end() != LEAST_PRIVILEGE_HEADING);
    assert!(lines.next().is_some(), "README.md has no heading {LEAST_PRIVILEGE_HEADING:?}");
    let mut block = String::new();
    let mut inside = false;
    for line in lines {
        match (inside, line.trim_end()) {
            (false, "```sql") => inside = true,
            (false, l) if l.starts_with('#') => break,
            (true, "```") => return block,
            (true, l) => {
                block.push_str(l);
                block.push('\n');
            }
            (false, _) => {}
        }
    }
    panic!("README.md has no complete ```sql block under {LEAST_PRIVILEGE_HEADING:?}")
}

/// `sql` with the README's placeholders replaced: the password `'...'`, and the identifiers
/// `crabglamp` (the database) and `crabglamp_operator` (the role), whole words only.
fn substitute_readme_sql(sql: &str, database: &str, role: &str, password: &str) -> String {
    assert_eq!(sql.matches("'...'").count(), 1, "the README's role statement has one password placeholder '...'");
    let sql = sql.replace("'...'", &format!("'{password}'"));
    let mut out = String::with_capacity(sql.len());
    let mut word = String::new();
    let (mut databases, mut roles) = (0, 0);
    // A sentinel at the end closes the last word.
    for c in sql.chars().chain(std::iter::once('\n')) {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        match word.as_str() {
            "crabglamp" => {
                databases += 1;
                out.push_str(database);
            }
            "crabglamp_operator" => {
                roles += 1;
                out.push_str(role);
            }
            w => out.push_str(w),
        }
        word.clear();
        out.push(c);
    }
    assert!(
        databases > 0 && roles > 0,
        "the README's statements name the database crabglamp and the role crabglamp_operator"
    );
    out
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot block on itself: use a thread with
        // a runtime of its own. FORCE ends connections the pool still holds.
        let name = self.name.clone();
        let role = self.role.clone();
        let admin = admin_url();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(pool) = PgPoolOptions::new().max_connections(1).connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&pool).await;
                    // After its database: the role's privileges lived there and went with it.
                    if let Some(role) = role {
                        let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {role}")).execute(&pool).await;
                    }
                }
            });
        })
        .join();
    }
}
