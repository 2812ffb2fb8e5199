//! The scrape-job contract: what the operator publishes per node and what the scraper reads (in
//! cluster mode from the published object, in standalone mode built from its YAML file).
//!
//! Serialized as JSON with a `formatVersion`; a scraper refuses a shard whose major format it
//! does not know rather than guessing, and keeps running its last good jobs. Format 2 ([`wire`])
//! groups the jobs of one endpoint; format 1 (the [`JobShard`] as it is) is still read, so a
//! scraper may be upgraded before or after the operator.

pub mod wire;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Duration, NamespacedSecretKeyRef, ResolvedProfile, Scheme,
    policy::SinkSpec,
    relabel::{Labels, RelabelConfig},
};

/// The format this crate writes (it reads this one and format 1).
pub const JOB_SHARD_FORMAT_VERSION: u32 = 2;

/// The first format: the jobs one by one, as [`JobShard`] serializes.
const JOB_SHARD_FORMAT_V1: u32 = 1;

/// Key of the shard's JSON inside the published object's data.
pub const JOB_SHARD_DATA_KEY: &str = "jobs.json";

/// All jobs for one scraper (one node, or the cluster-wide scraper).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobShard {
    /// [`JOB_SHARD_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The node whose scraper reads this shard; `None` for jobs without a node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The jobs, sorted by id.
    pub jobs: Vec<ScrapeJob>,
    /// Every sink a job or the eBPF section names, sorted by name; each sink's `name` is its key
    /// ([`sink_key`]).
    #[serde(default)]
    pub sinks: Vec<SinkSpec>,
    /// What this node's eBPF profiler does. `None`: no policy selects the node for eBPF, and the
    /// scraper loads no BPF program (an older scraper ignores the field: it is optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebpf: Option<EbpfShard>,
}

/// The eBPF section of a node's shard: which containers of this node to sample, how often, and
/// where their profiles go. The operator compiles it from the policies whose `ebpf.nodeSelector`
/// selects the node (and ProfilingTargets that opt their pods in); the scraper needs no pod
/// watch of its own, since the container IDs are here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EbpfShard {
    /// Samples per second per CPU: the highest rate of the policies selecting the node (one perf
    /// event serves the whole node).
    pub sample_rate: u32,
    /// How often the collected samples become profiles.
    pub period: Duration,
    /// Also profile processes that belong to no selected pod (a policy asked for the host).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_processes: bool,
    /// Labels, rules and sinks for host processes (only with `host_processes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<EbpfLabelling>,
    /// The selected pods of this node, sorted by namespace and name.
    #[serde(default)]
    pub pods: Vec<EbpfPod>,
}

/// One selected pod of the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EbpfPod {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub name: String,
    /// The pod's containers that have started, with the runtime's ID of each.
    pub containers: Vec<EbpfContainer>,
    /// How its profiles are labelled and where they go.
    pub labelling: EbpfLabelling,
}

/// A running container of a selected pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EbpfContainer {
    /// The container's name in the pod spec (the `container` label).
    pub name: String,
    /// `status.containerStatuses[].containerID` without its `<runtime>://` prefix: the ID found
    /// in `/proc/<pid>/cgroup` of the container's processes.
    pub id: String,
}

/// The label pipeline's inputs for eBPF profiles, as for a scrape job: the discovery labels
/// (`__meta_kubernetes_*`, `namespace`, `pod`, `node`, ...) before the rules; the scraper adds
/// `container`, `__meta_process_*` and `__name__` per profile and runs the rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EbpfLabelling {
    /// The policy (or ProfilingTarget) that selected the pod, for health reports.
    pub origin: JobOrigin,
    /// Labels before relabelling.
    #[serde(default)]
    pub labels: Labels,
    /// Relabel rules of the policy, then of the target.
    #[serde(default)]
    pub relabelings: Vec<RelabelConfig>,
    /// Added after relabelling.
    #[serde(default)]
    pub external_labels: Labels,
    /// Keys of the sinks to send to (see [`sink_key`]); empty: the profiles go nowhere.
    #[serde(default)]
    pub sinks: Vec<String>,
}

