//! The last versions of each resource, kept for the dashboard's history view (App Mesh keeps
//! none): an update writes the record it replaces under `hist/<resource key>/<version>` in the
//! same transaction, and drops the version [`keys::HISTORY_KEPT`] older; a delete drops them all.
//! Kept apart from the write paths so that they add one line each.

use bytes::Bytes;
use weft_model::keys;
use weft_store::Op;

/// The `version` of a resource's `metadata` JSON, if it has one.
pub(super) fn version(metadata: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Meta {
        version: i64,
    }
    serde_json::from_slice::<Meta>(metadata)
        .ok()
        .map(|m| m.version)
}

/// The ops that keep `replaced` (the stored record an update replaces, at `version`) and drop
/// the version that falls out of the kept window.
pub(super) fn keep(key: &str, replaced: &Bytes, version: Option<i64>) -> Vec<Op> {
    let Some(version) = version else {
        return Vec::new();
    };
    let mut ops = vec![Op::Put(keys::history(key, version), replaced.clone())];
    let dropped = version - keys::HISTORY_KEPT;
    if dropped >= 1 {
        ops.push(Op::Delete(keys::history(key, dropped)));
    }
    ops
}

/// The ops that drop every kept version of a resource deleted at `version`.
pub(super) fn forget(key: &str, version: Option<i64>) -> Vec<Op> {
    let Some(version) = version else {
        return Vec::new();
    };
    (version - keys::HISTORY_KEPT..version)
        .filter(|v| *v >= 1)
        .map(|v| Op::Delete(keys::history(key, v)))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_update_keeps_the_replaced_version_and_drops_the_one_out_of_the_window() {
        let record = Bytes::from_static(b"{}");
        let ops = keep("res/apps/vn/a", &record, Some(11));
        assert_eq!(
            ops,
            vec![
                Op::Put("hist/res/apps/vn/a/000000000011".into(), record.clone()),
                Op::Delete("hist/res/apps/vn/a/000000000001".into()),
            ]
        );
        assert_eq!(keep("res/apps/vn/a", &record, Some(2)).len(), 1);
        assert_eq!(version(br#"{"arn":"x","version":7}"#), Some(7));
    }

    #[test]
    fn a_delete_drops_every_kept_version() {
        let ops = forget("res/apps/vn/a", Some(3));
        assert_eq!(
            ops,
            vec![
                Op::Delete("hist/res/apps/vn/a/000000000001".into()),
                Op::Delete("hist/res/apps/vn/a/000000000002".into()),
            ]
        );
        assert_eq!(forget("res/apps/vn/a", Some(30)).len(), 10);
    }
}
