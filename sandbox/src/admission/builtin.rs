//! Admission of the built-in kinds the sandbox stores (it never runs them: no pods, no
//! controllers): unknown fields found against the kind's schema (what a real server's strict
//! decoding refuses, and drops otherwise), JSON types (a decoding error on a real server), the
//! defaults clients read back, the schema's required fields and list keys, then the checks of
//! kube-apiserver's validation of each kind that charts most often trip over, with its wording.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::Admitted;
use super::cause::{Cause, CauseReason, render_value};
use super::names::{label_error, name_error, path_segment_error};
use super::structural;

/// Why a built-in object is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The body does not decode as the kind (400 BadRequest, like Go's JSON decoder).
    Decode(String),
    /// It decodes but is invalid (422 Invalid).
    Invalid(Vec<Cause>),
}

/// The kinds with checks of their own here (others only get schema pruning and types).
const VALIDATED: &[(&str, &str)] = &[
    ("apps", "Deployment"),
    ("", "Service"),
    ("", "ServiceAccount"),
    ("rbac.authorization.k8s.io", "Role"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "RoleBinding"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("policy", "PodDisruptionBudget"),
    ("networking.k8s.io", "NetworkPolicy"),
];

/// Whether objects of this kind get the full admission of this module.
pub fn validates(group: &str, kind: &str) -> bool {
    VALIDATED.contains(&(group, kind))
}

/// Why `name` is no valid name for the kind (RBAC names need only be path segments, Service
/// names are DNS-1035 labels, other names DNS-1123 subdomains).
pub fn object_name_error(group: &str, kind: &str, name: &str) -> Option<String> {
    match (group, kind) {
        ("rbac.authorization.k8s.io", _) => path_segment_error(name),
        ("", "Service") => {
            let starts_alpha = name.as_bytes().first().is_some_and(u8::is_ascii_lowercase);
            name_error(name, true).or_else(|| (!starts_alpha).then(|| format!(
                "Invalid value: {name:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
            )))
        }
        ("", "Namespace") => name_error(name, true),
        _ => name_error(name, false),
    }
}

/// Admits `new` (a create when `old` is None) of kind `group`/`kind` under its `schema`:
/// prunes unknown fields (reported in [`Admitted::unknown_fields`]), applies defaults, checks.
pub fn admit(group: &str, kind: &str, schema: &Value, new: &Value, old: Option<&Value>) -> Result<Admitted, Refused> {
    let mut object = new.clone();
    let mut unknown_fields = Vec::new();
    structural::prune(schema, &mut object, "", true, &mut unknown_fields);
    let full = validates(group, kind);
    if !full {
        // Kinds checked elsewhere (Secrets, ConfigMaps, Namespaces) are only told their unknown
        // fields; the object stays as it came unless some were found.
        let object = if unknown_fields.is_empty() { new.clone() } else { object };
        return Ok(Admitted { object, unknown_fields });
    }
    defaults(kind, &mut object, old);
    let causes = structural::check_values(schema, &object, old);
    if let Some(decode) = causes.iter().find(|c| c.reason == CauseReason::TypeInvalid) {
        return Err(Refused::Decode(decode_message(decode)));
    }
    let mut causes: Vec<Cause> = causes;
    let mut v = Checks { causes: &mut causes };
    v.labels("metadata.labels", object.pointer("/metadata/labels"));
    match kind {
        "Deployment" => v.deployment(&object, old),
        "Service" => v.service(&object, old),
        "Role" | "ClusterRole" => v.rules(&object, kind == "Role"),
        "RoleBinding" | "ClusterRoleBinding" => v.binding(&object, old, kind == "RoleBinding"),
        "PodDisruptionBudget" => v.pdb(&object),
        "NetworkPolicy" => v.network_policy(&object),
        _ => {}
    }
    if causes.is_empty() { Ok(Admitted { object, unknown_fields }) } else { Err(Refused::Invalid(causes)) }
}

/// Go's decoder message for a value of the wrong JSON type.
fn decode_message(cause: &Cause) -> String {
    // The structural message ends with `must be of type <expected>: "<actual>"`.
    let (expected, actual) = cause
        .message
        .rsplit_once("must be of type ")
        .and_then(|(_, rest)| rest.split_once(": "))
        .map(|(e, a)| (e.to_owned(), a.trim_matches('"').to_owned()))
        .unwrap_or_default();
    format!("json: cannot unmarshal {actual} into Go struct field {} of type {expected}", cause.field)
}

/// The defaults of kube-apiserver's `SetDefaults_*` that clients read back.
fn defaults(kind: &str, object: &mut Value, old: Option<&Value>) {
    if matches!(kind, "RoleBinding" | "ClusterRoleBinding")
        && let Some(subjects) = object.get_mut("subjects").and_then(Value::as_array_mut)
    {
        for s in subjects.iter_mut().filter_map(Value::as_object_mut) {
            let group = if s.get("kind") == Some(&json!("ServiceAccount")) { "" } else { "rbac.authorization.k8s.io" };
            s.entry("apiGroup").or_insert(json!(group));
        }
    }
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let mut set = |key: &str, value: Value| {
        spec.entry(key.to_owned()).or_insert(value);
    };
    match kind {
        "Deployment" => {
            set("replicas", json!(1));
            set("revisionHistoryLimit", json!(10));
            set("progressDeadlineSeconds", json!(600));
            set("strategy", json!({}));
            if let Some(strategy) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
                strategy.entry("type").or_insert(json!("RollingUpdate"));
                if strategy.get("type") == Some(&json!("RollingUpdate")) {
                    let rolling = strategy.entry("rollingUpdate").or_insert(json!({}));
                    if let Some(r) = rolling.as_object_mut() {
                        r.entry("maxSurge").or_insert(json!("25%"));
                        r.entry("maxUnavailable").or_insert(json!("25%"));
                    }
                }
            }
            if let Some(pod) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                pod_defaults(pod);
            }
        }
        "Service" => service_defaults(spec, old),
        "NetworkPolicy" => {
            if !spec.contains_key("policyTypes") {
                let mut types = vec![json!("Ingress")];
                if spec.get("egress").and_then(Value::as_array).is_some() {
                    types.push(json!("Egress"));
                }
                spec.insert("policyTypes".into(), Value::Array(types));
            }
            for direction in ["ingress", "egress"] {
                let Some(rules) = spec.get_mut(direction).and_then(Value::as_array_mut) else { continue };
                for ports in rules.iter_mut().filter_map(|r| r.get_mut("ports")).filter_map(Value::as_array_mut) {
                    for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                        port.entry("protocol").or_insert(json!("TCP"));
                    }
                }
            }
        }
        _ => {}
    }
}

