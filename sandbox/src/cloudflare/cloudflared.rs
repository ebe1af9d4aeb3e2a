//! The simulator playing `cloudflared` for machines simulated elsewhere: finding tunnel tokens
//! in a machine's user_data, and connecting or disconnecting the tunnels they open as the
//! machines come and go. It owns the "which machine runs which connector" bookkeeping and
//! must never render a token or secret it found (not even in `Debug`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::Value;

use super::CfState;
use crate::http::{RunningSim, lock, token_like_runs};

/// What `cloudflared tunnel run --token` reads: base64 of `{"a": account tag, "t": tunnel id,
/// "s": base64 secret}`.
#[derive(Clone, PartialEq, Eq)]
pub struct TunnelToken {
    pub account_tag: String,
    pub tunnel_id: String,
    /// Base64, as in the token (a credential).
    pub secret: String,
}

/// By hand so the secret never shows.
impl std::fmt::Debug for TunnelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelToken")
            .field("account_tag", &self.account_tag)
            .field("tunnel_id", &self.tunnel_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TunnelToken {
    /// Parses one token; None unless it is base64 of a JSON object with string `a`, `t`, `s`.
    pub fn parse(text: &str) -> Option<TunnelToken> {
        let json: Value = serde_json::from_slice(&decode_base64(text)?).ok()?;
        let field = |k: &str| json.get(k).and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_owned);
        Some(TunnelToken { account_tag: field("a")?, tunnel_id: field("t")?, secret: field("s")? })
    }
}

/// Standard or URL-safe base64, padded or not (cloudflared writes standard; people paste
/// either).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('.');
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(text).ok())
}

/// How deep [`find_tunnel_tokens`] looks into base64 that decodes to text (cloud-init's
/// `write_files` with `encoding: b64` holding a unit file that holds the token).
const NESTING: usize = 2;

/// Every tunnel token in `text`, in order: base64 runs starting `eyJ` (`{"`) that decode to a
/// token, also inside other base64 runs that decode to text.
pub fn find_tunnel_tokens(text: &str) -> Vec<TunnelToken> {
    let mut found = Vec::new();
    collect_tokens(text, NESTING, &mut found);
    found
}

fn collect_tokens(text: &str, depth: usize, found: &mut Vec<TunnelToken>) {
    for run in token_like_runs(text) {
        if let Some(token) = TunnelToken::parse(&text[run]) {
            found.push(token);
        }
    }
    if depth == 0 {
        return;
    }
    // Long base64 runs that are not tokens themselves may wrap a file that has one.
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_');
    for run in text.split(|c: char| !is_b64(c)).filter(|r| r.len() >= 64 && !r.starts_with("eyJ")) {
        if let Some(inner) = decode_base64(run).and_then(|b| String::from_utf8(b).ok()) {
            collect_tokens(&inner, depth - 1, found);
        }
    }
}

/// A simulated machine that would run cloudflared with whatever token its user_data holds.
#[derive(Clone)]
pub struct Origin {
    /// Stable name of the machine, e.g. `hcloud-server-1001`.
    pub key: String,
    /// Its cloud-init user_data (may hold a token: never printed). Shared, not copied: the
    /// sandbox hands every booted server over at every poll.
    pub user_data: Option<Arc<str>>,
    /// The address its connections come from.
    pub origin_ip: String,
}

/// By hand so user_data (a token carrier) never shows.
impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin").field("key", &self.key).field("origin_ip", &self.origin_ip).finish_non_exhaustive()
    }
}

/// A connector that came or went in one [`sync_origins`] pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectorChange {
    pub origin: String,
    pub tunnel_id: String,
    /// true: connected; false: disconnected.
    pub connected: bool,
}

/// Since when each machine has been running, as last reported.
#[derive(Default)]
pub struct Origins {
    first_seen: BTreeMap<String, Instant>,
}

