//! The responses the stream machines hand to gRPC, encoded straight from the snapshot's shared
//! resources.
//!
//! A response built as prost's `DiscoveryResponse` / `DeltaDiscoveryResponse` owns a copy of
//! every resource it carries (the `Any` body, name and version Strings): one allocation and copy
//! per resource per stream, freed again once encoded. The ten or so streams of a proxy class all
//! send the same resources, so these types keep only the `Arc<Resource>`s and write the protobuf
//! fields from them, byte for byte what prost would encode for the owned message (tested below).

use std::borrow::Cow;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse as XdsDeltaDiscoveryResponse, DiscoveryResponse as XdsDiscoveryResponse,
    Resource as XdsDeltaResource,
};
use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

use crate::resource::Version;
use crate::rollout::{Held, HeldSet};
use crate::Resource;

/// A state-of-the-world response (`DiscoveryResponse`) about to be sent.
#[derive(Debug, Default)]
pub(crate) struct SotwOut {
    pub(crate) version: Option<Version>,
    /// The stream's new `sent` set itself (a SotW response carries all of it): one shared
    /// allocation rather than another `Arc` per resource.
    pub(crate) resources: HeldSet,
    pub(crate) type_url: Cow<'static, str>,
    pub(crate) nonce: u64,
}

/// A delta response (`DeltaDiscoveryResponse`) about to be sent.
#[derive(Debug, Default)]
pub(crate) struct DeltaOut {
    pub(crate) version: Option<Version>,
    pub(crate) resources: Vec<Arc<Resource>>,
    pub(crate) type_url: Cow<'static, str>,
    pub(crate) removed: Vec<String>,
    pub(crate) nonce: u64,
}

impl SotwOut {
    /// The owned prost message (what the public, I/O-free API returns).
    pub(crate) fn into_response(self) -> XdsDiscoveryResponse {
        XdsDiscoveryResponse {
            version_info: self.version.map(|v| v.hex()).unwrap_or_default(),
            resources: self.bodies().map(|r| r.body.clone()).collect(),
            type_url: self.type_url.into_owned(),
            nonce: self.nonce.to_string(),
            ..XdsDiscoveryResponse::default()
        }
    }
}

impl SotwOut {
    /// The resources sent (a SotW stream only ever holds resources it sent).
    fn bodies(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.resources.iter().filter_map(|h| match h {
            Held::Sent(r) => Some(r),
            Held::Known(_) => None,
        })
    }
}

impl DeltaOut {
    /// The owned prost message (what the public, I/O-free API returns).
    pub(crate) fn into_response(self) -> XdsDeltaDiscoveryResponse {
        XdsDeltaDiscoveryResponse {
            system_version_info: self.version.map(|v| v.hex()).unwrap_or_default(),
            resources: self
                .resources
                .iter()
                .map(|r| XdsDeltaResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..XdsDeltaResource::default()
                })
                .collect(),
            type_url: self.type_url.into_owned(),
            removed_resources: self.removed,
            nonce: self.nonce.to_string(),
            ..XdsDeltaDiscoveryResponse::default()
        }
    }
}

/// Hex digits of a version, on the stack.
fn version_hex(version: &Version) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, b) in version.bytes().iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

/// Decimal digits of a nonce, on the stack: (buffer, index of the first digit).
fn nonce_digits(mut nonce: u64) -> ([u8; 20], usize) {
    let mut out = [0u8; 20];
    let mut at = out.len();
    loop {
        at -= 1;
        // `nonce % 10` < 10: the cast cannot truncate.
        out[at] = b'0' + (nonce % 10) as u8;
        nonce /= 10;
        if nonce == 0 {
            return (out, at);
        }
    }
}

/// A length-delimited field, skipped when empty as proto3 does for singular strings.
fn str_field(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    if !value.is_empty() {
        repeated_str_field(tag, value, buf);
    }
}

/// A length-delimited field, always written (an element of a repeated field).
fn repeated_str_field(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(value.len() as u64, buf);
    buf.put_slice(value);
}

fn str_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        repeated_str_len(tag, len)
    }
}

fn repeated_str_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
}

/// Length of a delta `Resource` entry's own fields (name 3, version 1, resource 2).
fn delta_resource_len(r: &Resource) -> usize {
    str_len(1, r.version.len())
        + encoding::message::encoded_len(2, &r.body)
        + str_len(3, r.name.len())
}

