//! The Pyroscope sink against a receiver that decodes the real `PushRequest`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use std::collections::BTreeMap;

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use kubeprof_crds::{
    ProfileKind, Profiles, health::SinkRefusal, labels as pipeline, policy::MissingTenant,
    relabel::Labels,
};
use kubeprof_pprof::{self as pprof, DecodeLimits};
use prost::Message as _;

use super::{HttpAuth, PyroscopeConfig, PyroscopeSink, limits::IngestLimits};
use crate::{
    envelope::Envelope,
    metrics::{Metrics, SinkLabels, SinkReasonLabels},
    proto::push::v1::PushRequest,
    test_support::{envelope as make, fast_retry, fixture, function_names, single_sink},
};

/// What the receiver stored: the tenant, the series' labels, and per series the
/// `alloc_space` total it kept for memory profiles (after its own delta, as Pyroscope's v1
/// ingester computes one).
#[derive(Default)]
struct Stored {
    pushes: Vec<(HeaderMap, PushRequest)>,
    alloc_space: Vec<i64>,
    previous: BTreeMap<Vec<(String, String)>, i64>,
}

type Pushes = Arc<Mutex<Stored>>;

fn alloc_space(raw: &[u8]) -> i64 {
    let p = pprof::decode(raw, &DecodeLimits::default()).unwrap();
    let i = p
        .sample_type
        .iter()
        .position(|t| p.string_table[t.r#type as usize] == "alloc_space")
        .unwrap();
    p.sample.iter().map(|s| s.value[i]).sum()
}

/// A Pyroscope distributor and v1 ingester, as far as kubeprof's facts go: it refuses series
/// over the default label limits (400, like Pyroscope), and, for a `memory` profile whose
/// `__delta__` is not `"false"`, stores the difference to the series' previous profile
/// (grafana/pyroscope `pkg/phlaredb/head.go`), so a profile delta'd twice shows wrong values.
async fn push(State(stored): State<Pushes>, headers: HeaderMap, body: Bytes) -> StatusCode {
    assert_eq!(headers["content-type"], "application/proto");
    assert_eq!(headers["connect-protocol-version"], "1");
    let request = PushRequest::decode(body).expect("a PushRequest");
    let limits = IngestLimits::default();
    for series in &request.series {
        if series.labels.len() > limits.max_labels
            || series.labels.iter().any(|l| {
                l.name.len() > limits.max_label_name_length
                    || l.value.len() > limits.max_label_value_length
            })
        {
            return StatusCode::BAD_REQUEST;
        }
    }
    let mut stored = stored.lock().unwrap();
    for series in &request.series {
        let get = |name: &str| {
            series
                .labels
                .iter()
                .find(|l| l.name == name)
                .map(|l| l.value.as_str())
        };
        if get("__name__") != Some("memory") {
            continue;
        }
        let key: Vec<_> = series
            .labels
            .iter()
            .filter(|l| l.name != "__delta__")
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect();
        let value = alloc_space(&series.samples[0].raw_profile);
        let kept = if get("__delta__") == Some("false") {
            value
        } else {
            value - stored.previous.get(&key).copied().unwrap_or(0)
        };
        stored.previous.insert(key, value);
        stored.alloc_space.push(kept);
    }
    stored.pushes.push((headers, request));
    StatusCode::OK
}

async fn receiver() -> (Pushes, String) {
    let pushes = Pushes::default();
    let app = Router::new()
        .route("/push.v1.PusherService/Push", post(push))
        .with_state(pushes.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (pushes, url)
}

fn config(url: String) -> PyroscopeConfig {
    PyroscopeConfig {
        url,
        tenant_id: None,
        auth: None,
        headers: Default::default(),
        timeout: Duration::from_secs(5),
        max_batch: 16,
        tenant_from: None,
        missing_tenant: MissingTenant::Default,
        limits: IngestLimits::default(),
    }
}

fn dropped(metrics: &Metrics, reason: &str) -> u64 {
    metrics
        .sink_dropped
        .get_or_create(&SinkReasonLabels {
            sink: "pyro".into(),
            reason: reason.into(),
        })
        .get()
}

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
async fn pyroscope_receives_labels_tenant_auth_and_the_profile() {
    let (pushes, url) = receiver().await;
    let metrics = Metrics::unregistered();
    let sink = PyroscopeSink::new(PyroscopeConfig {
        tenant_id: Some("team-a".into()),
        auth: Some(HttpAuth::Basic {
            username: "u".into(),
            password: "p".into(),
        }),
        headers: [("x-extra".to_string(), "1".to_string())].into(),
        ..config(url)
    })
    .unwrap();
    let fanout = single_sink("pyro", sink, fast_retry(), &metrics);
    fanout.send(envelope("process_cpu", "cpu.pb.gz", 1000), &["pyro".into()]);
    fanout.send(envelope("mutex", "mutex.pb.gz", 2000), &["pyro".into()]);
    fanout.shutdown(Duration::from_secs(5)).await;

    let stored = pushes.lock().unwrap();
    let pushes = &stored.pushes;
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

/// The labels the pipeline gives a profile of `kind` scraped from pod `pod` of `ns`.
fn pipeline_labels(kind: ProfileKind, ns: &str) -> Labels {
    let profile = Profiles::default()
        .resolve(&ProfileKind::ALL, 15)
        .into_iter()
        .find(|p| p.kind == Some(kind))
        .unwrap();
    let mut l: Labels = [
        ("__address__", "10.0.0.1:6060"),
        ("__meta_kubernetes_namespace", ns),
        ("__meta_kubernetes_pod_container_name", "app"),
        ("namespace", ns),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    pipeline::mark_delta(&mut l, &profile);
    pipeline::finalize(l, &profile.name, &[], &Labels::new()).unwrap()
}

fn with_labels(labels: Labels, fixture: &str, ms: u64) -> Envelope {
    let mut e = envelope("memory", fixture, ms);
    e.labels = labels;
    e
}

#[tokio::test]
async fn memory_profiles_kubeprof_delta_d_are_not_delta_d_again_by_pyroscope() {
    let (pushes, url) = receiver().await;
    let metrics = Metrics::unregistered();
    let fanout = single_sink(
        "pyro",
        PyroscopeSink::new(config(url)).unwrap(),
        fast_retry(),
        &metrics,
    );
    // Two consecutive memory deltas, as the scraper sends them.
    let memory = pipeline_labels(ProfileKind::Memory, "shop");
    assert_eq!(memory.get("__delta__").map(String::as_str), Some("false"));
    fanout.send(
        with_labels(memory.clone(), "heap.pb.gz", 1000),
        &["pyro".into()],
    );
    fanout.send(with_labels(memory, "heap-2.pb.gz", 2000), &["pyro".into()]);
    // The same without the marker: the receiver deltas it again, as Pyroscope would.
    let mut unmarked = pipeline_labels(ProfileKind::Memory, "other");
    unmarked.remove("__delta__");
    fanout.send(
        with_labels(unmarked.clone(), "heap.pb.gz", 1000),
        &["pyro".into()],
    );
    fanout.send(
        with_labels(unmarked, "heap-2.pb.gz", 2000),
        &["pyro".into()],
    );
    fanout.shutdown(Duration::from_secs(5)).await;

    let sent = [
        alloc_space(&fixture("heap.pb.gz")),
        alloc_space(&fixture("heap-2.pb.gz")),
    ];
    let stored = pushes.lock().unwrap();
    assert_eq!(stored.alloc_space[..2], sent, "marked: stored as sent");
    assert_ne!(stored.alloc_space[2..], sent, "unmarked: delta'd twice");
    // CPU and goroutine profiles hold no deltas and carry no marker.
    assert!(!pipeline_labels(ProfileKind::Cpu, "shop").contains_key("__delta__"));
    assert!(!pipeline_labels(ProfileKind::Goroutine, "shop").contains_key("__delta__"));
}

#[tokio::test]
async fn two_namespaces_reach_two_tenants_and_a_profile_without_one_the_default() {
    let (pushes, url) = receiver().await;
    let metrics = Metrics::unregistered();
    let sink = PyroscopeSink::new(PyroscopeConfig {
        tenant_id: Some("platform".into()),
        tenant_from: Some("namespace".into()),
        ..config(url)
    })
    .unwrap();
    let fanout = single_sink("pyro", sink, fast_retry(), &metrics);
    for (i, ns) in ["shop", "billing", "shop", "billing"]
        .into_iter()
        .enumerate()
    {
        let l = pipeline_labels(ProfileKind::Mutex, ns);
        fanout.send(with_labels(l, "mutex.pb.gz", i as u64), &["pyro".into()]);
    }
    let mut none = pipeline_labels(ProfileKind::Mutex, "shop");
    none.remove("namespace");
    fanout.send(with_labels(none, "mutex.pb.gz", 9), &["pyro".into()]);
    fanout.shutdown(Duration::from_secs(5)).await;

    let stored = pushes.lock().unwrap();
    let mut per_tenant: BTreeMap<String, usize> = BTreeMap::new();
    for (headers, request) in &stored.pushes {
        let tenant = headers["x-scope-orgid"].to_str().unwrap().to_owned();
        for series in &request.series {
            let ns = series
                .labels
                .iter()
                .find(|l| l.name == "namespace")
                .map_or("platform", |l| l.value.as_str());
            assert_eq!(ns, tenant, "one request, one tenant");
        }
        *per_tenant.entry(tenant).or_default() += request.series.len();
    }
    assert_eq!(
        per_tenant,
        BTreeMap::from([
            ("billing".to_owned(), 2),
            ("platform".to_owned(), 1),
            ("shop".to_owned(), 2)
        ])
    );
}

#[tokio::test]
async fn a_profile_without_a_tenant_is_dropped_and_counted_when_configured() {
    let (pushes, url) = receiver().await;
    let metrics = Metrics::unregistered();
    let sink = PyroscopeSink::new(PyroscopeConfig {
        tenant_from: Some("namespace".into()),
        missing_tenant: MissingTenant::Drop,
        ..config(url)
    })
    .unwrap();
    let fanout = single_sink("pyro", sink, fast_retry(), &metrics);
    let mut none = pipeline_labels(ProfileKind::Block, "shop");
    none.remove("namespace");
    fanout.send(with_labels(none, "block.pb.gz", 1), &["pyro".into()]);
    fanout.send(
        with_labels(
            pipeline_labels(ProfileKind::Block, "shop"),
            "block.pb.gz",
            2,
        ),
        &["pyro".into()],
    );
    fanout.shutdown(Duration::from_secs(5)).await;

    let stored = pushes.lock().unwrap();
    assert_eq!(stored.pushes.len(), 1);
    assert_eq!(stored.pushes[0].0["x-scope-orgid"], "shop");
    assert_eq!(dropped(&metrics, "tenant_missing"), 1);
}

#[tokio::test]
async fn profiles_pyroscope_would_refuse_are_counted_not_sent_or_retried() {
    let (pushes, url) = receiver().await;
    let metrics = Metrics::unregistered();
    let sink = PyroscopeSink::new(PyroscopeConfig {
        limits: IngestLimits {
            // The fixtures: mutex 2 samples in 690 bytes, cpu 5 in 1,167, goroutine 8 in 2,900.
            max_samples: 2,
            max_profile_bytes: 2000,
            ..IngestLimits::default()
        },
        ..config(url)
    })
    .unwrap();
    let fanout = single_sink("pyro", sink, fast_retry(), &metrics);
    let good = pipeline_labels(ProfileKind::Mutex, "shop");
    let mut many = good.clone();
    for i in 0..30 {
        many.insert(format!("l{i}"), "v".into());
    }
    let mut long_value = good.clone();
    long_value.insert("commit".into(), "x".repeat(2049));
    let mut long_name = good.clone();
    long_name.insert("n".repeat(1025), "v".into());
    for (job, l, fixture) in [
        ("many", many, "mutex.pb.gz"),
        ("long-value", long_value, "mutex.pb.gz"),
        ("long-name", long_name, "mutex.pb.gz"),
        ("cpu", good.clone(), "cpu.pb.gz"),
        ("goroutine", good.clone(), "goroutine.pb.gz"),
        ("good", good, "mutex.pb.gz"),
    ] {
        let mut e = with_labels(l, fixture, 1);
        e.job_id = job.into();
        fanout.send(e, &["pyro".into()]);
    }
    fanout.shutdown(Duration::from_secs(5)).await;

    // Each refused job is reported with its reason and labels, for its target's status.
    let refused = metrics.refusals.by_job(|_| true);
    let reasons: Vec<(&str, SinkRefusal)> = refused
        .iter()
        .map(|(job, r)| (job.as_str(), r.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            ("cpu", SinkRefusal::TooManySamples),
            ("goroutine", SinkRefusal::ProfileTooLarge),
            ("long-name", SinkRefusal::LabelNameTooLong),
            ("long-value", SinkRefusal::LabelValueTooLong),
            ("many", SinkRefusal::TooManyLabels),
        ]
    );
    assert!(
        refused["many"].labels.contains(r#"l29="v""#),
        "{}",
        refused["many"].labels
    );
    assert!(refused.values().all(|r| r.sink == "pyro"));

    let stored = pushes.lock().unwrap();
    let series: usize = stored.pushes.iter().map(|(_, r)| r.series.len()).sum();
    assert_eq!(series, 1, "only the profile within every limit is sent");
    for reason in [
        "too_many_labels",
        "label_value_too_long",
        "label_name_too_long",
    ] {
        assert_eq!(dropped(&metrics, reason), 1, "{reason}");
    }
    assert_eq!(dropped(&metrics, "too_many_samples"), 1);
    assert_eq!(dropped(&metrics, "profile_too_large"), 1);
    assert_eq!(
        metrics
            .sink_retries
            .get_or_create(&SinkLabels {
                sink: "pyro".into()
            })
            .get(),
        0
    );
}
