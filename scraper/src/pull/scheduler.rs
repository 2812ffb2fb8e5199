//! The scheduler: one task per job, with a stable phase, no overlapping scrapes of one job,
//! and in-place updates when jobs change.
//!
//! Each job's first scrape waits `hash(job id) mod interval` (as Prometheus does), so restarts
//! do not synchronize the scrapes of all targets. A CPU job (a profile sampled over `seconds`)
//! starts its next scrape as the previous one returns when that took the whole interval, so CPU
//! time is covered without gaps and Go never sees two CPU profile requests at once.
//!
//! A job task that panics (a bug, or input nobody foresaw) is counted in
//! `kubeprof_job_panics_total`, logged, and restarted with its latest job and a fresh delta
//! baseline after a pause, so one bad target never stops its job for good.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use kubeprof_crds::{
    job::ScrapeJob,
    relabel::{Labels, compile_all},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Pipeline;
use kubeprof_pprof::{DeltaLimits, DeltaTracker};

/// A job as its task runs it: the job plus what is derived from it once per change.
#[derive(Debug)]
pub(super) struct RunningJob {
    /// The job.
    pub job: ScrapeJob,
    /// Final labels; `None` when a relabel rule drops the target.
    pub labels: Option<Labels>,
    /// The job's id, shared by its envelopes.
    pub job_id: Arc<str>,
}

impl RunningJob {
    fn new(job: ScrapeJob) -> Self {
        let labels = match compile_all(&job.relabelings) {
            Ok(rules) => kubeprof_crds::labels::finalize(
                job.labels.clone(),
                &job.profile.name,
                &rules,
                &job.external_labels,
            ),
            Err(e) => {
                tracing::error!(job = %job.origin.name, error = %e, "invalid relabel rules; job not scraped");
                None
            }
        };
        Self {
            job_id: job.id.clone().into(),
            labels,
            job,
        }
    }

    /// The scrape metrics' `type`: a built-in profile type, or `custom`.
    pub fn type_label(&self) -> String {
        if self.job.profile.kind.is_some() {
            self.job.profile.name.clone()
        } else {
            "custom".into()
        }
    }
}

struct JobTask {
    updates: watch::Sender<Arc<RunningJob>>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the jobs it is given; [`Scheduler::apply`] diffs by job id.
pub struct Scheduler {
    pipeline: Arc<Pipeline>,
    tasks: HashMap<String, JobTask>,
    shutdown: CancellationToken,
    delta_limits: DeltaLimits,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("jobs", &self.tasks.len())
            .finish()
    }
}

/// The stable phase of a job: where in its interval its scrapes happen.
pub fn phase(id: &str, interval: Duration) -> Duration {
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(xxhash_rust::xxh3::xxh3_64(id.as_bytes()) % ms)
}

impl Scheduler {
    /// A scheduler with no jobs.
    pub fn new(pipeline: Arc<Pipeline>, shutdown: CancellationToken) -> Self {
        Self {
            pipeline,
            tasks: HashMap::new(),
            shutdown,
            delta_limits: DeltaLimits::default(),
        }
    }

    /// Jobs running.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no job runs.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Makes the running jobs equal `jobs`: new ids start, removed ids stop, changed jobs are
    /// updated in place (their timers keep their phase), unchanged jobs are not touched.
    pub fn apply(&mut self, jobs: Vec<ScrapeJob>) {
        let mut wanted: HashMap<String, ScrapeJob> =
            jobs.into_iter().map(|j| (j.id.clone(), j)).collect();
        let (mut started, mut updated, mut stopped) = (0, 0, 0);
        self.tasks.retain(|id, task| match wanted.remove(id) {
            Some(job) => {
                if task.updates.borrow().job != job {
                    let _ = task.updates.send(Arc::new(RunningJob::new(job)));
                    updated += 1;
                }
                true
            }
            None => {
                task.task.abort();
                self.pipeline.health.forget(id);
                stopped += 1;
                false
            }
        });
        for (id, job) in wanted {
            let (tx, rx) = watch::channel(Arc::new(RunningJob::new(job)));
            let task = tokio::spawn(supervise(
                self.pipeline.clone(),
                rx,
                self.shutdown.clone(),
                self.delta_limits,
            ));
            self.tasks.insert(id, JobTask { updates: tx, task });
            started += 1;
        }
        self.pipeline.metrics.jobs.set(self.tasks.len() as i64);
        if started + updated + stopped > 0 {
            tracing::info!(
                started,
                updated,
                stopped,
                jobs = self.tasks.len(),
                "scrape jobs updated"
            );
        }
    }

