//! The codec on real Go profiles: decoding, validation, deltas to the byte, and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::{collections::BTreeMap, path::PathBuf};

use kubeprof_pprof::{
    self as pprof, DecodeLimits, DeltaLimits, DeltaOutcome, DeltaTracker, Profile,
    cumulative_indices,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pprof-go")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load(name: &str) -> Profile {
    let p = pprof::decode(&fixture(name), &DecodeLimits::default()).unwrap();
    pprof::validate(&p).unwrap();
    p
}

/// Reference: values per (stack of function names, labels), computed with plain strings.
fn by_stack(p: &Profile) -> BTreeMap<String, Vec<i64>> {
    let s = |i: i64| p.string_table[i as usize].clone();
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for sample in &p.sample {
        let mut key = Vec::new();
        for id in &sample.location_id {
            let loc = p.location.iter().find(|l| l.id == *id).unwrap();
            for line in &loc.line {
                let f = p
                    .function
                    .iter()
                    .find(|f| f.id == line.function_id)
                    .unwrap();
                key.push(s(f.name));
            }
        }
        let mut labels: Vec<String> = sample
            .label
            .iter()
            .map(|l| format!("{}={}/{}{}", s(l.key), s(l.str), l.num, s(l.num_unit)))
            .collect();
        labels.sort();
        let key = format!("{} | {}", key.join(";"), labels.join(","));
        let entry = out
            .entry(key)
            .or_insert_with(|| vec![0; sample.value.len()]);
        for (acc, v) in entry.iter_mut().zip(&sample.value) {
            *acc += v;
        }
    }
    out
}

fn delta_of(first: &str, second: &str) -> (Profile, Profile, Profile) {
    let (a, b) = (load(first), load(second));
    let mut tracker = DeltaTracker::new(DeltaLimits::default());
    let _ = tracker.apply(a.clone());
    match tracker.apply(b.clone()) {
        DeltaOutcome::Delta(d) => (a, b, d),
        other => panic!("expected a delta, got {other:?}"),
    }
}

#[test]
fn every_fixture_decodes_and_validates() {
    for name in [
        "cpu.pb.gz",
        "heap.pb.gz",
        "allocs.pb.gz",
        "allocs-2.pb.gz",
        "goroutine.pb.gz",
        "mutex.pb.gz",
        "mutex-2.pb.gz",
        "block.pb.gz",
        "block-2.pb.gz",
        "threadcreate.pb.gz",
    ] {
        let p = load(name);
        assert!(!p.sample.is_empty(), "{name} has no samples");
    }
}

