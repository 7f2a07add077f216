//! The responses the stream machines hand to gRPC, encoded straight from the snapshot's shared
//! resources.
//!
//! A response built as prost's `DiscoveryResponse` / `DeltaDiscoveryResponse` owns a copy of
//! every resource it carries (the `Any` body, name and version Strings): one allocation and copy
//! per resource per stream, freed again once encoded. The ten or so streams of a proxy class all
//! send the same resources, so these types keep only the `Arc<Resource>`s and write the protobuf
//! fields from them, byte for byte what prost would encode for the owned message (tested below).
//!
//! On the wire ([`Framed::frames`]) a response is one gRPC message in two chunks: the stream's
//! own fields (version, type, nonce) and the resources. The resources' bytes are encoded once
//! and shared by every stream that sends the same resources at the same time
//! ([`SharedEncodings`]): a change that reaches 10,000 proxies of 1,000 classes encodes about
//! 1,000 resource sections, not 10,000, and holds that many while they wait in the HTTP/2 send
//! queues for slow readers.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse as XdsDeltaDiscoveryResponse, DiscoveryResponse as XdsDiscoveryResponse,
    Resource as XdsDeltaResource,
};
use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

use crate::resource::Version;
use crate::rollout::{Held, HeldSet};
use crate::status::Protocol;
use crate::Resource;

/// A state-of-the-world response (`DiscoveryResponse`) about to be sent, holding the
/// snapshot's resources rather than copies. `DiscoveryResponse::from` makes the owned message.
#[derive(Debug, Default)]
pub struct SotwResponse {
    pub(crate) version: Option<Version>,
    /// The stream's new `sent` set itself (a SotW response carries all of it): one shared
    /// allocation rather than another `Arc` per resource.
    pub(crate) resources: HeldSet,
    pub(crate) type_url: Cow<'static, str>,
    pub(crate) nonce: u64,
}

/// A delta response (`DeltaDiscoveryResponse`) about to be sent, holding the snapshot's
/// resources rather than copies. `DeltaDiscoveryResponse::from` makes the owned message.
#[derive(Debug, Default)]
pub struct DeltaResponse {
    pub(crate) version: Option<Version>,
    pub(crate) resources: Vec<Arc<Resource>>,
    pub(crate) type_url: Cow<'static, str>,
    pub(crate) removed: Vec<String>,
    pub(crate) nonce: u64,
}

impl From<SotwResponse> for XdsDiscoveryResponse {
    fn from(response: SotwResponse) -> Self {
        XdsDiscoveryResponse {
            version_info: response.version.map(|v| v.hex()).unwrap_or_default(),
            resources: response.bodies().map(|r| r.body.to_any()).collect(),
            type_url: response.type_url.into_owned(),
            nonce: response.nonce.to_string(),
            ..XdsDiscoveryResponse::default()
        }
    }
}

impl SotwResponse {
    /// The resources sent (a SotW stream only ever holds resources it sent).
    fn bodies(&self) -> impl Iterator<Item = &Arc<Resource>> + Clone {
        self.resources.iter().filter_map(|h| match h {
            Held::Sent(r) => Some(r),
            Held::Known(_) => None,
        })
    }
}

impl From<DeltaResponse> for XdsDeltaDiscoveryResponse {
    fn from(response: DeltaResponse) -> Self {
        XdsDeltaDiscoveryResponse {
            system_version_info: response.version.map(|v| v.hex()).unwrap_or_default(),
            resources: response
                .resources
                .iter()
                .map(|r| XdsDeltaResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.to_any()),
                    ..XdsDeltaResource::default()
                })
                .collect(),
            type_url: response.type_url.into_owned(),
            removed_resources: response.removed,
            nonce: response.nonce.to_string(),
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
pub(crate) fn str_field(tag: u32, value: &[u8], buf: &mut impl BufMut) {
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

pub(crate) fn str_len(tag: u32, len: usize) -> usize {
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
    str_len(1, r.version.len()) + r.body.field_len(2) + str_len(3, r.name.len())
}

/// One resource of a SotW response: its `Any` as field 2.
fn sotw_entry(r: &Resource, buf: &mut impl BufMut) {
    r.body.encode_field(2, buf);
}

fn sotw_entry_len(r: &Resource) -> usize {
    r.body.field_len(2)
}

/// One resource of a delta response: a `Resource` message as field 2.
fn delta_entry(r: &Resource, buf: &mut impl BufMut) {
    encoding::encode_key(2, WireType::LengthDelimited, buf);
    encoding::encode_varint(delta_resource_len(r) as u64, buf);
    str_field(1, r.version.as_bytes(), buf);
    r.body.encode_field(2, buf);
    str_field(3, r.name.as_bytes(), buf);
}

fn delta_entry_len(r: &Resource) -> usize {
    repeated_str_len(2, delta_resource_len(r))
}

impl prost::Message for SotwResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(v) = &self.version {
            str_field(1, &version_hex(v), buf);
        }
        for r in self.bodies() {
            sotw_entry(r, buf);
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
            + self.bodies().map(|r| sotw_entry_len(r)).sum::<usize>()
            + str_len(4, self.type_url.len())
            + str_len(5, 20 - at)
    }

    fn clear(&mut self) {
        *self = SotwResponse::default();
    }
}

impl prost::Message for DeltaResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(v) = &self.version {
            str_field(1, &version_hex(v), buf);
        }
        for r in &self.resources {
            delta_entry(r, buf);
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
                .map(|r| delta_entry_len(r))
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
        *self = DeltaResponse::default();
    }
}

