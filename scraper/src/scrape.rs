//! The scrape loop: one task per job, with a stable phase, a global concurrency limit, no
//! overlapping scrapes of one job, and in-place updates when jobs change.
//!
//! Each job's first scrape waits `hash(job id) mod interval` (as Prometheus does), so restarts
//! do not synchronize the scrapes of all targets. A CPU job (a profile sampled over `seconds`)
//! starts its next scrape as the previous one returns when that took the whole interval, so CPU
//! time is covered without gaps and Go never sees two CPU profile requests at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime},
};

use kubeprof_crds::{
    health::ScrapeFailure,
    job::ScrapeJob,
    labels as pipeline,
    relabel::{Labels, compile_all},
};
use kubeprof_pprof::{self as pprof, DecodeLimits, DeltaLimits, DeltaOutcome, DeltaTracker};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    fetch::Fetcher,
    metrics::{Metrics, OutcomeLabels, ScrapeLabels, TypeLabels},
    sinks::{Envelope, Fanout},
};

/// What the loop knows of a job's recent scrapes (read by status reporting).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobHealth {
    /// When the last scrape succeeded.
    pub last_success: Option<SystemTime>,
    /// The last error, cleared by a success.
    pub last_error: Option<String>,
    /// The fixed reason of the last error (the metric's `outcome`).
    pub last_reason: Option<ScrapeFailure>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
}

/// Shared by every job task.
#[derive(Debug)]
pub struct Pipeline {
    fetcher: Fetcher,
    fanout: RwLock<Fanout>,
    metrics: Metrics,
    limits: DecodeLimits,
    permits: Arc<Semaphore>,
    health: Mutex<HashMap<String, JobHealth>>,
}

impl Pipeline {
    /// A pipeline sending to `fanout`, with at most `max_concurrent` scrapes in flight.
    pub fn new(
        fetcher: Fetcher,
        fanout: Fanout,
        metrics: Metrics,
        limits: DecodeLimits,
        max_concurrent: usize,
    ) -> Self {
        Self {
            fetcher,
            fanout: RwLock::new(fanout),
            metrics,
            limits,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            health: Mutex::default(),
        }
    }

    /// Replaces the sinks (the old fanout is returned for shutdown).
    pub fn replace_fanout(&self, fanout: Fanout) -> Fanout {
        std::mem::replace(
            &mut *self.fanout.write().unwrap_or_else(|e| e.into_inner()),
            fanout,
        )
    }

