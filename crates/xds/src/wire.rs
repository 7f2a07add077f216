//! ADS responses, encoded straight from the snapshot's shared resources.
//!
//! A response built as prost's `DiscoveryResponse` / `DeltaDiscoveryResponse` owns a copy of
//! every resource it carries (the `Any` body, name and version Strings): one allocation and copy
//! per resource per stream, freed again once encoded. The ten or so streams of a proxy class all
//! send the same resources, so [`SotwResponse`] and [`DeltaResponse`] keep only the
//! `Arc<Resource>`s and write the protobuf fields from them, byte for byte what prost would
//! encode for the owned message (tested below).
//!
//! [`Encode::encode_shared`] writes a response in at most two chunks: the stream's own fields
//! (version, type, nonce) and the resources. The resources' bytes are encoded once and shared by
//! every stream that sends the same resources at the same time ([`SharedEncodings`]): a change
//! that reaches 10,000 proxies of 1,000 classes encodes about 1,000 resource sections, not
//! 10,000, and holds that many while they wait in the HTTP/2 send queues for slow readers.
//! Framing the chunks as gRPC messages is [`crate::transport`]'s.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse as XdsDeltaDiscoveryResponse, DiscoveryResponse as XdsDiscoveryResponse,
    Resource as XdsDeltaResource,
};
use prost::bytes::BufMut;
use prost::encoding::{self, WireType};

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

/// One resource of a response: in SotW its `Any` as field 2, in delta a `Resource` message as
/// field 2.
fn entry(protocol: Protocol, r: &Resource, buf: &mut impl BufMut) {
    match protocol {
        Protocol::Sotw => r.body.encode_field(2, buf),
        Protocol::Delta => {
            encoding::encode_key(2, WireType::LengthDelimited, buf);
            encoding::encode_varint(delta_resource_len(r) as u64, buf);
            str_field(1, r.version.as_bytes(), buf);
            r.body.encode_field(2, buf);
            str_field(3, r.name.as_bytes(), buf);
        }
    }
}

fn entry_len(protocol: Protocol, r: &Resource) -> usize {
    match protocol {
        Protocol::Sotw => r.body.field_len(2),
        Protocol::Delta => repeated_str_len(2, delta_resource_len(r)),
    }
}

/// A response's fields. The field numbers are the same in `DiscoveryResponse` and
/// `DeltaDiscoveryResponse`: version 1, resources 2, type URL 4, nonce 5, and removed names 6 in
/// delta only.
pub(crate) struct Parts<'a, I> {
    version: Option<&'a Version>,
    type_url: &'a str,
    nonce: u64,
    removed: &'a [String],
    protocol: Protocol,
    resources: I,
}

impl<'a, I> Parts<'a, I>
where
    I: Iterator<Item = &'a Arc<Resource>> + Clone,
{
    fn resources_len(&self) -> usize {
        let protocol = self.protocol;
        self.resources.clone().map(|r| entry_len(protocol, r)).sum()
    }

    /// The version field, which comes before the resources.
    fn version_field(&self, buf: &mut impl BufMut) {
        if let Some(v) = self.version {
            str_field(1, &version_hex(v), buf);
        }
    }

    /// The fields that come after the resources.
    fn later_fields(&self, buf: &mut impl BufMut) {
        str_field(4, self.type_url.as_bytes(), buf);
        let (digits, at) = nonce_digits(self.nonce);
        str_field(5, &digits[at..], buf);
        for name in self.removed {
            repeated_str_field(6, name.as_bytes(), buf);
        }
    }

    /// The length of the stream's own fields (all but the resources).
    fn own_fields_len(&self) -> usize {
        let (_, at) = nonce_digits(self.nonce);
        self.version.map_or(0, |_| str_len(1, 32))
            + str_len(4, self.type_url.len())
            + str_len(5, 20 - at)
            + self
                .removed
                .iter()
                .map(|n| repeated_str_len(6, n.len()))
                .sum::<usize>()
    }
}

/// A resources section shorter than this goes out in one chunk with the stream's own fields:
/// sharing it would save little, and a second HTTP/2 DATA frame costs more than the copy.
const SHARE_MIN_BYTES: usize = 1024;

/// A response as protobuf, written from its [`Parts`].
pub(crate) trait Encode {
    /// The response's fields.
    fn parts(&self) -> Parts<'_, impl Iterator<Item = &Arc<Resource>> + Clone>;

    /// The length of its encoding.
    fn encoded_len(&self) -> usize {
        let parts = self.parts();
        parts.own_fields_len() + parts.resources_len()
    }

    /// Writes its encoding, fields in field-number order (as prost writes them).
    fn encode_raw(&self, buf: &mut impl BufMut) {
        let parts = self.parts();
        parts.version_field(buf);
        for r in parts.resources.clone() {
            entry(parts.protocol, r, buf);
        }
        parts.later_fields(buf);
    }

