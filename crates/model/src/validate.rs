//! Checks a request against every constraint the App Mesh model declares:
//! required members, string lengths, integer ranges, list sizes, enum values,
//! patterns and unions (exactly one member set). The rules are read from the
//! model itself ([`crate::schema`]), so no shape can be left unchecked.
//!
//! Three rules are Weft's own, because the model leaves them unsaid and a
//! control plane others can reach must not accept what they forbid:
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

use crate::schema::{schema, Shape, ShapeKind};

/// A request that breaks a constraint of the model. App Mesh answers it with
/// `BadRequestException`; the message names the offending field.
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

/// Why a `clientToken` breaks its documented form, if it does.
fn bad_client_token(token: &str) -> Option<String> {
    let n = token.chars().count();
    if n > MAX_CLIENT_TOKEN_CHARS {
        return Some(format!(
            "Member must have length less than or equal to {MAX_CLIENT_TOKEN_CHARS}, got {n}"
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

/// Validates the merged input of `operation` (path labels, query parameters
/// and body members in one JSON object, keyed by member name).
pub fn validate_input(operation: &str, input: &Value) -> Result<(), ValidationError> {
    let op = schema()
        .operations
        .get(operation)
        .ok_or_else(|| err(&Field::Root(""), format!("unknown operation {operation}")))?;
    validate_shape(&op.input, input, "")
}

/// Validates `value` against the named shape; `path` names it in errors.
pub fn validate_shape(shape: &str, value: &Value, path: &str) -> Result<(), ValidationError> {
    let Some(s) = schema().shape(shape) else {
        return Err(err(&Field::Root(path), format!("unknown shape {shape}")));
    };
    validate_at(s, value, &Field::Root(path))
}

/// Validates a member against its shape, found by index: a request has a
/// few dozen values, and looking each one's shape up by name among the
/// model's 333 was most of the validation's time.
fn validate_member(
    target: usize,
    name: &str,
    value: &Value,
    path: &Field<'_>,
) -> Result<(), ValidationError> {
    match schema().shape_at(target) {
        Some(s) => validate_at(s, value, path),
        None => Err(err(path, format!("unknown shape {name}"))),
    }
}

fn validate_at(s: &Shape, value: &Value, path: &Field<'_>) -> Result<(), ValidationError> {
    match &s.kind {
        ShapeKind::Structure {
            members,
            required,
            union,
            ..
        } => {
            let Some(obj) = value.as_object() else {
                return Err(err(path, "Member must be an object"));
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
                    validate_member(member.target, &member.shape, v, &field)?;
                    if member.idempotency_token {
                        if let Some(why) = v.as_str().and_then(bad_client_token) {
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
            let n = items.len() as i64;
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
            for (i, item) in items.iter().enumerate() {
                validate_member(*target, member, item, &Field::Item(path, i))?;
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
                return Err(err(path, "Member must be a string"));
            };
            // The model's lengths count characters, not bytes.
            let n = text.chars().count() as i64;
            if let Some(min) = min.filter(|m| n < *m) {
                return Err(err(
                    path,
                    format!("Member must have length greater than or equal to {min}"),
                ));
            }
            // Enums bound themselves; other strings without a maximum get Weft's.
            let max = match (max, enum_values) {
                (None, None) => Some(MAX_UNBOUNDED_CHARS),
                (max, _) => *max,
            };
            if let Some(max) = max.filter(|m| n > *m) {
                return Err(err(
                    path,
                    format!("Member must have length less than or equal to {max}"),
                ));
            }
            if NAME_SHAPES.contains(&s.name.as_str()) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refusal(operation: &str, input: Value) -> String {
        match validate_input(operation, &input) {
            Ok(()) => panic!("{operation} accepted {input}"),
            Err(e) => e.to_string(),
        }
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
