//! Leader election on a `coordination.k8s.io/v1` Lease: of several instances only the holder
//! of the Lease runs the controllers.
//!
//! Hand-written, on purpose. The one maintained crate that supports kube 5
//! (`kube-lease-manager` 0.13) does not meet what a hand-over needs here: a standby sleeps
//! until the holder's lease would expire before it looks again, so a lease released on
//! SIGTERM is taken only after up to the whole lease duration; and its watch mode hides
//! renewal errors, so a leader cut off from the API server goes on believing it leads. The
//! other candidates (`kube-leader-election`, `kube-coordinate`) are built on kube 4 and 2.
//! What is below is the protocol client-go uses, in its smallest correct form:
//!
//! - Every `retry_period` each instance reads the Lease. It takes it when it is free (no
//!   holder: released) or expired, and the holder renews it; both are a `replace` carrying
//!   the `resourceVersion` just read, so of two instances racing for it the API server lets
//!   exactly one win (the other gets a 409 Conflict and stays a standby).
//! - Expiry is judged on this instance's own clock, never on the holder's `renewTime`: a
//!   lease is expired when its record (holder, renew time) has not changed for
//!   `leaseDurationSeconds` since this instance first saw it so. Clock skew between nodes
//!   cannot make two leaders.
//! - The holder gives up leading when it has not renewed within `renew_deadline` (shorter
//!   than the duration) of its last successful renewal, so it stops before anyone else may
//!   take over: no two instances start reconciles at the same time. Every request of a look
//!   is bounded by the time left before that deadline: a half-open connection or a stalled
//!   API server cannot hold a renewal (and with it the leader) past it. The operator cancels
//!   in-flight reconciles the moment leadership is lost, so the old leader has stopped acting
//!   `duration - renew_deadline` before a standby may take over.
//! - On shutdown the holder releases the Lease (clears `holderIdentity`) after its
//!   controllers stopped, and a standby takes it at its next look, within `retry_period`.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;

/// How one instance takes part in the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's name (`crabglamp-operator`, `-<shard>` appended per shard).
    pub name: String,
    pub namespace: String,
    /// This instance's identity in `holderIdentity` (the pod name).
    pub identity: String,
    /// `leaseDurationSeconds`: how long a standby waits for a silent holder.
    pub duration: Duration,
    /// How long the holder keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often every instance looks at (and the holder renews) the Lease.
    pub retry_period: Duration,
}

