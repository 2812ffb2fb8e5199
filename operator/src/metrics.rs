//! The operator's own metrics. Label values are enums written as fixed short strings by an
//! explicit match: never object names, never an error's text.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// What failed (the `kind` of `kubeprof_operator_errors_total`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The compile step panicked.
    Compile,
    /// A job shard could not be written.
    Publish,
    /// A shard or a stale health report could not be deleted.
    Delete,
    /// A ProfilingTarget's status could not be written.
    TargetStatus,
    /// A ProfilingPolicy's status could not be written.
    PolicyStatus,
    /// An Event could not be published.
    Event,
    /// The scraper's Roles (or their bindings, or a health report to be) could not be written.
    Grant,
    /// The operator could not make itself the owner of a health report.
    Owner,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Self::Compile => "compile",
            Self::Publish => "publish",
            Self::Delete => "delete",
            Self::TargetStatus => "target_status",
            Self::PolicyStatus => "policy_status",
            Self::Event => "event",
            Self::Grant => "grant",
            Self::Owner => "owner",
        }
    }
}

/// A watched resource (the `kind` of `kubeprof_operator_watch_restarts_total`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Watched {
    /// ProfilingPolicies.
    Policies,
    /// ProfilingTargets.
    Targets,
    /// Pods.
    Pods,
    /// Namespaces.
    Namespaces,
    /// Nodes.
    Nodes,
    /// The published job shards.
    Shards,
    /// The scrapers' health reports.
    Health,
    /// The Roles granting the scraper its named objects.
    Roles,
    /// Their RoleBindings.
    RoleBindings,
}

impl Watched {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Policies => "profilingpolicies",
            Self::Targets => "profilingtargets",
            Self::Pods => "pods",
            Self::Namespaces => "namespaces",
            Self::Nodes => "nodes",
            Self::Shards => "shards",
            Self::Health => "health",
            Self::Roles => "roles",
            Self::RoleBindings => "rolebindings",
        }
    }
}

/// What a retry re-does (the `kind` of `kubeprof_operator_retries_total`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Retried {
    /// Publishing job shards (with the compile and status pass that follow).
    Publish,
    /// Writing statuses (and deleting stale health reports).
    Status,
}

impl Retried {
    fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Status => "status",
        }
    }
}

/// A `kind` label: the string of one of the enums above.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Every metric of the operator.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    /// Reconciliations (one compile and the writes it implies).
    pub reconciles: Counter,
    /// Failed writes by kind.
    errors: Family<KindLabels, Counter>,
    /// Passes scheduled again after a failure, by what failed.
    retries: Family<KindLabels, Counter>,
    /// Duration of a reconciliation, seconds.
    pub reconcile_duration: Histogram,
    /// Duration of the pure compile step, seconds.
    pub compile_duration: Histogram,
    /// Jobs per published shard.
    pub jobs_per_shard: Histogram,
    /// Jobs in all shards.
    pub jobs: Gauge,
    /// Running pods that opt in by annotations in namespaces no policy governs (no jobs).
    pub ungoverned_pods: Gauge,
    /// Shards published.
    pub shards: Gauge,
    /// Shard objects written (created or changed).
    pub shard_writes: Counter,
    /// Bytes of shard data (`data` and `binaryData`) in the shard objects written.
    pub shard_write_bytes: Counter,
    /// Shard objects deleted.
    pub shard_deletes: Counter,
    /// Status subresources written.
    pub status_writes: Counter,
    /// Watch streams restarted after an error, by resource.
    watch_restarts: Family<KindLabels, Counter>,
    /// 1 while this replica is the leader.
    pub leader: Gauge,
    /// Bytes jemalloc holds, by `kind`: `allocated` (live objects), `resident` (its pages in
    /// memory: what RSS counts of the heap). Read after each compile.
    heap_bytes: Family<KindLabels, Gauge>,
}

