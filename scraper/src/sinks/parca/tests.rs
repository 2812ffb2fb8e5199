//! The Parca sink against a gRPC server implementing ProfileStoreService.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use kubeprof_pprof::{self as pprof, DecodeLimits};
use tonic::{Request, Response, Status};

use super::{ParcaConfig, ParcaSink};
use crate::{
    envelope::Envelope,
    metrics::{Metrics, SinkLabels, SinkReasonLabels},
    outputs::Fanout,
    proto::parca::profilestore::v1alpha1::{
        WriteRawRequest, WriteRawResponse,
        profile_store_service_server::{ProfileStoreService, ProfileStoreServiceServer},
    },
    sinks::RetryConfig,
    test_support::{envelope as make, eventually, fast_retry, single_sink},
};

/// A write as received: the authorization metadata and the request.
type Write = (Option<String>, WriteRawRequest);

#[derive(Clone, Default)]
struct Store {
    writes: Arc<Mutex<Vec<Write>>>,
    refuse: Arc<Mutex<Option<tonic::Code>>>,
}

#[tonic::async_trait]
impl ProfileStoreService for Store {
    async fn write_raw(
        &self,
        request: Request<WriteRawRequest>,
    ) -> Result<Response<WriteRawResponse>, Status> {
        if let Some(code) = *self.refuse.lock().unwrap() {
            return Err(Status::new(code, "refused by the test"));
        }
        let auth = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        self.writes
            .lock()
            .unwrap()
            .push((auth, request.into_inner()));
        Ok(Response::new(WriteRawResponse {}))
    }
}

async fn server() -> (Store, String) {
    let store = Store::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let service = ProfileStoreServiceServer::new(store.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (store, addr)
}

fn envelope() -> Envelope {
    make(
        &[
            ("__name__", "mutex"),
            ("__delta__", "false"),
            ("service_name", "shop/checkout"),
            ("namespace", "shop"),
        ],
        "mutex-2.pb.gz",
        SystemTime::now(),
        Duration::ZERO,
    )
}

fn fanout(addr: &str, retry: RetryConfig, metrics: &Metrics) -> Fanout {
    let sink = ParcaSink::new(ParcaConfig {
        address: addr.into(),
        insecure: true,
        bearer_token: Some("s3cret".into()),
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    single_sink("parca", sink, retry, metrics)
}

#[tokio::test]
async fn parca_receives_labels_token_and_the_profile() {
    let (store, addr) = server().await;
    let metrics = Metrics::unregistered();
    let fanout = fanout(&addr, RetryConfig::default(), &metrics);
    fanout.send(envelope(), &["parca".into()]);
    fanout.shutdown(Duration::from_secs(5)).await;
    let writes = store.writes.lock().unwrap();
    assert_eq!(writes.len(), 1);
    let (auth, request) = &writes[0];
    assert_eq!(auth.as_deref(), Some("Bearer s3cret"));
    let series = &request.series[0];
    let labels: Vec<(&str, &str)> = series
        .labels
        .as_ref()
        .unwrap()
        .labels
        .iter()
        .map(|l| (l.name.as_str(), l.value.as_str()))
        .collect();
    assert!(
        labels.contains(&("__name__", "mutex"))
            && labels.contains(&("service_name", "shop/checkout")),
        "{labels:?}"
    );
    // Pyroscope's marker is not a Parca label.
    assert!(labels.iter().all(|(k, _)| *k != "__delta__"), "{labels:?}");
    let p = pprof::decode(&series.samples[0].raw_profile, &DecodeLimits::default()).unwrap();
    assert!(
        p.function
            .iter()
            .any(|f| p.string_table[f.name as usize] == "main.contendedMutex")
    );
    assert_eq!(
        metrics
            .sink_sent
            .get_or_create(&SinkLabels {
                sink: "parca".into()
            })
            .get(),
        1
    );
}

#[tokio::test]
async fn unavailable_is_retried_and_invalid_argument_is_not() {
    let (store, addr) = server().await;
    *store.refuse.lock().unwrap() = Some(tonic::Code::Unavailable);
    let metrics = Metrics::unregistered();
    let retry = fast_retry();
    let fanout = fanout(&addr, retry, &metrics);
    fanout.send(envelope(), &["parca".into()]);
    eventually("retries", || {
        metrics
            .sink_retries
            .get_or_create(&SinkLabels {
                sink: "parca".into(),
            })
            .get()
            >= 2
    })
    .await;
    *store.refuse.lock().unwrap() = None;
    eventually("delivery", || store.writes.lock().unwrap().len() == 1).await;

    *store.refuse.lock().unwrap() = Some(tonic::Code::InvalidArgument);
    fanout.send(envelope(), &["parca".into()]);
    let rejected = || {
        metrics
            .sink_dropped
            .get_or_create(&SinkReasonLabels {
                sink: "parca".into(),
                reason: "rejected".into(),
            })
            .get()
    };
    eventually("the rejection", || rejected() == 1).await;
    fanout.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_parca_that_is_not_there_is_retried_without_crashing() {
    // Nothing listens on this port.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let metrics = Metrics::unregistered();
    let retry = fast_retry();
    let fanout = fanout(&addr, retry, &metrics);
    fanout.send(envelope(), &["parca".into()]);
    eventually("retries", || {
        metrics
            .sink_retries
            .get_or_create(&SinkLabels {
                sink: "parca".into(),
            })
            .get()
            >= 2
    })
    .await;
    fanout.shutdown(Duration::from_millis(200)).await;
    let dropped = metrics
        .sink_dropped
        .get_or_create(&SinkReasonLabels {
            sink: "parca".into(),
            reason: "shutdown".into(),
        })
        .get();
    assert_eq!(dropped, 1);
}
