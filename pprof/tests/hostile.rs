//! Deltas and decoding of hostile input: values near `i64::MAX`, counters that go down, sequences
//! found by random mutation. Tests run in the dev profile, so an arithmetic overflow panics here.

use kubeprof_pprof::{
    self as pprof, DecodeLimits, DeltaLimits, DeltaOutcome, DeltaTracker, Function, Label, Line,
    Location, Profile, Sample, ValueType,
};

const MUTEX: &[(&str, &str)] = &[("contentions", "count"), ("delay", "nanoseconds")];
const HEAP: &[(&str, &str)] = &[
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

/// A profile of `types` whose samples are (stack id 1..=3, label or none, values).
fn mk_profile(
    types: &[(&str, &str)],
    time_nanos: i64,
    samples: &[(u64, bool, Vec<i64>)],
) -> Profile {
    let mut strings: Vec<String> = vec![String::new()];
    let mut intern = |s: &str| -> i64 {
        if let Some(i) = strings.iter().position(|x| x == s) {
            return i as i64;
        }
        strings.push(s.to_owned());
        strings.len() as i64 - 1
    };
    let sample_type = types
        .iter()
        .map(|(t, u)| ValueType {
            r#type: intern(t),
            unit: intern(u),
        })
        .collect();
    let function = (1..=3)
        .map(|id| Function {
            id,
            name: intern(&format!("f{id}")),
            ..Default::default()
        })
        .collect();
    let location = (1..=3)
        .map(|id| Location {
            id,
            line: vec![Line {
                function_id: id,
                line: 1,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    let key = intern("k");
    let val = intern("v");
    let sample = samples
        .iter()
        .map(|(stack, labelled, value)| Sample {
            location_id: vec![*stack],
            value: value.clone(),
            label: if *labelled {
                vec![Label {
                    key,
                    str: val,
                    ..Default::default()
                }]
            } else {
                vec![]
            },
        })
        .collect();
    Profile {
        sample_type,
        sample,
        location,
        function,
        string_table: strings,
        time_nanos,
        ..Default::default()
    }
}

fn sent(outcome: DeltaOutcome) -> Option<Profile> {
    match outcome {
        DeltaOutcome::Delta(p) => Some(p),
        DeltaOutcome::Baseline { send, .. } => send,
    }
}

fn assert_never_negative(p: &Profile) {
    for s in &p.sample {
        assert!(
            s.value.iter().all(|&v| v >= 0),
            "negative value sent: {s:?}"
        );
    }
}

#[test]
fn a_sum_past_i64_max_is_a_reset_not_a_negative_delta() {
    // Found by mutation: [1], then [MAX, MAX] on one stack, then [MAX] sent -9223372036854775807
    // (and panicked in debug builds).
    let mut tracker = DeltaTracker::new(DeltaLimits::default());
    let max = i64::MAX;
    let steps = [
        vec![(1, false, vec![1, 1])],
        vec![(1, false, vec![max, max]), (1, false, vec![max, max])],
        vec![(1, false, vec![max, max])],
        vec![(1, false, vec![max, max])],
    ];
    for (n, samples) in steps.iter().enumerate() {
        let outcome = tracker.apply(mk_profile(MUTEX, n as i64 + 1, samples));
        if n == 1 {
            assert!(
                matches!(
                    outcome,
                    DeltaOutcome::Baseline {
                        reason: "overflow",
                        ..
                    }
                ),
                "{outcome:?}"
            );
        } else if let Some(p) = sent(outcome) {
            assert_never_negative(&p);
        }
    }
}

#[test]
fn a_difference_that_would_overflow_is_a_reset() {
    let mut tracker = DeltaTracker::new(DeltaLimits::default());
    // A negative cumulative value is nonsense, but must not make the next difference wrap.
    tracker.apply(mk_profile(MUTEX, 1, &[(1, false, vec![-5, i64::MIN])]));
    let out = tracker.apply(mk_profile(MUTEX, 2, &[(1, false, vec![3, i64::MAX])]));
    if let Some(p) = sent(out) {
        assert_never_negative(&p);
    }
}

#[test]
fn too_many_series_still_sends_in_use_memory() {
    let mut tracker = DeltaTracker::new(DeltaLimits { max_series: 1 });
    let heap = mk_profile(
        HEAP,
        1,
        &[
            (1, false, vec![5, 50, 2, 20]),
            (2, false, vec![7, 70, 0, 0]),
        ],
    );
    match tracker.apply(heap) {
        DeltaOutcome::Baseline {
            send: Some(p),
            reason: "state_limit",
        } => {
            // Only stack 1 holds memory in use; allocations are history and zeroed.
            assert_eq!(p.sample.len(), 1);
            assert_eq!(p.sample[0].value, vec![0, 0, 2, 20]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_sample_with_too_few_values_does_not_panic() {
    let mut tracker = DeltaTracker::new(DeltaLimits::default());
    tracker.apply(mk_profile(MUTEX, 1, &[(1, false, vec![4])]));
    let out = tracker.apply(mk_profile(MUTEX, 2, &[(1, false, vec![6])]));
    match out {
        DeltaOutcome::Delta(p) => assert_eq!(p.sample[0].value, vec![2, 0]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_limit_of_usize_max_does_not_overflow() {
    let body = pprof::gzip(b"\x48\x01");
    let limits = DecodeLimits {
        max_decompressed_bytes: usize::MAX,
        ..Default::default()
    };
    assert_eq!(
        pprof::decompress(&body, &limits).unwrap().as_ref(),
        b"\x48\x01"
    );
}

/// xorshift64*: a seeded generator, so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A non-negative value, biased to the edges where arithmetic breaks.
    fn value(&mut self) -> i64 {
        match self.below(8) {
            0 => 0,
            1 => i64::MAX,
            2 => i64::MAX - self.below(4) as i64,
            3 => (self.next() >> 1) as i64,
            4 => (i64::MAX / 2) + self.below(3) as i64,
            _ => self.below(100) as i64,
        }
    }
}

#[test]
fn no_sequence_of_non_negative_values_sends_a_negative_value_or_panics() {
    for seed in 1..=3_000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let types = if rng.below(2) == 0 { MUTEX } else { HEAP };
        let mut tracker = DeltaTracker::new(DeltaLimits {
            max_series: 1 + rng.below(6) as usize,
        });
        let mut time = 1i64;
        for _ in 0..(2 + rng.below(8)) {
            let samples: Vec<(u64, bool, Vec<i64>)> = (0..rng.below(5))
                .map(|_| {
                    let values = types.iter().map(|_| rng.value()).collect();
                    (1 + rng.below(3), rng.below(2) == 0, values)
                })
                .collect();
            time += rng.below(3) as i64 - 1;
            let out = tracker.apply(mk_profile(types, time, &samples));
            if let Some(p) = sent(out) {
                for s in &p.sample {
                    assert!(
                        s.value.iter().all(|&v| v >= 0),
                        "seed {seed}: negative value sent: {s:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn empty_samples_are_bounded_by_count_not_only_bytes() {
    // 16 MiB of empty samples (2 bytes each) gzip to a few KiB: within the byte limit, but
    // 8M samples decode to about 600 MB.
    let raw: Vec<u8> = [0x12u8, 0x00].repeat(8 << 20);
    let body = pprof::gzip(&raw);
    assert!(body.len() < 1 << 20);
    let err = pprof::decode(&body, &DecodeLimits::default()).unwrap_err();
    assert_eq!(err.reason(), "too_large", "{err}");
}
