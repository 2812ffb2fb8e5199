//! Grafana Pyroscope: `POST {url}/push.v1.PusherService/Push`, a Connect-protocol unary call
//! with a protobuf `PushRequest` body, several profiles per request.

use std::{collections::BTreeMap, time::Duration};

use prost::Message as _;

use super::{Envelope, SendError};
use crate::proto::{
    push::v1::{PushRequest, RawProfileSeries, RawSample},
    types::v1::LabelPair,
};

/// Authentication towards Pyroscope.
#[derive(Clone)]
pub enum HttpAuth {
    /// Basic.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// Bearer token.
    Bearer(String),
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print credentials.
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Self::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// Settings of a Pyroscope sink.
#[derive(Clone, Debug)]
pub struct PyroscopeConfig {
    /// Base URL, e.g. `http://pyroscope:4040`.
    pub url: String,
    /// Tenant (`X-Scope-OrgID`).
    pub tenant_id: Option<String>,
    /// Authentication.
    pub auth: Option<HttpAuth>,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// Request timeout.
    pub timeout: Duration,
    /// Profiles per request.
    pub max_batch: usize,
}

/// Pushes to Pyroscope.
#[derive(Debug)]
pub struct PyroscopeSink {
    config: PyroscopeConfig,
    endpoint: String,
    client: reqwest::Client,
}

impl PyroscopeSink {
    /// A sink for `config`.
    pub fn new(config: PyroscopeConfig) -> Result<Self, String> {
        crate::tls::install_default_provider();
        let endpoint = format!(
            "{}/push.v1.PusherService/Push",
            config.url.trim_end_matches('/')
        );
        reqwest::Url::parse(&endpoint).map_err(|e| format!("url {:?}: {e}", config.url))?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("kubeprof-scraper/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            config,
            endpoint,
            client,
        })
    }

    pub(super) fn max_batch(&self) -> usize {
        self.config.max_batch.max(1)
    }

    /// The request body for a batch: one series per profile.
    pub fn request(batch: &[Envelope]) -> PushRequest {
        PushRequest {
            series: batch
                .iter()
                .map(|e| RawProfileSeries {
                    labels: e
                        .labels
                        .iter()
                        .map(|(k, v)| LabelPair {
                            name: k.clone(),
                            value: v.clone(),
                        })
                        .collect(),
                    samples: vec![RawSample {
                        raw_profile: e.profile.clone(),
                        id: format!(
                            "{}-{}",
                            e.job_id,
                            e.start
                                .duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.as_nanos())
                                .unwrap_or(0)
                        ),
                    }],
                })
                .collect(),
        }
    }

    /// Sends one batch.
    pub async fn send(&self, batch: &[Envelope]) -> Result<(), SendError> {
        let body = Self::request(batch).encode_to_vec();
        let mut request = self
            .client
            .post(&self.endpoint)
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
        let response = request
            .send()
            .await
            .map_err(|e| SendError::from_reqwest(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(SendError::from_response(response).await)
    }
}
