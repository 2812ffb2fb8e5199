//! The one contract between sources and sinks: a profile with its final labels.

use std::{sync::Arc, time::SystemTime};

use bytes::Bytes;
use kubeprof_crds::relabel::Labels;

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
    /// Bytes this envelope holds, as the queues count them.
    pub(crate) fn size(&self) -> usize {
        let labels: usize = self.labels.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.profile.len() + labels
    }
}
