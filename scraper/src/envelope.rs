//! The one contract between sources and sinks: a profile with its final labels.

use std::{mem::size_of, sync::Arc, time::SystemTime};

use bytes::Bytes;
use kubeprof_crds::relabel::Labels;
use kubeprof_pprof::Profile;

/// One profile ready to send.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Final labels: `__name__` (the profile type), `service_name`, and the rest; no other
    /// `__*` labels.
    pub labels: Labels,
    /// gzip-compressed pprof.
    pub profile: Bytes,
    /// The same profile, decoded, when the source has it at hand: a sink that needs the
    /// profile's structure (OTLP) reads it instead of decompressing and decoding `profile`
    /// again. The outputs hand it only to such sinks, so other queues never hold it.
    pub decoded: Option<Arc<Profile>>,
    /// When the scrape started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// The job that produced it.
    pub job_id: Arc<str>,
}

impl Envelope {
    /// Bytes this envelope holds, as the queues count them. The decoded profile, if any, is
    /// estimated from its tables (a queue must stay bounded whatever it holds).
    pub(crate) fn size(&self) -> usize {
        let labels: usize = self.labels.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.profile.len() + labels + self.decoded.as_deref().map_or(0, heap_size)
    }
}

/// Approximate heap bytes of a decoded profile.
fn heap_size(p: &Profile) -> usize {
    use kubeprof_pprof::{Function, Label, Line, Location, Mapping, Sample};
    let strings: usize = p
        .string_table
        .iter()
        .map(|s| s.len() + size_of::<String>())
        .sum();
    let samples: usize = p
        .sample
        .iter()
        .map(|s| {
            size_of::<Sample>()
                + s.location_id.len() * size_of::<u64>()
                + s.value.len() * size_of::<i64>()
                + s.label.len() * size_of::<Label>()
        })
        .sum();
    let locations: usize = p
        .location
        .iter()
        .map(|l| size_of::<Location>() + l.line.len() * size_of::<Line>())
        .sum();
    size_of::<Profile>()
        + strings
        + samples
        + locations
        + p.function.len() * size_of::<Function>()
        + p.mapping.len() * size_of::<Mapping>()
}
