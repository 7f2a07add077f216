//! Stored records as raw JSON: reading the members a write or a List needs
//! borrowed from the stored bytes, and writing records and answers from
//! members that are already JSON text, so that a spec is copied as it is and
//! never parsed into a tree or serialized twice.
//!
//! Objects are written with their members in name order, the order a
//! `serde_json` map serializes in, so a record reads the same whichever path
//! wrote it.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use weft_model::kind::{Kind, ResourceId};
use weft_model::StoredRecord as Record;
use weft_store::KeyValue;

use crate::error::ApiError;

/// The part of a stored record a List answer needs, borrowed from the
/// stored bytes: each member is kept as its raw JSON text and copied to the
/// answer as is. The spec and tags are skipped unparsed.
#[derive(Deserialize)]
pub(super) struct Listed<'a> {
    #[serde(borrow)]
    pub(super) data: ListedData<'a>,
}

/// Names and metadata of a stored resource, as raw JSON; every other member
/// is skipped.
#[derive(Deserialize)]
pub(super) struct ListedData<'a> {
    #[serde(rename = "meshName", borrow)]
    mesh_name: Option<&'a RawValue>,
    #[serde(rename = "virtualNodeName", borrow)]
    virtual_node_name: Option<&'a RawValue>,
    #[serde(rename = "virtualServiceName", borrow)]
    virtual_service_name: Option<&'a RawValue>,
    #[serde(rename = "virtualRouterName", borrow)]
    virtual_router_name: Option<&'a RawValue>,
    #[serde(rename = "routeName", borrow)]
    route_name: Option<&'a RawValue>,
    #[serde(rename = "virtualGatewayName", borrow)]
    virtual_gateway_name: Option<&'a RawValue>,
    #[serde(rename = "gatewayRouteName", borrow)]
    gateway_route_name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: RawMembers<'a>,
}

/// The members of a JSON object in their stored order, each value as raw
/// JSON text borrowed from the input.
#[derive(Default)]
pub(super) struct RawMembers<'a>(pub(super) Vec<(Cow<'a, str>, &'a RawValue)>);

/// A member name, borrowed unless it had to be unescaped.
struct MemberName<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for MemberName<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MemberName<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawMembers<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawMembers<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((name, value)) =
                    map.next_entry::<MemberName<'de>, &'de RawValue>()?
                {
                    members.push((name.0, value));
                }
                Ok(RawMembers(members))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> ListedData<'a> {
    /// The name member called `member` (`virtualNodeName`, …), if present.
    fn name(&self, member: &str) -> Option<&'a RawValue> {
        match member {
            "meshName" => self.mesh_name,
            "virtualNodeName" => self.virtual_node_name,
            "virtualServiceName" => self.virtual_service_name,
            "virtualRouterName" => self.virtual_router_name,
            "routeName" => self.route_name,
            "virtualGatewayName" => self.virtual_gateway_name,
            "gatewayRouteName" => self.gateway_route_name,
            _ => None,
        }
    }
}

/// A stored record split into its members, each kept as raw JSON borrowed
/// from the stored bytes: what a write that changes a few members needs.
#[derive(Deserialize)]
pub(super) struct StoredParts<'a> {
    #[serde(borrow)]
    pub(super) data: RawMembers<'a>,
    #[serde(borrow, default)]
    pub(super) tags: Option<&'a RawValue>,
}

impl<'a> RawMembers<'a> {
    /// The last member called `name`, as a JSON map would keep it.
    pub(super) fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// The JSON text of `value`.
pub(super) fn json_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::Internal(format!("cannot encode: {e}")))
}

/// Appends `value` to `out` as JSON.
pub(super) fn write_json<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), ApiError> {
    serde_json::to_writer(out, value)
        .map_err(|e| ApiError::Internal(format!("cannot encode answer: {e}")))
}

/// Writes a JSON object whose member values are already JSON text, members
/// in name order (the order a `serde_json` map serializes in, so records
/// read the same whichever path wrote them); of members with the same name
/// the last one given wins.
pub(super) fn write_object(
    out: &mut Vec<u8>,
    mut members: Vec<(&str, &[u8])>,
) -> Result<(), ApiError> {
    // Stable: equal names keep the order they were given in.
    members.sort_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    let mut first = true;
    for (i, (name, value)) in members.iter().enumerate() {
        if members.get(i + 1).is_some_and(|next| next.0 == *name) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_json(out, name)?;
        out.push(b':');
        out.extend_from_slice(value);
    }
    out.push(b'}');
    Ok(())
}

/// The object `members` with `changes` set: a member named in `changes`
/// takes its new value, one not there is added; `capacity` bytes are
/// reserved for the result.
pub(super) fn with_members(
    members: &RawMembers<'_>,
    changes: &[(&str, &[u8])],
    capacity: usize,
) -> Result<Vec<u8>, ApiError> {
    let mut all: Vec<(&str, &[u8])> = members
        .0
        .iter()
        .map(|(name, value)| (name.as_ref(), value.get().as_bytes()))
        .collect();
    all.extend_from_slice(changes);
    let mut out = Vec::with_capacity(capacity);
    write_object(&mut out, all)?;
    Ok(out)
}