/// A resources section shorter than this goes out in one chunk with the stream's own fields:
/// sharing it would save little, and a second HTTP/2 DATA frame costs more than the copy.
const SHARE_MIN_BYTES: usize = 1024;

/// A response that can be written as the chunks of one gRPC message.
pub(crate) trait Framed {
    /// Appends the gRPC message (5-byte prefix and protobuf) as one or two chunks to `out`.
    fn frames(&self, shared: &SharedEncodings, out: &mut VecDeque<Bytes>);
}

/// The 5-byte gRPC message prefix: not compressed, then the length (big-endian u32).
/// <https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md#requests>
fn grpc_prefix(len: usize, buf: &mut BytesMut) {
    buf.put_u8(0);
    // A response over 4 GiB cannot be framed; Envoy refuses far smaller ones anyway.
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

/// A whole message in one chunk.
fn single_chunk(message: &impl prost::Message, out: &mut VecDeque<Bytes>) {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    grpc_prefix(len, &mut buf);
    message.encode_raw(&mut buf);
    out.push_back(buf.freeze());
}

/// The first chunk of a response whose resources go out in a second: the gRPC prefix (which
/// counts both) and the stream's own fields. The field numbers are the same in
/// `DiscoveryResponse` and `DeltaDiscoveryResponse` (version 1, type URL 4, nonce 5; removed
/// names 6 in delta only). Protobuf fields may come in any order (a repeated field's elements
/// keep theirs), so these come before the resources (field 2).
fn own_fields(
    version: Option<&Version>,
    type_url: &str,
    nonce: u64,
    removed: &[String],
    resources_len: usize,
) -> Bytes {
    let (digits, at) = nonce_digits(nonce);
    let own_len = version.map_or(0, |_| str_len(1, 32))
        + str_len(4, type_url.len())
        + str_len(5, 20 - at)
        + removed
            .iter()
            .map(|n| repeated_str_len(6, n.len()))
            .sum::<usize>();
    let mut head = BytesMut::with_capacity(5 + own_len);
    grpc_prefix(own_len + resources_len, &mut head);
    if let Some(v) = version {
        str_field(1, &version_hex(v), &mut head);
    }
    str_field(4, type_url.as_bytes(), &mut head);
    str_field(5, &digits[at..], &mut head);
    for name in removed {
        repeated_str_field(6, name.as_bytes(), &mut head);
    }
    head.freeze()
}

/// A response's fields for [`frame`]: its own, and its resources.
struct Parts<'a, I> {
    version: Option<&'a Version>,
    type_url: &'a str,
    nonce: u64,
    removed: &'a [String],
    protocol: Protocol,
    resources: I,
    /// Writes one resource of the section, and its length.
    entry: fn(&Resource, &mut Vec<u8>),
    entry_len: fn(&Resource) -> usize,
}

/// Writes `message` in one chunk when its resources section is small, else as its own fields
/// and the shared section.
fn frame<'a, I>(
    message: &impl prost::Message,
    parts: Parts<'a, I>,
    shared: &SharedEncodings,
    out: &mut VecDeque<Bytes>,
) where
    I: Iterator<Item = &'a Arc<Resource>> + Clone,
{
    let resources_len = parts.resources.clone().map(|r| (parts.entry_len)(r)).sum();
    if resources_len < SHARE_MIN_BYTES {
        single_chunk(message, out);
        return;
    }
    out.push_back(own_fields(
        parts.version,
        parts.type_url,
        parts.nonce,
        parts.removed,
        resources_len,
    ));
    out.push_back(shared.get_or_encode(
        parts.protocol,
        parts.resources,
        resources_len,
        parts.entry,
    ));
}

