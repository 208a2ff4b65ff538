//! The gRPC codec of `cache.v1`: prost encoding, with one change — a request
//! that is not a valid protobuf message (for example a key that is not
//! UTF-8) is the caller's error, so it answers `INVALID_ARGUMENT` instead of
//! prost's default `INTERNAL`.
//!
//! Wired in by `build.rs` (`codec_path`); it owns nothing else.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstEncoder};

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
    type Encoder = ProstEncoder<T>;
    type Decoder = CacheDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        CacheDecoder { _pd: PhantomData }
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
            Status::invalid_argument(format!("malformed request: {e}"))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