/// The `metadata` of an updated resource, from the stored one: `version`
/// one more than it was (a missing or unreadable version counts as 0) and
/// `lastUpdatedAt` set to `at`; every other member copied as is.
pub(super) fn updated_metadata(
    stored: &RawMembers<'_>,
    stored_len: usize,
    at: f64,
) -> Result<Vec<u8>, ApiError> {
    let version = stored
        .get("version")
        .and_then(|v| serde_json::from_str::<Value>(v.get()).ok())
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let version = json_bytes(&(version + 1))?;
    let t = json_bytes(&at)?;
    with_members(
        stored,
        &[("version", &version), ("lastUpdatedAt", &t)],
        stored_len + 16,
    )
}

/// A stored record (`StoredRecord`'s JSON) from its members' JSON text.
pub(super) fn record_bytes(data: &[u8], tags: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + tags.len() + 20);
    out.extend_from_slice(b"{\"data\":");
    out.extend_from_slice(data);
    out.extend_from_slice(b",\"tags\":");
    out.extend_from_slice(tags);
    out.push(b'}');
    Bytes::from(out)
}

/// The `…Data` shape of an active resource from its parts, as JSON.
pub(super) fn data_bytes(
    id: &ResourceId,
    metadata: &[u8],
    spec_json: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let mesh = json_bytes(&id.mesh)?;
    let name = json_bytes(&id.name)?;
    let parent = match &id.parent {
        Some(p) => Some(json_bytes(p)?),
        None => None,
    };
    let mut members: Vec<(&str, &[u8])> = vec![("meshName", &mesh)];
    if let (Some(p), Some(parent)) = (id.kind.parent(), &parent) {
        members.push((p.name_member(), parent));
    }
    members.push((id.kind.name_member(), &name));
    members.push(("metadata", metadata));
    members.push(("spec", spec_json));
    members.push(("status", br#"{"status":"ACTIVE"}"#));
    let mut data = Vec::with_capacity(spec_json.len() + metadata.len() + 128);
    write_object(&mut data, members)?;
    Ok(data)
}

/// Writes the `…Ref` shape listed for a resource: its names and metadata
/// without `uid`, members in name order (as a JSON map would have them).
pub(super) fn write_reference(
    out: &mut Vec<u8>,
    kind: Kind,
    data: &ListedData<'_>,
) -> Result<(), ApiError> {
    let mut members: Vec<(&str, &RawValue)> = Vec::with_capacity(10);
    for member in ["meshName", kind.name_member()]
        .into_iter()
        .chain(kind.parent().map(Kind::name_member))
    {
        // A mesh's own name member is `meshName`: written once.
        if members.iter().any(|(name, _)| *name == member) {
            continue;
        }
        if let Some(v) = data.name(member) {
            members.push((member, v));
        }
    }
    for (k, v) in &data.metadata.0 {
        if k != "uid" {
            // A later duplicate wins, as in a JSON map.
            match members.iter_mut().find(|(name, _)| *name == k.as_ref()) {
                Some(slot) => slot.1 = v,
                None => members.push((k.as_ref(), v)),
            }
        }
    }
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(out, name)?;
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Ok(())
}

/// The `data` member of a stored record as its raw JSON text, sharing the
/// stored bytes.
pub(super) fn stored_data(kv: &KeyValue) -> Result<Bytes, ApiError> {
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let data: Data = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("stored record {} is unreadable: {e}", kv.key)))?;
    Ok(kv.value.slice_ref(data.data.get().as_bytes()))
}

/// A stored record parsed whole.
pub(super) fn decode_record(kv: &KeyValue) -> Result<Record, ApiError> {
    serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("stored record {} is unreadable: {e}", kv.key)))
}

