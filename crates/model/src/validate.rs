//! Checks a request against every constraint the App Mesh model declares:
//! required members, string lengths, integer ranges, list sizes, enum values,
//! patterns and unions (exactly one member set). The rules are read from the
//! model itself ([`crate::schema`]), so no shape can be left unchecked.

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
                    validate_member(member.target, &member.shape, v, &Field::Member(path, name))?;
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
            if let Some(max) = max.filter(|m| n > *m) {
                return Err(err(
                    path,
                    format!("Member must have length less than or equal to {max}"),
                ));
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
