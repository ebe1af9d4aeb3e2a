//! Clients of the outside APIs (Hetzner Cloud, Cloudflare): typed requests, one retry
//! taxonomy for their errors, and the rate limiting shared by every caller of one account; and
//! the presigned URLs of the glamps' object storage.

pub mod cloudflare;
pub mod error;
pub mod glamp_store;
pub mod hetzner;
pub mod hetzner_shapes;
pub mod metrics;
pub mod ratelimit;
pub mod retry;
pub mod secret;
mod transport;

pub use error::{CloudError, ConfigError, Provider, ProviderError};
pub use metrics::CloudMetrics;
pub use ratelimit::{RateLimiter, RateObservation, TokenBucket};
pub use retry::RetryPolicy;
pub use secret::Secret;
