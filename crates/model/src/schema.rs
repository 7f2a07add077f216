//! A botocore service model loaded at run time: operations with their HTTP
//! bindings and shapes with their constraints.
//!
//! One engine for every API Weft serves: [`Schema::parse`] reads any botocore
//! JSON model, once, and [`crate::validate`] checks requests against it. The
//! App Mesh model is [`schema()`]; `weft-registry` loads the Cloud Map one the
//! same way. What differs between the two APIs beyond their models is a
//! [`Rules`] value, not code.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::Value;

use crate::validate::Rules;

/// Where an input member travels in the HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In the JSON body (every member of an RPC protocol such as Cloud Map's).
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
    /// A JSON object with keys of one string shape and values of another.
    Map {
        key: String,
        /// The key shape's place in [`Schema::shape_at`].
        key_target: usize,
        value: String,
        /// The value shape's place in [`Schema::shape_at`].
        value_target: usize,
        min: Option<i64>,
        max: Option<i64>,
    },
    String {
        min: Option<i64>,
        max: Option<i64>,
        enum_values: Option<Vec<String>>,
        pattern: Option<Pattern>,
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

/// A string shape's `pattern`, compiled.
///
/// Some models need look-around (Cloud Map's `^(?!arn:)…`, `(?=^.{1,127}$)…`),
/// which the `regex` crate refuses, hence `fancy-regex`; it hands patterns
/// without look-around to the same automata `regex` uses, so the plain ones
/// cost no more than before.
#[derive(Debug, Clone)]
pub struct Pattern(fancy_regex::Regex);

impl Pattern {
    /// Compiles a model's pattern.
    pub fn new(pattern: &str) -> Result<Self, ModelError> {
        fancy_regex::Regex::new(pattern)
            .map(Pattern)
            .map_err(|e| ModelError(format!("pattern {pattern}: {e}")))
    }

    /// Whether `text` matches. A match that backtracks past fancy-regex's
    /// limit counts as a mismatch: the input is refused, not crashed on.
    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text).unwrap_or(false)
    }

    /// The pattern as the model spells it.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
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
    /// `GET`, `PUT`, `POST` or `DELETE`.
    pub method: String,
    /// The request path with `{label}` placeholders, as in the model.
    pub uri: String,
    pub input: String,
    /// Empty for an operation that answers nothing.
    pub output: String,
    /// Names of the exception shapes the operation may answer.
    pub errors: Vec<String>,
}

/// A model that cannot be loaded: not JSON, a shape type the engine does
/// not know, a pattern that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service model: {0}")]
pub struct ModelError(String);

/// The whole model, with the [`Rules`] requests to it are held to.
#[derive(Debug)]
pub struct Schema {
    /// Every shape, in name order; a shape's place here is its index
    /// ([`Member::target`], a list's `target`).
    pub shapes: Vec<Shape>,
    pub operations: BTreeMap<String, Operation>,
    /// `metadata.targetPrefix` of a JSON-RPC model (the `X-Amz-Target`
    /// prefix), if it has one.
    pub target_prefix: Option<String>,
    /// Weft's own rules for this API, on top of the model's constraints.
    pub rules: Rules,
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

    /// Loads a botocore JSON model. Parse it once (a `LazyLock`) and keep
    /// it: validation then only follows indices.
    pub fn parse(text: &str, rules: Rules) -> Result<Schema, ModelError> {
        let model: Value =
            serde_json::from_str(text).map_err(|e| ModelError(format!("not JSON: {e}")))?;
        parse(&model, rules)
    }
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    // The model is compiled into the binary and parsed by a unit test, so a
    // failure here is a build defect, not a runtime condition.
    #[allow(clippy::expect_used)]
    Schema::parse(crate::MODEL_JSON, crate::validate::APP_MESH).expect("the App Mesh model loads")
});

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

