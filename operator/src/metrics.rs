//! The operator's own metrics. Label values are fixed strings: never object names.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// `kind` of a failed write or watch (a fixed string from an explicit match).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// What failed: publish, delete, target_status, policy_status, event, or a watched resource.
    pub kind: String,
}

/// Every metric of the operator.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Reconciliations (one compile and the writes it implies).
    pub reconciles: Counter,
    /// Failed writes and watch errors by kind.
    pub errors: Family<KindLabels, Counter>,
    /// Duration of a reconciliation, seconds.
    pub reconcile_duration: Histogram,
    /// Duration of the pure compile step, seconds.
    pub compile_duration: Histogram,
    /// Jobs per published shard.
    pub jobs_per_shard: Histogram,
    /// Jobs in all shards.
    pub jobs: Gauge,
    /// Shards published.
    pub shards: Gauge,
    /// Shard objects written (created or changed).
    pub shard_writes: Counter,
    /// Shard objects deleted.
    pub shard_deletes: Counter,
    /// Status subresources written.
    pub status_writes: Counter,
    /// Watch streams restarted after an error, by resource.
    pub watch_restarts: Family<KindLabels, Counter>,
    /// 1 while this replica is the leader.
    pub leader: Gauge,
}

impl Metrics {
    /// Registers every metric under `kubeprof_operator_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Counter::default(),
            errors: Family::default(),
            reconcile_duration: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            compile_duration: Histogram::new([0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            jobs_per_shard: Histogram::new([1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]),
            jobs: Gauge::default(),
            shards: Gauge::default(),
            shard_writes: Counter::default(),
            shard_deletes: Counter::default(),
            status_writes: Counter::default(),
            watch_restarts: Family::default(),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("kubeprof_operator");
        r.register("reconciles", "Reconciliations", m.reconciles.clone());
        r.register(
            "errors",
            "Failed writes and watch errors by kind",
            m.errors.clone(),
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
        r.register("shards", "Shards published", m.shards.clone());
        r.register(
            "shard_writes",
            "Shard objects created or changed",
            m.shard_writes.clone(),
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
        m
    }

    /// Counts one error of `kind`.
    pub fn error(&self, kind: &'static str) {
        self.errors
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }
}
