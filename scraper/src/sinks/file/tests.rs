//! The file sink on a real directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use super::{FileConfig, FileSink};
use crate::{
    envelope::Envelope,
    sinks::Backend as _,
    test_support::{envelope as make, function_names},
};

fn envelope(kind: &str, fixture: &str, ms: u64) -> Envelope {
    make(
        &[
            ("__name__", kind),
            ("service_name", "shop/checkout"),
            ("pod", "checkout-1"),
        ],
        fixture,
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
        Duration::from_millis(10),
    )
}

#[tokio::test]
async fn file_sink_writes_readable_profiles_and_keeps_to_its_retention() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FileSink::new(FileConfig {
        directory: dir.path().into(),
        retention_bytes: 6_000,
    });
    let first = envelope("process_cpu", "cpu.pb.gz", 1_000);
    let path = sink.path_for(&first);
    assert_eq!(
        path,
        dir.path().join("shop/checkout/process_cpu/1000.pb.gz")
    );
    sink.send(std::slice::from_ref(&first)).await.unwrap();
    assert!(
        function_names(&std::fs::read(&path).unwrap()).contains(&"main.hotCPULeaf".to_string())
    );
    let labels: serde_json::Value = serde_json::from_slice(
        &std::fs::read(path.with_extension("").with_extension("labels.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(labels["pod"], "checkout-1");

    // Retention: ~850 bytes of profile + labels each; 6,000 bytes keep only the newest.
    for ms in 2_000..2_010 {
        sink.send(&[envelope("process_cpu", "cpu.pb.gz", ms)])
            .await
            .unwrap();
    }
    let mut kept: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".pb.gz"))
        .collect();
    kept.sort();
    assert!(
        !kept.contains(&"1000.pb.gz".to_string()),
        "the oldest profile survived retention: {kept:?}"
    );
    assert!(kept.contains(&"2009.pb.gz".to_string()));
    assert!(kept.len() < 8);

    // Labels cannot escape the directory.
    let mut evil = envelope("../../etc", "cpu.pb.gz", 3_000);
    evil.labels.insert("service_name".into(), "../..".into());
    assert!(sink.path_for(&evil).starts_with(dir.path()));
}

#[tokio::test]
async fn temporary_files_left_by_a_crash_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir
        .path()
        .join("shop/checkout/process_cpu/.999.pb.gz.tmp-4194305");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, vec![0u8; 10_000]).unwrap();
    let sink = FileSink::new(FileConfig {
        directory: dir.path().into(),
        retention_bytes: 1 << 20,
    });
    sink.send(&[envelope("process_cpu", "cpu.pb.gz", 1_000)])
        .await
        .unwrap();
    assert!(
        !stale.exists(),
        "a crash's temporary file survived start-up"
    );

    // One appearing later (another process crashed meanwhile) goes with retention.
    std::fs::write(&stale, vec![0u8; 10_000]).unwrap();
    assert!(super::store::enforce_retention(dir.path(), 5_000).unwrap() <= 5_000);
    assert!(!stale.exists(), "retention kept a crash's temporary file");
}

#[test]
fn directories_are_made_group_writable_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let root_mode = |d: &std::path::Path| std::fs::metadata(d).unwrap().permissions().mode();
    let before = root_mode(dir.path());
    let file = dir.path().join("shop/api/process_cpu/1.pb.gz");
    super::store::write_atomic(&file, b"x").unwrap();
    for made in ["shop", "shop/api", "shop/api/process_cpu"] {
        let mode = std::fs::metadata(dir.path().join(made))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o775, "{made}");
    }
    // The existing root is left alone.
    assert_eq!(root_mode(dir.path()), before);
}
