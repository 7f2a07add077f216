//! Generates Rust types for every shape of the App Mesh API model
//! (`appmesh-2019-01-25.service.json`, the botocore model) so the types cannot
//! drift from the contract. Constraint checks are not generated: they are
//! interpreted from the same file at run time (`validate.rs`), which keeps them
//! complete by construction.
//!
//! Mapping:
//! - structure            → `struct` with serde renames; optional members are `Option`
//! - structure + `union`  → externally tagged `enum` (exactly one member on the wire)
//! - string + `enum`      → `enum` with the wire values as serde renames
//! - other string         → `String`; integer → `i32`; long → `i64`;
//!   boolean → `bool`; timestamp → `f64` (epoch seconds, as rest-json encodes it)
//! - list                 → `Vec<T>`
//! - exception shapes are skipped (errors are built by the API crate).
//! - the large optional members in [`BOXED`] are `Option<Box<T>>`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::Value;

const MODEL: &str = "appmesh-2019-01-25.service.json";

/// Optional members held in a `Box`: `(structure, member)`. A struct holds its
/// optional members inline, so a route spec with one of its four route kinds
/// set was 896 bytes and a backend without a client policy 160. The control
/// plane holds every route and every node's backends of a mesh it serves; a
/// heap profile of a 1,000-node mesh found these two the largest part of it.
const BOXED: &[(&str, &str)] = &[
    ("RouteSpec", "grpcRoute"),
    ("RouteSpec", "http2Route"),
    ("RouteSpec", "httpRoute"),
    ("RouteSpec", "tcpRoute"),
    ("GatewayRouteSpec", "grpcRoute"),
    ("GatewayRouteSpec", "http2Route"),
    ("GatewayRouteSpec", "httpRoute"),
    ("VirtualServiceBackend", "clientPolicy"),
];

const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    if KEYWORDS.contains(&out.as_str()) {
        format!("r#{out}")
    } else {
        out
    }
}

fn variant(value: &str) -> String {
    value
        .split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut cs = p.chars();
            match cs.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &cs.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect()
}

/// A union member (`virtualNode`) as a variant name (`VirtualNode`).
fn union_variant(member: &str) -> String {
    let mut cs = member.chars();
    match cs.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + cs.as_str(),
        None => String::new(),
    }
}

fn doc_line(shape: &Value) -> String {
    // First sentence of the model's HTML documentation, tags stripped.
    let raw = shape
        .get("documentation")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut text = String::new();
    let mut in_tag = false;
    for c in raw.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let first = match text.find(". ") {
        Some(i) => &text[..=i],
        None => text.as_str(),
    };
    first.replace('[', "\\[").replace(']', "\\]")
}

fn rust_type(shapes: &BTreeMap<String, Value>, name: &str) -> String {
    let shape = &shapes[name];
    match shape["type"].as_str().unwrap_or("") {
        "structure" => name.to_string(),
        "list" => {
            let member = shape["member"]["shape"].as_str().unwrap_or("");
            format!("Vec<{}>", rust_type(shapes, member))
        }
        "string" if shape.get("enum").is_some() => name.to_string(),
        "string" => "String".into(),
        "integer" => "i32".into(),
        "long" => "i64".into(),
        "boolean" => "bool".into(),
        "timestamp" => "f64".into(),
        other => panic!("unsupported shape type {other} for {name}"),
    }
}

