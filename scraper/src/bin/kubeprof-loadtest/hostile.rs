//! `--hostile N`: targets that attack the scraper, one class each in turn, beside the good ones.
//! Every path of a hostile target behaves as its class says.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use kubeprof_pprof::{Function, Label, Line, Location, Profile, Sample, ValueType};

/// The classes, in the order targets take them.
pub const CLASSES: [&str; 12] = [
    "huge_error_body",
    "gzip_bomb",
    "million_series_mutex",
    "slowloris",
    "not_pprof",
    "truncated_gzip",
    "overflowing_values",
    "instant_cpu",
    "oversized_body",
    "dangling_location",
    "empty_body",
    "slow_large_body",
];

/// Bodies built once and shared by every hostile target.
pub struct Bodies {
    gzip_bomb: Bytes,
    million_series: Bytes,
    truncated: Bytes,
    overflowing: [Bytes; 3],
    instant_cpu: Bytes,
    dangling: Bytes,
    valid: Bytes,
}

impl Bodies {
    pub fn build(cpu: &[u8], valid: &'static [u8]) -> anyhow::Result<Self> {
        // 64 MiB of empty samples: ~65 KB of gzip.
        let gzip_bomb = kubeprof_pprof::gzip(&[0x12u8, 0x00].repeat(32 << 20)).into();
        let mut cpu_profile = kubeprof_pprof::decode(cpu, &Default::default())?;
        cpu_profile.duration_nanos = 1_000_000;
        let instant_cpu = kubeprof_pprof::encode_gzip(&cpu_profile).into();
        let overflowing = [vec![1, 1], vec![i64::MAX, i64::MAX], vec![-7, i64::MIN]]
            .map(|v| kubeprof_pprof::encode_gzip(&mutex_profile(1, |_| v.clone())).into());
        let mut dangling = mutex_profile(1, |_| vec![1, 1]);
        dangling.sample[0].location_id = vec![999];
        Ok(Self {
            gzip_bomb,
            // Under the 1,000,000-entry limit, so it is decoded and its series counted.
            million_series: kubeprof_pprof::encode_gzip(&mutex_profile(990_000, |i| {
                vec![1 + i as i64, 1000]
            }))
            .into(),
            truncated: Bytes::copy_from_slice(&valid[..valid.len() / 2]),
            overflowing,
            instant_cpu,
            dangling: kubeprof_pprof::encode_gzip(&dangling).into(),
            valid: Bytes::from_static(valid),
        })
    }
}

/// A mutex profile of `samples` distinct stacks (two frames out of 1,000 functions).
fn mutex_profile(samples: usize, value: impl Fn(usize) -> Vec<i64>) -> Profile {
    let mut strings = vec![String::new(), "contentions".into(), "count".into()];
    strings.extend(["delay".into(), "nanoseconds".into()]);
    let first_fn = strings.len() as i64;
    let functions = 1000.min(samples.max(2));
    strings.extend((0..functions).map(|i| format!("main.f{i}")));
    Profile {
        sample_type: vec![
            ValueType { r#type: 1, unit: 2 },
            ValueType { r#type: 3, unit: 4 },
        ],
        sample: (0..samples)
            .map(|i| Sample {
                location_id: vec![
                    (i % functions) as u64 + 1,
                    ((i / functions) % functions) as u64 + 1,
                ],
                value: value(i),
                label: Vec::<Label>::new(),
            })
            .collect(),
        location: (0..functions)
            .map(|i| Location {
                id: i as u64 + 1,
                line: vec![Line {
                    function_id: i as u64 + 1,
                    line: 1,
                    column: 0,
                }],
                ..Default::default()
            })
            .collect(),
        function: (0..functions)
            .map(|i| Function {
                id: i as u64 + 1,
                name: first_fn + i as i64,
                ..Default::default()
            })
            .collect(),
        string_table: strings,
        period_type: Some(ValueType { r#type: 1, unit: 2 }),
        period: 1,
        ..Default::default()
    }
}

/// One hostile target.
pub struct Hostile {
    pub class: usize,
    pub bodies: Arc<Bodies>,
    pub requests: AtomicU64,
}

/// `len` bytes of `byte`, in chunks of `chunk`, one chunk every `every`.
fn stream(len: usize, chunk: usize, every: Duration) -> Body {
    let chunks = len.div_ceil(chunk);
    Body::from_stream(futures::stream::unfold(0, move |i| async move {
        if i == chunks {
            return None;
        }
        if !every.is_zero() {
            tokio::time::sleep(every).await;
        }
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(vec![0x0a; chunk])),
            i + 1,
        ))
    }))
}

pub async fn serve(State(t): State<Arc<Hostile>>, Path(name): Path<String>) -> Response {
    let nth = t.requests.fetch_add(1, Ordering::Relaxed);
    let b = &t.bodies;
    let ok = |body: Bytes| body.into_response();
    match CLASSES[t.class] {
        "huge_error_body" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            stream(1 << 30, 64 << 10, Duration::ZERO),
        )
            .into_response(),
        "gzip_bomb" => ok(b.gzip_bomb.clone()),
        "million_series_mutex" => ok(b.million_series.clone()),
        // Headers at once, then a byte a second: the scrape timeout ends it.
        "slowloris" => (StatusCode::OK, stream(1 << 20, 1, Duration::from_secs(1))).into_response(),
        "not_pprof" => ok(Bytes::from_static(
            b"<html><body>404 page not found</body></html>",
        )),
        "truncated_gzip" => ok(b.truncated.clone()),
        "overflowing_values" => ok(b.overflowing[nth as usize % 3].clone()),
        "instant_cpu" if name == "profile" => ok(b.instant_cpu.clone()),
        "instant_cpu" => ok(b.valid.clone()),
        // Past the 16 MiB body limit, fast.
        "oversized_body" => {
            (StatusCode::OK, stream(20 << 20, 64 << 10, Duration::ZERO)).into_response()
        }
        "dangling_location" => ok(b.dangling.clone()),
        "empty_body" => ok(Bytes::new()),
        // Just under the body limit, over 8 s: a body held as long as the timeout allows.
        _ => (
            StatusCode::OK,
            stream(15 << 20, 256 << 10, Duration::from_millis(130)),
        )
            .into_response(),
    }
}
