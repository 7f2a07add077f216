//! Validation tests derived from the App Mesh API model file itself.
//!
//! The model (`weft_model::MODEL_JSON`) is parsed here with plain `serde_json`,
//! independently of the crate's own `schema` module, so these tests are a real
//! cross-check of `validate_input` and of the generated `shapes` types:
//!
//! 1. a generator builds a minimal valid value for any shape (and a maximal
//!    one, with every member set);
//! 2. every place a shape can appear under an operation input is visited, and
//!    every constraint found there (required members, string lengths, enums,
//!    patterns, integer ranges and widths, list sizes, unions, types) is broken
//!    on its own, expecting an error that names exactly that place;
//! 3. the set of (shape, constraint) pairs exercised is compared with the set
//!    computed from the model, so a constraint added to the model without
//!    being exercised fails the tests;
//! 4. every `spec` that validation accepts deserializes into its generated
//!    type and serializes back to the same JSON.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::LazyLock;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use weft_model::validate_input;

// ---------------------------------------------------------------------------
// The model, read straight from the botocore JSON.
// ---------------------------------------------------------------------------

static MODEL: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(weft_model::MODEL_JSON).expect("model is JSON"));

fn shape(name: &str) -> &'static Value {
    let s = &MODEL["shapes"][name];
    assert!(s.is_object(), "shape {name} is not in the model");
    s
}

fn kind(name: &str) -> &'static str {
    shape(name)["type"]
        .as_str()
        .unwrap_or_else(|| panic!("shape {name} has no type"))
}

fn bound(name: &str, key: &str) -> Option<i64> {
    shape(name).get(key).map(|v| {
        v.as_i64()
            .unwrap_or_else(|| panic!("{name}.{key} is not an integer"))
    })
}

fn is_union(name: &str) -> bool {
    shape(name)
        .get("union")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// `(member, target shape)` of a structure, in model (sorted) order.
fn members(name: &str) -> Vec<(&'static str, &'static str)> {
    shape(name)["members"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} has no members"))
        .iter()
        .map(|(m, spec)| (m.as_str(), spec["shape"].as_str().expect("member shape")))
        .collect()
}

fn member_target(name: &str, member: &str) -> &'static str {
    members(name)
        .into_iter()
        .find(|(m, _)| *m == member)
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("{name} has no member {member}"))
}

fn required(name: &str) -> Vec<&'static str> {
    shape(name)
        .get("required")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().expect("required name"))
                .collect()
        })
        .unwrap_or_default()
}

fn list_member(name: &str) -> &'static str {
    shape(name)["member"]["shape"]
        .as_str()
        .unwrap_or_else(|| panic!("list {name} has no member shape"))
}

fn enum_values(name: &str) -> Option<Vec<&'static str>> {
    shape(name).get("enum").map(|e| {
        e.as_array()
            .expect("enum is a list")
            .iter()
            .map(|v| v.as_str().expect("enum value"))
            .collect()
    })
}

fn pattern(name: &str) -> Option<regex::Regex> {
    shape(name)
        .get("pattern")
        .and_then(Value::as_str)
        .map(|p| regex::Regex::new(p).unwrap_or_else(|e| panic!("{name} pattern: {e}")))
}

/// `(operation, input shape)` for all operations.
fn operations() -> Vec<(&'static str, &'static str)> {
    MODEL["operations"]
        .as_object()
        .expect("operations")
        .iter()
        .map(|(op, o)| (op.as_str(), o["input"]["shape"].as_str().expect("input")))
        .collect()
}

fn children(name: &str) -> Vec<&'static str> {
    match kind(name) {
        "structure" => members(name).into_iter().map(|(_, t)| t).collect(),
        "list" => vec![list_member(name)],
        _ => vec![],
    }
}

/// Every shape reachable from `root` (itself included).
fn reachable_from(root: &str) -> BTreeSet<&'static str> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![shape_name(root)];
    while let Some(n) = todo.pop() {
        if seen.insert(n) {
            todo.extend(children(n));
        }
    }
    seen
}

/// The model's own `&'static str` for a shape name.
fn shape_name(name: &str) -> &'static str {
    MODEL["shapes"]
        .as_object()
        .expect("shapes")
        .keys()
        .find(|k| *k == name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("shape {name} is not in the model"))
}

/// Every shape reachable from any operation input.
fn reachable_from_inputs() -> BTreeSet<&'static str> {
    operations()
        .into_iter()
        .flat_map(|(_, input)| reachable_from(input))
        .collect()
}

// ---------------------------------------------------------------------------
// Value generators.
// ---------------------------------------------------------------------------

