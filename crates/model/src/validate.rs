//! Checks a request against every constraint its service model declares:
//! required members, string lengths, integer ranges, list and map sizes, enum
//! values, patterns and unions (exactly one member set). The rules are read
//! from the model itself ([`crate::schema::Schema`]), so no shape can be left
//! unchecked. The engine serves any botocore model: App Mesh's here
//! ([`validate_input`]), Cloud Map's in `weft-registry`.
//!
//! Where an API needs more than its model says, a [`Rules`] value says so.
//! App Mesh's ([`APP_MESH`]) adds three rules of Weft's own, because the model
//! leaves them unsaid and a control plane others can reach must not accept
//! what they forbid:
//!
//! - every string the model leaves unbounded holds at most
//!   [`MAX_UNBOUNDED_CHARS`] characters (real specs hold hostnames, paths and
//!   prefixes of a few dozen), so that no single member can grow a stored
//!   record or the Envoy config made from it without bound;
//! - resource and service names ([`NAME_SHAPES`]) may not contain `/` or a
//!   control character: a name becomes a segment of an ARN, of a store key and
//!   of Envoy resource names, and `/` would let mesh `x/virtualNode/y` share
//!   the ARN of virtual node `y` in mesh `x`;
//! - a `clientToken` is what its documentation says: "Up to 36 letters,
//!   numbers, hyphens, and underscores" (the SDKs send a UUID, 36 characters).

use serde_json::Value;

use crate::schema::{schema, Schema, Shape, ShapeKind};

/// A request that breaks a constraint of the model; the message names the
/// offending field. App Mesh answers it with `BadRequestException` and this
/// message; Cloud Map with `InvalidInput`, in its own words around it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Value at '{field}' failed to satisfy constraint: {constraint}")]
pub struct ValidationError {
    /// Path of the offending member, e.g. `spec.listeners[0].portMapping.port`.
    pub field: String,
    /// What the member must satisfy.
    pub constraint: String,
}

/// The most characters a string member may hold when the model sets no
/// maximum (`hostname`, `prefix`, `path`, `exact`, `serviceName`, ARNs, …).
pub const MAX_UNBOUNDED_CHARS: i64 = 4096;

/// The shapes of resource names (`meshName`, `virtualNodeName`, …) and of
/// virtual service names: neither `/` nor a control character is allowed.
pub const NAME_SHAPES: &[&str] = &["ResourceName", "ServiceName"];

/// The longest `clientToken` the model's documentation allows.
pub const MAX_CLIENT_TOKEN_CHARS: usize = 36;

/// What an API holds requests to beyond its model's constraints: each field
/// is one of Weft's own rules, off in [`Rules::MODEL_ONLY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// The most characters a string may hold when the model sets neither a
    /// maximum nor an enum; `None`: as many as the model allows.
    pub max_unbounded_chars: Option<i64>,
    /// String shapes that name resources, in which neither `/` nor a control
    /// character is allowed.
    pub name_shapes: &'static [&'static str],
    /// Idempotency tokens hold at most this many letters, numbers, hyphens
    /// and underscores; `None`: only the model's constraints apply.
    pub max_client_token_chars: Option<usize>,
    /// The constraint reported for a structure given something other than
    /// a JSON object.
    pub not_a_structure: &'static str,
}

impl Rules {
    /// The model's constraints and nothing else.
    pub const MODEL_ONLY: Rules = Rules {
        max_unbounded_chars: None,
        name_shapes: &[],
        max_client_token_chars: None,
        not_a_structure: "Member must be a structure",
    };
}

/// App Mesh's rules: the three of Weft's own this module's documentation
/// lists, and App Mesh's wording for a structure that is not an object.
pub const APP_MESH: Rules = Rules {
    max_unbounded_chars: Some(MAX_UNBOUNDED_CHARS),
    name_shapes: NAME_SHAPES,
    max_client_token_chars: Some(MAX_CLIENT_TOKEN_CHARS),
    not_a_structure: "Member must be an object",
};

/// The first character of a name that would break an ARN, a store key or an
/// Envoy resource name, described for an error message.
fn forbidden_in_name(text: &str) -> Option<String> {
    text.chars().find_map(|c| {
        if c == '/' {
            Some("Member must not contain '/'".to_string())
        } else if c.is_control() {
            Some(format!(
                "Member must not contain control characters, found U+{:04X}",
                u32::from(c)
            ))
        } else {
            None
        }
    })
}