    /// Stops every job (in-flight scrapes are cancelled).
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        for (_, task) in self.tasks.drain() {
            let _ = task.task.await;
        }
    }
}

/// The shortest interval a job runs at, whatever it says.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Pause before a panicked job runs again, so a job that panics at once does not spin.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

async fn supervise(
    pipeline: Arc<Pipeline>,
    updates: watch::Receiver<Arc<RunningJob>>,
    shutdown: CancellationToken,
    delta_limits: DeltaLimits,
) {
    // Shared with each run so a panicked run's delta state still leaves the gauge.
    let tracked_bytes = Arc::new(AtomicI64::new(0));
    let metrics = pipeline.metrics.clone();
    restart_on_panic(
        || {
            run_job(
                pipeline.clone(),
                updates.clone(),
                shutdown.clone(),
                delta_limits,
                tracked_bytes.clone(),
            )
        },
        || updates.borrow().job.origin.name.clone(),
        &shutdown,
        &metrics.job_panics,
        RESTART_PAUSE,
    )
    .await;
    pipeline
        .metrics
        .delta_state_bytes
        .dec_by(tracked_bytes.load(Ordering::Relaxed));
}

/// Runs `make()` until it returns; a panic is counted, logged and followed by a new run.
async fn restart_on_panic<F: std::future::Future<Output = ()>>(
    mut make: impl FnMut() -> F,
    job_name: impl Fn() -> String,
    shutdown: &CancellationToken,
    panics: &prometheus_client::metrics::counter::Counter,
    pause: Duration,
) {
    use futures::FutureExt as _;
    loop {
        // The job's state is dropped with the panicked future; nothing half-updated is reused.
        match std::panic::AssertUnwindSafe(make()).catch_unwind().await {
            Ok(()) => return,
            Err(panic) => {
                panics.inc();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(
                    job = %job_name(),
                    panic = %message,
                    "scrape job panicked; restarting it"
                );
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

async fn run_job(
    pipeline: Arc<Pipeline>,
    mut updates: watch::Receiver<Arc<RunningJob>>,
    shutdown: CancellationToken,
    delta_limits: DeltaLimits,
    tracked_bytes: Arc<AtomicI64>,
) {
    let mut tracker = DeltaTracker::new(delta_limits);
    // A restarted job starts with an empty tracker.
    pipeline
        .metrics
        .delta_state_bytes
        .dec_by(tracked_bytes.swap(0, Ordering::Relaxed));
    let first = updates.borrow().clone();
    let mut next = tokio::time::Instant::now() + phase(&first.job.id, first.job.interval.std());
    pipeline.health.schedule(&first.job.id, next);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
                // A new interval applies from the next tick; the phase stays.
                continue;
            }
        }
        let running = updates.borrow_and_update().clone();
        // Configuration refuses shorter intervals; the floor only keeps a bug from spinning.
        let interval = running.job.interval.std().max(MIN_INTERVAL);
        let started = Instant::now();
        if running.labels.is_some() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = pipeline.scrape_once(&running, &mut tracker) => {}
            }
            let bytes = tracker.state_bytes() as i64;
            pipeline
                .metrics
                .delta_state_bytes
                .inc_by(bytes - tracked_bytes.swap(bytes, Ordering::Relaxed));
        }
        let elapsed = started.elapsed();
        let sampled = running.job.profile.seconds.is_some();
        next += interval;
        let now = tokio::time::Instant::now();
        if next < now {
            // The scrape outlasted the interval. For a profile sampled over the interval that is
            // expected (it lasts `seconds` plus latency): start again at once. Otherwise whole
            // intervals were missed.
            let late = now - next;
            if !sampled || elapsed > running.job.request_deadline() {
                let missed = 1 + late.as_millis() as u64 / interval.as_millis().max(1) as u64;
                pipeline.metrics.missed_scrapes.inc_by(missed);
            }
            next = if sampled {
                now
            } else {
                let skipped =
                    u32::try_from(1 + late.as_nanos() / interval.as_nanos()).unwrap_or(u32::MAX);
                interval
                    .checked_mul(skipped)
                    .map_or(now + interval, |d| next + d)
            };
        }
        pipeline.health.schedule(&running.job.id, next);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[tokio::test]
    async fn a_job_that_panics_is_counted_and_runs_again() {
        let runs = AtomicU32::new(0);
        let panics = prometheus_client::metrics::counter::Counter::default();
        let shutdown = CancellationToken::new();
        restart_on_panic(
            || {
                let run = runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    if run < 2 {
                        panic!("overflow when adding duration to instant");
                    }
                }
            },
            || "job".to_owned(),
            &shutdown,
            &panics,
            Duration::from_millis(1),
        )
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(panics.get(), 2);
    }
}