impl prost::Message for SotwOut {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(v) = &self.version {
            str_field(1, &version_hex(v), buf);
        }
        for r in self.bodies() {
            encoding::message::encode(2, &r.body, buf);
        }
        str_field(4, self.type_url.as_bytes(), buf);
        let (digits, at) = nonce_digits(self.nonce);
        str_field(5, &digits[at..], buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Only ever encoded (responses go out, never in).
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let (_, at) = nonce_digits(self.nonce);
        self.version.map_or(0, |_| str_len(1, 32))
            + self
                .bodies()
                .map(|r| encoding::message::encoded_len(2, &r.body))
                .sum::<usize>()
            + str_len(4, self.type_url.len())
            + str_len(5, 20 - at)
    }

    fn clear(&mut self) {
        *self = SotwOut::default();
    }
}

impl prost::Message for DeltaOut {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(v) = &self.version {
            str_field(1, &version_hex(v), buf);
        }
        for r in &self.resources {
            encoding::encode_key(2, WireType::LengthDelimited, buf);
            encoding::encode_varint(delta_resource_len(r) as u64, buf);
            str_field(1, r.version.as_bytes(), buf);
            encoding::message::encode(2, &r.body, buf);
            str_field(3, r.name.as_bytes(), buf);
        }
        str_field(4, self.type_url.as_bytes(), buf);
        let (digits, at) = nonce_digits(self.nonce);
        str_field(5, &digits[at..], buf);
        for name in &self.removed {
            repeated_str_field(6, name.as_bytes(), buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Only ever encoded (responses go out, never in).
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let (_, at) = nonce_digits(self.nonce);
        self.version.map_or(0, |_| str_len(1, 32))
            + self
                .resources
                .iter()
                .map(|r| repeated_str_len(2, delta_resource_len(r)))
                .sum::<usize>()
            + str_len(4, self.type_url.len())
            + str_len(5, 20 - at)
            + self
                .removed
                .iter()
                .map(|n| repeated_str_len(6, n.len()))
                .sum::<usize>()
    }

    fn clear(&mut self) {
        *self = DeltaOut::default();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use prost::Message;

    use super::*;
    use crate::resource::content_version;
    use crate::test_helpers::{eds_cluster, http_listener};

    fn resources() -> Vec<Arc<Resource>> {
        vec![
            Arc::new(Resource::from_message("blue", eds_cluster("blue"))),
            Arc::new(Resource::from_message(
                "ingress",
                http_listener("ingress", 10000, "local"),
            )),
            // Empty version: proto3 leaves the field out.
            Arc::new(Resource::with_version(
                "green",
                "",
                Resource::from_message("green", eds_cluster("green")).body,
            )),
        ]
    }

    fn version() -> Version {
        content_version([("a", "1"), ("b", "2")])
    }

    #[test]
    fn a_sotw_response_encodes_exactly_as_prost_encodes_the_owned_message() {
        for nonce in [1, 9, 10, 12_345, u64::MAX] {
            for (version, resources) in [(Some(version()), resources()), (None, Vec::new())] {
                let out = SotwOut {
                    version,
                    resources: HeldSet::from_unsorted(
                        resources.into_iter().map(Held::Sent).collect(),
                    ),
                    type_url: Cow::Borrowed(crate::CLUSTER_TYPE_URL),
                    nonce,
                };
                let bytes = out.encode_to_vec();
                assert_eq!(bytes.len(), out.encoded_len());
                let owned = out.into_response();
                assert_eq!(bytes, owned.encode_to_vec());
                assert_eq!(
                    XdsDiscoveryResponse::decode(bytes.as_slice()).unwrap(),
                    owned
                );
            }
        }
    }

    #[test]
    fn a_delta_response_encodes_exactly_as_prost_encodes_the_owned_message() {
        for nonce in [1, 10, 987_654_321, u64::MAX] {
            for (removed, resources) in [
                (vec!["old".to_string(), String::new()], resources()),
                (Vec::new(), Vec::new()),
            ] {
                let out = DeltaOut {
                    version: Some(version()),
                    resources,
                    type_url: Cow::Owned("type.example/Other".to_string()),
                    removed,
                    nonce,
                };
                let bytes = out.encode_to_vec();
                assert_eq!(bytes.len(), out.encoded_len());
                let owned = out.into_response();
                assert_eq!(bytes, owned.encode_to_vec());
                assert_eq!(
                    XdsDeltaDiscoveryResponse::decode(bytes.as_slice()).unwrap(),
                    owned
                );
            }
        }
    }
}
