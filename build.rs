//! Generates the `cache.v1` gRPC code and the descriptor set that server
//! reflection serves. protoc comes from `protoc-bin-vendored`, so a build
//! needs no system protoc.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let mut prost = prost_build::Config::new();
    prost.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let include = protoc_bin_vendored::include_path()?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("cache_descriptor.bin"))
        .bytes(".cache.v1")
        // Malformed requests are INVALID_ARGUMENT, not prost's INTERNAL.
        .codec_path("crate::codec::CacheCodec")
        .compile_with_config(
            prost,
            &[PathBuf::from("proto/cache/v1/cache.proto")],
            &[PathBuf::from("proto"), include],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