/// Why an idempotency token breaks App Mesh's documented `clientToken`
/// form (up to `max` letters, numbers, hyphens and underscores), if it does.
fn bad_client_token(token: &str, max: usize) -> Option<String> {
    let n = token.chars().count();
    if n > max {
        return Some(format!(
            "Member must have length less than or equal to {max}, got {n}"
        ));
    }
    token
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        .map(|c| {
            format!(
                "Member must contain only letters, numbers, hyphens and underscores, found {}",
                describe_char(c)
            )
        })
}

/// A character as an error message shows it: quoted if printable, its code
/// point otherwise.
fn describe_char(c: char) -> String {
    if c.is_control() {
        format!("U+{:04X}", u32::from(c))
    } else {
        format!("'{c}'")
    }
}

fn err(field: &Field<'_>, constraint: impl Into<String>) -> ValidationError {
    let field = field.render();
    ValidationError {
        field: if field.is_empty() {
            "(request)".into()
        } else {
            field
        },
        constraint: constraint.into(),
    }
}

/// Where a value sits in the request, as a chain of references to the
/// callers' frames: rendered (`spec.listeners[0].portMapping`) only for an
/// error, so that a valid request allocates no path at all.
#[derive(Clone, Copy)]
enum Field<'a> {
    /// The path given by the caller (empty: the request itself).
    Root(&'a str),
    /// A member of a structure.
    Member(&'a Field<'a>, &'a str),
    /// An item of a list.
    Item(&'a Field<'a>, usize),
}

impl Field<'_> {
    fn render(&self) -> String {
        match self {
            Field::Root(path) => path.to_string(),
            Field::Member(parent, name) => {
                let parent = parent.render();
                if parent.is_empty() {
                    name.to_string()
                } else {
                    format!("{parent}.{name}")
                }
            }
            Field::Item(parent, i) => format!("{}[{i}]", parent.render()),
        }
    }
}

/// Validates the merged input of an App Mesh `operation` (path labels,
/// query parameters and body members in one JSON object, keyed by member
/// name).
pub fn validate_input(operation: &str, input: &Value) -> Result<(), ValidationError> {
    schema().validate_input(operation, input)
}

/// Validates `value` against the named App Mesh shape; `path` names it in errors.
pub fn validate_shape(shape: &str, value: &Value, path: &str) -> Result<(), ValidationError> {
    schema().validate_shape(shape, value, path)
}

fn check_length(
    path: &Field<'_>,
    n: i64,
    min: Option<i64>,
    max: Option<i64>,
) -> Result<(), ValidationError> {
    if let Some(min) = min.filter(|m| n < *m) {
        return Err(err(
            path,
            format!("Member must have length greater than or equal to {min}"),
        ));
    }
    if let Some(max) = max.filter(|m| n > *m) {
        return Err(err(
            path,
            format!("Member must have length less than or equal to {max}"),
        ));
    }
    Ok(())
}

impl Schema {
    /// Validates the input of `operation` (one JSON object keyed by member
    /// name, whichever part of the request each member came from).
    pub fn validate_input(&self, operation: &str, input: &Value) -> Result<(), ValidationError> {
        let op = self
            .operations
            .get(operation)
            .ok_or_else(|| err(&Field::Root(""), format!("unknown operation {operation}")))?;
        self.validate_shape(&op.input, input, "")
    }

    /// Validates `value` against the named shape; `path` names it in errors.
    pub fn validate_shape(
        &self,
        shape: &str,
        value: &Value,
        path: &str,
    ) -> Result<(), ValidationError> {
        let Some(s) = self.shape(shape) else {
            return Err(err(&Field::Root(path), format!("unknown shape {shape}")));
        };
        self.validate_at(s, value, &Field::Root(path))
    }

    /// Validates a member against its shape, found by index: a request has a
    /// few dozen values, and looking each one's shape up by name among the
    /// model's hundreds was most of the validation's time.
    fn validate_member(
        &self,
        target: usize,
        name: &str,
        value: &Value,
        path: &Field<'_>,
    ) -> Result<(), ValidationError> {
        match self.shape_at(target) {
            Some(s) => self.validate_at(s, value, path),
            None => Err(err(path, format!("unknown shape {name}"))),
        }
    }