/// The key of sink `sink` of policy `policy` in a shard. Sinks are identified by their policy
/// and name together: two policies may both define a sink called `default`, and each policy's
/// profiles must reach its own. Policy names are DNS subdomains (no `/`), so the key is unique.
/// Standalone configurations have no policy and use the sink's name as its key.
pub fn sink_key(policy: &str, sink: &str) -> String {
    format!("{policy}/{sink}")
}

/// Why a published shard could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JobShardError {
    /// Not JSON of the expected shape.
    #[error("job shard is not valid JSON of the expected shape: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The compressed form could not be decompressed.
    #[error("job shard cannot be decompressed: {0}")]
    Compressed(String),
    /// Written by a newer operator.
    #[error(
        "job shard has format version {found}, this scraper reads versions {JOB_SHARD_FORMAT_V1} and {JOB_SHARD_FORMAT_VERSION}: upgrade the scraper to match the operator"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },
}

impl JobShard {
    /// A shard holding `jobs` (sorted here) and `sinks`.
    pub fn new(node: Option<String>, mut jobs: Vec<ScrapeJob>, mut sinks: Vec<SinkSpec>) -> Self {
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        sinks.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            format_version: JOB_SHARD_FORMAT_VERSION,
            node,
            jobs,
            sinks,
            ebpf: None,
        }
    }

    /// Stable JSON in the current format: the same shard always serializes to the same bytes,
    /// so the operator can skip writes that change nothing.
    pub fn to_json(&self) -> String {
        wire::to_json(self)
    }

    /// Parses and checks the format version.
    pub fn from_json(json: &str) -> Result<Self, JobShardError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Header {
            format_version: u32,
        }
        let header: Header = serde_json::from_str(json)?;
        match header.format_version {
            JOB_SHARD_FORMAT_VERSION => Ok(wire::from_json(json)?),
            JOB_SHARD_FORMAT_V1 => Ok(serde_json::from_str(json)?),
            found => Err(JobShardError::UnsupportedVersion { found }),
        }
    }
}

/// Where a job came from, so that scrape health can be reported on the right object.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct JobOrigin {
    /// What produced the job.
    pub kind: OriginKind,
    /// Namespace of the ProfilingTarget or pod (empty for static jobs).
    #[serde(default)]
    pub namespace: String,
    /// Name of the ProfilingTarget, pod (annotations) or static target.
    pub name: String,
}

/// The kinds of job origin.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum OriginKind {
    /// A ProfilingTarget.
    ProfilingTarget,
    /// Pod annotations.
    Annotations,
    /// The scraper's standalone file.
    Static,
    /// A ProfilingPolicy (its eBPF section selected the pods).
    ProfilingPolicy,
}

impl OriginKind {
    /// The name used in keys and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProfilingTarget => "ProfilingTarget",
            Self::Annotations => "Annotations",
            Self::Static => "Static",
            Self::ProfilingPolicy => "ProfilingPolicy",
        }
    }
}

/// A secret value: from a Kubernetes Secret (cluster mode; the scraper reads it under RBAC, so
/// no credential is ever written into a published shard) or a file (standalone mode).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRef {
    /// A key of a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<NamespacedSecretKeyRef>,
    /// A file whose content is the value (trailing newline trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The value itself, for what is not secret (a user name in the standalone file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl CredentialRef {
    /// A value read from `path`.
    pub fn from_file(path: impl Into<String>) -> Self {
        Self {
            file: Some(path.into()),
            ..Default::default()
        }
    }

    /// A value given inline.
    pub fn literal(value: impl Into<String>) -> Self {
        Self {
            value: Some(value.into()),
            ..Default::default()
        }
    }
}

/// Authentication towards the target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ScrapeAuth {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: CredentialRef,
    },
    /// HTTP basic authentication.
    Basic {
        /// The user name.
        username: CredentialRef,
        /// The password.
        password: CredentialRef,
    },
}

