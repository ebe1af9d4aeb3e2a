//! PostgreSQL: the audit trail, the usage timeline, virtual keys and sealed credentials.
//!
//! The only code that talks SQL. Schema and constraints live in `migrations/` (the database
//! enforces them, not only this code); every error says which operation failed, never a secret.

pub mod anchor;
pub mod audit;
pub mod credentials;
pub mod keys;
pub mod seal;
pub mod spend;
pub mod usage;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Errors of the PostgreSQL store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is malformed.
    #[error("invalid database URL {url}")]
    InvalidUrl {
        /// The URL with any password removed.
        url: String,
        /// What the parser said.
        #[source]
        source: sqlx::Error,
    },
    /// The database could not be reached.
    #[error("cannot connect to PostgreSQL at {url}")]
    Connect {
        /// The URL with any password removed.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("cannot apply database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error while {what}")]
    Query {
        /// The operation, e.g. "appending an audit event".
        what: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A database name that is not a plain lowercase identifier (or a server URL it cannot join).
    #[error("cannot use {0:?} as a database name: lowercase letters, digits and '_' only, at most 63")]
    InvalidDatabaseName(String),
    /// A stored value does not have the shape the schema promises.
    #[error("corrupt row while {what}: {detail}")]
    Corrupt {
        /// The operation.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A key row exists under this key id (or hash) with a different hash (or id): a retried
    /// insert must carry the same key, anything else is a bug or a collision, never a no-op.
    #[error("virtual key {key_id} is already recorded with a different hash")]
    KeyConflict {
        /// The key id of the refused row.
        key_id: String,
    },
    /// The VirtualKey already has a live key; the old one must be revoked first (rotation).
    #[error("the VirtualKey {resource_uid} already has a live key {live_key_id}")]
    SecondLiveKey {
        /// UID of the VirtualKey.
        resource_uid: String,
        /// The key that is live.
        live_key_id: String,
    },
    /// Sealing or opening a credential failed.
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    /// The database refused a usage row or an audit event because the object's destroy event
    /// is recorded (migration 0007): whoever destroyed it has closed its books.
    #[error("the database refused {what}: the object is already destroyed")]
    AlreadyDestroyed {
        /// The operation.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

/// The constraint name the database gives when it refuses a write after a destroy event.
pub const NO_WRITES_AFTER_DESTROY: &str = "crabglamp_no_writes_after_destroy";

impl StoreError {
    /// Whether this is the database refusing a write about an object already destroyed.
    pub fn is_already_destroyed(&self) -> bool {
        matches!(self, StoreError::AlreadyDestroyed { .. })
    }
}

/// Adds the operation to a driver error.
pub(crate) trait QueryContext<T> {
    fn during(self, what: &'static str) -> Result<T, StoreError>;
}

impl<T> QueryContext<T> for Result<T, sqlx::Error> {
    fn during(self, what: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| {
            let refused = source.as_database_error().and_then(|e| e.constraint()) == Some(NO_WRITES_AFTER_DESTROY);
            if refused { StoreError::AlreadyDestroyed { what, source } } else { StoreError::Query { what, source } }
        })
    }
}

/// A database URL safe to print: the password, if any, is replaced.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Setting a password only fails for URLs that cannot have one, which this has.
            let _ = parsed.set_password(Some("****"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable URL>".into(),
    }
}

/// Opens a connection pool to `url`.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options =
        PgConnectOptions::from_str(url).map_err(|source| StoreError::InvalidUrl { url: redact_url(url), source })?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Connect { url: redact_url(url), source })
}

/// Creates the database `name` on the server `server_url` points at (when missing), applies the
/// migrations to it and returns its URL: how the sandbox gets a database of its own instead of
/// filling whichever database the server URL names.
pub async fn ensure_migrated_database(server_url: &str, name: &str) -> Result<String, StoreError> {
    let valid_name = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid_name {
        return Err(StoreError::InvalidDatabaseName(name.to_owned()));
    }
    let admin = connect(server_url, 1).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&admin)
        .await
        .during("looking up the database")?;
    if !exists {
        // CREATE DATABASE takes no bind parameters; the name was checked to be a plain identifier.
        let created = sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await;
        match created {
            Ok(_) => {}
            // Another process created it between our check and our create.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(source) => return Err(StoreError::Query { what: "creating the database", source }),
        }
    }
    admin.close().await;
    let mut url = url::Url::parse(server_url).map_err(|_| StoreError::InvalidDatabaseName(name.to_owned()))?;
    url.set_path(&format!("/{name}"));
    let pool = connect(url.as_str(), 2).await?;
    migrate(&pool).await?;
    pool.close().await;
    Ok(url.to_string())
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await.map_err(StoreError::Migrate)
}