#[test]
fn cumulative_types_come_from_the_profile() {
    let names = |p: &Profile| -> Vec<String> {
        cumulative_indices(p)
            .into_iter()
            .map(|i| p.string_table[p.sample_type[i].r#type as usize].clone())
            .collect()
    };
    assert_eq!(
        names(&load("allocs.pb.gz")),
        ["alloc_objects", "alloc_space"]
    );
    assert_eq!(names(&load("mutex.pb.gz")), ["contentions", "delay"]);
    assert_eq!(names(&load("block.pb.gz")), ["contentions", "delay"]);
    assert!(names(&load("cpu.pb.gz")).is_empty());
    assert!(names(&load("goroutine.pb.gz")).is_empty());
}

#[test]
fn deltas_match_an_independent_per_stack_difference() {
    for (first, second) in [
        ("allocs.pb.gz", "allocs-2.pb.gz"),
        ("mutex.pb.gz", "mutex-2.pb.gz"),
        ("block.pb.gz", "block-2.pb.gz"),
    ] {
        let (a, b, d) = delta_of(first, second);
        pprof::validate(&d).unwrap();
        let cumulative = cumulative_indices(&b);
        let (before, after, got) = (by_stack(&a), by_stack(&b), by_stack(&d));
        let mut want = BTreeMap::new();
        for (stack, values) in &after {
            let mut v = values.clone();
            for &i in &cumulative {
                v[i] -= before.get(stack).map_or(0, |p| p[i]);
            }
            if v.iter().any(|&x| x != 0) {
                want.insert(stack.clone(), v);
            }
        }
        assert_eq!(got, want, "{first} -> {second}");
        assert!(
            !got.is_empty(),
            "{first} -> {second}: the fixtures changed between captures"
        );
        assert!(
            got.values().flatten().all(|&v| v >= 0),
            "negative value in {second}"
        );
        // The delta survives encoding and decoding.
        let round = pprof::decode(&pprof::encode_gzip(&d), &DecodeLimits::default()).unwrap();
        assert_eq!(by_stack(&round), got);
        assert_eq!(d.duration_nanos, b.time_nanos - a.time_nanos);
    }
}

#[test]
fn inuse_memory_passes_through_the_delta() {
    let (_, b, d) = delta_of("allocs.pb.gz", "allocs-2.pb.gz");
    let inuse = |p: &Profile| -> i64 {
        let i = p
            .sample_type
            .iter()
            .position(|vt| p.string_table[vt.r#type as usize] == "inuse_space")
            .unwrap();
        p.sample.iter().map(|s| s.value[i]).sum()
    };
    assert_eq!(inuse(&d), inuse(&b));
}

#[test]
fn first_scrape_sends_no_history_and_a_restart_sends_nothing_negative() {
    let mut mutex = DeltaTracker::new(DeltaLimits::default());
    match mutex.apply(load("mutex.pb.gz")) {
        DeltaOutcome::Baseline {
            send: None,
            reason: "first",
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(mutex.series() > 0 && mutex.state_bytes() > 0);
    let _ = mutex.apply(load("mutex-2.pb.gz"));
    // The process restarted: counters are lower than before.
    match mutex.apply(load("mutex.pb.gz")) {
        DeltaOutcome::Baseline {
            send: None,
            reason: "restart",
        } => {}
        other => panic!("{other:?}"),
    }

    let mut memory = DeltaTracker::new(DeltaLimits::default());
    match memory.apply(load("allocs.pb.gz")) {
        DeltaOutcome::Baseline {
            send: Some(p),
            reason: "first",
        } => {
            let cumulative = cumulative_indices(&p);
            assert!(
                p.sample
                    .iter()
                    .all(|s| cumulative.iter().all(|&i| s.value[i] == 0))
            );
            assert!(!p.sample.is_empty(), "in-use memory was dropped");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn non_cumulative_profiles_pass_untouched() {
    let cpu = load("cpu.pb.gz");
    let mut tracker = DeltaTracker::new(DeltaLimits::default());
    match tracker.apply(cpu.clone()) {
        DeltaOutcome::Delta(p) => assert_eq!(p, cpu),
        other => panic!("{other:?}"),
    }
    assert_eq!(tracker.series(), 0);
}

#[test]
fn state_is_bounded() {
    let mut tracker = DeltaTracker::new(DeltaLimits { max_series: 2 });
    match tracker.apply(load("block.pb.gz")) {
        DeltaOutcome::Baseline {
            reason: "state_limit",
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(tracker.series(), 0);
}

#[test]
fn bad_bodies_fail_with_their_reason() {
    let limits = DecodeLimits::default();
    let reason = |body: &[u8]| -> &'static str {
        match pprof::decode(body, &limits) {
            Err(e) => e.reason(),
            Ok(p) => match pprof::validate(&p) {
                Err(e) => e.reason(),
                Ok(()) => "accepted",
            },
        }
    };
    assert_eq!(reason(b""), "empty");
    assert_eq!(reason(b"<html>502 Bad Gateway</html>"), "not_pprof");
    let cpu = fixture("cpu.pb.gz");
    assert_eq!(reason(&cpu[..cpu.len() / 2]), "truncated_gzip");
    assert_eq!(
        reason(&pprof::gzip(b"this is text, not a protobuf message at all")),
        "not_pprof"
    );
    // A valid message of the wrong shape: no string table.
    assert_eq!(reason(&pprof::gzip(&[0x48, 0x01])), "bad_string_table");

    let mut dangling = load("cpu.pb.gz");
    dangling.sample[0].location_id.push(999_999);
    assert_eq!(reason(&pprof::encode_gzip(&dangling)), "dangling_location");
    let mut dangling = load("cpu.pb.gz");
    dangling.function[0].name = 1_000_000;
    assert_eq!(reason(&pprof::encode_gzip(&dangling)), "dangling_string");
    let mut short = load("cpu.pb.gz");
    short.sample[0].value.pop();
    assert_eq!(reason(&pprof::encode_gzip(&short)), "value_count_mismatch");
}

#[test]
fn a_gzip_bomb_stops_at_the_limit() {
    // 200 MiB of zeros compress to ~200 KiB.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..200 {
        std::io::Write::write_all(&mut encoder, &zeros).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    let err = pprof::decode(
        &bomb,
        &DecodeLimits {
            max_decompressed_bytes: 64 << 20,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.reason(), "too_large");
    assert!(err.to_string().contains("67108864"), "{err}");
}

#[test]
fn gzip_output_is_standard_gzip_with_a_true_trailer() {
    use std::io::Read as _;
    let body = fixture("heap.pb.gz");
    let raw = pprof::decompress(&body, &DecodeLimits::default())
        .unwrap()
        .to_vec();
    let inputs: [&[u8]; 3] = [&raw, b"", b"x"];
    for input in inputs {
        let gz = pprof::gzip(input);
        assert!(pprof::is_gzip(&gz));
        // Any gzip reader takes it (flate2 here, Go's compress/gzip in the go tool pprof tests).
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, input);
        // The trailer's size is what the decode budget reserves before inflating.
        assert_eq!(
            pprof::decompressed_size_hint(&gz, &DecodeLimits::default()),
            input.len()
        );
        assert_eq!(
            &*pprof::decompress(&gz, &DecodeLimits::default()).unwrap(),
            input
        );
    }
    assert!(
        pprof::gzip(&raw).len() < raw.len(),
        "level 1 still compresses"
    );
}

/// A trailer deflate cannot reach from the body's size (the last bytes of a truncated stream)
/// announces nothing; a bomb's announces its size.
#[test]
fn a_gzip_trailer_is_a_size_only_where_deflate_can_expand_that_far() {
    let bomb = pprof::gzip(&vec![0u8; 8 << 20]);
    assert_eq!(pprof::gzip_announced_size(&bomb), Some(8 << 20));
    let mut truncated = pprof::gzip(b"0123456789abcdef");
    let n = truncated.len();
    truncated[n - 4..].copy_from_slice(&(1u32 << 30).to_le_bytes());
    assert_eq!(pprof::gzip_announced_size(&truncated), None);
    assert_eq!(pprof::gzip_announced_size(b"\x0a\x00raw protobuf"), None);
}
