//! The OTLP profiles sink against a receiver that decodes the real
//! `ExportProfilesServiceRequest` (opentelemetry-proto v1.7.0, `v1development`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use kubeprof_pprof::{self as pprof, DecodeLimits};
use prost::Message as _;

use super::{OtlpConfig, OtlpSink, PATH, convert::PROFILE_TYPE_ATTRIBUTE, request};
use crate::{
    envelope::Envelope,
    metrics::{Metrics, SinkLabels, SinkReasonLabels},
    proto::opentelemetry::proto::{
        collector::profiles::v1development::ExportProfilesServiceRequest,
        common::v1::{KeyValue, any_value},
    },
    test_support::{envelope as make, fast_retry, fixture, single_sink},
};

#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<(HeaderMap, ExportProfilesServiceRequest)>>>,
    status: Arc<AtomicU16>,
    calls: Arc<AtomicUsize>,
}

async fn export(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::http::StatusCode {
    r.calls.fetch_add(1, Ordering::SeqCst);
    let status = r.status.load(Ordering::SeqCst);
    if status != 0 && status != 200 {
        return axum::http::StatusCode::from_u16(status).unwrap();
    }
    assert_eq!(headers["content-type"], "application/x-protobuf");
    let request =
        ExportProfilesServiceRequest::decode(body).expect("an ExportProfilesServiceRequest");
    r.requests.lock().unwrap().push((headers, request));
    axum::http::StatusCode::OK
}

async fn receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let app = Router::new()
        .route(PATH, post(export))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, url)
}

fn otlp(url: &str) -> OtlpSink {
    OtlpSink::new(OtlpConfig {
        endpoint: url.into(),
        headers: [("authorization".to_string(), "Bearer t0ken".to_string())].into(),
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

fn envelope(kind: &str, fixture: &str) -> Envelope {
    make(
        &[
            ("__name__", kind),
            ("__delta__", "false"),
            ("service_name", "shop/checkout"),
            ("pod", "checkout-1"),
            ("namespace", "shop"),
        ],
        fixture,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        Duration::from_secs(15),
    )
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

/// Per leaf function name, the sum of the first sample type: the same figure, computed from
/// the pprof and from the OTLP request independently, must match.
fn pprof_leaf_totals(name: &str) -> BTreeMap<String, i64> {
    let p = pprof::decode(&fixture(name), &DecodeLimits::default()).unwrap();
    let mut out = BTreeMap::new();
    for s in &p.sample {
        let loc = p
            .location
            .iter()
            .find(|l| l.id == s.location_id[0])
            .unwrap();
        let f = p
            .function
            .iter()
            .find(|f| f.id == loc.line[0].function_id)
            .unwrap();
        *out.entry(p.string_table[f.name as usize].clone())
            .or_default() += s.value[0];
    }
    out
}

#[tokio::test]
async fn otlp_receives_resource_attributes_and_the_same_profile() {
    let (r, url) = receiver().await;
    let metrics = Metrics::unregistered();
    let fanout = single_sink("otel", otlp(&url), fast_retry(), &metrics);
    fanout.send(envelope("process_cpu", "cpu.pb.gz"), &["otel".into()]);
    fanout.send(envelope("memory", "heap.pb.gz"), &["otel".into()]);
    fanout.shutdown(Duration::from_secs(5)).await;

    let requests = r.requests.lock().unwrap();
    assert_eq!(requests.len(), 2, "one request per profile");
    let (headers, request) = &requests[0];
    assert_eq!(headers["authorization"], "Bearer t0ken");
    let resource = request.resource_profiles[0].resource.as_ref().unwrap();
    assert_eq!(
        string_attr(&resource.attributes, "service.name").as_deref(),
        Some("shop/checkout")
    );
    assert_eq!(
        string_attr(&resource.attributes, "pod").as_deref(),
        Some("checkout-1")
    );
    assert!(string_attr(&resource.attributes, "__name__").is_none());
    // Pyroscope's push-API marker is no OTLP attribute.
    assert!(string_attr(&resource.attributes, "__delta__").is_none());
    let scope = &request.resource_profiles[0].scope_profiles[0];
    assert_eq!(scope.scope.as_ref().unwrap().name, "kubeprof");
    let profile = &scope.profiles[0];
    let dict = request.dictionary.as_ref().unwrap();
    assert_eq!(dict.string_table[0], "");
    let kind: Vec<String> = profile
        .attribute_indices
        .iter()
        .map(|i| &dict.attribute_table[*i as usize])
        .filter(|kv| kv.key == PROFILE_TYPE_ATTRIBUTE)
        .filter_map(|kv| string_attr(std::slice::from_ref(kv), PROFILE_TYPE_ATTRIBUTE))
        .collect();
    assert_eq!(kind, ["process_cpu"]);
    assert_ne!(
        profile.profile_id.iter().copied().max(),
        Some(0),
        "non-zero id"
    );
    assert_eq!(
        dict.string_table[profile.sample_type[1].type_strindex as usize],
        "cpu"
    );

    // Leaf totals from the OTLP request, walking its own indices.
    let mut otlp_totals: BTreeMap<String, i64> = BTreeMap::new();
    for s in &profile.sample {
        let leaf = profile.location_indices[s.locations_start_index as usize];
        let loc = &dict.location_table[leaf as usize];
        let f = &dict.function_table[loc.line[0].function_index as usize];
        *otlp_totals
            .entry(dict.string_table[f.name_strindex as usize].clone())
            .or_default() += s.value[0];
    }
    assert_eq!(otlp_totals, pprof_leaf_totals("cpu.pb.gz"));
    assert!(
        otlp_totals.contains_key("main.hotCPULeaf"),
        "{otlp_totals:?}"
    );

    assert_eq!(
        metrics
            .sink_sent
            .get_or_create(&SinkLabels {
                sink: "otel".into()
            })
            .get(),
        2
    );
}

#[tokio::test]
async fn an_otlp_receiver_answering_400_is_not_retried() {
    let (r, url) = receiver().await;
    r.status.store(400, Ordering::SeqCst);
    let metrics = Metrics::unregistered();
    let fanout = single_sink("otel", otlp(&url), fast_retry(), &metrics);
    fanout.send(envelope("process_cpu", "cpu.pb.gz"), &["otel".into()]);
    fanout.shutdown(Duration::from_secs(5)).await;
    assert_eq!(r.calls.load(Ordering::SeqCst), 1, "no retry after a 400");
    assert_eq!(
        metrics
            .sink_failures
            .get_or_create(&SinkReasonLabels {
                sink: "otel".into(),
                reason: "http_4xx".into()
            })
            .get(),
        1
    );
}

#[test]
fn a_decoded_profile_in_the_envelope_gives_the_request_its_bytes_give() {
    for (kind, file) in [("process_cpu", "cpu.pb.gz"), ("memory", "heap.pb.gz")] {
        let plain = envelope(kind, file);
        let mut carrying = plain.clone();
        carrying.decoded = Some(Arc::new(
            pprof::decode(&plain.profile, &DecodeLimits::default()).unwrap(),
        ));
        // Not the profile the bytes hold: proves the sink reads the decoded one.
        carrying.profile = bytes::Bytes::from_static(b"not a profile");
        assert_eq!(
            request(&carrying).unwrap(),
            request(&plain).unwrap(),
            "{kind}"
        );
    }
}
