//! What every sink shares, seen through the outputs: routing by sink name, the bounded queue,
//! and which failures are retried.
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
use kubeprof_crds::{
    policy::{PyroscopeSink as PyroscopeSpec, QueueSettings, SinkSpec, WhenFull},
    relabel::Labels,
};
use kubeprof_scraper::{
    Envelope, Metrics, Outputs, SecretsDir, SinkLabels, SinkReasonLabels,
    proto::push::v1::PushRequest,
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
        decoded: None,
        start: SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
        end: SystemTime::UNIX_EPOCH + Duration::from_millis(ms + 10),
        job_id: "job-1".into(),
    }
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

/// Outputs with one Pyroscope sink, `pyro`, as a spec describes it.
fn pyroscope(url: &str, queue: Option<QueueSettings>, metrics: &Metrics) -> Outputs {
    let spec = SinkSpec {
        name: "pyro".into(),
        pyroscope: Some(PyroscopeSpec {
            url: url.into(),
            ..Default::default()
        }),
        queue,
        ..Default::default()
    };
    Outputs::start(&[spec], Arc::new(SecretsDir(None)), fast_retry(), metrics).unwrap()
}

#[tokio::test]
async fn a_sink_that_is_down_queues_to_the_limit_then_drains() {
    let (r, url) = receiver().await;
    r.status.store(503, Ordering::SeqCst);
    let metrics = Metrics::unregistered();
    let queue = QueueSettings {
        max_profiles: Some(5),
        max_bytes: Some(1 << 20),
        when_full: WhenFull::DropOldest,
    };
    let outputs = pyroscope(&url, Some(queue), &metrics);
    for i in 0..20 {
        outputs.handle().send(
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
        outputs.pending() == 0 && !r.pushes.lock().unwrap().is_empty()
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
    outputs.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_sink_answering_400_is_not_retried_and_429_is() {
    let (r, url) = receiver().await;
    r.status.store(400, Ordering::SeqCst);
    let metrics = Metrics::unregistered();
    let outputs = pyroscope(&url, None, &metrics);
    outputs.handle().send(
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
    outputs.handle().send(
        envelope("goroutine", "goroutine.pb.gz", 2),
        &["pyro".into()],
    );
    eventually("a retry after 429", || r.calls.load(Ordering::SeqCst) >= 2).await;
    r.status.store(200, Ordering::SeqCst);
    eventually("delivery after 429", || {
        !r.pushes.lock().unwrap().is_empty()
    })
    .await;
    outputs.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn profiles_for_no_sink_or_a_missing_one_go_nowhere_and_are_counted() {
    let (r, url) = receiver().await;
    let metrics = Metrics::unregistered();
    let outputs = pyroscope(&url, None, &metrics);
    // An ungoverned job (no sinks) must not fall back to every sink of the node.
    outputs
        .handle()
        .send(envelope("goroutine", "goroutine.pb.gz", 1), &[]);
    outputs.handle().send(
        envelope("goroutine", "goroutine.pb.gz", 2),
        &["gone".into()],
    );
    outputs.handle().send(
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
    outputs.shutdown(Duration::from_secs(2)).await;
    assert_eq!(r.pushes.lock().unwrap().len(), 1);
}
