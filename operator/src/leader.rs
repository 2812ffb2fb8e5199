//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does it: the holder renews
//! the lease every `renew_every`; a candidate takes it over once the record has not changed for
//! `lease_duration` *as measured on the candidate's own clock* (so clock skew between replicas
//! does not matter). Only the leader writes. A leader that cannot renew within the lease
//! duration steps down by itself, before anyone else can take over.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Settings of one elector.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a silent holder keeps the lease.
    pub lease_duration: Duration,
    /// How often the holder renews, and candidates retry.
    pub renew_every: Duration,
}

/// Runs the election until `shutdown`; the receiver says whether this replica leads now.
/// On shutdown a leader releases the lease, so a standby takes over at its next retry.
pub fn spawn(
    api: Api<Lease>,
    settings: LeaseSettings,
    shutdown: CancellationToken,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let handle = tokio::spawn(async move {
        let mut elector = Elector {
            api,
            settings,
            observed: None,
            last_renewed: None,
        };
        loop {
            let leading = elector.round().await;
            tx.send_if_modified(|v| {
                let changed = *v != leading;
                *v = leading;
                changed
            });
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(elector.settings.renew_every) => {}
            }
        }
        if *tx.borrow() {
            tx.send_replace(false);
            elector.release().await;
        }
    });
    (rx, handle)
}

#[derive(Debug)]
struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The last record seen (holder, renew time, resource version) and when it was first seen.
    observed: Option<(String, Instant)>,
    /// When this replica last renewed successfully.
    last_renewed: Option<Instant>,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Elector {
    /// One attempt to acquire or renew; whether this replica leads afterwards.
    async fn round(&mut self) -> bool {
        let me = self.settings.identity.clone();
        let duration_secs = i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(15);
        let lease = match self.api.get_opt(&self.settings.name).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(me.clone()),
                        lease_duration_seconds: Some(duration_secs),
                        acquire_time: Some(now()),
                        renew_time: Some(now()),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {
                        tracing::info!(identity = %me, "acquired the leader lease");
                        self.last_renewed = Some(Instant::now());
                        true
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "lease creation lost a race");
                        false
                    }
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the leader lease");
                return self.still_leading();
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = format!(
            "{holder}|{:?}|{}",
            spec.renew_time.as_ref().map(|t| t.0),
            lease.metadata.resource_version.clone().unwrap_or_default()
        );
        let seen_since = match &self.observed {
            Some((r, since)) if *r == record => *since,
            _ => {
                let t = Instant::now();
                self.observed = Some((record, t));
                t
            }
        };
        let held_by_me = holder == me;
        let expired = holder.is_empty() || seen_since.elapsed() >= self.settings.lease_duration;
        if !held_by_me && !expired {
            self.last_renewed = None;
            return false;
        }
        let mut next = lease.clone();
        let mut new_spec = spec.clone();
        new_spec.renew_time = Some(now());
        new_spec.lease_duration_seconds = Some(duration_secs);
        if !held_by_me {
            new_spec.holder_identity = Some(me.clone());
            new_spec.acquire_time = Some(now());
            new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        next.spec = Some(new_spec);
        // The resource version in `next` makes this a compare-and-swap: of two candidates, one wins.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => {
                if !held_by_me {
                    tracing::info!(identity = %me, previous = %holder, "acquired the leader lease");
                }
                self.last_renewed = Some(Instant::now());
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew or take the leader lease");
                if held_by_me {
                    self.still_leading()
                } else {
                    false
                }
            }
        }
    }

    /// A leader that cannot reach the API keeps leading only while its last renewal is valid,
    /// minus a margin, so that it stops writing before a standby may start.
    fn still_leading(&self) -> bool {
        let margin = self.settings.renew_every;
        self.last_renewed
            .is_some_and(|t| t.elapsed() + margin < self.settings.lease_duration)
    }

    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = Some(now());
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("released the leader lease"),
            Err(e) => tracing::warn!(error = %e, "cannot release the leader lease"),
        }
    }
}
