//! Sinks against receivers of the real wire format.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{eventually, fast_retry};

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use kubeprof_crds::{policy::WhenFull, relabel::Labels};
use kubeprof_pprof::{self as pprof, DecodeLimits};
use kubeprof_scraper::{
    metrics::{Metrics, SinkLabels, SinkReasonLabels},
    proto::push::v1::PushRequest,
    sinks::{
        Backend, Envelope, Fanout, QueueConfig,
        file::{FileConfig, FileSink},
        pyroscope::{HttpAuth, PyroscopeConfig, PyroscopeSink},
    },
};
use prost::Message as _;

fn envelope(kind: &str, fixture: &str, ms: u64) -> Envelope {
    let labels: Labels = [
        ("__name__", kind),
        ("service_name", "shop/checkout"),
        ("pod", "checkout-1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Envelope {
        labels,
        profile: common::fixture(fixture).into(),
        start: SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
        end: SystemTime::UNIX_EPOCH + Duration::from_millis(ms + 10),
        job_id: "job-1".into(),
    }
}

fn function_names(profile: &[u8]) -> Vec<String> {
    let p = pprof::decode(profile, &DecodeLimits::default()).unwrap();
    p.function
        .iter()
        .map(|f| p.string_table[f.name as usize].clone())
        .collect()
}

#[derive(Clone, Default)]
struct Receiver {
    pushes: Arc<Mutex<Vec<(HeaderMap, PushRequest)>>>,
    /// Status to answer with (200 when 0).
    status: Arc<AtomicU16>,
    calls: Arc<AtomicUsize>,
}

async fn push(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (axum::http::StatusCode, HeaderMap, &'static str) {
    r.calls.fetch_add(1, Ordering::SeqCst);
    let status = r.status.load(Ordering::SeqCst);
    let mut out = HeaderMap::new();
    if status != 0 && status != 200 {
        if status == 429 {
            out.insert("retry-after", "1".parse().unwrap());
        }
        return (axum::http::StatusCode::from_u16(status).unwrap(), out, "no");
    }
    assert_eq!(headers["content-type"], "application/proto");
    assert_eq!(headers["connect-protocol-version"], "1");
    let request = PushRequest::decode(body).expect("a PushRequest");
    r.pushes.lock().unwrap().push((headers, request));
    (axum::http::StatusCode::OK, out, "")
}

async fn receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let app = Router::new()
        .route("/push.v1.PusherService/Push", post(push))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, url)
}

fn pyroscope(url: &str) -> Backend {
    Backend::Pyroscope(
        PyroscopeSink::new(PyroscopeConfig {
            url: url.into(),
            tenant_id: Some("team-a".into()),
            auth: Some(HttpAuth::Basic {
                username: "u".into(),
                password: "p".into(),
            }),
            headers: [("x-extra".to_string(), "1".to_string())].into(),
            timeout: Duration::from_secs(5),
            max_batch: 16,
        })
        .unwrap(),
    )
}

#[tokio::test]
async fn pyroscope_receives_labels_tenant_auth_and_the_profile() {
    let (r, url) = receiver().await;
    let metrics = Metrics::unregistered();
    let fanout = Fanout::start(
        vec![("pyro".into(), pyroscope(&url), QueueConfig::default())],
        fast_retry(),
        &metrics,
    );
    fanout.send(envelope("process_cpu", "cpu.pb.gz", 1000), &["pyro".into()]);
    fanout.send(envelope("mutex", "mutex.pb.gz", 2000), &["pyro".into()]);
    fanout.shutdown(Duration::from_secs(5)).await;

    let pushes = r.pushes.lock().unwrap();
    let series: Vec<_> = pushes
        .iter()
        .flat_map(|(_, req)| req.series.clone())
        .collect();
    assert_eq!(series.len(), 2);
    let (headers, _) = &pushes[0];
    assert_eq!(headers["x-scope-orgid"], "team-a");
    assert_eq!(headers["authorization"], "Basic dTpw");
    assert_eq!(headers["x-extra"], "1");
    let cpu = series
        .iter()
        .find(|s| {
            s.labels
                .iter()
                .any(|l| l.name == "__name__" && l.value == "process_cpu")
        })
        .unwrap();
    let labels: Vec<(String, String)> = cpu
        .labels
        .iter()
        .map(|l| (l.name.clone(), l.value.clone()))
        .collect();
    assert!(
        labels.contains(&("service_name".into(), "shop/checkout".into())),
        "{labels:?}"
    );
    assert!(function_names(&cpu.samples[0].raw_profile).contains(&"main.hotCPULeaf".to_string()));
    assert_eq!(
        metrics
            .sink_sent
            .get_or_create(&SinkLabels {
                sink: "pyro".into()
            })
            .get(),
        2
    );
}

