//! The operator's runtime: watches feed reflector stores; any significant change triggers one
//! pass of the loop (read stores -> bring the compile up to date -> publish shards -> write
//! status).
//!
//! One loop for everything rather than one reconciliation per object: compile is a join over
//! all objects (a policy change touches every namespace it governs, a pod may be claimed by a
//! target and by its annotations). The compile is incremental ([`crate::compile::Incremental`]):
//! the pod index records which pods changed, and only the shards of the nodes a change touches
//! are rebuilt, so one pod's change costs about one node's shard whatever the cluster's size.
//! Every pass compares each wanted shard's fingerprint with the one its object records, so an
//! object changed or deleted by someone else is written again, and an unchanged one is never
//! written. Bursts of changes are coalesced by a short debounce. Scrape-health changes only
//! recompute status. Failed writes are retried with backoff ([`control`]). Each publish is
//! wrapped in the scraper's grants ([`crate::grants`]): widened before, narrowed after.

mod control;
mod reconcile;
mod stores;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kubeprof_crds::constants::LEADER_LEASE;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    compile::access::AccessNames,
    grants::Grants,
    leader::{self, LeaseSettings},
    metrics::Metrics,
    owner::Owner,
};
use reconcile::Reconciler;
use stores::{AccessWatch, Stores};

/// First delay before a failed write is retried (it doubles per failure, plus jitter).
pub(crate) const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest delay between retries of a failed write, before jitter (which at most doubles it).
pub(crate) const RETRY_CAP: Duration = Duration::from_secs(30);

/// Knobs of the runtime.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Namespace of the shards, health reports and Lease.
    pub namespace: String,
    /// This replica's identity in the Lease and in Events.
    pub identity: String,
    /// Lease duration.
    pub lease_duration: Duration,
    /// Lease renewal period.
    pub renew_every: Duration,
    /// Wait after a change before reconciling, to coalesce bursts.
    pub debounce: Duration,
    /// Reconcile at least this often even without changes.
    pub resync: Duration,
    /// First delay before a failed write is retried.
    pub retry_first: Duration,
    /// Longest delay between retries, before jitter.
    pub retry_cap: Duration,
    /// The scraper's ServiceAccount (in `namespace`), granted its named objects.
    pub scraper_service_account: String,
    /// The eBPF DaemonSet's ServiceAccount, when one is deployed.
    pub ebpf_service_account: Option<String>,
    /// Grant it `get` on the Secrets its jobs and sinks refer to.
    pub scraper_secrets: bool,
    /// The cluster-scoped owner of the Roles and RoleBindings written for it.
    pub owner_cluster_role: Option<String>,
    /// Owner of the objects the operator creates (shards, the Lease).
    pub owner: Owner,
}

/// Why the runtime stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// A store's writer went away before it was filled.
    #[error("the {0} watch stopped before its first list completed")]
    StoreNotReady(&'static str),
}

/// What wakes the loop.
#[derive(Debug, Default)]
pub(crate) struct Triggers {
    /// Something compile reads changed.
    pub inputs: Notify,
    /// A scrape-health report changed.
    pub health: Notify,
}

/// Runs until `shutdown`: watches, elects, reconciles. `ready` is set once every store is
/// filled (a replica that is not the leader is ready too: it is a warm standby).
pub(crate) async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    ready: impl Fn(bool),
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let triggers = Arc::new(Triggers::default());
    let names = AccessNames {
        namespace: settings.namespace.clone(),
        service_account: settings.scraper_service_account.clone(),
        ebpf_service_account: settings.ebpf_service_account.clone(),
        owner: None,
    };
    let access = AccessWatch {
        name: names.object_name(),
        cluster_wide: settings.scraper_secrets,
        selector: names.selector(),
    };
    let stores = Stores::watch(&client, &settings.namespace, &access, &metrics, &triggers);
    if !stores.filled(&shutdown).await? {
        return Ok(());
    }
    ready(true);
    let (leading, election) = leader::spawn(
        Api::<Lease>::namespaced(client.clone(), &settings.namespace),
        LeaseSettings {
            name: LEADER_LEASE.into(),
            identity: settings.identity.clone(),
            lease_duration: settings.lease_duration,
            renew_every: settings.renew_every,
            owner: settings.owner.clone(),
        },
        shutdown.clone(),
    );
    let grants = Grants::new(
        client.clone(),
        names,
        settings.owner_cluster_role.clone(),
        metrics.clone(),
    );
    let reconciler = Reconciler::new(
        client,
        &settings.namespace,
        &settings.identity,
        grants,
        settings.scraper_secrets,
        metrics.clone(),
    )
    .with_owner(settings.owner.clone());
    control::run(
        &stores, leading, &triggers, reconciler, &settings, &metrics, &shutdown,
    )
    .await;
    let _ = election.await;
    Ok(())
}
