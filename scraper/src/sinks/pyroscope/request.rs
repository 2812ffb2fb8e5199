//! The `PushRequest` of a batch: one series per profile, the profile as sent by the target.

use std::time::UNIX_EPOCH;

use crate::{
    envelope::Envelope,
    proto::{
        push::v1::{PushRequest, RawProfileSeries, RawSample},
        types::v1::LabelPair,
    },
};

/// The request body for a batch.
pub fn push_request(batch: &[Envelope]) -> PushRequest {
    PushRequest {
        series: batch
            .iter()
            .map(|e| RawProfileSeries {
                labels: e
                    .labels
                    .iter()
                    .map(|(k, v)| LabelPair {
                        name: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
                samples: vec![RawSample {
                    raw_profile: e.profile.clone(),
                    id: format!(
                        "{}-{}",
                        e.job_id,
                        e.start
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_nanos())
                            .unwrap_or(0)
                    ),
                }],
            })
            .collect(),
    }
}
