//! Grafana Pyroscope: `POST {url}/push.v1.PusherService/Push`, a Connect-protocol unary call
//! with a protobuf `PushRequest` body, several profiles per request.

mod config;
mod request;
#[cfg(test)]
mod tests;

use prost::Message as _;

pub use config::{HttpAuth, PyroscopeConfig};

use super::{Backend, SendError, SinkConfigError};
use crate::envelope::Envelope;

/// Pushes to Pyroscope.
#[derive(Debug)]
pub struct PyroscopeSink {
    config: PyroscopeConfig,
    endpoint: reqwest::Url,
    client: reqwest::Client,
}

impl PyroscopeSink {
    /// A sink for `config`.
    pub fn new(config: PyroscopeConfig) -> Result<Self, SinkConfigError> {
        crate::tls::install_default_provider();
        let endpoint = format!(
            "{}/push.v1.PusherService/Push",
            config.url.trim_end_matches('/')
        );
        let endpoint = reqwest::Url::parse(&endpoint).map_err(|source| SinkConfigError::Url {
            field: "url",
            value: config.url.clone(),
            source,
        })?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("kubeprof-scraper/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(SinkConfigError::Client)?;
        Ok(Self {
            config,
            endpoint,
            client,
        })
    }
}

impl Backend for PyroscopeSink {
    fn max_batch(&self) -> usize {
        self.config.max_batch.max(1)
    }

    async fn send(&self, batch: &[Envelope]) -> Result<(), SendError> {
        let body = request::push_request(batch).encode_to_vec();
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/proto")
            .header("Connect-Protocol-Version", "1")
            .body(body);
        if let Some(tenant) = &self.config.tenant_id {
            request = request.header("X-Scope-OrgID", tenant);
        }
        match &self.config.auth {
            Some(HttpAuth::Basic { username, password }) => {
                request = request.basic_auth(username, Some(password))
            }
            Some(HttpAuth::Bearer(token)) => request = request.bearer_auth(token),
            None => {}
        }
        for (k, v) in &self.config.headers {
            request = request.header(k, v);
        }
        let response = request.send().await.map_err(SendError::Transport)?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(SendError::from_response(response).await)
    }
}
