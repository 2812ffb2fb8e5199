//! `ProfilingTarget`: which pods to profile, on which port, with which profile types. Modelled on
//! Prometheus Operator's `PodMonitor`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    BasicAuth, Duration, NamespaceSelector, Profiles, RelabelConfig, Sampling, Scheme,
    SecretKeyRef, TlsConfig,
};

/// Which pods to profile and how. Namespaced; selects pods in its own namespace unless
/// `namespaceSelector` says otherwise.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "kubeprof.io",
    version = "v1alpha1",
    doc = "Which pods to profile, on which port, with which profile types (kubeprof.io, like Prometheus Operator PodMonitor).",
    kind = "ProfilingTarget",
    plural = "profilingtargets",
    shortname = "pt",
    category = "kubeprof",
    namespaced,
    status = "ProfilingTargetStatus",
    printcolumn = r#"{"name":"Matched","type":"integer","jsonPath":".status.matchedPods","description":"Running pods the target selects"}"#,
    printcolumn = r#"{"name":"Sampled","type":"integer","jsonPath":".status.sampledPods","description":"Matched pods profiled after sampling"}"#,
    printcolumn = r#"{"name":"Active","type":"integer","jsonPath":".status.activeJobs","description":"Scrape jobs published for the target"}"#,
    printcolumn = r#"{"name":"Failing","type":"integer","jsonPath":".status.failingJobs","description":"Jobs whose last scrape failed"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProfilingTargetSpec {
    /// Label selector of the pods to profile (required; `{}` selects every pod).
    #[schemars(transform = crate::limits::label_selector)]
    pub selector: LabelSelector,
    /// Namespaces to select pods from. Default: the target's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
    /// The pprof endpoints of each selected pod.
    #[schemars(length(min = 1, max = crate::limits::MAX_ENDPOINTS))]
    pub endpoints: Vec<Endpoint>,
    /// The `service_name` label of every profile. Default: `<namespace>/<container>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::limits::MAX_LABEL_VALUE_LENGTH))]
    pub service_name: Option<String>,
    /// Extra static labels added to every profile, before relabelling.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = crate::limits::map(crate::limits::MAX_LABELS, crate::limits::strings(crate::limits::MAX_LABEL_VALUE_LENGTH)))]
    pub labels: BTreeMap<String, String>,
    /// Names of the sinks (defined by ProfilingPolicies) to send to. Default: every sink the
    /// governing policy defines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::limits::MAX_SINKS), inner(length(max = crate::limits::MAX_DNS_LABEL_LENGTH)))]
    pub sinks: Vec<String>,
    /// Stop scraping without deleting the target.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// Profile only some pods of each workload. Replaces the governing policy's `sampling`.
    /// Unset: the policy's; without one, every matched pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    /// Also profile the selected pods with the per-node eBPF profiler, on the nodes where the
    /// governing ProfilingPolicy runs it (its `ebpf.enabled` and `ebpf.nodeSelector`), even
    /// when that policy's `ebpf.namespaces` would leave their namespace out. Unset: the pods
    /// are profiled by eBPF only if the policy's `ebpf.namespaces` admits them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebpf: Option<TargetEbpf>,
}

/// A ProfilingTarget's eBPF opt-in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetEbpf {
    /// Profile the selected pods with eBPF (default false). A suspended target opts nothing
    /// in. The target's `labels` and `serviceName` apply to these profiles too; sampling does
    /// not (the profiler samples every selected pod of the node).
    #[serde(default)]
    pub enabled: bool,
    /// Relabelling of these pods' eBPF profiles, after the policy's `relabelings`. They see
    /// the discovery labels of the pod and container (no port) and `__meta_process_*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::limits::MAX_RELABELINGS))]
    pub relabelings: Vec<RelabelConfig>,
}

/// One pprof endpoint of the selected pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.port) != has(self.portNumber)").message("exactly one of port or portNumber must be set"),
    validation = Rule::new("!has(self.interval) || !has(self.scrapeTimeout) || duration(self.scrapeTimeout) < duration(self.interval)").message("scrapeTimeout must be less than interval"),
    validation = Rule::new("!(has(self.bearerTokenSecret) && has(self.basicAuth))").message("bearerTokenSecret and basicAuth are mutually exclusive"),
)]
pub struct Endpoint {
    /// Name of the container port serving pprof (exactly one of `port` and `portNumber`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = crate::limits::MAX_PORT_NAME_LENGTH))]
    pub port: Option<String>,
    /// Number of the container port serving pprof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port_number: Option<i32>,
    /// `http` (default) or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Scheme>,
    /// Time between scrapes. Default: the governing policy's (15s unless it sets one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Deadline of a scrape of the non-CPU types; must be less than the interval. A CPU
    /// profile request may last its `seconds` plus this timeout. Default: the policy's (10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_timeout: Option<Duration>,
    /// Extra query parameters sent with every profile request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = crate::limits::map(crate::limits::MAX_PARAMS, crate::limits::string_lists(crate::limits::MAX_PARAMS, crate::limits::MAX_PATH_LENGTH)))]
    pub params: BTreeMap<String, Vec<String>>,
    /// Bearer token sent to the endpoint, from a Secret in the target's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret: Option<SecretKeyRef>,
    /// Basic authentication, from a Secret in the target's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// TLS settings for `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsConfig>,
    /// Relabelling applied to the discovery labels of each pod; a dropped pod is not scraped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::limits::MAX_RELABELINGS))]
    pub relabelings: Vec<RelabelConfig>,
    /// The profile types to pull. Types not mentioned follow the policy defaults.
    #[serde(default)]
    pub profiles: Profiles,
}

/// What the operator and the scrapers observed of a ProfilingTarget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfilingTargetStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, and `Degraded` with a reason (InvalidSpec, NoPolicy, PortNotFound,
    /// SecretNotFound, ScrapeFailing, LimitExceeded, NoMatchingPods).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]), transform = crate::limits::conditions)]
    pub conditions: Vec<Condition>,
    /// Running pods the target selects.
    #[serde(default)]
    pub matched_pods: i32,
    /// Of `matchedPods`, those profiled after `sampling` (all of them without it).
    #[serde(default)]
    pub sampled_pods: i32,
    /// Scrape jobs published for the target (one per pod, endpoint and profile type).
    #[serde(default)]
    pub active_jobs: i32,
    /// Jobs whose last scrape failed.
    #[serde(default)]
    pub failing_jobs: i32,
    /// Time of the most recent successful scrape of any of the target's jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scrape_time: Option<Time>,
    /// The most recent scrape error, if any job is failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
