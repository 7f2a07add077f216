//! ListOperations: the recorded asynchronous operations, filtered.

use serde_json::{json, Value};

use super::{filters_allowing, Filter, RegistryService};
use crate::error::RegistryError;
use crate::keys;
use crate::records::OperationRecord;

/// The conditions each ListOperations filter supports, as the model documents them.
fn check(filter: &Filter) -> Result<(), RegistryError> {
    let allowed: &[&str] = match filter.name.as_str() {
        "NAMESPACE_ID" | "SERVICE_ID" => &["EQ"],
        "STATUS" | "TYPE" => &["EQ", "IN"],
        "UPDATE_DATE" => &["BETWEEN"],
        _ => &[],
    };
    if allowed.contains(&filter.condition.as_str()) {
        Ok(())
    } else {
        Err(RegistryError::InvalidInput(format!(
            "Condition {} is not supported for filter {}",
            filter.condition, filter.name
        )))
    }
}

/// An UPDATE_DATE bound: Unix seconds (fractions allowed).
fn seconds(value: &str) -> Result<f64, RegistryError> {
    value.trim().parse::<f64>().map_err(|_| {
        RegistryError::InvalidInput(format!(
            "UPDATE_DATE takes Unix times in seconds, got \"{value}\""
        ))
    })
}

impl RegistryService {
    pub(super) async fn list_operations(&self, input: &Value) -> Result<Value, RegistryError> {
        let filters = filters_allowing(input, &["EQ", "IN", "BETWEEN"])?;
        let mut dates = None;
        for f in &filters {
            check(f)?;
            if f.name == "UPDATE_DATE" {
                dates = Some((seconds(&f.values[0])?, seconds(&f.values[1])?));
            }
        }
        let (page, next) = self
            .page::<OperationRecord>(input, keys::OPERATIONS, |op| {
                filters.iter().all(|f| match f.name.as_str() {
                    "NAMESPACE_ID" => op.targets.get("NAMESPACE").is_some_and(|t| f.matches(t)),
                    "SERVICE_ID" => op.targets.get("SERVICE").is_some_and(|t| f.matches(t)),
                    // Every operation has completed; the docs also spell it SUCCEED.
                    "STATUS" => f.matches("SUCCESS") || f.matches("SUCCEED"),
                    "TYPE" => f.matches(&op.kind),
                    "UPDATE_DATE" => dates.is_some_and(|(from, to)| from <= op.at && op.at <= to),
                    _ => false,
                })
            })
            .await?;
        let list: Vec<Value> = page
            .iter()
            .map(|op| json!({ "Id": op.id, "Status": "SUCCESS" }))
            .collect();
        let mut out = json!({ "Operations": list });
        if let Some(t) = next {
            out["NextToken"] = json!(t);
        }
        Ok(out)
    }
}
