//! A Cloudflare tunnel as the reconcilers and the fleet view's waiters need it.

use crate::cloud::cloudflare::Tunnel;

/// A tunnel as the reconcilers need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedTunnel {
    pub id: String,
    pub name: String,
    /// `healthy`, `degraded`, `inactive`, `down`, as Cloudflare reports it.
    pub status: String,
    pub connections: usize,
}

impl ObservedTunnel {
    pub fn from_api(t: &Tunnel) -> Self {
        ObservedTunnel {
            id: t.id.clone(),
            name: t.name.clone(),
            status: t.status.clone().unwrap_or_else(|| "inactive".to_owned()),
            connections: t.connections.len(),
        }
    }

    /// A connector is attached and serving.
    pub fn connected(&self) -> bool {
        self.connections > 0 && matches!(self.status.as_str(), "healthy" | "degraded")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_connection_needs_a_connector() {
        let t = |status: &str, connections| ObservedTunnel {
            id: "i".into(),
            name: "n".into(),
            status: status.into(),
            connections,
        };
        assert!(t("healthy", 1).connected());
        assert!(!t("healthy", 0).connected());
        assert!(!t("inactive", 0).connected());
        assert!(!t("down", 0).connected());
    }
}
