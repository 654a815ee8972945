//! Compiles `proto/` with protox (pure Rust: no system protoc on a fresh machine) and
//! keeps the encoded descriptor set for gRPC server reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("shardrank/v1/coordinator.proto"),
        root.join("shardrank/v1/shard.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("shardrank_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's encoding, decoding from one slice (see src/codec.rs).
        .codec_path("crate::codec::WireCodec")
        .compile_fds(fds)?;
    Ok(())
}
