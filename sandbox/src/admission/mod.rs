//! Admission of custom resources against their CRD, the way a Kubernetes API server does it:
//! prune unknown fields, apply schema defaults, check the structural schema, then evaluate every
//! `x-kubernetes-validations` rule (with `oldSelf` on updates) through `kube-cel`.
//!
//! The sandbox API server calls this on every create, update and patch of a custom resource, and
//! the tests call it on the manifests in `examples/`. Installing a CRD also estimates the cost of
//! its rules and refuses it over kube-apiserver's budget, as the API server does (`cost`). It
//! never talks to a cluster and never mutates anything but the object it returns.

pub mod builtin;
mod cause;
mod cel;
mod cost;
mod names;
mod structural;

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

pub use cause::{Cause, CauseReason, invalid_message};
pub use cost::{RuleCost, STATIC_ESTIMATED_COST_LIMIT, STATIC_ESTIMATED_CRD_COST_LIMIT, rule_costs};
pub use names::name_error;

/// Why a CRD cannot be used for admission.
#[derive(Debug, thiserror::Error)]
pub enum CrdSchemaError {
    /// A served version has no `schema.openAPIV3Schema`.
    #[error("CRD {crd}: version {version} has no openAPIV3Schema")]
    MissingSchema {
        /// The CRD's name.
        crd: String,
        /// The version without a schema.
        version: String,
    },
    /// The schema could not be turned into JSON.
    #[error("CRD {crd}: version {version} has a schema that cannot be serialised")]
    Serialise {
        /// The CRD's name.
        crd: String,
        /// The version whose schema failed.
        version: String,
        /// The serialiser's error.
        #[source]
        source: serde_json::Error,
    },
    /// An `x-kubernetes-validations` rule does not compile.
    #[error("CRD {crd}: version {version}: {details}")]
    InvalidRule {
        /// The CRD's name.
        crd: String,
        /// The version with the broken rule.
        version: String,
        /// The compiler's messages.
        details: String,
    },
    /// The estimated cost of `x-kubernetes-validations` rules exceeds kube-apiserver's budget
    /// (per rule, or for all rules of one schema). Displays as the API server's field errors,
    /// e.g. `spec.validation.openAPIV3Schema.properties[spec]…x-kubernetes-validations[0].rule:
    /// Forbidden: estimated rule cost exceeds budget by factor of 2.2x (try simplifying …)`.
    #[error("{}", cost::render_causes(causes))]
    RuleCost {
        /// The CRD's name.
        crd: String,
        /// One `Forbidden` cause per rule over budget, then those of the schema-wide check.
        causes: Vec<Cause>,
    },
    /// A rule uses CEL the sandbox's cost estimator does not cover; refused rather than admitted
    /// with a wrong estimate.
    #[error("CRD {crd}: {field}: the sandbox cannot estimate the cost of {rule:?}: {reason}")]
    CostUnknown {
        /// The CRD's name.
        crd: String,
        /// Field path of the rule.
        field: String,
        /// The expression.
        rule: String,
        /// What the estimator does not cover.
        reason: String,
    },
}

impl CrdSchemaError {
    /// The error as the causes of a `422 Invalid` Status on the CustomResourceDefinition, the way
    /// kube-apiserver reports it (field paths from `spec`).
    pub fn causes(&self) -> Vec<Cause> {
        match self {
            Self::RuleCost { causes, .. } => causes.clone(),
            Self::CostUnknown { field, rule, reason, .. } => vec![Cause::new(
                CauseReason::Invalid,
                field.clone(),
                format!("Invalid value: {rule:?}: the sandbox cannot estimate the cost of this rule: {reason}"),
            )],
            other => vec![Cause::new(CauseReason::Invalid, "spec", format!("Invalid value: \"object\": {other}"))],
        }
    }
}

/// The outcome of a successful admission.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    /// The object as it would be stored: pruned and defaulted.
    pub object: Value,
    /// Paths of fields that were pruned because the schema does not know them
    /// (what `fieldValidation=Strict` refuses and `Warn` reports).
    pub unknown_fields: Vec<String>,
}

