//! Byte budgets: the bytes that decompressed and decoded profiles may hold at once, over every
//! scrape (and, as a second budget, the bodies being fetched). Without it each hostile target could take the per-profile maximum at the same
//! time (21 of them reached 772 MB); with it they take turns, and a small profile waits only
//! while a large one decodes.
//!
//! A scrape reserves what it will hold *before* allocating it, in one piece (never holding one
//! part while waiting for another, so two scrapes cannot wait on each other): first what the
//! gzip trailer announces, then, once the decompressed bytes are measured, what decoding them
//! takes. When that second part is not free at once, the scrape lets go of everything and waits
//! for the whole.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget accounting unit: the semaphore counts KiB (its permits are `u32`-sized per request).
const UNIT: usize = 1024;

/// Default budget: room for the largest body the default limits decompress (64 MiB, refused
/// there or decoded if it fits) beside many ordinary profiles. With the body budget and the
/// scraper's own ~40 MiB, this keeps the scraper under 256 MiB whatever its targets send.
pub const DEFAULT_DECODE_BUDGET: u64 = 96 << 20;

/// Default body budget: two bodies of the default `maxProfileBytes` (16 MiB) at once.
pub const DEFAULT_BODY_BUDGET: u64 = 32 << 20;

/// Requests up to this size (an ordinary profile, decoded) take the small lane.
pub const SMALL_REQUEST: usize = 1 << 20;

/// Bytes shared by every decode; cheap to clone.
///
/// With a small lane, requests up to [`SMALL_REQUEST`] come out of a sixth of the budget kept
/// for them, so they never queue behind a large one (a gzip bomb waiting for 64 MiB): hostile
/// targets take turns with each other, not with ordinary profiles.
#[derive(Clone, Debug)]
pub struct ByteBudget {
    large: Lane,
    small: Option<Lane>,
}

#[derive(Clone, Debug)]
struct Lane {
    semaphore: Arc<Semaphore>,
    units: u32,
}

impl Lane {
    fn new(bytes: u64) -> Self {
        let units = u32::try_from(bytes.div_ceil(UNIT as u64))
            .unwrap_or(u32::MAX)
            .max(1024);
        Self {
            semaphore: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }
}

/// Bytes held until dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    units: u32,
    small: bool,
}

impl Reservation {
    /// Adds what `other`, of the same lane, holds to this reservation.
    pub fn merge(&mut self, other: Reservation) {
        if let Some(more) = other.permit {
            match &mut self.permit {
                Some(p) => p.merge(more),
                None => self.permit = Some(more),
            }
        }
        self.units += other.units;
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.units as usize * UNIT
    }
}

fn units(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(UNIT as u64)
}

impl ByteBudget {
    /// A budget of `bytes` (at least 1 MiB), one lane.
    pub fn new(bytes: u64) -> Self {
        Self {
            large: Lane::new(bytes),
            small: None,
        }
    }

    /// A budget of `bytes`, a sixth of it (at least 1 MiB) kept for small requests.
    pub fn with_small_lane(bytes: u64) -> Self {
        let small = (bytes / 6).max(SMALL_REQUEST as u64);
        Self {
            large: Lane::new(bytes.saturating_sub(small)),
            small: Some(Lane::new(small)),
        }
    }

    /// The most one request may hold: a profile needing more is refused.
    pub fn total(&self) -> usize {
        self.large.units as usize * UNIT
    }

    /// The lane of a request of `bytes`: the small one when there is one and it fits.
    fn lane(&self, bytes: usize) -> (&Lane, bool) {
        match &self.small {
            Some(small) if bytes <= SMALL_REQUEST => (small, true),
            _ => (&self.large, false),
        }
    }

    /// Waits until `bytes` are free and holds them; `None` when more than [`Self::total`] is
    /// asked (such a profile is refused, never decoded alone past the bound).
    pub async fn reserve(&self, bytes: usize) -> Option<Reservation> {
        let (lane, small) = self.lane(bytes);
        let n = u32::try_from(units(bytes))
            .ok()
            .filter(|n| *n <= lane.units)?;
        if n == 0 {
            return Some(Reservation {
                small,
                ..Reservation::default()
            });
        }
        let permit = lane.semaphore.clone().acquire_many_owned(n).await.ok()?;
        Some(Reservation {
            permit: Some(permit),
            units: n,
            small,
        })
    }

    /// Grows `r` to `bytes` if that much is free now in its lane, without waiting: whether it
    /// holds `bytes` afterwards. A small reservation cannot grow past [`SMALL_REQUEST`]; its
    /// holder lets go and reserves the whole in the large lane.
    pub fn try_grow(&self, r: &mut Reservation, bytes: usize) -> bool {
        let Ok(want) = u32::try_from(units(bytes)) else {
            return false;
        };
        let Some(extra) = want.checked_sub(r.units).filter(|e| *e > 0) else {
            return true;
        };
        let (lane, small) = self.lane(bytes);
        if small != r.small {
            return false;
        }
        let Ok(more) = lane.semaphore.clone().try_acquire_many_owned(extra) else {
            return false;
        };
        r.merge(Reservation {
            permit: Some(more),
            units: extra,
            small,
        });
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::ByteBudget;

    #[tokio::test]
    async fn reservations_share_the_budget_and_free_it_when_dropped() {
        let budget = ByteBudget::new(4 << 20);
        let mut a = budget.reserve(3 << 20).await.unwrap();
        // 1 MiB is left: growing `a` by 2 MiB does not fit, 1 MiB does.
        assert!(!budget.try_grow(&mut a, 5 << 20));
        assert!(budget.try_grow(&mut a, 4 << 20));
        assert_eq!(a.bytes(), 4 << 20);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(2 << 20).await.map(|r| r.bytes()) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        assert_eq!(waiting.await.unwrap(), Some(2 << 20));
        // More than the whole budget is refused rather than waited for.
        assert!(budget.reserve(5 << 20).await.is_none());
    }

    #[tokio::test]
    async fn a_small_request_does_not_queue_behind_a_large_one() {
        let budget = ByteBudget::with_small_lane(12 << 20);
        let big = budget.reserve(8 << 20).await.unwrap();
        // A second large request waits for the first...
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(6 << 20).await.map(|r| r.bytes()) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // ...and an ordinary profile goes ahead in the small lane.
        let mut small = budget.reserve(64 << 10).await.unwrap();
        assert!(budget.try_grow(&mut small, 512 << 10));
        // Past the small lane's size it must let go and queue in the large lane.
        assert!(!budget.try_grow(&mut small, 2 << 20));
        drop(big);
        assert_eq!(waiting.await.unwrap(), Some(6 << 20));
    }
}
