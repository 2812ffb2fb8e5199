//! The pull loop: jobs -> [`Scheduler`] (one timer per job, stable phases, a global
//! concurrency limit) -> [`Fetcher`] (HTTP pull with deadlines and size limits) -> decode,
//! validate, delta -> labels -> the outputs, through an [`OutputsHandle`].

mod budget;
mod fetch;
mod health;
mod process;
mod scheduler;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Instant, SystemTime},
};

use kubeprof_pprof::{DecodeLimits, DeltaTracker};
use tokio::sync::Semaphore;

pub use budget::{DEFAULT_BODY_BUDGET, DEFAULT_DECODE_BUDGET};
pub use fetch::{FetchError, Fetcher};
pub use health::JobHealth;
pub use scheduler::{Scheduler, phase};

use self::{
    budget::ByteBudget,
    health::HealthBook,
    process::{Rejected, Stop},
    scheduler::RunningJob,
};
use crate::{
    envelope::Envelope,
    metrics::{Metrics, ScrapeLabels, TypeLabels, TypeReasonLabels},
    outputs::OutputsHandle,
};

/// What every job task shares.
#[derive(Debug)]
pub struct Pipeline {
    fetcher: Fetcher,
    outputs: OutputsHandle,
    metrics: Metrics,
    limits: DecodeLimits,
    permits: Arc<Semaphore>,
    budget: ByteBudget,
    bodies: ByteBudget,
    health: HealthBook,
}

impl Pipeline {
    /// A pipeline sending to `outputs`, with at most `max_concurrent` scrapes in flight.
    pub fn new(
        fetcher: Fetcher,
        outputs: OutputsHandle,
        metrics: Metrics,
        limits: DecodeLimits,
        max_concurrent: usize,
    ) -> Self {
        Self {
            fetcher,
            outputs,
            metrics,
            limits,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            budget: ByteBudget::with_small_lane(DEFAULT_DECODE_BUDGET),
            bodies: ByteBudget::new(DEFAULT_BODY_BUDGET),
            health: HealthBook::default(),
        }
    }

    /// The pipeline with `bytes` for decompressed and decoded profiles at once, over all
    /// scrapes (default [`DEFAULT_DECODE_BUDGET`]), and `body_bytes` for bodies being fetched
    /// past their first 256 KiB (default [`DEFAULT_BODY_BUDGET`]).
    pub fn with_budgets(mut self, bytes: u64, body_bytes: u64) -> Self {
        self.budget = ByteBudget::with_small_lane(bytes);
        self.bodies = ByteBudget::new(body_bytes);
        self
    }

    /// Health of every job, by id.
    pub fn health(&self) -> HashMap<String, JobHealth> {
        self.health.snapshot()
    }

    /// The profiles sinks refused before sending, by job, of the jobs `keep` accepts (the
    /// others are forgotten).
    pub fn refused(
        &self,
        keep: impl Fn(&str) -> bool,
    ) -> std::collections::BTreeMap<String, kubeprof_crds::health::RefusedProfile> {
        self.metrics.refusals.by_job(keep)
    }

    /// One scrape of `running`: fetch, process, send.
    async fn scrape_once(&self, running: &RunningJob, tracker: &mut DeltaTracker) {
        let job = &running.job;
        let type_label = running.type_label();
        let count = |outcome: &str| {
            self.metrics
                .scrapes
                .get_or_create(&ScrapeLabels {
                    r#type: type_label.clone(),
                    outcome: outcome.to_owned(),
                })
                .inc();
        };
        // A job waits for a slot at most one interval; past that the tick is missed.
        let permit =
            match tokio::time::timeout(job.interval.std(), self.permits.clone().acquire_owned())
                .await
            {
                Ok(Ok(permit)) => permit,
                _ => {
                    self.metrics.missed_scrapes.inc();
                    return;
                }
            };
        let start = SystemTime::now();
        let t0 = Instant::now();
        let limit = job.max_profile_bytes.unwrap_or(16 << 20);
        let fetched = self
            .fetcher
            .fetch_within(job, limit, Some(&self.bodies))
            .await;
        drop(permit);
        self.metrics
            .scrape_duration
            .get_or_create(&TypeLabels {
                r#type: type_label.clone(),
            })
            .observe(t0.elapsed().as_secs_f64());
        // The body's share of its budget is held until the scrape ends.
        let (body, _body_held) = match fetched {
            Ok(fetched) => fetched,
            Err(e) => {
                count(e.reason().as_str());
                self.health
                    .record(job, (start, t0.elapsed()), Err((e.reason(), e.to_string())));
                return;
            }
        };
        self.metrics.scrape_bytes.inc_by(body.len() as u64);
        // Decoding waits for its share of the budget as long as a slot would (one interval).
        let mut want = process::first_reservation(&body);
        let most = process::most_decompressed(&self.budget, &self.limits);
        let processed = if want > most {
            Err(process::too_large_to_decode(most, Some(want)))
        } else {
            loop {
                let reserved =
                    tokio::time::timeout(job.interval.std(), self.budget.reserve(want)).await;
                let Ok(reserved) = reserved else {
                    self.metrics.missed_scrapes.inc();
                    return;
                };
                let Some(mut reservation) = reserved else {
                    break Err(Rejected {
                        outcome: "decode_error",
                        reason: kubeprof_crds::health::ScrapeFailure::TooLarge,
                        message: format!(
                            "decompressing the profile takes {} MiB, more than the whole decode budget",
                            want >> 20
                        ),
                    });
                };
                match process::process(
                    body.clone(),
                    job.profile.delta,
                    tracker,
                    &self.limits,
                    &self.metrics,
                    (&self.budget, &mut reservation),
                ) {
                    Ok(ready) => break Ok(ready),
                    Err(Stop::Rejected(r)) => break Err(r),
                    // Strictly more than `reservation` held, and at most the whole budget: this
                    // loop ends.
                    Err(Stop::NeedsRoom(n)) => want = n,
                }
            }
        };
        let ready = match processed {
            Ok(ready) => ready,
            Err(rejected) => {
                count(rejected.outcome);
                self.metrics
                    .scrape_rejections
                    .get_or_create(&TypeReasonLabels {
                        r#type: type_label.clone(),
                        reason: rejected.reason.as_str().to_owned(),
                    })
                    .inc();
                self.health.record(
                    job,
                    (start, t0.elapsed()),
                    Err((rejected.reason, rejected.message)),
                );
                return;
            }
        };
        self.health
            .record(job, (start, t0.elapsed()), Ok(ready.is_some()));
        let Some(ready) = ready else {
            count("baseline");
            return;
        };
        count("success");
        if let Some(seconds) = job.profile.seconds
            && ready.decoded.duration_nanos < i64::from(seconds) * 500_000_000
        {
            // Sent anyway (it is a valid profile), but the target did not sample as asked.
            self.metrics
                .short_profiles
                .get_or_create(&TypeLabels {
                    r#type: type_label.clone(),
                })
                .inc();
            tracing::warn!(
                job = %job.origin.name,
                asked_seconds = seconds,
                covered_ms = ready.decoded.duration_nanos / 1_000_000,
                "the target answered with a profile much shorter than asked"
            );
        }
        let Some(labels) = running.labels.clone() else {
            return;
        };
        let envelope = Envelope {
            labels,
            profile: ready.profile,
            decoded: Some(ready.decoded),
            start,
            end: SystemTime::now(),
            job_id: running.job_id.clone(),
        };
        self.outputs.send(envelope, &job.sinks);
    }
}