/// A string of `n` characters that matches both patterns of the model.
fn text_of_len(n: i64) -> String {
    "a".repeat(usize::try_from(n).expect("non-negative length"))
}

fn minimal_string(name: &str) -> Value {
    if let Some(values) = enum_values(name) {
        return json!(values[0]);
    }
    let mut len = bound(name, "min").unwrap_or(1).max(1);
    if let Some(max) = bound(name, "max") {
        len = len.min(max);
    }
    json!(text_of_len(len))
}

fn minimal_number(name: &str) -> Value {
    let mut n = 0;
    if let Some(min) = bound(name, "min") {
        n = n.max(min);
    }
    if let Some(max) = bound(name, "max") {
        n = n.min(max);
    }
    json!(n)
}

/// A minimal valid value of a shape: required members only, a union's first
/// member, lists of their minimum length.
fn minimal(name: &str) -> Value {
    match kind(name) {
        "structure" if is_union(name) => {
            let (m, t) = members(name)[0];
            json!({ m: minimal(t) })
        }
        "structure" => Value::Object(
            required(name)
                .into_iter()
                .map(|r| (r.to_string(), minimal(member_target(name, r))))
                .collect(),
        ),
        "list" => {
            let n = bound(name, "min").unwrap_or(0).max(0);
            Value::Array((0..n).map(|_| minimal(list_member(name))).collect())
        }
        "string" => minimal_string(name),
        "integer" | "long" => minimal_number(name),
        "boolean" => json!(true),
        "timestamp" => json!(0),
        other => panic!("shape {name} has unsupported type {other}"),
    }
}

/// A valid value with every member of every structure set and every list
/// holding at least one item. `choice` picks the member of a union (default:
/// the first one).
fn maximal(name: &str, choice: &BTreeMap<&str, &str>) -> Value {
    match kind(name) {
        "structure" if is_union(name) => {
            let m = choice.get(name).copied().unwrap_or(members(name)[0].0);
            json!({ m: maximal(member_target(name, m), choice) })
        }
        "structure" => Value::Object(
            members(name)
                .into_iter()
                .map(|(m, t)| (m.to_string(), maximal(t, choice)))
                .collect(),
        ),
        "list" => {
            let mut n = bound(name, "min").unwrap_or(0).max(1);
            if let Some(max) = bound(name, "max") {
                n = n.min(max);
            }
            Value::Array((0..n).map(|_| maximal(list_member(name), choice)).collect())
        }
        _ => minimal(name),
    }
}

// ---------------------------------------------------------------------------
// Places: where a shape sits under an operation input.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Member(&'static str),
    Index(usize),
}

/// One place a shape can appear in the input of an operation.
#[derive(Debug, Clone)]
struct Place {
    op: &'static str,
    input: &'static str,
    route: Vec<Step>,
    shape: &'static str,
}

impl Place {
    /// The JSON path `validate.rs` reports, e.g. `spec.listeners[0].portMapping.port`.
    fn path(&self) -> String {
        path_of(&self.route)
    }

    /// The minimal valid input of the operation, extended so this place
    /// exists, with `leaf` applied to the minimal value found here.
    fn input_with(&self, leaf: impl Fn(Value) -> Value) -> Value {
        build(self.input, &self.route, &leaf)
    }

    /// Like [`Place::input_with`], replacing the value here.
    fn input_set(&self, value: Value) -> Value {
        self.input_with(|_| value.clone())
    }

    /// `path` of a member of the structure here.
    fn member_path(&self, member: &str) -> String {
        let mut route = self.route.clone();
        route.push(Step::Member(shape_name_of_member(self.shape, member)));
        path_of(&route)
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path();
        let path = if path.is_empty() { "(input)" } else { &path };
        write!(f, "{} {} ({})", self.op, path, self.shape)
    }
}

fn shape_name_of_member(structure: &str, member: &str) -> &'static str {
    members(structure)
        .into_iter()
        .map(|(m, _)| m)
        .find(|m| *m == member)
        .unwrap_or_else(|| panic!("{structure} has no member {member}"))
}

