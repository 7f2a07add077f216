//! The ADS gRPC service as tonic-build generates it (`build.rs`), and its codec.
//!
//! The generated `AggregatedDiscoveryServiceServer` routes the two ADS methods, decodes requests
//! with [`AdsCodec`] and calls the [`AggregatedDiscoveryService`] trait, which `AdsServer`
//! implements. Responses are the crate's own types, encoded from the snapshot's shared
//! resources; [`crate::transport`] writes them to HTTP/2.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::wire::Encode;

mod generated {
    include!(concat!(
        env!("OUT_DIR"),
        "/envoy.service.discovery.v3.AggregatedDiscoveryService.rs"
    ));
}

pub(crate) use generated::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};

/// Initial capacity of a stream's codec buffers. tonic's default is 8 KiB, held for the life of
/// the stream; ADS streams are long-lived and, after the first requests, carry small messages
/// (a buffer grows as a message needs).
const BUFFER_SIZE: usize = 512;
/// tonic's default: how much of several ready responses tonic's body gathers into one chunk.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// The codec of both ADS methods: requests (`D`) decoded by prost, responses (`E`) written from
/// the resources they share with other streams. Buffers start small.
pub(crate) struct AdsCodec<E, D>(PhantomData<fn(E) -> D>);

impl<E, D> Default for AdsCodec<E, D> {
    fn default() -> Self {
        AdsCodec(PhantomData)
    }
}

impl<E, D> Codec for AdsCodec<E, D>
where
    E: Encode + Send + 'static,
    D: Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = AdsEncoder<E>;
    type Decoder = AdsDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        AdsEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        AdsDecoder(PhantomData)
    }
}

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// Writes a response into tonic's buffer, its resources' encoded bytes copied as they are (not
/// re-encoded). Only a service without [`crate::transport`] in front of it encodes this way:
/// the transport takes the responses over first.
pub(crate) struct AdsEncoder<E>(PhantomData<fn(E)>);

impl<E: Encode> Encoder for AdsEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode_raw(dst);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// Decodes a request with prost.
pub(crate) struct AdsDecoder<D>(PhantomData<fn() -> D>);

impl<D: Message + Default> Decoder for AdsDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("decoding a request: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}
