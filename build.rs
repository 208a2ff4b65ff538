//! Generates the gRPC code of `cache.v1` and of Prism's plugin interfaces
//! (`prism.*`), and the descriptor sets that server reflection serves.
//! protoc comes from `protoc-bin-vendored`, so a build needs no system
//! protoc.

use std::{env, error::Error, path::PathBuf};

/// Prism's interfaces, as Prism lays them out under `proto/`.
const PRISM_PROTOS: [&str; 5] = [
    "proto/prism/common/types.proto",
    "proto/prism/interfaces/keyvalue/keyvalue_basic.proto",
    "proto/prism/interfaces/keyvalue/keyvalue_batch.proto",
    "proto/prism/interfaces/keyvalue/keyvalue_ttl.proto",
    "proto/prism/interfaces/lifecycle.proto",
];

fn prost() -> Result<prost_build::Config, Box<dyn Error>> {
    let mut prost = prost_build::Config::new();
    prost.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    Ok(prost)
}

fn main() -> Result<(), Box<dyn Error>> {
    let include = protoc_bin_vendored::include_path()?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("cache_descriptor.bin"))
        .bytes(".cache.v1")
        // Malformed requests are INVALID_ARGUMENT, not prost's INTERNAL.
        .codec_path("crate::codec::CacheCodec")
        // MGet's reply is written by hand: its hits as a list, not the
        // HashMap prost makes of a map field (same wire bytes).
        .extern_path(".cache.v1.MGetResponse", "crate::mget_reply::MGetResponse")
        // And its request: the keys as slices of the request, not a
        // String each (same wire bytes).
        .extern_path(".cache.v1.MGetRequest", "crate::mget_request::MGetRequest")
        .compile_with_config(
            prost()?,
            &[PathBuf::from("proto/cache/v1/cache.proto")],
            &[PathBuf::from("proto"), include.clone()],
        )?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("prism_descriptor.bin"))
        // Values pass to the cache service without a copy.
        .bytes(".prism")
        .codec_path("crate::codec::CacheCodec")
        .compile_with_config(
            prost()?,
            &PRISM_PROTOS.map(PathBuf::from),
            &[PathBuf::from("proto"), include],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
