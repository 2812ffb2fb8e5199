//! The loop: waits for a change, a resync, a due retry or a leadership change; while leading,
//! runs one [`Reconciler::pass`] per burst of changes. A pass that failed is run again after a
//! capped, jittered, exponential backoff (not at the next resync): its work stays pending until
//! a pass does it.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    Settings, Triggers,
    reconcile::{Reconciler, Work},
    stores::Stores,
};
use crate::metrics::{Metrics, Retried};

/// When the failed part of a pass is run again.
#[derive(Debug)]
pub(crate) struct Retry {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    at: Option<Instant>,
}

impl Retry {
    /// Delays start at `first`, double up to `cap`, and each gets up to as much again of
    /// random jitter (so replicas retrying the same outage spread out).
    pub(crate) fn new(first: Duration, cap: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(first)
            .with_max_delay(cap)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
            at: None,
        }
    }

    /// Schedules the next attempt; its delay.
    fn schedule(&mut self) -> Duration {
        let delay = self.delays.next().unwrap_or(Duration::from_secs(60));
        self.at = Some(Instant::now() + delay);
        delay
    }

    /// Nothing is pending: the next failure starts again from the first delay.
    fn reset(&mut self) {
        self.delays = self.builder.build();
        self.at = None;
    }
}

/// Runs until `shutdown` (or until the election stops).
pub(crate) async fn run(
    stores: &Stores,
    mut leading: watch::Receiver<bool>,
    triggers: &Triggers,
    mut reconciler: Reconciler,
    settings: &Settings,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) {
    let mut work = Work {
        inputs: true,
        status: true,
    };
    let mut retry = Retry::new(settings.retry_first, settings.retry_cap);
    let mut last_full = Instant::now();
    loop {
        let retry_at = retry.at;
        // A standby does not compile: a past boundary would wake it over and over.
        let rotation_at = reconciler.next_rotation().filter(|_| *leading.borrow());
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = triggers.inputs.notified() => work.inputs = true,
            () = triggers.health.notified() => work.status = true,
            changed = leading.changed() => {
                if changed.is_err() { break; }
                let now_leading = *leading.borrow_and_update();
                metrics.leader.set(i64::from(now_leading));
                if now_leading {
                    tracing::info!(identity = %settings.identity, "leading: reconciling");
                    reconciler.reset();
                    retry.reset();
                    work.inputs = true;
                } else {
                    tracing::info!(identity = %settings.identity, "standing by");
                }
            }
            () = tokio::time::sleep(settings.resync) => work.inputs = true,
            // The failed work is still pending in `work`.
            () = sleep_until(retry_at), if retry_at.is_some() => retry.at = None,
            // Sampling chooses other pods from the next epoch on.
            () = sleep_until_wall(rotation_at), if rotation_at.is_some() => work.inputs = true,
        }
        if !*leading.borrow() {
            continue;
        }
        // Coalesce a burst (a rollout, the initial list) into one pass.
        tokio::time::sleep(settings.debounce).await;
        if last_full.elapsed() >= settings.resync {
            work.inputs = true;
        }
        if work.inputs {
            last_full = Instant::now();
        }
        work = reconciler.pass(stores, work).await;
        if work.any() {
            if work.inputs {
                metrics.retry(Retried::Publish);
            }
            if work.status {
                metrics.retry(Retried::Status);
            }
            let delay = retry.schedule();
            tracing::info!(retry_in = ?delay, publish = work.inputs, status = work.status, "retrying the failed writes");
        } else {
            retry.reset();
        }
    }
}

/// Sleeps until the wall-clock time `at` (a rotation boundary), which may be past.
async fn sleep_until_wall(at: Option<std::time::SystemTime>) {
    match at {
        Some(at) => {
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(left).await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_capped_with_jitter_and_start_over_after_success() {
        let (first, cap) = (Duration::from_secs(1), Duration::from_secs(30));
        let mut retry = Retry::new(first, cap);
        let delays: Vec<Duration> = (0..10).map(|_| retry.schedule()).collect();
        for (i, d) in delays.iter().enumerate() {
            let base = (first * 2u32.pow(u32::try_from(i).unwrap_or(31))).min(cap);
            assert!(
                *d >= base && *d <= base * 2,
                "delay {i}: {d:?} outside [{base:?}, 2x]"
            );
        }
        assert!(delays.iter().all(|d| *d <= cap * 2), "capped");
        retry.reset();
        assert!(retry.at.is_none());
        assert!(retry.schedule() <= first * 2, "starts over");
    }
}
