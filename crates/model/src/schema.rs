//! The App Mesh API model loaded at run time: operations with their HTTP
//! bindings and shapes with their constraints.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::Value;

/// Where an input member travels in the HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In the JSON body.
    Body,
    /// A `{label}` in the request path.
    Uri(String),
    /// A query-string parameter.
    Query(String),
}

/// A member of a structure shape.
#[derive(Debug, Clone)]
pub struct Member {
    /// Name of the member's target shape.
    pub shape: String,
    /// The target shape's place in [`Schema::shape_at`]: validation follows
    /// it instead of looking the name up for every value of a request.
    pub target: usize,
    /// Where it travels in a request.
    pub location: Location,
    /// Whether the SDKs fill it with a fresh token when the caller leaves it out.
    pub idempotency_token: bool,
}

/// What kind of value a shape describes, with its constraints.
#[derive(Debug, Clone)]
pub enum ShapeKind {
    Structure {
        members: BTreeMap<String, Member>,
        required: Vec<String>,
        /// A union: exactly one member must be set.
        union: bool,
        /// The member sent as the whole HTTP body (outputs only).
        payload: Option<String>,
        /// HTTP status of an exception shape.
        error_status: Option<u16>,
    },
    List {
        member: String,
        /// The member shape's place in [`Schema::shape_at`].
        target: usize,
        min: Option<i64>,
        max: Option<i64>,
    },
    String {
        min: Option<i64>,
        max: Option<i64>,
        enum_values: Option<Vec<String>>,
        pattern: Option<regex::Regex>,
    },
    Integer {
        min: Option<i64>,
        max: Option<i64>,
        /// `long` rather than `integer`.
        long: bool,
    },
    Boolean,
    Timestamp,
}

/// One shape of the model.
#[derive(Debug, Clone)]
pub struct Shape {
    pub name: String,
    pub kind: ShapeKind,
}

/// One API operation and its HTTP binding.
#[derive(Debug, Clone)]
pub struct Operation {
    pub name: String,
    /// `GET`, `PUT` or `DELETE`.
    pub method: String,
    /// The request path with `{label}` placeholders, as in the model.
    pub uri: String,
    pub input: String,
    pub output: String,
    /// Names of the exception shapes the operation may answer.
    pub errors: Vec<String>,
}

/// The whole model.
#[derive(Debug)]
pub struct Schema {
    /// Every shape, in name order; a shape's place here is its index
    /// ([`Member::target`], a list's `target`).
    pub shapes: Vec<Shape>,
    pub operations: BTreeMap<String, Operation>,
    /// Each shape's index by name.
    by_name: BTreeMap<String, usize>,
}

impl Schema {
    /// Looks up a shape; the model is fixed at build time, so callers pass names that exist.
    pub fn shape(&self, name: &str) -> Option<&Shape> {
        self.by_name.get(name).and_then(|&i| self.shapes.get(i))
    }

    /// The shape at `index` (a [`Member::target`] or a list's `target`).
    pub fn shape_at(&self, index: usize) -> Option<&Shape> {
        self.shapes.get(index)
    }
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| parse(crate::MODEL_JSON));

/// The App Mesh API model, parsed once.
pub fn schema() -> &'static Schema {
    &SCHEMA
}

