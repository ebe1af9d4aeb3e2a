//! The floor: the least time the clouds allow a fleet to converge, from their documented rate
//! limits and the simulated action durations. Pure arithmetic in real-world seconds, so the
//! benchmark can print how it was computed and draw the floor curve.

use crabglamp_sandbox::hetzner::ActionDurations;

/// Hetzner: a bucket of 3600 requests per project that refills one per second.
pub const HETZNER_BUCKET: f64 = 3600.0;
pub const HETZNER_REFILL_PER_SEC: f64 = 1.0;
/// Cloudflare: at most 1200 requests in any five minutes per token.
pub const CLOUDFLARE_QUOTA: f64 = 1200.0;
pub const CLOUDFLARE_WINDOW_SECS: f64 = 300.0;
/// Cloud calls an object needs at the least (DESIGN.md, the call budget).
pub const AGENT_HETZNER: f64 = 1.0;
pub const AGENT_CLOUDFLARE: f64 = 3.0;
pub const PLAINVM_HETZNER: f64 = 2.0;

/// The floor of one fleet, every figure in real-world seconds.
#[derive(Clone, Debug)]
pub struct Floor {
    pub agents: usize,
    pub plainvms: usize,
    /// The simulated durations of a server create, a boot and cloudflared connecting.
    pub create: f64,
    pub boot: f64,
    pub cloudflared: f64,
    /// Booting an Agent: create, boot, cloudflared connecting.
    pub agent_chain: f64,
    /// A PlainVM: its server's create (the firewall create has no action).
    pub plainvm_chain: f64,
    pub hetzner_requests: f64,
    pub cloudflare_requests: f64,
    /// When the last request the floor needs may be sent, per cloud.
    pub hetzner_forced: f64,
    pub cloudflare_forced: f64,
}

/// Hetzner requests the budget has allowed by `t` seconds after a full bucket.
pub fn hetzner_allowed(t: f64) -> f64 {
    if t < 0.0 { 0.0 } else { HETZNER_BUCKET + HETZNER_REFILL_PER_SEC * t }
}

/// Cloudflare requests allowed by `t`: a whole quota at the start of every window (the most
/// any schedule can fit into "at most 1200 in any five minutes").
pub fn cloudflare_allowed(t: f64) -> f64 {
    if t < 0.0 { 0.0 } else { CLOUDFLARE_QUOTA * ((t / CLOUDFLARE_WINDOW_SECS).floor() + 1.0) }
}

impl Floor {
    pub fn new(agents: usize, plainvms: usize, durations: &ActionDurations, cloudflared_delay: f64) -> Self {
        let agent_chain = durations.create_server.as_secs_f64() + durations.boot.as_secs_f64() + cloudflared_delay;
        let plainvm_chain = durations.create_server.as_secs_f64();
        let hetzner_requests = AGENT_HETZNER * agents as f64 + PLAINVM_HETZNER * plainvms as f64;
        let cloudflare_requests = AGENT_CLOUDFLARE * agents as f64;
        let hetzner_forced = ((hetzner_requests - HETZNER_BUCKET) / HETZNER_REFILL_PER_SEC).max(0.0);
        let cloudflare_forced = if cloudflare_requests <= CLOUDFLARE_QUOTA {
            0.0
        } else {
            ((cloudflare_requests - 1.0) / CLOUDFLARE_QUOTA).floor() * CLOUDFLARE_WINDOW_SECS
        };
        Floor {
            create: durations.create_server.as_secs_f64(),
            boot: durations.boot.as_secs_f64(),
            cloudflared: cloudflared_delay,
            agents,
            plainvms,
            agent_chain,
            plainvm_chain,
            hetzner_requests,
            cloudflare_requests,
            hetzner_forced,
            cloudflare_forced,
        }
    }

    /// The slowest action chain.
    pub fn chain(&self) -> f64 {
        if self.agents > 0 { self.agent_chain.max(self.plainvm_chain) } else { self.plainvm_chain }
    }

    /// The binding rate limit's forced time plus the slowest chain.
    pub fn total(&self) -> f64 {
        self.hetzner_forced.max(self.cloudflare_forced) + self.chain()
    }

    /// How the floor was computed, one line each.
    pub fn explain(&self) -> Vec<String> {
        let binding = if self.hetzner_forced >= self.cloudflare_forced { "Hetzner" } else { "Cloudflare" };
        vec![
            format!(
                "Hetzner: {} requests ({} Agents x 1 + {} PlainVMs x 2); a full bucket of 3600, +1/s: the last may go at {:.0} s",
                self.hetzner_requests, self.agents, self.plainvms, self.hetzner_forced
            ),
            format!(
                "Cloudflare: {} requests ({} Agents x 3); at most 1200 in any 5 minutes: the last may go at {:.0} s",
                self.cloudflare_requests, self.agents, self.cloudflare_forced
            ),
            format!(
                "slowest chain: Agent server create {:.0} s + boot {:.0} s + cloudflared {:.0} s = {:.0} s (PlainVM {:.0} s); binding limit: {binding}",
                self.create, self.boot, self.cloudflared, self.agent_chain, self.plainvm_chain
            ),
            format!(
                "floor = max({:.0} s, {:.0} s) + {:.0} s = {:.0} s",
                self.hetzner_forced,
                self.cloudflare_forced,
                self.chain(),
                self.total()
            ),
        ]
    }

    /// Cloud objects (Agents + PlainVMs) the clouds allow Ready by `t`: PlainVMs take the
    /// Hetzner budget first (they need nothing else), Agents what Hetzner and Cloudflare leave.
    pub fn ready_by(&self, t: f64) -> f64 {
        let vms = (hetzner_allowed(t - self.plainvm_chain) / PLAINVM_HETZNER).floor().clamp(0.0, self.plainvms as f64);
        let agents_cf = (cloudflare_allowed(t - self.agent_chain) / AGENT_CLOUDFLARE).floor();
        let agents_hz = hetzner_allowed(t - self.agent_chain) - PLAINVM_HETZNER * vms;
        vms + agents_cf.min(agents_hz).clamp(0.0, self.agents as f64)
    }
}
