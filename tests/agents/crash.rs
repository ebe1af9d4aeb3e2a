//! Crash safety with no human step: the controllers are killed at 12 points of a create and 12
//! of a delete (right after the k-th cloud request was served, whether or not its answer was
//! read; for the teardown's last steps a few milliseconds later) and restarted with no memory.
//! Each time the Agent converges with exactly one server, one tunnel and one DNS record, and
//! its deletion leaves nothing and exactly one destroy event. A second test kills a teardown at
//! twelve planned moments (while the server is still being created, after each request, with
//! each request's answer lost, as the secret goes, as the event commits, and later) and proves
//! from what the crash left that at least ten of them were distinct points.

use std::time::Duration;

use crabglamp_operator::store::audit;
use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams};

use super::fixture::*;

const DEADLINE: Duration = Duration::from_secs(60);

fn served(op: &Operator) -> u64 {
    op.hetzner.control().total_requests() + op.cloudflare.control().total_requests()
}

async fn until_served(op: &Operator, n: u64) -> bool {
    let start = tokio::time::Instant::now();
    while served(op) < n {
        if start.elapsed() > Duration::from_secs(20) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_every_step_of_create_and_delete() {
    let mut op = Operator::start().await;
    op.create_namespace("crash").await;
    let api = op.agents("crash");
    // The operator's own start-up requests (fleet firewall, first lists) come first.
    let start = tokio::time::Instant::now();
    while !(op.context.fleet.servers_known() && op.context.fleet.tunnels_known() && op.context.fleet.dns_known()) {
        assert!(start.elapsed() < DEADLINE, "first lists");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut points = 0;
    for k in 1..=12u64 {
        let name = format!("crash-{k}");
        // Create, killed after the k-th cloud request of this Agent's create.
        let base = served(&op);
        api.create(&PostParams::default(), &agent(&name, "acct_a", true)).await.expect("create");
        if until_served(&op, base + k).await {
            points += 1;
        }
        op = op.crash_and_restart().await;
        let a = wait_for(&api, &name, DEADLINE, "Ready after a crash in create", ready).await;
        let uid = a.uid().expect("uid");
        let servers: Vec<_> = crabglamp_sandbox::hetzner::server_names(&op.hetzner)
            .into_iter()
            .filter(|n| n.starts_with(&format!("{name}-")))
            .collect();
        assert_eq!(servers.len(), 1, "k={k}: one server, no duplicate: {servers:?}");
        assert_eq!(
            crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare)
                .iter()
                .filter(|t| t.contains(&uid))
                .count(),
            1,
            "k={k}: one tunnel"
        );

        // Delete, killed after the k-th cloud request of the teardown.
        let base = served(&op);
        api.delete(&name, &DeleteParams::default()).await.expect("delete");
        // A teardown makes three cloud requests (record, tunnel, server); points past the third
        // fall a few milliseconds apart into what follows: the destroy transaction and the
        // finalizer's release.
        until_served(&op, base + k.min(3)).await;
        if k > 3 {
            tokio::time::sleep(Duration::from_millis(3 * (k - 3))).await;
        }
        op = op.crash_and_restart().await;
        let start = tokio::time::Instant::now();
        while api.get_opt(&name).await.expect("get").is_some() {
            assert!(start.elapsed() < DEADLINE, "k={k}: finalizer not released after a crash in delete");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !crabglamp_sandbox::hetzner::server_names(&op.hetzner).iter().any(|n| n.starts_with(&format!("{name}-"))),
            "k={k}: server leaked"
        );
        assert!(
            !crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).iter().any(|t| t.contains(&uid)),
            "k={k}: tunnel leaked"
        );
        let destroyed = audit::events_for_resource(&op.db.pool, &uid)
            .await
            .expect("events")
            .into_iter()
            .filter(|e| e.kind == "agent.destroyed")
            .count();
        assert_eq!(destroyed, 1, "k={k}: exactly one destroy event");
    }
    assert!(points >= 10, "only {points} distinct crash points were reached in create");
    assert_eq!(crabglamp_sandbox::cloudflare::dns_record_count(&op.cloudflare), 0, "no DNS record leaked");
    let report = audit::verify_chain(&op.db.pool).await.expect("verify");
    assert!(report.first_break.is_none());
    op.stop().await;
}

/// Where a teardown was when the controllers died, as the world shows it right after the
/// crash (never as the test meant it): what is left in each cloud, how many teardown requests
/// were applied with their answer lost, and what PostgreSQL and the API server hold.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TeardownPoint {
    dns_record: bool,
    tunnel: bool,
    /// The server's status, if it still exists.
    server: Option<String>,
    answers_lost: usize,
    sealed_secret: bool,
    destroy_event: bool,
    object: bool,
}

