//! The kinds the server serves: built-ins (Namespaces, Secrets, ConfigMaps, Events, Leases, CRDs)
//! and one entry per served version of every installed CRD.
//!
//! This is the only place that knows a kind's names, scope, printer columns and schema; it never
//! stores objects.

use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use crate::admission::CrdValidator;

/// Where a kind's objects live: two kinds may share a storage (core and events.k8s.io Events).
pub type StorageKey = (String, String);

/// One column of `kubectl get` output.
#[derive(Debug, Clone)]
pub struct PrinterColumn {
    /// Header.
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    /// Column format (`name` for the Name column).
    pub format: String,
    /// Description shown by `kubectl explain`-like tools.
    pub description: String,
    /// 0 = always shown, >0 only with `-o wide`.
    pub priority: i64,
    /// JSONPath into the object.
    pub json_path: String,
    /// How the cell is computed.
    pub cell: Cell,
}

/// How a Table cell is computed: a CRD's JSONPath, or one of kube-apiserver's printers of
/// built-in kinds (`pkg/printers/internalversion`), which render ages and counts themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// The value at the column's JSONPath.
    JsonPath,
    /// The string at the column's JSONPath, `""` when there is none (a built-in printer's
    /// string field).
    Text,
    /// `metadata.name` (a printer that does not start with it, as Events' does, lists it).
    Name,
    /// The age of `metadata.creationTimestamp` as text (`translateTimestampSince`).
    Age,
    /// How many entries `data` and `binaryData` hold.
    DataCount,
    /// An Event's last occurrence as an age.
    EventLastSeen,
    /// An Event's first occurrence as an age.
    EventFirstSeen,
    /// `kind/name` of the Event's object (kind in lower case).
    EventObject,
    /// `involvedObject.fieldPath`.
    EventSubobject,
    /// The reporting component (and instance).
    EventSource,
    /// The message, trimmed.
    EventMessage,
    /// How many times it happened.
    EventCount,
}

/// `metav1.ObjectMeta`'s documentation of `name` (the Name column's description).
pub const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

/// `metav1.ObjectMeta`'s documentation of `creationTimestamp` (the Age column's description).
pub const CREATION_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

impl PrinterColumn {
    fn new(name: &str, type_: &str, json_path: &str) -> Self {
        Self {
            name: name.into(),
            type_: type_.into(),
            format: String::new(),
            description: String::new(),
            priority: 0,
            json_path: json_path.into(),
            cell: Cell::JsonPath,
        }
    }

    /// A column of a built-in printer: type string (as kube-apiserver declares even its
    /// counts), its description, its cell.
    /// The same column reading the string at `json_path`.
    fn at(self, json_path: &str) -> Self {
        Self { json_path: json_path.into(), cell: Cell::Text, ..self }
    }

    fn printed(name: &str, description: &str, priority: i64, cell: Cell) -> Self {
        Self {
            name: name.into(),
            type_: "string".into(),
            format: if cell == Cell::Name { "name".into() } else { String::new() },
            description: description.into(),
            priority,
            json_path: String::new(),
            cell,
        }
    }
}

/// Special behaviours of built-in kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// Nothing special.
    None,
    /// Namespaces: deleting one deletes its content.
    Namespace,
    /// events.k8s.io/v1 Events, stored as core/v1 Events.
    EventsV1,
    /// CustomResourceDefinitions: writing one (re)registers the kind it defines.
    Crd,
}

