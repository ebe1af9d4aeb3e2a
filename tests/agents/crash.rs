//! Crash safety with no human step: the controllers are killed at 12 points of a create and 12
//! of a delete (right after the k-th cloud request was served, whether or not its answer was
//! read; for the teardown's last steps a few milliseconds later) and restarted with no memory.
//! Each time the Agent converges with exactly one server, one tunnel and one DNS record, and
//! its deletion leaves nothing and exactly one destroy event. A second test kills teardowns
//! (deleting and orphaning) at thirteen planned moments: at once, after each request, with each
//! request's answer lost, as the secret goes, as the event commits; it proves from what each
//! crash left that at least ten of them were distinct points.

use std::time::Duration;

use crabglamp_operator::controllers::server::UID_LABEL;
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

/// How many destroy events the trail holds for the Agent `uid`.
async fn destroy_events(op: &Operator, uid: &str) -> usize {
    audit::events_for_resource(&op.db.pool, uid)
        .await
        .expect("events")
        .iter()
        .filter(|e| e.kind == "agent.destroyed")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_every_step_of_create_and_delete() {
    let mut op = Operator::start().await;
    op.create_namespace("crash").await;
    let api = op.agents("crash");
    // The operator's own start-up requests (fleet firewall, first lists) come first.
    let start = tokio::time::Instant::now();
    while !(op.context.fleet().servers_known() && op.context.fleet().tunnels_known() && op.context.fleet().dns_known())
    {
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
        let destroyed = destroy_events(&op, &uid).await;
        assert_eq!(destroyed, 1, "k={k}: exactly one destroy event");
    }
    assert!(points >= 10, "only {points} distinct crash points were reached in create");
    assert_eq!(crabglamp_sandbox::cloudflare::dns_record_count(&op.cloudflare), 0, "no DNS record leaked");
    let report = audit::verify_chain(&op.db.pool).await.expect("verify");
    assert!(report.first_break.is_none());
    op.stop().await;
}

/// Where a teardown was when the controllers died, as the world shows it right after the
/// crash (never as the test meant it): what is left in each cloud and whether it still carries
/// our marks, how many teardown requests were applied with their answer lost, and what
/// PostgreSQL and the API server hold.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TeardownPoint {
    /// The DNS record, if it exists: whether it still carries our mark.
    dns_record: Option<bool>,
    tunnel: bool,
    /// The server, if it exists: its status and whether it still carries our labels.
    server: Option<(String, bool)>,
    answers_lost: usize,
    sealed_secret: bool,
    destroy_event: bool,
    object: bool,
}

fn log_tail(op: &Operator) -> (u64, u64) {
    (op.hetzner.requests().last().map_or(0, |r| r.seq), op.cloudflare.requests().last().map_or(0, |r| r.seq))
}

/// Whether a request `method` to a path containing `path` was answered (2xx, not injected)
/// after `since`.
fn answered(log: &[crabglamp_sandbox::http::RequestRecord], since: u64, method: &str, path: &str) -> bool {
    log.iter()
        .any(|r| r.seq > since && r.method.as_str() == method && r.path.contains(path) && r.status < 300 && !r.injected)
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
    let host = crabglamp_operator::controllers::names::default_hostname(name, "crash-delete", ZONE);
    TeardownPoint {
        dns_record: crabglamp_sandbox::cloudflare::dns_records(&op.cloudflare)
            .iter()
            .find(|r| r.1.starts_with(&host))
            .map(|r| r.2.as_deref().is_some_and(|c| c.contains(uid))),
        tunnel: crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).iter().any(|t| t.contains(uid)),
        server: crabglamp_sandbox::hetzner::servers(&op.hetzner)
            .into_iter()
            .find(|s| s["name"] == server_name.as_str())
            .map(|s| {
                let marked = s["labels"].as_object().is_some_and(|l| l.contains_key(UID_LABEL));
                (s["status"].as_str().unwrap_or_default().to_owned(), marked)
            }),
        answers_lost: lost(op.hetzner.requests(), since.0) + lost(op.cloudflare.requests(), since.1),
        sealed_secret,
        destroy_event: destroy_events(op, uid).await > 0,
        object: api.get_opt(name).await.expect("get").is_some(),
    }
}