async fn teardown_point(
    op: &Operator,
    api: &kube::Api<crabglamp_operator::api::Agent>,
    name: &str,
    uid: &str,
    since: (u64, u64),
) -> TeardownPoint {
    let server_name = crabglamp_operator::controllers::server::server_name(name, uid);
    let lost = |log: Vec<crabglamp_sandbox::http::RequestRecord>, since: u64| {
        log.iter().filter(|r| r.seq > since && r.injected).count()
    };
    let sealed_secret: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sealed_credentials WHERE resource_uid = $1)")
            .bind(uid)
            .fetch_one(&op.db.pool)
            .await
            .expect("sealed credentials");
    TeardownPoint {
        dns_record: crabglamp_sandbox::cloudflare::dns_records(&op.cloudflare)
            .iter()
            .any(|r| r.2.as_deref().is_some_and(|c| c.contains(uid))),
        tunnel: crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).iter().any(|t| t.contains(uid)),
        server: crabglamp_sandbox::hetzner::servers(&op.hetzner)
            .into_iter()
            .find(|s| s["name"] == server_name.as_str())
            .map(|s| s["status"].as_str().unwrap_or_default().to_owned()),
        answers_lost: lost(op.hetzner.requests(), since.0) + lost(op.cloudflare.requests(), since.1),
        sealed_secret,
        destroy_event: audit::events_for_resource(&op.db.pool, uid)
            .await
            .expect("events")
            .iter()
            .any(|e| e.kind == "agent.destroyed"),
        object: api.get_opt(name).await.expect("get").is_some(),
    }
}

