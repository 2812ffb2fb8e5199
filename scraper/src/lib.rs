//! kubeprof-scraper, the data plane: sources -> outputs -> sinks.
//!
//! - `sources`: where jobs come from (the standalone file, the node's shard in cluster mode).
//! - `pull`: the pull loop: scheduler -> fetch -> decode, validate, delta -> labels.
//! - `outputs`: the one fan-out every source feeds, by sink name.
//! - `sinks`: one folder per backend (file, Pyroscope, Parca, OTLP) and the queue, retry and
//!   worker they share.
//! - `app`: the assembly the binary runs; `cli`: its arguments.
//! - `ui`: `/targets` and the profile browser `/ui`, served on the telemetry port.
#![forbid(unsafe_code)]

mod app;
mod cli;
mod config;
mod credentials;
mod envelope;
pub mod flamegraph;
mod metrics;
mod outputs;
pub mod proto;
mod pull;
mod sinks;
mod sources;
#[cfg(test)]
mod test_support;
mod tls;
pub mod ui;

pub use app::main;
pub use config::{Config, ConfigError, EMBEDDED_DEFAULT};
pub use credentials::{CredentialError, FileProblem, SecretSource, SecretsDir};
pub use envelope::Envelope;
/// The endpoints shared by every kubeprof binary.
pub use kubeprof_telemetry as telemetry;
pub use metrics::{
    Metrics, OutcomeLabels, ScrapeLabels, SinkLabels, SinkReasonLabels, TypeLabels,
    TypeReasonLabels,
};
pub use outputs::{Outputs, OutputsHandle};
pub use pull::{FetchError, Fetcher, JobHealth, Pipeline, Scheduler, phase};
pub use sinks::{RetryConfig, SinkBuildError};
pub use sources::{FileSource, JobSet, JobSource};
pub use tls::install_default_provider;