fn pod_defaults(pod: &mut Value) {
    let Some(spec) = pod.as_object_mut() else { return };
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
    ] {
        spec.entry(k).or_insert(v);
    }
    for list in ["containers", "initContainers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten().filter_map(Value::as_object_mut)
        {
            c.entry("terminationMessagePath").or_insert(json!("/dev/termination-log"));
            c.entry("terminationMessagePolicy").or_insert(json!("File"));
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
            let tag = image.rsplit('/').next().unwrap_or_default();
            let latest = !image.contains('@') && tag.split_once(':').is_none_or(|(_, t)| t == "latest");
            c.entry("imagePullPolicy").or_insert(json!(if latest { "Always" } else { "IfNotPresent" }));
            for port in
                c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten().filter_map(Value::as_object_mut)
            {
                port.entry("protocol").or_insert(json!("TCP"));
            }
            for env in c.get_mut("env").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(field_ref) = env.pointer_mut("/valueFrom/fieldRef").and_then(Value::as_object_mut) {
                    field_ref.entry("apiVersion").or_insert(json!("v1"));
                }
            }
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) else { continue };
                for (k, v) in
                    [("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1), ("failureThreshold", 3)]
                {
                    p.entry(k).or_insert(json!(v));
                }
                if let Some(get) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                    get.entry("scheme").or_insert(json!("HTTP"));
                }
            }
        }
    }
}

