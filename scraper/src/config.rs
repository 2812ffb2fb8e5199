//! The standalone configuration file (`kubeprof-scraper run --config scraper.yaml`).
//!
//! It speaks the CRDs' vocabulary — the same field names and defaults as a ProfilingTarget
//! endpoint and a ProfilingPolicy — so a user learns one language. Credentials come from files
//! (`bearerTokenFile`, `basicAuth.passwordFile`, `tlsConfig.caFile`, ...), as in Prometheus, and
//! Secret references in sinks resolve from `--secrets-dir` (`DIR/<namespace>/<name>/<key>`, the
//! way Kubernetes mounts Secrets).

mod ebpf;
mod jobs;
mod validate;

use std::collections::BTreeMap;

use kubeprof_crds::{Duration, Profiles, RelabelConfig, Scheme, policy::SinkSpec, relabel::Labels};
use serde::Deserialize;

pub use ebpf::{EbpfConfig, ProcessSelector};

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// What to scrape.
    #[serde(default)]
    pub targets: Vec<StaticTarget>,
    /// Added to every profile after relabelling.
    #[serde(default)]
    pub external_labels: Labels,
    /// Where profiles go (a ProfilingPolicy's `sinks`).
    #[serde(default)]
    pub sinks: Vec<SinkSpec>,
    /// Global scrape limits.
    #[serde(default)]
    pub scrape: ScrapeSettings,
    /// Profile processes of this machine with the eBPF sampler (see [`EbpfConfig`]).
    #[serde(default)]
    pub ebpf: Option<EbpfConfig>,
}

/// Global limits of the scrape loop.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScrapeSettings {
    /// Scrapes in flight at once, over all jobs (default 256). CPU scrapes hold a slot for
    /// their whole `seconds`.
    #[serde(default = "ScrapeSettings::default_max_concurrent")]
    pub max_concurrent: usize,
    /// Largest body accepted as fetched (default 16 MiB).
    #[serde(default = "ScrapeSettings::default_max_profile_bytes")]
    pub max_profile_bytes: u64,
    /// Largest profile after decompression (default 64 MiB).
    #[serde(default = "ScrapeSettings::default_max_decompressed_bytes")]
    pub max_decompressed_bytes: u64,
    /// Bytes that profiles being decompressed and decoded may hold at once, over all scrapes
    /// (default 96 MiB): scrapes wait for their share (at most an interval, then the tick is
    /// missed), and a profile needing more than all of it is refused (`too_large`).
    #[serde(default = "ScrapeSettings::default_max_decode_bytes")]
    pub max_decode_bytes: u64,
}

impl ScrapeSettings {
    fn default_max_concurrent() -> usize {
        // 1,000 targets x 5 types with 15 s CPU profiles keep ~1,000 CPU requests open at once;
        // the others take milliseconds.
        2048
    }
    fn default_max_profile_bytes() -> u64 {
        16 << 20
    }
    fn default_max_decompressed_bytes() -> u64 {
        64 << 20
    }
    fn default_max_decode_bytes() -> u64 {
        crate::pull::DEFAULT_DECODE_BUDGET
    }
}

impl Default for ScrapeSettings {
    fn default() -> Self {
        Self {
            max_concurrent: Self::default_max_concurrent(),
            max_profile_bytes: Self::default_max_profile_bytes(),
            max_decompressed_bytes: Self::default_max_decompressed_bytes(),
            max_decode_bytes: Self::default_max_decode_bytes(),
        }
    }
}

/// A set of addresses scraped alike (a ProfilingTarget endpoint with static addresses).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticTarget {
    /// The `job` label and the name in logs.
    pub name: String,
    /// `host:port` of each process.
    pub addresses: Vec<String>,
    /// `http` (default) or `https`.
    #[serde(default)]
    pub scheme: Scheme,
    /// Time between scrapes (default 15s).
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// Deadline of a non-CPU scrape, less than the interval (default 10s).
    #[serde(default = "default_timeout")]
    pub scrape_timeout: Duration,
    /// Extra query parameters.
    #[serde(default)]
    pub params: BTreeMap<String, Vec<String>>,
    /// Static labels.
    #[serde(default)]
    pub labels: Labels,
    /// Which profiles (the CRD's `profiles`; all five built-in types by default).
    #[serde(default)]
    pub profiles: Profiles,
    /// Relabel rules.
    #[serde(default)]
    pub relabelings: Vec<RelabelConfig>,
    /// Sink names (default: all).
    #[serde(default)]
    pub sinks: Vec<String>,
    /// A file holding a bearer token.
    #[serde(default)]
    pub bearer_token_file: Option<String>,
    /// Basic authentication.
    #[serde(default)]
    pub basic_auth: Option<FileBasicAuth>,
    /// TLS for `https`.
    #[serde(default)]
    pub tls_config: Option<FileTlsConfig>,
}