#[tokio::test]
async fn a_sink_that_is_down_queues_to_the_limit_then_drains() {
    let (r, url) = receiver().await;
    r.status.store(503, Ordering::SeqCst);
    let metrics = Metrics::unregistered();
    let queue = QueueConfig {
        max_profiles: 5,
        max_bytes: 1 << 20,
        when_full: WhenFull::DropOldest,
    };
    let fanout = Fanout::start(
        vec![("pyro".into(), pyroscope(&url), queue)],
        fast_retry(),
        &metrics,
    );
    for i in 0..20 {
        fanout.send(
            envelope("goroutine", "goroutine.pb.gz", i),
            &["pyro".into()],
        );
    }
    let dropped = |reason: &str| {
        metrics
            .sink_dropped
            .get_or_create(&SinkReasonLabels {
                sink: "pyro".into(),
                reason: reason.into(),
            })
            .get()
    };
    // 20 sent, at most 5 queued plus one batch in flight: the rest are counted as dropped.
    assert!(
        dropped("queue_full") >= 14,
        "dropped {}",
        dropped("queue_full")
    );
    eventually("retries", || {
        metrics
            .sink_retries
            .get_or_create(&SinkLabels {
                sink: "pyro".into(),
            })
            .get()
            >= 3
    })
    .await;
    // The sink comes back: the queue drains.
    r.status.store(200, Ordering::SeqCst);
    eventually("the queue to drain", || {
        fanout.pending() == 0 && !r.pushes.lock().unwrap().is_empty()
    })
    .await;
    let delivered: usize = r
        .pushes
        .lock()
        .unwrap()
        .iter()
        .map(|(_, p)| p.series.len())
        .sum();
    assert_eq!(delivered as u64 + dropped("queue_full"), 20);
    let failures = metrics
        .sink_failures
        .get_or_create(&SinkReasonLabels {
            sink: "pyro".into(),
            reason: "http_5xx".into(),
        })
        .get();
    assert!(failures >= 3);
    fanout.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_sink_answering_400_is_not_retried_and_429_is() {
    let (r, url) = receiver().await;
    r.status.store(400, Ordering::SeqCst);
    let metrics = Metrics::unregistered();
    let fanout = Fanout::start(
        vec![("pyro".into(), pyroscope(&url), QueueConfig::default())],
        fast_retry(),
        &metrics,
    );
    fanout.send(
        envelope("goroutine", "goroutine.pb.gz", 1),
        &["pyro".into()],
    );
    let counter = |reason: &str| {
        metrics
            .sink_dropped
            .get_or_create(&SinkReasonLabels {
                sink: "pyro".into(),
                reason: reason.into(),
            })
            .get()
    };
    eventually("the rejection", || counter("rejected") == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.calls.load(Ordering::SeqCst), 1, "a 400 was retried");

    r.status.store(429, Ordering::SeqCst);
    fanout.send(
        envelope("goroutine", "goroutine.pb.gz", 2),
        &["pyro".into()],
    );
    eventually("a retry after 429", || r.calls.load(Ordering::SeqCst) >= 2).await;
    r.status.store(200, Ordering::SeqCst);
    eventually("delivery after 429", || {
        !r.pushes.lock().unwrap().is_empty()
    })
    .await;
    fanout.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn profiles_for_no_sink_or_a_missing_one_go_nowhere_and_are_counted() {
    let (r, url) = receiver().await;
    let metrics = Metrics::unregistered();
    let fanout = Fanout::start(
        vec![("pyro".into(), pyroscope(&url), QueueConfig::default())],
        fast_retry(),
        &metrics,
    );
    // An ungoverned job (no sinks) must not fall back to every sink of the node.
    fanout.send(envelope("goroutine", "goroutine.pb.gz", 1), &[]);
    fanout.send(
        envelope("goroutine", "goroutine.pb.gz", 2),
        &["gone".into()],
    );
    fanout.send(
        envelope("goroutine", "goroutine.pb.gz", 3),
        &["gone".into(), "pyro".into()],
    );
    let dropped = |sink: &str, reason: &str| {
        metrics
            .sink_dropped
            .get_or_create(&SinkReasonLabels {
                sink: sink.into(),
                reason: reason.into(),
            })
            .get()
    };
    assert_eq!(dropped("", "no_sink"), 1);
    assert_eq!(dropped("gone", "no_such_sink"), 2);
    eventually("the one routed profile", || {
        r.pushes.lock().unwrap().len() == 1
    })
    .await;
    fanout.shutdown(Duration::from_secs(2)).await;
    assert_eq!(r.pushes.lock().unwrap().len(), 1);
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
