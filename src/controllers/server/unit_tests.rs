//! Unit tests of the server machinery's pure parts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::api::Region;
use crate::store::usage::Transition;

use super::{intent::*, marks::*, power::*, steps::*, timeline::*};
use crate::controllers::config::ControllerConfig;
use crate::controllers::server::installation::INSTALLATION_LABEL;
use crate::controllers::shard::SHARD_LABEL;

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3f2a9c1e-0b4d-4c55-9e1a-7d2b8c6f0a11";

    #[test]
    fn each_instance_lists_only_its_installation_shard_and_namespace() {
        let mut config = ControllerConfig::new("z");
        config.installation = Some("prod".into());
        assert_eq!(
            fleet_selector(&config),
            "crabglamp.com/managed-by=crabglamp-operator,crabglamp.com/installation=prod,!crabglamp.com/shard"
        );
        assert_eq!(
            legacy_fleet_selector(&config),
            "crabglamp.com/managed-by=crabglamp-operator,!crabglamp.com/installation,!crabglamp.com/shard"
        );
        config.shard = Some("a".into());
        config.watch_namespace = Some("team-a".into());
        assert_eq!(
            per_object_firewall_selector(&config),
            "crabglamp.com/managed-by=crabglamp-operator,crabglamp.com/kind=plainvm,crabglamp.com/installation=prod,crabglamp.com/shard=a,crabglamp.com/namespace=team-a"
        );
        assert_eq!(
            legacy_per_object_firewall_selector(&config),
            "crabglamp.com/managed-by=crabglamp-operator,crabglamp.com/kind=plainvm,!crabglamp.com/installation,crabglamp.com/shard=a,crabglamp.com/namespace=team-a"
        );
    }

    #[test]
    fn server_names_are_dns_labels_within_hetzner_limits() {
        assert_eq!(server_name("research-bot", UID), "research-bot-3f2a9c1e");
        let longest = "a".repeat(50);
        let name = server_name(&longest, UID);
        assert_eq!(name.len(), 59);
        assert!(name.len() <= 63 && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert_eq!(server_name("x", "ABCDEF12-3456"), "x-abcdef12", "uppercase UIDs still give a lowercase name");
    }

    #[test]
    fn labels_point_back_and_orphaning_removes_only_ours() {
        let owner =
            Owner { kind: "Agent", namespace: "team-a".into(), name: "bot".into(), uid: UID.into(), shard: None };
        let labels = server_labels(&owner, "agent", "prod");
        assert_eq!(labels[UID_LABEL], UID);
        assert_eq!(labels[INSTALLATION_LABEL], "prod");
        assert!(!labels.contains_key(SHARD_LABEL));
        let sharded = server_labels(&Owner { shard: Some("eu-2".into()), ..owner.clone() }, "agent", "prod");
        assert_eq!(sharded[SHARD_LABEL], "eu-2");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        for (k, v) in &labels {
            let name = k.rsplit('/').next().unwrap_or(k);
            assert!(name.len() <= 63 && v.len() <= 63, "{k}={v}");
            assert!(v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{v}");
        }
        let mut theirs = labels.clone();
        theirs.insert("team".into(), "x".into());
        assert_eq!(without_our_labels(&theirs), BTreeMap::from([("team".to_owned(), "x".to_owned())]));
        assert!(marked_for(&labels, UID));
        assert!(!marked_for(&without_our_labels(&theirs), UID), "unmarked before: not ours to change");
        assert!(!marked_for(&labels, "another-uid"));
    }

    #[test]
    fn power_decisions_over_every_status() {
        let now = Instant::now();
        let t = Duration::from_secs(60);
        let statuses = ["initializing", "starting", "running", "stopping", "off", "deleting", "rebuilding", "unknown"];
        for status in statuses {
            let want_on = decide_power(true, status, None, now, t);
            assert_eq!(want_on, if status == "off" { PowerStep::PowerOn } else { PowerStep::Hold }, "{status}");
            let want_off = decide_power(false, status, None, now, t);
            assert_eq!(want_off, if status == "running" { PowerStep::Shutdown } else { PowerStep::Hold }, "{status}");
        }
        let sent = now.checked_sub(Duration::from_secs(30)).unwrap_or(now);
        assert_eq!(decide_power(false, "running", Some(sent), now, t), PowerStep::Hold, "ACPI still has time");
        let long_ago = now.checked_sub(Duration::from_secs(61)).unwrap_or(now);
        assert_eq!(
            decide_power(false, "running", Some(long_ago), now, t),
            PowerStep::PowerOff,
            "the guest ignored ACPI"
        );
        assert_eq!(decide_power(true, "running", Some(long_ago), now, t), PowerStep::Hold, "a stale request is moot");
    }

    #[test]
    fn timeline_records_each_real_transition_once() {
        use Transition::*;
        assert_eq!(decide_transition(None, "running"), Some(Start));
        assert_eq!(decide_transition(None, "off"), None, "a server never started has nothing to stop");
        assert_eq!(decide_transition(Some(Start), "running"), None, "a retry records nothing");
        assert_eq!(decide_transition(Some(Start), "stopping"), None, "wait until it settles");
        assert_eq!(decide_transition(Some(Start), "off"), Some(Stop));
        assert_eq!(decide_transition(Some(Stop), "off"), None);
        assert_eq!(decide_transition(Some(Stop), "running"), Some(Start));
        // Keys: the same logical transition is one key; the next one another.
        assert_eq!(transition_key(UID, 1, Start), transition_key(UID, 1, Start));
        assert_ne!(transition_key(UID, 1, Start), transition_key(UID, 3, Start));
    }

    #[test]
    fn a_server_between_power_states_is_removed_only_once_settled() {
        let patience = Duration::from_secs(120);
        let soon = Duration::from_secs(3);
        for settled in ["running", "off"] {
            assert!(!removal_waits(Some(settled), soon, patience), "{settled}");
        }
        for between in ["initializing", "starting", "stopping", UNKNOWN_STATUS] {
            assert!(removal_waits(Some(between), soon, patience), "{between}: its transition is not billed yet");
            assert!(!removal_waits(Some(between), patience, patience), "{between}: the wait is bounded");
        }
        assert!(!removal_waits(None, soon, patience), "no server: nothing to wait for");
    }

    #[test]
    fn price_cells() {
        let intent = ServerIntent {
            product: "agent",
            region: Region::Us,
            server_type: "cpx22".into(),
            image: "ubuntu-24.04".into(),
            running: true,
            owner: "acct".into(),
        };
        assert_eq!(intent.price_cell(), "agent-us-cpx22");
        assert_eq!(intent.billed_price_cell(None), "agent-us-cpx22", "no server yet: the spec's type");
        let mut server = summary_for_tests("bot-12345678", "running", &[]);
        assert_eq!(intent.billed_price_cell(Some(&server)), "agent-us-cpx22", "a summary without its type");
        server.server_type = Some(crate::cloud::hetzner::NamedSummary { name: "cpx42".into() });
        assert_eq!(billed_type(&intent, Some(&server)), "cpx42");
        assert_eq!(intent.billed_price_cell(Some(&server)), "agent-us-cpx42", "rescaled by hand: what runs is billed");
    }
}
