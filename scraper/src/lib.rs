//! kubeprof-scraper: jobs -> scheduler -> fetch -> decode/validate -> delta -> labels -> sinks.
#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod discovery;
pub mod fetch;
pub mod flamegraph;
pub mod metrics;
pub mod proto;
pub mod scrape;
pub mod sinks;
/// The endpoints shared by every kubeprof binary.
pub use kubeprof_telemetry as telemetry;
pub mod tls;
