//! The eBPF source: one [`kubeprof_ebpf::Profiler`] on a thread of its own, profiling what the
//! job set's `ebpf` plan selects (the node's shard in cluster mode, the file's `ebpf:` section
//! standalone), one pprof CPU profile per container (or process group) per period, labelled by
//! the one label pipeline (`kubeprof_crds::labels`) and sent through the same outputs as pulled
//! profiles.
//!
//! A plan change applies without a restart: new selection at once, a new sample rate by
//! reloading the program (the partial period is sent first). No plan: no BPF program loaded.
//! When the program cannot load, the source says why in the log, in
//! `kubeprof_ebpf_errors_total{reason}` and in [`EbpfStatus`] (the health report), and tries
//! again when the plan changes or every [`RETRY_LOAD`].

mod attribution;
#[cfg(test)]
mod tests;

use std::{
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use kubeprof_crds::health::EbpfHealth;
use kubeprof_ebpf::{Collection, Losses, Profiler, ProfilerConfig, SamplerError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use attribution::{EbpfPlan, EbpfTargets, Roots, StandaloneTargets};

use crate::{
    envelope::Envelope,
    metrics::{Metrics, ReasonLabels},
    outputs::OutputsHandle,
    sources::JobSet,
};
use attribution::{Attribution, CompiledTargets};

/// How often `/proc` is scanned within a period for processes that started.
const RESCAN: Duration = Duration::from_secs(2);
/// The longest the thread waits before looking at the plan and the stop signal again.
const TICK: Duration = Duration::from_millis(500);
/// How long after a failed load the program is tried again (a plan change tries at once).
pub const RETRY_LOAD: Duration = Duration::from_secs(300);
/// `job_id` of eBPF envelopes.
const JOB_ID: &str = "ebpf";

/// The eBPF source's state as the health report shows it; `None` while no plan asks for eBPF.
#[derive(Clone, Debug, Default)]
pub struct EbpfStatus(Arc<Mutex<Option<EbpfHealth>>>);

impl EbpfStatus {
    /// The current state.
    pub fn get(&self) -> Option<EbpfHealth> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, h: Option<EbpfHealth>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = h;
    }
}

/// The running eBPF source.
#[derive(Debug)]
pub struct EbpfSource {
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
    status: EbpfStatus,
}

impl EbpfSource {
    /// Follows the `ebpf` plan of `jobs` on a thread of its own.
    pub fn start(
        jobs: watch::Receiver<Arc<JobSet>>,
        outputs: OutputsHandle,
        metrics: Metrics,
        roots: Roots,
    ) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let status = EbpfStatus::default();
        let (worker_status, worker_stop) = (status.clone(), stop.clone());
        // The profiler is not `Send` (the symboliser's caches): it lives and dies on the thread.
        let thread = std::thread::Builder::new()
            .name("ebpf".into())
            .spawn(move || {
                Worker {
                    jobs,
                    outputs,
                    metrics,
                    roots,
                    status: worker_status,
                    stop: worker_stop,
                    running: None,
                    plan: None,
                    retry_at: None,
                }
                .run();
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
            status,
        })
    }

    /// What the health report shows.
    pub fn status(&self) -> EbpfStatus {
        self.status.clone()
    }

    /// Sends the partial period and unloads the program.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// A loaded profiler and what it profiles.
struct Running {
    profiler: Profiler,
    sample_rate: u32,
    period: Duration,
    targets: CompiledTargets,
    /// Every process found selected in this period.
    attribution: Attribution,
    /// What the kernel filters by.
    applied: kubeprof_ebpf::Selection,
    period_end: Instant,
    next_scan: Instant,
    losses: Losses,
}

struct Worker {
    jobs: watch::Receiver<Arc<JobSet>>,
    outputs: OutputsHandle,
    metrics: Metrics,
    roots: Roots,
    status: EbpfStatus,
    stop: CancellationToken,
    running: Option<Running>,
    plan: Option<EbpfPlan>,
    retry_at: Option<Instant>,
}

impl Worker {
    fn run(mut self) {
        self.plan = self.jobs.borrow_and_update().ebpf.clone();
        loop {
            if self.stop.is_cancelled() {
                self.unload();
                return;
            }
            if self.jobs.has_changed().unwrap_or(false) {
                let plan = self.jobs.borrow_and_update().ebpf.clone();
                if plan != self.plan {
                    self.change(plan);
                }
            }
            let Some(plan) = self.plan.clone() else {
                std::thread::sleep(TICK);
                continue;
            };
            if self.running.is_none() {
                if self.retry_at.is_some_and(|t| Instant::now() < t) {
                    std::thread::sleep(TICK);
                    continue;
                }
                self.load(&plan);
                continue;
            }
            self.step();
        }
    }

    /// Applies a new plan: a selection at once; a new rate by reloading.
    fn change(&mut self, plan: Option<EbpfPlan>) {
        self.retry_at = None;
        match (&plan, self.running.as_mut()) {
            (None, Some(_)) => self.unload(),
            (Some(p), Some(r)) if p.sample_rate != r.sample_rate => {
                tracing::info!(
                    from = r.sample_rate,
                    to = p.sample_rate,
                    "eBPF sample rate changed; reloading the program"
                );
                self.unload();
            }
            (Some(p), Some(r)) => {
                r.targets = compile_logged(p, &self.metrics);
                r.period = p.period;
                r.next_scan = Instant::now();
                tracing::info!("eBPF selection changed");
            }
            (_, None) => {}
        }
        if plan.is_none() {
            self.status.set(None);
        }
        self.plan = plan;
    }

    fn load(&mut self, plan: &EbpfPlan) {
        let config = ProfilerConfig {
            sample_rate_hz: plan.sample_rate,
            proc_root: self.roots.proc.clone(),
            ..ProfilerConfig::default()
        };
        match Profiler::start(config) {
            Ok(profiler) => {
                tracing::info!(sample_rate = plan.sample_rate, period = ?plan.period, "eBPF profiler loaded");
                self.metrics.ebpf_running.set(1);
                self.status.set(Some(EbpfHealth {
                    running: true,
                    reason: None,
                }));
                let now = Instant::now();
                self.running = Some(Running {
                    losses: profiler.losses(),
                    profiler,
                    sample_rate: plan.sample_rate,
                    period: plan.period,
                    targets: compile_logged(plan, &self.metrics),
                    attribution: Attribution::default(),
                    applied: kubeprof_ebpf::Selection::default(),
                    period_end: now + plan.period,
                    next_scan: now,
                });
            }
            Err(e) => {
                let reason = failure_of(&e);
                tracing::error!(reason = reason.as_str(), error = %e, "the eBPF profiler cannot run on this node; retrying in {}s or when the plan changes", RETRY_LOAD.as_secs());
                count_error(&self.metrics, reason.as_str());
                // The fixed reason first: the operator shows this on the policies as it is.
                self.status.set(Some(EbpfHealth {
                    running: false,
                    reason: Some(format!("{}: {e}", reason.as_str())),
                }));
                self.retry_at = Some(Instant::now() + RETRY_LOAD);
            }
        }
    }

    /// One wait of at most [`TICK`]: scan when due, collect at the end of the period.
    fn step(&mut self) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        let now = Instant::now();
        if now >= r.next_scan {
            let mut found = attribution::scan(&r.targets, &self.roots);
            self.metrics
                .ebpf_processes
                .set(i64::try_from(found.processes()).unwrap_or(i64::MAX));
            if found.selection != r.applied {
                match r.profiler.set_selection(&found.selection) {
                    Ok(()) => r.applied = found.selection.clone(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot update the eBPF selection");
                        count_error(&self.metrics, "selection");
                    }
                }
            }
            found.remember(&r.attribution);
            r.attribution = found;
            r.next_scan = now + RESCAN;
        }
        if now >= r.period_end {
            self.collect();
            if let Some(r) = self.running.as_mut() {
                r.period_end = Instant::now() + r.period;
            }
            return;
        }
        let wait = TICK
            .min(r.period_end.saturating_duration_since(now))
            .min(r.next_scan.saturating_duration_since(now));
        r.profiler.poll(wait);
    }

    /// Drains, labels and sends the period; forgets processes that are gone.
    fn collect(&mut self) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        match r.profiler.collect() {
            Ok(c) => {
                let sent = emit(&c, &r.attribution, &self.outputs, &self.metrics);
                count_losses(&self.metrics, &mut r.losses, c.stats.losses);
                tracing::debug!(
                    samples = c.stats.samples,
                    profiles = sent,
                    coverage = c.stats.coverage(),
                    "eBPF period collected"
                );
                // The next period knows only what a scan finds again (at once).
                r.attribution = Attribution::default();
                r.next_scan = Instant::now();
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot collect the eBPF samples");
                count_error(&self.metrics, "collect");
            }
        }
    }

    fn unload(&mut self) {
        if self.running.is_some() {
            self.collect();
            self.running = None;
            self.metrics.ebpf_running.set(0);
            self.metrics.ebpf_processes.set(0);
            tracing::info!("eBPF profiler unloaded");
        }
    }
}