/// How a teardown is interrupted.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// Deleted while its server is still being created (the removal waits for it to settle).
    WhileCreating,
    /// After the k-th teardown request (DNS record, tunnel, server) was answered.
    Answered(u64),
    /// When the k-th teardown request was applied and its answer lost.
    AnswerLost(u64),
    /// As soon as the sealed tunnel secret is gone from PostgreSQL.
    SecretGone,
    /// As soon as the destroy event is committed (before the finalizer goes).
    EventCommitted,
    /// This many milliseconds after the third request was answered.
    After(u64),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_every_step_of_delete() {
    let mut op = Operator::start().await;
    op.create_namespace("crash-delete").await;
    let api = op.agents("crash-delete");
    let kills = [
        Kill::WhileCreating,
        Kill::Answered(1),
        Kill::Answered(2),
        Kill::Answered(3),
        Kill::AnswerLost(1),
        Kill::AnswerLost(2),
        Kill::AnswerLost(3),
        Kill::SecretGone,
        Kill::EventCommitted,
        Kill::After(10),
        Kill::After(40),
        Kill::After(120),
    ];
    let mut points = std::collections::BTreeSet::new();
    for (i, kill) in kills.into_iter().enumerate() {
        let name = format!("del-{i}");
        api.create(&PostParams::default(), &agent(&name, "acct_a", true)).await.expect("create");
        let a = match kill {
            Kill::WhileCreating => {
                wait_for(&api, &name, DEADLINE, "a server id", |a| {
                    a.status.as_ref().and_then(|s| s.server.as_ref()).and_then(|s| s.id).is_some()
                })
                .await
            }
            _ => wait_for(&api, &name, DEADLINE, "Ready", ready).await,
        };
        let uid = a.uid().expect("uid");
        // The teardown's requests, in order: the DNS record, the tunnel, the server.
        let lose = |k: u64| {
            let (sim, path) = match k {
                1 => (&op.cloudflare, "/dns_records/"),
                2 => (&op.cloudflare, "/cfd_tunnel/"),
                _ => (&op.hetzner, "/servers/"),
            };
            sim.set_faults(crabglamp_sandbox::http::FaultPlan {
                rules: vec![crabglamp_sandbox::http::FaultRule {
                    method: Some(reqwest::Method::DELETE),
                    route: None,
                    path_contains: path.to_owned(),
                    rate: 1.0,
                    error: crabglamp_sandbox::http::InjectedError::ServerError,
                    lose_answer: true,
                }],
                fail_after_apply: true,
                ..Default::default()
            });
        };
        if let Kill::AnswerLost(k) = kill {
            lose(k);
        }
        let since = (op.hetzner.control().total_requests(), op.cloudflare.control().total_requests());
        let log_since =
            (op.hetzner.requests().last().map_or(0, |r| r.seq), op.cloudflare.requests().last().map_or(0, |r| r.seq));
        let served = |op: &Operator| {
            op.hetzner.control().total_requests() + op.cloudflare.control().total_requests() - since.0 - since.1
        };
        api.delete(&name, &DeleteParams::default()).await.expect("delete");
        let started = tokio::time::Instant::now();
        let reached = loop {
            let hit = match kill {
                Kill::WhileCreating => true,
                Kill::Answered(k) => served(&op) >= k,
                Kill::AnswerLost(_) => {
                    op.hetzner.requests().iter().any(|r| r.seq > log_since.0 && r.injected)
                        || op.cloudflare.requests().iter().any(|r| r.seq > log_since.1 && r.injected)
                }
                Kill::SecretGone => sqlx::query_scalar::<_, bool>(
                    "SELECT NOT EXISTS (SELECT 1 FROM sealed_credentials WHERE resource_uid = $1)",
                )
                .bind(&uid)
                .fetch_one(&op.db.pool)
                .await
                .expect("sealed credentials"),
                Kill::EventCommitted => audit::events_for_resource(&op.db.pool, &uid)
                    .await
                    .expect("events")
                    .iter()
                    .any(|e| e.kind == "agent.destroyed"),
                Kill::After(ms) => {
                    if served(&op) >= 3 {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        true
                    } else {
                        false
                    }
                }
            };
            if hit || started.elapsed() > Duration::from_secs(20) {
                break hit;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        assert!(reached, "{kill:?}: the teardown never got there");
        op = op.crash().await;
        op.hetzner.set_faults(crabglamp_sandbox::http::FaultPlan::default());
        op.cloudflare.set_faults(crabglamp_sandbox::http::FaultPlan::default());
        let point = teardown_point(&op, &api, &name, &uid, log_since).await;
        points.insert(point.clone());
        op = op.restart().await;

        wait_gone(&api, &name, DEADLINE).await;
        let server_name = crabglamp_operator::controllers::server::server_name(&name, &uid);
        assert!(
            !crabglamp_sandbox::hetzner::server_names(&op.hetzner).contains(&server_name),
            "{kill:?} ({point:?}): server leaked"
        );
        assert!(
            !crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).iter().any(|t| t.contains(&uid)),
            "{kill:?} ({point:?}): tunnel leaked"
        );
        assert!(
            !crabglamp_sandbox::cloudflare::dns_records(&op.cloudflare)
                .iter()
                .any(|r| r.2.as_deref().is_some_and(|c| c.contains(&uid))),
            "{kill:?} ({point:?}): DNS record leaked"
        );
        let destroyed = audit::events_for_resource(&op.db.pool, &uid)
            .await
            .expect("events")
            .into_iter()
            .filter(|e| e.kind == "agent.destroyed")
            .count();
        assert_eq!(destroyed, 1, "{kill:?} ({point:?}): exactly one destroy event");
    }
    assert!(points.len() >= 10, "only {} distinct points of a teardown were reached: {points:#?}", points.len());
    let report = audit::verify_chain(&op.db.pool).await.expect("verify");
    assert!(report.first_break.is_none());
    op.stop().await;
}
