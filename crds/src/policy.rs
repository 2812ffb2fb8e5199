//! `ProfilingPolicy`: cluster-wide defaults, limits, sinks and eBPF node selection for the
//! namespaces it governs.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Duration, NamespacedBasicAuth, NamespacedSecretKeyRef, ProfileKind, RelabelConfig, Sampling,
};

/// Defaults, limits and destinations for profiling in the namespaces it selects. Cluster-scoped.
/// When several policies select a namespace, the one with the highest `priority` governs it;
/// among equal priorities, the one whose name sorts first.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "kubeprof.io",
    version = "v1alpha1",
    doc = "Cluster-wide profiling defaults, limits, sinks and eBPF node selection for the namespaces it selects.",
    kind = "ProfilingPolicy",
    plural = "profilingpolicies",
    shortname = "pp",
    category = "kubeprof",
    status = "ProfilingPolicyStatus",
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Namespaces","type":"integer","jsonPath":".status.matchedNamespaces","description":"Namespaces this policy governs"}"#,
    printcolumn = r#"{"name":"Targets","type":"integer","jsonPath":".status.targets","description":"Targets (CRs and annotated pods) governed"}"#,
    printcolumn = r#"{"name":"Annotated","type":"integer","jsonPath":".status.annotatedPods","description":"Running pods whose annotations ask for profiling","priority":1}"#,
    printcolumn = r#"{"name":"Sampled","type":"integer","jsonPath":".status.sampledPods","description":"Annotated pods profiled after sampling","priority":1}"#,
    printcolumn = r#"{"name":"eBPF","type":"integer","jsonPath":".status.ebpfRunningNodes","description":"Nodes where the eBPF profiler this policy asks for runs","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.defaults) || !has(self.defaults.interval) || !has(self.limits) || !has(self.limits.minInterval) || duration(self.defaults.interval) >= duration(self.limits.minInterval)").message("defaults.interval must not be below limits.minInterval"))]
pub struct ProfilingPolicySpec {
    /// Namespaces this policy governs (label selector over namespaces; empty selects all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = crate::limits::label_selector)]
    pub namespace_selector: Option<LabelSelector>,
    /// The highest-priority matching policy governs a namespace; ties go to the name that sorts
    /// first.
    #[serde(default)]
    pub priority: i32,
    /// Which pod annotation conventions opt pods in.
    #[serde(default)]
    pub annotations: AnnotationSettings,
    /// Values for fields a ProfilingTarget (or annotation) leaves unset.
    #[serde(default)]
    pub defaults: PolicyDefaults,
    /// Caps that apply to targets and annotations alike.
    #[serde(default)]
    pub limits: PolicyLimits,
    /// Where profiles go. Names must be unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]), length(max = crate::limits::MAX_SINKS))]
    pub sinks: Vec<SinkSpec>,
    /// Labels added to every profile after relabelling (e.g. `cluster: prod-eu`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = crate::limits::map(crate::limits::MAX_LABELS, crate::limits::strings(crate::limits::MAX_LABEL_VALUE_LENGTH)))]
    pub external_labels: BTreeMap<String, String>,
    /// Relabelling applied to every target after the target's own relabelings. For eBPF
    /// profiles they run first, before a ProfilingTarget's `ebpf.relabelings`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::limits::MAX_RELABELINGS))]
    pub relabelings: Vec<RelabelConfig>,
    /// The per-node eBPF profiler, which profiles every process with no application change.
    #[serde(default)]
    pub ebpf: EbpfSettings,
    /// Copy each pod's labels onto its profiles (names sanitised: `app.kubernetes.io/name`
    /// becomes `app_kubernetes_io_name`), as the Pyroscope chart's Alloy pipeline does with a
    /// `labelmap` of `__meta_kubernetes_pod_label_(.+)`. Off by default because of
    /// cardinality: every distinct value makes new series (`pod-template-hash` alone makes
    /// one per rollout), and Pyroscope refuses a series of more than 30 labels (the Pyroscope
    /// sink drops and counts it as `too_many_labels`). Labels kubeprof sets itself
    /// (`namespace`, `pod`, `container`, `node`, `service_name`, ...) are never overwritten;
    /// relabelings run after the copy, so they can drop what is not wanted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pod_labels: bool,
    /// Profile only some pods of each workload (annotated pods, and the pods of
    /// ProfilingTargets that set no `sampling` of their own). Unset: every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
}

/// Which annotation conventions are honoured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnnotationSettings {
    /// Honour annotations at all (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `profiles.grafana.com/<type>.scrape|port|port_name|path|scheme` (default true).
    #[serde(default = "yes")]
    pub grafana: bool,
    /// The legacy `pyroscope.io/scrape`, `pyroscope.io/port`, ... keys (default true).
    #[serde(default = "yes")]
    pub pyroscope: bool,
}

fn yes() -> bool {
    true
}

impl Default for AnnotationSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            grafana: true,
            pyroscope: true,
        }
    }
}

