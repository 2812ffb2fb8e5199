//! Building sinks from their specs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kubeprof_crds::policy::{OtlpSink as OtlpSpec, ParcaSink as ParcaSpec, SinkSpec};

use super::{AnyBackend, build};
use crate::credentials::SecretsDir;

#[tokio::test]
async fn sink_specs_build_every_backend() {
    let secrets = SecretsDir(None);
    let otlp = SinkSpec {
        name: "otel".into(),
        otlp: Some(OtlpSpec {
            endpoint: "http://127.0.0.1:4318".into(),
            headers: Default::default(),
        }),
        ..Default::default()
    };
    assert!(matches!(build(&otlp, &secrets), Ok(AnyBackend::Otlp(_))));
    let parca = SinkSpec {
        name: "parca".into(),
        parca: Some(ParcaSpec {
            address: "127.0.0.1:7070".into(),
            insecure: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(matches!(build(&parca, &secrets), Ok(AnyBackend::Parca(_))));
    let bad = SinkSpec {
        name: "otel".into(),
        otlp: Some(OtlpSpec {
            endpoint: "http://127.0.0.1:4318".into(),
            headers: [("bad header".to_string(), "x".to_string())].into(),
        }),
        ..Default::default()
    };
    let e = build(&bad, &secrets)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("sink otel") && e.contains("bad header"), "{e}");
}
