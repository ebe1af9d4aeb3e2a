//! Prometheus counters of outside-API traffic: every request by provider, endpoint
//! (operation name, never an id) and outcome, plus time spent waiting for the budget.
//! Outcome `not_sent` counts calls our own budget refused before anything was sent.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub provider: String,
    pub endpoint: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

/// Cheap to clone: clones share the same counters.
#[derive(Clone, Debug, Default)]
pub struct CloudMetrics {
    requests: Family<RequestLabels, Counter>,
    rate_limit_wait_ms: Family<ProviderLabels, Counter>,
    budget_remaining: Family<ProviderLabels, Gauge>,
}

impl CloudMetrics {
    /// Counters registered in `registry` under `cloud_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = CloudMetrics::default();
        registry.register(
            "cloud_requests",
            "Requests to outside APIs by provider, endpoint and outcome",
            m.requests.clone(),
        );
        registry.register(
            "cloud_rate_limit_wait_milliseconds",
            "Time callers waited for the request budget",
            m.rate_limit_wait_ms.clone(),
        );
        registry.register(
            "cloud_rate_budget_remaining",
            "Requests the provider says are left in its budget (RateLimit headers of the last answer)",
            m.budget_remaining.clone(),
        );
        // At 0 from the start: an empty family is not exposed at all.
        for provider in ["hetzner", "cloudflare"] {
            let _ = m.rate_limit_wait_ms.get_or_create(&ProviderLabels { provider: provider.to_owned() });
        }
        m
    }

    /// What the provider's last answer said is left of the budget.
    pub fn budget_remaining(&self, provider: &str, remaining: u32) {
        self.budget_remaining
            .get_or_create(&ProviderLabels { provider: provider.to_owned() })
            .set(i64::from(remaining));
    }

    /// The last reported remaining budget (tests, status pages).
    pub fn remaining(&self, provider: &str) -> i64 {
        self.budget_remaining.get_or_create(&ProviderLabels { provider: provider.to_owned() }).get()
    }

    pub fn count(&self, provider: &str, endpoint: &str, outcome: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                provider: provider.to_owned(),
                endpoint: endpoint.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn waited(&self, provider: &str, millis: u64) {
        self.rate_limit_wait_ms.get_or_create(&ProviderLabels { provider: provider.to_owned() }).inc_by(millis);
    }

    /// Current value of one request counter (for tests and status pages).
    pub fn requests(&self, provider: &str, endpoint: &str, outcome: &str) -> u64 {
        self.requests
            .get_or_create(&RequestLabels {
                provider: provider.to_owned(),
                endpoint: endpoint.to_owned(),
                outcome: outcome.to_owned(),
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_exported() {
        let mut registry = Registry::default();
        let m = CloudMetrics::register(&mut registry);
        m.count("hetzner", "create_server", "ok");
        m.count("hetzner", "create_server", "ok");
        m.waited("hetzner", 12);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(r#"cloud_requests_total{provider="hetzner",endpoint="create_server",outcome="ok"} 2"#),
            "{text}"
        );
        assert!(text.contains("cloud_rate_limit_wait_milliseconds_total"), "{text}");
        assert_eq!(m.requests("hetzner", "create_server", "ok"), 2);
    }
}
