//! Sinks: where profiles go. Every backend has the same shape (as in Vector): a runtime config,
//! request building, and a classification of failures into retryable (timeouts, connection
//! errors, 429, 5xx) and permanent (other 4xx). Between the scrape loop and each backend sits a
//! bounded queue (profiles and bytes) with an explicit policy when full; a worker per sink drains
//! it in batches with capped, jittered exponential backoff.

pub mod file;
pub mod otlp;
pub mod parca;
pub mod pyroscope;

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use kubeprof_crds::{
    policy::{SinkSpec, WhenFull},
    relabel::Labels,
};
use tokio::sync::Notify;

use crate::{
    credentials::{CredentialError, SecretSource},
    metrics::{Metrics, SinkLabels, SinkReasonLabels},
};

/// One profile ready to send.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Final labels: `__name__` (the profile type), `service_name`, and the rest; no other
    /// `__*` labels.
    pub labels: Labels,
    /// gzip-compressed pprof.
    pub profile: Bytes,
    /// When the scrape started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// The job that produced it.
    pub job_id: Arc<str>,
}

impl Envelope {
    fn size(&self) -> usize {
        self.profile.len()
            + self
                .labels
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// A failed send.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// Worth another try.
    pub retryable: bool,
    /// A fixed metric label: timeout, connect, http_4xx, http_429, http_5xx, io, encode.
    pub reason: &'static str,
    /// What happened.
    pub message: String,
    /// The server's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
}

impl SendError {
    /// A failure that another try will not fix.
    pub fn permanent(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A failure worth retrying.
    pub fn retryable(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Classifies an HTTP answer: 429 and 5xx retry, other 4xx do not.
    pub fn from_status(status: u16, body: &str, retry_after: Option<Duration>) -> Self {
        let (retryable, reason) = match status {
            429 => (true, "http_429"),
            500..=599 => (true, "http_5xx"),
            _ => (false, "http_4xx"),
        };
        Self {
            retryable,
            reason,
            message: format!(
                "HTTP {status}: {}",
                body.chars().take(256).collect::<String>()
            ),
            retry_after,
        }
    }

    /// The error of an HTTP answer that is not a success, with its `Retry-After`.
    pub async fn from_response(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        Self::from_status(status, &text, retry_after)
    }

    /// Classifies a transport error from reqwest.
    pub fn from_reqwest(e: &reqwest::Error) -> Self {
        let reason = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect"
        } else {
            "request"
        };
        Self::retryable(reason, e.to_string())
    }
}

/// A backend.
#[derive(Debug)]
pub enum Backend {
    /// Files on disk.
    File(file::FileSink),
    /// Grafana Pyroscope.
    Pyroscope(pyroscope::PyroscopeSink),
    /// Parca.
    Parca(parca::ParcaSink),
    /// OTLP profiles (experimental).
    Otlp(otlp::OtlpSink),
}

impl Backend {
    /// Sends a batch (all or nothing).
    pub async fn send(&self, batch: &[Envelope]) -> Result<(), SendError> {
        match self {
            Self::File(s) => s.send(batch).await,
            Self::Pyroscope(s) => s.send(batch).await,
            Self::Parca(s) => s.send(batch).await,
            Self::Otlp(s) => s.send(batch).await,
        }
    }