/// Brings the tunnels' connectors in line with the machines running now: a machine first seen
/// at T whose user_data carries a token the tunnel accepts (account, tunnel id and secret all
/// matching) connects it at T + `connect_delay` (cloudflared starting and dialling the edge);
/// a machine no longer listed (stopped, deleted) takes its connections with it. Wrong or
/// missing tokens connect nothing. Returns what changed; call it again and again (it keeps
/// its own memory of when each machine was first seen).
pub fn sync_origins(sim: &RunningSim, running: &[Origin], connect_delay: Duration) -> Vec<ConnectorChange> {
    let Some(st) = sim.state::<CfState>() else { return Vec::new() };
    sync(&st, running, connect_delay, Instant::now())
}

pub(super) fn sync(st: &CfState, running: &[Origin], connect_delay: Duration, now: Instant) -> Vec<ConnectorChange> {
    let mut changes = Vec::new();
    let mut origins = lock(&st.origins);
    let mut tunnels = lock(&st.tunnels);
    // Sets, not scans: this runs every poll over every booted machine and every tunnel.
    let running_keys: HashSet<&str> = running.iter().map(|o| o.key.as_str()).collect();
    origins.first_seen.retain(|key, _| running_keys.contains(key.as_str()));
    let mut connected: HashMap<String, uuid::Uuid> = tunnels.connected_origins().into_iter().collect();
    connected.retain(|origin, tunnel| {
        let still_running = running_keys.contains(origin.as_str());
        if !still_running {
            tunnels.disconnect_origin(origin);
            changes.push(ConnectorChange { origin: origin.clone(), tunnel_id: tunnel.to_string(), connected: false });
        }
        still_running
    });
    let account = &st.config.account_id;
    for machine in running {
        // Looked up before inserting: the key is cloned once per machine, not once per poll.
        let seen = match origins.first_seen.get(&machine.key) {
            Some(seen) => *seen,
            None => {
                origins.first_seen.insert(machine.key.clone(), now);
                now
            }
        };
        if now.saturating_duration_since(seen) < connect_delay || connected.contains_key(&machine.key) {
            continue;
        }
        // cloudflared runs one tunnel: the first token the edge accepts.
        let tokens = machine.user_data.as_deref().map(find_tunnel_tokens).unwrap_or_default();
        if let Some(tunnel) = tokens.iter().find_map(|t| tunnels.accepting(account, t)) {
            tunnels.connect_origin(tunnel, &machine.key, &machine.origin_ip);
            changes.push(ConnectorChange {
                origin: machine.key.clone(),
                tunnel_id: tunnel.to_string(),
                connected: true,
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(a: &str, t: &str, s: &str) -> String {
        STANDARD.encode(serde_json::json!({"a": a, "t": t, "s": s}).to_string())
    }

    #[test]
    fn tokens_are_found_wherever_cloud_init_puts_them() {
        let tok = token("acc", "6f1c0d9e-0000-4000-8000-000000000001", "c2VjcmV0");
        let plain = format!("#cloud-config\nruncmd:\n  - cloudflared service install {tok}\n");
        let found = find_tunnel_tokens(&plain);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].account_tag, "acc");
        assert_eq!(found[0].secret, "c2VjcmV0");
        // Quoted, then at the end of a sentence.
        assert_eq!(find_tunnel_tokens(&format!("TOKEN=\"{tok}\"")).len(), 1);
        assert_eq!(find_tunnel_tokens(&format!("the token is {tok}.")).len(), 1);
        // Inside a base64-encoded file.
        let unit = format!("[Service]\nExecStart=/usr/bin/cloudflared tunnel run --token {tok}\n");
        let b64 = format!("write_files:\n  - encoding: b64\n    content: {}\n", STANDARD.encode(unit));
        assert_eq!(find_tunnel_tokens(&b64).len(), 1);
    }

    #[test]
    fn non_tokens_are_ignored() {
        assert!(find_tunnel_tokens("#cloud-config\n{}\n").is_empty());
        let jwt_like = STANDARD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        assert!(find_tunnel_tokens(&jwt_like).is_empty(), "base64 JSON without a, t, s");
        assert!(find_tunnel_tokens(&token("acc", "t", "")).is_empty(), "an empty secret");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let parsed = TunnelToken::parse(&token("acc", "t", "dG9wLXNlY3JldA==")).expect("parses");
        assert!(!format!("{parsed:?}").contains("dG9wLXNlY3JldA"));
    }
}
