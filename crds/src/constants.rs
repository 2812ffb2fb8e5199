//! Names shared by the operator, the scraper and the chart: annotation keys, labels, the field
//! manager. Defined once so that a typo cannot split one concept into two.

/// Field manager for every server-side apply kubeprof performs.
pub const FIELD_MANAGER: &str = "kubeprof.io/operator";

/// `app.kubernetes.io/managed-by` value on every object kubeprof creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "kubeprof";
/// Label on published job shards and health reports naming the node (absent: the jobs without
/// a node, read by the cluster-wide scraper).
pub const SHARD_NODE_LABEL: &str = "kubeprof.io/node";
/// Label telling the kind of object kubeprof publishes in its namespace.
pub const COMPONENT_LABEL: &str = "kubeprof.io/component";
/// [`COMPONENT_LABEL`] of job shards (written by the operator).
pub const COMPONENT_JOBS: &str = "job-shard";
/// [`COMPONENT_LABEL`] of scrape-health reports (written by each scraper).
pub const COMPONENT_HEALTH: &str = "scrape-health";
/// Name prefix of job-shard ConfigMaps: `kubeprof-jobs` (no node) or `kubeprof-jobs.<node>`.
pub const JOBS_OBJECT_PREFIX: &str = "kubeprof-jobs";
/// Name prefix of health ConfigMaps: `kubeprof-health` (no node) or `kubeprof-health.<node>`.
pub const HEALTH_OBJECT_PREFIX: &str = "kubeprof-health";
/// The Lease the operator replicas elect their leader with.
pub const LEADER_LEASE: &str = "kubeprof-operator";

/// Grafana Alloy / Pyroscope annotation prefix: `profiles.grafana.com/<type>.<field>`.
pub const GRAFANA_PREFIX: &str = "profiles.grafana.com/";
/// Fields understood after `profiles.grafana.com/<type>.`.
pub const GRAFANA_FIELDS: [&str; 5] = ["scrape", "port", "port_name", "path", "scheme"];

/// Annotations naming the service, highest precedence first (Grafana's Pyroscope docs and
/// Alloy's Kubernetes examples read them in this order; OpenTelemetry's resource annotation is
/// the one the k8s-monitoring chart reads). The first non-empty one becomes `service_name`,
/// above a ProfilingTarget's `serviceName` and the `<namespace>/<container>` default.
pub const SERVICE_NAME_ANNOTATIONS: [&str; 4] = [
    "profiles.grafana.com/service_name",
    "resource.opentelemetry.io/service.name",
    "pyroscope.io/service_name",
    pyroscope::APPLICATION_NAME,
];

/// Annotations copied to the labels Pyroscope's source-code (GitHub) integration reads:
/// (annotation, label).
pub const SOURCE_CODE_ANNOTATIONS: [(&str, &str); 3] = [
    (
        "profiles.grafana.com/service_repository",
        "service_repository",
    ),
    ("profiles.grafana.com/service_git_ref", "service_git_ref"),
    (
        "profiles.grafana.com/service_root_path",
        "service_root_path",
    ),
];

/// Legacy Pyroscope annotations (the `pyroscope.io/*` keys of the Pyroscope Helm chart).
pub mod pyroscope {
    /// `"true"` opts the pod in.
    pub const SCRAPE: &str = "pyroscope.io/scrape";
    /// Overrides `service_name`.
    pub const APPLICATION_NAME: &str = "pyroscope.io/application-name";
    /// Container port number to scrape.
    pub const PORT: &str = "pyroscope.io/port";
    /// `http` or `https`.
    pub const SCHEME: &str = "pyroscope.io/scheme";
    /// Per-type switches, `"true"`/`"false"`.
    pub const PROFILE_CPU_ENABLED: &str = "pyroscope.io/profile-cpu-enabled";
    /// Memory (allocs) profile switch.
    pub const PROFILE_MEM_ENABLED: &str = "pyroscope.io/profile-mem-enabled";
    /// Goroutine profile switch.
    pub const PROFILE_GOROUTINES_ENABLED: &str = "pyroscope.io/profile-goroutines-enabled";
    /// Mutex profile switch.
    pub const PROFILE_MUTEX_ENABLED: &str = "pyroscope.io/profile-mutex-enabled";
    /// Block profile switch.
    pub const PROFILE_BLOCK_ENABLED: &str = "pyroscope.io/profile-block-enabled";
}

/// Discovery and well-known label names (Prometheus conventions).
pub mod labels {
    /// `host:port` of the target.
    pub const ADDRESS: &str = "__address__";
    /// `http` or `https`.
    pub const SCHEME: &str = "__scheme__";
    /// The HTTP path of the profile endpoint.
    pub const PROFILE_PATH: &str = "__profile_path__";
    /// Profile type name (`process_cpu`, `memory`, ...), kept when sending.
    pub const NAME: &str = "__name__";
    /// Pyroscope's delta marker. `"false"` tells Pyroscope's v1 ingester not to compute deltas
    /// of a profile's cumulative values itself (it does, for memory alloc_* values, unless told
    /// so: grafana/pyroscope `pkg/phlaredb/head.go`, `Ingest`). Kept when sending, as
    /// Alloy's `pyroscope.write` keeps it (grafana/alloy `internal/component/pyroscope/write`).
    pub const DELTA: &str = "__delta__";
    /// `host:port` the profile was pulled from, as Prometheus and Alloy's `pyroscope.scrape`
    /// set it.
    pub const INSTANCE: &str = "instance";
    /// Service name shown by Pyroscope/Parca; defaults to `<namespace>/<container>`.
    pub const SERVICE_NAME: &str = "service_name";
    /// Scrape job name (target name).
    pub const JOB: &str = "job";
    /// Prefix of labels removed before sending.
    pub const RESERVED_PREFIX: &str = "__";
    /// Kubernetes discovery labels.
    pub const META_NAMESPACE: &str = "__meta_kubernetes_namespace";
    /// Pod name.
    pub const META_POD_NAME: &str = "__meta_kubernetes_pod_name";
    /// Pod UID.
    pub const META_POD_UID: &str = "__meta_kubernetes_pod_uid";
    /// Pod IP.
    pub const META_POD_IP: &str = "__meta_kubernetes_pod_ip";
    /// Container name.
    pub const META_CONTAINER_NAME: &str = "__meta_kubernetes_pod_container_name";
    /// Container port name.
    pub const META_CONTAINER_PORT_NAME: &str = "__meta_kubernetes_pod_container_port_name";
    /// Container port number.
    pub const META_CONTAINER_PORT_NUMBER: &str = "__meta_kubernetes_pod_container_port_number";
    /// Node name.
    pub const META_NODE_NAME: &str = "__meta_kubernetes_pod_node_name";
    /// Prefix of pod label discovery labels (sanitised label name appended).
    pub const META_POD_LABEL_PREFIX: &str = "__meta_kubernetes_pod_label_";
    /// Prefix of pod annotation discovery labels.
    pub const META_POD_ANNOTATION_PREFIX: &str = "__meta_kubernetes_pod_annotation_";
}