    fn validate_at(
        &self,
        s: &Shape,
        value: &Value,
        path: &Field<'_>,
    ) -> Result<(), ValidationError> {
        match &s.kind {
            ShapeKind::Structure {
                members,
                required,
                union,
                ..
            } => {
                let Some(obj) = value.as_object() else {
                    return Err(err(path, self.rules.not_a_structure));
                };
                for r in required {
                    if obj.get(r).is_none_or(Value::is_null) {
                        return Err(err(&Field::Member(path, r), "Member must not be null"));
                    }
                }
                let mut set = 0;
                for (name, member) in members {
                    if let Some(v) = obj.get(name).filter(|v| !v.is_null()) {
                        set += 1;
                        let field = Field::Member(path, name);
                        self.validate_member(member.target, &member.shape, v, &field)?;
                        if let (true, Some(max)) =
                            (member.idempotency_token, self.rules.max_client_token_chars)
                        {
                            if let Some(why) = v.as_str().and_then(|t| bad_client_token(t, max)) {
                                return Err(err(&field, why));
                            }
                        }
                    }
                }
                if *union && set != 1 {
                    let names: Vec<&str> = members.keys().map(String::as_str).collect();
                    return Err(err(
                        path,
                        format!(
                            "Member must have exactly one of [{}] set, found {set}",
                            names.join(", ")
                        ),
                    ));
                }
                Ok(())
            }
            ShapeKind::List {
                member,
                target,
                min,
                max,
            } => {
                let Some(items) = value.as_array() else {
                    return Err(err(path, "Member must be a list"));
                };
                check_length(path, items.len() as i64, *min, *max)?;
                for (i, item) in items.iter().enumerate() {
                    self.validate_member(*target, member, item, &Field::Item(path, i))?;
                }
                Ok(())
            }
            ShapeKind::Map {
                key,
                key_target,
                value: value_shape,
                value_target,
                min,
                max,
            } => {
                let Some(entries) = value.as_object() else {
                    return Err(err(path, "Member must be a map"));
                };
                check_length(path, entries.len() as i64, *min, *max)?;
                for (k, v) in entries {
                    // Both the key and its value are named by the key.
                    let field = Field::Member(path, k);
                    match self.shape_at(*key_target) {
                        Some(ks) => self.validate_str(ks, k, &field)?,
                        None => return Err(err(&field, format!("unknown shape {key}"))),
                    }
                    self.validate_member(*value_target, value_shape, v, &field)?;
                }
                Ok(())
            }
            ShapeKind::String { .. } => match value.as_str() {
                Some(text) => self.validate_str(s, text, path),
                None => Err(err(path, "Member must be a string")),
            },
            ShapeKind::Integer { min, max, long } => {
                let Some(n) = value.as_i64() else {
                    return Err(err(path, "Member must be an integer"));
                };
                if !long && i32::try_from(n).is_err() {
                    return Err(err(path, "Member must fit in a 32-bit integer"));
                }
                if let Some(min) = min.filter(|m| n < *m) {
                    return Err(err(
                        path,
                        format!("Member must have value greater than or equal to {min}"),
                    ));
                }
                if let Some(max) = max.filter(|m| n > *m) {
                    return Err(err(
                        path,
                        format!("Member must have value less than or equal to {max}"),
                    ));
                }
                Ok(())
            }
            ShapeKind::Boolean => match value {
                Value::Bool(_) => Ok(()),
                _ => Err(err(path, "Member must be a boolean")),
            },
            ShapeKind::Timestamp => match value {
                Value::Number(_) => Ok(()),
                _ => Err(err(path, "Member must be a timestamp")),
            },
        }
    }

