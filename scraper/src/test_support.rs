//! Builders and helpers shared by the unit tests of the sinks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use kubeprof_pprof::{self as pprof, DecodeLimits};

use crate::{
    envelope::Envelope,
    metrics::Metrics,
    outputs::Fanout,
    sinks::{Backend, QueueConfig, RetryConfig, Sink},
};

/// A captured Go profile from `tests/fixtures/pprof-go`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pprof-go")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An envelope of the fixture `fixture` with `labels`, scraped at `start` for `seconds`.
pub fn envelope(
    labels: &[(&str, &str)],
    fixture: &str,
    start: SystemTime,
    took: Duration,
) -> Envelope {
    Envelope {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        profile: self::fixture(fixture).into(),
        decoded: None,
        start,
        end: start + took,
        job_id: "job-1".into(),
    }
}

/// Names of the functions of a (gzipped) profile.
pub fn function_names(profile: &[u8]) -> Vec<String> {
    let p = pprof::decode(profile, &DecodeLimits::default()).unwrap();
    p.function
        .iter()
        .map(|f| p.string_table[f.name as usize].clone())
        .collect()
}

/// Waits (up to 5 s) until `check` holds; panics naming `what` otherwise.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Retries fast enough for tests.
pub fn fast_retry() -> RetryConfig {
    RetryConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    }
}

/// The outputs of one sink, `name`, on `backend`, with the default queue.
pub fn single_sink(
    name: &str,
    backend: impl Backend,
    retry: RetryConfig,
    metrics: &Metrics,
) -> Fanout {
    Fanout::new(
        vec![Sink::start(
            name.into(),
            backend,
            QueueConfig::default(),
            retry,
            metrics,
        )],
        metrics,
    )
}
