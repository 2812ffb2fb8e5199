//! Parca: `parca.profilestore.v1alpha1.ProfileStoreService/WriteRaw` over gRPC, TLS or plain
//! text (h2c), with an optional bearer token. Labels travel as a `LabelSet` (Parca reads the
//! profile type from `__name__`); profiles as gzip-compressed pprof, which Parca decompresses.

use std::time::Duration;

use tonic::{
    Code,
    transport::{Channel, ClientTlsConfig, Endpoint},
};

use super::{Envelope, SendError};
use crate::proto::parca::profilestore::v1alpha1::{
    Label, LabelSet, RawProfileSeries, RawSample, WriteRawRequest,
    profile_store_service_client::ProfileStoreServiceClient,
};

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

/// Writes to Parca.
#[derive(Debug)]
pub struct ParcaSink {
    client: ProfileStoreServiceClient<Channel>,
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl ParcaSink {
    /// A sink for `config`; connects lazily, on the first send.
    pub fn new(config: ParcaConfig) -> Result<Self, String> {
        crate::tls::install_default_provider();
        let scheme = if config.insecure { "http" } else { "https" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", config.address))
            .map_err(|e| format!("address {:?}: {e}", config.address))?
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(5));
        if !config.insecure {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|e| format!("TLS: {e}"))?;
        }
        let authorization = config
            .bearer_token
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(|_| "the bearer token is not a valid header value".to_owned())?;
        Ok(Self {
            client: ProfileStoreServiceClient::new(endpoint.connect_lazy()),
            authorization,
        })
    }

    /// The request for a batch.
    pub fn request(batch: &[Envelope]) -> WriteRawRequest {
        WriteRawRequest {
            tenant: String::new(),
            normalized: false,
            series: batch
                .iter()
                .map(|e| RawProfileSeries {
                    labels: Some(LabelSet {
                        labels: e
                            .labels
                            .iter()
                            .map(|(k, v)| Label {
                                name: k.clone(),
                                value: v.clone(),
                            })
                            .collect(),
                    }),
                    samples: vec![RawSample {
                        raw_profile: e.profile.clone(),
                    }],
                })
                .collect(),
        }
    }

    /// Sends one batch.
    pub async fn send(&self, batch: &[Envelope]) -> Result<(), SendError> {
        let mut request = tonic::Request::new(Self::request(batch));
        if let Some(auth) = &self.authorization {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        let mut client = self.client.clone();
        match client.write_raw(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(classify(&status)),
        }
    }
}

fn classify(status: &tonic::Status) -> SendError {
    let message = format!("gRPC {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Aborted | Code::Internal => {
            SendError::retryable("grpc_unavailable", message)
        }
        Code::DeadlineExceeded | Code::Cancelled => SendError::retryable("timeout", message),
        Code::ResourceExhausted => SendError::retryable("grpc_resource_exhausted", message),
        _ => SendError::permanent("grpc_rejected", message),
    }
}
