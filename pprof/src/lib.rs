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
    decompressed_size_hint, is_gzip,
};
pub use delta::{DeltaLimits, DeltaOutcome, DeltaTracker, cumulative_indices};
pub use proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};
pub use validate::{ValidateError, validate};
pub use wire::{DecodedSize, WireError, decode_profile, decoded_size, encode_with_samples};

use std::io::Write as _;

/// gzip level of re-encoded profiles: fast, since the scraper re-encodes on the hot path and the
/// sinks' receivers decompress anyway.
const GZIP_LEVEL: u32 = 1;

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

/// gzip-compresses `raw`.
pub fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 4 + 64),
        flate2::Compression::new(GZIP_LEVEL),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(raw);
    encoder.finish().unwrap_or_default()
}

/// The string at `index` of the profile's string table, or "" when out of range.
pub fn string(profile: &Profile, index: i64) -> &str {
    usize::try_from(index)
        .ok()
        .and_then(|i| profile.string_table.get(i))
        .map(String::as_str)
        .unwrap_or("")
}
