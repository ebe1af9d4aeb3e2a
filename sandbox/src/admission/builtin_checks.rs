//! The checks of kube-apiserver's validation of each built-in kind that charts most often trip
//! over (Deployments, Services, RBAC rules and bindings, PodDisruptionBudgets,
//! NetworkPolicies), each cause worded as the API server words it.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::cause::{Cause, CauseReason, render_value};
use super::names::{label_error, name_error};

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

pub(super) struct Checks<'a> {
    pub(super) causes: &'a mut Vec<Cause>,
}

fn quoted(values: &[&str]) -> String {
    values.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ")
}

fn items(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

impl Checks<'_> {
    fn push(&mut self, reason: CauseReason, field: impl Into<String>, message: impl Into<String>) {
        self.causes.push(Cause::new(reason, field, message));
    }

    fn required(&mut self, field: impl Into<String>, detail: &str) {
        let message = if detail.is_empty() { "Required value".to_owned() } else { format!("Required value: {detail}") };
        self.push(CauseReason::Required, field, message);
    }

    fn invalid(&mut self, field: impl Into<String>, value: &Value, detail: &str) {
        self.push(CauseReason::Invalid, field, format!("Invalid value: {}: {detail}", render_value(value)));
    }

    fn one_of(&mut self, field: impl Into<String>, value: Option<&Value>, allowed: &[&str]) {
        if let Some(v) = value
            && !v.as_str().is_some_and(|s| allowed.contains(&s))
        {
            self.push(
                CauseReason::NotSupported,
                field,
                format!("Unsupported value: {}: supported values: {}", render_value(v), quoted(allowed)),
            );
        }
    }

    pub(super) fn labels(&mut self, field: &str, labels: Option<&Value>) {
        for (k, v) in labels.and_then(Value::as_object).into_iter().flatten() {
            if let Some((_, message)) = label_error(k, v.as_str().unwrap_or_default()) {
                self.push(CauseReason::Invalid, field, message);
            }
        }
    }

    fn port_number(&mut self, field: String, port: Option<&Value>, allow_zero: bool) {
        let Some(v) = port else { return };
        let n = v.as_i64().unwrap_or(-1);
        if !((1..=65535).contains(&n) || allow_zero && n == 0) {
            self.invalid(field, v, "must be between 1 and 65535, inclusive");
        }
    }

    /// A port given as number or IANA service name (probes, targetPort).
    fn int_or_name_port(&mut self, field: String, port: Option<&Value>) {
        match port {
            Some(Value::String(name)) => {
                let ok = !name.is_empty()
                    && name.len() <= 15
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && name.bytes().any(|b| b.is_ascii_lowercase())
                    && !name.starts_with('-')
                    && !name.ends_with('-')
                    && !name.contains("--");
                if !ok && name.parse::<u16>().is_err() {
                    self.invalid(
                        field,
                        &json!(name),
                        "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                    );
                }
            }
            other => self.port_number(field, other, false),
        }
    }

    fn selector_matches(&mut self, field: &str, selector: Option<&Value>, labels: Option<&Value>) {
        let Some(selector) = selector else { return };
        let match_labels = selector.get("matchLabels").and_then(Value::as_object);
        let expressions = items(selector.get("matchExpressions"));
        if match_labels.is_none_or(|m| m.is_empty()) && expressions.is_empty() {
            self.invalid(field.to_owned(), selector, "empty selector is invalid for deployment");
            return;
        }
        self.labels(&format!("{field}.matchLabels"), selector.get("matchLabels"));
        let labels = labels.and_then(Value::as_object);
        let matches = match_labels.into_iter().flatten().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            && expressions.iter().all(|e| {
                let key = text(e, "key").unwrap_or_default();
                let has = labels.and_then(|l| l.get(key));
                let values = items(e.get("values"));
                match text(e, "operator").unwrap_or_default() {
                    "In" => has.is_some_and(|v| values.contains(v)),
                    "NotIn" => has.is_none_or(|v| !values.contains(v)),
                    "Exists" => has.is_some(),
                    "DoesNotExist" => has.is_none(),
                    _ => false,
                }
            });
        if !matches {
            let shown = labels.map(|l| Value::Object(l.clone())).unwrap_or(Value::Null);
            self.invalid("spec.template.metadata.labels", &shown, "`selector` does not match template `labels`");
        }
    }

    pub(super) fn deployment(&mut self, d: &Value, old: Option<&Value>) {
        let Some(spec) = d.get("spec") else {
            self.required("spec.selector", "");
            self.required("spec.template", "");
            return;
        };
        if let Some(r) = spec.get("replicas").filter(|r| r.as_i64().is_some_and(|n| n < 0)) {
            self.invalid("spec.replicas", r, "must be greater than or equal to 0");
        }
        let template_labels = spec.pointer("/template/metadata/labels");
        self.selector_matches("spec.selector", spec.get("selector"), template_labels);
        if let (Some(old), Some(new)) = (old.and_then(|o| o.pointer("/spec/selector")), spec.get("selector"))
            && old != new
        {
            self.invalid("spec.selector", new, "field is immutable");
        }
        self.labels("spec.template.metadata.labels", template_labels);
        self.one_of("spec.strategy.type", spec.pointer("/strategy/type"), &["Recreate", "RollingUpdate"]);
        if let Some(pod) = spec.pointer("/template/spec") {
            self.pod("spec.template.spec", pod);
            self.one_of("spec.template.spec.restartPolicy", pod.get("restartPolicy"), &["Always"]);
        }
    }

    fn pod(&mut self, at: &str, pod: &Value) {
        let volumes: HashSet<&str> = items(pod.get("volumes")).iter().filter_map(|v| text(v, "name")).collect();
        for (i, v) in items(pod.get("volumes")).iter().enumerate() {
            if let Some(name) = text(v, "name")
                && let Some(message) = name_error(name, true)
            {
                self.push(CauseReason::Invalid, format!("{at}.volumes[{i}].name"), message);
            }
        }
        if items(pod.get("containers")).is_empty() {
            self.required(format!("{at}.containers"), "");
        }
        let mut names = HashSet::new();
        for list in ["initContainers", "containers"] {
            for (i, c) in items(pod.get(list)).iter().enumerate() {
                let field = format!("{at}.{list}[{i}]");
                match text(c, "name") {
                    None => self.required(format!("{field}.name"), ""),
                    Some(name) => {
                        if let Some(message) = name_error(name, true) {
                            self.push(CauseReason::Invalid, format!("{field}.name"), message);
                        } else if !names.insert(name) {
                            self.push(
                                CauseReason::Duplicate,
                                format!("{field}.name"),
                                format!("Duplicate value: {name:?}"),
                            );
                        }
                    }
                }
                if text(c, "image").is_none() {
                    self.required(format!("{field}.image"), "");
                }
                self.one_of(
                    format!("{field}.imagePullPolicy"),
                    c.get("imagePullPolicy"),
                    &["Always", "IfNotPresent", "Never"],
                );
                for (j, p) in items(c.get("ports")).iter().enumerate() {
                    self.port_number(format!("{field}.ports[{j}].containerPort"), p.get("containerPort"), false);
                    self.one_of(format!("{field}.ports[{j}].protocol"), p.get("protocol"), PROTOCOLS);
                }
                for (j, m) in items(c.get("volumeMounts")).iter().enumerate() {
                    if let Some(name) = text(m, "name")
                        && !volumes.contains(name)
                    {
                        self.push(
                            CauseReason::NotFound,
                            format!("{field}.volumeMounts[{j}].name"),
                            format!("Not found: {name:?}"),
                        );
                    }
                }
                for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                    if let Some(port) =
                        c.get(probe).and_then(|p| p.pointer("/httpGet/port").or_else(|| p.pointer("/tcpSocket/port")))
                    {
                        let sub =
                            if c.get(probe).and_then(|p| p.get("httpGet")).is_some() { "httpGet" } else { "tcpSocket" };
                        self.int_or_name_port(format!("{field}.{probe}.{sub}.port"), Some(port));
                    }
                }
            }
        }
    }

    pub(super) fn service(&mut self, s: &Value, old: Option<&Value>) {
        let spec = s.get("spec").cloned().unwrap_or_else(|| json!({}));
        let kind = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP");
        self.one_of("spec.type", spec.get("type"), &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]);
        let headless = spec.get("clusterIP") == Some(&json!("None"));
        let ports = items(spec.get("ports"));
        if ports.is_empty() && kind != "ExternalName" && !headless {
            self.required("spec.ports", "");
        }
        let mut names = HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let field = format!("spec.ports[{i}]");
            match text(p, "name") {
                None if ports.len() > 1 => self.required(format!("{field}.name"), ""),
                None => {}
                Some(name) if !names.insert(name) => {
                    self.push(CauseReason::Duplicate, format!("{field}.name"), format!("Duplicate value: {name:?}"));
                }
                Some(_) => {}
            }
            self.port_number(format!("{field}.port"), p.get("port"), false);
            self.one_of(format!("{field}.protocol"), p.get("protocol"), PROTOCOLS);
            self.int_or_name_port(format!("{field}.targetPort"), p.get("targetPort"));
        }
        if let (Some(before), Some(now)) = (old.and_then(|o| o.pointer("/spec/clusterIP")), spec.get("clusterIP"))
            && before != now
            && before.as_str().is_some_and(|b| !b.is_empty())
        {
            self.invalid("spec.clusterIP", now, "field is immutable");
        }
        self.labels("spec.selector", spec.get("selector"));
    }

    pub(super) fn rules(&mut self, role: &Value, namespaced: bool) {
        for (i, rule) in items(role.get("rules")).iter().enumerate() {
            let field = format!("rules[{i}]");
            if items(rule.get("verbs")).is_empty() {
                self.required(format!("{field}.verbs"), "verbs must contain at least one value");
            }
            let urls = items(rule.get("nonResourceURLs"));
            if !urls.is_empty() {
                if namespaced {
                    self.invalid(
                        format!("{field}.nonResourceURLs"),
                        &Value::Array(urls.to_vec()),
                        "namespaced rules cannot apply to non-resource URLs",
                    );
                }
                continue;
            }
            if items(rule.get("apiGroups")).is_empty() {
                self.required(format!("{field}.apiGroups"), "resource rules must supply at least one api group");
            }
            if items(rule.get("resources")).is_empty() {
                self.required(format!("{field}.resources"), "resource rules must supply at least one resource");
            }
        }
    }

    pub(super) fn binding(&mut self, b: &Value, old: Option<&Value>, namespaced: bool) {
        let role_ref = b.get("roleRef").cloned().unwrap_or(Value::Null);
        self.one_of("roleRef.apiGroup", role_ref.get("apiGroup"), &["rbac.authorization.k8s.io"]);
        let kinds: &[&str] = if namespaced { &["ClusterRole", "Role"] } else { &["ClusterRole"] };
        self.one_of("roleRef.kind", role_ref.get("kind"), kinds);
        if role_ref.is_object() && text(&role_ref, "name").is_none() {
            self.required("roleRef.name", "");
        }
        if let Some(before) = old.and_then(|o| o.get("roleRef"))
            && *before != role_ref
        {
            self.invalid("roleRef", &role_ref, "cannot change roleRef");
        }
        for (i, s) in items(b.get("subjects")).iter().enumerate() {
            let field = format!("subjects[{i}]");
            self.one_of(format!("{field}.kind"), s.get("kind"), &["Group", "ServiceAccount", "User"]);
            if text(s, "name").is_none() {
                self.required(format!("{field}.name"), "");
            }
            if s.get("kind") == Some(&json!("ServiceAccount")) && !namespaced && text(s, "namespace").is_none() {
                self.required(format!("{field}.namespace"), "");
            }
        }
    }

    pub(super) fn pdb(&mut self, p: &Value) {
        let Some(spec) = p.get("spec") else { return };
        if spec.get("minAvailable").is_some() && spec.get("maxUnavailable").is_some() {
            self.invalid("spec", spec, "minAvailable and maxUnavailable cannot be both set");
        }
        for key in ["minAvailable", "maxUnavailable"] {
            match spec.get(key) {
                Some(Value::String(s)) => {
                    let ok = s.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n <= 100);
                    if !ok {
                        self.invalid(format!("spec.{key}"), &json!(s), "must be an integer or percentage (e.g '5%')");
                    }
                }
                Some(n) if n.as_i64().is_some_and(|n| n < 0) => {
                    self.invalid(format!("spec.{key}"), n, "must be greater than or equal to 0");
                }
                _ => {}
            }
        }
        self.labels("spec.selector.matchLabels", spec.pointer("/selector/matchLabels"));
    }

    pub(super) fn network_policy(&mut self, n: &Value) {
        let Some(spec) = n.get("spec") else { return };
        for (i, t) in items(spec.get("policyTypes")).iter().enumerate() {
            self.one_of(format!("spec.policyTypes[{i}]"), Some(t), &["Egress", "Ingress"]);
        }
        self.labels("spec.podSelector.matchLabels", spec.pointer("/podSelector/matchLabels"));
        for (direction, peers) in [("ingress", "from"), ("egress", "to")] {
            for (i, rule) in items(spec.get(direction)).iter().enumerate() {
                for (j, port) in items(rule.get("ports")).iter().enumerate() {
                    let field = format!("spec.{direction}[{i}].ports[{j}]");
                    self.one_of(format!("{field}.protocol"), port.get("protocol"), PROTOCOLS);
                    self.int_or_name_port(format!("{field}.port"), port.get("port"));
                }
                for (j, peer) in items(rule.get(peers)).iter().enumerate() {
                    if let Some(cidr) = peer.pointer("/ipBlock/cidr")
                        && cidr.as_str().is_none_or(|c| c.parse::<ipnet::IpNet>().is_err())
                    {
                        self.invalid(
                            format!("spec.{direction}[{i}].{peers}[{j}].ipBlock.cidr"),
                            cidr,
                            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                        );
                    }
                }
            }
        }
    }
}