fn service_defaults(spec: &mut serde_json::Map<String, Value>, old: Option<&Value>) {
    spec.entry("type").or_insert(json!("ClusterIP"));
    let external_name = spec.get("type") == Some(&json!("ExternalName"));
    spec.entry("sessionAffinity").or_insert(json!("None"));
    // An update that leaves the allocated address out keeps it, as the real server does.
    let old_spec = old.and_then(|o| o.get("spec"));
    for key in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
        if !spec.contains_key(key)
            && let Some(v) = old_spec.and_then(|s| s.get(key))
        {
            spec.insert(key.into(), v.clone());
        }
    }
    if !external_name {
        if spec.get("clusterIP").and_then(Value::as_str).is_none_or(str::is_empty) {
            // Any free-looking address of the default service range (10.96.0.0/12).
            let n = uuid::Uuid::new_v4().as_u128();
            let ip = format!("10.96.{}.{}", (n >> 8) & 0xff, (n & 0xfd) + 2);
            spec.insert("clusterIP".into(), json!(ip));
        }
        let ip = spec.get("clusterIP").cloned().unwrap_or(Value::Null);
        spec.entry("clusterIPs").or_insert(json!([ip]));
        if ip != json!("None") {
            spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
        }
        spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
        spec.entry("internalTrafficPolicy").or_insert(json!("Cluster"));
    }
    for port in
        spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten().filter_map(Value::as_object_mut)
    {
        port.entry("protocol").or_insert(json!("TCP"));
        if let Some(p) = port.get("port").cloned() {
            port.entry("targetPort").or_insert(p);
        }
    }
}

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

struct Checks<'a> {
    causes: &'a mut Vec<Cause>,
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

    fn labels(&mut self, field: &str, labels: Option<&Value>) {
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

    fn deployment(&mut self, d: &Value, old: Option<&Value>) {
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

    fn service(&mut self, s: &Value, old: Option<&Value>) {
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

    fn rules(&mut self, role: &Value, namespaced: bool) {
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

    fn binding(&mut self, b: &Value, old: Option<&Value>, namespaced: bool) {
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

    fn pdb(&mut self, p: &Value) {
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

    fn network_policy(&mut self, n: &Value) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"app": "d"}}, "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "app", "image": "i:1", "ports": [{"containerPort": 80}]}]}}
        }})
    }

    fn schema() -> std::sync::Arc<Value> {
        crate::kube::schema::builtin("apps", "Deployment").unwrap_or_else(|| panic!("schema"))
    }

    fn messages(d: &Value) -> Vec<String> {
        match admit("apps", "Deployment", &schema(), d, None) {
            Ok(_) => Vec::new(),
            Err(Refused::Invalid(causes)) => causes.iter().map(ToString::to_string).collect(),
            Err(Refused::Decode(m)) => vec![m],
        }
    }

    #[test]
    fn a_valid_deployment_is_defaulted() {
        let admitted = admit("apps", "Deployment", &schema(), &deployment(), None).unwrap_or_else(|e| panic!("{e:?}"));
        let o = admitted.object;
        assert_eq!(o["spec"]["replicas"], 1);
        assert_eq!(o["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let c = &o["spec"]["template"]["spec"]["containers"][0];
        assert_eq!((&c["imagePullPolicy"], &c["ports"][0]["protocol"]), (&json!("IfNotPresent"), &json!("TCP")));
        assert!(admitted.unknown_fields.is_empty());
    }

    #[test]
    fn refusals_name_the_field_as_kube_apiserver_does() {
        let mut d = deployment();
        d["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        assert_eq!(
            messages(&d),
            [r#"spec.template.metadata.labels: Invalid value: "object": `selector` does not match template `labels`"#]
        );
        let mut d = deployment();
        d["spec"]["template"]["spec"]["containers"][0]["image"] = Value::Null;
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(70000);
        assert_eq!(
            messages(&d),
            [
                "spec.template.spec.containers[0].image: Required value",
                "spec.template.spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"
            ]
        );
        let mut d = deployment();
        d["spec"]["replicas"] = json!("three");
        assert_eq!(messages(&d), ["json: cannot unmarshal string into Go struct field spec.replicas of type integer"]);
        let mut d = deployment();
        d["metadata"]["labels"]["helm.sh/chart"] = json!("c-1.0.0+build");
        assert_eq!(messages(&d).len(), 1);
        let mut d = deployment();
        d["spec"]["bogus"] = json!(1);
        let admitted = admit("apps", "Deployment", &schema(), &d, None).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(admitted.unknown_fields, ["spec.bogus"]);
    }
}
