//! The Cloud Map (`servicediscovery` 2017-03-14) API model, loaded at run time
//! from the botocore JSON shipped with this crate, and a validator that checks
//! a request against every constraint the model declares for it: required
//! members, lengths, ranges, enums, patterns, list and map sizes.
//!
//! This is the same approach as `weft_model::validate` for App Mesh, kept here
//! because the Cloud Map model uses what the App Mesh one does not (`map`
//! shapes, and patterns with look-around that the `regex` crate refuses), and
//! `weft-model`'s schema is App Mesh's alone.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::Value;

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

/// What kind of value a shape describes, with its constraints.
#[derive(Debug)]
pub enum ShapeKind {
    Structure {
        /// Member name to target shape name.
        members: BTreeMap<String, String>,
        required: Vec<String>,
    },
    List {
        member: String,
        min: Option<i64>,
        max: Option<i64>,
    },
    Map {
        key: String,
        value: String,
        min: Option<i64>,
        max: Option<i64>,
    },
    String {
        min: Option<i64>,
        max: Option<i64>,
        enum_values: Option<Vec<String>>,
        pattern: Option<fancy_regex::Regex>,
    },
    Integer {
        min: Option<i64>,
        max: Option<i64>,
        long: bool,
    },
    Boolean,
    Timestamp,
    /// A type no Cloud Map input uses (`blob`, `double`, …): accepted as is.
    Other,
}

/// One operation: its input and output shape names.
#[derive(Debug)]
pub struct Operation {
    pub input: String,
    /// `None` for operations with an empty answer (UpdateInstanceCustomHealthStatus).
    pub output: Option<String>,
}

/// The parsed model.
#[derive(Debug)]
pub struct Schema {
    pub shapes: BTreeMap<String, ShapeKind>,
    pub operations: BTreeMap<String, Operation>,
    /// `targetPrefix` of the json 1.1 binding (`Route53AutoNaming_v20170314`),
    /// which is also the service shape name in rpc-v2-cbor paths.
    pub target_prefix: String,
}

impl Schema {
    /// Looks up a shape.
    pub fn shape(&self, name: &str) -> Option<&ShapeKind> {
        self.shapes.get(name)
    }
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| parse(MODEL_JSON));

/// The Cloud Map model, parsed once.
pub fn schema() -> &'static Schema {
    &SCHEMA
}

fn num(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

fn parse(text: &str) -> Schema {
    // Compiled in and parsed by a unit test: a failure is a build defect.
    let model: Value = serde_json::from_str(text).unwrap_or_default();
    let mut shapes = BTreeMap::new();
    for (name, s) in model["shapes"].as_object().into_iter().flatten() {
        let kind = match s["type"].as_str().unwrap_or("") {
            "structure" => ShapeKind::Structure {
                members: s["members"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(m, v)| (m.clone(), v["shape"].as_str().unwrap_or("").to_string()))
                    .collect(),
                required: s["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str().map(String::from))
                    .collect(),
            },
            "list" => ShapeKind::List {
                member: s["member"]["shape"].as_str().unwrap_or("").to_string(),
                min: num(s, "min"),
                max: num(s, "max"),
            },
            "map" => ShapeKind::Map {
                key: s["key"]["shape"].as_str().unwrap_or("").to_string(),
                value: s["value"]["shape"].as_str().unwrap_or("").to_string(),
                min: num(s, "min"),
                max: num(s, "max"),
            },
            "string" => ShapeKind::String {
                min: num(s, "min"),
                max: num(s, "max"),
                enum_values: s["enum"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                }),
                // Two patterns use look-ahead (`(?!arn:)`, `(?=^.{1,127}$)`),
                // hence fancy-regex; a unit test compiles every pattern.
                pattern: s["pattern"]
                    .as_str()
                    .and_then(|p| fancy_regex::Regex::new(p).ok()),
            },
            "integer" | "long" => ShapeKind::Integer {
                min: num(s, "min"),
                max: num(s, "max"),
                long: s["type"] == "long",
            },
            "boolean" => ShapeKind::Boolean,
            "timestamp" => ShapeKind::Timestamp,
            _ => ShapeKind::Other,
        };
        shapes.insert(name.clone(), kind);
    }
    let mut operations = BTreeMap::new();
    for (name, o) in model["operations"].as_object().into_iter().flatten() {
        operations.insert(
            name.clone(),
            Operation {
                input: o["input"]["shape"].as_str().unwrap_or("").to_string(),
                output: o["output"]["shape"].as_str().map(String::from),
            },
        );
    }
    Schema {
        shapes,
        operations,
        target_prefix: model["metadata"]["targetPrefix"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    }
}

/// A request that breaks a constraint of the model; Cloud Map answers it with
/// `InvalidInput`, naming the member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Path of the offending member, e.g. `Attributes.AWS_INSTANCE_PORT`.
    pub field: String,
    /// What the member must satisfy.
    pub constraint: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "1 validation error detected: Value at '{}' failed to satisfy constraint: {}",
            self.field, self.constraint
        )
    }
}