    fn max_batch(&self) -> usize {
        match self {
            Self::File(_) => 64,
            Self::Pyroscope(s) => s.max_batch(),
            Self::Parca(_) => 16,
            // One profile per request: each request carries its own dictionary.
            Self::Otlp(_) => 1,
        }
    }
}

/// Why a sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SinkBuildError {
    /// No backend given.
    #[error("sink {0}: needs exactly one of pyroscope, parca, otlp or file")]
    NoBackend(String),
    /// A credential could not be read.
    #[error("sink {name}: {source}")]
    Credential {
        /// Sink name.
        name: String,
        /// Why.
        source: CredentialError,
    },
    /// Anything else.
    #[error("sink {name}: {message}")]
    Invalid {
        /// Sink name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

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

/// Retry timing.
#[derive(Clone, Copy, Debug)]
pub struct RetryConfig {
    /// First backoff.
    pub initial: Duration,
    /// Largest backoff.
    pub max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// Builds the backend a [`SinkSpec`] describes, resolving its credentials.
pub fn build_backend(
    spec: &SinkSpec,
    secrets: &dyn SecretSource,
) -> Result<Backend, SinkBuildError> {
    let name = spec.name.clone();
    let cred = |r: &kubeprof_crds::NamespacedSecretKeyRef| {
        secrets
            .read(r)
            .map_err(|source| SinkBuildError::Credential {
                name: name.clone(),
                source,
            })
    };
    if let Some(f) = &spec.file {
        return Ok(Backend::File(file::FileSink::new(file::FileConfig {
            directory: f.directory.clone().into(),
            retention_bytes: f.retention_bytes.map_or(1 << 30, |b| b.max(1) as u64),
        })));
    }
    if let Some(p) = &spec.pyroscope {
        let auth = match (&p.basic_auth, &p.bearer_token_secret) {
            (Some(b), _) => Some(pyroscope::HttpAuth::Basic {
                username: cred(&b.username)?,
                password: cred(&b.password)?,
            }),
            (None, Some(t)) => Some(pyroscope::HttpAuth::Bearer(cred(t)?)),
            (None, None) => None,
        };
        return pyroscope::PyroscopeSink::new(pyroscope::PyroscopeConfig {
            url: p.url.clone(),
            tenant_id: p.tenant_id.clone(),
            auth,
            headers: p.headers.clone(),
            timeout: Duration::from_secs(30),
            max_batch: 16,
        })
        .map(Backend::Pyroscope)
        .map_err(|message| SinkBuildError::Invalid { name, message });
    }
    if let Some(p) = &spec.parca {
        if p.insecure_skip_verify {
            return Err(SinkBuildError::Invalid {
                name,
                message: "parca.insecureSkipVerify is not supported: use insecure (plain-text gRPC) or a certificate the scraper trusts".into(),
            });
        }
        let bearer_token = p.bearer_token_secret.as_ref().map(cred).transpose()?;
        return parca::ParcaSink::new(parca::ParcaConfig {
            address: p.address.clone(),
            insecure: p.insecure,
            bearer_token,
            timeout: Duration::from_secs(30),
        })
        .map(Backend::Parca)
        .map_err(|message| SinkBuildError::Invalid { name, message });
    }
    if let Some(o) = &spec.otlp {
        return otlp::OtlpSink::new(otlp::OtlpConfig {
            endpoint: o.endpoint.clone(),
            headers: o.headers.clone(),
            timeout: Duration::from_secs(30),
        })
        .map(Backend::Otlp)
        .map_err(|message| SinkBuildError::Invalid { name, message });
    }
    Err(SinkBuildError::NoBackend(name))
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Envelope>,
    bytes: usize,
}

/// One sink: its queue, its worker and its counters.
#[derive(Debug)]
struct SinkHandle {
    name: String,
    queue: Mutex<QueueState>,
    config: QueueConfig,
    notify: Notify,
    closed: AtomicBool,
    metrics: Metrics,
}

impl SinkHandle {
    fn labels(&self) -> SinkLabels {
        SinkLabels {
            sink: self.name.clone(),
        }
    }

    fn drop_count(&self, reason: &str, n: u64) {
        self.metrics
            .sink_dropped
            .get_or_create(&SinkReasonLabels {
                sink: self.name.clone(),
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }

    fn gauges(&self, q: &QueueState) {
        let l = self.labels();
        self.metrics
            .sink_queue_profiles
            .get_or_create(&l)
            .set(q.items.len() as i64);
        self.metrics
            .sink_queue_bytes
            .get_or_create(&l)
            .set(q.bytes as i64);
    }

    fn push(&self, envelope: Envelope) {
        let size = envelope.size();
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::Relaxed) {
            drop(q);
            self.drop_count("shutdown", 1);
            return;
        }
        let full = |q: &QueueState| {
            q.items.len() >= self.config.max_profiles || q.bytes + size > self.config.max_bytes
        };
        match self.config.when_full {
            WhenFull::DropNewest if full(&q) => {
                drop(q);
                self.drop_count("queue_full", 1);
                return;
            }
            _ => {
                let mut dropped = 0;
                while full(&q) {
                    match q.items.pop_front() {
                        Some(old) => {
                            q.bytes -= old.size();
                            dropped += 1;
                        }
                        None => break,
                    }
                }
                if dropped > 0 {
                    self.drop_count("queue_full", dropped);
                }
            }
        }
        q.bytes += size;
        q.items.push_back(envelope);
        self.gauges(&q);
        drop(q);
        self.notify.notify_one();
    }

    fn take_batch(&self, max: usize) -> Vec<Envelope> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.items.len().min(max);
        let batch: Vec<Envelope> = q.items.drain(..n).collect();
        q.bytes -= batch.iter().map(Envelope::size).sum::<usize>();
        self.gauges(&q);
        batch
    }

    fn pending(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .items
            .len()
    }
}

/// Jittered exponential backoff: `initial * 2^attempt`, capped, times a factor in [0.5, 1.0].
fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let exp = retry.initial.saturating_mul(1u32 << attempt.min(16));
    let capped = exp.min(retry.max);
    capped.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

async fn worker(handle: Arc<SinkHandle>, backend: Backend, retry: RetryConfig) {
    let labels = handle.labels();
    loop {
        let batch = handle.take_batch(backend.max_batch());
        if batch.is_empty() {
            if handle.closed.load(Ordering::Relaxed) {
                return;
            }
            handle.notify.notified().await;
            continue;
        }
        let mut attempt = 0;
        loop {
            match backend.send(&batch).await {
                Ok(()) => {
                    handle
                        .metrics
                        .sink_sent
                        .get_or_create(&labels)
                        .inc_by(batch.len() as u64);
                    let bytes: usize = batch.iter().map(|e| e.profile.len()).sum();
                    handle
                        .metrics
                        .sink_sent_bytes
                        .get_or_create(&labels)
                        .inc_by(bytes as u64);
                    break;
                }
                Err(e) => {
                    handle
                        .metrics
                        .sink_failures
                        .get_or_create(&SinkReasonLabels {
                            sink: handle.name.clone(),
                            reason: e.reason.to_owned(),
                        })
                        .inc();
                    if !e.retryable {
                        tracing::warn!(sink = %handle.name, error = %e, profiles = batch.len(), "sink refused profiles; dropped");
                        handle.drop_count("rejected", batch.len() as u64);
                        break;
                    }
                    if handle.closed.load(Ordering::Relaxed) {
                        handle.drop_count("shutdown", batch.len() as u64);
                        break;
                    }
                    let wait = e
                        .retry_after
                        .unwrap_or_else(|| backoff(&retry, attempt))
                        .min(retry.max);
                    tracing::debug!(sink = %handle.name, error = %e, ?wait, "send failed; retrying");
                    handle.metrics.sink_retries.get_or_create(&labels).inc();
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = wait_closed(&handle) => {}
                    }
                }
            }
        }
    }
}

async fn wait_closed(handle: &SinkHandle) {
    while !handle.closed.load(Ordering::Relaxed) {
        handle.notify.notified().await;
    }
}

/// Every sink, each behind its own bounded queue. `send` never blocks the scrape loop.
#[derive(Debug, Clone)]
pub struct Fanout {
    sinks: Arc<Vec<Arc<SinkHandle>>>,
    workers: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    metrics: Metrics,
}

impl Fanout {
    /// Starts one worker per backend (on the current tokio runtime).
    pub fn start(
        backends: Vec<(String, Backend, QueueConfig)>,
        retry: RetryConfig,
        metrics: &Metrics,
    ) -> Self {
        let mut sinks = Vec::new();
        let mut workers = Vec::new();
        for (name, backend, config) in backends {
            let handle = Arc::new(SinkHandle {
                name,
                queue: Mutex::default(),
                config,
                notify: Notify::new(),
                closed: AtomicBool::new(false),
                metrics: metrics.clone(),
            });
            workers.push(tokio::spawn(worker(handle.clone(), backend, retry)));
            sinks.push(handle);
        }
        Self {
            sinks: Arc::new(sinks),
            workers: Arc::new(Mutex::new(workers)),
            metrics: metrics.clone(),
        }
    }

    /// Builds every sink of `specs` and starts it.
    pub fn from_specs(
        specs: &[SinkSpec],
        secrets: &dyn SecretSource,
        retry: RetryConfig,
        metrics: &Metrics,
    ) -> Result<Self, SinkBuildError> {
        let mut backends = Vec::new();
        for spec in specs {
            let backend = build_backend(spec, secrets)?;
            let mut queue = QueueConfig::default();
            if let Some(q) = &spec.queue {
                if let Some(n) = q.max_profiles {
                    queue.max_profiles = n.max(1) as usize;
                }
                if let Some(n) = q.max_bytes {
                    queue.max_bytes = n.max(1) as usize;
                }
                queue.when_full = q.when_full;
            }
            backends.push((spec.name.clone(), backend, queue));
        }
        Ok(Self::start(backends, retry, metrics))
    }

    /// Queues `envelope` for every sink in `names`. A name no sink has, or an empty list, is
    /// counted as dropped (`no_such_sink`, `no_sink`): an empty list never means "every sink",
    /// or one team's profiles could reach another team's store.
    pub fn send(&self, envelope: Envelope, names: &[String]) {
        if names.is_empty() {
            self.count_unrouted("", "no_sink");
            return;
        }
        let mut targets: Vec<&Arc<SinkHandle>> = Vec::with_capacity(names.len());
        for name in names {
            match self.sinks.iter().find(|s| s.name == *name) {
                Some(s) => targets.push(s),
                None => self.count_unrouted(name, "no_such_sink"),
            }
        }
        if let Some((last, rest)) = targets.split_last() {
            for s in rest {
                s.push(envelope.clone());
            }
            last.push(envelope);
        }
    }

    fn count_unrouted(&self, sink: &str, reason: &str) {
        self.metrics
            .sink_dropped
            .get_or_create(&SinkReasonLabels {
                sink: sink.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Profiles waiting in all queues.
    pub fn pending(&self) -> usize {
        self.sinks.iter().map(|s| s.pending()).sum()
    }

    /// Stops accepting, lets the workers drain for at most `deadline`, then counts what is
    /// left as dropped.
    pub async fn shutdown(&self, deadline: Duration) {
        for s in self.sinks.iter() {
            s.closed.store(true, Ordering::Relaxed);
            s.notify.notify_waiters();
            s.notify.notify_one();
        }
        let workers: Vec<_> =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = tokio::time::timeout(deadline, futures::future::join_all(workers)).await;
        for s in self.sinks.iter() {
            let left = s.take_batch(usize::MAX).len();
            if left > 0 {
                s.drop_count("shutdown", left as u64);
            }
        }
    }
}