/// One served group/version/kind.
pub struct ResourceType {
    /// API group (`""` for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Plural resource name.
    pub plural: String,
    /// Singular resource name.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// `kubectl` short names.
    pub short_names: Vec<String>,
    /// Categories (`kubectl get crabglamp`).
    pub categories: Vec<String>,
    /// Whether `status` is a subresource.
    pub status_subresource: bool,
    /// Columns of Table output, after the Name column.
    pub columns: Vec<PrinterColumn>,
    /// The OpenAPI v3 schema of the kind: the CRD's, or the built-in's from [`super::schema`].
    pub schema: Option<Arc<Value>>,
    /// The schema field ownership and strategic merge read: [`Self::schema`] with a typed
    /// `metadata` (CRD schemas leave it open), or an open schema for kinds without one.
    pub merge_schema: Arc<Value>,
    /// Whether `metadata.generation` counts spec changes (custom resources, CRDs, workloads).
    pub generation: bool,
    /// Admission for custom resources.
    pub validator: Option<Arc<CrdValidator>>,
    /// Field selectors a CRD declares (`selectableFields`), as paths without the leading dot.
    pub selectable_fields: Vec<String>,
    /// Where objects are stored.
    pub storage: StorageKey,
    /// Built-in behaviour.
    pub special: Special,
}

impl ResourceType {
    /// `G/V`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The structs (dotted paths) the kind's Go type always carries, empty or not: they never
    /// count as added by a write ([`super::fields::record_update`]). None for custom resources,
    /// whose objects have only what was written.
    pub fn zero_value_structs(&self) -> &'static [&'static str] {
        if self.is_custom() {
            return &[];
        }
        match (self.group.as_str(), self.kind.as_str()) {
            ("", "Event") => &["involvedObject", "source"],
            ("events.k8s.io", "Event") => &["regarding", "deprecatedSource"],
            ("apps", "Deployment") => {
                &["spec", "status", "spec.template", "spec.template.metadata", "spec.template.spec", "spec.strategy"]
            }
            ("", "Service") => &["spec", "status", "status.loadBalancer"],
            ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                &["spec", "status", "spec.names", "status.acceptedNames"]
            }
            ("networking.k8s.io", "NetworkPolicy") => &["spec", "spec.podSelector"],
            ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => &["roleRef"],
            _ => &["spec", "status"],
        }
    }

    /// Whether this is a custom resource (admission, no strategic merge).
    pub fn is_custom(&self) -> bool {
        self.validator.is_some()
    }

    /// Whether writes to this kind go through [`crate::admission::builtin`].
    pub fn builtin_admission(&self) -> bool {
        let core_payload = self.group.is_empty() && matches!(self.kind.as_str(), "Secret" | "ConfigMap" | "Namespace");
        !self.is_custom() && (core_payload || crate::admission::builtin::validates(&self.group, &self.kind))
    }

    #[allow(clippy::too_many_arguments)]
    fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        short_names: &[&str],
        columns: Vec<PrinterColumn>,
        special: Special,
    ) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            namespaced,
            short_names: short_names.iter().map(|s| (*s).to_owned()).collect(),
            categories: Vec::new(),
            status_subresource: matches!(special, Special::Namespace | Special::Crd)
                || matches!(kind, "Deployment" | "Service" | "PodDisruptionBudget"),
            columns,
            merge_schema: super::schema::builtin(group, kind)
                .or_else(|| super::schema::merge_only(group, kind))
                .unwrap_or_else(|| Arc::new(with_typed_meta(None))),
            schema: super::schema::builtin(group, kind),
            generation: special == Special::Crd
                || matches!(kind, "Deployment" | "PodDisruptionBudget" | "NetworkPolicy"),
            validator: None,
            selectable_fields: Vec::new(),
            storage: (if special == Special::EventsV1 { String::new() } else { group.into() }, plural.into()),
            special,
        }
    }
}

/// The Age column of built-in printers: the server renders the age.
fn age() -> PrinterColumn {
    PrinterColumn::printed("Age", CREATION_DESCRIPTION, 0, Cell::Age)
}

/// The Age column kube-apiserver gives a CRD version without printer columns.
fn crd_age() -> PrinterColumn {
    PrinterColumn {
        description: CREATION_DESCRIPTION.into(),
        ..PrinterColumn::new("Age", "date", ".metadata.creationTimestamp")
    }
}

