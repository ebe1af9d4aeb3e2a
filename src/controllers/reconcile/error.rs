//! What can stop a reconcile, with a stable metric label per variant. Messages name the call
//! that failed and never carry a secret (the cloud clients' errors never do).

use crate::cache::CacheError;
use crate::cloud::CloudError;
use crate::store::StoreError;

/// Why a reconcile did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A Hetzner call failed.
    #[error("Hetzner Cloud: {0}")]
    Hetzner(#[source] CloudError),
    /// A Cloudflare call failed.
    #[error("Cloudflare: {0}")]
    Cloudflare(#[source] CloudError),
    /// PostgreSQL.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The Kubernetes API.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The finalizer helper failed to add or remove the finalizer.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The object lacks something every stored object has.
    #[error("the object has no {0} (not stored by an API server?)")]
    NotStored(&'static str),
    /// An answer did not carry what it must.
    #[error("unexpected answer: no {0}")]
    Decode(&'static str),
    /// The tunnel secret could not be sealed or opened.
    #[error("tunnel secret: {0}")]
    Secret(String),
    /// Something must be known before this step can be taken safely; try again shortly.
    #[error("waiting for {0}")]
    NotReady(&'static str),
    /// The cloud-init document could not be rendered.
    #[error("user data: {0}")]
    UserData(String),
    /// Redis (the LLM proxy's cache).
    #[error("Redis: {0}")]
    Cache(#[from] CacheError),
    /// The spec cannot be acted on until it changes.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// A create was refused because something this operator did not make holds the name.
    #[error("the name {name} is taken by a {what} this operator did not create ({source})")]
    NameTaken {
        what: &'static str,
        name: String,
        #[source]
        source: Box<CloudError>,
    },
}

impl ReconcileError {
    /// The metric label of the error class.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Hetzner(_) => "hetzner",
            ReconcileError::Cloudflare(_) => "cloudflare",
            ReconcileError::Store(_) => "database",
            ReconcileError::Kube(_) => "kubernetes",
            ReconcileError::Finalizer(_) => "finalizer",
            ReconcileError::NotStored(_) => "not_stored",
            ReconcileError::Decode(_) => "decode",
            ReconcileError::Secret(_) => "secret",
            ReconcileError::UserData(_) => "user_data",
            ReconcileError::NotReady(_) => "not_ready",
            ReconcileError::Cache(_) => "redis",
            ReconcileError::InvalidSpec(_) => "invalid_spec",
            ReconcileError::NameTaken { .. } => "name_taken",
        }
    }

    /// Whether the database refused a write because the object's destroy event is recorded:
    /// another instance (a leader overlapping this one) finished destroying it, so there is
    /// nothing left to do for it, and retrying would only be refused again.
    pub fn already_destroyed(&self) -> bool {
        matches!(self, ReconcileError::Store(e) if e.is_already_destroyed())
    }

    /// The cloud error inside, if any.
    pub fn cloud(&self) -> Option<&CloudError> {
        match self {
            ReconcileError::Hetzner(e) | ReconcileError::Cloudflare(e) => Some(e),
            _ => None,
        }
    }
}
