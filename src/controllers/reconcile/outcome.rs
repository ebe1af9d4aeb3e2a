//! How a pass's outcome shows: an error classified as a stall (waits for a change) or a retry
//! (backoff), the summary conditions (`Ready`, `Stalled`) and the phase. Pure functions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::Phase;
use crate::cloud::CloudError;
use crate::controllers::reconcile::conditions::Desired;
use crate::controllers::reconcile::error::ReconcileError;

/// A permanent error's condition reason and message: the object is `Stalled`.
pub type Stall = (&'static str, String);

/// Stall reasons that clear by themselves (a limit raised, a name freed by whoever holds it):
/// the object is looked at again each resync. Any other stall waits for a spec change.
pub const SELF_CLEARING: [&str; 6] = [
    "QuotaExceeded",
    "ServerNameTaken",
    "FirewallQuotaExceeded",
    "SecretNameTaken",
    "TunnelQuotaExceeded",
    "DnsQuotaExceeded",
];

/// A permanent error's condition reason and message, or `None` when retrying can help.
pub fn stall_reason(error: &ReconcileError) -> Option<Stall> {
    match error {
        ReconcileError::UserData(cause) => {
            return Some(("UserDataInvalid", format!("the server's user data cannot be rendered: {cause}.")));
        }
        ReconcileError::NameTaken { what, name, .. } => {
            return Some((
                "ServerNameTaken",
                format!(
                    "a {what} named {name} that this operator did not create exists in the Hetzner project; \
                     rename or delete it (retried periodically)."
                ),
            ));
        }
        _ => {}
    }
    let cloud = error.cloud()?;
    if !matches!(cloud, CloudError::Permanent(_)) {
        return None;
    }
    let d = cloud.detail();
    let (reason, advice) = match d.code.as_str() {
        "resource_limit_exceeded" => ("QuotaExceeded", "ask Hetzner for a higher limit; retried periodically"),
        "invalid_input" if d.message.contains("server_type") || d.message.contains("server type") => {
            ("InvalidServerType", "fix spec.serverType")
        }
        "invalid_input" if d.message.contains("image") => ("ImageNotFound", "fix spec.image"),
        "invalid_input" => ("InvalidInput", "fix the spec"),
        "unauthorized" | "forbidden" | "10000" | "9109" => ("Unauthorized", "check the API token"),
        _ => ("CloudRefused", "fix the spec or the account"),
    };
    Some((reason, format!("{d}; {advice}.")))
}

/// The condition of an error retrying can help with (the pass backs off and tries again).
pub fn retry_reason(error: &ReconcileError) -> (&'static str, String) {
    let reason = match error.cloud() {
        Some(CloudError::RateLimited { .. }) => "RateLimited",
        // Sold out here, or no host could take the server: both clear by themselves.
        Some(CloudError::NoCapacity(d)) if d.code == "resource_unavailable" => "ServerTypeUnavailable",
        Some(CloudError::NoCapacity(_)) => "PlacementFailed",
        Some(_) if matches!(error, ReconcileError::Hetzner(_)) => "HetznerUnavailable",
        Some(_) => "CloudflareUnavailable",
        None => "RetryingAfterError",
    };
    (reason, format!("{error}; retrying with backoff."))
}

/// A not-Ready condition that names the error in its reason and message.
pub fn set_ready_reason(conditions: &mut [Condition], reason: &'static str, message: &str) {
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == "Ready" && c.status == "False") {
        c.reason = reason.to_owned();
        c.message = message.to_owned();
    }
}

/// Pure: the whole condition list of a kind: `Ready` (true with `ready_message` when every
/// part is true, else the stall or the first part that is not), the parts, then `Stalled` or
/// `Reconciling` (neither once Ready).
pub fn summary_conditions(ready_message: &str, stalled: Option<&Stall>, parts: Vec<Desired>) -> Vec<Desired> {
    let ready = parts.iter().all(|c| c.status);
    let head = if ready {
        Desired::new("Ready", true, "Ready", ready_message)
    } else if let Some((reason, message)) = stalled {
        Desired::new("Ready", false, reason, message.clone())
    } else {
        let waiting = parts.iter().find(|c| !c.status);
        Desired::new(
            "Ready",
            false,
            waiting.map_or("Reconciling", |c| c.reason),
            waiting.map_or_else(String::new, |c| c.message.clone()),
        )
    };
    let mut all = vec![head];
    all.extend(parts);
    if let Some((reason, message)) = stalled {
        all.push(Desired::new("Stalled", true, reason, message.clone()));
    } else if !ready {
        all.push(Desired::new("Reconciling", true, "Progressing", "Cloud resources are being created or changed."));
    }
    all
}

