//! The rendered Deployment against every check of the restricted Pod Security Standard
//! (Kubernetes' "Pod Security Standards" page, baseline and restricted profiles, latest
//! version), with default values and with every value set; plus the chart's own rule of a
//! read-only root filesystem.

use serde_json::Value;

use super::helm::{self, one};

/// Each check of the restricted profile: its name and whether the pod spec passes it (with
/// the offending value when not).
fn restricted_checks(pod: &Value) -> Vec<(&'static str, Result<(), String>)> {
    let containers: Vec<&Value> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .collect();
    let sc = |c: &Value| c["securityContext"].clone();
    let psc = pod["securityContext"].clone();
    let each = |f: &dyn Fn(&Value) -> Result<(), String>| -> Result<(), String> {
        containers.iter().try_for_each(|c| f(c).map_err(|e| format!("container {}: {e}", c["name"])))
    };
    let unset_or = |v: &Value, ok: &dyn Fn(&Value) -> bool, what: &str| {
        if v.is_null() || ok(v) { Ok(()) } else { Err(format!("{what} = {v}")) }
    };
    let is_false = |v: &Value| v == &Value::Bool(false);
    vec![
        // Baseline.
        (
            "HostProcess",
            unset_or(&psc["windowsOptions"]["hostProcess"], &is_false, "pod hostProcess")
                .and_then(|_| each(&|c| unset_or(&sc(c)["windowsOptions"]["hostProcess"], &is_false, "hostProcess"))),
        ),
        (
            "Host Namespaces",
            ["hostNetwork", "hostPID", "hostIPC"].iter().try_for_each(|k| unset_or(&pod[*k], &is_false, k)),
        ),
        ("Privileged Containers", each(&|c| unset_or(&sc(c)["privileged"], &is_false, "privileged"))),
        (
            "HostPath Volumes",
            pod["volumes"].as_array().into_iter().flatten().try_for_each(|v| {
                if v.get("hostPath").is_some() { Err(format!("hostPath volume {}", v["name"])) } else { Ok(()) }
            }),
        ),
        (
            "Host Ports",
            each(&|c| {
                c["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .try_for_each(|p| unset_or(&p["hostPort"], &|v| v == &Value::from(0), "hostPort"))
            }),
        ),
        ("AppArmor", {
            let ok = |v: &Value| v["type"] == "RuntimeDefault" || v["type"] == "Localhost" || v.is_null();
            let annotations_ok = pod["metadata"]["annotations"].as_object().is_none_or(|a| {
                a.iter()
                    .filter(|(k, _)| k.starts_with("container.apparmor.security.beta.kubernetes.io/"))
                    .all(|(_, v)| v.as_str().is_some_and(|s| s == "runtime/default" || s.starts_with("localhost/")))
            });
            if ok(&psc["appArmorProfile"]) && annotations_ok {
                each(&|c| if ok(&sc(c)["appArmorProfile"]) { Ok(()) } else { Err("appArmorProfile Unconfined".into()) })
            } else {
                Err("pod appArmorProfile".into())
            }
        }),
        ("SELinux", {
            let ok = |o: &Value| {
                let t = &o["type"];
                (t.is_null()
                    || ["container_t", "container_init_t", "container_kvm_t", "container_engine_t"]
                        .iter()
                        .any(|a| t == *a))
                    && o["user"].is_null()
                    && o["role"].is_null()
            };
            if ok(&psc["seLinuxOptions"]) {
                each(&|c| if ok(&sc(c)["seLinuxOptions"]) { Ok(()) } else { Err("seLinuxOptions".into()) })
            } else {
                Err("pod seLinuxOptions".into())
            }
        }),
        ("/proc Mount Type", each(&|c| unset_or(&sc(c)["procMount"], &|v| v == "Default", "procMount"))),
        (
            "Sysctls",
            psc["sysctls"].as_array().into_iter().flatten().try_for_each(|s| {
                const SAFE: [&str; 10] = [
                    "kernel.shm_rmid_forced",
                    "net.ipv4.ip_local_port_range",
                    "net.ipv4.ip_unprivileged_port_start",
                    "net.ipv4.tcp_syncookies",
                    "net.ipv4.ping_group_range",
                    "net.ipv4.ip_local_reserved_ports",
                    "net.ipv4.tcp_keepalive_time",
                    "net.ipv4.tcp_fin_timeout",
                    "net.ipv4.tcp_keepalive_intvl",
                    "net.ipv4.tcp_keepalive_probes",
                ];
                if SAFE.iter().any(|n| s["name"] == *n) { Ok(()) } else { Err(format!("sysctl {}", s["name"])) }
            }),
        ),
        // Restricted.
        (
            "Volume Types",
            pod["volumes"].as_array().into_iter().flatten().try_for_each(|v| {
                const ALLOWED: [&str; 8] = [
                    "configMap",
                    "csi",
                    "downwardAPI",
                    "emptyDir",
                    "ephemeral",
                    "persistentVolumeClaim",
                    "projected",
                    "secret",
                ];
                let source: Vec<&String> =
                    v.as_object().into_iter().flatten().map(|(k, _)| k).filter(|k| *k != "name").collect();
                if source.len() == 1 && ALLOWED.contains(&source[0].as_str()) {
                    Ok(())
                } else {
                    Err(format!("volume {} of type {source:?}", v["name"]))
                }
            }),
        ),
        (
            "Privilege Escalation",
            each(&|c| {
                if sc(c)["allowPrivilegeEscalation"] == Value::Bool(false) {
                    Ok(())
                } else {
                    Err("allowPrivilegeEscalation must be false".into())
                }
            }),
        ),
        (
            "Running as Non-root",
            each(&|c| match (&psc["runAsNonRoot"], &sc(c)["runAsNonRoot"]) {
                (_, Value::Bool(true)) | (Value::Bool(true), Value::Null) => Ok(()),
                (p, own) => Err(format!("runAsNonRoot pod {p}, container {own}")),
            }),
        ),
        (
            "Running as Non-root user",
            unset_or(&psc["runAsUser"], &|v| v.as_i64().is_some_and(|u| u != 0), "pod runAsUser").and_then(|_| {
                each(&|c| unset_or(&sc(c)["runAsUser"], &|v| v.as_i64().is_some_and(|u| u != 0), "runAsUser"))
            }),
        ),
        ("Seccomp", {
            let ok = |v: &Value| v["type"] == "RuntimeDefault" || v["type"] == "Localhost";
            each(&|c| match (&psc["seccompProfile"], &sc(c)["seccompProfile"]) {
                (_, own) if !own.is_null() => {
                    if ok(own) {
                        Ok(())
                    } else {
                        Err(format!("seccompProfile {own}"))
                    }
                }
                (pod_level, _) if ok(pod_level) => Ok(()),
                (pod_level, _) => Err(format!("no seccompProfile (pod: {pod_level})")),
            })
            .and_then(|_| {
                // The chart sets it at both levels, as the issue asks.
                if ok(&psc["seccompProfile"]) { Ok(()) } else { Err("pod-level seccompProfile unset".into()) }
            })
        }),
        (
            "Capabilities",
            each(&|c| {
                let caps = &sc(c)["capabilities"];
                let drops_all = caps["drop"].as_array().is_some_and(|d| d.iter().any(|x| x == "ALL"));
                let adds_ok = caps["add"].as_array().is_none_or(|a| a.iter().all(|x| x == "NET_BIND_SERVICE"));
                if drops_all && adds_ok { Ok(()) } else { Err(format!("capabilities {caps}")) }
            }),
        ),
    ]
}

fn assert_restricted(objects: &[Value], what: &str) {
    let deployment = one(objects, "Deployment");
    let mut pod = deployment["spec"]["template"]["spec"].clone();
    pod["metadata"] = deployment["spec"]["template"]["metadata"].clone();
    let checks = restricted_checks(&pod);
    // Nine baseline checks, six restricted ones (restricted's Seccomp and Capabilities replace
    // baseline's weaker forms of the same two).
    assert_eq!(checks.len(), 15, "every check of the profile is listed");
    let failed: Vec<String> =
        checks.iter().filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}"))).collect();
    assert!(failed.is_empty(), "{what}: the Deployment fails the restricted profile:\n{}", failed.join("\n"));
    for c in pod["containers"].as_array().expect("containers") {
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{what}: read-only root filesystem");
        assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"]["memory"].is_string(), "{what}");
    }
}

