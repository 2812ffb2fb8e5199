//! The hot path of the pprof codec, by hand where prost's generic code is slow for this message:
//!
//! - [`decode_profile`]: samples (most of a profile's bytes: two packed arrays each) are decoded
//!   with exactly sized vectors; everything else goes through prost.
//! - [`encode_with_samples`]: a delta changes only the samples and `duration_nanos`, so the new
//!   profile is the original bytes of every other field, copied, followed by the new samples.
//!
//! Both give what prost would (the tests compare them on real Go profiles).

use std::ops::Range;

use prost::Message as _;

use crate::{Label, Profile, Sample};

/// Why bytes are not a profile.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The protobuf framing is broken.
    #[error("{0}")]
    Malformed(&'static str),
    /// A part decoded by prost is broken.
    #[error(transparent)]
    Message(#[from] prost::DecodeError),
}

type DecodeError = WireError;

impl WireError {
    fn new(what: &'static str) -> Self {
        Self::Malformed(what)
    }
}

/// `Profile.sample`.
const FIELD_SAMPLE: u32 = 2;
/// `Profile.duration_nanos`.
const FIELD_DURATION: u32 = 10;

/// One varint at `*pos`. Most in a profile (location ids, small counts) take one or two bytes:
/// those are read without the loop.
#[inline(always)]
fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, DecodeError> {
    match buf.get(*pos..) {
        Some([b0, ..]) if *b0 < 0x80 => {
            *pos += 1;
            Ok(u64::from(*b0))
        }
        Some([b0, b1, ..]) if *b1 < 0x80 => {
            *pos += 2;
            Ok(u64::from(b0 & 0x7f) | u64::from(*b1) << 7)
        }
        _ => varint_long(buf, pos),
    }
}

#[inline(never)]
fn varint_long(buf: &[u8], pos: &mut usize) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&b) = buf.get(*pos) else {
            return Err(DecodeError::new("truncated varint"));
        };
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(value);
        }
    }
    Err(DecodeError::new("varint longer than 10 bytes"))
}

/// One top-level field: number, wire type, the whole field's bytes and its payload's.
struct Field {
    number: u32,
    wire_type: u8,
    whole: Range<usize>,
    payload: Range<usize>,
}

fn next_field(buf: &[u8], pos: &mut usize) -> Result<Field, DecodeError> {
    let start = *pos;
    let key = varint(buf, pos)?;
    let number = u32::try_from(key >> 3).map_err(|_| DecodeError::new("field number too large"))?;
    if number == 0 {
        return Err(DecodeError::new("field number 0"));
    }
    let wire_type = (key & 7) as u8;
    let payload_start = *pos;
    match wire_type {
        0 => {
            varint(buf, pos)?;
        }
        1 => *pos += 8,
        2 => {
            let len = usize::try_from(varint(buf, pos)?)
                .map_err(|_| DecodeError::new("length too large"))?;
            let begin = *pos;
            *pos = begin
                .checked_add(len)
                .ok_or_else(|| DecodeError::new("length too large"))?;
            if *pos > buf.len() {
                return Err(DecodeError::new("truncated field"));
            }
            return Ok(Field {
                number,
                wire_type,
                whole: start..*pos,
                payload: begin..*pos,
            });
        }
        5 => *pos += 4,
        _ => return Err(DecodeError::new("unsupported wire type")),
    }
    if *pos > buf.len() {
        return Err(DecodeError::new("truncated field"));
    }
    Ok(Field {
        number,
        wire_type,
        whole: start..*pos,
        payload: payload_start..*pos,
    })
}

/// How many varints `buf` holds if none is broken: every varint ends with exactly one byte below
/// 0x80. Counted eight bytes at a time: LLVM's vectorisation of the plain byte loop widens every
/// byte to 64 bits and took a sixth of the decoding.
fn varint_count(buf: &[u8]) -> usize {
    const LOW: u64 = 0x0101_0101_0101_0101;
    let mut chunks = buf.chunks_exact(8);
    let mut n = 0;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        // One bit per byte below 0x80; the multiply sums the eight bytes into the top one.
        let ends = (!u64::from_le_bytes(word) >> 7) & LOW;
        n += (ends.wrapping_mul(LOW) >> 56) as usize;
    }
    n + chunks.remainder().iter().filter(|b| **b < 0x80).count()
}

