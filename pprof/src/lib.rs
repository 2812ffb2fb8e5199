//! kubeprof-pprof: the pprof codec. The `perftools.profiles` messages (generated from
//! `proto/`), decoding (gzip or raw, with a decompression limit), validation, deltas of
//! cumulative profiles, and encoding again.
//!
//! Profiles are forwarded as the bytes the target sent whenever nothing changed them; only a
//! delta profile (or a raw, uncompressed body) is re-encoded.
#![forbid(unsafe_code)]

mod decode;
mod delta;
mod proto;
mod validate;
mod wire;

pub use decode::{
    DecodeError, DecodeLimits, decode, decode_measured, decode_raw, decompress, decompress_within,
    decompressed_size_hint, gzip_announced_size, is_gzip,
};
pub use delta::{DeltaLimits, DeltaOutcome, DeltaTracker, cumulative_indices};
pub use proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};
pub use validate::{ValidateError, validate};
pub use wire::{DecodedSize, WireError, decode_profile, decoded_size, encode_with_samples};

/// gzip level of re-encoded profiles: fast, since the scraper re-encodes on the hot path and the
/// sinks' receivers decompress anyway.
const GZIP_LEVEL: u8 = 1;

/// Serializes `profile` as gzip-compressed protobuf (what `net/http/pprof` serves).
pub fn encode_gzip(profile: &Profile) -> Vec<u8> {
    use prost::Message as _;
    let raw = profile.encode_to_vec();
    gzip(&raw)
}

/// A delta of the profile `original` encodes, gzip-compressed: the unchanged tables are
/// copied from `original` rather than encoded again.
pub fn encode_delta(original: &[u8], delta: &Profile) -> Vec<u8> {
    match encode_with_samples(original, delta) {
        Ok(raw) => gzip(&raw),
        // `original` decoded before, so this does not happen; encoding afresh is always right.
        Err(_) => encode_gzip(delta),
    }
}

/// gzip-compresses `raw`, with miniz_oxide itself rather than through flate2: flate2 has one
/// backend per binary, and blazesym (in the eBPF crate) switches the scraper's to zlib-rs, which
/// deflates about twice as slowly at level 1 (the pipeline benchmark's gzip stage: 4.9 ms vs 2.4
/// ms for 1 MiB).
pub fn gzip(raw: &[u8]) -> Vec<u8> {
    let deflated = miniz_oxide::deflate::compress_to_vec(raw, GZIP_LEVEL);
    let mut out = Vec::with_capacity(deflated.len() + 18);
    // RFC 1952: magic, deflate, no flags, no time, no extra flags, unknown OS.
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    out.extend_from_slice(&deflated);
    out.extend_from_slice(&crc32fast::hash(raw).to_le_bytes());
    // ISIZE is the length modulo 2^32.
    let isize = (raw.len() as u64 & u64::from(u32::MAX)) as u32;
    out.extend_from_slice(&isize.to_le_bytes());
    out
}

/// The string at `index` of the profile's string table, or "" when out of range.
pub fn string(profile: &Profile, index: i64) -> &str {
    usize::try_from(index)
        .ok()
        .and_then(|i| profile.string_table.get(i))
        .map(String::as_str)
        .unwrap_or("")
}