fn parse(model: &Value, rules: Rules) -> Result<Schema, ModelError> {
    let Some(raw_shapes) = model["shapes"].as_object() else {
        return Err(ModelError("no shapes".into()));
    };
    // A shape's index is its place in name order; a reference to a shape
    // the model lacks gets an index past the end, which `shape_at` answers
    // with `None`.
    let mut names: Vec<&String> = raw_shapes.keys().collect();
    names.sort();
    let by_name: BTreeMap<String, usize> = names
        .iter()
        .enumerate()
        .map(|(i, name)| ((*name).clone(), i))
        .collect();
    let target = |name: &str| by_name.get(name).copied().unwrap_or(usize::MAX);
    let shape_of = |v: &Value| v["shape"].as_str().unwrap_or("").to_string();
    let mut shapes = Vec::with_capacity(names.len());
    for name in &names {
        let s = &raw_shapes[name.as_str()];
        let kind = match s["type"].as_str().unwrap_or("") {
            "structure" => {
                let mut members = BTreeMap::new();
                for (mname, m) in s["members"].as_object().into_iter().flatten() {
                    let loc_name = m["locationName"].as_str().unwrap_or(mname).to_string();
                    let location = match m["location"].as_str() {
                        Some("uri") => Location::Uri(loc_name),
                        Some("querystring") => Location::Query(loc_name),
                        _ => Location::Body,
                    };
                    let shape = shape_of(m);
                    members.insert(
                        mname.clone(),
                        Member {
                            target: target(&shape),
                            shape,
                            location,
                            idempotency_token: m["idempotencyToken"].as_bool().unwrap_or(false),
                        },
                    );
                }
                ShapeKind::Structure {
                    members,
                    required: strings(s.get("required")),
                    union: s["union"].as_bool().unwrap_or(false),
                    payload: s["payload"].as_str().map(String::from),
                    error_status: s["error"]["httpStatusCode"]
                        .as_u64()
                        .and_then(|c| u16::try_from(c).ok()),
                }
            }
            "list" => {
                let member = shape_of(&s["member"]);
                ShapeKind::List {
                    target: target(&member),
                    member,
                    min: as_i64(s, "min"),
                    max: as_i64(s, "max"),
                }
            }
            "map" => {
                let (key, value) = (shape_of(&s["key"]), shape_of(&s["value"]));
                ShapeKind::Map {
                    key_target: target(&key),
                    key,
                    value_target: target(&value),
                    value,
                    min: as_i64(s, "min"),
                    max: as_i64(s, "max"),
                }
            }
            "string" => ShapeKind::String {
                min: as_i64(s, "min"),
                max: as_i64(s, "max"),
                enum_values: s.get("enum").map(|e| strings(Some(e))),
                pattern: s["pattern"].as_str().map(Pattern::new).transpose()?,
            },
            "integer" | "long" => ShapeKind::Integer {
                min: as_i64(s, "min"),
                max: as_i64(s, "max"),
                long: s["type"] == "long",
            },
            "boolean" => ShapeKind::Boolean,
            "timestamp" => ShapeKind::Timestamp,
            other => {
                return Err(ModelError(format!(
                    "shape {name} has unsupported type {other}"
                )))
            }
        };
        shapes.push(Shape {
            name: (*name).clone(),
            kind,
        });
    }
    let mut operations = BTreeMap::new();
    for (name, o) in model["operations"].as_object().into_iter().flatten() {
        operations.insert(
            name.clone(),
            Operation {
                name: name.clone(),
                method: o["http"]["method"].as_str().unwrap_or("GET").to_string(),
                uri: o["http"]["requestUri"].as_str().unwrap_or("/").to_string(),
                input: shape_of(&o["input"]),
                output: shape_of(&o["output"]),
                errors: o["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(shape_of)
                    .collect(),
            },
        );
    }
    Ok(Schema {
        shapes,
        operations,
        target_prefix: model["metadata"]["targetPrefix"].as_str().map(String::from),
        rules,
        by_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_has_38_operations_and_333_shapes() {
        let s = schema();
        assert_eq!(s.operations.len(), 38);
        assert_eq!(s.shapes.len(), 333);
        assert_eq!(s.target_prefix, None);
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

    #[test]
    fn a_model_that_is_not_json_or_has_an_unknown_type_or_a_bad_pattern_is_refused() {
        let rules = Rules::MODEL_ONLY;
        assert!(Schema::parse("{", rules).is_err());
        let blob = r#"{"shapes": {"B": {"type": "blob"}}}"#;
        let e = Schema::parse(blob, rules).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("invalid service model: shape B has unsupported type blob")
        );
        let bad = r#"{"shapes": {"S": {"type": "string", "pattern": "(["}}}"#;
        assert!(Schema::parse(bad, rules).is_err());
    }
}