/// The columns of kube-apiserver's Event printer (core/v1 and events.k8s.io/v1 alike).
fn event_columns() -> Vec<PrinterColumn> {
    vec![
        PrinterColumn::printed("Last Seen", "The time at which the most recent occurrence of this event was recorded.", 0, Cell::EventLastSeen),
        PrinterColumn::printed("Type", "Type of this event (Normal, Warning), new types could be added in the future", 0, Cell::Text).at(".type"),
        PrinterColumn::printed("Reason", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.", 0, Cell::Text).at(".reason"),
        PrinterColumn::printed("Object", "The object that this event is about.", 0, Cell::EventObject),
        PrinterColumn::printed("Subobject", "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]. For example, if the object reference is to a container within a pod, this would take on a value like: \"spec.containers{name}\" (where \"name\" refers to the name of the container that triggered the event) or if no container name is specified \"spec.containers[2]\" (container with index 2 in this pod). This syntax is chosen only to have some well-defined way of referencing a part of an object.", 1, Cell::EventSubobject),
        PrinterColumn::printed("Source", "The component reporting this event. Should be a short machine understandable string.", 1, Cell::EventSource),
        PrinterColumn::printed("Message", "A human-readable description of the status of this operation.", 0, Cell::EventMessage),
        PrinterColumn::printed("First Seen", "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)", 1, Cell::EventFirstSeen),
        PrinterColumn::printed("Count", "The number of times this event has occurred.", 1, Cell::EventCount),
        PrinterColumn::printed("Name", NAME_DESCRIPTION, 1, Cell::Name),
    ]
}

/// The built-in kinds.
pub fn builtins() -> Vec<ResourceType> {
    vec![
        ResourceType::builtin(
            "",
            "v1",
            "Namespace",
            "namespaces",
            false,
            &["ns"],
            vec![PrinterColumn::printed("Status", "The status of the namespace", 0, Cell::Text).at(".status.phase"), age()],
            Special::Namespace,
        ),
        ResourceType::builtin(
            "",
            "v1",
            "Secret",
            "secrets",
            true,
            &[],
            vec![
                PrinterColumn::printed(
                    "Type",
                    "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types",
                    0,
                    Cell::Text,
                )
                .at(".type"),
                PrinterColumn::printed(
                    "Data",
                    "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4",
                    0,
                    Cell::DataCount,
                ),
                age(),
            ],
            Special::None,
        ),
        ResourceType::builtin(
            "",
            "v1",
            "ConfigMap",
            "configmaps",
            true,
            &["cm"],
            vec![
                PrinterColumn::printed(
                    "Data",
                    "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process.",
                    0,
                    Cell::DataCount,
                ),
                age(),
            ],
            Special::None,
        ),
        ResourceType::builtin("", "v1", "Event", "events", true, &["ev"], event_columns(), Special::None),
        ResourceType::builtin(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            true,
            &["ev"],
            event_columns(),
            Special::EventsV1,
        ),
        ResourceType::builtin(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
            &[],
            vec![
                PrinterColumn::printed(
                    "Holder",
                    "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name field.",
                    0,
                    Cell::Text,
                )
                .at(".spec.holderIdentity"),
                age(),
            ],
            Special::None,
        ),
        ResourceType::builtin("", "v1", "ServiceAccount", "serviceaccounts", true, &["sa"], vec![age()], Special::None),
        ResourceType::builtin(
            "",
            "v1",
            "Service",
            "services",
            true,
            &["svc"],
            vec![
                PrinterColumn::new("Type", "string", ".spec.type"),
                PrinterColumn::new("Cluster-IP", "string", ".spec.clusterIP"),
                age(),
            ],
            Special::None,
        ),
        ResourceType::builtin(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            true,
            &["deploy"],
            vec![
                PrinterColumn::new("Up-to-date", "integer", ".status.updatedReplicas"),
                PrinterColumn::new("Available", "integer", ".status.availableReplicas"),
                age(),
            ],
            Special::None,
        ),
        ResourceType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            true,
            &[],
            vec![age()],
            Special::None,
        ),
        ResourceType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
            &[],
            vec![PrinterColumn::new("Role", "string", ".roleRef.name"), age()],
            Special::None,
        ),
        ResourceType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
            &[],
            vec![age()],
            Special::None,
        ),
        ResourceType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
            &[],
            vec![PrinterColumn::new("Role", "string", ".roleRef.name"), age()],
            Special::None,
        ),
        ResourceType::builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
            &["pdb"],
            vec![
                PrinterColumn::new("Min Available", "string", ".spec.minAvailable"),
                PrinterColumn::new("Max Unavailable", "string", ".spec.maxUnavailable"),
                age(),
            ],
            Special::None,
        ),
        ResourceType::builtin(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
            &["netpol"],
            vec![PrinterColumn::new("Pod-Selector", "string", ".spec.podSelector.matchLabels"), age()],
            Special::None,
        ),
        ResourceType::builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
            vec![PrinterColumn::new("Created At", "string", ".metadata.creationTimestamp")],
            Special::Crd,
        ),
    ]
}

