//! From fetched bytes to a profile to send: decode (with the decompression limit), validate,
//! and turn cumulative profiles into deltas. A profile nothing changed is forwarded as the
//! bytes the target sent; only a delta (or an uncompressed body) is encoded again.

use std::sync::Arc;

use bytes::Bytes;
use kubeprof_crds::health::ScrapeFailure;

use kubeprof_pprof::{
    self as pprof, DecodeError, DecodeLimits, DeltaOutcome, DeltaTracker, Profile, ValidateError,
};

use super::budget::{ByteBudget, Reservation};
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

/// Why [`process`] stopped without a profile.
#[derive(Debug)]
pub(super) enum Stop {
    /// The body is not a usable profile.
    Rejected(Rejected),
    /// Decoding needs this many bytes of the budget, more than `reservation` holds and more
    /// than is free now: wait for them (holding nothing) and call again. Nothing changed.
    NeedsRoom(usize),
}

impl From<Rejected> for Stop {
    fn from(r: Rejected) -> Self {
        Self::Rejected(r)
    }
}

/// The bytes of the decode budget to reserve before calling [`process`] on `body` the first
/// time: what its gzip trailer announces, even past the limits (such a body is refused before
/// it is decompressed); 0 for a raw body, decoded where it is.
pub(super) fn first_reservation(body: &[u8]) -> usize {
    pprof::gzip_announced_size(body).unwrap_or(0)
}

/// The most decompressed bytes of a gzip body that can ever be decoded within `budget`: the
/// decompressed bytes are kept while their decoded form, never smaller, is built. A body
/// announcing more is refused before it is decompressed (a gzip bomb costs nothing), and one
/// that decompresses past it is refused there.
pub(super) fn most_decompressed(budget: &ByteBudget, limits: &DecodeLimits) -> usize {
    (budget.total() / 2).min(limits.max_decompressed_bytes)
}

/// The refusal of a body that decompresses to more than `most` bytes (its trailer's `announced`
/// when that says so).
pub(super) fn too_large_to_decode(most: usize, announced: Option<usize>) -> Rejected {
    Rejected {
        outcome: "decode_error",
        reason: ScrapeFailure::TooLarge,
        message: match announced {
            Some(n) => format!(
                "the profile decompresses to {} MiB (its gzip trailer says), more than the {} MiB \
                 the decode budget can ever decode",
                n >> 20,
                most >> 20
            ),
            None => format!(
                "the profile decompresses to more than the {} MiB the decode budget can ever decode",
                most >> 20
            ),
        },
    }
}

