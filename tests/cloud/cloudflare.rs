//! The Cloudflare client against the simulator: tunnels, configuration, token, DNS records
//! and every error class.

use std::time::Duration;

use crabglamp_operator::cloud::CloudError;
use crabglamp_operator::cloud::cloudflare::{IngressRule, TunnelSecret, derive_tunnel_token};
use crabglamp_sandbox::cloudflare::{self as cfsim, CloudflareSimConfig};
use crabglamp_sandbox::http::{FaultPlan, FaultRule};

use crabglamp_testkit::cloud::*;

#[tokio::test]
async fn tunnel_lifecycle() {
    let sim = cloudflare_sim(cf_config()).await;
    let c = cloudflare_client(&sim, CF_TOKEN, fast_retry(1));
    let secret = TunnelSecret::generate();

    let (tunnel, adopted) = c.create_tunnel("agent-uid-1", &secret).await.expect("create");
    assert!(!adopted);
    assert_eq!(tunnel.config_src.as_deref(), Some("cloudflare"));
    let (again, adopted) = c.create_tunnel("agent-uid-1", &secret).await.expect("adopt");
    assert!(adopted && again.id == tunnel.id);
    // Same name, another secret: not provably ours, so reported and never adopted.
    let foreign = c.create_tunnel("agent-uid-1", &TunnelSecret::generate()).await.unwrap_err();
    assert!(matches!(foreign, CloudError::Conflict(ref d) if d.code == "1013"), "{foreign}");
    assert_eq!(c.find_tunnel_by_name("agent-uid-1").await.unwrap().map(|t| t.id), Some(tunnel.id.clone()));
    assert_eq!(c.list_tunnels(Some("agent-")).await.unwrap().len(), 1);

    // The token we derive locally is the one the API hands out.
    let fetched = c.tunnel_token(&tunnel.id).await.expect("token");
    assert_eq!(fetched, derive_tunnel_token(c.account_id(), &tunnel.id, &secret));

    let rules =
        [IngressRule { hostname: Some("bot.example.com".into()), service: "http://localhost:8080".into(), path: None }];
    let v1 = c.put_tunnel_config(&tunnel.id, &rules).await.expect("config");
    let v2 = c.put_tunnel_config(&tunnel.id, &rules).await.expect("config again");
    assert!(v2.version > v1.version, "version grows on every PUT");
    let got = c.get_tunnel_config(&tunnel.id).await.unwrap();
    assert_eq!(got.config["ingress"][1]["service"], "http_status:404", "catch-all appended");

    // A connected tunnel is deleted with cascade.
    assert!(cfsim::connect_tunnel(&sim, &tunnel.id));
    assert!(c.delete_tunnel(&tunnel.id).await.expect("delete"));
    assert!(!c.delete_tunnel(&tunnel.id).await.expect("second delete"), "already deleted");
    assert!(c.find_tunnel_by_name("agent-uid-1").await.unwrap().is_none());
    let gone = c.get_tunnel(&tunnel.id).await.unwrap().expect("deleted tunnels stay readable");
    assert!(gone.deleted_at.is_some());
    // The name is free again.
    c.create_tunnel("agent-uid-1", &TunnelSecret::generate()).await.expect("recreate");
    assert_eq!(cfsim::live_tunnel_names(&sim), vec!["agent-uid-1".to_string()]);
    // Purged out of band: not found at all, and deleting it again is a no-op.
    let (t, _) = c.create_tunnel("agent-uid-2", &TunnelSecret::generate()).await.unwrap();
    assert!(cfsim::vanish_tunnel(&sim, &t.id));
    assert!(c.get_tunnel(&t.id).await.unwrap().is_none());
    assert!(!c.delete_tunnel(&t.id).await.unwrap());
    sim.shutdown().await.unwrap();
}

