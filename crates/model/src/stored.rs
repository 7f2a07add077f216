//! How a resource is stored: the `…Data` shape the API returns (with its
//! metadata and status), plus its tags, as JSON under its key (see [`crate::keys`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::shapes::TagRef;

/// One stored App Mesh resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// The resource as `Describe…` returns it (`MeshData`, `VirtualNodeData`, …).
    pub data: Value,
    /// Its tags, in the order they were added.
    #[serde(default)]
    pub tags: Vec<TagRef>,
}
