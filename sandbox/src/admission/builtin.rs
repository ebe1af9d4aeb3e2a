//! Admission of the built-in kinds the sandbox stores (it never runs them: no pods, no
//! controllers): unknown fields found against the kind's schema (what a real server's strict
//! decoding refuses, and drops otherwise), JSON types (a decoding error on a real server), the
//! defaults clients read back, the schema's required fields and list keys, then the checks of
//! kube-apiserver's validation of each kind that charts most often trip over, with its wording.

use serde_json::Value;

use super::builtin_checks::Checks;
use super::builtin_defaults::defaults;
use super::cause::{Cause, CauseReason};
use super::names::{name_error, path_segment_error};
use super::structural;
use super::validator::Admitted;

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

#[cfg(test)]
mod tests {
    use serde_json::json;

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