/// Decodes packed varints into `out`, reserving exactly once.
fn packed<T>(buf: &[u8], out: &mut Vec<T>, from: impl Fn(u64) -> T) -> Result<(), DecodeError> {
    out.reserve(varint_count(buf));
    let mut pos = 0;
    while pos < buf.len() {
        out.push(from(varint(buf, &mut pos)?));
    }
    Ok(())
}

fn sample(buf: &[u8]) -> Result<Sample, DecodeError> {
    let mut s = Sample::default();
    let mut pos = 0;
    while pos < buf.len() {
        let f = next_field(buf, &mut pos)?;
        let payload = &buf[f.payload.clone()];
        match (f.number, f.wire_type) {
            (1, 2) => packed(payload, &mut s.location_id, |v| v)?,
            (1, 0) => s.location_id.push(varint(payload, &mut 0)?),
            // int64 travels as its two's-complement bits.
            (2, 2) => packed(payload, &mut s.value, |v| v as i64)?,
            (2, 0) => s.value.push(varint(payload, &mut 0)? as i64),
            (3, 2) => s.label.push(Label::decode(payload)?),
            (1..=3, _) => return Err(DecodeError::new("invalid wire type in Sample")),
            // Unknown fields are skipped, as prost does.
            _ => {}
        }
    }
    Ok(s)
}

/// What decoding `raw` would allocate, measured without decoding it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodedSize {
    /// Top-level entries: samples, locations, functions, mappings, strings, ...
    pub entries: usize,
    /// Bytes the decoded [`Profile`] and the decoder's scratch copy take, an estimate that
    /// errs high: every packed varint becomes 8 bytes, each entry costs its struct.
    pub bytes: usize,
}

/// Measures `raw` in one pass over its bytes, allocating nothing: the scraper reserves this
/// much of its decode budget before decoding.
pub fn decoded_size(raw: &[u8]) -> Result<DecodedSize, DecodeError> {
    use std::mem::size_of;
    let mut pos = 0;
    let mut size = DecodedSize {
        entries: 0,
        // The non-sample fields are copied once for prost (`decode_profile`'s `rest`).
        bytes: raw.len(),
    };
    while pos < raw.len() {
        let f = next_field(raw, &mut pos)?;
        size.entries += 1;
        let payload = &raw[f.payload.clone()];
        let cost = match f.number {
            FIELD_SAMPLE => {
                let mut cost = size_of::<Sample>();
                let mut p = 0;
                while p < payload.len() {
                    let sf = next_field(payload, &mut p)?;
                    let sp = &payload[sf.payload];
                    cost += match (sf.number, sf.wire_type) {
                        // Packed: one 8-byte element per varint, each ending in a byte < 0x80.
                        (1 | 2, 2) => 8 * varint_count(sp),
                        (1 | 2, _) => 8,
                        (3, _) => size_of::<Label>() + sp.len(),
                        _ => 0,
                    };
                }
                cost
            }
            // Strings: the String and its bytes.
            6 => size_of::<String>() + payload.len(),
            // Mappings, locations (with their lines), functions, sample types, ...: a line of
            // a location is 16 bytes decoded from 2 or more; 8x the payload covers every case.
            _ => size_of::<crate::Location>() + 8 * payload.len(),
        };
        size.bytes = size.bytes.saturating_add(cost);
    }
    Ok(size)
}