/// `schema` (or an open one) whose `metadata` is ObjectMeta's schema, so list semantics of
/// finalizers and ownerReferences hold for every kind.
fn with_typed_meta(schema: Option<&Value>) -> Value {
    let mut s = schema
        .cloned()
        .unwrap_or_else(|| serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    if let Some(m) = s.as_object_mut() {
        let props = m.entry("properties").or_insert_with(|| serde_json::json!({}));
        if let Some(p) = props.as_object_mut() {
            p.insert("metadata".into(), super::schema::object_meta().clone());
        }
    }
    s
}

/// Why a CRD cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// The object is not a valid CustomResourceDefinition.
    #[error("{0}")]
    Decode(#[from] serde_json::Error),
    /// Its schema or rules are unusable.
    #[error("{0}")]
    Schema(#[from] crate::admission::CrdSchemaError),
}

/// One [`ResourceType`] per served version of `crd`.
pub fn from_crd(crd_json: &Value) -> Result<Vec<ResourceType>, CrdError> {
    let crd: CustomResourceDefinition = serde_json::from_value(crd_json.clone())?;
    let validator = Arc::new(CrdValidator::new(&crd)?);
    let names = &crd.spec.names;
    let plural = names.plural.clone();
    let singular = names.singular.clone().unwrap_or_else(|| names.kind.to_lowercase());
    let mut out = Vec::new();
    for version in crd.spec.versions.iter().filter(|v| v.served) {
        let mut columns: Vec<PrinterColumn> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| PrinterColumn {
                name: c.name.clone(),
                type_: c.type_.clone(),
                format: c.format.clone().unwrap_or_default(),
                // kube-apiserver's default description of a column without one.
                description: c.description.clone().unwrap_or_else(|| {
                    format!("Custom resource definition column (in JSONPath format): {}", c.json_path)
                }),
                priority: i64::from(c.priority.unwrap_or(0)),
                json_path: c.json_path.clone(),
                cell: Cell::JsonPath,
            })
            .collect();
        if columns.is_empty() {
            columns.push(crd_age());
        }
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .map(Arc::new);
        let merge_schema = Arc::new(with_typed_meta(schema.as_deref()));
        out.push(ResourceType {
            group: crd.spec.group.clone(),
            version: version.name.clone(),
            kind: names.kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced: crd.spec.scope == "Namespaced",
            short_names: names.short_names.clone().unwrap_or_default(),
            categories: names.categories.clone().unwrap_or_default(),
            status_subresource: version.subresources.as_ref().is_some_and(|s| s.status.is_some()),
            columns,
            schema,
            merge_schema,
            generation: true,
            validator: Some(validator.clone()),
            selectable_fields: version
                .selectable_fields
                .iter()
                .flatten()
                .map(|f| f.json_path.trim_start_matches('.').to_owned())
                .collect(),
            storage: (crd.spec.group.clone(), plural.clone()),
            special: Special::None,
        });
    }
    Ok(out)
}
