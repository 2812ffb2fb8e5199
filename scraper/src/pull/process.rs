//! From fetched bytes to a profile to send: decode (with the decompression limit), validate,
//! and turn cumulative profiles into deltas. A profile nothing changed is forwarded as the
//! bytes the target sent; only a delta (or an uncompressed body) is encoded again.

use std::sync::Arc;

use bytes::Bytes;
use kubeprof_crds::health::ScrapeFailure;

use kubeprof_pprof::{
    self as pprof, DecodeError, DecodeLimits, DeltaOutcome, DeltaTracker, Profile, ValidateError,
};

use crate::metrics::{Metrics, OutcomeLabels};

/// A profile ready for the outputs.
#[derive(Debug)]
pub(super) struct Ready {
    /// gzip-compressed pprof.
    pub profile: Bytes,
    /// The same profile, decoded.
    pub decoded: Arc<Profile>,
}

/// A body that is not a usable profile.
#[derive(Debug)]
pub(super) struct Rejected {
    /// The scrape metric's outcome: `decode_error` or `invalid_profile`.
    pub outcome: &'static str,
    /// The reported reason.
    pub reason: ScrapeFailure,
    /// What is wrong.
    pub message: String,
}

/// The profile of `body`; `None` when it is a delta profile's baseline, with nothing to send
/// yet. `tracker` holds the job's previous values when `delta` is set.
pub(super) fn process(
    body: Bytes,
    delta: bool,
    tracker: &mut DeltaTracker,
    limits: &DecodeLimits,
    metrics: &Metrics,
) -> Result<Option<Ready>, Rejected> {
    // The decompressed bytes are kept: a delta re-uses all but their samples.
    let (raw, profile) = pprof::decompress(&body, limits)
        .and_then(|raw| {
            let profile = pprof::decode_raw(&raw, limits)?;
            Ok((raw, profile))
        })
        .map_err(|e| Rejected {
            outcome: "decode_error",
            reason: decode_failure(&e),
            message: e.to_string(),
        })?;
    if let Err(e) = pprof::validate(&profile) {
        return Err(Rejected {
            outcome: "invalid_profile",
            reason: invalid_failure(&e),
            message: format!("invalid profile: {e}"),
        });
    }
    if !delta {
        let profile_bytes = if pprof::is_gzip(&body) {
            // Unchanged: forward the bytes as the target sent them.
            body
        } else {
            pprof::gzip(&body).into()
        };
        return Ok(Some(Ready {
            profile: profile_bytes,
            decoded: Arc::new(profile),
        }));
    }
    let send = match tracker.apply(profile) {
        DeltaOutcome::Delta(p) => Some(p),
        DeltaOutcome::Baseline { send, reason } => {
            metrics
                .delta_resets
                .get_or_create(&OutcomeLabels {
                    outcome: reason.to_owned(),
                })
                .inc();
            send
        }
    };
    Ok(send.map(|p| Ready {
        profile: pprof::encode_delta(&raw, &p).into(),
        decoded: Arc::new(p),
    }))
}

/// The reported reason of a profile that could not be decoded.
fn decode_failure(e: &DecodeError) -> ScrapeFailure {
    match e {
        DecodeError::Empty => ScrapeFailure::Empty,
        DecodeError::TruncatedGzip => ScrapeFailure::TruncatedGzip,
        DecodeError::CorruptGzip(_) => ScrapeFailure::CorruptGzip,
        DecodeError::TooLarge { .. } | DecodeError::TooManyEntries { .. } => {
            ScrapeFailure::TooLarge
        }
        DecodeError::NotPprof(_) => ScrapeFailure::NotPprof,
    }
}

/// The reported reason of a profile that failed validation.
fn invalid_failure(e: &ValidateError) -> ScrapeFailure {
    match e {
        ValidateError::BadStringTable => ScrapeFailure::BadStringTable,
        ValidateError::NoSampleTypes => ScrapeFailure::NoSampleTypes,
        ValidateError::DanglingString { .. } => ScrapeFailure::DanglingString,
        ValidateError::ValueCount { .. } => ScrapeFailure::ValueCountMismatch,
        ValidateError::DanglingLocation { .. } => ScrapeFailure::DanglingLocation,
        ValidateError::DanglingMapping { .. } => ScrapeFailure::DanglingMapping,
        ValidateError::DanglingFunction { .. } => ScrapeFailure::DanglingFunction,
        ValidateError::BadId { .. } => ScrapeFailure::BadId,
    }
}