/// Decodes a raw (uncompressed) profile; the same result as `Profile::decode`.
pub fn decode_profile(raw: &[u8]) -> Result<Profile, DecodeError> {
    let mut rest = Vec::with_capacity(raw.len() / 2);
    let mut samples = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        let f = next_field(raw, &mut pos)?;
        if f.number == FIELD_SAMPLE {
            if f.wire_type != 2 {
                return Err(DecodeError::new("invalid wire type for Profile.sample"));
            }
            samples.push(f.payload);
        } else {
            rest.extend_from_slice(&raw[f.whole]);
        }
    }
    let mut profile = Profile::decode(rest.as_slice())?;
    profile.sample = samples
        .into_iter()
        .map(|r| sample(&raw[r]))
        .collect::<Result<_, _>>()?;
    Ok(profile)
}

/// `profile` encoded, given that it differs from the profile `original` encodes only in its
/// samples and `duration_nanos` (what a delta changes): the other fields are copied as bytes.
/// Fields may come in any order in protobuf, and readers keep the last value of a scalar.
pub fn encode_with_samples(original: &[u8], profile: &Profile) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(original.len());
    let mut pos = 0;
    // Kept fields mostly follow one another (all samples, then all tables): each run of them
    // is copied at once.
    let mut run = 0..0;
    while pos < original.len() {
        let f = next_field(original, &mut pos)?;
        if f.number == FIELD_SAMPLE || f.number == FIELD_DURATION {
            out.extend_from_slice(&original[run.clone()]);
            run = pos..pos;
        } else if run.end == f.whole.start {
            run.end = f.whole.end;
        } else {
            out.extend_from_slice(&original[run]);
            run = f.whole;
        }
    }
    out.extend_from_slice(&original[run]);
    for s in &profile.sample {
        encode_sample(s, &mut out);
    }
    if profile.duration_nanos != 0 {
        prost::encoding::int64::encode(FIELD_DURATION, &profile.duration_nanos, &mut out);
    }
    Ok(out)
}

#[inline]
fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Writes `v` at `*at` of `out`, which has room (sized from [`varint_len`]).
#[inline]
fn put_varint(mut v: u64, out: &mut [u8], at: &mut usize) {
    while v >= 0x80 {
        out[*at] = (v as u8) | 0x80;
        *at += 1;
        v >>= 7;
    }
    out[*at] = v as u8;
    *at += 1;
}

