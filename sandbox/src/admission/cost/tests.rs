//! The cost estimates against kube-apiserver's, on the test CRDs and hand-built schemas.

use super::*;
use crate::admission::validator::CrdValidator;

/// The test CRDs; `kubectl apply --server-side -f` them on a real API server to compare.
const TEST_CRDS: &str = include_str!("../../../tests/cel_cost_crds.yaml");

/// The largest unbounded string: what fits in a 3 MiB request, less its quotes.
const S: u64 = 3 * 1024 * 1024 - 2;

const HINT: &str = "(try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)";

fn crds_from_yaml(text: &str) -> Vec<CustomResourceDefinition> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("a CustomResourceDefinition"))
        .collect()
}

fn test_crd(name: &str) -> CustomResourceDefinition {
    crds_from_yaml(TEST_CRDS)
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no test CRD {name}"))
}

fn costs(crd: &CustomResourceDefinition) -> Vec<(String, u64, u64)> {
    rule_costs(crd).expect("costed").into_iter().map(|r| (r.field, r.per_call, r.total)).collect()
}

fn refusal(crd: &CustomResourceDefinition) -> String {
    match check(crd) {
        Err(e @ CrdSchemaError::RuleCost { .. }) => e.to_string(),
        other => panic!("expected a cost refusal, got {other:?}"),
    }
}

const TAGS_RULE: &str =
    "spec.validation.openAPIV3Schema.properties[spec].properties[tags].x-kubernetes-validations[0].rule";

#[test]
fn a_list_of_100_unbounded_strings_matched_by_a_regex_is_over_budget() {
    // `self.all(k, k.matches('^[a-z]+$'))` on `tags` (maxItems 100, items unbounded):
    //   k.matches: k 1 + ceil((S + 1) × 0.1) = 314,573 × ceil(8 chars × 0.25) = 2 → 629,147
    //   step `@result && …` 1 + 629,147, condition `@not_strictly_false(@result)` 2 → 629,150
    //   self 1 + init `true` 0 + result `@result` 1 + 100 × 629,150 = 62,915,002
    // cardinality 1 (only objects above) → 6.2915002 × the 10,000,000 budget.
    // kube-apiserver 1.37: the same 62,915,002 (cel.Compile's MaxCost) and message.
    assert_eq!(mul_factor(S + 1, STRING_TRAVERSAL), 314_573);
    let crd = test_crd("overbudgets.cost.example.com");
    assert_eq!(costs(&crd), vec![(TAGS_RULE.to_owned(), 62_915_002, 62_915_002)]);
    let expected = format!("{TAGS_RULE}: Forbidden: estimated rule cost exceeds budget by factor of 6.3x {HINT}");
    assert_eq!(refusal(&crd), expected);

    // Installing it fails the same way, with Forbidden causes for the Status.
    let err = CrdValidator::new(&crd).err().expect("refused");
    assert_eq!(err.to_string(), expected);
    let causes = err.causes();
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].reason, CauseReason::Forbidden);
    assert_eq!(causes[0].field, TAGS_RULE);
}

#[test]
fn the_same_list_with_max_length_is_accepted() {
    // items maxLength 64 → at most 256 bytes: k.matches = 1 + ceil(257 × 0.1) = 26 × 2 = 53,
    // per item 53 + 1 + 2 = 56, 2 + 100 × 56 = 5,602.
    let crd = test_crd("boundeds.cost.example.com");
    assert_eq!(costs(&crd), vec![(TAGS_RULE.to_owned(), 5_602, 5_602)]);
    check(&crd).expect("within budget");
    CrdValidator::new(&crd).expect("installable");
}

#[test]
fn a_factor_below_one_and_a_half_has_six_decimals() {
    // maxItems 16: 2 + 16 × 629,150 = 10,066,402 → 1.0066402 → "1.006640x".
    let crd = test_crd("shortlists.cost.example.com");
    assert_eq!(costs(&crd), vec![(TAGS_RULE.to_owned(), 10_066_402, 10_066_402)]);
    assert_eq!(
        refusal(&crd),
        format!("{TAGS_RULE}: Forbidden: estimated rule cost exceeds budget by factor of 1.006640x {HINT}")
    );
}

