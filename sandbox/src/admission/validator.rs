//! Admission of custom resources against one CRD: its served versions' schemas and rules,
//! compiled once, then prune, default, structural checks and CEL rules for every object.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use super::cause::{Cause, CauseReason};
use super::cel::{self, VersionSchema};
use super::cost;
use super::schema_error::CrdSchemaError;
use super::structural;

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
        causes.extend(cel::check(&self.cel, &self.group, &self.kind, vs, &object, old.as_ref()));
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