/// One `Profile.sample` field, as prost writes it (packed ids and values, then labels), with
/// each length computed once.
fn encode_sample(s: &Sample, out: &mut Vec<u8>) {
    let ids: usize = s.location_id.iter().map(|v| varint_len(*v)).sum();
    let values: usize = s.value.iter().map(|v| varint_len(*v as u64)).sum();
    let labels: Vec<usize> = s.label.iter().map(|l| l.encoded_len()).collect();
    let mut packed = 0;
    if !s.location_id.is_empty() {
        packed += 1 + varint_len(ids as u64) + ids;
    }
    if !s.value.is_empty() {
        packed += 1 + varint_len(values as u64) + values;
    }
    let len = packed
        + labels
            .iter()
            .map(|l| 1 + varint_len(*l as u64) + l)
            .sum::<usize>();
    // The ids and values are written into bytes sized once, not pushed one by one.
    let start = out.len();
    out.resize(start + 1 + varint_len(len as u64) + packed, 0);
    let buf = &mut out[start..];
    let mut at = 0;
    buf[at] = (FIELD_SAMPLE << 3 | 2) as u8;
    at += 1;
    put_varint(len as u64, buf, &mut at);
    if !s.location_id.is_empty() {
        buf[at] = 1 << 3 | 2;
        at += 1;
        put_varint(ids as u64, buf, &mut at);
        for v in &s.location_id {
            put_varint(*v, buf, &mut at);
        }
    }
    if !s.value.is_empty() {
        buf[at] = 2 << 3 | 2;
        at += 1;
        put_varint(values as u64, buf, &mut at);
        for v in &s.value {
            put_varint(*v as u64, buf, &mut at);
        }
    }
    debug_assert_eq!(at, buf.len());
    for (l, n) in s.label.iter().zip(labels) {
        out.push(3 << 3 | 2);
        prost::encoding::encode_varint(n as u64, out);
        l.encode_raw(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/pprof-go/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let gz = std::fs::read(path).unwrap_or_default();
        crate::decompress(&gz, &Default::default())
            .map(|c| c.into_owned())
            .unwrap_or_default()
    }

    const FIXTURES: [&str; 11] = [
        "allocs.pb.gz",
        "allocs-2.pb.gz",
        "block.pb.gz",
        "block-2.pb.gz",
        "cpu.pb.gz",
        "goroutine.pb.gz",
        "heap.pb.gz",
        "heap-2.pb.gz",
        "mutex.pb.gz",
        "mutex-2.pb.gz",
        "threadcreate.pb.gz",
    ];

    #[test]
    fn varints_are_counted_by_their_last_bytes() {
        let mut seed = 11u64;
        for len in 0..100 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let plain = bytes.iter().filter(|b| **b < 0x80).count();
            assert_eq!(varint_count(&bytes), plain, "{bytes:?}");
        }
        assert_eq!(varint_count(&[0x7f; 64]), 64);
        assert_eq!(varint_count(&[0x80; 64]), 0);
    }

    #[test]
    fn decodes_as_prost_does() {
        for name in FIXTURES {
            let raw = fixture(name);
            assert!(!raw.is_empty(), "{name}");
            let expected = Profile::decode(raw.as_slice()).ok();
            assert_eq!(decode_profile(&raw).ok(), expected, "{name}");
        }
    }

    #[test]
    fn spliced_encoding_reads_back_as_the_changed_profile() {
        for name in FIXTURES {
            let raw = fixture(name);
            let Ok(mut p) = Profile::decode(raw.as_slice()) else {
                panic!("{name}")
            };
            // What a delta does: fewer samples, other values, a duration.
            p.sample.truncate(p.sample.len() / 2);
            for s in &mut p.sample {
                for v in &mut s.value {
                    *v /= 2;
                }
            }
            p.duration_nanos = 15_000_000_000;
            let out = encode_with_samples(&raw, &p).ok();
            let back = out.and_then(|o| Profile::decode(o.as_slice()).ok());
            assert_eq!(back.as_ref(), Some(&p), "{name}");
        }
    }

    #[test]
    fn samples_are_encoded_as_prost_encodes_them() {
        let samples = [
            Sample::default(),
            Sample {
                location_id: vec![1, 127, 128, 300, u64::MAX],
                value: vec![0, -1, i64::MAX, i64::MIN, 42],
                label: vec![
                    Label {
                        key: 3,
                        str: 4,
                        num: 0,
                        num_unit: 0,
                    },
                    Label {
                        key: 5,
                        str: 0,
                        num: -7,
                        num_unit: 6,
                    },
                ],
            },
        ];
        for s in samples {
            let mut ours = Vec::new();
            encode_sample(&s, &mut ours);
            let mut theirs = Vec::new();
            prost::encoding::message::encode(FIELD_SAMPLE, &s, &mut theirs);
            assert_eq!(ours, theirs, "{s:?}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let raw = fixture("heap.pb.gz");
        for cut in [1, 7, raw.len() / 3, raw.len() - 1] {
            let _ = decode_profile(&raw[..cut]);
            let _ = encode_with_samples(&raw[..cut], &Profile::default());
        }
        for junk in [
            &[0xff_u8; 16][..],
            &[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f],
            &[0x00],
            &[0x13],
        ] {
            assert!(decode_profile(junk).is_err(), "{junk:?}");
        }
        // Each step agrees with prost on whether the input is acceptable.
        let mut seed = 7u64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut bytes = raw[..raw.len().min(600)].to_vec();
            let i = (seed as usize) % bytes.len();
            bytes[i] = (seed >> 32) as u8;
            let ours = decode_profile(&bytes).ok();
            let theirs = Profile::decode(bytes.as_slice()).ok();
            if let (Some(a), Some(b)) = (&ours, &theirs) {
                assert_eq!(a, b);
            }
        }
    }
}
