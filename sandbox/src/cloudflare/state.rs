//! The state one simulated Cloudflare account shares between its API routes, its control
//! routes and its test hooks: its configuration, tunnels, DNS records and the machines seen
//! running cloudflared.

use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use super::cloudflared::{self, ConnectorChange, Origin, Origins};
use super::config::CloudflareSimConfig;
use super::dns::Records;
use super::tunnels::Tunnels;
use crate::http::lock;

pub struct CfState {
    pub config: CloudflareSimConfig,
    pub tunnels: Mutex<Tunnels>,
    pub dns: Mutex<Records>,
    /// Machines seen running cloudflared and since when ([`cloudflared::sync`]).
    pub origins: Mutex<Origins>,
    /// Most tunnels the account may hold now (the configured limit; tests change it).
    pub tunnel_limit: AtomicUsize,
    /// Most DNS records the zone may hold now (the configured quota; tests change it).
    pub dns_record_limit: AtomicUsize,
}

impl CfState {
    /// A fresh account and zone: no tunnel, no record, no machine seen.
    pub fn new(config: CloudflareSimConfig) -> Self {
        CfState {
            tunnel_limit: AtomicUsize::new(config.tunnel_limit),
            dns_record_limit: AtomicUsize::new(config.dns_record_limit),
            config,
            tunnels: Mutex::new(Tunnels::default()),
            dns: Mutex::new(Records::default()),
            origins: Mutex::new(Origins::default()),
        }
    }

    /// The connectors brought in line with the machines running now ([`cloudflared::sync`]).
    pub fn sync_origins(&self, running: &[Origin], connect_delay: Duration, now: Instant) -> Vec<ConnectorChange> {
        let mut origins = lock(&self.origins);
        let mut tunnels = lock(&self.tunnels);
        cloudflared::sync(&mut origins, &mut tunnels, &self.config.account_id, running, connect_delay, now)
    }
}