/// TLS towards an `https` target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScrapeTls {
    /// PEM CA bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CredentialRef>,
    /// PEM client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<CredentialRef>,
    /// PEM client key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<CredentialRef>,
    /// Name to verify instead of the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Do not verify the target's certificate.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One profile type of one target: the unit the scraper schedules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScrapeJob {
    /// Stable identity (see [`ScrapeJob::identity`]): a change of interval, labels or sinks keeps
    /// the id, so the scheduler updates the job in place instead of restarting its timer.
    pub id: String,
    /// What produced the job.
    pub origin: JobOrigin,
    /// `host:port`.
    pub address: String,
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Scheme,
    /// The profile type, path, delta and seconds.
    pub profile: ResolvedProfile,
    /// Extra query parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, Vec<String>>,
    /// Time between scrapes.
    pub interval: Duration,
    /// Deadline of a request; a profile with `seconds` may take `seconds` plus this.
    pub timeout: Duration,
    /// Labels before relabelling: discovery labels (`__address__`, `__meta_kubernetes_*`) and
    /// static labels.
    #[serde(default)]
    pub labels: Labels,
    /// Relabelling, applied in order (target rules, then policy rules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relabelings: Vec<RelabelConfig>,
    /// Added after relabelling; never override a label relabelling set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_labels: Labels,
    /// Authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ScrapeAuth>,
    /// TLS settings for `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ScrapeTls>,
    /// Keys of the sinks to send to (see [`sink_key`]); empty: the profile goes nowhere.
    #[serde(default)]
    pub sinks: Vec<String>,
    /// Largest body accepted, in bytes as fetched (before decompression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_profile_bytes: Option<u64>,
}