fn count_error(metrics: &Metrics, reason: &str) {
    metrics
        .ebpf_errors
        .get_or_create(&ReasonLabels {
            reason: reason.into(),
        })
        .inc();
}

fn compile_logged(plan: &EbpfPlan, metrics: &Metrics) -> CompiledTargets {
    let (targets, problems) = attribution::compile(plan);
    for p in problems {
        tracing::warn!(what = %p.what, error = %p.message, "eBPF labelling left out: its relabel rules do not compile");
        count_error(metrics, "relabel");
    }
    targets
}

/// Sends one profile per group of `c`; the number sent.
pub(crate) fn emit(
    c: &Collection,
    attribution: &Attribution,
    outputs: &OutputsHandle,
    metrics: &Metrics,
) -> usize {
    metrics.ebpf_samples.inc_by(c.stats.samples);
    metrics.ebpf_frames.inc_by(c.stats.frames);
    metrics.ebpf_frames_named.inc_by(c.stats.frames_named);
    if c.stats.frames > 0 {
        metrics.ebpf_coverage.set(c.stats.coverage());
    }
    let end = c.start + c.duration;
    let groups = c.profiles(|p| attribution.labels_of(p));
    let n = groups.len();
    for g in groups {
        let (sinks, labels) = g.key;
        let bytes = kubeprof_pprof::encode_gzip(&g.profile);
        outputs.send(
            Envelope {
                labels,
                profile: Bytes::from(bytes),
                decoded: Some(Arc::new(g.profile)),
                start: c.start,
                end: end.max(c.start),
                job_id: Arc::from(JOB_ID),
            },
            &sinks,
        );
        metrics.ebpf_profiles.inc();
    }
    n
}

