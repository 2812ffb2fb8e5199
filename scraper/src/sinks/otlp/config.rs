//! The OTLP sink's settings.

use std::{collections::BTreeMap, time::Duration};

use kubeprof_crds::policy::OtlpSink as OtlpSpec;

/// Settings of an OTLP sink.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// Base URL, e.g. `http://otel-collector:4318`.
    pub endpoint: String,
    /// Extra headers (e.g. an authorization header).
    pub headers: BTreeMap<String, String>,
    /// Request timeout.
    pub timeout: Duration,
}

impl OtlpConfig {
    /// The settings of `spec`.
    pub fn from_spec(spec: &OtlpSpec) -> Self {
        Self {
            endpoint: spec.endpoint.clone(),
            headers: spec.headers.clone(),
            timeout: Duration::from_secs(30),
        }
    }
}