impl Framed for SotwResponse {
    fn frames(&self, shared: &SharedEncodings, out: &mut VecDeque<Bytes>) {
        let parts = Parts {
            version: self.version.as_ref(),
            type_url: &self.type_url,
            nonce: self.nonce,
            removed: &[],
            protocol: Protocol::Sotw,
            resources: self.bodies(),
            entry: |r, buf| sotw_entry(r, buf),
            entry_len: sotw_entry_len,
        };
        frame(self, parts, shared, out);
    }
}

impl Framed for DeltaResponse {
    fn frames(&self, shared: &SharedEncodings, out: &mut VecDeque<Bytes>) {
        let parts = Parts {
            version: self.version.as_ref(),
            type_url: &self.type_url,
            nonce: self.nonce,
            removed: &self.removed,
            protocol: Protocol::Delta,
            resources: self.resources.iter(),
            entry: |r, buf| delta_entry(r, buf),
            entry_len: delta_entry_len,
        };
        frame(self, parts, shared, out);
    }
}

/// The encoded resources sections that some stream is still sending, found again by the
/// resources they hold.
///
/// Only weak references are kept: a section lives while a response that carries it waits to be
/// written, and is freed when the last one is. Streams of one proxy class answer a snapshot at
/// about the same moment, so the first encodes and the others share.
#[derive(Debug, Default)]
pub(crate) struct SharedEncodings {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    sections: HashMap<u64, Weak<Section>>,
    /// Drop the dead entries once the table reaches this many.
    sweep_at: usize,
}

/// One encoded resources section, with the resources it was encoded from: holding them keeps
/// their addresses from being reused while the section can still be found by them.
#[derive(Debug)]
struct Section {
    protocol: Protocol,
    resources: Box<[Arc<Resource>]>,
    bytes: Box<[u8]>,
}

/// A section as a `Bytes` owner.
struct SectionBytes(Arc<Section>);

impl AsRef<[u8]> for SectionBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0.bytes
    }
}

/// Sections the table holds at least before it drops dead entries.
const MIN_SWEEP: usize = 256;

