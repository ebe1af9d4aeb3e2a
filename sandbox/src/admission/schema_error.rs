//! Why a CRD cannot be used for admission, and the causes a refused CRD's Status carries.

use super::cause::{Cause, CauseReason};

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
    #[error("{}", render_causes(causes))]
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

/// The API server's rendering of a field error list (`ToAggregate().Error()`): one error alone,
/// several in brackets, duplicates once.
fn render_causes(causes: &[Cause]) -> String {
    let mut seen = Vec::new();
    for cause in causes.iter().map(Cause::to_string) {
        if !seen.contains(&cause) {
            seen.push(cause);
        }
    }
    match seen.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}