/// Defaults for targets and annotated pods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDefaults {
    /// Time between scrapes (default 15s).
    #[serde(default = "PolicyDefaults::default_interval")]
    pub interval: Duration,
    /// Deadline of a non-CPU scrape (default 10s).
    #[serde(default = "PolicyDefaults::default_timeout")]
    pub scrape_timeout: Duration,
    /// CPU profile length in seconds. Default: the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub cpu_seconds: Option<u32>,
    /// Profile types pulled when a target does not say (default: all five, as Alloy does).
    #[serde(default = "PolicyDefaults::default_types")]
    #[schemars(length(max = crate::limits::MAX_PROFILE_TYPES))]
    pub profile_types: Vec<ProfileKind>,
}

impl PolicyDefaults {
    /// 15s, as Alloy's `pyroscope.scrape`.
    pub fn default_interval() -> Duration {
        Duration::from_secs(15)
    }
    /// 10s: under the interval, so a slow non-CPU scrape ends before the next one is due.
    pub fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
    /// cpu, memory, goroutine, mutex, block.
    pub fn default_types() -> Vec<ProfileKind> {
        ProfileKind::ALL.to_vec()
    }
}

impl Default for PolicyDefaults {
    fn default() -> Self {
        Self {
            interval: Self::default_interval(),
            scrape_timeout: Self::default_timeout(),
            cpu_seconds: None,
            profile_types: Self::default_types(),
        }
    }
}

/// Caps applied after defaults and target values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyLimits {
    /// Shortest interval allowed; shorter intervals are raised to it (and reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_interval: Option<Duration>,
    /// Profile type names allowed (`cpu`, `memory`, ..., or custom names). Empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::limits::MAX_PROFILE_TYPES), inner(length(max = crate::limits::MAX_DNS_LABEL_LENGTH)))]
    pub allowed_profile_types: Vec<String>,
    /// Largest profile accepted, in bytes as fetched (default in the scraper: 16 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024))]
    pub max_profile_size_bytes: Option<i64>,
    /// Most targets (pods x endpoints) scraped per namespace; the excess is reported, not scraped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_targets_per_namespace: Option<i32>,
}

/// A destination for profiles: a name plus exactly one backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.pyroscope) ? 1 : 0) + (has(self.parca) ? 1 : 0) + (has(self.otlp) ? 1 : 0) + (has(self.file) ? 1 : 0) == 1").message("a sink needs exactly one of pyroscope, parca, otlp or file"))]
pub struct SinkSpec {
    /// Name that targets refer to in `sinks`.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = crate::limits::MAX_DNS_LABEL_LENGTH))]
    pub name: String,
    /// Grafana Pyroscope push API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pyroscope: Option<PyroscopeSink>,
    /// Parca's ProfileStoreService (gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parca: Option<ParcaSink>,
    /// OTLP profiles over HTTP. Experimental, as the upstream signal is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpSink>,
    /// Files on the scraper's disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSink>,
    /// The sink's buffer between scrapes and sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSettings>,
}

/// Grafana Pyroscope (`/push.v1.PusherService/Push`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.basicAuth) && has(self.bearerTokenSecret))").message("basicAuth and bearerTokenSecret are mutually exclusive"))]
pub struct PyroscopeSink {
    /// Base URL, e.g. `http://pyroscope.monitoring:4040`.
    #[schemars(regex(pattern = r"^https?://"), length(max = crate::limits::MAX_URL_LENGTH))]
    pub url: String,
    /// Tenant, sent as `X-Scope-OrgID`.
    #[serde(default, rename = "tenantID", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::limits::MAX_HEADER_VALUE_LENGTH))]
    pub tenant_id: Option<String>,
    /// Basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<NamespacedBasicAuth>,
    /// Bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret: Option<NamespacedSecretKeyRef>,
    /// Extra HTTP headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = crate::limits::map(crate::limits::MAX_HEADERS, crate::limits::strings(crate::limits::MAX_HEADER_VALUE_LENGTH)))]
    pub headers: BTreeMap<String, String>,
    /// Send each profile to the tenant named by this label of its final labels (after
    /// relabelling and external labels), e.g. `namespace` for a tenant per namespace.
    /// Profiles of different tenants never share a request. Unset: every profile goes to
    /// `tenantID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$"), length(max = crate::limits::MAX_LABEL_NAME_LENGTH))]
    pub tenant_from: Option<String>,
    /// With `tenantFrom`, a profile without that label (or with an empty or unusable value):
    /// `Default` sends it to `tenantID` (no tenant header when unset), `Drop` drops it,
    /// counted under reason `tenant_missing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_tenant: Option<MissingTenant>,
}

/// What a Pyroscope sink with `tenantFrom` does with a profile that names no tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MissingTenant {
    /// Send it to the sink's `tenantID`.
    #[default]
    Default,
    /// Drop it, counted.
    Drop,
}

/// Parca (`parca.profilestore.v1alpha1.ProfileStoreService/WriteRaw`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParcaSink {
    /// gRPC address, `host:port`.
    #[schemars(length(min = 1, max = crate::limits::MAX_URL_LENGTH))]
    pub address: String,
    /// Plain-text gRPC (h2c) instead of TLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// Skip TLS verification of Parca's certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
    /// Bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret: Option<NamespacedSecretKeyRef>,
}