impl SharedEncodings {
    /// The section of `resources` encoded by `encode` for `protocol` (`len` bytes in all):
    /// shared with another stream sending the very same resources, or encoded now.
    fn get_or_encode<'a, I>(
        &self,
        protocol: Protocol,
        resources: I,
        len: usize,
        encode: impl Fn(&Resource, &mut Vec<u8>),
    ) -> Bytes
    where
        I: Iterator<Item = &'a Arc<Resource>> + Clone,
    {
        let key = {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (protocol == Protocol::Sotw).hash(&mut hasher);
            for r in resources.clone() {
                Arc::as_ptr(r).hash(&mut hasher);
            }
            hasher.finish()
        };
        let found = self
            .lock()
            .sections
            .get(&key)
            .and_then(Weak::upgrade)
            .filter(|s| s.holds(protocol, resources.clone()));
        if let Some(section) = found {
            return Bytes::from_owner(SectionBytes(section));
        }
        // Encoded outside the lock; two streams racing both encode, and the later one stays.
        let mut bytes = Vec::with_capacity(len);
        let mut held = Vec::new();
        for r in resources {
            encode(r, &mut bytes);
            held.push(r.clone());
        }
        let section = Arc::new(Section {
            protocol,
            resources: held.into_boxed_slice(),
            bytes: bytes.into_boxed_slice(),
        });
        let mut table = self.lock();
        table.sections.insert(key, Arc::downgrade(&section));
        if table.sections.len() >= table.sweep_at {
            table.sections.retain(|_, s| s.strong_count() > 0);
            table.sweep_at = (2 * table.sections.len()).max(MIN_SWEEP);
        }
        Bytes::from_owner(SectionBytes(section))
    }

    /// Sections that some response still holds (for tests and status).
    #[cfg(test)]
    fn live(&self) -> usize {
        self.lock()
            .sections
            .values()
            .filter(|s| s.strong_count() > 0)
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Section {
    /// Whether this section is the encoding of exactly `resources` (the same `Arc`s, in order).
    fn holds<'a>(
        &self,
        protocol: Protocol,
        resources: impl Iterator<Item = &'a Arc<Resource>>,
    ) -> bool {
        let mut mine = self.resources.iter();
        self.protocol == protocol
            && resources
                .into_iter()
                .all(|r| mine.next().is_some_and(|m| Arc::ptr_eq(m, r)))
            && mine.next().is_none()
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
                let out = SotwResponse {
                    version,
                    resources: HeldSet::from_unsorted(
                        resources.into_iter().map(Held::Sent).collect(),
                    ),
                    type_url: Cow::Borrowed(crate::CLUSTER_TYPE_URL),
                    nonce,
                };
                let bytes = out.encode_to_vec();
                assert_eq!(bytes.len(), out.encoded_len());
                let owned = XdsDiscoveryResponse::from(out);
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
                let out = DeltaResponse {
                    version: Some(version()),
                    resources,
                    type_url: Cow::Owned("type.example/Other".to_string()),
                    removed,
                    nonce,
                };
                let bytes = out.encode_to_vec();
                assert_eq!(bytes.len(), out.encoded_len());
                let owned = XdsDeltaDiscoveryResponse::from(out);
                assert_eq!(bytes, owned.encode_to_vec());
                assert_eq!(
                    XdsDeltaDiscoveryResponse::decode(bytes.as_slice()).unwrap(),
                    owned
                );
            }
        }
    }

    /// Enough clusters for a resources section that is shared (over `SHARE_MIN_BYTES`).
    fn many_clusters(prefix: &str) -> Vec<Arc<Resource>> {
        (0..40)
            .map(|i| {
                let name = format!("{prefix}-{i:02}");
                Arc::new(Resource::from_message(&name, eds_cluster(&name)))
            })
            .collect()
    }

    fn sotw_response(resources: &[Arc<Resource>], nonce: u64) -> SotwResponse {
        SotwResponse {
            version: Some(version()),
            resources: HeldSet::from_unsorted(resources.iter().cloned().map(Held::Sent).collect()),
            type_url: Cow::Borrowed(crate::CLUSTER_TYPE_URL),
            nonce,
        }
    }

    /// The gRPC message of `chunks`: checks the prefix and returns the protobuf bytes.
    fn message(chunks: &VecDeque<Bytes>) -> Vec<u8> {
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(all[0], 0, "not compressed");
        let len = u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize;
        assert_eq!(len, all.len() - 5);
        all[5..].to_vec()
    }

    #[test]
    fn a_framed_response_sotw_or_delta_is_one_grpc_message_that_decodes_to_the_owned_one() {
        let shared = SharedEncodings::default();
        // A small set goes out in one chunk, a large one in two.
        for (resources, chunks_expected) in [(resources(), 1), (many_clusters("c"), 2)] {
            let sotw = sotw_response(&resources, 77);
            let delta = DeltaResponse {
                version: Some(version()),
                resources,
                type_url: Cow::Borrowed(crate::CLUSTER_TYPE_URL),
                removed: vec!["gone".to_string()],
                nonce: 5,
            };
            let (mut sotw_chunks, mut delta_chunks) = (VecDeque::new(), VecDeque::new());
            sotw.frames(&shared, &mut sotw_chunks);
            delta.frames(&shared, &mut delta_chunks);
            assert_eq!(sotw_chunks.len(), chunks_expected);
            assert_eq!(delta_chunks.len(), chunks_expected);
            let decoded = XdsDiscoveryResponse::decode(message(&sotw_chunks).as_slice()).unwrap();
            assert_eq!(decoded, XdsDiscoveryResponse::from(sotw));
            let decoded =
                XdsDeltaDiscoveryResponse::decode(message(&delta_chunks).as_slice()).unwrap();
            assert_eq!(decoded, XdsDeltaDiscoveryResponse::from(delta));
        }
    }

    #[test]
    fn streams_sending_the_same_resources_share_one_encoding_until_the_last_is_written() {
        let shared = SharedEncodings::default();
        let clusters = many_clusters("c");
        let (mut first, mut second) = (VecDeque::new(), VecDeque::new());
        sotw_response(&clusters, 1).frames(&shared, &mut first);
        sotw_response(&clusters, 2).frames(&shared, &mut second);
        // Own fields (the nonce differs) apart, the resources are the same bytes in memory.
        assert_ne!(first[0], second[0]);
        assert_eq!(first[1].as_ptr(), second[1].as_ptr());
        assert_eq!(shared.live(), 1);

        // A delta response of the same resources is encoded differently: not shared.
        let mut delta = VecDeque::new();
        DeltaResponse {
            resources: clusters.clone(),
            type_url: Cow::Borrowed(crate::CLUSTER_TYPE_URL),
            nonce: 3,
            ..DeltaResponse::default()
        }
        .frames(&shared, &mut delta);
        assert_ne!(delta[1].as_ptr(), first[1].as_ptr());
        assert_eq!(shared.live(), 2);

        // Equal content in other allocations (another snapshot) is encoded again, not looked
        // up by content.
        let mut other = VecDeque::new();
        sotw_response(&many_clusters("c"), 4).frames(&shared, &mut other);
        assert_ne!(other[1].as_ptr(), first[1].as_ptr());
        assert_eq!(other[1], first[1]);

        drop((first, second, delta, other));
        assert_eq!(shared.live(), 0, "written sections are freed");
        let mut again = VecDeque::new();
        sotw_response(&clusters, 5).frames(&shared, &mut again);
        assert_eq!(shared.live(), 1);
    }
}