    /// Validates a JSON string, or a map key, against the shape `s`
    /// without copying it into a [`Value`] (every botocore key shape is a
    /// string).
    fn validate_str(&self, s: &Shape, text: &str, path: &Field<'_>) -> Result<(), ValidationError> {
        let ShapeKind::String {
            min,
            max,
            enum_values,
            pattern,
        } = &s.kind
        else {
            return self.validate_at(s, &Value::String(text.to_string()), path);
        };
        // Enums bound themselves; other strings without a maximum may get
        // the API's.
        let max = match (max, enum_values) {
            (None, None) => self.rules.max_unbounded_chars,
            (max, _) => *max,
        };
        // The model's lengths count characters, not bytes.
        check_length(path, text.chars().count() as i64, *min, max)?;
        if self.rules.name_shapes.contains(&s.name.as_str()) {
            if let Some(why) = forbidden_in_name(text) {
                return Err(err(path, why));
            }
        }
        if let Some(values) = enum_values {
            if !values.iter().any(|v| v == text) {
                return Err(err(
                    path,
                    format!(
                        "Member must satisfy enum value set: [{}]",
                        values.join(", ")
                    ),
                ));
            }
        }
        if let Some(re) = pattern {
            if !re.is_match(text) {
                return Err(err(
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::LazyLock;

    /// The Cloud Map model `weft-registry` serves, loaded by the same engine
    /// with the model's constraints alone (as the registry does).
    static CLOUD_MAP: LazyLock<Schema> = LazyLock::new(|| {
        let text = include_str!("../../registry/servicediscovery-2017-03-14.service.json");
        Schema::parse(text, Rules::MODEL_ONLY).expect("the Cloud Map model loads")
    });

    /// The message App Mesh's refusal of `input` carries.
    fn app_mesh(operation: &str, input: Value) -> String {
        match validate_input(operation, &input) {
            Ok(()) => panic!("{operation} accepted {input}"),
            Err(e) => e.to_string(),
        }
    }

    /// The message Cloud Map's refusal of `input` carries.
    fn cloud_map(operation: &str, input: Value) -> String {
        match CLOUD_MAP.validate_input(operation, &input) {
            Ok(()) => panic!("{operation} accepted {input}"),
            Err(e) => e.to_string(),
        }
    }

    const CONSTRAINT: &str = "failed to satisfy constraint";

    #[test]
    fn both_models_refuse_a_missing_required_member_naming_it() {
        assert_eq!(
            app_mesh("CreateMesh", json!({})),
            format!("Value at 'meshName' {CONSTRAINT}: Member must not be null")
        );
        assert_eq!(
            cloud_map(
                "RegisterInstance",
                json!({"ServiceId": "srv-1", "InstanceId": "i-1"})
            ),
            format!("Value at 'Attributes' {CONSTRAINT}: Member must not be null")
        );
    }

    #[test]
    fn both_models_hold_strings_to_their_lengths_in_characters() {
        assert_eq!(
            app_mesh("CreateMesh", json!({"meshName": ""})),
            format!(
                "Value at 'meshName' {CONSTRAINT}: Member must have length greater than or equal to 1"
            )
        );
        let at_max = json!({"meshName": "é".repeat(255)});
        assert_eq!(validate_input("CreateMesh", &at_max), Ok(()));
        assert_eq!(
            cloud_map(
                "RegisterInstance",
                json!({"ServiceId": "srv-1", "InstanceId": "i".repeat(65), "Attributes": {}})
            ),
            format!(
                "Value at 'InstanceId' {CONSTRAINT}: Member must have length less than or equal to 64"
            )
        );
        let at_max = json!({"AWSAccountId": "x"});
        assert!(CLOUD_MAP.validate_input("ListNamespaces", &at_max).is_ok());
    }

    #[test]
    fn both_models_enforce_patterns_including_cloud_maps_look_ahead() {
        let key = |k: &str| {
            json!({"meshName": "apps", "virtualNodeName": "n", "spec": {"serviceDiscovery": {
                "awsCloudMap": {"namespaceName": "ns", "serviceName": "s",
                                "attributes": [{"key": k, "value": "v"}]}}}})
        };
        assert_eq!(validate_input("CreateVirtualNode", &key("stack")), Ok(()));
        assert_eq!(
            app_mesh("CreateVirtualNode", key("a key")),
            format!(
                "Value at 'spec.serviceDiscovery.awsCloudMap.attributes[0].key' {CONSTRAINT}: \
                 Member must satisfy regular expression pattern: ^[a-zA-Z0-9!-~]+$"
            )
        );
        assert_eq!(
            cloud_map("CreateHttpNamespace", json!({"Name": "arn:aws:x"})),
            format!(
                "Value at 'Name' {CONSTRAINT}: \
                 Member must satisfy regular expression pattern: ^(?!arn:)[!-~]{{1,1024}}$"
            )
        );
        // ServiceName: at most 127 characters, by a look-ahead.
        let service = |n: usize| json!({"Name": "a".repeat(n), "NamespaceId": "ns-1"});
        assert!(CLOUD_MAP
            .validate_input("CreateService", &service(61))
            .is_ok());
        assert!(CLOUD_MAP
            .validate_input("CreateService", &service(128))
            .is_err());
    }

    #[test]
    fn both_models_enforce_integer_ranges() {
        let port = |p: i64| {
            json!({"meshName": "apps", "virtualNodeName": "n", "spec": {
                "listeners": [{"portMapping": {"port": p, "protocol": "http"}}]}})
        };
        assert_eq!(
            app_mesh("CreateVirtualNode", port(65536)),
            format!(
                "Value at 'spec.listeners[0].portMapping.port' {CONSTRAINT}: \
                 Member must have value less than or equal to 65535"
            )
        );
        assert_eq!(
            app_mesh("CreateVirtualNode", port(1 << 40)),
            format!(
                "Value at 'spec.listeners[0].portMapping.port' {CONSTRAINT}: \
                 Member must fit in a 32-bit integer"
            )
        );
        assert_eq!(
            cloud_map("ListNamespaces", json!({"MaxResults": 0})),
            format!(
                "Value at 'MaxResults' {CONSTRAINT}: Member must have value greater than or equal to 1"
            )
        );
    }

    #[test]
    fn both_models_enforce_enums_listing_the_values() {
        let protocol = json!({"meshName": "apps", "virtualNodeName": "n", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "smtp"}}]}});
        assert_eq!(
            app_mesh("CreateVirtualNode", protocol),
            format!(
                "Value at 'spec.listeners[0].portMapping.protocol' {CONSTRAINT}: \
                 Member must satisfy enum value set: [http, tcp, http2, grpc]"
            )
        );
        let health = json!({"NamespaceName": "n", "ServiceName": "s", "HealthStatus": "MAYBE"});
        assert_eq!(
            cloud_map("DiscoverInstances", health),
            format!(
                "Value at 'HealthStatus' {CONSTRAINT}: \
                 Member must satisfy enum value set: [HEALTHY, UNHEALTHY, ALL, HEALTHY_OR_ELSE_ALL]"
            )
        );
    }

    #[test]
    fn both_models_hold_lists_to_their_sizes() {
        let route = json!({"meshName": "apps", "virtualRouterName": "r", "routeName": "rt",
            "spec": {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": []}}}});
        assert_eq!(
            app_mesh("CreateRoute", route),
            format!(
                "Value at 'spec.httpRoute.action.weightedTargets' {CONSTRAINT}: \
                 Member must have length greater than or equal to 1"
            )
        );
        assert_eq!(
            cloud_map(
                "GetInstancesHealthStatus",
                json!({"ServiceId": "srv-1", "Instances": []})
            ),
            format!(
                "Value at 'Instances' {CONSTRAINT}: Member must have length greater than or equal to 1"
            )
        );
        let tags: Vec<Value> = (0..201)
            .map(|i| json!({"Key": format!("k{i}"), "Value": ""}))
            .collect();
        assert_eq!(
            cloud_map("CreateHttpNamespace", json!({"Name": "apps", "Tags": tags})),
            format!(
                "Value at 'Tags' {CONSTRAINT}: Member must have length less than or equal to 200"
            )
        );
    }

    #[test]
    fn cloud_map_checks_map_keys_and_values_naming_the_key() {
        let attributes = |k: &str, v: &str| json!({"ServiceId": "srv-1", "InstanceId": "i-1", "Attributes": {k: v}});
        let ok = attributes("AWS_INSTANCE_IPV4", "10.0.0.1");
        assert!(CLOUD_MAP.validate_input("RegisterInstance", &ok).is_ok());
        assert!(
            cloud_map("RegisterInstance", attributes("k", "bad\nvalue")).starts_with(&format!(
            "Value at 'Attributes.k' {CONSTRAINT}: Member must satisfy regular expression pattern"
        ))
        );
        assert!(cloud_map("RegisterInstance", attributes("a key", "v"))
            .starts_with(&format!("Value at 'Attributes.a key' {CONSTRAINT}: Member must satisfy regular expression pattern: ^[a-zA-Z0-9!-~]+$")));
        assert_eq!(
            cloud_map("RegisterInstance", attributes("k", &"v".repeat(1025))),
            format!(
                "Value at 'Attributes.k' {CONSTRAINT}: Member must have length less than or equal to 1024"
            )
        );
    }

    #[test]
    fn a_map_is_held_to_its_size_and_its_key_shape() {
        // Neither API's model bounds a map, so a model of one map shows it.
        let model = r#"{"operations": {"Put": {"input": {"shape": "PutInput"}}},
            "shapes": {
                "PutInput": {"type": "structure", "members": {"Labels": {"shape": "Labels"}}},
                "Labels": {"type": "map", "key": {"shape": "Key"}, "value": {"shape": "Count"},
                           "min": 1, "max": 2},
                "Key": {"type": "string", "enum": ["a", "b", "c"]},
                "Count": {"type": "integer", "min": 0}}}"#;
        let schema = Schema::parse(model, Rules::MODEL_ONLY).unwrap();
        let refusal = |input: Value| {
            schema
                .validate_input("Put", &input)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            schema.validate_input("Put", &json!({"Labels": {"a": 1, "b": 0}})),
            Ok(())
        );
        assert_eq!(
            refusal(json!({"Labels": {}})),
            format!("Value at 'Labels' {CONSTRAINT}: Member must have length greater than or equal to 1")
        );
        assert_eq!(
            refusal(json!({"Labels": {"a": 1, "b": 1, "c": 1}})),
            format!(
                "Value at 'Labels' {CONSTRAINT}: Member must have length less than or equal to 2"
            )
        );
        assert_eq!(
            refusal(json!({"Labels": {"d": 1}})),
            format!(
                "Value at 'Labels.d' {CONSTRAINT}: Member must satisfy enum value set: [a, b, c]"
            )
        );
        assert_eq!(
            refusal(json!({"Labels": {"a": -1}})),
            format!("Value at 'Labels.a' {CONSTRAINT}: Member must have value greater than or equal to 0")
        );
        assert_eq!(
            refusal(json!({"Labels": []})),
            format!("Value at 'Labels' {CONSTRAINT}: Member must be a map")
        );
    }

    #[test]
    fn an_app_mesh_union_needs_exactly_one_member() {
        let both = json!({"meshName": "apps", "virtualNodeName": "n", "spec": {"serviceDiscovery": {
            "dns": {"hostname": "h"}, "awsCloudMap": {"namespaceName": "ns", "serviceName": "s"}}}});
        assert_eq!(
            app_mesh("CreateVirtualNode", both),
            format!(
                "Value at 'spec.serviceDiscovery' {CONSTRAINT}: \
                 Member must have exactly one of [awsCloudMap, dns] set, found 2"
            )
        );
    }

    #[test]
    fn each_api_words_a_value_of_the_wrong_type_its_own_way_for_structures_only() {
        let spec = json!({"meshName": "apps", "virtualNodeName": "n", "spec": "node"});
        assert_eq!(
            app_mesh("CreateVirtualNode", spec),
            format!("Value at 'spec' {CONSTRAINT}: Member must be an object")
        );
        let dns = json!({"Name": "s", "DnsConfig": "A"});
        assert_eq!(
            cloud_map("CreateService", dns),
            format!("Value at 'DnsConfig' {CONSTRAINT}: Member must be a structure")
        );
        assert_eq!(
            app_mesh("CreateMesh", json!({"meshName": 7})),
            format!("Value at 'meshName' {CONSTRAINT}: Member must be a string")
        );
        assert_eq!(
            cloud_map("ListNamespaces", json!({"MaxResults": "10"})),
            format!("Value at 'MaxResults' {CONSTRAINT}: Member must be an integer")
        );
    }

    #[test]
    fn app_mesh_rules_of_wefts_own_do_not_reach_cloud_map() {
        // App Mesh holds idempotency tokens to its clientToken form; Cloud
        // Map's CreatorRequestId is any string of up to 64 characters.
        assert!(app_mesh(
            "CreateMesh",
            json!({"meshName": "apps", "clientToken": "a.b"})
        )
        .contains("found '.'"));
        let token = json!({"Name": "apps", "CreatorRequestId": format!("a.b{}", "c".repeat(40))});
        assert!(CLOUD_MAP
            .validate_input("CreateHttpNamespace", &token)
            .is_ok());
    }

    #[test]
    fn an_unknown_operation_is_refused_by_either_model() {
        assert_eq!(
            app_mesh("CreateAnything", json!({})),
            format!("Value at '(request)' {CONSTRAINT}: unknown operation CreateAnything")
        );
        assert_eq!(
            cloud_map("CreateMesh", json!({})),
            format!("Value at '(request)' {CONSTRAINT}: unknown operation CreateMesh")
        );
    }

    fn refusal(operation: &str, input: Value) -> String {
        app_mesh(operation, input)
    }

    #[test]
    fn a_mesh_named_like_an_arn_path_is_refused_naming_mesh_name() {
        let why = refusal("CreateMesh", json!({"meshName": "x/virtualNode/y"}));
        assert_eq!(
            why,
            "Value at 'meshName' failed to satisfy constraint: Member must not contain '/'"
        );
    }

    #[test]
    fn names_with_nul_del_or_a_newline_are_refused_naming_the_character() {
        let cases = [
            ("CreateVirtualNode", "virtualNodeName", "a\0b", "U+0000"),
            (
                "CreateVirtualRouter",
                "virtualRouterName",
                "r\u{7f}",
                "U+007F",
            ),
            (
                "CreateVirtualService",
                "virtualServiceName",
                "s\n.local",
                "U+000A",
            ),
            (
                "CreateVirtualGateway",
                "virtualGatewayName",
                "g\u{85}",
                "U+0085",
            ),
        ];
        for (op, member, name, shown) in cases {
            let mut input = json!({"meshName": "apps", "spec": {}});
            if op == "CreateVirtualGateway" {
                input["spec"] =
                    json!({"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]});
            }
            input[member] = json!(name);
            let why = refusal(op, input);
            assert!(
                why.starts_with(&format!("Value at '{member}' failed")) && why.contains(shown),
                "{op}: {why}"
            );
        }
    }

    #[test]
    fn names_in_references_inside_a_spec_are_held_to_the_same_rule() {
        let input = json!({
            "meshName": "apps", "virtualRouterName": "r", "routeName": "rt",
            "spec": {"httpRoute": {"match": {"prefix": "/"},
                "action": {"weightedTargets": [{"virtualNode": "a/b", "weight": 1}]}}}
        });
        let why = refusal("CreateRoute", input);
        assert!(
            why.starts_with("Value at 'spec.httpRoute.action.weightedTargets[0].virtualNode'"),
            "{why}"
        );
    }

    #[test]
    fn dns_names_dots_dashes_and_underscores_stay_valid_names() {
        for name in [
            "serviceb.apps.local",
            "my-service-a_my-apps",
            "colors",
            "Ünïcode",
        ] {
            let input = json!({"meshName": "apps", "virtualServiceName": name, "spec": {}});
            assert_eq!(validate_input("CreateVirtualService", &input), Ok(()));
        }
    }

    #[test]
    fn a_1_5_mb_dns_hostname_is_refused_naming_the_field() {
        let host = "a".repeat(1_500_000);
        let input = json!({"meshName": "apps", "virtualNodeName": "n", "spec": {
            "serviceDiscovery": {"dns": {"hostname": host}}}});
        let why = refusal("CreateVirtualNode", input);
        assert_eq!(
            why,
            "Value at 'spec.serviceDiscovery.dns.hostname' failed to satisfy constraint: \
             Member must have length less than or equal to 4096"
        );
    }

    #[test]
    fn an_unbounded_string_may_hold_4096_characters_but_not_one_more() {
        let input = |n: usize| {
            json!({"meshName": "apps", "virtualNodeName": "n", "spec": {
                "serviceDiscovery": {"dns": {"hostname": "h".repeat(n)}}}})
        };
        assert_eq!(validate_input("CreateVirtualNode", &input(4096)), Ok(()));
        assert!(validate_input("CreateVirtualNode", &input(4097)).is_err());
    }

    #[test]
    fn a_client_token_is_up_to_36_letters_numbers_hyphens_and_underscores() {
        let with = |token: &str| json!({"meshName": "apps", "clientToken": token});
        // What the AWS SDKs generate: a UUID.
        let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(validate_input("CreateMesh", &with(uuid)), Ok(()));
        assert_eq!(validate_input("UpdateMesh", &with("retry_1")), Ok(()));
        let long = refusal("CreateMesh", with(&format!("{uuid}x")));
        assert!(
            long.starts_with("Value at 'clientToken'") && long.contains("36"),
            "{long}"
        );
        let dotted = refusal("CreateMesh", with("a.b"));
        assert!(dotted.contains("'.'"), "{dotted}");
    }
}