fn as_i64(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn parse(text: &str) -> Schema {
    // The model is compiled into the binary and parsed by a unit test, so a
    // failure here is a build defect, not a runtime condition.
    #[allow(clippy::expect_used)]
    let model: Value = serde_json::from_str(text).expect("embedded App Mesh model is valid JSON");
    // A shape's index is its place in name order; a reference to a shape
    // the model lacks gets an index past the end, which `shape_at` answers
    // with `None`.
    let mut names: Vec<&String> = model["shapes"]
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    names.sort();
    let by_name: BTreeMap<String, usize> = names
        .iter()
        .enumerate()
        .map(|(i, name)| ((*name).clone(), i))
        .collect();
    let target = |name: &str| by_name.get(name).copied().unwrap_or(usize::MAX);
    let mut shapes = Vec::with_capacity(names.len());
    for name in &names {
        let s = &model["shapes"][name.as_str()];
        let kind = match s["type"].as_str().unwrap_or("") {
            "structure" => {
                let mut members = BTreeMap::new();
                if let Some(ms) = s["members"].as_object() {
                    for (mname, m) in ms {
                        let loc_name = m["locationName"].as_str().unwrap_or(mname).to_string();
                        let location = match m["location"].as_str() {
                            Some("uri") => Location::Uri(loc_name),
                            Some("querystring") => Location::Query(loc_name),
                            _ => Location::Body,
                        };
                        let shape = m["shape"].as_str().unwrap_or("");
                        members.insert(
                            mname.clone(),
                            Member {
                                shape: shape.to_string(),
                                target: target(shape),
                                location,
                                idempotency_token: m["idempotencyToken"].as_bool().unwrap_or(false),
                            },
                        );
                    }
                }
                ShapeKind::Structure {
                    members,
                    required: strings(s.get("required")),
                    union: s["union"].as_bool().unwrap_or(false),
                    payload: s["payload"].as_str().map(String::from),
                    error_status: s["error"]["httpStatusCode"].as_u64().map(|c| c as u16),
                }
            }
            "list" => ShapeKind::List {
                member: s["member"]["shape"].as_str().unwrap_or("").to_string(),
                target: target(s["member"]["shape"].as_str().unwrap_or("")),
                min: as_i64(s, "min"),
                max: as_i64(s, "max"),
            },
            "string" => ShapeKind::String {
                min: as_i64(s, "min"),
                max: as_i64(s, "max"),
                enum_values: s.get("enum").map(|e| strings(Some(e))),
                // Both patterns in the model are plain ASCII classes the
                // regex crate accepts; a test compiles every one.
                pattern: s["pattern"]
                    .as_str()
                    .and_then(|p| regex::Regex::new(p).ok()),
            },
            "integer" | "long" => ShapeKind::Integer {
                min: as_i64(s, "min"),
                max: as_i64(s, "max"),
                long: s["type"] == "long",
            },
            "boolean" => ShapeKind::Boolean,
            "timestamp" => ShapeKind::Timestamp,
            // The model is compiled in and parsed by the unit tests, so an
            // unknown type is a build defect caught before release.
            #[allow(clippy::panic)]
            other => panic!("shape {name} has unsupported type {other}"),
        };
        shapes.push(Shape {
            name: (*name).clone(),
            kind,
        });
    }
    let mut operations = BTreeMap::new();
    if let Some(obj) = model["operations"].as_object() {
        for (name, o) in obj {
            operations.insert(
                name.clone(),
                Operation {
                    name: name.clone(),
                    method: o["http"]["method"].as_str().unwrap_or("GET").to_string(),
                    uri: o["http"]["requestUri"].as_str().unwrap_or("/").to_string(),
                    input: o["input"]["shape"].as_str().unwrap_or("").to_string(),
                    output: o["output"]["shape"].as_str().unwrap_or("").to_string(),
                    errors: o["errors"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|e| e["shape"].as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default(),
                },
            );
        }
    }
    Schema {
        shapes,
        operations,
        by_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_has_38_operations_and_333_shapes() {
        let s = schema();
        assert_eq!(s.operations.len(), 38);
        assert_eq!(s.shapes.len(), 333);
    }

    #[test]
    fn every_pattern_in_the_model_compiles() {
        let model: Value = serde_json::from_str(crate::MODEL_JSON).unwrap_or_default();
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
        assert_eq!(n, 2);
    }

    #[test]
    fn every_referenced_shape_exists() {
        let s = schema();
        for shape in &s.shapes {
            match &shape.kind {
                ShapeKind::Structure { members, .. } => {
                    for m in members.values() {
                        assert!(s.shape(&m.shape).is_some(), "{}.{}", shape.name, m.shape);
                        let at = s.shape_at(m.target).map(|t| t.name.as_str());
                        assert_eq!(at, Some(m.shape.as_str()), "{}", shape.name);
                    }
                }
                ShapeKind::List { member, target, .. } => {
                    assert!(s.shape(member).is_some());
                    let at = s.shape_at(*target).map(|t| t.name.as_str());
                    assert_eq!(at, Some(member.as_str()), "{}", shape.name);
                }
                _ => {}
            }
        }
        for op in s.operations.values() {
            assert!(s.shape(&op.input).is_some() && s.shape(&op.output).is_some());
        }
    }
}
