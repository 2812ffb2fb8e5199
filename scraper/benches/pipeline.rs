//! The per-profile pipeline cost against the cost of merely gunzipping the profile.
//!
//! A synthetic heap profile of ~1 MiB uncompressed (many distinct stacks, alloc_* and inuse_*
//! sample types, like Go's allocs endpoint) goes through decode + validate + delta + relabel +
//! encode; the figure to watch is the printed `pipeline/gunzip` ratio (target: under 3).
//! Run: `cargo bench -p kubeprof-scraper --bench pipeline`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group};
use kubeprof_crds::{RelabelConfig, labels, relabel::compile_all};
use kubeprof_pprof::{
    self as pprof, DecodeLimits, DeltaLimits, DeltaOutcome, DeltaTracker, Function, Line, Location,
    Profile, Sample, ValueType,
};

/// A Go-like allocs profile: `functions` functions, one location each, `samples` stacks of
/// depth 12..28; `bump` grows the cumulative values (a later capture).
fn synthetic(functions: u64, samples: u64, bump: i64) -> Profile {
    let mut strings = vec![String::new()];
    let mut s = |v: &str| {
        strings.push(v.to_owned());
        (strings.len() - 1) as i64
    };
    let sample_type = [
        "alloc_objects/count",
        "alloc_space/bytes",
        "inuse_objects/count",
        "inuse_space/bytes",
    ]
    .iter()
    .map(|t| {
        let (ty, unit) = t.split_once('/').unwrap();
        ValueType {
            r#type: s(ty),
            unit: s(unit),
        }
    })
    .collect();
    let file = s("/src/github.com/example/service/internal/handler.go");
    let function: Vec<Function> = (1..=functions)
        .map(|id| Function {
            id,
            name: s(&format!(
                "github.com/example/service/internal/pkg{}.(*Handler).Method{id}",
                id % 97
            )),
            system_name: 0,
            filename: file,
            start_line: id as i64,
        })
        .collect();
    let location = (1..=functions)
        .map(|id| Location {
            id,
            mapping_id: 0,
            address: 0x400000 + id * 16,
            line: vec![Line {
                function_id: id,
                line: 10 + id as i64,
                column: 0,
            }],
            is_folded: false,
        })
        .collect();
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let sample = (0..samples)
        .map(|i| {
            let depth = 12 + next() % 16;
            Sample {
                location_id: (0..depth).map(|_| 1 + next() % functions).collect(),
                value: vec![
                    100 + i as i64 + bump,
                    4096 * (100 + i as i64 + bump),
                    3,
                    4096 * 3,
                ],
                label: vec![],
            }
        })
        .collect();
    Profile {
        sample_type,
        sample,
        location,
        function,
        string_table: strings,
        time_nanos: 1_700_000_000_000_000_000 + bump,
        period: 524_288,
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    use prost::Message as _;
    let before = synthetic(4000, 11_000, 0);
    let after = synthetic(4000, 11_000, 7);
    let raw_len = after.encode_to_vec().len();
    let gz = pprof::encode_gzip(&after);
    let limits = DecodeLimits::default();
    let rules = compile_all(&[
        RelabelConfig {
            source_labels: vec!["__meta_kubernetes_pod_label_app".into()],
            target_label: Some("app".into()),
            ..Default::default()
        },
        RelabelConfig {
            regex: "__meta_kubernetes_pod_label_(.+)".into(),
            action: kubeprof_crds::RelabelAction::LabelMap,
            ..Default::default()
        },
    ])
    .unwrap();
    let discovery: kubeprof_crds::relabel::Labels = [
        ("__address__", "10.1.2.3:6060"),
        ("__meta_kubernetes_namespace", "shop"),
        ("__meta_kubernetes_pod_name", "checkout-7d9f8-abcde"),
        ("__meta_kubernetes_pod_container_name", "checkout"),
        ("__meta_kubernetes_pod_label_app", "checkout"),
        ("__meta_kubernetes_pod_label_team", "payments"),
        ("job", "shop/checkout"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();

    let gunzip = || black_box(pprof::decompress(black_box(&gz), &limits).unwrap().len());
    // The scrape path (scrape.rs), stage by stage: gunzip, decode, validate, relabel, delta,
    // encode (tables copied, samples encoded), then gzip for the sinks.
    let pipeline = |tracker: &mut DeltaTracker, compress: bool| {
        let raw = pprof::decompress(black_box(&gz), &limits).unwrap();
        let p = pprof::decode_profile(&raw).unwrap();
        pprof::validate(&p).unwrap();
        let l = labels::finalize(discovery.clone(), "memory", &rules, &Default::default()).unwrap();
        let out = match tracker.apply(p) {
            DeltaOutcome::Delta(d) => {
                let encoded = pprof::encode_with_samples(&raw, &d).unwrap();
                if compress {
                    pprof::gzip(&encoded)
                } else {
                    encoded
                }
            }
            DeltaOutcome::Baseline { .. } => panic!("no baseline expected"),
        };
        black_box((out.len(), l.len()))
    };
    let primed = || {
        let mut t = DeltaTracker::new(DeltaLimits::default());
        let _ = t.apply(before.clone());
        t
    };

    c.bench_function("gunzip 1 MiB profile", |b| b.iter(gunzip));
    c.bench_function("pipeline: decode+validate+delta+relabel+encode+gzip", |b| {
        b.iter_batched(
            primed,
            |mut t| pipeline(&mut t, true),
            criterion::BatchSize::LargeInput,
        )
    });

    // The ratio, from our own timing in the same run (criterion prints times, not ratios).
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_secs(2) {
            f();
            n += 1;
        }
        start.elapsed() / n
    };
    let t_gunzip = time(&mut || {
        gunzip();
    });
    // Trackers are primed before the clock starts: priming is the previous scrape's work.
    let rounds = 100;
    let run = |compress: bool| {
        let mut trackers: Vec<DeltaTracker> = (0..rounds).map(|_| primed()).collect();
        let start = Instant::now();
        for t in trackers.iter_mut() {
            pipeline(t, compress);
        }
        start.elapsed() / rounds
    };
    let t_pipeline = run(false);
    let t_with_gzip = run(true);

    // Where the time goes.
    let raw = pprof::decompress(&gz, &limits).unwrap().into_owned();
    let decoded = pprof::decode_profile(&raw).unwrap();
    let t_decode = time(&mut || {
        black_box(pprof::decode_profile(black_box(&raw)).unwrap());
    });
    let t_prost = time(&mut || {
        black_box(Profile::decode(black_box(raw.as_slice())).unwrap());
    });
    let t_validate = time(&mut || {
        pprof::validate(black_box(&decoded)).unwrap();
    });
    let mut delta_trackers: Vec<DeltaTracker> = (0..rounds).map(|_| primed()).collect();
    let inputs: Vec<Profile> = (0..rounds).map(|_| decoded.clone()).collect();
    let start = Instant::now();
    let mut last = None;
    for (t, p) in delta_trackers.iter_mut().zip(inputs) {
        last = Some(t.apply(p));
    }
    let t_delta = start.elapsed() / rounds;
    let Some(DeltaOutcome::Delta(delta)) = last else {
        panic!("no delta")
    };
    let t_encode = time(&mut || {
        black_box(pprof::encode_with_samples(&raw, black_box(&delta)).unwrap());
    });
    let t_prost_encode = time(&mut || {
        black_box(delta.encode_to_vec());
    });
    let encoded = pprof::encode_with_samples(&raw, &delta).unwrap();
    let t_gzip = time(&mut || {
        black_box(pprof::gzip(black_box(&encoded)));
    });
    println!(
        "profile: {raw_len} bytes uncompressed, {} gzipped, {} samples",
        gz.len(),
        after.sample.len()
    );
    println!(
        "stages: gunzip {t_gunzip:?}, decode {t_decode:?} (prost alone {t_prost:?}), validate {t_validate:?}, delta {t_delta:?}, encode {t_encode:?} (prost alone {t_prost_encode:?}), gzip for the sinks {t_gzip:?}"
    );
    println!("gunzip: {t_gunzip:?}  pipeline: {t_pipeline:?}  pipeline + gzip: {t_with_gzip:?}");
    println!(
        "pipeline/gunzip ratio: {:.2} (decode, validate, delta, relabel, encode; target under 3)",
        t_pipeline.as_secs_f64() / t_gunzip.as_secs_f64()
    );
    println!(
        "pipeline+gzip/gunzip ratio: {:.2} (with the gzip compression of the result)",
        t_with_gzip.as_secs_f64() / t_gunzip.as_secs_f64()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(20);
    targets = bench
}

/// The pipeline's stages one by one, each behind a function of its own so that a profiler
/// (`valgrind --tool=callgrind`, whose instruction counts do not move with the machine's load)
/// names it: `PIPELINE_ROUNDS=3 valgrind --tool=callgrind target/release/deps/pipeline-<hash>`,
/// then `callgrind_annotate --inclusive=yes callgrind.out.<pid> | grep stage_`.
mod stages {
    use super::*;

    #[inline(never)]
    pub fn stage_gunzip(gz: &[u8], limits: &DecodeLimits) -> Vec<u8> {
        pprof::decompress(gz, limits).unwrap().into_owned()
    }
    #[inline(never)]
    pub fn stage_decode(raw: &[u8]) -> Profile {
        pprof::decode_profile(raw).unwrap()
    }
    #[inline(never)]
    pub fn stage_validate(p: &Profile) {
        pprof::validate(p).unwrap();
    }
    #[inline(never)]
    pub fn stage_delta(t: &mut DeltaTracker, p: Profile) -> Profile {
        match t.apply(p) {
            DeltaOutcome::Delta(d) => d,
            DeltaOutcome::Baseline { .. } => panic!("no baseline expected"),
        }
    }
    #[inline(never)]
    pub fn stage_encode(raw: &[u8], d: &Profile) -> Vec<u8> {
        pprof::encode_with_samples(raw, d).unwrap()
    }
    #[inline(never)]
    pub fn stage_gzip(encoded: &[u8]) -> Vec<u8> {
        pprof::gzip(encoded)
    }
    #[inline(never)]
    pub fn stage_drop(d: Profile) {
        drop(black_box(d));
    }
    #[inline(never)]
    pub fn stage_pipeline(t: &mut DeltaTracker, gz: &[u8], limits: &DecodeLimits) -> usize {
        let raw = stage_gunzip(gz, limits);
        let p = stage_decode(&raw);
        stage_validate(&p);
        let d = stage_delta(t, p);
        let encoded = stage_encode(&raw, &d);
        stage_drop(d);
        let out = stage_gzip(&encoded);
        black_box(out.len())
    }

    pub fn run(rounds: usize) {
        let before = synthetic(4000, 11_000, 0);
        let after = synthetic(4000, 11_000, 7);
        let gz = pprof::encode_gzip(&after);
        let limits = DecodeLimits::default();
        let mut trackers: Vec<DeltaTracker> = (0..rounds)
            .map(|_| {
                let mut t = DeltaTracker::new(DeltaLimits::default());
                let _ = t.apply(before.clone());
                t
            })
            .collect();
        for t in &mut trackers {
            black_box(stage_pipeline(t, black_box(&gz), &limits));
        }
    }
}

fn main() {
    if let Some(rounds) = std::env::var("PIPELINE_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        return stages::run(rounds);
    }
    benches();
}
