//! A bounded, seeded fuzz run of the path every scraped body takes: decompress, measure, decode,
//! validate, delta, encode the delta. Inputs are real Go profiles mutated at the byte level
//! (bit flips, random bytes, insertions, deletions, duplicated ranges, maximal varints,
//! truncation), raw or gzipped, fed in sequences to one delta tracker per profile kind.
//!
//! Checked on every input: nothing panics (tests build with overflow checks, so an overflow
//! panics too), the measured size admits what decoding produced, every value a delta sends for a
//! cumulative type is non-negative, and an encoded delta decodes back to the delta.
//!
//! `scripts/test.sh` runs 2,000 inputs (a few seconds). A longer run, with overflow checks kept
//! in the optimised build:
//! ```sh
//! KUBEPROF_FUZZ_ITERATIONS=2000000 KUBEPROF_FUZZ_SEED=7 CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true \
//!   cargo test --release -p kubeprof-pprof --test fuzz
//! ```
//! A failure prints its seed and iteration, which replay it exactly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic

use std::path::Path;

use kubeprof_pprof::{
    self as pprof, DecodeLimits, DeltaLimits, DeltaOutcome, DeltaTracker, Profile,
};

/// xorshift64*: a seeded generator, so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The decompressed bytes of every Go fixture.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pprof-go");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let body = std::fs::read(&p).unwrap();
            let raw = pprof::decompress(&body, &DecodeLimits::default())
                .unwrap()
                .into_owned();
            (p.file_name().unwrap().to_string_lossy().into_owned(), raw)
        })
        .collect();
    out.sort();
    out
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        let at = rng.below(len + 1);
        match rng.below(8) {
            0 if len > 0 => input[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => input[at.min(len - 1)] = rng.next() as u8,
            2 => input.insert(at, rng.next() as u8),
            3 => {
                let end = (at + 1 + rng.below(16)).min(len);
                input.drain(at.min(end)..end);
            }
            4 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                let range = input[start..end].to_vec();
                input.splice(at..at, range);
            }
            // A varint as large as it gets, where a value or an id was.
            5 => {
                let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
                let end = (at + max.len()).min(len);
                input.splice(at..end, max);
            }
            6 => input.truncate(at),
            _ => {
                // Values near the edges of i64, as varints, in place of a byte.
                if len > 0 {
                    let v = [i64::MAX, i64::MIN, -1, 1 << 62][rng.below(4)] as u64;
                    let mut bytes = Vec::new();
                    let mut v = v;
                    while v >= 0x80 {
                        bytes.push((v as u8) | 0x80);
                        v >>= 7;
                    }
                    bytes.push(v as u8);
                    input.splice(at.min(len - 1)..at.min(len - 1) + 1, bytes);
                }
            }
        }
    }
}

/// Runs one body through the scrape path; the delta profile it sends, if any.
fn scrape(body: &[u8], tracker: &mut DeltaTracker, what: &str) -> Option<Profile> {
    let limits = DecodeLimits::default();
    let raw = pprof::decompress(body, &limits).ok()?;
    let size = pprof::decoded_size(&raw).ok()?;
    let profile = pprof::decode_measured(&raw, size, &limits).ok()?;
    assert!(size.entries >= profile.sample.len(), "{what}: {size:?}");
    pprof::validate(&profile).ok()?;
    let cumulative = pprof::cumulative_indices(&profile);
    let sent = match tracker.apply(profile) {
        DeltaOutcome::Delta(p) => p,
        DeltaOutcome::Baseline { send, .. } => send?,
    };
    for s in &sent.sample {
        for &i in &cumulative {
            if let Some(&v) = s.value.get(i) {
                assert!(v >= 0, "{what}: negative delta {v} sent: {s:?}");
            }
        }
    }
    let encoded = pprof::encode_delta(&raw, &sent);
    let back = pprof::decode(&encoded, &limits)
        .unwrap_or_else(|e| panic!("{what}: the encoded delta does not decode: {e}"));
    assert_eq!(
        back.sample, sent.sample,
        "{what}: the encoded delta differs"
    );
    Some(sent)
}

#[test]
fn mutated_profiles_never_panic_never_send_negative_deltas_and_encode_back() {
    let iterations = env("KUBEPROF_FUZZ_ITERATIONS", 2_000);
    let seed = env("KUBEPROF_FUZZ_SEED", 1);
    let corpus = corpus();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut trackers: Vec<DeltaTracker> = corpus
        .iter()
        .map(|_| DeltaTracker::new(DeltaLimits { max_series: 64 }))
        .collect();
    let (mut decoded, mut sent) = (0u64, 0u64);
    for i in 0..iterations {
        let k = rng.below(corpus.len());
        let (name, base) = &corpus[k];
        let mut input = base.clone();
        // A quarter go through unchanged, so the tracker sees real deltas between mutants.
        if rng.below(4) != 0 {
            mutate(&mut rng, &mut input);
        }
        let body = if rng.below(2) == 0 {
            pprof::gzip(&input)
        } else {
            input
        };
        let body = if rng.below(16) == 0 {
            // Damage the gzip stream itself now and then.
            let mut b = body;
            mutate(&mut rng, &mut b);
            b
        } else {
            body
        };
        let what = format!("seed {seed} iteration {i} ({name})");
        decoded += u64::from(pprof::decode(&body, &DecodeLimits::default()).is_ok());
        sent += u64::from(scrape(&body, &mut trackers[k], &what).is_some());
    }
    // The mutations must leave enough valid profiles for the delta path to be exercised.
    assert!(
        decoded * 4 > iterations && sent * 20 > iterations,
        "{decoded} decoded, {sent} sent of {iterations}"
    );
}