/// `value` as JSON, ready to store.
pub(super) fn encode<T: Serialize>(value: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(format!("cannot encode record: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
        }
    }

    #[test]
    fn an_object_is_written_in_name_order_and_the_last_of_a_repeated_name_wins() {
        let mut out = Vec::new();
        write_object(
            &mut out,
            vec![
                ("spec", b"{}"),
                ("meshName", br#""m""#),
                ("spec", br#"{"a":1}"#),
                ("arn", b"null"),
            ],
        )
        .unwrap();
        assert_eq!(text(&out), r#"{"arn":null,"meshName":"m","spec":{"a":1}}"#);
    }

    #[test]
    fn an_object_written_from_raw_members_reads_as_serde_json_writes_it() {
        let stored = r#"{"z":[1,2],"a":{"b":"c"},"m":"é"}"#;
        let members: RawMembers = serde_json::from_str(stored).unwrap();
        let written = with_members(&members, &[], 0).unwrap();
        let value: Value = serde_json::from_str(stored).unwrap();
        assert_eq!(text(&written), serde_json::to_string(&value).unwrap());
    }

    #[test]
    fn raw_members_keep_their_stored_text_and_order_and_get_finds_the_last() {
        let members: RawMembers =
            serde_json::from_str(r#"{"b": 1.50, "a\"q": "x", "b": [ 2 ]}"#).unwrap();
        let names: Vec<&str> = members.0.iter().map(|(n, _)| n.as_ref()).collect();
        assert_eq!(names, ["b", "a\"q", "b"]);
        // The value's text is the stored one, not a re-serialization.
        assert_eq!(members.0[0].1.get(), "1.50");
        assert_eq!(members.get("b").unwrap().get(), "[ 2 ]");
        assert!(members.get("c").is_none());
    }

    #[test]
    fn with_members_replaces_a_member_and_adds_a_new_one() {
        let members: RawMembers = serde_json::from_str(r#"{"spec":{"old":1},"b":2}"#).unwrap();
        let out = with_members(&members, &[("spec", br#"{"new":1}"#), ("a", b"0")], 0).unwrap();
        assert_eq!(text(&out), r#"{"a":0,"b":2,"spec":{"new":1}}"#);
    }

    #[test]
    fn updated_metadata_counts_the_version_up_and_stamps_the_update() {
        let stored = r#"{"version":3,"uid":"u","createdAt":1.5,"lastUpdatedAt":1.5}"#;
        let members: RawMembers = serde_json::from_str(stored).unwrap();
        let out = updated_metadata(&members, stored.len(), 9.25).unwrap();
        assert_eq!(
            text(&out),
            r#"{"createdAt":1.5,"lastUpdatedAt":9.25,"uid":"u","version":4}"#
        );
        // A version that is missing or not a number starts again from 0.
        let members: RawMembers = serde_json::from_str(r#"{"version":"x"}"#).unwrap();
        let out = updated_metadata(&members, 0, 2.0).unwrap();
        assert_eq!(text(&out), r#"{"lastUpdatedAt":2.0,"version":1}"#);
    }

    #[test]
    fn a_record_is_its_data_and_tags_as_given() {
        let record = record_bytes(br#"{"meshName":"m"}"#, b"[]");
        assert_eq!(text(&record), r#"{"data":{"meshName":"m"},"tags":[]}"#);
        let parsed: Record = serde_json::from_slice(&record).unwrap();
        assert_eq!(parsed.data["meshName"], "m");
        assert!(parsed.tags.is_empty());
    }

    #[test]
    fn the_data_of_a_route_names_its_mesh_router_and_route_and_is_active() {
        let id = ResourceId {
            kind: Kind::Route,
            mesh: "m".into(),
            parent: Some("r\"1".into()),
            name: "web".into(),
        };
        let data = data_bytes(&id, br#"{"version":1}"#, br#"{"httpRoute":{}}"#).unwrap();
        assert_eq!(
            text(&data),
            r#"{"meshName":"m","metadata":{"version":1},"routeName":"web","#.to_string()
                + r#""spec":{"httpRoute":{}},"status":{"status":"ACTIVE"},"#
                + r#""virtualRouterName":"r\"1"}"#
        );
    }

    #[test]
    fn a_listed_reference_has_the_names_and_metadata_but_not_the_uid() {
        let stored = r#"{"data":{"meshName":"m","virtualRouterName":"r","routeName":"web",
            "spec":{"huge":true},"metadata":{"version":2,"uid":"u","arn":"a"}},"tags":[]}"#;
        let listed: Listed = serde_json::from_str(stored).unwrap();
        let mut out = Vec::new();
        write_reference(&mut out, Kind::Route, &listed.data).unwrap();
        assert_eq!(
            text(&out),
            r#"{"arn":"a","meshName":"m","routeName":"web","version":2,"virtualRouterName":"r"}"#
        );
    }

    #[test]
    fn a_mesh_reference_names_the_mesh_once() {
        let stored = r#"{"data":{"meshName":"m","metadata":{"meshName":"later"}}}"#;
        let listed: Listed = serde_json::from_str(stored).unwrap();
        let mut out = Vec::new();
        write_reference(&mut out, Kind::Mesh, &listed.data).unwrap();
        // The metadata's member of the same name wins, as in a JSON map.
        assert_eq!(text(&out), r#"{"meshName":"later"}"#);
    }

    #[test]
    fn stored_data_is_the_data_member_sharing_the_stored_bytes() {
        let kv = kv("k", r#"{"data": {"a" : 1},"tags":[]}"#);
        let data = stored_data(&kv).unwrap();
        assert_eq!(text(&data), r#"{"a" : 1}"#);
        let stored = kv.value.as_ptr_range();
        assert!(stored.contains(&data.as_ptr()));
    }

    #[test]
    fn an_unreadable_record_is_an_internal_error_naming_its_key() {
        let kv = kv("vn/m/x", "not json");
        match stored_data(&kv) {
            Err(ApiError::Internal(why)) => assert!(why.contains("vn/m/x"), "{why}"),
            other => panic!("{other:?}"),
        }
        match decode_record(&kv) {
            Err(ApiError::Internal(why)) => assert!(why.contains("vn/m/x"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
