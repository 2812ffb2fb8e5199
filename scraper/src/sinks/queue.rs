//! A sink's bounded queue: at most so many profiles and bytes, with an explicit policy when
//! full (drop the oldest or the newest profile), every drop counted by reason.

use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use kubeprof_crds::policy::{QueueSettings, WhenFull};
use tokio::sync::Notify;

use crate::{
    envelope::Envelope,
    metrics::{Metrics, SinkLabels, SinkReasonLabels},
};

/// Bounds of a sink's queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueConfig {
    /// Most profiles held.
    pub max_profiles: usize,
    /// Most bytes held.
    pub max_bytes: usize,
    /// What to drop when full.
    pub when_full: WhenFull,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_profiles: 10_000,
            max_bytes: 256 << 20,
            when_full: WhenFull::DropOldest,
        }
    }
}

impl QueueConfig {
    /// The defaults, overridden by what `spec` sets.
    pub fn from_spec(spec: Option<&QueueSettings>) -> Self {
        let mut config = Self::default();
        if let Some(q) = spec {
            if let Some(n) = q.max_profiles {
                config.max_profiles = n.max(1) as usize;
            }
            if let Some(n) = q.max_bytes {
                config.max_bytes = n.max(1) as usize;
            }
            config.when_full = q.when_full;
        }
        config
    }
}

#[derive(Debug, Default)]
struct Held {
    items: VecDeque<Envelope>,
    bytes: usize,
}

/// The queue between the outputs and one sink's worker.
#[derive(Debug)]
pub struct Queue {
    sink: String,
    config: QueueConfig,
    held: Mutex<Held>,
    notify: Notify,
    closed: AtomicBool,
    metrics: Metrics,
}

impl Queue {
    /// An empty queue for the sink `sink`.
    pub fn new(sink: String, config: QueueConfig, metrics: Metrics) -> Self {
        Self {
            sink,
            config,
            held: Mutex::default(),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
            metrics,
        }
    }

    /// The sink's name.
    pub fn sink(&self) -> &str {
        &self.sink
    }

    /// The metric labels of the sink.
    pub fn labels(&self) -> SinkLabels {
        SinkLabels {
            sink: self.sink.clone(),
        }
    }

    /// Counts `n` profiles of this sink as dropped for `reason`.
    pub fn count_dropped(&self, reason: &str, n: u64) {
        self.metrics
            .sink_dropped
            .get_or_create(&SinkReasonLabels {
                sink: self.sink.clone(),
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }

    fn gauges(&self, held: &Held) {
        let l = self.labels();
        self.metrics
            .sink_queue_profiles
            .get_or_create(&l)
            .set(held.items.len() as i64);
        self.metrics
            .sink_queue_bytes
            .get_or_create(&l)
            .set(held.bytes as i64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `envelope`, dropping by the queue's policy when full; never blocks on the sink.
    pub fn push(&self, envelope: Envelope) {
        let size = envelope.size();
        let mut held = self.lock();
        if self.is_closed() {
            drop(held);
            self.count_dropped("shutdown", 1);
            return;
        }
        let full = |h: &Held| {
            h.items.len() >= self.config.max_profiles || h.bytes + size > self.config.max_bytes
        };
        match self.config.when_full {
            WhenFull::DropNewest if full(&held) => {
                drop(held);
                self.count_dropped("queue_full", 1);
                return;
            }
            _ => {
                let mut dropped = 0;
                while full(&held) {
                    match held.items.pop_front() {
                        Some(old) => {
                            held.bytes -= old.size();
                            dropped += 1;
                        }
                        None => break,
                    }
                }
                if dropped > 0 {
                    self.count_dropped("queue_full", dropped);
                }
            }
        }
        held.bytes += size;
        held.items.push_back(envelope);
        self.gauges(&held);
        drop(held);
        self.notify.notify_one();
    }

    /// Takes up to `max` profiles, oldest first, whatever their batch key.
    pub fn take_batch(&self, max: usize) -> Vec<Envelope> {
        self.take_batch_by(max, |_| Ok(())).0
    }

    /// Takes up to `max` profiles of the oldest profile's batch key, oldest first, leaving the
    /// others queued in order; profiles `key` refuses are removed and their reasons returned
    /// (the worker counts them as dropped).
    pub fn take_batch_by<K: PartialEq>(
        &self,
        max: usize,
        key: impl Fn(&Envelope) -> Result<K, &'static str>,
    ) -> (Vec<Envelope>, Vec<&'static str>) {
        let mut held = self.lock();
        let mut batch = Vec::new();
        let mut refused = Vec::new();
        let mut first: Option<K> = None;
        let mut keep = VecDeque::new();
        while let Some(e) = held.items.pop_front() {
            if batch.len() >= max {
                keep.push_back(e);
                keep.extend(held.items.drain(..));
                break;
            }
            match key(&e) {
                Err(reason) => {
                    held.bytes -= e.size();
                    refused.push(reason);
                }
                Ok(k) if first.as_ref().is_none_or(|f| *f == k) => {
                    first = Some(k);
                    held.bytes -= e.size();
                    batch.push(e);
                }
                Ok(_) => keep.push_back(e),
            }
        }
        held.items = keep;
        self.gauges(&held);
        (batch, refused)
    }

    /// Profiles held.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Stops accepting profiles and wakes the worker.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Whether [`Queue::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Waits until something was pushed (or the queue closed) since the last wait.
    pub async fn pushed(&self) {
        self.notify.notified().await;
    }

    /// Waits until the queue is closed.
    pub async fn closed(&self) {
        while !self.is_closed() {
            self.notify.notified().await;
        }
    }
}