impl ScrapeJob {
    /// The id of a job pulling `profile_name` at `path` from `address` for `origin`: a hex
    /// digest, stable across processes and releases.
    pub fn identity(origin: &JobOrigin, address: &str, profile_name: &str, path: &str) -> String {
        use md5::Digest;
        // The kind as `Debug` prints it: ids must not change across releases.
        let kind = match origin.kind {
            OriginKind::ProfilingTarget => "ProfilingTarget",
            OriginKind::Annotations => "Annotations",
            OriginKind::Static => "Static",
            OriginKind::ProfilingPolicy => "ProfilingPolicy",
        };
        let mut h = md5::Md5::new();
        for part in [
            kind,
            &origin.namespace,
            &origin.name,
            address,
            profile_name,
            path,
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        let digest = h.finalize();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = String::with_capacity(16);
        for b in &digest[..8] {
            id.push(char::from(HEX[usize::from(b >> 4)]));
            id.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        id
    }

    /// How long one request may take: `seconds` plus the timeout for profiles sampled over
    /// time (CPU), the timeout otherwise.
    pub fn request_deadline(&self) -> std::time::Duration {
        let sampled = std::time::Duration::from_secs(u64::from(self.profile.seconds.unwrap_or(0)));
        sampled + self.timeout.std()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProfileKind;

    fn job() -> ScrapeJob {
        let origin = JobOrigin {
            kind: OriginKind::Static,
            namespace: String::new(),
            name: "demo".into(),
        };
        ScrapeJob {
            id: ScrapeJob::identity(
                &origin,
                "127.0.0.1:6060",
                "process_cpu",
                "/debug/pprof/profile",
            ),
            origin,
            address: "127.0.0.1:6060".into(),
            scheme: Scheme::Http,
            profile: ResolvedProfile {
                name: "process_cpu".into(),
                kind: Some(ProfileKind::Cpu),
                path: "/debug/pprof/profile".into(),
                delta: false,
                seconds: Some(15),
                pre_delta: false,
            },
            params: BTreeMap::new(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            labels: Labels::new(),
            relabelings: vec![],
            external_labels: Labels::new(),
            auth: None,
            tls: None,
            sinks: vec!["local".into()],
            max_profile_bytes: None,
        }
    }

    #[test]
    fn shard_round_trips_and_is_stable() {
        let shard = JobShard::new(Some("node-1".into()), vec![job()], vec![]);
        let json = shard.to_json();
        assert_eq!(JobShard::from_json(&json).unwrap(), shard);
        assert_eq!(json, JobShard::from_json(&json).unwrap().to_json());
    }

    #[test]
    fn newer_format_is_refused_with_advice() {
        let json = r#"{"formatVersion": 3, "endpoints": []}"#;
        let err = JobShard::from_json(json).unwrap_err().to_string();
        assert!(
            err.contains("format version 3") && err.contains("upgrade"),
            "{err}"
        );
    }

    /// `job()` pulling `profile` from `address` with `labels`.
    fn job_of(address: &str, profile: &str, labels: &[(&str, &str)]) -> ScrapeJob {
        let mut j = job();
        j.address = address.into();
        j.profile.name = profile.into();
        j.id = ScrapeJob::identity(&j.origin, address, profile, &j.profile.path);
        j.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        j
    }

    #[test]
    fn jobs_of_one_endpoint_share_an_entry_and_read_back_as_they_were() {
        let a = [("instance", "10.0.0.1:6060"), ("pod", "a")];
        let mut slower = job_of("10.0.0.1:6060", "goroutine", &a);
        slower.interval = Duration::from_secs(60);
        let jobs = vec![
            job_of(
                "10.0.0.1:6060",
                "process_cpu",
                &[a[0], a[1], ("__name__", "process_cpu")],
            ),
            job_of(
                "10.0.0.1:6060",
                "memory",
                &[a[0], a[1], ("__name__", "memory")],
            ),
            // Other settings: an entry of its own, at the same address.
            slower,
            job_of("10.0.0.2:6060", "memory", &[("pod", "b")]),
        ];
        let shard = JobShard::new(Some("node-1".into()), jobs, vec![]);
        let json = shard.to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let endpoints = value["endpoints"].as_array().unwrap();
        assert_eq!(endpoints.len(), 3, "{json}");
        let shared = endpoints
            .iter()
            .find(|e| e["profiles"].as_array().unwrap().len() == 2)
            .unwrap();
        assert_eq!(
            shared["labels"],
            serde_json::json!({"instance": "10.0.0.1:6060", "pod": "a"})
        );
        assert_eq!(json.matches("10.0.0.1:6060").count(), 4, "{json}");
        let back = JobShard::from_json(&json).unwrap();
        assert_eq!(back, shard);
        assert_eq!(back.to_json(), json);
    }

    #[test]
    fn format_1_is_still_read() {
        let shard = JobShard::new(Some("node-1".into()), vec![job()], vec![]);
        let mut v1 = serde_json::to_value(&shard).unwrap();
        v1["formatVersion"] = 1.into();
        let back = JobShard::from_json(&v1.to_string()).unwrap();
        assert_eq!(back.jobs, shard.jobs);
        assert_eq!(back.node, shard.node);
    }

    #[test]
    fn identity_ignores_interval_but_not_the_address() {
        let a = job();
        let mut b = job();
        b.interval = Duration::from_secs(60);
        assert_eq!(a.id, b.id);
        let other = ScrapeJob::identity(
            &a.origin,
            "127.0.0.2:6060",
            "process_cpu",
            "/debug/pprof/profile",
        );
        assert_ne!(a.id, other);
        assert_eq!(a.id.len(), 16);
    }

    #[test]
    fn ids_stay_what_earlier_releases_computed() {
        // A changed id restarts the job's timer and loses its delta baseline in every scraper
        // on upgrade: these are the digests of earlier releases.
        let origin = |kind, name: &str| JobOrigin {
            kind,
            namespace: "team-a".into(),
            name: name.into(),
        };
        assert_eq!(
            ScrapeJob::identity(
                &origin(OriginKind::ProfilingTarget, "checkout"),
                "10.0.0.7:6060",
                "process_cpu",
                "/debug/pprof/profile"
            ),
            "9ed338ecca613ab7"
        );
        assert_eq!(
            ScrapeJob::identity(
                &origin(OriginKind::Annotations, "checkout-7d9"),
                "10.0.0.7:6060",
                "memory",
                "/debug/pprof/allocs"
            ),
            "3db0b396646619c6"
        );
    }

    #[test]
    fn cpu_deadline_is_seconds_plus_timeout() {
        assert_eq!(job().request_deadline(), std::time::Duration::from_secs(25));
    }
}
