//! A resource's packed form: a protobuf `Any` whose value may be held in parts that other
//! resources share.
//!
//! The egress route configuration of a proxy class has one virtual host per backend, and the
//! virtual host of a service is the same, byte for byte, in every class that calls it. Held as
//! parts, each class keeps its own route configuration's name and settings and shares the
//! encoded virtual hosts. Protobuf allows this: a message's encoding is the concatenation of
//! its fields' encodings, and a repeated field's elements are just that field, repeated
//! (<https://protobuf.dev/programming-guides/encoding/#optional>).

use std::borrow::Cow;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::bytes::BufMut;
use prost::encoding::{self, WireType};

use crate::wire::{str_field, str_len};

/// A packed resource: its type URL and its encoded value, whole or in parts.
///
/// Equal when the type URLs and the value bytes are equal, however the value is held.
#[derive(Clone, Debug, Default)]
pub struct PackedAny {
    type_url: String,
    value: Value,
}

#[derive(Clone, Debug)]
enum Value {
    Whole(Vec<u8>),
    /// The value is these parts, in order.
    Parts(Box<[Arc<[u8]>]>),
}

impl Default for Value {
    fn default() -> Self {
        Value::Whole(Vec::new())
    }
}

impl PackedAny {
    /// A value held in `parts` (concatenated in order).
    pub fn from_parts(type_url: impl Into<String>, parts: Vec<Arc<[u8]>>) -> Self {
        Self {
            type_url: type_url.into(),
            value: Value::Parts(parts.into_boxed_slice()),
        }
    }

    /// The type URL.
    pub fn type_url(&self) -> &str {
        &self.type_url
    }

    /// The value's bytes, chunk by chunk.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        let (whole, parts): (Option<&[u8]>, &[Arc<[u8]>]) = match &self.value {
            Value::Whole(v) => (Some(v.as_slice()), &[]),
            Value::Parts(p) => (None, p),
        };
        whole.into_iter().chain(parts.iter().map(|p| &p[..]))
    }

    /// The value's length in bytes.
    pub fn value_len(&self) -> usize {
        self.chunks().map(<[u8]>::len).sum()
    }

    /// The value's bytes in one slice (copied when held in parts).
    pub fn value(&self) -> Cow<'_, [u8]> {
        match &self.value {
            Value::Whole(v) => Cow::Borrowed(v),
            Value::Parts(p) => Cow::Owned(p.concat()),
        }
    }

    /// An owned `Any` with the same type URL and bytes.
    pub fn to_any(&self) -> Any {
        Any {
            type_url: self.type_url.clone(),
            value: self.value().into_owned(),
        }
    }
}

impl From<Any> for PackedAny {
    fn from(any: Any) -> Self {
        Self {
            type_url: any.type_url,
            value: Value::Whole(any.value),
        }
    }
}

impl PartialEq for PackedAny {
    fn eq(&self, other: &Self) -> bool {
        if self.type_url != other.type_url {
            return false;
        }
        match (&self.value, &other.value) {
            (Value::Whole(a), Value::Whole(b)) => a == b,
            // Parts that are the same allocations (shared virtual hosts) need no comparison.
            (Value::Parts(a), Value::Parts(b))
                if a.len() == b.len()
                    && a.iter()
                        .zip(b.iter())
                        .all(|(x, y)| Arc::ptr_eq(x, y) || x == y) =>
            {
                true
            }
            _ => self.value_len() == other.value_len() && self.value() == other.value(),
        }
    }
}

/// Encoded as the `Any` it stands for (type URL 1, value 2), the value written part by part.
impl PackedAny {
    /// The length of its encoding as an `Any`.
    pub fn encoded_len(&self) -> usize {
        str_len(1, self.type_url.len()) + str_len(2, self.value_len())
    }

    /// Its encoding as an `Any`.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode_raw(&mut buf);
        buf
    }

    fn encode_raw(&self, buf: &mut impl BufMut) {
        str_field(1, self.type_url.as_bytes(), buf);
        let len = self.value_len();
        if len > 0 {
            encoding::encode_key(2, WireType::LengthDelimited, buf);
            encoding::encode_varint(len as u64, buf);
            for chunk in self.chunks() {
                buf.put_slice(chunk);
            }
        }
    }

    /// The length of field `tag` of an enclosing message holding it.
    pub(crate) fn field_len(&self, tag: u32) -> usize {
        let len = self.encoded_len();
        encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
    }

    /// Writes it as field `tag` of an enclosing message.
    pub(crate) fn encode_field(&self, tag: u32, buf: &mut impl BufMut) {
        encoding::encode_key(tag, WireType::LengthDelimited, buf);
        encoding::encode_varint(self.encoded_len() as u64, buf);
        self.encode_raw(buf);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use prost::Message;

    #[test]
    fn a_packed_field_encodes_like_an_any_field() {
        let any = Any {
            type_url: "type.googleapis.com/x".into(),
            value: b"abc".to_vec(),
        };
        let packed = PackedAny::from(any.clone());
        let mut ours = Vec::new();
        packed.encode_field(2, &mut ours);
        let mut prosts = Vec::new();
        encoding::message::encode(2, &any, &mut prosts);
        assert_eq!(ours, prosts);
        assert_eq!(packed.field_len(2), encoding::message::encoded_len(2, &any));
    }

    #[test]
    fn a_value_in_parts_encodes_like_the_whole_any() {
        let whole = Any {
            type_url: "type.googleapis.com/x".into(),
            value: b"hello, world".to_vec(),
        };
        let parts = PackedAny::from_parts(
            "type.googleapis.com/x",
            vec![
                Arc::from(&b"hello"[..]),
                Arc::from(&b", "[..]),
                Arc::from(&b"world"[..]),
            ],
        );
        assert_eq!(parts.encode_to_vec(), whole.encode_to_vec());
        assert_eq!(parts.encoded_len(), whole.encoded_len());
        assert_eq!(parts.to_any(), whole);
        assert_eq!(parts, PackedAny::from(whole.clone()));
        assert_eq!(&*parts.value(), b"hello, world");
        assert_ne!(
            parts,
            PackedAny::from_parts("type.googleapis.com/x", vec![Arc::from(&b"hello"[..])])
        );
        let empty = PackedAny::from(Any {
            type_url: "t".into(),
            value: vec![],
        });
        assert_eq!(
            empty.encode_to_vec(),
            Any {
                type_url: "t".into(),
                value: vec![]
            }
            .encode_to_vec()
        );
    }
}
