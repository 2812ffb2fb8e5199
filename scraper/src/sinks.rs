//! Sinks: where profiles go. Every backend has the same shape (as in Vector), one folder each:
//! `sinks/<backend>.rs` holds the sink and its [`Backend`] impl, `<backend>/config.rs` its
//! settings and how a [`SinkSpec`] becomes them, `<backend>/request.rs` (or `convert.rs`) the
//! wire request of a batch, and `<backend>/tests.rs` tests against a receiver of the real wire
//! format. What they share: the bounded [`queue`], the [`retry`] classification and backoff,
//! and the [`worker`] that drains a queue in batches.
//!
//! A new backend copies one of the folders, implements [`Backend`], and gets a variant in
//! [`AnyBackend`] and a line in [`build`].

mod file;
mod otlp;
mod parca;
mod pyroscope;
mod queue;
mod refusals;
mod retry;
#[cfg(test)]
mod tests;
mod worker;

use std::future::Future;

use kubeprof_crds::{health::SinkRefusal, policy::SinkSpec};

use crate::{
    credentials::{CredentialError, SecretSource},
    envelope::Envelope,
    metrics::Metrics,
};
pub(crate) use queue::QueueConfig;
pub use refusals::Refusals;
pub use retry::{RetryConfig, SendError};
pub(crate) use worker::Sink;

/// What every backend implements.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Profiles per request.
    fn max_batch(&self) -> usize;

    /// Whether it reads [`Envelope::decoded`]; the outputs hand the decoded profile only to
    /// the sinks that want it.
    fn wants_decoded(&self) -> bool {
        false
    }

    /// The key of the batch `envelope` belongs in: profiles of different keys never share a
    /// request (a Pyroscope tenant). `Err` names, as a fixed metric reason, why the backend
    /// would refuse the profile; it is dropped and counted instead of sent.
    fn batch_key(&self, _envelope: &Envelope) -> Result<Option<String>, &'static str> {
        Ok(None)
    }

    /// Why the backend would refuse `envelope` for good: it is dropped, counted under the
    /// reason and reported in the job's health instead of sent. Runs outside the queue's lock.
    fn refuse(&self, _envelope: &Envelope) -> Option<SinkRefusal> {
        None
    }

    /// Sends a batch (of one batch key), all or nothing.
    fn send(&self, batch: &[Envelope]) -> impl Future<Output = Result<(), SendError>> + Send;
}

/// Why a sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SinkBuildError {
    /// No backend given.
    #[error("sink {0}: needs exactly one of pyroscope, parca, otlp or file")]
    NoBackend(String),
    /// A credential could not be read.
    #[error("sink {name}: {source}")]
    Credential {
        /// Sink name.
        name: String,
        /// Why.
        #[source]
        source: CredentialError,
    },
    /// The backend's settings are unusable.
    #[error("sink {name}: {source}")]
    Invalid {
        /// Sink name.
        name: String,
        /// What is wrong.
        #[source]
        source: SinkConfigError,
    },
}

