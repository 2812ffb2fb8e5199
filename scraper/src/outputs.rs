//! The outputs: the one fan-out every source feeds. A source hands an [`Envelope`] and the
//! names of its sinks to an [`OutputsHandle`]; each named sink queues it. The assembly owns
//! the [`Outputs`] and replaces the sinks when the job set names different ones, so sources
//! never see a sink change.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use kubeprof_crds::policy::SinkSpec;

use crate::{
    credentials::SecretSource,
    envelope::Envelope,
    metrics::{Metrics, SinkReasonLabels},
    sinks::{self, RetryConfig, Sink, SinkBuildError},
};

/// How long replaced sinks may take to send what they hold.
const DRAIN: Duration = Duration::from_secs(10);

/// One set of running sinks.
#[derive(Debug)]
pub(crate) struct Fanout {
    sinks: Vec<Sink>,
    metrics: Metrics,
}

impl Fanout {
    /// Routes to `sinks`.
    pub(crate) fn new(sinks: Vec<Sink>, metrics: &Metrics) -> Self {
        Self {
            sinks,
            metrics: metrics.clone(),
        }
    }

    /// Builds every sink of `specs` and, when all could be built, starts them.
    fn build(
        specs: &[SinkSpec],
        secrets: &dyn SecretSource,
        retry: RetryConfig,
        metrics: &Metrics,
    ) -> Result<Self, SinkBuildError> {
        let backends = specs
            .iter()
            .map(|spec| sinks::build(spec, secrets))
            .collect::<Result<Vec<_>, _>>()?;
        let started = specs
            .iter()
            .zip(backends)
            .map(|(spec, backend)| sinks::start(spec, backend, retry, metrics))
            .collect();
        Ok(Self::new(started, metrics))
    }

    /// Queues `envelope` for every sink in `names`. A name no sink has, or an empty list, is
    /// counted as dropped (`no_such_sink`, `no_sink`): an empty list never means "every sink",
    /// or one team's profiles could reach another team's store.
    pub(crate) fn send(&self, mut envelope: Envelope, names: &[String]) {
        if names.is_empty() {
            self.count_unrouted("", "no_sink");
            return;
        }
        let mut targets: Vec<&Sink> = Vec::with_capacity(names.len());
        for name in names {
            match self.sinks.iter().find(|s| s.name() == name) {
                Some(s) => targets.push(s),
                None => self.count_unrouted(name, "no_such_sink"),
            }
        }
        let Some((last, rest)) = targets.split_last() else {
            return;
        };
        for s in rest {
            let mut copy = envelope.clone();
            if !s.wants_decoded() {
                copy.decoded = None;
            }
            s.push(copy);
        }
        if !last.wants_decoded() {
            envelope.decoded = None;
        }
        last.push(envelope);
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
    pub(crate) fn pending(&self) -> usize {
        self.sinks.iter().map(Sink::pending).sum()
    }

    /// Stops accepting, lets the workers drain for at most `deadline`, then counts what is
    /// left as dropped.
    pub(crate) async fn shutdown(&self, deadline: Duration) {
        for s in &self.sinks {
            s.close();
        }
        let workers = futures::future::join_all(self.sinks.iter().map(Sink::join));
        let _ = tokio::time::timeout(deadline, workers).await;
        for s in &self.sinks {
            s.count_left();
        }
    }
}

/// The sinks every source sends to. Owned by the assembly; sources hold an [`OutputsHandle`].
#[derive(Debug)]
pub struct Outputs {
    current: Arc<RwLock<Arc<Fanout>>>,
    specs: Vec<SinkSpec>,
    secrets: Arc<dyn SecretSource>,
    retry: RetryConfig,
    metrics: Metrics,
}

impl Outputs {
    /// Starts the sinks of `specs` (on the current tokio runtime).
    pub fn start(
        specs: &[SinkSpec],
        secrets: Arc<dyn SecretSource>,
        retry: RetryConfig,
        metrics: &Metrics,
    ) -> Result<Self, SinkBuildError> {
        let fanout = Fanout::build(specs, secrets.as_ref(), retry, metrics)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(fanout))),
            specs: specs.to_vec(),
            secrets,
            retry,
            metrics: metrics.clone(),
        })
    }

    /// Makes the sinks those of `specs`. Unchanged specs change nothing; otherwise the new
    /// sinks take over at once and the previous ones send what they hold in the background.
    /// When a new sink cannot be built, the previous sinks stay.
    pub fn apply(&mut self, specs: &[SinkSpec]) -> Result<(), SinkBuildError> {
        if specs == self.specs.as_slice() {
            return Ok(());
        }
        let fanout = Fanout::build(specs, self.secrets.as_ref(), self.retry, &self.metrics)?;
        let old = std::mem::replace(&mut *self.write(), Arc::new(fanout));
        self.specs = specs.to_vec();
        tokio::spawn(async move { old.shutdown(DRAIN).await });
        Ok(())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Arc<Fanout>> {
        self.current.write().unwrap_or_else(|e| e.into_inner())
    }

    /// What a source sends through.
    pub fn handle(&self) -> OutputsHandle {
        OutputsHandle {
            current: self.current.clone(),
        }
    }

    /// Profiles waiting in the current sinks' queues.
    pub fn pending(&self) -> usize {
        self.handle().current().pending()
    }

    /// Stops the current sinks: they stop accepting, send what they hold for at most
    /// `deadline`, and count the rest as dropped.
    pub async fn shutdown(&self, deadline: Duration) {
        self.handle().current().shutdown(deadline).await;
    }
}

/// A source's way into the outputs; cheap to clone.
#[derive(Clone, Debug)]
pub struct OutputsHandle {
    current: Arc<RwLock<Arc<Fanout>>>,
}

impl OutputsHandle {
    fn current(&self) -> Arc<Fanout> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Queues `envelope` for every sink named in `sinks`; never waits for a sink. An empty
    /// list means no sink, not every sink (counted as dropped, `no_sink`), and a name no sink
    /// has is counted as `no_such_sink`.
    pub fn send(&self, envelope: Envelope, sinks: &[String]) {
        self.current().send(envelope, sinks);
    }
}