impl Metrics {
    /// Registers every metric under `kubeprof_operator_`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Counter::default(),
            errors: Family::default(),
            retries: Family::default(),
            reconcile_duration: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            compile_duration: Histogram::new([0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            jobs_per_shard: Histogram::new([1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]),
            jobs: Gauge::default(),
            ungoverned_pods: Gauge::default(),
            shards: Gauge::default(),
            shard_writes: Counter::default(),
            shard_write_bytes: Counter::default(),
            shard_deletes: Counter::default(),
            status_writes: Counter::default(),
            watch_restarts: Family::default(),
            leader: Gauge::default(),
            heap_bytes: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("kubeprof_operator");
        r.register("reconciles", "Reconciliations", m.reconciles.clone());
        r.register(
            "errors",
            "Failed writes and watch errors by kind",
            m.errors.clone(),
        );
        r.register(
            "retries",
            "Passes scheduled again (with backoff) after a failed write, by what failed",
            m.retries.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of a reconciliation",
            m.reconcile_duration.clone(),
        );
        r.register(
            "compile_duration_seconds",
            "Duration of the pure compile step",
            m.compile_duration.clone(),
        );
        r.register(
            "jobs_per_shard",
            "Jobs per published shard",
            m.jobs_per_shard.clone(),
        );
        r.register("jobs", "Jobs in all shards", m.jobs.clone());
        r.register(
            "ungoverned_pods",
            "Running pods whose annotations ask for profiling in a namespace no ProfilingPolicy governs (they get no jobs)",
            m.ungoverned_pods.clone(),
        );
        r.register("shards", "Shards published", m.shards.clone());
        r.register(
            "shard_writes",
            "Shard objects created or changed",
            m.shard_writes.clone(),
        );
        r.register(
            "shard_write_bytes",
            "Bytes of shard data (data and binaryData) in the shard objects written",
            m.shard_write_bytes.clone(),
        );
        r.register(
            "shard_deletes",
            "Shard objects deleted",
            m.shard_deletes.clone(),
        );
        r.register(
            "status_writes",
            "Status subresources written",
            m.status_writes.clone(),
        );
        r.register(
            "watch_restarts",
            "Watch streams restarted after an error, by resource",
            m.watch_restarts.clone(),
        );
        r.register(
            "leader",
            "1 while this replica is the leader",
            m.leader.clone(),
        );
        r.register(
            "heap_bytes",
            "Bytes of the jemalloc heap by kind: allocated (live objects) or resident (pages in memory), after the last compile",
            m.heap_bytes.clone(),
        );
        m
    }

    /// Reads jemalloc's statistics into `heap_bytes` (nothing when they cannot be read).
    pub(crate) fn observe_heap(&self) {
        use tikv_jemalloc_ctl::{epoch, stats};
        if epoch::advance().is_err() {
            return;
        }
        for (kind, read) in [
            ("allocated", stats::allocated::read()),
            ("resident", stats::resident::read()),
        ] {
            if let Ok(bytes) = read {
                self.heap_bytes
                    .get_or_create(&KindLabels { kind })
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
    }

    /// Metrics registered nowhere (tests).
    #[cfg(test)]
    pub(crate) fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    /// Counts one error of `kind`.
    pub(crate) fn error(&self, kind: Failure) {
        self.errors
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Counts one retry of `kind`.
    pub(crate) fn retry(&self, kind: Retried) {
        self.retries
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Counts one restart of the watch of `kind`.
    pub(crate) fn watch_restart(&self, kind: Watched) {
        self.watch_restarts
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Errors of `kind` counted so far (tests).
    #[cfg(test)]
    pub(crate) fn errors_of(&self, kind: Failure) -> u64 {
        self.errors
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .get()
    }

    /// Retries of `kind` counted so far (tests).
    #[cfg(test)]
    pub(crate) fn retries_of(&self, kind: Retried) -> u64 {
        self.retries
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_the_documented_strings() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.error(Failure::TargetStatus);
        m.retry(Retried::Publish);
        m.watch_restart(Watched::Policies);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        for line in [
            "kubeprof_operator_errors_total{kind=\"target_status\"} 1",
            "kubeprof_operator_retries_total{kind=\"publish\"} 1",
            "kubeprof_operator_watch_restarts_total{kind=\"profilingpolicies\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn the_heap_is_reported_as_allocated_and_resident_bytes() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let held = vec![1u8; 1 << 20];
        m.observe_heap();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        for kind in ["allocated", "resident"] {
            let prefix = format!("kubeprof_operator_heap_bytes{{kind=\"{kind}\"}} ");
            let bytes: i64 = text
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            // The megabyte held here at least (the tests run on the operator's allocator).
            assert!(bytes >= 1 << 20, "{kind}: {bytes} in\n{text}");
        }
        drop(held);
    }
}
