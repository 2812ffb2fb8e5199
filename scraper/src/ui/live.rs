//! The scrape loop seen through [`TargetsSource`]: what the binary's assembly hands the pages.

use std::sync::Arc;

use tokio::sync::watch;

use super::{SinkQueue, TargetHealth, TargetsSnapshot, TargetsSource};
use crate::{
    metrics::{Metrics, SinkLabels},
    pull::Pipeline,
    sources::JobSet,
};

/// The running pipeline, the job set in force, and the sinks' queue gauges.
#[derive(Debug)]
pub struct LiveTargets {
    pipeline: Arc<Pipeline>,
    jobs: watch::Receiver<Arc<JobSet>>,
    metrics: Metrics,
    mode: String,
}

impl LiveTargets {
    /// A view of `pipeline` running the sets `jobs` publishes; `mode` says how the scraper
    /// runs (shown on top of `/targets`).
    pub fn new(
        pipeline: Arc<Pipeline>,
        jobs: watch::Receiver<Arc<JobSet>>,
        metrics: Metrics,
        mode: String,
    ) -> Self {
        Self {
            pipeline,
            jobs,
            metrics,
            mode,
        }
    }
}

impl TargetsSource for LiveTargets {
    fn snapshot(&self) -> TargetsSnapshot {
        let jobs = self.jobs.borrow().clone();
        let health = self
            .pipeline
            .health()
            .into_iter()
            .map(|(id, h)| {
                (
                    id,
                    TargetHealth {
                        last_scrape: h.last_scrape,
                        last_duration: h.last_duration,
                        last_success: h.last_success,
                        last_error: h.last_error,
                        last_reason: h.last_reason,
                        consecutive_failures: h.consecutive_failures,
                        baseline: h.baseline,
                        next_scrape: h.next_scrape,
                    },
                )
            })
            .collect();
        // The queue gauges the sinks keep; a sink that never queued anything reads 0.
        let queues = jobs
            .sinks
            .iter()
            .map(|s| {
                let l = SinkLabels {
                    sink: s.name.clone(),
                };
                (
                    s.name.clone(),
                    SinkQueue {
                        profiles: self.metrics.sink_queue_profiles.get_or_create(&l).get(),
                        bytes: self.metrics.sink_queue_bytes.get_or_create(&l).get(),
                    },
                )
            })
            .collect();
        TargetsSnapshot {
            mode: self.mode.clone(),
            jobs,
            health,
            queues,
        }
    }
}