    /// Its encoding after `headroom` zero bytes (room for the caller's framing): in one chunk
    /// when its resources section is small, else in two, the stream's own fields and then the
    /// resources section, shared with the other streams that send the very same resources.
    /// Protobuf fields may come in any order (a repeated field's elements keep theirs), so the
    /// own fields may all come first.
    fn encode_shared(
        &self,
        shared: &SharedEncodings,
        headroom: usize,
    ) -> (BytesMut, Option<Bytes>) {
        let parts = self.parts();
        let resources_len = parts.resources_len();
        if resources_len < SHARE_MIN_BYTES {
            let mut whole = BytesMut::with_capacity(headroom + self.encoded_len());
            whole.put_bytes(0, headroom);
            self.encode_raw(&mut whole);
            return (whole, None);
        }
        let mut head = BytesMut::with_capacity(headroom + parts.own_fields_len());
        head.put_bytes(0, headroom);
        parts.version_field(&mut head);
        parts.later_fields(&mut head);
        let section = shared.get_or_encode(parts.protocol, parts.resources, resources_len);
        (head, Some(section))
    }

    /// Its encoding in one buffer.
    #[cfg(test)]
    fn encode_to_vec(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode_raw(&mut buf);
        buf
    }
}

impl Encode for SotwResponse {
    fn parts(&self) -> Parts<'_, impl Iterator<Item = &Arc<Resource>> + Clone> {
        Parts {
            version: self.version.as_ref(),
            type_url: &self.type_url,
            nonce: self.nonce,
            removed: &[],
            protocol: Protocol::Sotw,
            resources: self.bodies(),
        }
    }
}

impl Encode for DeltaResponse {
    fn parts(&self) -> Parts<'_, impl Iterator<Item = &Arc<Resource>> + Clone> {
        Parts {
            version: self.version.as_ref(),
            type_url: &self.type_url,
            nonce: self.nonce,
            removed: &self.removed,
            protocol: Protocol::Delta,
            resources: self.resources.iter(),
        }
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
    /// The section of `resources` encoded for `protocol` (`len` bytes in all): shared with
    /// another stream sending the very same resources, or encoded now.
    fn get_or_encode<'a, I>(&self, protocol: Protocol, resources: I, len: usize) -> Bytes
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
            entry(protocol, r, &mut bytes);
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

    /// The chunks of `response`, shared with the other responses encoded with `shared`.
    fn chunks(response: &impl Encode, shared: &SharedEncodings) -> Vec<Bytes> {
        let (head, section) = response.encode_shared(shared, 0);
        std::iter::once(head.freeze()).chain(section).collect()
    }

    /// The message of `chunks`.
    fn message(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn a_response_in_chunks_sotw_or_delta_decodes_to_the_owned_one() {
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
            let (sotw_chunks, delta_chunks) = (chunks(&sotw, &shared), chunks(&delta, &shared));
            assert_eq!(sotw_chunks.len(), chunks_expected);
            assert_eq!(delta_chunks.len(), chunks_expected);
            let total = |c: &[Bytes]| c.iter().map(Bytes::len).sum::<usize>();
            assert_eq!(total(&sotw_chunks), sotw.encoded_len());
            assert_eq!(total(&delta_chunks), delta.encoded_len());
            let decoded = XdsDiscoveryResponse::decode(message(&sotw_chunks).as_slice()).unwrap();
            assert_eq!(decoded, XdsDiscoveryResponse::from(sotw));
            let decoded =
                XdsDeltaDiscoveryResponse::decode(message(&delta_chunks).as_slice()).unwrap();
            assert_eq!(decoded, XdsDeltaDiscoveryResponse::from(delta));
        }
    }

    #[test]
    fn room_is_left_before_a_response_for_the_caller() {
        let shared = SharedEncodings::default();
        for resources in [resources(), many_clusters("c")] {
            let sotw = sotw_response(&resources, 1);
            let (head, _) = sotw.encode_shared(&shared, 5);
            let (bare, _) = sotw.encode_shared(&shared, 0);
            assert_eq!(&head[..5], &[0; 5]);
            assert_eq!(&head[5..], &bare[..]);
        }
    }

    #[test]
    fn streams_sending_the_same_resources_share_one_encoding_until_the_last_is_written() {
        let shared = SharedEncodings::default();
        let clusters = many_clusters("c");
        let first = chunks(&sotw_response(&clusters, 1), &shared);
        let second = chunks(&sotw_response(&clusters, 2), &shared);
        // Own fields (the nonce differs) apart, the resources are the same bytes in memory.
        assert_ne!(first[0], second[0]);
        assert_eq!(first[1].as_ptr(), second[1].as_ptr());
        assert_eq!(shared.live(), 1);

        // A delta response of the same resources is encoded differently: not shared.
        let delta = DeltaResponse {
            resources: clusters.clone(),
            type_url: Cow::Borrowed(crate::CLUSTER_TYPE_URL),
            nonce: 3,
            ..DeltaResponse::default()
        };
        let delta = chunks(&delta, &shared);
        assert_ne!(delta[1].as_ptr(), first[1].as_ptr());
        assert_eq!(shared.live(), 2);

        // Equal content in other allocations (another snapshot) is encoded again, not looked
        // up by content.
        let other = chunks(&sotw_response(&many_clusters("c"), 4), &shared);
        assert_ne!(other[1].as_ptr(), first[1].as_ptr());
        assert_eq!(other[1], first[1]);

        drop((first, second, delta, other));
        assert_eq!(shared.live(), 0, "written sections are freed");
        let _again = chunks(&sotw_response(&clusters, 5), &shared);
        assert_eq!(shared.live(), 1);
    }
}