/// Why a look at the Lease did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The API server answered with an error, or the connection failed.
    #[error("Lease {what}: {source}")]
    Api {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    /// No answer before the deadline (a stalled API server or a half-open connection).
    #[error("Lease {what}: no answer before the deadline")]
    TimedOut { what: &'static str },
}

impl LeaseConfig {
    /// Refuses timings with which a leader could still act once a standby may take over: the
    /// renew deadline must be shorter than the duration (the difference is the time the old
    /// leader has to stop), and a look must come more often than the renew deadline.
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_deadline >= self.duration {
            return Err(format!(
                "the lease renew deadline ({:?}) must be shorter than the lease duration ({:?}): a leader must stop \
                 before a standby may take over",
                self.renew_deadline, self.duration
            ));
        }
        if self.retry_period >= self.renew_deadline {
            return Err(format!(
                "the lease retry period ({:?}) must be shorter than the renew deadline ({:?}), or the leader never \
                 renews in time",
                self.retry_period, self.renew_deadline
            ));
        }
        Ok(())
    }

    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s between looks.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseConfig {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The Lease's name for a shard: `base`, or `base-<shard>`.
pub fn lease_name(base: &str, shard: Option<&str>) -> String {
    match shard {
        Some(shard) => format!("{base}-{shard}"),
        None => base.to_owned(),
    }
}

/// A default identity: the host name and a random suffix (two processes on one host differ).
pub fn default_identity() -> String {
    let host = hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "crabglamp".to_owned());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// What the Lease said when this instance last saw it change, and when (on our clock).
#[derive(Debug, Clone, PartialEq)]
struct Record {
    holder: Option<String>,
    renew: Option<Timestamp>,
    duration: Duration,
}

/// One instance's side of the election.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<(Record, Instant)>,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The election's state as the rest of the operator reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    /// This instance holds the Lease (and may reconcile).
    pub leading: bool,
    /// The last look at the Lease got an answer from the API server.
    pub reachable: bool,
}

/// Runs one Lease request, giving up at `until`: a request that outlives the deadline is
/// dropped (its connection with it), so no caller waits past it.
async fn bounded<T>(
    until: Instant,
    what: &'static str,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, ElectionError> {
    match tokio::time::timeout_at(until.into(), request).await {
        Ok(result) => result.map_err(|source| ElectionError::Api { what, source }),
        Err(_) => Err(ElectionError::TimedOut { what }),
    }
}

/// A 409 Conflict: another writer changed the Lease since it was read.
fn conflict<T>(result: &Result<T, ElectionError>) -> bool {
    matches!(result, Err(ElectionError::Api { source: kube::Error::Api(e), .. }) if e.code == 409)
}

fn record_of(spec: &LeaseSpec) -> Record {
    Record {
        holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
        renew: spec.renew_time.as_ref().map(|t| t.0),
        duration: Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0).max(1)).unwrap_or(1)),
    }
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Elector { api: Api::namespaced(client, &config.namespace), config, observed: None }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Notes the record seen now; the expiry clock restarts only when it changed.
    fn observe(&mut self, record: Record, now: Instant) {
        if self.observed.as_ref().is_none_or(|(r, _)| *r != record) {
            self.observed = Some((record, now));
        }
    }

    /// Pure given what was observed: may this instance take or renew the Lease now?
    fn may_take(&self, now: Instant) -> bool {
        match &self.observed {
            None => true,
            Some((record, since)) => match &record.holder {
                None => true,
                Some(holder) if *holder == self.config.identity => true,
                Some(_) => now.saturating_duration_since(*since) >= record.duration,
            },
        }
    }

    fn spec_for_us(&self, old: &LeaseSpec, now: Timestamp) -> LeaseSpec {
        let was_ours = old.holder_identity.as_deref() == Some(self.config.identity.as_str());
        let had_holder = old.holder_identity.as_deref().is_some_and(|h| !h.is_empty());
        let mut spec = old.clone();
        spec.holder_identity = Some(self.config.identity.clone());
        spec.lease_duration_seconds = Some(i32::try_from(self.config.duration.as_secs().max(1)).unwrap_or(i32::MAX));
        spec.renew_time = Some(MicroTime(now));
        if !was_ours {
            spec.acquire_time = Some(MicroTime(now));
            if had_holder {
                spec.lease_transitions = Some(old.lease_transitions.unwrap_or(0).saturating_add(1));
            }
        }
        spec
    }

    /// One look: takes or renews the Lease when it may. Ok(true): this instance holds it now.
    /// Every request gives up at `until` (the leader's renew deadline).
    pub async fn try_acquire_or_renew(&mut self, until: Instant) -> Result<bool, ElectionError> {
        let now = Instant::now();
        let Some(mut lease) = bounded(until, "read", self.api.get_opt(&self.config.name)).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.config.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec_for_us(&LeaseSpec::default(), Timestamp::now())),
            };
            let created = bounded(until, "create", self.api.create(&PostParams::default(), &lease)).await;
            // Another instance created it first: it leads.
            if conflict(&created) {
                return Ok(false);
            }
            self.observe(record_of(&created?.spec.unwrap_or_default()), now);
            return Ok(true);
        };
        let old = lease.spec.clone().unwrap_or_default();
        self.observe(record_of(&old), now);
        if !self.may_take(now) {
            return Ok(false);
        }
        lease.spec = Some(self.spec_for_us(&old, Timestamp::now()));
        // `lease.metadata.resourceVersion` is the one just read: a concurrent writer wins or
        // we do, never both.
        let written =
            bounded(until, "renewal", self.api.replace(&self.config.name, &PostParams::default(), &lease)).await;
        if conflict(&written) {
            return Ok(false);
        }
        self.observe(record_of(&written?.spec.unwrap_or_default()), now);
        Ok(true)
    }

    /// Gives the Lease up if this instance holds it: no holder, so a standby takes it at once.
    /// Gives up at `until` (the Lease then expires by itself).
    pub async fn release(&mut self, until: Instant) -> Result<(), ElectionError> {
        let Some(mut lease) = bounded(until, "read", self.api.get_opt(&self.config.name)).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        let released =
            bounded(until, "release", self.api.replace(&self.config.name, &PostParams::default(), &lease)).await;
        // Someone took it meanwhile (we had stopped renewing): nothing left to give up.
        if conflict(&released) {
            return Ok(());
        }
        released.map(|_| ())
    }

    /// Campaigns until `release` turns true: publishes in `standing` whether this instance
    /// leads. Losing the lease (another holder, or no renewal within the renew deadline) ends
    /// the campaign with `leading: false`, published no later than the deadline: no look and
    /// no pause between looks outlasts it. A lost leader does not campaign again (the process
    /// restarts as a standby). When `release` turns true the Lease is released if held.
    pub async fn campaign(mut self, standing: watch::Sender<Standing>, mut release: watch::Receiver<bool>) {
        let mut last_renewal: Option<Instant> = None;
        loop {
            if *release.borrow() {
                break;
            }
            let started = Instant::now();
            let deadline = last_renewal.map(|at| at + self.config.renew_deadline);
            // A standby's look is bounded too, so that readiness reports an API server that
            // stopped answering.
            let until = deadline.unwrap_or(started + self.config.renew_deadline);
            let result = self.try_acquire_or_renew(until).await;
            let leading_before = last_renewal.is_some();
            match &result {
                Ok(true) => {
                    if !leading_before {
                        tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became the leader");
                    }
                    last_renewal = Some(started);
                }
                Ok(false) if leading_before => {
                    tracing::warn!(lease = %self.config.name, "another instance holds the lease: no longer leading");
                    standing.send_replace(Standing { leading: false, reachable: true });
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = %self.config.name, error = %e, "cannot read or renew the lease"),
            }
            let deadline = last_renewal.map(|at| at + self.config.renew_deadline);
            if deadline.is_some_and(|d| Instant::now() >= d) {
                tracing::warn!(lease = %self.config.name, "lease not renewed within the renew deadline: no longer leading");
                standing.send_replace(Standing { leading: false, reachable: result.is_ok() });
                return;
            }
            standing.send_if_modified(|s| {
                let next = Standing { leading: last_renewal.is_some(), reachable: result.is_ok() };
                std::mem::replace(s, next) != next
            });
            // The next look comes after the retry period, or at the deadline if that is sooner
            // (where a leader whose looks keep failing gives up).
            let pause = deadline.map_or(self.config.retry_period, |d| {
                self.config.retry_period.min(d.saturating_duration_since(Instant::now()))
            });
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                changed = release.changed() => if changed.is_err() { break },
            }
        }
        if last_renewal.is_some() {
            match self.release(Instant::now() + self.config.renew_deadline).await {
                Ok(()) => tracing::info!(lease = %self.config.name, "lease released"),
                Err(e) => {
                    tracing::warn!(lease = %self.config.name, error = %e, "cannot release the lease; it expires by itself")
                }
            }
        }
        standing.send_replace(Standing { leading: false, reachable: true });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elector(identity: &str) -> Elector {
        // A client that is never called: only the pure parts are tested here (the protocol
        // runs against the sandbox's API server in tests/leader.rs).
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        Elector::new(client, LeaseConfig::new("l", "ns", identity))
    }

    fn held_by(holder: Option<&str>) -> Record {
        Record {
            holder: holder.map(str::to_owned),
            renew: Some(Timestamp::UNIX_EPOCH),
            duration: Duration::from_secs(15),
        }
    }

    #[tokio::test]
    async fn a_held_lease_is_taken_only_after_it_stayed_unchanged_for_its_duration() {
        let mut e = elector("b");
        let t0 = Instant::now();
        e.observe(held_by(Some("a")), t0);
        assert!(!e.may_take(t0 + Duration::from_secs(14)));
        // Seen again unchanged: the clock does not restart.
        e.observe(held_by(Some("a")).clone(), t0 + Duration::from_secs(5));
        assert!(e.may_take(t0 + Duration::from_secs(15)));
        // A renewal restarts it.
        let renewed = Record { renew: Timestamp::from_second(1).ok(), ..held_by(Some("a")) };
        e.observe(renewed, t0 + Duration::from_secs(15));
        assert!(!e.may_take(t0 + Duration::from_secs(16)));
        // Released: free at once; ours: always.
        e.observe(held_by(None), t0 + Duration::from_secs(16));
        assert!(e.may_take(t0 + Duration::from_secs(16)));
        e.observe(held_by(Some("b")), t0 + Duration::from_secs(17));
        assert!(e.may_take(t0 + Duration::from_secs(17)));
    }

    #[test]
    fn a_renew_deadline_must_leave_time_to_stop_before_a_standby_takes_over() {
        let mut c = LeaseConfig::new("l", "ns", "a");
        assert_eq!(c.validate(), Ok(()));
        c.renew_deadline = c.duration;
        assert!(c.validate().is_err_and(|e| e.contains("shorter than the lease duration")));
        c.renew_deadline = Duration::from_secs(2);
        assert!(c.validate().is_err_and(|e| e.contains("retry period")));
    }

    #[tokio::test]
    async fn taking_over_counts_a_transition_and_renewing_does_not() {
        let e = elector("b");
        let now = Timestamp::now();
        let theirs =
            LeaseSpec { holder_identity: Some("a".into()), lease_transitions: Some(3), ..LeaseSpec::default() };
        let taken = e.spec_for_us(&theirs, now);
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.lease_duration_seconds, Some(15));
        assert!(taken.acquire_time.is_some());
        let renewed = e.spec_for_us(&taken, now);
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, taken.acquire_time);
        assert_eq!(lease_name("crabglamp-operator", Some("eu-2")), "crabglamp-operator-eu-2");
    }
}
