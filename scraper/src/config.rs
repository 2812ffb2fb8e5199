//! The standalone configuration file (`kubeprof-scraper run --config scraper.yaml`).
//!
//! It speaks the CRDs' vocabulary — the same field names and defaults as a ProfilingTarget
//! endpoint and a ProfilingPolicy — so a user learns one language. Credentials come from files
//! (`bearerTokenFile`, `basicAuth.passwordFile`, `tlsConfig.caFile`, ...), as in Prometheus, and
//! Secret references in sinks resolve from `--secrets-dir` (`DIR/<namespace>/<name>/<key>`, the
//! way Kubernetes mounts Secrets).

use std::collections::{BTreeMap, BTreeSet};

use kubeprof_crds::{
    Duration, Profiles, RelabelConfig, Scheme,
    constants::labels,
    job::{CredentialRef, JobOrigin, OriginKind, ScrapeAuth, ScrapeJob, ScrapeTls},
    policy::SinkSpec,
    relabel::{Labels, compile_all},
};
use serde::Deserialize;

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
}

impl Default for ScrapeSettings {
    fn default() -> Self {
        Self {
            max_concurrent: Self::default_max_concurrent(),
            max_profile_bytes: Self::default_max_profile_bytes(),
            max_decompressed_bytes: Self::default_max_decompressed_bytes(),
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

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// What the scrape loop needs from a configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobSet {
    /// One job per address and enabled profile type.
    pub jobs: Vec<ScrapeJob>,
    /// The sinks.
    pub sinks: Vec<SinkSpec>,
}

/// The configuration embedded in the binary (`examples/standalone/scraper.yaml`).
pub const EMBEDDED_DEFAULT: &str = include_str!("../../examples/standalone/scraper.yaml");

impl Config {
    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = serde_yaml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut sink_names = BTreeSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let field = format!("sinks[{i}]");
            if !sink_names.insert(sink.name.as_str()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("duplicate sink name {:?}", sink.name),
                ));
            }
            let backends = [
                sink.pyroscope.is_some(),
                sink.parca.is_some(),
                sink.otlp.is_some(),
                sink.file.is_some(),
            ];
            if backends.iter().filter(|b| **b).count() != 1 {
                return Err(invalid(
                    field,
                    "a sink needs exactly one of pyroscope, parca, otlp or file",
                ));
            }
        }
        if self.sinks.is_empty() {
            return Err(invalid(
                "sinks",
                "at least one sink is needed (e.g. `- name: local\\n  file: {directory: ./profiles}`)",
            ));
        }
        let mut names = BTreeSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let field = |f: &str| format!("targets[{i}].{f}");
            if t.name.is_empty() {
                return Err(invalid(field("name"), "must not be empty"));
            }
            if !names.insert(t.name.as_str()) {
                return Err(invalid(
                    field("name"),
                    format!("duplicate target name {:?}", t.name),
                ));
            }
            if t.addresses.is_empty() {
                return Err(invalid(
                    field("addresses"),
                    "at least one host:port is needed",
                ));
            }
            for (j, a) in t.addresses.iter().enumerate() {
                let ok = a.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
                if !ok {
                    return Err(invalid(
                        format!("targets[{i}].addresses[{j}]"),
                        format!("{a:?} is not host:port"),
                    ));
                }
            }
            if t.interval.std().is_zero() {
                return Err(invalid(field("interval"), "must be positive"));
            }
            if t.scrape_timeout >= t.interval {
                return Err(invalid(
                    field("scrapeTimeout"),
                    format!(
                        "{} must be less than interval ({})",
                        t.scrape_timeout, t.interval
                    ),
                ));
            }
            if let Err(e) = compile_all(&t.relabelings) {
                return Err(invalid(field("relabelings"), e.to_string()));
            }
            for (j, s) in t.sinks.iter().enumerate() {
                if !sink_names.contains(s.as_str()) {
                    return Err(invalid(
                        format!("targets[{i}].sinks[{j}]"),
                        format!("no sink is named {s:?}"),
                    ));
                }
            }
            let mut custom = BTreeSet::new();
            for (j, c) in t.profiles.custom.iter().enumerate() {
                if !custom.insert(c.name.as_str())
                    || kubeprof_crds::ProfileKind::ALL
                        .iter()
                        .any(|k| k.metric_name() == c.name)
                {
                    return Err(invalid(
                        format!("targets[{i}].profiles.custom[{j}].name"),
                        format!("{:?} is used twice", c.name),
                    ));
                }
                if !c.path.starts_with('/') {
                    return Err(invalid(
                        format!("targets[{i}].profiles.custom[{j}].path"),
                        "must start with /",
                    ));
                }
            }
            if t.bearer_token_file.is_some() && t.basic_auth.is_some() {
                return Err(invalid(
                    field("bearerTokenFile"),
                    "bearerTokenFile and basicAuth are mutually exclusive",
                ));
            }
            if let Some(tls) = &t.tls_config
                && tls.cert_file.is_some() != tls.key_file.is_some()
            {
                return Err(invalid(
                    field("tlsConfig"),
                    "certFile and keyFile go together",
                ));
            }
            if t.scheme == Scheme::Http && t.tls_config.is_some() {
                return Err(invalid(field("tlsConfig"), "set scheme: https to use TLS"));
            }
        }
        Ok(())
    }

    /// The jobs and sinks this configuration describes.
    pub fn job_set(&self) -> JobSet {
        let all_sinks: Vec<String> = self.sinks.iter().map(|s| s.name.clone()).collect();
        let mut jobs = Vec::new();
        for t in &self.targets {
            let cpu_seconds = u32::try_from(t.interval.std().as_secs())
                .unwrap_or(u32::MAX)
                .max(1);
            let profiles = t
                .profiles
                .resolve(&kubeprof_crds::ProfileKind::ALL, cpu_seconds);
            let file = |f: &Option<String>| f.as_ref().map(CredentialRef::from_file);
            let auth = match (&t.bearer_token_file, &t.basic_auth) {
                (Some(f), _) => Some(ScrapeAuth::Bearer {
                    token: CredentialRef::from_file(f),
                }),
                (None, Some(b)) => Some(ScrapeAuth::Basic {
                    username: CredentialRef::literal(&b.username),
                    password: CredentialRef::from_file(&b.password_file),
                }),
                (None, None) => None,
            };
            let tls = t.tls_config.as_ref().map(|c| ScrapeTls {
                ca: file(&c.ca_file),
                cert: file(&c.cert_file),
                key: file(&c.key_file),
                server_name: c.server_name.clone(),
                insecure_skip_verify: c.insecure_skip_verify,
            });
            for address in &t.addresses {
                let origin = JobOrigin {
                    kind: OriginKind::Static,
                    namespace: String::new(),
                    name: t.name.clone(),
                };
                for profile in &profiles {
                    let mut l = t.labels.clone();
                    l.insert(labels::ADDRESS.into(), address.clone());
                    l.insert(labels::SCHEME.into(), t.scheme.as_str().into());
                    l.insert(labels::PROFILE_PATH.into(), profile.path.clone());
                    l.insert(labels::JOB.into(), t.name.clone());
                    jobs.push(ScrapeJob {
                        id: ScrapeJob::identity(&origin, address, &profile.name, &profile.path),
                        origin: origin.clone(),
                        address: address.clone(),
                        scheme: t.scheme,
                        profile: profile.clone(),
                        params: t.params.clone(),
                        interval: t.interval,
                        timeout: t.scrape_timeout,
                        labels: l,
                        relabelings: t.relabelings.clone(),
                        external_labels: self.external_labels.clone(),
                        auth: auth.clone(),
                        tls: tls.clone(),
                        sinks: if t.sinks.is_empty() {
                            all_sinks.clone()
                        } else {
                            t.sinks.clone()
                        },
                        max_profile_bytes: Some(self.scrape.max_profile_bytes),
                    });
                }
            }
        }
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        JobSet {
            jobs,
            sinks: self.sinks.clone(),
        }
    }
}
