//! The gRPC codec of `cache.v1`: prost encoding, with two changes.
//! - A request that is not a valid protobuf message (for example a key that
//!   is not UTF-8) is the caller's error, so it answers `INVALID_ARGUMENT`
//!   instead of prost's default `INTERNAL`.
//! - A reply is encoded into a buffer reserved at its exact size once,
//!   instead of growing tonic's 8 KiB buffer by doubling (and copying) for
//!   large replies such as an MGet of many values.
//!
//! Wired in by `build.rs` (`codec_path`); it owns nothing else.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

use crate::error::Error;

/// prost codec whose decode errors are `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Default)]
pub struct CacheCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Codec for CacheCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = CacheEncoder<T>;
    type Decoder = CacheDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        CacheEncoder { _pd: PhantomData }
    }

    fn decoder(&mut self) -> Self::Decoder {
        CacheDecoder { _pd: PhantomData }
    }
}

/// Encodes `T` into a buffer reserved at its encoded length.
#[derive(Debug, Clone, Default)]
pub struct CacheEncoder<T> {
    _pd: PhantomData<T>,
}

impl<T: Message> Encoder for CacheEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        // The buffer now has room for the whole message, which is the only
        // way `encode` can fail; `encode_raw` skips measuring it again.
        item.encode_raw(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes `U`, mapping malformed input to `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Default)]
pub struct CacheDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for CacheDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            // prost's message names the field and the reason, never the bytes.
            Error::InvalidArgument(format!("malformed request: {e}")).into()
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
