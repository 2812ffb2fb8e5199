//! Bytes from a target to a `Profile`, bounded.

use std::{borrow::Cow, io::Read as _};

use super::Profile;

/// Bounds on what decoding may allocate.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest decompressed profile accepted (default 64 MiB); a gzip bomb stops here.
    pub max_decompressed_bytes: usize,
    /// Most top-level entries (samples, locations, functions, mappings, strings) decoded
    /// (default 1,000,000). Each costs ~100 bytes decoded from as little as 2 bytes of input,
    /// so the byte limit alone let 64 MiB of empty samples take ~3 GB.
    pub max_entries: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_decompressed_bytes: 64 << 20,
            max_entries: 1_000_000,
        }
    }
}

/// Why a body is not a profile. [`DecodeError::reason`] is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Nothing was sent.
    #[error("empty body")]
    Empty,
    /// The gzip stream ends early.
    #[error("truncated gzip stream")]
    TruncatedGzip,
    /// The gzip stream is damaged.
    #[error("corrupt gzip stream: {0}")]
    CorruptGzip(std::io::Error),
    /// Decompressing would exceed the limit.
    #[error("profile exceeds {limit} bytes when decompressed")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// More entries than the limit: the decoded profile would be too large.
    #[error("profile has more than {limit} samples, locations, functions and strings")]
    TooManyEntries {
        /// The limit.
        limit: usize,
    },
    /// Not a pprof protobuf message.
    #[error("not a pprof profile: {0}")]
    NotPprof(#[from] super::wire::WireError),
}

impl DecodeError {
    /// A short, fixed label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TruncatedGzip => "truncated_gzip",
            Self::CorruptGzip(_) => "corrupt_gzip",
            Self::TooLarge { .. } | Self::TooManyEntries { .. } => "too_large",
            Self::NotPprof(_) => "not_pprof",
        }
    }
}

/// The decompressed size a gzip body announces in its trailer (ISIZE, the size modulo 2^32
/// of its last member), capped at `limits.max_decompressed_bytes`; a raw body's own length.
/// Only a hint: [`decompress_within`] holds a body to it.
pub fn decompressed_size_hint(body: &[u8], limits: &DecodeLimits) -> usize {
    if !is_gzip(body) {
        return body.len();
    }
    gzip_trailer_size(body)
        .unwrap_or(0)
        .min(limits.max_decompressed_bytes)
}

/// Deflate's largest expansion: 258 bytes out of a code of 2 bits, about 1032:1.
const MAX_DEFLATE_RATIO: usize = 1032;

/// ISIZE, the last four bytes of a gzip stream, when deflate can expand the body to it: the
/// last bytes of a truncated or corrupt stream are no size (a valid stream's ISIZE is its last
/// member's size, never more than the whole, below 4 GiB).
fn gzip_trailer_size(body: &[u8]) -> Option<usize> {
    let at = body.len().checked_sub(4)?;
    let bytes = <[u8; 4]>::try_from(body.get(at..)?).ok()?;
    usize::try_from(u32::from_le_bytes(bytes))
        .ok()
        .filter(|&n| n <= body.len().saturating_mul(MAX_DEFLATE_RATIO))
}

/// What a gzip body's trailer says it decompresses to, when deflate could expand the body that
/// far (`None` for a raw body, and for a trailer that cannot be a size).
pub fn gzip_announced_size(body: &[u8]) -> Option<usize> {
    is_gzip(body).then(|| gzip_trailer_size(body)).flatten()
}

/// [`decompress`] holding no more than `within` bytes (at most the limit): `Ok(None)` when the
/// body decompresses to more than `within` but not more than the limit (a trailer that
/// understated its size, or a stream of several gzip members), to be retried with more room.
pub fn decompress_within<'a>(
    body: &'a [u8],
    within: usize,
    limits: &DecodeLimits,
) -> Result<Option<Cow<'a, [u8]>>, DecodeError> {
    let within = within.min(limits.max_decompressed_bytes);
    let narrowed = DecodeLimits {
        max_decompressed_bytes: within,
        ..*limits
    };
    match decompress(body, &narrowed) {
        Err(DecodeError::TooLarge { .. }) if within < limits.max_decompressed_bytes => Ok(None),
        Err(DecodeError::TooLarge { .. }) => Err(DecodeError::TooLarge {
            limit: limits.max_decompressed_bytes,
        }),
        other => other.map(Some),
    }
}

/// Whether `body` starts with the gzip magic.
pub fn is_gzip(body: &[u8]) -> bool {
    body.starts_with(&[0x1f, 0x8b])
}

/// The protobuf bytes of `body`: gunzipped (at most `limits.max_decompressed_bytes`) or as is.
pub fn decompress<'a>(body: &'a [u8], limits: &DecodeLimits) -> Result<Cow<'a, [u8]>, DecodeError> {
    if body.is_empty() {
        return Err(DecodeError::Empty);
    }
    if !is_gzip(body) {
        if body.len() > limits.max_decompressed_bytes {
            return Err(DecodeError::TooLarge {
                limit: limits.max_decompressed_bytes,
            });
        }
        return Ok(Cow::Borrowed(body));
    }
    let limit = limits.max_decompressed_bytes;
    // Reading one byte past the limit tells "exactly at the limit" from "over it" without ever
    // holding more than limit + 1 bytes. The buffer is sized once from the gzip trailer: growing
    // by doubling would touch up to twice the limit (a 64 MiB bomb took 128 MiB), while
    // capacity never written costs no memory.
    let mut reader = flate2::read::MultiGzDecoder::new(body)
        .take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1));
    let mut out = Vec::with_capacity(
        decompressed_size_hint(body, limits)
            .max(body.len().saturating_mul(4))
            .min(limit)
            .saturating_add(1),
    );
    match reader.read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Err(DecodeError::TooLarge { limit }),
        Ok(_) => Ok(Cow::Owned(out)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(DecodeError::TruncatedGzip),
        Err(e) => Err(DecodeError::CorruptGzip(e)),
    }
}

/// Decodes a pprof profile from a gzip-compressed or raw body. Call [`super::validate`] next:
/// decoding checks the wire format only.
pub fn decode(body: &[u8], limits: &DecodeLimits) -> Result<Profile, DecodeError> {
    let raw = decompress(body, limits)?;
    decode_raw(raw.as_ref(), limits)
}

/// Decodes decompressed protobuf bytes, refusing more than `limits.max_entries` entries
/// before allocating any of them.
pub fn decode_raw(raw: &[u8], limits: &DecodeLimits) -> Result<Profile, DecodeError> {
    decode_measured(raw, super::wire::decoded_size(raw)?, limits)
}

/// [`decode_raw`] of bytes [`super::decoded_size`] has measured already.
pub fn decode_measured(
    raw: &[u8],
    size: super::DecodedSize,
    limits: &DecodeLimits,
) -> Result<Profile, DecodeError> {
    if size.entries > limits.max_entries {
        return Err(DecodeError::TooManyEntries {
            limit: limits.max_entries,
        });
    }
    Ok(super::wire::decode_profile(raw)?)
}