#[test]
fn a_rule_under_an_unbounded_list_counts_every_copy_that_fits_in_a_request() {
    // items: {name: maxLength 100, required} → smallest encoding {"name":""}: 2 + 4 + 2 + 4 = 12
    // bytes, so up to 3,145,728 / 13 = 241,979 items. Per item: self.name 2 + ceil(401 × 0.1)
    // = 41 × 2 = 84. 84 × 241,979 = 20,326,236 → "2.0x".
    let crd = test_crd("unboundedlists.cost.example.com");
    let field =
        "spec.validation.openAPIV3Schema.properties[spec].properties[entries].items.x-kubernetes-validations[0].rule";
    assert_eq!(costs(&crd), vec![(field.to_owned(), 84, 20_326_236)]);
    assert_eq!(
        refusal(&crd),
        format!("{field}: Forbidden: estimated rule cost exceeds budget by factor of 2.0x {HINT}")
    );
}

#[test]
fn a_schema_over_the_total_budget_names_its_four_most_expensive_rules() {
    // f19..f31: `self.matches('^aaa…$')` with a regex of 4R characters on an unbounded string:
    // 1 + 314,573 × R each (R = 31: 9,751,764, under the per-rule budget). The sum over
    // R = 19..31 is 13 + 314,573 × 325 = 102,236,238 → 1.02236238 × 100,000,000.
    let crd = test_crd("totals.cost.example.com");
    let rules = costs(&crd);
    assert_eq!(rules.len(), 13);
    for (field, per_call, _) in &rules {
        let r: u64 =
            field["spec.validation.openAPIV3Schema.properties[spec].properties[f".len()..][..2].parse().expect("R");
        assert_eq!(*per_call, 1 + 314_573 * r, "{field}");
    }
    assert_eq!(rules.iter().map(|r| r.2).sum::<u64>(), 102_236_238);
    let field = |r: u32| {
        format!("spec.validation.openAPIV3Schema.properties[spec].properties[f{r}].x-kubernetes-validations[0].rule")
    };
    let contributed =
        "Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema";
    let expected = format!(
        "[{}: {contributed}, {}: {contributed}, {}: {contributed}, {}: {contributed}, spec.validation.openAPIV3Schema: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of 1.022362x {HINT}]",
        field(31),
        field(30),
        field(29),
        field(28)
    );
    assert_eq!(refusal(&crd), expected);
}

#[test]
fn the_functions_our_crds_use_cost_as_upstream() {
    // The PlainVM firewall rules before they had bounds (strings unbounded: S = 3,145,726).
    let crd = test_crd("firewalls.cost.example.com");
    let prefix = "spec.validation.openAPIV3Schema";
    let inbound = format!("{prefix}.properties[spec].properties[inbound].items");
    assert_eq!(
        costs(&crd),
        vec![
            // port, per call:
            //   self == 'any': 1 + ceil(min(S, 3) × 0.1) = 2
            //   self.matches(26-char regex): 1 + 314,573 × ceil(6.5) = 2,202,012
            //   self.split('-'): 1 + ceil(S × 0.2) = 629,147, a list of up to S strings
            //   .all(p, int(p) >= 1 && int(p) <= 65535): per element (2 + 1) × 2 + 1 + 2 = 9:
            //     629,147 + 1 + 9 × S = 28,940,682
            //   self.split('-').size() == 1: 629,147 + 1 + ceil(0.1) = 629,149
            //   int(self.split('-')[0]) <= int(…[1]): 1 + 2 × (629,147 + 1 + 1) = 1,258,299
            //   2 + 2,202,012 + 28,940,682 + 629,149 + 1,258,299 = 33,030,144, × 50 items
            (format!("{inbound}.properties[port].x-kubernetes-validations[0].rule"), 33_030_144, 1_651_507_200),
            // sourceIPs: self.all(c, isCIDR(c)): isCIDR = ceil(S × 0.1) + c 1 = 314,574,
            //   2 + 100 × (314,574 + 1 + 2) = 31,457,702, × 50
            (format!("{inbound}.properties[sourceIPs].x-kubernetes-validations[0].rule"), 31_457_702, 1_572_885_100),
            // (self.protocol == 'tcp' || self.protocol == 'udp') == has(self.port):
            //   self.protocol 2 + ceil(min(4 ("icmp"), 3) × 0.1) = 3, twice; has() 1 (the test
            //   is free); bool == bool 1 → 8, × 50
            (format!("{inbound}.x-kubernetes-validations[0].rule"), 8, 400),
            // self.region == oldSelf.region: 2 + 2 + ceil(min(2, 2) × 0.1) = 5
            (format!("{prefix}.properties[spec].x-kubernetes-validations[0].rule"), 5, 5),
            // metadata.name (capped at 253 characters → 1,012 bytes):
            //   self.metadata.name 3, size() 4, <= 50 5; matches: 3 + ceil(1,013 × 0.1) = 102
            //   × ceil(31 × 0.25) = 8 → 819; 824
            (format!("{prefix}.x-kubernetes-validations[0].rule"), 824, 824),
        ]
    );
    let message = refusal(&crd);
    assert!(
        message.ends_with(&format!("{prefix}: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of 32.2x {HINT}]")),
        "{message}"
    );
    assert!(message.contains("items.properties[port].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x"));
}