/// Adds what the kernel lost since `seen` to the counters.
fn count_losses(metrics: &Metrics, seen: &mut Losses, now: Losses) {
    for (reason, before, after) in [
        ("counts_full", seen.counts_full, now.counts_full),
        ("stack", seen.stacks, now.stacks),
        ("announcement", seen.announcements, now.announcements),
    ] {
        if after > before {
            metrics
                .ebpf_lost
                .get_or_create(&ReasonLabels {
                    reason: reason.into(),
                })
                .inc_by(after - before);
        }
    }
    *seen = now;
}

/// Why the program could not load: the metric's `reason`, and the start of the health report's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EbpfFailure {
    /// Not root, no CAP_BPF / CAP_PERFMON, or a seccomp profile that forbids `bpf`.
    PermissionDenied,
    /// The kernel is older than 5.8 (no BPF ring buffer).
    KernelTooOld,
    /// No CPU-clock perf event could be opened.
    PerfEvents,
    /// The kernel refused the BPF program or a map.
    Load,
    /// The plan asks for something impossible (a sample rate out of range).
    Config,
}

impl EbpfFailure {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::PermissionDenied => "permission_denied",
            Self::KernelTooOld => "kernel_too_old",
            Self::PerfEvents => "perf_events",
            Self::Load => "load",
            Self::Config => "config",
        }
    }
}

/// Why the program could not load.
fn failure_of(e: &SamplerError) -> EbpfFailure {
    if e.is_permission_denied() {
        return EbpfFailure::PermissionDenied;
    }
    if kernel_release().is_some_and(|v| v < (5, 8)) {
        return EbpfFailure::KernelTooOld;
    }
    match e {
        SamplerError::PerfEvent { .. } | SamplerError::OnlineCpus => EbpfFailure::PerfEvents,
        SamplerError::SampleRate(_) => EbpfFailure::Config,
        _ => EbpfFailure::Load,
    }
}

/// The running kernel's (major, minor).
fn kernel_release() -> Option<(u32, u32)> {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = r.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}