fn main() {
    println!("cargo:rerun-if-changed={MODEL}");
    println!("cargo:rerun-if-changed=build.rs");
    let text = std::fs::read_to_string(MODEL).unwrap_or_else(|e| panic!("read {MODEL}: {e}"));
    let model: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {MODEL}: {e}"));
    let shapes: BTreeMap<String, Value> = model["shapes"]
        .as_object()
        .unwrap_or_else(|| panic!("no shapes"))
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let mut out = String::new();
    out.push_str(
        "// @generated by build.rs from appmesh-2019-01-25.service.json. Do not edit.\n\n",
    );
    for (name, shape) in &shapes {
        let doc = doc_line(shape);
        // Some shapes have no documentation; an empty `///` fails clippy's
        // `empty_docs`.
        let doc = if doc.is_empty() {
            format!("`{name}` (undocumented in the model).")
        } else {
            doc
        };
        let kind = shape["type"].as_str().unwrap_or("");
        if shape.get("exception").is_some() {
            continue;
        }
        match kind {
            "structure" => {
                let members = shape["members"].as_object().cloned().unwrap_or_default();
                let required: BTreeSet<String> = shape
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let is_union = shape.get("union").and_then(Value::as_bool).unwrap_or(false);
                let _ = writeln!(out, "/// {doc}");
                if is_union {
                    let _ = writeln!(
                        out,
                        "///\n/// A union: exactly one member is set on the wire."
                    );
                    let _ = writeln!(
                        out,
                        "#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]"
                    );
                    let _ = writeln!(out, "pub enum {name} {{");
                    for (member, spec) in &members {
                        let ty = rust_type(&shapes, spec["shape"].as_str().unwrap_or(""));
                        let _ = writeln!(out, "    /// `{member}`");
                        let _ = writeln!(out, "    #[serde(rename = \"{member}\")]");
                        let _ = writeln!(out, "    {}({ty}),", union_variant(member));
                    }
                    let _ = writeln!(out, "}}\n");
                } else {
                    let all_optional = required.is_empty();
                    let derive_default = if all_optional { ", Default" } else { "" };
                    let _ = writeln!(
                        out,
                        "#[derive(Debug, Clone, PartialEq{derive_default}, serde::Serialize, serde::Deserialize)]"
                    );
                    let _ = writeln!(out, "pub struct {name} {{");
                    for (member, spec) in &members {
                        let ty = rust_type(&shapes, spec["shape"].as_str().unwrap_or(""));
                        let field = snake(member);
                        let _ = writeln!(out, "    /// `{member}`");
                        if required.contains(member) {
                            let _ = writeln!(out, "    #[serde(rename = \"{member}\")]");
                            let _ = writeln!(out, "    pub {field}: {ty},");
                        } else {
                            let _ = writeln!(
                                out,
                                "    #[serde(rename = \"{member}\", default, skip_serializing_if = \"Option::is_none\")]"
                            );
                            if BOXED.contains(&(name.as_str(), member.as_str())) {
                                let _ = writeln!(out, "    pub {field}: Option<Box<{ty}>>,");
                            } else {
                                let _ = writeln!(out, "    pub {field}: Option<{ty}>,");
                            }
                        }
                    }
                    let _ = writeln!(out, "}}\n");
                }
            }
            "string" if shape.get("enum").is_some() => {
                let values: Vec<String> = shape["enum"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let variants: BTreeSet<String> = values.iter().map(|v| variant(v)).collect();
                assert_eq!(variants.len(), values.len(), "variant collision in {name}");
                let _ = writeln!(out, "/// {doc}");
                let _ = writeln!(
                    out,
                    "#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]"
                );
                let _ = writeln!(out, "pub enum {name} {{");
                for v in &values {
                    let _ = writeln!(out, "    /// `{v}`");
                    let _ = writeln!(out, "    #[serde(rename = \"{v}\")]");
                    let _ = writeln!(out, "    {},", variant(v));
                }
                let _ = writeln!(out, "}}\n");
                let _ = writeln!(out, "impl {name} {{");
                let _ = writeln!(out, "    /// Every value, in model order.");
                let _ = write!(out, "    pub const ALL: &'static [{name}] = &[");
                for v in &values {
                    let _ = write!(out, "{name}::{}, ", variant(v));
                }
                let _ = writeln!(out, "];");
                let _ = writeln!(out, "    /// The value as it appears on the wire.");
                let _ = writeln!(out, "    pub fn as_str(&self) -> &'static str {{");
                let _ = writeln!(out, "        match self {{");
                for v in &values {
                    let _ = writeln!(out, "            {name}::{} => \"{v}\",", variant(v));
                }
                let _ = writeln!(out, "        }}\n    }}\n}}\n");
            }
            _ => {}
        }
    }
    let dest =
        PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("shapes.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("write {}: {e}", dest.display()));
}
