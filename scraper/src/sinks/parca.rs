//! Parca: `parca.profilestore.v1alpha1.ProfileStoreService/WriteRaw` over gRPC, TLS or plain
//! text (h2c), with an optional bearer token.

mod config;
mod request;
#[cfg(test)]
mod tests;

use std::time::Duration;

use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Channel, ClientTlsConfig, Endpoint},
};

pub use config::ParcaConfig;

use super::{Backend, SendError, SinkConfigError};
use crate::{
    envelope::Envelope,
    proto::parca::profilestore::v1alpha1::profile_store_service_client::ProfileStoreServiceClient,
};

/// Writes to Parca.
#[derive(Debug)]
pub struct ParcaSink {
    client: ProfileStoreServiceClient<Channel>,
    authorization: Option<MetadataValue<Ascii>>,
}

impl ParcaSink {
    /// A sink for `config`; connects lazily, on the first send.
    pub fn new(config: ParcaConfig) -> Result<Self, SinkConfigError> {
        crate::tls::install_default_provider();
        let scheme = if config.insecure { "http" } else { "https" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", config.address))
            .map_err(|source| SinkConfigError::Address {
                value: config.address.clone(),
                source,
            })?
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(5));
        if !config.insecure {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(SinkConfigError::Tls)?;
        }
        let authorization = config
            .bearer_token
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(SinkConfigError::BearerToken)?;
        Ok(Self {
            client: ProfileStoreServiceClient::new(endpoint.connect_lazy()),
            authorization,
        })
    }
}

impl Backend for ParcaSink {
    fn max_batch(&self) -> usize {
        16
    }

    async fn send(&self, batch: &[Envelope]) -> Result<(), SendError> {
        let mut request = tonic::Request::new(request::write_raw_request(batch));
        if let Some(auth) = &self.authorization {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        let mut client = self.client.clone();
        client
            .write_raw(request)
            .await
            .map(|_| ())
            .map_err(SendError::Grpc)
    }
}