/// The admission rules of one CRD, compiled once and reused for every object.
pub struct CrdValidator {
    group: String,
    kind: String,
    versions: BTreeMap<String, VersionSchema>,
    // Registering the CEL function library is costly; one evaluator serves every admission.
    cel: kube_cel::Validator,
}

struct VersionSchema {
    schema: Value,
    compiled: kube_cel::CompiledSchema,
}

impl CrdValidator {
    /// Compiles the schemas and CEL rules of every served version of `crd`.
    pub fn new(crd: &CustomResourceDefinition) -> Result<Self, CrdSchemaError> {
        let crd_name = crd.metadata.name.clone().unwrap_or_default();
        let mut versions = BTreeMap::new();
        for version in crd.spec.versions.iter().filter(|v| v.served) {
            let schema = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).ok_or_else(|| {
                CrdSchemaError::MissingSchema { crd: crd_name.clone(), version: version.name.clone() }
            })?;
            let schema = serde_json::to_value(schema).map_err(|source| CrdSchemaError::Serialise {
                crd: crd_name.clone(),
                version: version.name.clone(),
                source,
            })?;
            let compiled = kube_cel::compile_schema(&schema);
            if compiled.has_errors() {
                let details =
                    compiled.compilation_errors().iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
                return Err(CrdSchemaError::InvalidRule { crd: crd_name, version: version.name.clone(), details });
            }
            versions.insert(version.name.clone(), VersionSchema { schema, compiled });
        }
        // The API server refuses a CRD whose rules may cost too much to evaluate.
        cost::check(crd)?;
        Ok(Self {
            group: crd.spec.group.clone(),
            kind: crd.spec.names.kind.clone(),
            versions,
            cel: kube_cel::Validator::new(),
        })
    }

    /// The CRD's kind, e.g. `Agent`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Admits `new` (a create when `old` is `None`, else an update of `old`) at `version`.
    ///
    /// Returns the pruned and defaulted object, or every reason to refuse it, each naming
    /// the field, like the causes of a `422 Invalid` Status.
    pub fn admit(&self, version: &str, new: &Value, old: Option<&Value>) -> Result<Admitted, Vec<Cause>> {
        let Some(vs) = self.versions.get(version) else {
            return Err(vec![Cause::new(
                CauseReason::NotSupported,
                "apiVersion",
                format!(
                    "Unsupported value: \"{}/{version}\": version {version} of {} is not served",
                    self.group, self.kind
                ),
            )]);
        };
        let mut object = new.clone();
        let mut unknown_fields = Vec::new();
        structural::prune(&vs.schema, &mut object, "", true, &mut unknown_fields);
        let object = kube_cel::apply_defaults(&vs.schema, &object);

        // The old object went through admission when it was stored; defaulting it again only
        // matters for defaults added to the schema since, and matches the API server.
        let old = old.map(|o| {
            let mut o = o.clone();
            structural::prune(&vs.schema, &mut o, "", true, &mut Vec::new());
            kube_cel::apply_defaults(&vs.schema, &o)
        });

        let mut causes = structural::check(&vs.schema, &object, old.as_ref());
        causes.extend(cel::check(self, vs, &object, old.as_ref()));
        if causes.is_empty() { Ok(Admitted { object, unknown_fields }) } else { Err(causes) }
    }
}

/// One-shot form of [`CrdValidator::admit`] for callers that do not keep a validator: admits
/// `new` at its own `apiVersion`.
pub fn validate(crd: &CustomResourceDefinition, new: &Value, old: Option<&Value>) -> Result<Admitted, Vec<Cause>> {
    let validator = CrdValidator::new(crd)
        .map_err(|e| vec![Cause::new(CauseReason::Invalid, "", format!("Internal error: {e}"))])?;
    let version = new
        .get("apiVersion")
        .and_then(Value::as_str)
        .and_then(|av| av.rsplit_once('/').map(|(_, v)| v.to_owned()))
        .unwrap_or_default();
    validator.admit(&version, new, old)
}