#[test]
fn transition_rules_on_strings_and_lists_cost_what_cel_go_estimates() {
    // What the Agent and PlainVM specs hold immutable: `_==_` costs the shorter operand's
    // worst-case size × 0.1 (cel-go `checker/cost.go`, the same case as string compares),
    // plus 2 per side for `self.f` / `oldSelf.f`. A string's size is maxLength × 4 (bytes
    // per code point); a list's is its maxItems, whatever its items hold.
    let crd = crd_with_spec(serde_json::json!({"type": "object",
        "properties": {
            "serverType": {"type": "string", "maxLength": 16},
            "image": {"type": "string", "maxLength": 63},
            "sshKeys": {"type": "array", "maxItems": 20, "items": {"type": "string", "maxLength": 4096}}},
        "x-kubernetes-validations": [
            {"rule": "self.serverType == oldSelf.serverType"},
            {"rule": "self.image == oldSelf.image"},
            {"rule": "self.sshKeys == oldSelf.sshKeys"}]}));
    let rule =
        |i: usize| format!("spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[{i}].rule");
    assert_eq!(
        costs(&crd),
        vec![
            // 2 + 2 + ceil(64 × 0.1) = 11
            (rule(0), 11, 11),
            // 2 + 2 + ceil(252 × 0.1) = 30
            (rule(1), 30, 30),
            // 2 + 2 + ceil(20 × 0.1) = 6
            (rule(2), 6, 6),
        ]
    );
    assert!(check(&crd).is_ok());
}

#[test]
fn the_repository_crds_are_within_budget() {
    // The files in crds/ and what the sandbox installs (crabglamp_operator::api::all_crds).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("crds/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut crds: Vec<CustomResourceDefinition> =
        files.iter().flat_map(|f| crds_from_yaml(&std::fs::read_to_string(f).expect("readable"))).collect();
    assert!(!crds.is_empty());
    crds.extend(crabglamp_operator::api::all_crds());
    let mut refused = Vec::new();
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        for rule in rule_costs(crd).expect("costed") {
            println!("{name} {} per call {} × {:?} = {}", rule.field, rule.per_call, rule.cardinality, rule.total);
        }
        if let Err(e) = check(crd) {
            refused.push(format!("{name}: {e}"));
        }
    }
    assert!(refused.is_empty(), "refused by the cost check:\n{}", refused.join("\n"));
}

fn crd_with_spec(spec: Value) -> CustomResourceDefinition {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.com"},
        "spec": {"group": "example.com", "names": {"kind": "Thing", "plural": "things"}, "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object", "properties": {"spec": spec}}}}]}
    }))
    .expect("a CRD")
}

#[test]
fn what_the_estimator_cannot_cost_is_refused() {
    for (rule, why) in [
        ("self.l.reverse().size() > 0", "function 'reverse'"),
        ("cel.bind(x, self.l, x.size() > 0)", "function 'cel.bind'"),
        ("self.nope == 'a'", "undefined field 'nope'"),
    ] {
        let crd = crd_with_spec(serde_json::json!({"type": "object",
            "properties": {"l": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 3}}},
            "x-kubernetes-validations": [{"rule": rule}]}));
        match check(&crd) {
            Err(e @ CrdSchemaError::CostUnknown { .. }) => {
                assert!(e.to_string().contains(why), "{rule}: {e}");
                assert!(e.to_string().contains("x-kubernetes-validations[0].rule"), "{e}");
            }
            other => panic!("{rule}: expected CostUnknown, got {other:?}"),
        }
    }
}