/// Pure: the coarse phase. `nothing_yet`: none of the object's cloud resources exists.
pub fn phase(stalled: bool, nothing_yet: bool, running: bool, ready: bool, effective: Option<&str>) -> Phase {
    if stalled {
        Phase::Failed
    } else if nothing_yet {
        Phase::Pending
    } else if running {
        if ready { Phase::Running } else { Phase::Provisioning }
    } else if effective == Some("off") {
        Phase::Stopped
    } else {
        Phase::Stopping
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::CloudError;
    use k8s_openapi::jiff::Timestamp;

    fn ready_false() -> Condition {
        Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: "Provisioning".into(),
            message: "m".into(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
        }
    }

    #[test]
    fn only_a_false_ready_is_renamed_by_an_error() {
        let mut c = vec![ready_false()];
        set_ready_reason(&mut c, "RateLimited", "slow down");
        assert_eq!((c[0].reason.as_str(), c[0].message.as_str()), ("RateLimited", "slow down"));
        c[0].status = "True".into();
        set_ready_reason(&mut c, "HetznerUnavailable", "x");
        assert_eq!(c[0].reason, "RateLimited", "a true Ready keeps its reason");
    }

    #[test]
    fn errors_classify_into_stalls_and_retries() {
        use crate::cloud::error::{Provider, ProviderError};
        let detail = |code: &str, message: &str| ProviderError {
            provider: Provider::Hetzner,
            operation: "create_server",
            status: Some(403),
            code: code.into(),
            message: message.into(),
        };
        let quota = ReconcileError::Hetzner(CloudError::Permanent(detail("resource_limit_exceeded", "limit")));
        assert_eq!(stall_reason(&quota).map(|s| s.0), Some("QuotaExceeded"));
        let bad_type = ReconcileError::Hetzner(CloudError::Permanent(detail("invalid_input", "unknown server_type")));
        assert_eq!(stall_reason(&bad_type).map(|s| s.0), Some("InvalidServerType"));
        let busy = ReconcileError::Hetzner(CloudError::Retryable(detail("unavailable", "later")));
        assert_eq!(stall_reason(&busy), None);
        assert_eq!(retry_reason(&busy).0, "HetznerUnavailable");
        assert_eq!(retry_reason(&ReconcileError::NotReady("lists")).0, "RetryingAfterError");
        for reason in SELF_CLEARING {
            assert!(reason.ends_with("Exceeded") || reason.ends_with("Taken"), "{reason}");
        }
    }

    #[test]
    fn transient_create_refusals_are_retried_and_named() {
        use crate::cloud::error::{Provider, ProviderError, classify_hetzner};
        let refused = |status: u16, code: &str| {
            let detail = ProviderError {
                provider: Provider::Hetzner,
                operation: "create_server",
                status: Some(status),
                code: code.into(),
                message: "m".into(),
            };
            ReconcileError::Hetzner(classify_hetzner(detail, std::time::Duration::from_secs(1)))
        };
        for (status, code, reason) in [
            (422, "placement_error", "PlacementFailed"),
            (412, "resource_unavailable", "ServerTypeUnavailable"),
            (429, "rate_limit_exceeded", "RateLimited"),
            (500, "server_error", "HetznerUnavailable"),
            (503, "unavailable", "HetznerUnavailable"),
            (409, "conflict", "HetznerUnavailable"),
        ] {
            let error = refused(status, code);
            assert_eq!(stall_reason(&error), None, "{code} is retried, not stalled");
            assert_eq!(retry_reason(&error).0, reason, "{code}");
        }
        assert_eq!(stall_reason(&refused(422, "invalid_input")).map(|s| s.0), Some("InvalidInput"));
    }

    #[test]
    fn a_render_error_and_a_name_conflict_stall_with_their_cause() {
        use crate::cloud::error::{Provider, ProviderError};
        let (reason, message) =
            stall_reason(&ReconcileError::UserData("user data would be 40000 bytes".into())).expect("stalls");
        assert_eq!(reason, "UserDataInvalid");
        assert!(message.contains("40000 bytes"), "{message}");
        let conflict = CloudError::Conflict(ProviderError {
            provider: Provider::Hetzner,
            operation: "create_server",
            status: Some(409),
            code: "uniqueness_error".into(),
            message: "server name is already used".into(),
        });
        let taken =
            ReconcileError::NameTaken { what: "server", name: "bot-1a2b3c4d".into(), source: Box::new(conflict) };
        let (reason, message) = stall_reason(&taken).expect("stalls");
        assert_eq!(reason, "ServerNameTaken");
        assert!(message.contains("bot-1a2b3c4d"), "{message}");
        assert!(SELF_CLEARING.contains(&reason), "looked at again once the name is free");
    }
}
