//! The Parca sink's settings.

use std::time::Duration;

use kubeprof_crds::policy::ParcaSink as ParcaSpec;

use crate::sinks::{SinkBuildError, SinkConfigError, SpecContext};

/// Settings of a Parca sink.
#[derive(Clone)]
pub struct ParcaConfig {
    /// `host:port`.
    pub address: String,
    /// Plain-text gRPC.
    pub insecure: bool,
    /// Bearer token.
    pub bearer_token: Option<String>,
    /// Request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for ParcaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParcaConfig")
            .field("address", &self.address)
            .field("insecure", &self.insecure)
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl ParcaConfig {
    /// The settings of `spec`, its credentials resolved.
    pub fn from_spec(spec: &ParcaSpec, cx: &SpecContext<'_>) -> Result<Self, SinkBuildError> {
        if spec.insecure_skip_verify {
            return Err(cx.invalid(SinkConfigError::Unsupported(
                "parca.insecureSkipVerify is not supported: use insecure (plain-text gRPC) or a certificate the scraper trusts",
            )));
        }
        Ok(Self {
            address: spec.address.clone(),
            insecure: spec.insecure,
            bearer_token: spec
                .bearer_token_secret
                .as_ref()
                .map(|r| cx.credential(r))
                .transpose()?,
            timeout: Duration::from_secs(30),
        })
    }
}