    /// The current sinks.
    pub fn fanout(&self) -> Fanout {
        self.fanout
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Health of every job, by id.
    pub fn health(&self) -> HashMap<String, JobHealth> {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record(&self, job: &ScrapeJob, result: Result<(), (ScrapeFailure, String)>) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let h = health.entry(job.id.clone()).or_default();
        match result {
            Ok(()) => {
                if h.consecutive_failures > 0 {
                    tracing::info!(job = %job.origin.name, address = %job.address, profile = %job.profile.name, "scrapes recovered");
                }
                h.last_success = Some(SystemTime::now());
                h.last_error = None;
                h.last_reason = None;
                h.consecutive_failures = 0;
            }
            Err((reason, message)) => {
                // Logged when a job starts failing, not at every interval.
                if h.consecutive_failures == 0 {
                    tracing::warn!(job = %job.origin.name, address = %job.address, profile = %job.profile.name, reason = reason.as_str(), error = %message, "scrape failing");
                } else {
                    tracing::debug!(job = %job.origin.name, address = %job.address, reason = reason.as_str(), error = %message, "scrape failed");
                }
                h.last_error = Some(message);
                h.last_reason = Some(reason);
                h.consecutive_failures = h.consecutive_failures.saturating_add(1);
            }
        }
    }

    fn forget(&self, id: &str) {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// A job as its task runs it: the job plus what is derived from it once per change.
#[derive(Debug)]
struct RunningJob {
    job: ScrapeJob,
    /// Final labels; `None` when a relabel rule drops the target.
    labels: Option<Labels>,
    job_id: Arc<str>,
}

impl RunningJob {
    fn new(job: ScrapeJob) -> Self {
        let labels = match compile_all(&job.relabelings) {
            Ok(rules) => pipeline::finalize(
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

    fn type_label(&self) -> String {
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
                self.pipeline.forget(id);
                stopped += 1;
                false
            }
        });
        for (id, job) in wanted {
            let (tx, rx) = watch::channel(Arc::new(RunningJob::new(job)));
            let task = tokio::spawn(run_job(
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

async fn run_job(
    pipeline: Arc<Pipeline>,
    mut updates: watch::Receiver<Arc<RunningJob>>,
    shutdown: CancellationToken,
    delta_limits: DeltaLimits,
) {
    let mut tracker = DeltaTracker::new(delta_limits);
    let mut tracked_bytes = 0i64;
    let first = updates.borrow().clone();
    let mut next = tokio::time::Instant::now() + phase(&first.job.id, first.job.interval.std());
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
        let interval = running.job.interval.std();
        let started = Instant::now();
        if running.labels.is_some() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = scrape_once(&pipeline, &running, &mut tracker) => {}
            }
            let bytes = tracker.state_bytes() as i64;
            pipeline
                .metrics
                .delta_state_bytes
                .inc_by(bytes - tracked_bytes);
            tracked_bytes = bytes;
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
                next + interval * (1 + (late.as_nanos() / interval.as_nanos().max(1)) as u32)
            };
        }
    }
    pipeline.metrics.delta_state_bytes.dec_by(tracked_bytes);
}

async fn scrape_once(pipeline: &Pipeline, running: &RunningJob, tracker: &mut DeltaTracker) {
    let job = &running.job;
    let type_label = running.type_label();
    let count = |outcome: &str| {
        pipeline
            .metrics
            .scrapes
            .get_or_create(&ScrapeLabels {
                r#type: type_label.clone(),
                outcome: outcome.to_owned(),
            })
            .inc();
    };
    // A job waits for a slot at most one interval; past that the tick is missed.
    let permit =
        match tokio::time::timeout(job.interval.std(), pipeline.permits.clone().acquire_owned())
            .await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                pipeline.metrics.missed_scrapes.inc();
                return;
            }
        };
    let start = SystemTime::now();
    let t0 = Instant::now();
    let limit = job.max_profile_bytes.unwrap_or(16 << 20);
    let fetched = pipeline.fetcher.fetch(job, limit).await;
    drop(permit);
    pipeline
        .metrics
        .scrape_duration
        .get_or_create(&TypeLabels {
            r#type: type_label.clone(),
        })
        .observe(t0.elapsed().as_secs_f64());
    let body = match fetched {
        Ok(body) => body,
        Err(e) => {
            count(e.reason().as_str());
            pipeline.record(job, Err((e.reason(), e.to_string())));
            return;
        }
    };
    pipeline.metrics.scrape_bytes.inc_by(body.len() as u64);
    // The decompressed bytes are kept: a delta re-uses all but their samples.
    let decoded = pprof::decompress(&body, &pipeline.limits).and_then(|raw| {
        let profile = pprof::decode_profile(&raw).map_err(pprof::DecodeError::from)?;
        Ok((raw, profile))
    });
    let (raw, profile) = match decoded {
        Ok(d) => d,
        Err(e) => {
            count("decode_error");
            pipeline.record(job, Err((decode_failure(&e), format!("{e}"))));
            return;
        }
    };
    if let Err(e) = pprof::validate(&profile) {
        count("invalid_profile");
        pipeline.record(
            job,
            Err((invalid_failure(&e), format!("invalid profile: {e}"))),
        );
        return;
    }
    let bytes = if job.profile.delta {
        match tracker.apply(profile) {
            DeltaOutcome::Delta(p) => Some(pprof::encode_delta(&raw, &p).into()),
            DeltaOutcome::Baseline { send, reason } => {
                pipeline
                    .metrics
                    .delta_resets
                    .get_or_create(&OutcomeLabels {
                        outcome: reason.to_owned(),
                    })
                    .inc();
                send.map(|p| pprof::encode_delta(&raw, &p).into())
            }
        }
    } else if pprof::is_gzip(&body) {
        // Unchanged: forward the bytes as the target sent them.
        Some(body)
    } else {
        Some(pprof::gzip(&body).into())
    };
    pipeline.record(job, Ok(()));
    let Some(profile) = bytes else {
        count("baseline");
        return;
    };
    count("success");
    let Some(labels) = running.labels.clone() else {
        return;
    };
    let envelope = Envelope {
        labels,
        profile,
        start,
        end: SystemTime::now(),
        job_id: running.job_id.clone(),
    };
    pipeline.fanout().send(envelope, &job.sinks);
}

/// The reported reason of a profile that could not be decoded.
fn decode_failure(e: &pprof::DecodeError) -> ScrapeFailure {
    match e {
        pprof::DecodeError::Empty => ScrapeFailure::Empty,
        pprof::DecodeError::TruncatedGzip => ScrapeFailure::TruncatedGzip,
        pprof::DecodeError::CorruptGzip(_) => ScrapeFailure::CorruptGzip,
        pprof::DecodeError::TooLarge { .. } => ScrapeFailure::TooLarge,
        pprof::DecodeError::NotPprof(_) => ScrapeFailure::NotPprof,
    }
}

/// The reported reason of a profile that failed validation.
fn invalid_failure(e: &pprof::ValidateError) -> ScrapeFailure {
    match e {
        pprof::ValidateError::BadStringTable => ScrapeFailure::BadStringTable,
        pprof::ValidateError::NoSampleTypes => ScrapeFailure::NoSampleTypes,
        pprof::ValidateError::DanglingString { .. } => ScrapeFailure::DanglingString,
        pprof::ValidateError::ValueCount { .. } => ScrapeFailure::ValueCountMismatch,
        pprof::ValidateError::DanglingLocation { .. } => ScrapeFailure::DanglingLocation,
        pprof::ValidateError::DanglingMapping { .. } => ScrapeFailure::DanglingMapping,
        pprof::ValidateError::DanglingFunction { .. } => ScrapeFailure::DanglingFunction,
        pprof::ValidateError::BadId { .. } => ScrapeFailure::BadId,
    }
}
