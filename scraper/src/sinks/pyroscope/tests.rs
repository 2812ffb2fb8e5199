//! The Pyroscope sink against a receiver that decodes the real `PushRequest`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use prost::Message as _;

use super::{HttpAuth, PyroscopeConfig, PyroscopeSink};
use crate::{
    envelope::Envelope,
    metrics::{Metrics, SinkLabels},
    proto::push::v1::PushRequest,
    test_support::{envelope as make, fast_retry, function_names, single_sink},
};

type Pushes = Arc<Mutex<Vec<(HeaderMap, PushRequest)>>>;

async fn push(State(pushes): State<Pushes>, headers: HeaderMap, body: Bytes) {
    assert_eq!(headers["content-type"], "application/proto");
    assert_eq!(headers["connect-protocol-version"], "1");
    let request = PushRequest::decode(body).expect("a PushRequest");
    pushes.lock().unwrap().push((headers, request));
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
        url,
        tenant_id: Some("team-a".into()),
        auth: Some(HttpAuth::Basic {
            username: "u".into(),
            password: "p".into(),
        }),
        headers: [("x-extra".to_string(), "1".to_string())].into(),
        timeout: Duration::from_secs(5),
        max_batch: 16,
    })
    .unwrap();
    let fanout = single_sink("pyro", sink, fast_retry(), &metrics);
    fanout.send(envelope("process_cpu", "cpu.pb.gz", 1000), &["pyro".into()]);
    fanout.send(envelope("mutex", "mutex.pb.gz", 2000), &["pyro".into()]);
    fanout.shutdown(Duration::from_secs(5)).await;

    let pushes = pushes.lock().unwrap();
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
