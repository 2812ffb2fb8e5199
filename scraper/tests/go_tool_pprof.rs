//! Deltas through the scraper's file sink, read back by `go tool pprof` (the codec's own tests
//! are in kubeprof-pprof).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

mod common;

use kubeprof_pprof::{self as pprof, DecodeLimits, DeltaLimits, DeltaOutcome, DeltaTracker};

/// The delta of the Go capture `second` against `first`.
fn delta_of(first: &str, second: &str) -> pprof::Profile {
    let load = |name| {
        let p = pprof::decode(&common::fixture(name), &DecodeLimits::default()).unwrap();
        pprof::validate(&p).unwrap();
        p
    };
    let mut tracker = DeltaTracker::new(DeltaLimits::default());
    let _ = tracker.apply(load(first));
    match tracker.apply(load(second)) {
        DeltaOutcome::Delta(d) => d,
        other => panic!("expected a delta, got {other:?}"),
    }
}

/// An independent pprof reader: `go tool pprof` must read what the file sink stores of a delta
/// (encoded as the scrape path does, tables copied from the target's bytes) and show the
/// fixture's hot functions.
#[tokio::test]
async fn go_tool_pprof_reads_deltas_stored_by_the_file_sink() {
    use kubeprof_crds::policy::{FileSink as FileSpec, SinkSpec};
    use kubeprof_scraper::{Envelope, Metrics, Outputs, RetryConfig, SecretsDir};
    if std::process::Command::new("go")
        .arg("version")
        .output()
        .is_err()
    {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED go_tool_pprof_reads_deltas_stored_by_the_file_sink: no `go` on PATH (apt-get install golang-go)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = SinkSpec {
        name: "local".into(),
        file: Some(FileSpec {
            directory: dir.path().join("profiles").to_string_lossy().into_owned(),
            retention_bytes: None,
        }),
        ..Default::default()
    };
    let metrics = Metrics::unregistered();
    for (i, (first, second, kind, hot)) in [
        (
            "mutex.pb.gz",
            "mutex-2.pb.gz",
            "mutex",
            "main.contendedMutex",
        ),
        (
            "allocs.pb.gz",
            "allocs-2.pb.gz",
            "memory",
            "main.leakyAllocator",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let d = delta_of(first, second);
        let body = common::fixture(second);
        let raw = pprof::decompress(&body, &DecodeLimits::default()).unwrap();
        let envelope = Envelope {
            labels: [("__name__", kind), ("service_name", "demo/app")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            profile: pprof::encode_delta(&raw, &d).into(),
            decoded: None,
            start: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + i as u64),
            end: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_001 + i as u64),
            job_id: "job".into(),
        };
        let path = dir.path().join(format!(
            "profiles/demo/app/{kind}/{}.pb.gz",
            1_700_000_000_000 + 1000 * i as u64
        ));
        let outputs = Outputs::start(
            std::slice::from_ref(&spec),
            std::sync::Arc::new(SecretsDir(None)),
            RetryConfig::default(),
            &metrics,
        )
        .unwrap();
        outputs.handle().send(envelope, &["local".into()]);
        outputs.shutdown(std::time::Duration::from_secs(10)).await;
        assert!(path.exists(), "{} written", path.display());
        let out = std::process::Command::new("go")
            .args(["tool", "pprof", "-top", "-sample_index=0"])
            .arg(&path)
            .env("HOME", dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "go tool pprof failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(hot), "{hot} not in:\n{stdout}");
    }
}
