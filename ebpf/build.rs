//! Compiles the BPF program (`src/bpf/profile.bpf.c`) with clang into `$OUT_DIR/profile.bpf.o`,
//! which the crate embeds and loads through libbpf-rs.

use std::{env, path::PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SOURCE: &str = "src/bpf/profile.bpf.c";

fn main() {
    let Some(out) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        panic!("cargo sets OUT_DIR for build scripts");
    };
    // The UAPI headers include <asm/types.h>, which Debian keeps under the multiarch directory;
    // `-target bpf` does not search it by itself.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => other,
    };
    // Only the object: the generated skeleton would bring unsafe code of its own and borrow its
    // storage, where an owned `libbpf_rs::Object` keeps the sampler a plain struct.
    if let Err(e) = SkeletonBuilder::new()
        .source(SOURCE)
        .obj(out.join("profile.bpf.o"))
        .clang_args([
            "-O2".to_string(),
            "-g".to_string(),
            "-Wall".to_string(),
            format!("-I/usr/include/{multiarch}"),
        ])
        .build()
    {
        panic!(
            "building {SOURCE} failed (it needs clang, and libbpf-sys needs libelf-dev, zlib1g-dev \
             and pkg-config): {e:#}"
        );
    }
    println!("cargo:rerun-if-changed={SOURCE}");
}
