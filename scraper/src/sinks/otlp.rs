//! OTLP profiles over HTTP (**experimental**, as upstream's `v1development` data model is):
//! `POST {endpoint}/v1development/profiles` with a protobuf `ExportProfilesServiceRequest` of
//! opentelemetry-proto release v1.7.0, converted from pprof by [`convert`]. One profile per
//! request: the dictionary is per request. The sink reads the decoded profile the source
//! carries in the envelope, and decodes the bytes only when there is none.

mod config;
mod convert;
#[cfg(test)]
mod tests;

use std::time::UNIX_EPOCH;

use kubeprof_pprof::{DecodeLimits, decode};
use prost::Message as _;

pub use config::OtlpConfig;

use super::{Backend, SendError, SinkConfigError};
use crate::{
    envelope::Envelope,
    proto::opentelemetry::proto::collector::profiles::v1development::ExportProfilesServiceRequest,
};

/// The request path under the endpoint.
pub const PATH: &str = "/v1development/profiles";

/// Exports to an OTLP/HTTP receiver.
#[derive(Debug)]
pub struct OtlpSink {
    config: OtlpConfig,
    url: reqwest::Url,
    client: reqwest::Client,
}

impl OtlpSink {
    /// A sink for `config`.
    pub fn new(config: OtlpConfig) -> Result<Self, SinkConfigError> {
        crate::tls::install_default_provider();
        let url = format!("{}{PATH}", config.endpoint.trim_end_matches('/'));
        let url = reqwest::Url::parse(&url).map_err(|source| SinkConfigError::Url {
            field: "endpoint",
            value: config.endpoint.clone(),
            source,
        })?;
        for (k, v) in &config.headers {
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).map_err(|source| {
                SinkConfigError::HeaderName {
                    name: k.clone(),
                    source,
                }
            })?;
            reqwest::header::HeaderValue::from_str(v).map_err(|source| {
                SinkConfigError::HeaderValue {
                    name: k.clone(),
                    source,
                }
            })?;
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("kubeprof-scraper/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(SinkConfigError::Client)?;
        Ok(Self {
            config,
            url,
            client,
        })
    }
}

/// The export request of one envelope.
fn request(envelope: &Envelope) -> Result<ExportProfilesServiceRequest, SendError> {
    let decoded;
    let profile = match &envelope.decoded {
        Some(p) => p.as_ref(),
        None => {
            decoded = decode(&envelope.profile, &DecodeLimits::default())
                .map_err(|e| SendError::Convert(e.into()))?;
            &decoded
        }
    };
    let duration = envelope
        .end
        .duration_since(envelope.start)
        .unwrap_or_default();
    let mut request = convert::convert(profile, &envelope.labels, duration)
        .map_err(|e| SendError::Convert(e.into()))?;
    if let Some(p) = request
        .resource_profiles
        .first_mut()
        .and_then(|r| r.scope_profiles.first_mut())
        .and_then(|s| s.profiles.first_mut())
        && p.time_nanos == 0
    {
        p.time_nanos = envelope
            .start
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    }
    Ok(request)
}

impl Backend for OtlpSink {
    fn max_batch(&self) -> usize {
        // One profile per request: each request carries its own dictionary.
        1
    }

    fn wants_decoded(&self) -> bool {
        true
    }

    /// Sends each profile of the batch as one request.
    async fn send(&self, batch: &[Envelope]) -> Result<(), SendError> {
        for envelope in batch {
            let mut http = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                .body(request(envelope)?.encode_to_vec());
            for (k, v) in &self.config.headers {
                http = http.header(k, v);
            }
            let response = http.send().await.map_err(SendError::Transport)?;
            if !response.status().is_success() {
                return Err(SendError::from_response(response).await);
            }
        }
        Ok(())
    }
}
