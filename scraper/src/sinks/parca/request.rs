//! The `WriteRawRequest` of a batch: labels as a `LabelSet` (Parca reads the profile type from
//! `__name__`), profiles as gzip-compressed pprof, which Parca decompresses. `__delta__` is
//! Pyroscope's marker and would only add a series label in Parca, which stores what it is
//! sent and computes no deltas on ingest: it is left out.

use kubeprof_crds::constants::labels::DELTA;

use crate::{
    envelope::Envelope,
    proto::parca::profilestore::v1alpha1::{
        Label, LabelSet, RawProfileSeries, RawSample, WriteRawRequest,
    },
};

/// The request for a batch.
pub fn write_raw_request(batch: &[Envelope]) -> WriteRawRequest {
    WriteRawRequest {
        tenant: String::new(),
        normalized: false,
        series: batch
            .iter()
            .map(|e| RawProfileSeries {
                labels: Some(LabelSet {
                    labels: e
                        .labels
                        .iter()
                        .filter(|(k, _)| k.as_str() != DELTA)
                        .map(|(k, v)| Label {
                            name: k.clone(),
                            value: v.clone(),
                        })
                        .collect(),
                }),
                samples: vec![RawSample {
                    raw_profile: e.profile.clone(),
                }],
            })
            .collect(),
    }
}