/// Lists walk every page: 130 tunnels are more than one page of 100.
#[tokio::test]
async fn tunnel_list_spans_pages() {
    let sim = cloudflare_sim(cf_config()).await;
    let c = cloudflare_client(&sim, CF_TOKEN, fast_retry(1));
    for i in 0..130 {
        c.create_tunnel(&format!("bulk-{i:03}"), &TunnelSecret::generate()).await.expect("create");
    }
    c.create_tunnel("other", &TunnelSecret::generate()).await.expect("create");
    let listed = c.list_tunnels(Some("bulk-")).await.expect("list");
    assert_eq!(listed.len(), 130);
    assert_eq!(c.list_tunnels(None).await.expect("list").len(), 131);
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn dns_records() {
    let sim = cloudflare_sim(cf_config()).await;
    let c = cloudflare_client(&sim, CF_TOKEN, fast_retry(1));
    let target = "6f1c0d9e-0000-4000-8000-000000000001.cfargotunnel.com";

    let (rec, adopted) = c.create_cname("bot.example.com", target, Some("crabglamp:uid-1")).await.expect("create");
    assert!(!adopted && rec.proxied && rec.ttl == 1);
    let (same, adopted) = c.create_cname("bot.example.com", target, None).await.expect("adopt identical");
    assert!(adopted && same.id == rec.id);
    // Same target, another mark: made by someone else, reported rather than taken over.
    let marked = c.create_cname("bot.example.com", target, Some("crabglamp:uid-2")).await.unwrap_err();
    assert!(matches!(marked, CloudError::Conflict(ref d) if d.code == "81058"), "{marked}");
    let other = c.create_cname("bot.example.com", "other.cfargotunnel.com", None).await.unwrap_err();
    assert!(matches!(other, CloudError::Conflict(ref d) if d.code == "81053"), "{other}");

    assert_eq!(c.list_dns_records("bot.example.com").await.unwrap().len(), 1);
    assert_eq!(c.list_dns_records("BOT.example.com").await.unwrap().len(), 1, "names are case-insensitive");
    assert!(c.list_dns_records("nobody.example.com").await.unwrap().is_empty());

    let updated = c.update_dns_record(&rec.id, "new.cfargotunnel.com", true).await.expect("patch");
    assert_eq!(updated.content, "new.cfargotunnel.com");
    assert_eq!(updated.comment.as_deref(), Some("crabglamp:uid-1"), "PATCH keeps other fields");

    assert!(c.delete_dns_record(&rec.id).await.unwrap());
    assert!(!c.delete_dns_record(&rec.id).await.unwrap());
    assert_eq!(cfsim::dns_record_count(&sim), 0);
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn error_classes() {
    let sim = cloudflare_sim(cf_config()).await;
    let bad = cloudflare_client(&sim, "not-the-token", fast_retry(3));
    let err = bad.find_tunnel_by_name("x").await.unwrap_err();
    assert!(matches!(err, CloudError::Permanent(ref d) if d.status == Some(401)), "{err}");
    assert!(!err.to_string().contains("not-the-token"));

    let c = cloudflare_client(&sim, CF_TOKEN, fast_retry(3));
    let err = c.get_tunnel_config("00000000-0000-0000-0000-000000000000").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");

    sim.set_faults(FaultPlan { rules: FaultRule::any_5xx(1.0), ..FaultPlan::default() });
    let err = c.list_dns_records("a.example.com").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    sim.set_faults(FaultPlan::default());

    // One 429: Cloudflare sends Retry-After (a second); the client waits and succeeds.
    sim.control().rate_limit_storm(1);
    c.list_dns_records("a.example.com").await.expect("succeeds after waiting");
    assert_eq!(sim.control().count_status(429), 1);
    sim.shutdown().await.unwrap();

    // A budget of 3 per five minutes. The client learns it from the headers and, once it is
    // spent, answers `RateLimited` at once without sending (nor hanging in the call).
    let tiny = cloudflare_sim(CloudflareSimConfig { rate_limit: 3, ..cf_config() }).await;
    let c = cloudflare_client(&tiny, CF_TOKEN, fast_retry(3));
    let started = std::time::Instant::now();
    let mut went_through = 0;
    let err = loop {
        match c.list_dns_records("a.example.com").await {
            Ok(_) => went_through += 1,
            Err(e) => break e,
        }
        assert!(went_through <= 3, "more calls than the quota went through");
    };
    assert!(went_through >= 1, "the first call is within budget");
    assert!(
        matches!(err, CloudError::RateLimited { ref error, reset } if error.code == "client_rate_limit" && reset >= Duration::from_secs(60)),
        "{err}"
    );
    assert_eq!(tiny.control().total_requests(), went_through as u64, "nothing sent over the budget");
    assert_eq!(c.metrics().requests("cloudflare", "list_dns_records", "not_sent"), 1);
    assert_eq!(c.metrics().requests("cloudflare", "list_dns_records", "rate_limited"), 0, "no 429 was answered");
    // Someone else spends the rest; a second process that does not know yet gets the API's
    // 429, and the API then blocks every call for the whole window (Retry-After ~5 min).
    let http = reqwest::Client::new();
    let zone = cf_config().zone_id;
    while tiny.control().budget_remaining() > 0 {
        let url = format!("{}/zones/{zone}/dns_records", tiny.base_url);
        http.get(url).bearer_auth(CF_TOKEN).send().await.expect("spend the budget");
    }
    let stranger = cloudflare_client(&tiny, CF_TOKEN, fast_retry(3));
    let err = stranger.list_dns_records("a.example.com").await.unwrap_err();
    assert!(
        matches!(err, CloudError::RateLimited { ref error, reset } if error.status == Some(429) && reset >= Duration::from_secs(240)),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "did not wait out a five-minute block");
    tiny.shutdown().await.unwrap();
}
