//! Generates the `perftools.profiles` messages from `proto/` with protox (a pure-Rust protobuf
//! compiler, so no `protoc` is needed on the build machine) and prost.
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("proto");
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([root.join("perftools/profiles/profile.proto")], [root])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