#[test]
fn schemas_that_differ_between_versions_are_reported_per_version() {
    let spec = |max: u64| {
        serde_json::json!({"type": "object", "properties": {"tags": {"type": "array", "maxItems": max,
            "items": {"type": "string"}, "x-kubernetes-validations": [{"rule": "self.all(k, k.matches('^[a-z]+$'))"}]}}})
    };
    let mut crd = crd_with_spec(spec(100));
    let mut v2 = crd.spec.versions[0].clone();
    v2.name = "v2".into();
    v2.storage = false;
    crd.spec.versions.push(v2.clone());
    // Identical schemas: validated once, as spec.validation.
    assert!(refusal(&crd).starts_with("spec.validation.openAPIV3Schema.properties[spec]"));
    // Different ones: each version on its own; v1 (100 items) over budget, v2 (3) within.
    crd.spec.versions[1] = {
        let mut other = crd_with_spec(spec(3)).spec.versions.remove(0);
        other.name = "v2".into();
        other.storage = false;
        other
    };
    assert_eq!(
        refusal(&crd),
        format!(
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[tags].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of 6.3x {HINT}"
        )
    );
}

#[test]
fn message_expressions_are_costed_without_cardinality() {
    // The rule is cheap; its messageExpression lowers an unbounded string: ceil(S × 0.1) + 1.
    let crd = crd_with_spec(serde_json::json!({"type": "object", "properties": {
        "items": {"type": "array", "maxItems": 1000, "items": {"type": "object",
            "properties": {"s": {"type": "string"}},
            "x-kubernetes-validations": [{"rule": "has(self.s)", "messageExpression": "self.s.lowerAscii()"}]}}}}));
    let rules = rule_costs(&crd).expect("costed");
    assert_eq!(rules[1].per_call, 314_573 + 2);
    assert_eq!(rules[1].cardinality, None);
    assert_eq!(rules[1].total, 314_575);
    assert_eq!(rules[0].total, 1_000);
    check(&crd).expect("within budget");
}

#[test]
fn budget_messages_round_like_go() {
    let factor = |cost| {
        let m = budget_message("x", cost, STATIC_ESTIMATED_COST_LIMIT);
        m["x exceeds budget by factor of ".len()..m.find(" (try").expect("hint")].to_owned()
    };
    assert_eq!(factor(10_000_001), "1.000000x");
    assert_eq!(factor(14_999_999), "1.500000x");
    assert_eq!(factor(15_000_000), "1.5x");
    // An exact tie rounds to even, as Go's %.1f does.
    assert_eq!(factor(22_500_000), "2.2x");
    assert_eq!(factor(1_000_000_000), "100.0x");
    assert_eq!(factor(1_000_000_001), "more than 100x");
}

#[test]
fn property_names_escape_as_in_cel() {
    assert_eq!(escape("foo-bar.baz/q").as_deref(), Some("foo__dash__bar__dot__baz__slash__q"));
    assert_eq!(escape("a__b").as_deref(), Some("a__underscores__b"));
    assert_eq!(escape("namespace").as_deref(), Some("__namespace__"));
    assert_eq!(escape("1st"), None);
    assert_eq!(escape("a b"), None);
}

/// `COST_FILES=a.yaml:b.yaml cargo test … print_costs -- --ignored --nocapture`: every rule's
/// per-call cost, to diff against kube-apiserver's own estimator.
#[test]
#[ignore = "a debugging aid"]
fn print_costs() {
    for file in std::env::var("COST_FILES").unwrap_or_default().split(':').filter(|f| !f.is_empty()) {
        for crd in crds_from_yaml(&std::fs::read_to_string(file).expect("readable")) {
            println!("CRD {}", crd.metadata.name.clone().unwrap_or_default());
            for rule in rule_costs(&crd).expect("costed") {
                println!("COST {} maxCost={}", rule.field, rule.per_call);
            }
            println!("RESULT {:?}", check(&crd).err().map(|e| e.to_string()));
        }
    }
}