#[test]
fn deployment_passes_the_restricted_pod_security_standard() {
    assert_restricted(&helm::defaults(), "default values");
    assert_restricted(&helm::full(), "full values");
}

#[test]
fn the_checks_catch_what_the_profile_forbids() {
    let deployment = one(&helm::defaults(), "Deployment").clone();
    let pod = deployment["spec"]["template"]["spec"].clone();
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut p = pod.clone();
        edit(&mut p);
        restricted_checks(&p).into_iter().filter(|(_, r)| r.is_err()).map(|(n, _)| n).collect::<Vec<_>>()
    };
    assert_eq!(broken(&|p| p["hostNetwork"] = true.into()), ["Host Namespaces"]);
    assert_eq!(
        broken(&|p| p["containers"][0]["securityContext"]["runAsUser"] = 0.into()),
        ["Running as Non-root user"]
    );
    assert_eq!(
        broken(&|p| p["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = true.into()),
        ["Privilege Escalation"]
    );
    assert_eq!(
        broken(&|p| p["containers"][0]["securityContext"]["capabilities"]["add"] = serde_json::json!(["NET_ADMIN"])),
        ["Capabilities"]
    );
    assert_eq!(
        broken(&|p| p["containers"][0]["securityContext"]["seccompProfile"]["type"] = "Unconfined".into()),
        ["Seccomp"]
    );
    assert_eq!(
        broken(&|p| p["volumes"] = serde_json::json!([{"name": "h", "hostPath": {"path": "/"}}])),
        ["HostPath Volumes", "Volume Types"]
    );
    assert_eq!(
        broken(&|p| p["containers"][0]["securityContext"]["privileged"] = true.into()),
        ["Privileged Containers"]
    );
    assert_eq!(broken(&|p| p["containers"][0]["ports"][0]["hostPort"] = 8080.into()), ["Host Ports"]);
}
