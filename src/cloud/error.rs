//! The one error taxonomy for every outside API: each failure says whether retrying can
//! help, keeps the provider's own code, and never carries a credential in its message.

use std::fmt;
use std::time::Duration;

/// Which outside system answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    Hetzner,
    Cloudflare,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Hetzner => "hetzner",
            Provider::Cloudflare => "cloudflare",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the provider said, and about which call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderError {
    pub provider: Provider,
    /// The operation, e.g. `create_server` (also the metrics endpoint label).
    pub operation: &'static str,
    /// HTTP status, when there was a response.
    pub status: Option<u16>,
    /// The provider's code: Hetzner's `error.code` (`uniqueness_error`), Cloudflare's numeric
    /// code as text (`81053`), or `transport` / `decode` for failures on our side.
    pub code: String,
    pub message: String,
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.provider, self.operation)?;
        if let Some(status) = self.status {
            write!(f, "HTTP {status} ")?;
        }
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A failed call to an outside API, classified by what the caller should do next.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// Transient (5xx, timeouts, `conflict`, `locked`, network): the same call may succeed later.
    #[error("retryable: {0}")]
    Retryable(ProviderError),
    /// Over the request budget; wait `reset` before the next call.
    #[error("rate limited (retry in {reset:?}): {error}")]
    RateLimited { error: ProviderError, reset: Duration },
    /// The resource does not exist (or no longer does).
    #[error("not found: {0}")]
    NotFound(ProviderError),
    /// The call clashes with existing state (name taken, still in use, already applied).
    #[error("conflict: {0}")]
    Conflict(ProviderError),
    /// Retrying the same call cannot help (bad input, auth, quota).
    #[error("permanent: {0}")]
    Permanent(ProviderError),
    /// The provider has no room for the request now (Hetzner's `resource_unavailable`: the
    /// type is sold out in the location; `placement_error`: no host could take the server).
    /// It clears by itself, but not within seconds: the caller retries later with backoff,
    /// the client does not repeat the call at once.
    #[error("no capacity now: {0}")]
    NoCapacity(ProviderError),
}

impl CloudError {
    pub fn detail(&self) -> &ProviderError {
        match self {
            CloudError::Retryable(e)
            | CloudError::NotFound(e)
            | CloudError::Conflict(e)
            | CloudError::Permanent(e)
            | CloudError::NoCapacity(e)
            | CloudError::RateLimited { error: e, .. } => e,
        }
    }

    /// The provider's code (`uniqueness_error`, `81053`, ...).
    pub fn code(&self) -> &str {
        &self.detail().code
    }

    /// Whether repeating the same call later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CloudError::Retryable(_) | CloudError::RateLimited { .. } | CloudError::NoCapacity(_))
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, CloudError::NotFound(_))
    }

    /// Metric label of the outcome.
    pub fn outcome(&self) -> &'static str {
        match self {
            CloudError::Retryable(e) if e.code == "transport" => "transport",
            CloudError::Retryable(_) => "retryable",
            CloudError::RateLimited { .. } => "rate_limited",
            CloudError::NotFound(_) => "not_found",
            CloudError::Conflict(_) => "conflict",
            CloudError::Permanent(_) => "permanent",
            CloudError::NoCapacity(_) => "no_capacity",
        }
    }
}

/// A client cannot be configured: a required setting is missing (the name says which; the
/// value is never echoed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
}

/// Classifies a Hetzner error code (documented list, plus the 5xx codes clients retry).
pub fn classify_hetzner(detail: ProviderError, retry_after: Duration) -> CloudError {
    match detail.code.as_str() {
        "rate_limit_exceeded" => CloudError::RateLimited { error: detail, reset: retry_after },
        // `conflict`: the resource changed mid-request; `locked`: an action is running.
        "conflict" | "locked" | "server_error" | "unavailable" | "timeout" | "bad_gateway" | "maintenance" => {
            CloudError::Retryable(detail)
        }
        "not_found" => CloudError::NotFound(detail),
        "resource_unavailable" | "placement_error" => CloudError::NoCapacity(detail),
        // 404 on apply/remove (the server is gone); 422 on create, where a firewall the request
        // names is missing: the status below tells which, so a create is not read as "not found".
        "uniqueness_error" | "resource_in_use" | "firewall_already_applied" | "server_already_added" => {
            CloudError::Conflict(detail)
        }
        _ => match detail.status {
            Some(s) if s >= 500 => CloudError::Retryable(detail),
            Some(429) => CloudError::RateLimited { error: detail, reset: retry_after },
            Some(404) => CloudError::NotFound(detail),
            _ => CloudError::Permanent(detail),
        },
    }
}

/// Classifies a Cloudflare failure: by status first, then by the DNS conflict codes.
pub fn classify_cloudflare(detail: ProviderError, retry_after: Duration) -> CloudError {
    match detail.status {
        Some(429) => CloudError::RateLimited { error: detail, reset: retry_after },
        Some(408) => CloudError::Retryable(detail),
        Some(s) if s >= 500 => CloudError::Retryable(detail),
        Some(404) => CloudError::NotFound(detail),
        Some(409) => CloudError::Conflict(detail),
        // 81053/81054: name taken by an A/AAAA/CNAME; 81057/81058: identical record exists.
        _ if matches!(detail.code.as_str(), "81053" | "81054" | "81057" | "81058") => CloudError::Conflict(detail),
        _ => CloudError::Permanent(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(status: u16, code: &str) -> ProviderError {
        ProviderError {
            provider: Provider::Hetzner,
            operation: "op",
            status: Some(status),
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn hetzner_codes() {
        let d = Duration::from_secs(1);
        for (status, code, outcome) in [
            (409, "uniqueness_error", "conflict"),
            (409, "conflict", "retryable"),
            (423, "locked", "retryable"),
            (429, "rate_limit_exceeded", "rate_limited"),
            (404, "not_found", "not_found"),
            (422, "invalid_input", "permanent"),
            (403, "resource_limit_exceeded", "permanent"),
            (412, "resource_unavailable", "no_capacity"),
            (422, "placement_error", "no_capacity"),
            (500, "server_error", "retryable"),
            (503, "unavailable", "retryable"),
            (502, "whatever", "retryable"),
            (422, "resource_in_use", "conflict"),
            (401, "unauthorized", "permanent"),
            (404, "firewall_resource_not_found", "not_found"),
            (422, "firewall_resource_not_found", "permanent"),
        ] {
            assert_eq!(classify_hetzner(detail(status, code), d).outcome(), outcome, "{code}");
        }
    }

    #[test]
    fn cloudflare_codes() {
        let d = Duration::from_secs(1);
        for (status, code, outcome) in [
            (429, "971", "rate_limited"),
            (400, "81053", "conflict"),
            (400, "81058", "conflict"),
            (409, "1013", "conflict"),
            (404, "81044", "not_found"),
            (502, "0", "retryable"),
            (400, "9106", "permanent"),
            (403, "10000", "permanent"),
        ] {
            assert_eq!(classify_cloudflare(detail(status, code), d).outcome(), outcome, "{code}");
        }
    }
}