fn violation(path: &str, constraint: impl Into<String>) -> Violation {
    Violation {
        field: if path.is_empty() {
            "(request)".into()
        } else {
            path.to_string()
        },
        constraint: constraint.into(),
    }
}

fn join(path: &str, member: &str) -> String {
    if path.is_empty() {
        member.to_string()
    } else {
        format!("{path}.{member}")
    }
}

fn check_len(path: &str, n: i64, min: Option<i64>, max: Option<i64>) -> Result<(), Violation> {
    if let Some(min) = min.filter(|m| n < *m) {
        return Err(violation(
            path,
            format!("Member must have length greater than or equal to {min}"),
        ));
    }
    if let Some(max) = max.filter(|m| n > *m) {
        return Err(violation(
            path,
            format!("Member must have length less than or equal to {max}"),
        ));
    }
    Ok(())
}

/// Validates the input of `operation` (a JSON object keyed by member name).
pub fn validate_input(operation: &str, input: &Value) -> Result<(), Violation> {
    let op = schema()
        .operations
        .get(operation)
        .ok_or_else(|| violation("", format!("unknown operation {operation}")))?;
    validate_shape(&op.input, input, "")
}

/// Validates `value` against the named shape; `path` names it in errors.
pub fn validate_shape(shape: &str, value: &Value, path: &str) -> Result<(), Violation> {
    let Some(kind) = schema().shape(shape) else {
        return Err(violation(path, format!("unknown shape {shape}")));
    };
    match kind {
        ShapeKind::Structure { members, required } => {
            let Some(obj) = value.as_object() else {
                return Err(violation(path, "Member must be a structure"));
            };
            for r in required {
                if obj.get(r).is_none_or(Value::is_null) {
                    return Err(violation(&join(path, r), "Member must not be null"));
                }
            }
            for (name, target) in members {
                if let Some(v) = obj.get(name).filter(|v| !v.is_null()) {
                    validate_shape(target, v, &join(path, name))?;
                }
            }
            Ok(())
        }
        ShapeKind::List { member, min, max } => {
            let Some(items) = value.as_array() else {
                return Err(violation(path, "Member must be a list"));
            };
            check_len(path, items.len() as i64, *min, *max)?;
            for (i, item) in items.iter().enumerate() {
                validate_shape(member, item, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        ShapeKind::Map {
            key,
            value: target,
            min,
            max,
        } => {
            let Some(entries) = value.as_object() else {
                return Err(violation(path, "Member must be a map"));
            };
            check_len(path, entries.len() as i64, *min, *max)?;
            for (k, v) in entries {
                let p = join(path, k);
                validate_shape(key, &Value::String(k.clone()), &p)?;
                validate_shape(target, v, &p)?;
            }
            Ok(())
        }
        ShapeKind::String {
            min,
            max,
            enum_values,
            pattern,
        } => {
            let Some(text) = value.as_str() else {
                return Err(violation(path, "Member must be a string"));
            };
            // The model's lengths count characters, not bytes.
            check_len(path, text.chars().count() as i64, *min, *max)?;
            if let Some(values) = enum_values {
                if !values.iter().any(|v| v == text) {
                    return Err(violation(
                        path,
                        format!(
                            "Member must satisfy enum value set: [{}]",
                            values.join(", ")
                        ),
                    ));
                }
            }
            if let Some(re) = pattern {
                // A pattern that backtracks past fancy-regex's limit is
                // treated as a mismatch: the input is refused, not crashed on.
                if !re.is_match(text).unwrap_or(false) {
                    return Err(violation(
                        path,
                        format!(
                            "Member must satisfy regular expression pattern: {}",
                            re.as_str()
                        ),
                    ));
                }
            }
            Ok(())
        }
        ShapeKind::Integer { min, max, long } => {
            let Some(n) = value.as_i64() else {
                return Err(violation(path, "Member must be an integer"));
            };
            if !long && i32::try_from(n).is_err() {
                return Err(violation(path, "Member must fit in a 32-bit integer"));
            }
            if let Some(min) = min.filter(|m| n < *m) {
                return Err(violation(
                    path,
                    format!("Member must have value greater than or equal to {min}"),
                ));
            }
            if let Some(max) = max.filter(|m| n > *m) {
                return Err(violation(
                    path,
                    format!("Member must have value less than or equal to {max}"),
                ));
            }
            Ok(())
        }
        ShapeKind::Boolean => match value {
            Value::Bool(_) => Ok(()),
            _ => Err(violation(path, "Member must be a boolean")),
        },
        ShapeKind::Timestamp => match value {
            Value::Number(_) => Ok(()),
            _ => Err(violation(path, "Member must be a timestamp")),
        },
        ShapeKind::Other => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_served_operation_is_in_the_model_with_known_shapes() {
        let s = schema();
        assert_eq!(s.target_prefix, "Route53AutoNaming_v20170314");
        for op in OPERATIONS {
            let o = &s.operations[*op];
            assert!(s.shapes.contains_key(&o.input), "{op}");
            if let Some(out) = &o.output {
                assert!(s.shapes.contains_key(out), "{op}");
            }
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
                match &schema().shapes[name] {
                    ShapeKind::String { pattern, .. } => assert!(pattern.is_some(), "{name}"),
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