/// How a teardown is interrupted. Its requests, in order: the DNS record, the tunnel, the
/// server (for `Orphan`: the record's comment, the server's labels).
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// Right after the delete, before the operator acted on it.
    AtOnce,
    /// After the DNS record's delete was answered.
    RecordDeleted,
    /// After the tunnel's delete was answered, the server's held back (never applied).
    TunnelDeleted,
    /// After the server's delete was answered.
    ServerDeleted,
    /// When the k-th request was applied and its answer lost.
    AnswerLost(u64),
    /// As soon as the sealed tunnel secret is gone from PostgreSQL.
    SecretGone,
    /// `Orphan`: after the record's mark was taken off.
    RecordUnmarked,
    /// `Orphan`: after the server's labels were taken off.
    ServerUnmarked,
    /// `Orphan`: when the record's (1) or the server's (2) unmarking was applied and its answer
    /// lost.
    UnmarkAnswerLost(u64),
    /// As soon as the destroy event is committed.
    EventCommitted,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_every_step_of_delete() {
    use crabglamp_sandbox::http::{FaultPlan, FaultRule, InjectedError};
    let mut op = Operator::start().await;
    op.create_namespace("crash-delete").await;
    let api = op.agents("crash-delete");
    let kills = [
        Kill::AtOnce,
        Kill::RecordDeleted,
        Kill::TunnelDeleted,
        Kill::ServerDeleted,
        Kill::AnswerLost(1),
        Kill::AnswerLost(2),
        Kill::AnswerLost(3),
        Kill::SecretGone,
        Kill::RecordUnmarked,
        Kill::ServerUnmarked,
        Kill::UnmarkAnswerLost(1),
        Kill::UnmarkAnswerLost(2),
        Kill::EventCommitted,
    ];
    let mut points = std::collections::BTreeSet::new();
    for (i, kill) in kills.into_iter().enumerate() {
        let name = format!("del-{i}");
        let orphan = matches!(kill, Kill::RecordUnmarked | Kill::ServerUnmarked | Kill::UnmarkAnswerLost(_));
        let mut a = agent(&name, "acct_a", true);
        if orphan {
            a.spec.deletion_policy = crabglamp_operator::api::DeletionPolicy::Orphan;
        }
        api.create(&PostParams::default(), &a).await.expect("create");
        let uid = wait_for(&api, &name, DEADLINE, "Ready", ready).await.uid().expect("uid");
        let lose = |sim: &crabglamp_sandbox::http::RunningSim, method: reqwest::Method, path: &str| {
            sim.set_faults(FaultPlan {
                rules: vec![FaultRule {
                    method: Some(method),
                    route: None,
                    path_contains: path.to_owned(),
                    rate: 1.0,
                    error: InjectedError::ServerError,
                    lose_answer: true,
                }],
                fail_after_apply: true,
                ..Default::default()
            })
        };
        match kill {
            Kill::AnswerLost(1) => lose(&op.cloudflare, reqwest::Method::DELETE, "/dns_records/"),
            Kill::AnswerLost(2) => lose(&op.cloudflare, reqwest::Method::DELETE, "/cfd_tunnel/"),
            Kill::AnswerLost(_) => lose(&op.hetzner, reqwest::Method::DELETE, "/servers/"),
            Kill::UnmarkAnswerLost(1) => lose(&op.cloudflare, reqwest::Method::PATCH, "/dns_records/"),
            Kill::UnmarkAnswerLost(_) => lose(&op.hetzner, reqwest::Method::PUT, "/servers/"),
            // The server's delete (or relabelling) waits in the stand-in until the crash drops it.
            Kill::TunnelDeleted | Kill::RecordUnmarked => {
                op.hetzner.set_faults(FaultPlan { latency: Duration::from_secs(5), ..Default::default() })
            }
            _ => {}
        }
        let since = log_tail(&op);
        api.delete(&name, &DeleteParams::default()).await.expect("delete");
        let started = tokio::time::Instant::now();
        let reached = loop {
            let (hz, cf) = (op.hetzner.requests(), op.cloudflare.requests());
            let hit = match kill {
                Kill::AtOnce => true,
                Kill::RecordDeleted => answered(&cf, since.1, "DELETE", "/dns_records/"),
                Kill::TunnelDeleted => answered(&cf, since.1, "DELETE", "/cfd_tunnel/"),
                Kill::ServerDeleted => answered(&hz, since.0, "DELETE", "/servers/"),
                Kill::AnswerLost(_) | Kill::UnmarkAnswerLost(_) => {
                    hz.iter().any(|r| r.seq > since.0 && r.injected) || cf.iter().any(|r| r.seq > since.1 && r.injected)
                }
                Kill::RecordUnmarked => answered(&cf, since.1, "PATCH", "/dns_records/"),
                Kill::ServerUnmarked => answered(&hz, since.0, "PUT", "/servers/"),
                Kill::SecretGone => !sqlx::query_scalar::<_, bool>(
                    "SELECT EXISTS (SELECT 1 FROM sealed_credentials WHERE resource_uid = $1)",
                )
                .bind(&uid)
                .fetch_one(&op.db.pool)
                .await
                .expect("sealed credentials"),
                Kill::EventCommitted => destroy_events(&op, &uid).await > 0,
            };
            if hit || started.elapsed() > Duration::from_secs(20) {
                break hit;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        assert!(reached, "{kill:?}: the teardown never got there");
        op = op.crash().await;
        op.hetzner.set_faults(FaultPlan::default());
        op.cloudflare.set_faults(FaultPlan::default());
        let point = teardown_point(&op, &api, &name, &uid, since).await;
        points.insert(point.clone());
        op = op.restart().await;

        wait_gone(&api, &name, DEADLINE).await;
        let server_name = crabglamp_operator::controllers::server::server_name(&name, &uid);
        let server_left = crabglamp_sandbox::hetzner::server_names(&op.hetzner).contains(&server_name);
        let tunnel_left =
            crabglamp_sandbox::cloudflare::live_tunnel_names(&op.cloudflare).iter().any(|t| t.contains(&uid));
        let host = crabglamp_operator::controllers::names::default_hostname(&name, "crash-delete", ZONE);
        let records = crabglamp_sandbox::cloudflare::dns_records(&op.cloudflare);
        let record = records.iter().find(|r| r.1.starts_with(&host));
        if orphan {
            // Orphaned on purpose: all left, none of it ours any more.
            assert!(server_left && tunnel_left && record.is_some(), "{kill:?} ({point:?}): orphaned resources kept");
            assert!(record.and_then(|r| r.2.as_deref()).is_none_or(|c| !c.contains(&uid)), "{kill:?}: record unmarked");
        } else {
            assert!(!server_left, "{kill:?} ({point:?}): server leaked");
            assert!(!tunnel_left, "{kill:?} ({point:?}): tunnel leaked");
            assert!(record.is_none(), "{kill:?} ({point:?}): DNS record leaked");
        }
        let destroyed = destroy_events(&op, &uid).await;
        assert_eq!(destroyed, 1, "{kill:?} ({point:?}): exactly one destroy event");
    }
    assert!(points.len() >= 10, "only {} distinct points of a teardown were reached: {points:#?}", points.len());
    let report = audit::verify_chain(&op.db.pool).await.expect("verify");
    assert!(report.first_break.is_none());
    op.stop().await;
}
