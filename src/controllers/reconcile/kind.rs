//! What a kind is to the reconcile skeleton ([`ManagedObject`]): its status, what it
//! observes, its pure decision, its steps and its cleanup; and the plan a decision returns.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::runtime::controller::Action;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cloud::hetzner::ServerSummary;
use crate::controllers::config::ControllerConfig;
use crate::controllers::context::Context;
use crate::controllers::reconcile::error::ReconcileError;
use crate::controllers::reconcile::outcome::{Stall, stall_reason};
use crate::controllers::server::{Owner, ServerIntent, TimelineTail};

/// The finalizer that holds an object until its cloud resources are gone and its destroy event
/// is committed.
pub const FINALIZER: &str = "crabglamp.com/cleanup";

/// What the next pass waits for, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Nothing: the next pass is the periodic resync.
    Nothing,
    /// A list to show the first complete picture.
    Lists,
    /// The tunnel to connect (Agents).
    Tunnel,
    /// The server to reach the desired power state.
    Server,
    /// A moment no list shows (a key's expiry, the end of a rotation's grace), or the resync.
    Until(Duration),
    /// A change of the object itself: nothing else can help.
    Change,
}

/// The decision for one pass: the steps to take now, in order, and what to wait for after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<S> {
    pub steps: Vec<S>,
    pub wait: Wait,
}

/// What the usage timeline needs of one observation of a server-backed object.
pub struct UsageSeen<'a> {
    /// The server's status to believe (an Agent's counts a connected tunnel as booted).
    pub power: String,
    pub server: &'a ServerSummary,
    /// The timeline's tail as PostgreSQL had it when observed.
    pub tail: TimelineTail,
    pub intent: ServerIntent,
}

/// A kind this skeleton reconciles.
pub trait ManagedObject:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    type Status: Clone + Debug + Default + PartialEq + Serialize + Send + Sync;
    /// Everything one decision needs (see [`ManagedObject::observe`]).
    type Observed: Send + Sync;
    /// One idempotent step, carrying the ids it acts on.
    type Step: Clone + Debug + PartialEq + Send + Sync;
    /// `Agent`, `PlainVM`, `VirtualKey`: spans, metrics, Events.
    const KIND: &'static str;
    /// The finalizer that holds an object until its cleanup is done: a kind keeps the name its
    /// objects already carry (a new one would leave the old one on them for good).
    const FINALIZER: &'static str = FINALIZER;
    /// Whether the pause annotation holds the object (see [`PAUSE_ANNOTATION`]).
    const PAUSABLE: bool = true;

    fn status(&self) -> Option<&Self::Status>;
    fn conditions(status: &Self::Status) -> &[Condition];
    fn conditions_mut(status: &mut Self::Status) -> &mut Vec<Condition>;
    /// The phase in status (`Pending` before the first status write), for the objects gauge.
    fn phase_name(&self) -> String;

    /// Whether every shared list this kind decides on has been seen complete (until then,
    /// absence proves nothing); a kind whose list runs on demand asks for it here.
    fn lists_known(_ctx: &Context) -> bool {
        true
    }
    /// Reads everything the decision needs, once per decision: the fleet snapshot, the tails
    /// of the object's audit trail and usage timeline, the kind's own stores.
    fn observe(
        &self,
        ctx: &Context,
        owner: &Owner,
    ) -> impl Future<Output = Result<Self::Observed, ReconcileError>> + Send;
    /// Pure: the status a pass starts from: the object's, with what the observation knows
    /// better than a possibly stale status (an Agent's owner, from the transfer trail). The
    /// status write compares against the object's own, so a correction is written.
    fn working_status(old: &Self::Status, _observed: &Self::Observed) -> Self::Status {
        old.clone()
    }
    /// Pure: the steps to take now, in order, and what to wait for after.
    fn decide(
        &self,
        status: &Self::Status,
        observed: &Self::Observed,
        config: &ControllerConfig,
        now: Instant,
    ) -> Plan<Self::Step>;
    /// One idempotent step; what it learns goes into `status` and the fleet view. It acts on
    /// the ids the step carries and reads no observation again.
    fn act(
        &self,
        ctx: &Context,
        owner: &Owner,
        status: &mut Self::Status,
        step: &Self::Step,
    ) -> impl Future<Output = Result<(), ReconcileError>> + Send;
    /// Pure: the status that describes what is observed (`stalled`: a permanent error).
    fn describe(
        &self,
        status: &Self::Status,
        observed: &Self::Observed,
        stalled: Option<Stall>,
        now: Timestamp,
    ) -> Self::Status;
    /// What the usage timeline needs of the observation: `None` without a server (and for a
    /// kind that has none).
    fn usage<'a>(&self, _observed: &'a Self::Observed) -> Option<UsageSeen<'a>> {
        None
    }
    /// The owner a usage row written now bills: the one the operator has accepted, never a
    /// new spec owner whose transfer is not recorded yet. `None`: no row until one is.
    fn billed_owner(&self, _status: &Self::Status) -> Option<String> {
        None
    }
    /// A permanent error's reason, or `None` when retrying can help. Kinds may name a step's
    /// refusal more precisely than [`stall_reason`] does.
    fn stall(_step: &Self::Step, error: &ReconcileError) -> Option<Stall> {
        stall_reason(error)
    }
    /// Tears the object's cloud resources down (or orphans them) and commits its destroy event.
    /// Any `Ok` releases the finalizer: return an error while anything is left.
    fn cleanup(object: Arc<Self>, ctx: Arc<Context>) -> impl Future<Output = Result<Action, ReconcileError>> + Send;
}

/// The status accessors of [`ManagedObject`] for a kind whose status has `conditions`.
macro_rules! status_access {
    ($status:ty) => {
        fn status(&self) -> Option<&$status> {
            self.status.as_ref()
        }
        fn conditions(status: &$status) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
            &status.conditions
        }
        fn conditions_mut(status: &mut $status) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
            &mut status.conditions
        }
    };
}
pub(crate) use status_access;

/// The parts of a [`ManagedObject`] impl every server-backed kind writes the same way: its
/// status type, its kind name, the status accessors, and the phase from `status.phase`.
macro_rules! managed_kind {
    ($status:ty, $kind:expr) => {
        type Status = $status;
        const KIND: &'static str = $kind;
        $crate::controllers::reconcile::kind::status_access!($status);
        fn phase_name(&self) -> String {
            format!("{:?}", self.status.as_ref().and_then(|s| s.phase).unwrap_or_default())
        }
    };
}
pub(crate) use managed_kind;
