//! A running sink: its queue and the task that drains it a batch at a time (the backend says
//! how many profiles one request carries), retrying each batch until it is delivered, refused
//! for good, or the sink shuts down.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use kubeprof_crds::health::RefusedProfile;
use tokio::task::JoinHandle;

use super::{
    Backend,
    queue::{Queue, QueueConfig},
    retry::{RetryConfig, with_retries},
};
use crate::{
    envelope::Envelope,
    metrics::{Metrics, SinkReasonLabels},
};

/// One sink: its queue and its worker.
#[derive(Debug)]
pub struct Sink {
    queue: Arc<Queue>,
    wants_decoded: bool,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Sink {
    /// Starts the worker of `backend` (on the current tokio runtime).
    pub fn start(
        name: String,
        backend: impl Backend,
        config: QueueConfig,
        retry: RetryConfig,
        metrics: &Metrics,
    ) -> Self {
        let queue = Arc::new(Queue::new(name, config, metrics.clone()));
        let wants_decoded = backend.wants_decoded();
        let task = tokio::spawn(drain(queue.clone(), backend, retry, metrics.clone()));
        Self {
            queue,
            wants_decoded,
            task: Mutex::new(Some(task)),
        }
    }

    /// The name profiles are routed by.
    pub fn name(&self) -> &str {
        self.queue.sink()
    }

    /// Whether the backend reads [`Envelope::decoded`].
    pub fn wants_decoded(&self) -> bool {
        self.wants_decoded
    }

    /// Queues `envelope`; never waits for the backend.
    pub fn push(&self, envelope: Envelope) {
        self.queue.push(envelope);
    }

    /// Profiles waiting.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Stops accepting profiles; the worker sends what is queued, then ends.
    pub fn close(&self) {
        self.queue.close();
    }

    /// Waits for the worker to end.
    pub async fn join(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Counts what is still queued as dropped at shutdown.
    pub fn count_left(&self) {
        let left = self.queue.take_batch(usize::MAX).len();
        if left > 0 {
            self.queue.count_dropped("shutdown", left as u64);
        }
    }
}

async fn drain(queue: Arc<Queue>, backend: impl Backend, retry: RetryConfig, metrics: Metrics) {
    let labels = queue.labels();
    loop {
        let (mut batch, refused) =
            queue.take_batch_by(backend.max_batch(), |e| backend.batch_key(e));
        let took_any = !batch.is_empty() || !refused.is_empty();
        // Sending these would only earn a 4xx: refused here, counted, never retried.
        for reason in refused {
            queue.count_dropped(reason, 1);
        }
        batch.retain(|e| match backend.refuse(e) {
            Some(reason) => {
                tracing::debug!(sink = queue.sink(), %reason, job = %e.job_id, "profile over the store's limits; dropped");
                queue.count_dropped(reason.as_str(), 1);
                metrics.refusals.refused(
                    &e.job_id,
                    RefusedProfile::new(queue.sink(), reason, &e.labels),
                );
                false
            }
            None => true,
        });
        if batch.is_empty() {
            if took_any {
                continue;
            }
            if queue.is_closed() {
                return;
            }
            queue.pushed().await;
            continue;
        }
        let (sink, batch_ref, backend_ref, metrics_ref) =
            (queue.sink(), &batch[..], &backend, &metrics);
        let send = || async move {
            let result = backend_ref.send(batch_ref).await;
            if let Err(e) = &result {
                metrics_ref
                    .sink_failures
                    .get_or_create(&SinkReasonLabels {
                        sink: sink.to_owned(),
                        reason: e.reason().to_owned(),
                    })
                    .inc();
            }
            result
        };
        let waker = queue.clone();
        // A wait between tries ends at once when the sink shuts down.
        let sleep = move |wait: Duration| {
            let queue = waker.clone();
            async move {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = queue.closed() => {}
                }
            }
        };
        let on_retry = |e: &super::SendError, wait: Duration| {
            tracing::debug!(sink, error = %e, ?wait, "send failed; retrying");
            metrics.sink_retries.get_or_create(&labels).inc();
        };
        match with_retries(&retry, send, || queue.is_closed(), sleep, on_retry).await {
            Ok(()) => {
                metrics.refusals.sent(sink, batch.iter().map(|e| &e.job_id));
                metrics
                    .sink_sent
                    .get_or_create(&labels)
                    .inc_by(batch.len() as u64);
                let bytes: usize = batch.iter().map(|e| e.profile.len()).sum();
                metrics
                    .sink_sent_bytes
                    .get_or_create(&labels)
                    .inc_by(bytes as u64);
            }
            Err(e) if !e.retryable() => {
                tracing::warn!(sink, error = %e, profiles = batch.len(), "sink refused profiles; dropped");
                queue.count_dropped("rejected", batch.len() as u64);
            }
            Err(_) => queue.count_dropped("shutdown", batch.len() as u64),
        }
    }
}