/// What is wrong with a backend's settings.
#[derive(Debug, thiserror::Error)]
pub enum SinkConfigError {
    /// Not a URL.
    #[error("{field} {value:?}: {source}")]
    Url {
        /// `url` or `endpoint`.
        field: &'static str,
        /// As given.
        value: String,
        /// Why.
        #[source]
        source: url::ParseError,
    },
    /// Not a gRPC address.
    #[error("address {value:?}: {source}")]
    Address {
        /// As given.
        value: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// An extra header's name is not a valid header name.
    #[error("header {name:?}: {source}")]
    HeaderName {
        /// As given.
        name: String,
        /// Why.
        #[source]
        source: reqwest::header::InvalidHeaderName,
    },
    /// An extra header's value is not a valid header value.
    #[error("header {name:?}: {source}")]
    HeaderValue {
        /// The header.
        name: String,
        /// Why.
        #[source]
        source: reqwest::header::InvalidHeaderValue,
    },
    /// The bearer token cannot travel in a header.
    #[error("the bearer token is not a valid header value")]
    BearerToken(#[source] tonic::metadata::errors::InvalidMetadataValue),
    /// The HTTP client could not be set up.
    #[error(transparent)]
    Client(reqwest::Error),
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// A setting this backend does not support.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// A built backend, not yet running.
#[derive(Debug)]
pub(crate) enum AnyBackend {
    File(file::FileSink),
    Pyroscope(pyroscope::PyroscopeSink),
    Parca(parca::ParcaSink),
    Otlp(otlp::OtlpSink),
}

impl Backend for AnyBackend {
    fn max_batch(&self) -> usize {
        match self {
            Self::File(s) => s.max_batch(),
            Self::Pyroscope(s) => s.max_batch(),
            Self::Parca(s) => s.max_batch(),
            Self::Otlp(s) => s.max_batch(),
        }
    }

    fn wants_decoded(&self) -> bool {
        match self {
            Self::File(s) => s.wants_decoded(),
            Self::Pyroscope(s) => s.wants_decoded(),
            Self::Parca(s) => s.wants_decoded(),
            Self::Otlp(s) => s.wants_decoded(),
        }
    }

    async fn send(&self, batch: &[Envelope]) -> Result<(), SendError> {
        match self {
            Self::File(s) => s.send(batch).await,
            Self::Pyroscope(s) => s.send(batch).await,
            Self::Parca(s) => s.send(batch).await,
            Self::Otlp(s) => s.send(batch).await,
        }
    }
}

/// What a backend's `from_spec` reads besides its own section of the spec.
pub(crate) struct SpecContext<'a> {
    name: &'a str,
    secrets: &'a dyn SecretSource,
}

impl SpecContext<'_> {
    /// The value of a Secret reference.
    pub fn credential(
        &self,
        r: &kubeprof_crds::NamespacedSecretKeyRef,
    ) -> Result<String, SinkBuildError> {
        self.secrets
            .read(r)
            .map_err(|source| SinkBuildError::Credential {
                name: self.name.to_owned(),
                source,
            })
    }

    /// The error of unusable settings.
    pub fn invalid(&self, source: SinkConfigError) -> SinkBuildError {
        SinkBuildError::Invalid {
            name: self.name.to_owned(),
            source,
        }
    }
}

/// Builds the backend a [`SinkSpec`] describes, resolving its credentials.
pub(crate) fn build(
    spec: &SinkSpec,
    secrets: &dyn SecretSource,
) -> Result<AnyBackend, SinkBuildError> {
    let cx = SpecContext {
        name: &spec.name,
        secrets,
    };
    if let Some(f) = &spec.file {
        return Ok(AnyBackend::File(file::FileSink::new(
            file::FileConfig::from_spec(f),
        )));
    }
    if let Some(p) = &spec.pyroscope {
        return pyroscope::PyroscopeSink::new(pyroscope::PyroscopeConfig::from_spec(p, &cx)?)
            .map(AnyBackend::Pyroscope)
            .map_err(|e| cx.invalid(e));
    }
    if let Some(p) = &spec.parca {
        return parca::ParcaSink::new(parca::ParcaConfig::from_spec(p, &cx)?)
            .map(AnyBackend::Parca)
            .map_err(|e| cx.invalid(e));
    }
    if let Some(o) = &spec.otlp {
        return otlp::OtlpSink::new(otlp::OtlpConfig::from_spec(o))
            .map(AnyBackend::Otlp)
            .map_err(|e| cx.invalid(e));
    }
    Err(SinkBuildError::NoBackend(spec.name.clone()))
}

/// Starts the sink `spec` describes on its built `backend`.
pub(crate) fn start(
    spec: &SinkSpec,
    backend: AnyBackend,
    retry: RetryConfig,
    metrics: &Metrics,
) -> Sink {
    Sink::start(
        spec.name.clone(),
        backend,
        QueueConfig::from_spec(spec.queue.as_ref()),
        retry,
        metrics,
    )
}