/// An OTLP collector accepting profiles (`/v1development/profiles`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OtlpSink {
    /// Base URL, e.g. `http://otel-collector:4318`.
    #[schemars(regex(pattern = r"^https?://"), length(max = crate::limits::MAX_URL_LENGTH))]
    pub endpoint: String,
    /// Extra HTTP headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = crate::limits::map(crate::limits::MAX_HEADERS, crate::limits::strings(crate::limits::MAX_HEADER_VALUE_LENGTH)))]
    pub headers: BTreeMap<String, String>,
}

/// Files: `<directory>/<service_name>/<type>/<unix ms>.pb.gz`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileSink {
    /// Directory on the scraper's file system.
    #[schemars(length(min = 1, max = crate::limits::MAX_PATH_LENGTH))]
    pub directory: String,
    /// Oldest files are deleted when the directory holds more than this (default 1 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub retention_bytes: Option<i64>,
}

/// What a sink does when its queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WhenFull {
    /// Drop the oldest queued profile to make room (default: fresh data matters most).
    #[default]
    DropOldest,
    /// Drop the profile that does not fit.
    DropNewest,
}

/// Bounds of a sink's queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueSettings {
    /// Most profiles held (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_profiles: Option<i64>,
    /// Most bytes held (default 256 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_bytes: Option<i64>,
    /// Policy when full.
    #[serde(default)]
    pub when_full: WhenFull,
}

/// The eBPF profiler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EbpfSettings {
    /// Run it (default false).
    #[serde(default)]
    pub enabled: bool,
    /// Nodes to run it on (label selector over nodes; empty: every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = crate::limits::label_selector)]
    pub node_selector: Option<LabelSelector>,
    /// Samples per second per CPU (default 97 Hz: prime, so it does not beat with timers).
    /// One profiler serves each node: when several policies select a node, it samples at the
    /// highest of their rates.
    #[serde(default = "EbpfSettings::default_rate")]
    #[schemars(range(min = 1, max = 1000))]
    pub sample_rate: i32,
    /// Which namespaces' pods to profile: the running pods of the namespaces this policy
    /// governs, on the nodes it selects, filtered by `include` and `exclude`. A
    /// ProfilingTarget with `ebpf.enabled` adds the pods it selects whatever this filter says.
    #[serde(default)]
    pub namespaces: EbpfNamespaces,
    /// Also profile the processes of the selected nodes that belong to no pod (the kubelet,
    /// the container runtime, system daemons), labelled with this policy's external labels
    /// and relabelings and sent to all its sinks; `service_name` defaults to the process'
    /// command name (default false). When several policies selecting a node ask, the one
    /// with the highest `priority` (then the name that sorts first) labels them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_processes: bool,
}

impl EbpfSettings {
    /// 97 Hz.
    pub fn default_rate() -> i32 {
        97
    }
}

impl Default for EbpfSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            node_selector: None,
            sample_rate: Self::default_rate(),
            namespaces: EbpfNamespaces::default(),
            host_processes: false,
        }
    }
}

/// Namespace filter of the eBPF profiler. Exclude wins over include.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EbpfNamespaces {
    /// Only these namespaces (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::limits::MAX_NAMESPACES), inner(length(max = crate::limits::MAX_DNS_LABEL_LENGTH)))]
    pub include: Vec<String>,
    /// Never these namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::limits::MAX_NAMESPACES), inner(length(max = crate::limits::MAX_DNS_LABEL_LENGTH)))]
    pub exclude: Vec<String>,
}

/// What the operator observed of a ProfilingPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfilingPolicyStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, and `Degraded` with a reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]), transform = crate::limits::conditions)]
    pub conditions: Vec<Condition>,
    /// Namespaces this policy governs (it is the highest-priority match there).
    #[serde(default)]
    pub matched_namespaces: i32,
    /// Targets (ProfilingTargets and annotated pods) in those namespaces.
    #[serde(default)]
    pub targets: i32,
    /// Running pods in those namespaces whose annotations ask for profiling.
    #[serde(default)]
    pub annotated_pods: i32,
    /// Of `annotatedPods`, those profiled after `sampling` (all of them without it).
    #[serde(default)]
    pub sampled_pods: i32,
    /// Nodes where this policy asks for the eBPF profiler: with `ebpf.enabled`, the nodes its
    /// `ebpf.nodeSelector` selects (every node without one).
    #[serde(default)]
    pub ebpf_nodes: i32,
    /// Of `ebpfNodes`, those whose scraper reports the eBPF profiler running. Nodes whose
    /// scraper reports that it cannot run are named, with the reason it gives, in the
    /// `Degraded` condition (reason `EbpfNotRunning`); a node whose scraper has not reported on
    /// eBPF yet counts as not running, without a condition.
    #[serde(default)]
    pub ebpf_running_nodes: i32,
}
