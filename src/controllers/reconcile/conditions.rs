//! Standard `metav1.Condition` bookkeeping shared by every kind: set a condition so that
//! `lastTransitionTime` moves only when its status changes (kstatus, Argo CD and Flux read it
//! that way), and compare condition lists without the timestamps.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition's desired content, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    /// CamelCase.
    pub reason: &'static str,
    /// A human sentence; never a secret.
    pub message: String,
}

impl Desired {
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Desired { type_, status, reason, message: message.into() }
    }
}

/// The new conditions list: each desired condition, keeping the old `lastTransitionTime` when
/// its status did not change; conditions not desired any more are dropped.
pub fn merge(old: &[Condition], desired: &[Desired], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" }.to_owned();
            let previous = old.iter().find(|c| c.type_ == d.type_);
            let last_transition_time = match previous {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: d.type_.to_owned(),
                status,
                reason: d.reason.to_owned(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The condition of a type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_with_status() {
        let t0 = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let t1 = Timestamp::from_second(2_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let first = merge(&[], &[Desired::new("Ready", false, "Provisioning", "creating")], Some(1), t0);
        assert_eq!(first[0].last_transition_time, Time(t0));
        let same = merge(&first, &[Desired::new("Ready", false, "WaitingForTunnel", "waiting")], Some(2), t1);
        assert_eq!(same[0].last_transition_time, Time(t0), "reason changed, status did not");
        assert_eq!(same[0].reason, "WaitingForTunnel");
        let flipped = merge(&same, &[Desired::new("Ready", true, "Ready", "up")], Some(2), t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert!(merge(&flipped, &[], Some(2), t1).is_empty());
    }
}