/// The profile of `body`; `None` when it is a delta profile's baseline, with nothing to send
/// yet. `tracker` holds the job's previous values when `delta` is set. Decompressing and
/// decoding stay within `reservation`, grown from `budget` when the measured size needs it.
pub(super) fn process(
    body: Bytes,
    delta: bool,
    tracker: &mut DeltaTracker,
    limits: &DecodeLimits,
    metrics: &Metrics,
    (budget, reservation): (&ByteBudget, &mut Reservation),
) -> Result<Option<Ready>, Stop> {
    let decode_error = |e: DecodeError| Rejected {
        outcome: "decode_error",
        reason: decode_failure(&e),
        message: e.to_string(),
    };
    let gzip = pprof::is_gzip(&body);
    let most = most_decompressed(budget, limits);
    let within = if gzip {
        reservation.bytes().min(most)
    } else {
        limits.max_decompressed_bytes
    };
    // The decompressed bytes are kept: a delta re-uses all but their samples.
    let Some(raw) = pprof::decompress_within(&body, within, limits).map_err(decode_error)? else {
        if within >= most {
            return Err(Stop::Rejected(too_large_to_decode(most, None)));
        }
        return Err(Stop::NeedsRoom(most));
    };
    let size = pprof::decoded_size(&raw).map_err(|e| decode_error(DecodeError::NotPprof(e)))?;
    let need = if gzip { raw.len() } else { 0 }.saturating_add(size.bytes);
    if need > budget.total() {
        return Err(Stop::Rejected(Rejected {
            outcome: "decode_error",
            reason: ScrapeFailure::TooLarge,
            message: format!(
                "decoding the profile takes about {} MiB, more than the whole decode budget ({} MiB)",
                need >> 20,
                budget.total() >> 20
            ),
        }));
    }
    if !budget.try_grow(reservation, need) {
        return Err(Stop::NeedsRoom(need));
    }
    let profile = pprof::decode_measured(&raw, size, limits).map_err(decode_error)?;
    if let Err(e) = pprof::validate(&profile) {
        return Err(Stop::Rejected(Rejected {
            outcome: "invalid_profile",
            reason: invalid_failure(&e),
            message: format!("invalid profile: {e}"),
        }));
    }
    if !delta {
        let profile_bytes = if gzip {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;
    use futures::FutureExt as _;
    use kubeprof_crds::health::ScrapeFailure;
    use kubeprof_pprof::{self as pprof, DecodeLimits, DeltaTracker};

    use super::{Stop, first_reservation, most_decompressed, process};
    use crate::{metrics::Metrics, pull::budget::ByteBudget};

    const MUTEX: &[u8] = include_bytes!("../../tests/fixtures/pprof-go/mutex.pb.gz");

    fn run(
        body: &[u8],
        tracker: &mut DeltaTracker,
        budget: &ByteBudget,
        reserve: usize,
    ) -> Result<bool, Stop> {
        let mut reservation = budget.reserve(reserve).now_or_never().flatten().unwrap();
        process(
            Bytes::copy_from_slice(body),
            true,
            tracker,
            &DecodeLimits::default(),
            &Metrics::unregistered(),
            (budget, &mut reservation),
        )
        .map(|ready| ready.is_some())
    }

    #[test]
    fn a_profile_waits_for_budget_held_by_others_and_changes_nothing_meanwhile() {
        let budget = ByteBudget::new(1 << 20);
        let mut tracker = DeltaTracker::default();
        let first = first_reservation(MUTEX);
        // Another decode holds all but what the trailer announced.
        let others = budget
            .reserve(budget.total() - first.next_multiple_of(1024))
            .now_or_never()
            .flatten()
            .unwrap();
        let need = match run(MUTEX, &mut tracker, &budget, first) {
            Err(Stop::NeedsRoom(n)) => n,
            other => panic!("{other:?}"),
        };
        assert!(need > first && need <= budget.total(), "{need}");
        drop(others);
        // The tracker saw nothing: the retry is the job's first profile, a baseline.
        assert!(!run(MUTEX, &mut tracker, &budget, need).unwrap());
        assert!(run(MUTEX, &mut tracker, &budget, need).unwrap());
    }

    #[test]
    fn a_profile_whose_decoding_exceeds_the_whole_budget_is_too_large() {
        // 256k empty samples: 512 KiB raw, a few KiB of gzip, ~20 MB decoded.
        let body = pprof::gzip(&[0x12u8, 0x00].repeat(256 << 10));
        let budget = ByteBudget::new(4 << 20);
        let first = first_reservation(&body);
        assert_eq!(first, 512 << 10);
        match run(&body, &mut DeltaTracker::default(), &budget, first) {
            Err(Stop::Rejected(r)) => assert_eq!(r.reason, ScrapeFailure::TooLarge),
            other => panic!("{other:?}"),
        }
    }

    /// Decompressing stops at the most the budget could ever decode (half of it: the bytes
    /// stay while their decoded form is built), even when the gzip trailer understates the
    /// size: a bomb is refused there, not decompressed up to the 64 MiB limit.
    #[test]
    fn a_body_decompressing_past_what_the_budget_can_decode_is_refused_there() {
        let budget = ByteBudget::new(4 << 20);
        let most = most_decompressed(&budget, &DecodeLimits::default());
        assert_eq!(most, 2 << 20);
        // Two gzip members: the trailer read is the second's (a few bytes), the first holds
        // 3 MiB of empty samples.
        let mut body = pprof::gzip(&[0x12u8, 0x00].repeat(3 << 19));
        body.extend(pprof::gzip(&[0x12u8, 0x00]));
        let first = first_reservation(&body);
        assert!(first < 1024, "{first}");
        let want = match run(&body, &mut DeltaTracker::default(), &budget, first) {
            Err(Stop::NeedsRoom(n)) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(want, most);
        match run(&body, &mut DeltaTracker::default(), &budget, want) {
            Err(Stop::Rejected(r)) => {
                assert_eq!(r.reason, ScrapeFailure::TooLarge);
                assert!(r.message.contains("2 MiB"), "{}", r.message);
            }
            other => panic!("{other:?}"),
        }
    }
}
