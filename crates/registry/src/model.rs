//! The Cloud Map (`servicediscovery` 2017-03-14) API model: the botocore
//! JSON shipped with this crate, loaded once by `weft-model`'s engine (the
//! one the App Mesh API uses) and checked against on every request: required
//! members, lengths, ranges, enums, patterns (look-ahead included), list and
//! map sizes. What is Cloud Map's own is here: the model, the operations
//! served and the rules (the model's constraints alone); the
//! `1 validation error detected: ` form of its `InvalidInput` message is in
//! [`crate::error`].

use std::sync::LazyLock;

use serde_json::Value;
use weft_model::{Rules, Schema, ValidationError};

/// The model file, compiled in.
pub const MODEL_JSON: &str = include_str!("../servicediscovery-2017-03-14.service.json");

/// The operations Weft serves: every operation of the model.
pub const OPERATIONS: &[&str] = &[
    "CreateHttpNamespace",
    "CreatePrivateDnsNamespace",
    "CreatePublicDnsNamespace",
    "UpdateHttpNamespace",
    "UpdatePrivateDnsNamespace",
    "UpdatePublicDnsNamespace",
    "ListNamespaces",
    "GetNamespace",
    "DeleteNamespace",
    "CreateService",
    "UpdateService",
    "ListServices",
    "GetService",
    "DeleteService",
    "GetServiceAttributes",
    "UpdateServiceAttributes",
    "DeleteServiceAttributes",
    "RegisterInstance",
    "DeregisterInstance",
    "ListInstances",
    "GetInstance",
    "GetInstancesHealthStatus",
    "DiscoverInstances",
    "DiscoverInstancesRevision",
    "UpdateInstanceCustomHealthStatus",
    "GetOperation",
    "ListOperations",
    "TagResource",
    "UntagResource",
    "ListTagsForResource",
];

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    // Compiled in and loaded by the unit tests: a failure is a build defect.
    #[allow(clippy::expect_used)]
    Schema::parse(MODEL_JSON, Rules::MODEL_ONLY).expect("the Cloud Map model loads")
});

/// The Cloud Map model, parsed once.
pub fn schema() -> &'static Schema {
    &SCHEMA
}

/// Validates the input of `operation` (a JSON object keyed by member name).
pub fn validate_input(operation: &str, input: &Value) -> Result<(), ValidationError> {
    schema().validate_input(operation, input)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use weft_model::ShapeKind;

    #[test]
    fn every_served_operation_is_in_the_model_with_known_shapes() {
        let s = schema();
        assert_eq!(
            s.target_prefix.as_deref(),
            Some("Route53AutoNaming_v20170314")
        );
        for op in OPERATIONS {
            let o = &s.operations[*op];
            assert!(s.shape(&o.input).is_some(), "{op}");
            // UpdateInstanceCustomHealthStatus answers nothing.
            assert!(o.output.is_empty() || s.shape(&o.output).is_some(), "{op}");
        }
    }

    #[test]
    fn every_operation_of_the_model_is_served() {
        let mut model: Vec<&str> = schema().operations.keys().map(String::as_str).collect();
        let mut served = OPERATIONS.to_vec();
        model.sort_unstable();
        served.sort_unstable();
        assert_eq!(model, served);
    }

    #[test]
    fn every_pattern_in_the_model_compiles() {
        let model: Value = serde_json::from_str(MODEL_JSON).unwrap_or_default();
        let mut n = 0;
        for (name, raw) in model["shapes"].as_object().into_iter().flatten() {
            if raw.get("pattern").is_some() {
                n += 1;
                match schema().shape(name).map(|s| &s.kind) {
                    Some(ShapeKind::String { pattern, .. }) => assert!(pattern.is_some(), "{name}"),
                    _ => panic!("{name} is not a string"),
                }
            }
        }
        assert!(n >= 5);
    }

    #[test]
    fn look_ahead_patterns_are_enforced() {
        // NamespaceNameHttp refuses ARNs; ServiceName caps the length at 127.
        let ok = json!({"Name": "apps.local"});
        assert!(validate_input("CreateHttpNamespace", &ok).is_ok());
        let arn = json!({"Name": "arn:aws:x"});
        let e = validate_input("CreateHttpNamespace", &arn).unwrap_err();
        assert_eq!(e.field, "Name");
        let long = json!({"Name": "a".repeat(128), "NamespaceId": "ns-1"});
        assert!(validate_input("CreateService", &long).is_err());
        let fine = json!({"Name": "a".repeat(61), "NamespaceId": "ns-1"});
        assert!(validate_input("CreateService", &fine).is_ok());
    }

    #[test]
    fn map_keys_and_values_are_checked() {
        let bad = json!({"ServiceId": "srv-1", "InstanceId": "i-1",
                         "Attributes": {"k": "bad\nvalue"}});
        let e = validate_input("RegisterInstance", &bad).unwrap_err();
        assert_eq!(e.field, "Attributes.k");
        let missing = json!({"ServiceId": "srv-1", "InstanceId": "i-1"});
        let e = validate_input("RegisterInstance", &missing).unwrap_err();
        assert_eq!(e.field, "Attributes");
    }

    #[test]
    fn ranges_and_enums_are_checked() {
        let e = validate_input("ListNamespaces", &json!({"MaxResults": 0})).unwrap_err();
        assert_eq!(e.field, "MaxResults");
        let e = validate_input(
            "DiscoverInstances",
            &json!({"NamespaceName": "n", "ServiceName": "s", "HealthStatus": "MAYBE"}),
        )
        .unwrap_err();
        assert_eq!(e.field, "HealthStatus");
    }
}