/// Basic authentication with the password in a file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileBasicAuth {
    /// The user name.
    pub username: String,
    /// A file holding the password.
    pub password_file: String,
}

/// TLS settings with PEM files.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileTlsConfig {
    /// CA bundle.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Client certificate.
    #[serde(default)]
    pub cert_file: Option<String>,
    /// Client key.
    #[serde(default)]
    pub key_file: Option<String>,
    /// Name to verify.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Skip verification.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

fn default_interval() -> Duration {
    Duration::from_secs(15)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A configuration that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not YAML of the expected shape (serde's message has the line and column).
    #[error("{0}")]
    Parse(#[from] serde_yaml::Error),
    /// A value is wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the field, e.g. `targets[0].scrapeTimeout`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// The configuration embedded in the binary (`examples/standalone/scraper.yaml`).
pub const EMBEDDED_DEFAULT: &str = include_str!("../../examples/standalone/scraper.yaml");

/// Largest configuration file accepted (1 MiB: thousands of targets).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// Deepest nesting of YAML collections accepted; a real file nests less than 10 deep, and the
/// YAML parser's time grows with the square of the depth.
pub const MAX_CONFIG_DEPTH: usize = 64;

impl Config {
    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::Invalid {
                field: "<file>".into(),
                message: format!(
                    "{} bytes; the largest configuration accepted is {MAX_CONFIG_BYTES} bytes",
                    text.len()
                ),
            });
        }
        validate::check_depth(text)?;
        let raw: serde_yaml::Value = serde_yaml::from_str(text)?;
        let config: Config = match serde_yaml::from_str(text) {
            Ok(config) => config,
            // serde's path stops at `targets[0]`; name the duration field when one is at fault.
            Err(e) => return Err(validate::bad_duration(&raw).unwrap_or(e.into())),
        };
        // Sinks and profiles are the CRDs' types, which let unknown fields through (the API
        // server prunes them); a file has no such server, so a misspelt key is refused here.
        validate::check_raw(&raw, &config)?;
        config.validate()?;
        Ok(config)
    }

    /// Every credential file of the targets read (missing, unreadable and empty files are
    /// named with their field), and every sink built once (and dropped), its Secret references
    /// resolved through `secrets`: the check `run`, a reload and `check-config` share, so a
    /// file one accepts the others accept too. Needs a Tokio runtime (gRPC clients are built
    /// on one).
    pub fn check_resources(&self, secrets: &dyn crate::SecretSource) -> Result<(), ConfigError> {
        for (i, t) in self.targets.iter().enumerate() {
            let tls = t.tls_config.as_ref();
            let files = [
                ("bearerTokenFile", t.bearer_token_file.as_ref()),
                (
                    "basicAuth.passwordFile",
                    t.basic_auth.as_ref().map(|b| &b.password_file),
                ),
                ("tlsConfig.caFile", tls.and_then(|c| c.ca_file.as_ref())),
                ("tlsConfig.certFile", tls.and_then(|c| c.cert_file.as_ref())),
                ("tlsConfig.keyFile", tls.and_then(|c| c.key_file.as_ref())),
            ];
            for (key, path) in files {
                if let Some(path) = path {
                    crate::credentials::read_file(path).map_err(|e| ConfigError::Invalid {
                        field: format!("targets[{i}].{key}"),
                        message: e.to_string(),
                    })?;
                }
            }
        }
        for (i, spec) in self.sinks.iter().enumerate() {
            crate::sinks::build(spec, secrets).map_err(|e| ConfigError::Invalid {
                field: format!("sinks[{i}]"),
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }
}