fn path_of(route: &[Step]) -> String {
    let mut out = String::new();
    for step in route {
        match step {
            Step::Member(m) if out.is_empty() => out.push_str(m),
            Step::Member(m) => {
                out.push('.');
                out.push_str(m);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn build(name: &str, route: &[Step], leaf: &dyn Fn(Value) -> Value) -> Value {
    let Some((step, rest)) = route.split_first() else {
        return leaf(minimal(name));
    };
    match (kind(name), step) {
        ("structure", Step::Member(m)) => {
            let inner = build(member_target(name, m), rest, leaf);
            let mut obj = if is_union(name) {
                // A union holds exactly the member on the route.
                Map::new()
            } else {
                minimal(name).as_object().cloned().expect("structure")
            };
            obj.insert((*m).to_string(), inner);
            Value::Object(obj)
        }
        ("list", Step::Index(i)) => {
            let item = list_member(name);
            let mut items = minimal(name).as_array().cloned().expect("list");
            while items.len() <= *i {
                items.push(minimal(item));
            }
            items[*i] = build(item, rest, leaf);
            Value::Array(items)
        }
        (k, s) => panic!("cannot step {s:?} into {name} ({k})"),
    }
}

/// Every place of every shape under every operation input (lists are entered
/// through their first item).
fn places() -> Vec<Place> {
    fn walk(
        op: &'static str,
        input: &'static str,
        route: Vec<Step>,
        at: &'static str,
    ) -> Vec<Place> {
        let mut out = vec![Place {
            op,
            input,
            route: route.clone(),
            shape: at,
        }];
        match kind(at) {
            "structure" => {
                for (m, t) in members(at) {
                    let mut r = route.clone();
                    r.push(Step::Member(m));
                    out.extend(walk(op, input, r, t));
                }
            }
            "list" => {
                let mut r = route;
                r.push(Step::Index(0));
                out.extend(walk(op, input, r, list_member(at)));
            }
            _ => {}
        }
        out
    }
    operations()
        .into_iter()
        .flat_map(|(op, input)| walk(op, input, vec![], shape_name(input)))
        .collect()
}

// ---------------------------------------------------------------------------
// Constraints: what the model declares, and what the tests exercised.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A required member of a structure.
    Required,
    /// A union: none set, two set, each member alone.
    Union,
    /// A string's min or max length.
    Length,
    /// An enum: an unknown value, and each value of the set.
    Enum,
    /// A string pattern.
    Pattern,
    /// An integer or long min or max.
    Range,
    /// 32 bits for `integer`, 64 for `long`.
    Width,
    /// A list's min or max size.
    ListSize,
    /// A value of the wrong JSON type.
    Type,
}

const KINDS: [Kind; 9] = [
    Kind::Required,
    Kind::Union,
    Kind::Length,
    Kind::Enum,
    Kind::Pattern,
    Kind::Range,
    Kind::Width,
    Kind::ListSize,
    Kind::Type,
];

/// `(kind, "Shape constraint")`, e.g. `(Range, "PortNumber max")`.
type Constraint = (Kind, String);

/// Every constraint the model declares on shapes reachable from an operation
/// input, computed from the raw JSON without the place walk.
fn declared_constraints() -> BTreeSet<Constraint> {
    let mut out = BTreeSet::new();
    for name in reachable_from_inputs() {
        out.insert((Kind::Type, format!("{name} type")));
        match kind(name) {
            "structure" => {
                for r in required(name) {
                    out.insert((Kind::Required, format!("{name} required:{r}")));
                }
                if is_union(name) {
                    out.insert((Kind::Union, format!("{name} none")));
                    if members(name).len() > 1 {
                        out.insert((Kind::Union, format!("{name} many")));
                    }
                    for (m, _) in members(name) {
                        out.insert((Kind::Union, format!("{name} member:{m}")));
                    }
                }
            }
            "string" => {
                for key in ["min", "max"] {
                    if bound(name, key).is_some() {
                        out.insert((Kind::Length, format!("{name} {key}")));
                    }
                }
                if let Some(values) = enum_values(name) {
                    out.insert((Kind::Enum, format!("{name} unknown")));
                    for v in values {
                        out.insert((Kind::Enum, format!("{name} value:{v}")));
                    }
                }
                if pattern(name).is_some() {
                    out.insert((Kind::Pattern, format!("{name} pattern")));
                }
            }
            "integer" | "long" => {
                for key in ["min", "max"] {
                    if bound(name, key).is_some() {
                        out.insert((Kind::Range, format!("{name} {key}")));
                    }
                }
                out.insert((Kind::Width, format!("{name} {}", kind(name))));
            }
            "list" => {
                for key in ["min", "max"] {
                    if bound(name, key).is_some() {
                        out.insert((Kind::ListSize, format!("{name} {key}")));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The outcome of running checks: constraints exercised (a check counts once
/// it passed), cases run, and every failure.
#[derive(Default)]
struct Run {
    cases: BTreeMap<Kind, usize>,
    exercised: BTreeMap<Constraint, usize>,
    failures: Vec<String>,
    /// Inputs validation accepted, when asked to keep them.
    accepted: Option<Vec<(&'static str, Value)>>,
}

impl Run {
    fn keeping_accepted() -> Self {
        Run {
            accepted: Some(Vec::new()),
            ..Run::default()
        }
    }

    fn passed(&mut self, kind: Kind, what: &str) {
        *self.exercised.entry((kind, what.to_string())).or_default() += 1;
    }

    fn accept(&mut self, kind: Kind, what: &str, place: &Place, input: Value) {
        *self.cases.entry(kind).or_default() += 1;
        match validate_input(place.op, &input) {
            Ok(()) => {
                self.passed(kind, what);
                if let Some(acc) = &mut self.accepted {
                    acc.push((place.op, input));
                }
            }
            Err(e) => self.failures.push(format!(
                "[{kind:?} {what}] at {place}: expected valid, got error at '{}': {}\n  input: {input}",
                e.field, e.constraint
            )),
        }
    }

    fn reject(&mut self, kind: Kind, what: &str, place: &Place, input: Value, field: &str) {
        *self.cases.entry(kind).or_default() += 1;
        match validate_input(place.op, &input) {
            Err(e) if e.field == field => self.passed(kind, what),
            Err(e) => self.failures.push(format!(
                "[{kind:?} {what}] at {place}: expected error at '{field}', got error at '{}': {}\n  input: {input}",
                e.field, e.constraint
            )),
            Ok(()) => self.failures.push(format!(
                "[{kind:?} {what}] at {place}: expected error at '{field}', input was accepted\n  input: {input}"
            )),
        }
    }

    fn total_cases(&self) -> usize {
        self.cases.values().sum()
    }
}

/// Runs the checks of `kinds` at every place under every operation input.
fn run(kinds: &[Kind], keep_accepted: bool) -> Run {
    let mut run = if keep_accepted {
        Run::keeping_accepted()
    } else {
        Run::default()
    };
    for place in places() {
        for &k in kinds {
            check(&mut run, k, &place);
        }
    }
    run
}

fn check(run: &mut Run, k: Kind, place: &Place) {
    let name = place.shape;
    let path = place.path();
    match (k, kind(name)) {
        (Kind::Required, "structure") if !is_union(name) => {
            for r in required(name) {
                let what = format!("{name} required:{r}");
                let field = place.member_path(r);
                let removed = place.input_with(|mut v| {
                    v.as_object_mut().expect("structure").remove(r);
                    v
                });
                run.reject(k, &what, place, removed, &field);
                let nulled = place.input_with(|mut v| {
                    v[r] = Value::Null;
                    v
                });
                run.reject(k, &what, place, nulled, &field);
            }
        }
        (Kind::Union, "structure") if is_union(name) => {
            let ms = members(name);
            run.reject(
                k,
                &format!("{name} none"),
                place,
                place.input_set(json!({})),
                &path,
            );
            // Every member alone is valid...
            for (m, t) in &ms {
                let one = place.input_set(json!({ *m: minimal(t) }));
                run.accept(k, &format!("{name} member:{m}"), place, one);
            }
            // ...and any two together are not.
            for (i, (a, ta)) in ms.iter().enumerate() {
                for (b, tb) in ms.iter().skip(i + 1) {
                    let two = place.input_set(json!({ *a: minimal(ta), *b: minimal(tb) }));
                    run.reject(k, &format!("{name} many"), place, two, &path);
                }
            }
        }
        (Kind::Length, "string") => {
            let (min, max) = (bound(name, "min"), bound(name, "max"));
            if (min.is_some() || max.is_some()) && enum_values(name).is_some() {
                run.failures.push(format!(
                    "{name}: lengths on an enum are not handled by these tests"
                ));
                return;
            }
            if let Some(min) = min {
                let what = format!("{name} min");
                run.accept(k, &what, place, place.input_set(json!(text_of_len(min))));
                if min > 0 {
                    let short = place.input_set(json!(text_of_len(min - 1)));
                    run.reject(k, &what, place, short, &path);
                }
            }
            if let Some(max) = max {
                let what = format!("{name} max");
                run.accept(k, &what, place, place.input_set(json!(text_of_len(max))));
                let long = place.input_set(json!(text_of_len(max + 1)));
                run.reject(k, &what, place, long, &path);
            }
        }
        (Kind::Enum, "string") => {
            let Some(values) = enum_values(name) else {
                return;
            };
            for v in &values {
                run.accept(
                    k,
                    &format!("{name} value:{v}"),
                    place,
                    place.input_set(json!(v)),
                );
            }
            // Unknown values: made up, empty, and each value in the other case
            // (the set is case-sensitive).
            let mut unknown = vec!["NOT_A_VALUE".to_string(), String::new()];
            for v in &values {
                for other in [v.to_ascii_lowercase(), v.to_ascii_uppercase()] {
                    if !values.contains(&other.as_str()) {
                        unknown.push(other);
                    }
                }
            }
            for u in unknown {
                run.reject(
                    k,
                    &format!("{name} unknown"),
                    place,
                    place.input_set(json!(u)),
                    &path,
                );
            }
        }
        (Kind::Pattern, "string") => {
            let Some(re) = pattern(name) else {
                return;
            };
            let (min, max) = (bound(name, "min").unwrap_or(0), bound(name, "max"));
            let fits = |s: &str| {
                let n = s.chars().count() as i64;
                n >= min && max.is_none_or(|m| n <= m)
            };
            let what = format!("{name} pattern");
            // Values the test's own compilation of the pattern accepts...
            let good: Vec<&str> = ["a", "Z9", "a-b_c.d/e:f~!", "key=value", "a b", "a b "]
                .into_iter()
                .filter(|s| fits(s) && re.is_match(s))
                .collect();
            // ...and rejects, each of a valid length.
            let bad: Vec<&str> = [" ", " a", "a\tb", "é", "a\nb", "\u{7f}"]
                .into_iter()
                .filter(|s| fits(s) && !re.is_match(s))
                .collect();
            if good.is_empty() || bad.is_empty() {
                run.failures.push(format!(
                    "{name}: no sample values for pattern {re} (good {good:?}, bad {bad:?})"
                ));
                return;
            }
            assert!(
                good.contains(&"a") && bad.contains(&"é"),
                "{name}: {good:?} {bad:?}"
            );
            for s in good {
                run.accept(k, &what, place, place.input_set(json!(s)));
            }
            for s in bad {
                run.reject(k, &what, place, place.input_set(json!(s)), &path);
            }
        }
        (Kind::Range, "integer" | "long") => {
            if let Some(min) = bound(name, "min") {
                let what = format!("{name} min");
                run.accept(k, &what, place, place.input_set(json!(min)));
                run.reject(k, &what, place, place.input_set(json!(min - 1)), &path);
            }
            if let Some(max) = bound(name, "max") {
                let what = format!("{name} max");
                run.accept(k, &what, place, place.input_set(json!(max)));
                run.reject(k, &what, place, place.input_set(json!(max + 1)), &path);
            }
        }
        (Kind::Width, "integer") => {
            let what = format!("{name} integer");
            for n in [i64::from(i32::MAX) + 1, i64::from(i32::MIN) - 1, i64::MAX] {
                run.reject(k, &what, place, place.input_set(json!(n)), &path);
            }
            // Past i64: not an integer this service can hold.
            run.reject(k, &what, place, place.input_set(json!(u64::MAX)), &path);
        }
        (Kind::Width, "long") => {
            let what = format!("{name} long");
            let (min, max) = (bound(name, "min"), bound(name, "max"));
            // Values past 32 bits are fine for a long, within its range.
            for n in [i64::from(i32::MAX) + 1, i64::MAX] {
                if max.is_none_or(|m| n <= m) && min.is_none_or(|m| n >= m) {
                    run.accept(k, &what, place, place.input_set(json!(n)));
                } else {
                    run.reject(k, &what, place, place.input_set(json!(n)), &path);
                }
            }
            run.reject(k, &what, place, place.input_set(json!(u64::MAX)), &path);
        }
        (Kind::ListSize, "list") => {
            let item = list_member(name);
            let items = |n: i64| Value::Array((0..n).map(|_| minimal(item)).collect());
            if let Some(min) = bound(name, "min") {
                let what = format!("{name} min");
                run.accept(k, &what, place, place.input_set(items(min)));
                if min > 0 {
                    run.reject(k, &what, place, place.input_set(items(min - 1)), &path);
                }
            }
            if let Some(max) = bound(name, "max") {
                let what = format!("{name} max");
                run.accept(k, &what, place, place.input_set(items(max)));
                run.reject(k, &what, place, place.input_set(items(max + 1)), &path);
            }
        }
        (Kind::Type, shape_kind) => {
            let what = format!("{name} type");
            if place.route.is_empty() {
                // The input itself: `validate.rs` names it `(request)`.
                for w in [json!("x"), json!([]), json!(1)] {
                    run.reject(k, &what, place, w, "(request)");
                }
                run.accept(k, &what, place, minimal(name));
                return;
            }
            let wrong: Vec<Value> = match shape_kind {
                "structure" => vec![json!("x"), json!(1), json!([]), json!(true)],
                "list" => vec![json!("x"), json!({}), json!(1)],
                "string" => vec![json!(1), json!(true), json!({}), json!([])],
                "integer" | "long" => vec![json!("1"), json!(1.5), json!(true), json!({})],
                "boolean" => vec![json!("true"), json!(1), json!({})],
                "timestamp" => vec![json!("x"), json!(true)],
                other => panic!("{name}: unsupported type {other}"),
            };
            for w in wrong {
                run.reject(k, &what, place, place.input_set(w), &path);
            }
            // The valid value at this place is accepted (this also walks
            // each union alternative on the way here).
            run.accept(k, &what, place, place.input_with(|v| v));
            // In a list, an error in a later item names that item.
            if let (Some(Step::Index(0)), Some(list)) = (place.route.last(), list_shape_of(place)) {
                if bound(list, "max").is_none_or(|m| m >= 2) {
                    let mut route = place.route.clone();
                    route.pop();
                    let second = build(place.input, &route, &|mut v| {
                        let arr = v.as_array_mut().expect("list");
                        while arr.len() < 2 {
                            arr.push(minimal(name));
                        }
                        arr[1] = wrong_type_for(shape_kind);
                        v
                    });
                    let mut field_route = route;
                    field_route.push(Step::Index(1));
                    run.reject(k, &what, place, second, &path_of(&field_route));
                }
            }
        }
        _ => {}
    }
}

/// A value of the wrong type for a shape of kind `k`.
fn wrong_type_for(k: &str) -> Value {
    match k {
        "string" => json!(1),
        _ => json!("x"),
    }
}

/// The list shape holding the item at `place`, if it is a list item.
fn list_shape_of(place: &Place) -> Option<&'static str> {
    let Some(Step::Index(_)) = place.route.last() else {
        return None;
    };
    let mut at = shape_name(place.input);
    for step in &place.route[..place.route.len() - 1] {
        at = match step {
            Step::Member(m) => member_target(at, m),
            Step::Index(_) => list_member(at),
        };
    }
    (kind(at) == "list").then_some(at)
}

/// Asserts the run had no failures and exercised every declared constraint
/// of `kinds`; prints the counts.
fn assert_complete(run: &Run, kinds: &[Kind]) {
    let declared: BTreeSet<Constraint> = declared_constraints()
        .into_iter()
        .filter(|(k, _)| kinds.contains(k))
        .collect();
    for k in kinds {
        let d = declared.iter().filter(|(dk, _)| dk == k).count();
        let e = run.exercised.keys().filter(|(ek, _)| ek == k).count();
        println!(
            "{k:?}: {d} constraints declared on shapes reachable from inputs, {e} exercised, {} cases",
            run.cases.get(k).copied().unwrap_or(0)
        );
    }
    assert!(
        run.failures.is_empty(),
        "{} of {} cases failed; first ones:\n{}",
        run.failures.len(),
        run.total_cases(),
        run.failures
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let missing: Vec<&Constraint> = declared
        .iter()
        .filter(|c| !run.exercised.contains_key(*c))
        .collect();
    assert!(
        missing.is_empty(),
        "constraints of the model never exercised: {missing:?}"
    );
    let unexpected: Vec<&Constraint> = run
        .exercised
        .keys()
        .filter(|c| !declared.contains(*c))
        .collect();
    assert!(
        unexpected.is_empty(),
        "exercised constraints the model does not declare: {unexpected:?}"
    );
}

// ---------------------------------------------------------------------------
// Typed structs.
// ---------------------------------------------------------------------------

fn round_trip<T: DeserializeOwned + Serialize>(spec: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(spec.clone()).map_err(|e| {
        format!(
            "does not deserialize into {}: {e}",
            std::any::type_name::<T>()
        )
    })?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("does not serialize: {e}"))?;
    if back == *spec {
        Ok(())
    } else {
        Err(format!(
            "round trip changed it:\n  sent {spec}\n  back {back}"
        ))
    }
}

/// The resource an operation with a `spec` acts on, and its Spec type name.
fn spec_resource(op: &str) -> Option<&str> {
    op.strip_prefix("Create")
        .or_else(|| op.strip_prefix("Update"))
}

fn typed_round_trip(op: &str, spec: &Value) -> Result<(), String> {
    use weft_model::shapes::*;
    match spec_resource(op) {
        Some("Mesh") => round_trip::<MeshSpec>(spec),
        Some("VirtualNode") => round_trip::<VirtualNodeSpec>(spec),
        Some("VirtualService") => round_trip::<VirtualServiceSpec>(spec),
        Some("VirtualRouter") => round_trip::<VirtualRouterSpec>(spec),
        Some("Route") => round_trip::<RouteSpec>(spec),
        Some("VirtualGateway") => round_trip::<VirtualGatewaySpec>(spec),
        Some("GatewayRoute") => round_trip::<GatewayRouteSpec>(spec),
        _ => Err(format!("no generated Spec type is mapped for {op}")),
    }
}

/// Every union reachable from `root` paired with each of its members.
fn union_alternatives(root: &str) -> Vec<(&'static str, &'static str)> {
    reachable_from(root)
        .into_iter()
        .filter(|n| kind(n) == "structure" && is_union(n))
        .flat_map(|u| members(u).into_iter().map(move |(m, _)| (u, m)))
        .collect()
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[test]
fn the_model_has_38_operations_and_333_shapes() {
    assert_eq!(operations().len(), 38);
    assert_eq!(MODEL["shapes"].as_object().unwrap().len(), 333);
}

#[test]
fn the_model_uses_no_trait_these_tests_do_not_know() {
    // A constraint trait added to the model (say `uniqueItems`) must not go
    // unchecked: every key of every shape and member is one handled here.
    let shape_keys: BTreeMap<&str, &[&str]> = BTreeMap::from([
        (
            "structure",
            &[
                "type",
                "members",
                "required",
                "union",
                "documentation",
                "payload",
                "error",
                "exception",
                "retryable",
                "fault",
            ][..],
        ),
        (
            "string",
            &["type", "min", "max", "enum", "pattern", "documentation"][..],
        ),
        (
            "list",
            &["type", "member", "min", "max", "documentation"][..],
        ),
        (
            "integer",
            &["type", "min", "max", "box", "documentation"][..],
        ),
        ("long", &["type", "min", "max", "box", "documentation"][..]),
        ("boolean", &["type", "box", "documentation"][..]),
        ("timestamp", &["type", "documentation"][..]),
    ]);
    let member_keys = [
        "shape",
        "documentation",
        "location",
        "locationName",
        "idempotencyToken",
    ];
    let inputs = reachable_from_inputs();
    for (name, s) in MODEL["shapes"].as_object().unwrap() {
        let k = kind(name);
        let known = shape_keys
            .get(k)
            .unwrap_or_else(|| panic!("{name}: unknown shape type {k}"));
        for key in s.as_object().unwrap().keys() {
            assert!(known.contains(&key.as_str()), "{name}: unknown trait {key}");
        }
        if inputs.contains(name.as_str()) {
            // Exception traits only make sense on outputs.
            for key in ["error", "exception", "fault", "retryable", "payload"] {
                assert!(s.get(key).is_none(), "{name} (an input) has {key}");
            }
            // Enums carry no length or pattern (the tests build enum values
            // from the set alone).
            if s.get("enum").is_some() {
                for key in ["min", "max", "pattern"] {
                    assert!(s.get(key).is_none(), "enum {name} has {key}");
                }
            }
        }
        for (m, spec) in s
            .get("members")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            for key in spec.as_object().unwrap().keys() {
                assert!(
                    member_keys.contains(&key.as_str()),
                    "{name}.{m}: unknown trait {key}"
                );
            }
        }
    }
}

#[test]
fn every_operation_accepts_its_minimal_input() {
    for (op, input) in operations() {
        let value = minimal(input);
        if let Err(e) = validate_input(op, &value) {
            panic!("{op}: minimal input {value} rejected: {e}");
        }
        println!("{op}: {value}");
    }
}

#[test]
fn an_input_that_is_not_an_object_is_rejected() {
    for (op, _) in operations() {
        for v in [json!("x"), json!([]), json!(1), Value::Null] {
            let e = validate_input(op, &v).expect_err(op);
            assert_eq!(e.field, "(request)", "{op} {v}");
        }
    }
}

#[test]
fn every_place_in_every_input_accepts_its_minimal_valid_value() {
    // Each place is reached through every union alternative on its way, so
    // this accepts every member of every union, alone.
    let places = places();
    let mut failures = Vec::new();
    for place in &places {
        let input = place.input_with(|v| v);
        if let Err(e) = validate_input(place.op, &input) {
            failures.push(format!("{place}: {e}\n  input: {input}"));
        }
    }
    println!("{} places under the 38 operation inputs", places.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_required_member_in_the_model_is_enforced_at_its_own_path() {
    let kinds = [Kind::Required];
    assert_complete(&run(&kinds, false), &kinds);
}

#[test]
fn every_union_in_the_model_requires_exactly_one_member() {
    let kinds = [Kind::Union];
    assert_complete(&run(&kinds, false), &kinds);
}

#[test]
fn every_string_length_bound_in_the_model_is_enforced() {
    let kinds = [Kind::Length];
    assert_complete(&run(&kinds, false), &kinds);
}

#[test]
fn every_enum_in_the_model_rejects_an_unknown_value_and_accepts_each_of_its_values() {
    let kinds = [Kind::Enum];
    assert_complete(&run(&kinds, false), &kinds);
}

#[test]
fn both_patterns_in_the_model_are_enforced() {
    let kinds = [Kind::Pattern];
    let r = run(&kinds, false);
    assert_complete(&r, &kinds);
    assert_eq!(r.exercised.len(), 2, "{:?}", r.exercised.keys());
}

#[test]
fn every_integer_and_long_range_in_the_model_is_enforced_at_its_bounds() {
    let kinds = [Kind::Range];
    assert_complete(&run(&kinds, false), &kinds);
}

#[test]
fn integers_hold_32_bits_and_longs_64() {
    let kinds = [Kind::Width];
    assert_complete(&run(&kinds, false), &kinds);
}

#[test]
fn every_list_size_bound_in_the_model_is_enforced() {
    let kinds = [Kind::ListSize];
    assert_complete(&run(&kinds, false), &kinds);
}

#[test]
fn every_member_rejects_a_value_of_the_wrong_type() {
    let kinds = [Kind::Type];
    assert_complete(&run(&kinds, false), &kinds);
}

#[test]
fn every_constraint_reachable_from_an_operation_input_is_exercised() {
    let r = run(&KINDS, false);
    assert_complete(&r, &KINDS);
    let shapes: BTreeSet<&str> = r
        .exercised
        .keys()
        .filter_map(|(_, c)| c.split(' ').next())
        .collect();
    println!(
        "total: {} constraints on {} shapes reachable from inputs ({} in the model), {} cases, {} places",
        r.exercised.len(),
        shapes.len(),
        MODEL["shapes"].as_object().unwrap().len(),
        r.total_cases(),
        places().len()
    );
    assert_eq!(shapes, reachable_from_inputs());
}

#[test]
fn every_operation_with_a_spec_maps_to_its_generated_spec_type() {
    let mut n = 0;
    for (op, input) in operations() {
        let Some((_, target)) = members(input).into_iter().find(|(m, _)| *m == "spec") else {
            continue;
        };
        n += 1;
        let resource = spec_resource(op).unwrap_or_else(|| panic!("{op} has a spec"));
        assert_eq!(target, format!("{resource}Spec"), "{op}");
        let spec = minimal(input)
            .get("spec")
            .cloned()
            .unwrap_or_else(|| minimal(target));
        if let Err(e) = typed_round_trip(op, &spec) {
            panic!("{op}: {e}");
        }
    }
    assert_eq!(n, 14, "Create/Update of 7 resources carry a spec");
}

#[test]
fn every_spec_validation_accepts_deserializes_into_its_type_and_round_trips() {
    // Every input accepted by any check (boundary lengths and values, each
    // enum value, each union alternative, lists at their max size).
    let r = run(&KINDS, true);
    assert!(r.failures.is_empty(), "{}", r.failures.len());
    let mut specs = 0;
    let mut failures = Vec::new();
    for (op, input) in r.accepted.as_deref().unwrap_or_default() {
        if let Some(spec) = input.get("spec") {
            specs += 1;
            if let Err(e) = typed_round_trip(op, spec) {
                failures.push(format!("{op}: {e}"));
            }
        }
    }
    println!("{specs} accepted specs deserialized and round-tripped");
    assert!(specs > 0);
    assert!(
        failures.is_empty(),
        "{} failed; first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn a_maximal_input_with_every_member_set_is_valid_and_its_spec_round_trips() {
    // Every member present, so a member the generated types lost or renamed
    // shows up; once per union alternative reachable from the input.
    let mut inputs = 0;
    for (op, input) in operations() {
        let mut choices = vec![BTreeMap::new()];
        choices.extend(
            union_alternatives(input)
                .into_iter()
                .map(|(u, m)| BTreeMap::from([(u, m)])),
        );
        for choice in choices {
            let value = maximal(input, &choice);
            inputs += 1;
            if let Err(e) = validate_input(op, &value) {
                panic!("{op} {choice:?}: maximal input rejected: {e}\n  input: {value}");
            }
            if let Some(spec) = value.get("spec") {
                if let Err(e) = typed_round_trip(op, spec) {
                    panic!("{op} {choice:?}: {e}");
                }
            }
        }
    }
    println!("{inputs} maximal inputs validated");
}
