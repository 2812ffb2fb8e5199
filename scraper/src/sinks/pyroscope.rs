//! Grafana Pyroscope: `POST {url}/push.v1.PusherService/Push`, a Connect-protocol unary call
//! with a protobuf `PushRequest` body (grafana/pyroscope `api/push/v1/push.proto`), several
//! profiles per request, all of one tenant (`X-Scope-OrgID`: the sink's `tenantID`, or with
//! `tenantFrom` the value of that label of each profile). Labels are sent as the pipeline left
//! them: `__name__` and `__delta__` are the only `__*` labels, as Alloy's `pyroscope.write`
//! sends them. Profiles over Pyroscope's ingestion limits are dropped and counted (see
//! [`limits`]).

mod config;
pub mod limits;
mod request;
#[cfg(test)]
mod tests;

use prost::Message as _;

pub use config::{HttpAuth, PyroscopeConfig};
use kubeprof_crds::{health::SinkRefusal, policy::MissingTenant};

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

    fn batch_key(&self, e: &Envelope) -> Result<Option<String>, &'static str> {
        let Some(label) = &self.config.tenant_from else {
            return Ok(self.config.tenant_id.clone());
        };
        let tenant = e
            .labels
            .get(label)
            .filter(|t| !t.is_empty() && reqwest::header::HeaderValue::from_str(t).is_ok());
        match (tenant, self.config.missing_tenant) {
            (Some(t), _) => Ok(Some(t.clone())),
            (None, MissingTenant::Default) => Ok(self.config.tenant_id.clone()),
            (None, MissingTenant::Drop) => Err("tenant_missing"),
        }
    }

    fn refuse(&self, e: &Envelope) -> Option<SinkRefusal> {
        let limits = &self.config.limits;
        limits.refuse_labels(e).or_else(|| limits.refuse_profile(e))
    }

    async fn send(&self, batch: &[Envelope]) -> Result<(), SendError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        // The worker batches by key, so the first profile's tenant is the batch's.
        let tenant = self.batch_key(first).ok().flatten();
        let body = request::push_request(batch).encode_to_vec();
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/proto")
            .header("Connect-Protocol-Version", "1")
            .body(body);
        if let Some(tenant) = &tenant {
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
