//! The decode budget: the bytes that decompressed and decoded profiles may hold at once, over
//! every scrape. Without it each hostile target could take the per-profile maximum at the same
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

/// Default budget: room for the largest profile the default limits accept (64 MiB
/// decompressed) being decoded beside a few ordinary ones.
pub const DEFAULT_DECODE_BUDGET: u64 = 128 << 20;

/// Bytes shared by every decode; cheap to clone.
#[derive(Clone, Debug)]
pub struct DecodeBudget {
    semaphore: Arc<Semaphore>,
    units: u32,
}

/// Bytes held until dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    units: u32,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.units as usize * UNIT
    }
}

fn units(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(UNIT as u64)
}

impl DecodeBudget {
    /// A budget of `bytes` (at least 1 MiB).
    pub fn new(bytes: u64) -> Self {
        let units = u32::try_from(bytes.div_ceil(UNIT as u64))
            .unwrap_or(u32::MAX)
            .max(1024);
        Self {
            semaphore: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// The whole budget in bytes: no single profile may need more.
    pub fn total(&self) -> usize {
        self.units as usize * UNIT
    }

    /// Waits until `bytes` are free and holds them; `None` when more than the whole budget is
    /// asked (such a profile is refused, never decoded alone past the bound).
    pub async fn reserve(&self, bytes: usize) -> Option<Reservation> {
        let n = u32::try_from(units(bytes))
            .ok()
            .filter(|n| *n <= self.units)?;
        if n == 0 {
            return Some(Reservation {
                permit: None,
                units: 0,
            });
        }
        let permit = self.semaphore.clone().acquire_many_owned(n).await.ok()?;
        Some(Reservation {
            permit: Some(permit),
            units: n,
        })
    }

    /// Grows `r` to `bytes` if that much is free now, without waiting: whether it holds
    /// `bytes` afterwards.
    pub fn try_grow(&self, r: &mut Reservation, bytes: usize) -> bool {
        let Ok(want) = u32::try_from(units(bytes)) else {
            return false;
        };
        let Some(extra) = want.checked_sub(r.units).filter(|e| *e > 0) else {
            return true;
        };
        let Ok(more) = self.semaphore.clone().try_acquire_many_owned(extra) else {
            return false;
        };
        match &mut r.permit {
            Some(p) => p.merge(more),
            None => r.permit = Some(more),
        }
        r.units = want;
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::DecodeBudget;

    #[tokio::test]
    async fn reservations_share_the_budget_and_free_it_when_dropped() {
        let budget = DecodeBudget::new(4 << 20);
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
}
