//! How a simulated Cloudflare account is configured: its token, account and zone, and the
//! rate budget they imply. Only data.

use std::time::Duration;

use crate::http::RateBudget;
use crate::time_scale::scaled;

/// The account and zone a simulated token may use.
#[derive(Clone)]
pub struct CloudflareSimConfig {
    /// The API token (compared, never logged).
    pub token: String,
    pub account_id: String,
    pub zone_id: String,
    pub zone_name: String,
    /// Requests per window (1200 per 300 s on the real API).
    pub rate_limit: u32,
    /// Refill speed; `None` = `rate_limit` per five minutes (divided by `time_scale`).
    pub rate_refill_per_sec: Option<f64>,
    /// How much faster than real time the simulated world runs: the five-minute window lasts
    /// `300 s / time_scale`, as Hetzner's actions do under the same scale.
    pub time_scale: f64,
    /// Most cloudflared tunnels the account may hold (Cloudflare's account limit: 1,000).
    pub tunnel_limit: usize,
    /// Most DNS records the zone may hold (its plan's quota).
    pub dns_record_limit: usize,
}

/// Cloudflare's published limit of cloudflared tunnels per account.
pub const TUNNELS_PER_ACCOUNT: usize = 1000;

/// The DNS records quota of a zone on Cloudflare's Pro and Business plans (a Free zone made
/// since September 2024 holds 200; Enterprise zones more): with one record per Agent, a Pro
/// zone outlasts the account's tunnels, a Free one binds first.
pub const DNS_RECORDS_PER_ZONE: usize = 3500;

impl Default for CloudflareSimConfig {
    fn default() -> Self {
        CloudflareSimConfig {
            token: "sim-cloudflare-token".to_owned(),
            account_id: "023e105f4ecef8ad9ca31a8372d0c353".to_owned(),
            zone_id: "023e105f4ecef8ad9ca31a8372d0c354".to_owned(),
            zone_name: "example.com".to_owned(),
            rate_limit: 1200,
            rate_refill_per_sec: None,
            time_scale: 1.0,
            tunnel_limit: TUNNELS_PER_ACCOUNT,
            dns_record_limit: DNS_RECORDS_PER_ZONE,
        }
    }
}

/// By hand so the token never shows (the sandbox prints its configuration).
impl std::fmt::Debug for CloudflareSimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudflareSimConfig")
            .field("token", &"<redacted>")
            .field("account_id", &self.account_id)
            .field("zone_id", &self.zone_id)
            .field("zone_name", &self.zone_name)
            .field("rate_limit", &self.rate_limit)
            .field("rate_refill_per_sec", &self.rate_refill_per_sec)
            .field("time_scale", &self.time_scale)
            .field("tunnel_limit", &self.tunnel_limit)
            .field("dns_record_limit", &self.dns_record_limit)
            .finish()
    }
}

/// Cloudflare's rate-limit window.
const RATE_WINDOW: Duration = Duration::from_secs(300);

impl CloudflareSimConfig {
    pub(super) fn budget(&self) -> RateBudget {
        let window = scaled(RATE_WINDOW, self.time_scale).as_secs_f64().max(f64::EPSILON);
        RateBudget {
            capacity: self.rate_limit,
            refill_per_sec: self.rate_refill_per_sec.unwrap_or(f64::from(self.rate_limit) / window),
        }
    }
}
