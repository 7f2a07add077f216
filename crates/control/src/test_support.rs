//! Stored records for the unit tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::de::DeserializeOwned;
use serde_json::json;

/// A typed resource from its JSON shape.
pub(crate) fn data<T: DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// Resource metadata as the API stores it.
pub(crate) fn meta() -> serde_json::Value {
    json!({"arn": "a", "createdAt": 0, "lastUpdatedAt": 0, "meshOwner": "0", "resourceOwner": "0", "uid": "u", "version": 1})
}

/// A stored record (`StoredRecord`) of `data`, as the store holds it.
pub(crate) fn record(data: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"data": data, "tags": []})).unwrap()
}
