//! The scraper's own metrics, registered once. Label values are fixed strings or configured
//! names (profile types, sink names): never pod names or URLs.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// `type` and `outcome` of a scrape.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScrapeLabels {
    /// Profile type: a built-in name, or `custom`.
    pub r#type: String,
    /// success, timeout, connect, http_error, body_too_large, decode_error, invalid_profile, ...
    pub outcome: String,
}

/// `type` and the fine `reason` of a rejected profile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeReasonLabels {
    /// Profile type: a built-in name, or `custom`.
    pub r#type: String,
    /// A `ScrapeFailure` of the health report: truncated_gzip, not_pprof, dangling_string, ...
    pub reason: String,
}

/// `type` alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// Profile type.
    pub r#type: String,
}

/// `sink` alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// Sink name.
    pub sink: String,
}

/// `sink` and `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkReasonLabels {
    /// Sink name.
    pub sink: String,
    /// A fixed reason.
    pub reason: String,
}

/// `reason` alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A fixed reason.
    pub reason: String,
}

/// `outcome` alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// success or failure.
    pub outcome: String,
}

/// Every metric of the scraper.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Scrapes by type and outcome.
    pub scrapes: Family<ScrapeLabels, Counter>,
    /// Scrape duration by type.
    pub scrape_duration: Family<TypeLabels, Histogram, fn() -> Histogram>,
    /// Profiles fetched but refused (decode or validation), by type and fine reason.
    pub scrape_rejections: Family<TypeReasonLabels, Counter>,
    /// Sampled profiles (CPU) that cover far less time than asked: the endpoint answered at
    /// once instead of sampling for `seconds`.
    pub short_profiles: Family<TypeLabels, Counter>,
    /// Bytes fetched from targets.
    pub scrape_bytes: Counter,
    /// Ticks that found the previous scrape of the job still running or no free slot in time.
    pub missed_scrapes: Counter,
    /// Jobs scheduled.
    pub jobs: Gauge,
    /// Job tasks that panicked (and were restarted).
    pub job_panics: Counter,
    /// Bytes held for delta computation.
    pub delta_state_bytes: Gauge,
    /// Delta baselines (first scrape, restart, ...), by reason in `outcome`.
    pub delta_resets: Family<OutcomeLabels, Counter>,
    /// Job-source reloads.
    pub reloads: Family<OutcomeLabels, Counter>,
    /// Profiles a sink delivered.
    pub sink_sent: Family<SinkLabels, Counter>,
    /// Bytes a sink delivered.
    pub sink_sent_bytes: Family<SinkLabels, Counter>,
    /// Failed send attempts by reason.
    pub sink_failures: Family<SinkReasonLabels, Counter>,
    /// Retried send attempts.
    pub sink_retries: Family<SinkLabels, Counter>,
    /// Profiles dropped by reason (queue_full, rejected, shutdown).
    pub sink_dropped: Family<SinkReasonLabels, Counter>,
    /// Profiles waiting in a sink's queue.
    pub sink_queue_profiles: Family<SinkLabels, Gauge>,
    /// Bytes waiting in a sink's queue.
    pub sink_queue_bytes: Family<SinkLabels, Gauge>,
    /// eBPF samples drained.
    pub ebpf_samples: Counter,
    /// eBPF profiles handed to the outputs.
    pub ebpf_profiles: Counter,
    /// Distinct stack frames of the drained eBPF samples.
    pub ebpf_frames: Counter,
    /// Those with a function name.
    pub ebpf_frames_named: Counter,
    /// Share of frames named in the last period with frames.
    pub ebpf_coverage: Gauge<f64, AtomicU64>,
    /// eBPF failures by fixed reason.
    pub ebpf_errors: Family<ReasonLabels, Counter>,
    /// Samples or stacks the kernel side could not record, by reason.
    pub ebpf_lost: Family<ReasonLabels, Counter>,
    /// 1 while the BPF program is loaded.
    pub ebpf_running: Gauge,
    /// Processes the eBPF selection found at the last scan.
    pub ebpf_processes: Gauge,
    /// Profiles sinks refused before sending, per job, for the health report (kept here
    /// because every sink worker already holds the metrics).
    pub refusals: crate::sinks::Refusals,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 15.0, 30.0, 60.0,
    ])
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            scrapes: Family::default(),
            scrape_duration: Family::new_with_constructor(duration_histogram),
            scrape_rejections: Family::default(),
            short_profiles: Family::default(),
            scrape_bytes: Counter::default(),
            missed_scrapes: Counter::default(),
            jobs: Gauge::default(),
            job_panics: Counter::default(),
            delta_state_bytes: Gauge::default(),
            delta_resets: Family::default(),
            reloads: Family::default(),
            sink_sent: Family::default(),
            sink_sent_bytes: Family::default(),
            sink_failures: Family::default(),
            sink_retries: Family::default(),
            sink_dropped: Family::default(),
            sink_queue_profiles: Family::default(),
            sink_queue_bytes: Family::default(),
            ebpf_samples: Counter::default(),
            ebpf_profiles: Counter::default(),
            ebpf_frames: Counter::default(),
            ebpf_frames_named: Counter::default(),
            ebpf_coverage: Gauge::default(),
            ebpf_errors: Family::default(),
            ebpf_lost: Family::default(),
            ebpf_running: Gauge::default(),
            ebpf_processes: Gauge::default(),
            refusals: crate::sinks::Refusals::default(),
        };
        let r = registry.sub_registry_with_prefix("kubeprof");
        r.register(
            "scrapes",
            "Scrapes by profile type and outcome",
            m.scrapes.clone(),
        );
        r.register(
            "scrape_duration_seconds",
            "Duration of scrapes",
            m.scrape_duration.clone(),
        );
        r.register(
            "scrape_rejections",
            "Profiles fetched but refused, by profile type and reason",
            m.scrape_rejections.clone(),
        );
        r.register(
            "short_profiles",
            "Sampled profiles covering less than half the seconds asked for",
            m.short_profiles.clone(),
        );
        r.register(
            "scrape_bytes",
            "Bytes fetched from targets",
            m.scrape_bytes.clone(),
        );
        r.register(
            "missed_scrapes",
            "Scrapes not started on time",
            m.missed_scrapes.clone(),
        );
        r.register("scrape_jobs", "Scrape jobs scheduled", m.jobs.clone());
        r.register(
            "job_panics",
            "Scrape job tasks that panicked and were restarted",
            m.job_panics.clone(),
        );
        r.register(
            "delta_state_bytes",
            "Bytes held for delta profiles",
            m.delta_state_bytes.clone(),
        );
        r.register(
            "delta_baselines",
            "Delta profiles that restarted from a new baseline",
            m.delta_resets.clone(),
        );
        r.register(
            "job_reloads",
            "Reloads of the job source",
            m.reloads.clone(),
        );
        r.register(
            "sink_sent_profiles",
            "Profiles delivered",
            m.sink_sent.clone(),
        );
        r.register(
            "sink_sent_bytes",
            "Bytes delivered",
            m.sink_sent_bytes.clone(),
        );
        r.register(
            "sink_request_failures",
            "Failed send attempts",
            m.sink_failures.clone(),
        );
        r.register(
            "sink_retries",
            "Retried send attempts",
            m.sink_retries.clone(),
        );
        r.register(
            "sink_dropped_profiles",
            "Profiles dropped",
            m.sink_dropped.clone(),
        );
        r.register(
            "sink_queue_profiles",
            "Profiles queued",
            m.sink_queue_profiles.clone(),
        );
        r.register(
            "sink_queue_bytes",
            "Bytes queued",
            m.sink_queue_bytes.clone(),
        );
        r.register(
            "ebpf_samples",
            "eBPF CPU samples drained",
            m.ebpf_samples.clone(),
        );
        r.register(
            "ebpf_profiles",
            "eBPF profiles handed to the sinks",
            m.ebpf_profiles.clone(),
        );
        r.register(
            "ebpf_frames",
            "Distinct stack frames of drained eBPF samples",
            m.ebpf_frames.clone(),
        );
        r.register(
            "ebpf_frames_named",
            "Distinct stack frames of drained eBPF samples with a function name",
            m.ebpf_frames_named.clone(),
        );
        r.register(
            "ebpf_symbolization_coverage_ratio",
            "Share of the stack frames of the last eBPF period with a function name",
            m.ebpf_coverage.clone(),
        );
        r.register(
            "ebpf_errors",
            "eBPF failures by reason (permission_denied, kernel_too_old, perf_events, load, config, collect, selection, relabel)",
            m.ebpf_errors.clone(),
        );
        r.register(
            "ebpf_lost",
            "Samples or stacks the eBPF program could not record, by reason",
            m.ebpf_lost.clone(),
        );
        r.register(
            "ebpf_running",
            "1 while the eBPF program is loaded",
            m.ebpf_running.clone(),
        );
        r.register(
            "ebpf_selected_processes",
            "Processes the eBPF selection found at its last scan",
            m.ebpf_processes.clone(),
        );
        m
    }

    /// Metrics registered nowhere (for tests and tools).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }
}
