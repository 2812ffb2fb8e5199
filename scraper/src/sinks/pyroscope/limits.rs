//! Pyroscope's default ingestion limits, checked before sending: a profile Pyroscope would
//! refuse (with a 4xx that is never retried) is dropped here and counted under a fixed reason
//! of `kubeprof_sink_dropped_profiles`, instead of failing the batch it travels in.
//!
//! The defaults are Pyroscope's (grafana/pyroscope `pkg/validation/limits.go`, flags
//! `validation.max-label-names-per-series` 30, `validation.max-length-label-name` 1024,
//! `validation.max-length-label-value` 2048, `validation.max-profile-size-bytes` 4 MiB of
//! uncompressed profile, `validation.max-profile-stacktrace-samples` 16000). Lengths are in
//! bytes, as Go's `len` counts them.

use kubeprof_crds::health::SinkRefusal;
use kubeprof_pprof::{DecodeError, DecodeLimits, decode_profile, decompress};

use crate::envelope::Envelope;

/// Limits a Pyroscope tenant applies to each series it ingests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestLimits {
    /// Labels per series, `__name__` included.
    pub max_labels: usize,
    /// Bytes of a label name.
    pub max_label_name_length: usize,
    /// Bytes of a label value.
    pub max_label_value_length: usize,
    /// Bytes of the uncompressed profile.
    pub max_profile_bytes: usize,
    /// Samples of a profile.
    pub max_samples: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_labels: 30,
            max_label_name_length: 1024,
            max_label_value_length: 2048,
            max_profile_bytes: 4 * 1024 * 1024,
            max_samples: 16_000,
        }
    }
}

impl IngestLimits {
    /// Why Pyroscope would refuse the labels of `e`.
    pub fn refuse_labels(&self, e: &Envelope) -> Option<SinkRefusal> {
        if e.labels.len() > self.max_labels {
            return Some(SinkRefusal::TooManyLabels);
        }
        if e.labels
            .keys()
            .any(|k| k.len() > self.max_label_name_length)
        {
            return Some(SinkRefusal::LabelNameTooLong);
        }
        if e.labels
            .values()
            .any(|v| v.len() > self.max_label_value_length)
        {
            return Some(SinkRefusal::LabelValueTooLong);
        }
        None
    }

    /// Why Pyroscope would refuse the profile of `e`. Decompresses it
    /// (and decodes it unless the source handed the decoded profile along), so it runs outside
    /// the queue's lock.
    pub fn refuse_profile(&self, e: &Envelope) -> Option<SinkRefusal> {
        let limits = DecodeLimits {
            max_decompressed_bytes: self.max_profile_bytes,
            ..DecodeLimits::default()
        };
        let raw = match decompress(&e.profile, &limits) {
            Ok(raw) => raw,
            Err(DecodeError::TooLarge { .. }) => return Some(SinkRefusal::ProfileTooLarge),
            // Checked when scraped; should it still be broken, Pyroscope says so.
            Err(_) => return None,
        };
        let samples = match &e.decoded {
            Some(p) => p.sample.len(),
            None => decode_profile(&raw).map_or(0, |p| p.sample.len()),
        };
        (samples > self.max_samples).then_some(SinkRefusal::TooManySamples)
    }
}
