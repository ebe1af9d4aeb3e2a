//! PostgreSQL: the audit trail, the usage timeline, virtual keys and sealed credentials.
//!
//! The only code that talks SQL. Schema and constraints live in `migrations/` (the database
//! enforces them, not only this code); every error says which operation failed, never a secret.

pub mod audit;
pub mod keys;
pub mod seal;
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
    /// A stored value does not have the shape the schema promises.
    #[error("corrupt row while {what}: {detail}")]
    Corrupt {
        /// The operation.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Sealing or opening a credential failed.
    #[error(transparent)]
    Seal(#[from] seal::SealError),
}

/// Adds the operation to a driver error.
pub(crate) trait QueryContext<T> {
    fn during(self, what: &'static str) -> Result<T, StoreError>;
}

impl<T> QueryContext<T> for Result<T, sqlx::Error> {
    fn during(self, what: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Query { what, source })
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

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await.map_err(StoreError::Migrate)
}
