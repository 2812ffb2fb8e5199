//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does it: the holder renews
//! the lease every `renew_every`; a candidate takes it over once the record has not changed for
//! `lease_duration` *as measured on the candidate's own clock* (so clock skew between replicas
//! does not matter). Only the leader writes. A leader that cannot renew within the lease
//! duration steps down by itself, before anyone else can take over.
//!
//! Hand-over prefers the warm standby. A leader that shuts down releases the lease (empty
//! holder). A standby watches the Lease between its retries and takes a released lease as soon
//! as the release shows; a replica that finds the lease already released (typically the
//! replacement of the leader that just left, starting up) waits one retry period before taking
//! it. Without both, the replacement pod took the lease from the standby in every real-node
//! run: it started within a second and found the lease free at once, while the standby only
//! looked again at its next two-second retry.
//!
//! Kept rather than `kube-lease-manager` (the one maintained crate for kube 5; the other,
//! `kube-leader-election`, needs kube 4): that one judges expiry by comparing the holder's
//! renew time with the local wall clock (skew-sensitive), keeps reporting leadership while its
//! renewals fail, and a standby sleeps until the old lease's expiry even after a release.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams, WatchEvent, WatchParams},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::owner::Owner;

/// Settings of one elector.
#[derive(Clone, Debug)]
pub(crate) struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a silent holder keeps the lease.
    pub lease_duration: Duration,
    /// How often the holder renews, and candidates retry.
    pub renew_every: Duration,
    /// Owner of the Lease, so that uninstalling the operator deletes it.
    pub owner: Owner,
}

/// Runs the election until `shutdown`; the receiver says whether this replica leads now.
/// On shutdown a leader releases the lease, so a standby takes over as soon as it sees that.
pub(crate) fn spawn(
    api: Api<Lease>,
    settings: LeaseSettings,
    shutdown: CancellationToken,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let handle = tokio::spawn(async move {
        let mut elector = Elector::new(api, settings);
        loop {
            let leading = elector.round().await;
            tx.send_if_modified(|v| {
                let changed = *v != leading;
                *v = leading;
                changed
            });
            let renew_every = elector.settings.renew_every;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(renew_every), if leading => {}
                () = elector.wait_for_release(renew_every), if !leading => {}
            }
        }
        if *tx.borrow() {
            tx.send_replace(false);
            elector.release().await;
        }
    });
    (rx, handle)
}

/// The lease as last seen, and since when (on this replica's clock) it has not changed.
#[derive(Debug)]
struct Observed {
    /// Holder, renew time and resource version.
    record: String,
    since: Instant,
}

#[derive(Debug)]
struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<Observed>,
    /// The resource version of the last lease read, to watch from.
    resource_version: Option<String>,
    /// Whether this replica has seen another replica hold the lease: it is a warm standby.
    saw_other_holder: bool,
    /// When this replica last renewed successfully.
    last_renewed: Option<Instant>,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn holder(lease: &Lease) -> &str {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or_default()
}

impl Elector {
    fn new(api: Api<Lease>, settings: LeaseSettings) -> Self {
        Self {
            api,
            settings,
            observed: None,
            resource_version: None,
            saw_other_holder: false,
            last_renewed: None,
        }
    }

    /// One attempt to acquire or renew; whether this replica leads afterwards.
    async fn round(&mut self) -> bool {
        let me = self.settings.identity.clone();
        let duration_secs = i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(15);
        let lease = match self.api.get_opt(&self.settings.name).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                self.resource_version = None;
                let mut lease = Lease {
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
                self.settings.owner.set_on(&mut lease.metadata);
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
        self.resource_version = lease.metadata.resource_version.clone();
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = holder(&lease).to_string();
        let record = format!(
            "{holder}|{:?}|{}",
            spec.renew_time.as_ref().map(|t| t.0),
            lease.metadata.resource_version.clone().unwrap_or_default()
        );
        let seen_since = match &self.observed {
            Some(o) if o.record == record => o.since,
            _ => {
                let since = Instant::now();
                self.observed = Some(Observed { record, since });
                since
            }
        };
        let held_by_me = holder == me;
        let free = if holder.is_empty() {
            // Released. A warm standby takes it at once; anyone else first gives the standbys
            // one retry period to do so.
            self.saw_other_holder || seen_since.elapsed() >= self.settings.renew_every
        } else {
            seen_since.elapsed() >= self.settings.lease_duration
        };
        if !holder.is_empty() && !held_by_me {
            self.saw_other_holder = true;
        }
        if !held_by_me && !free {
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
        // A Lease created before the operator had an owner gets one.
        self.settings.owner.set_on(&mut next.metadata);
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

    /// Waits `period`, or less if the lease is released or deleted meanwhile (seen by a watch
    /// from the last lease read). Without a watch (an error, or RBAC without `watch` on
    /// leases) this is a plain wait: the next round polls.
    async fn wait_for_release(&self, period: Duration) {
        let deadline = tokio::time::Instant::now() + period;
        if let Some(version) = &self.resource_version {
            let params = WatchParams::default()
                .fields(&format!("metadata.name={}", self.settings.name))
                .timeout(u32::try_from(period.as_secs().max(1)).unwrap_or(u32::MAX))
                .disable_bookmarks();
            let released = async {
                let events = match self.api.watch(&params, version).await {
                    Ok(events) => events,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot watch the leader lease; polling");
                        return false;
                    }
                };
                futures::pin_mut!(events);
                while let Some(event) = events.next().await {
                    match event {
                        Ok(WatchEvent::Modified(l)) if holder(&l).is_empty() => return true,
                        Ok(WatchEvent::Deleted(_)) => return true,
                        Ok(WatchEvent::Error(e)) => {
                            tracing::debug!(error = %e, "leader lease watch ended; polling");
                            return false;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "leader lease watch failed; polling");
                            return false;
                        }
                    }
                }
                false
            };
            if tokio::time::timeout_at(deadline, released).await == Ok(true) {
                tracing::debug!("the leader lease was released");
                return;
            }
        }
        tokio::time::sleep_until(deadline).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        mock::{self, ApiServer},
        owner,
    };
    use http::Method;

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kubeprof/leases/kubeprof-operator";
    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kubeprof/leases";

    type Started = (
        ApiServer,
        watch::Receiver<bool>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    );

    fn start(identity: &str, renew_every: Duration, lease_duration: Duration) -> Started {
        start_owned(identity, renew_every, lease_duration, Owner::none())
    }

    fn start_owned(
        identity: &str,
        renew_every: Duration,
        lease_duration: Duration,
        owner: Owner,
    ) -> Started {
        let (client, server) = mock::client();
        let shutdown = CancellationToken::new();
        let (leading, task) = spawn(
            Api::namespaced(client, "kubeprof"),
            LeaseSettings {
                name: "kubeprof-operator".into(),
                identity: identity.into(),
                lease_duration,
                renew_every,
                owner,
            },
            shutdown.clone(),
        );
        (server, leading, shutdown, task)
    }

    fn lease(holder: Option<&str>, version: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": "kubeprof-operator",
                "namespace": "kubeprof",
                "resourceVersion": version,
            },
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": 15,
                "renewTime": "2025-01-01T00:00:00.000000Z",
                "leaseTransitions": 1,
            },
        })
    }

    /// Waits until the elector says `leading`.
    async fn until(leading: &mut watch::Receiver<bool>, want: bool) {
        tokio::time::timeout(Duration::from_secs(1), leading.wait_for(|l| *l == want))
            .await
            .expect("leadership did not change")
            .expect("elector gone");
    }

    #[tokio::test]
    async fn a_standby_takes_a_released_lease_as_soon_as_the_release_shows() {
        // Retries an hour apart: only the watch can explain a take-over within the test.
        let hour = Duration::from_secs(3600);
        let (mut server, mut leading, shutdown, task) = start("standby", hour, 2 * hour);
        server
            .expect(Method::GET, LEASE)
            .await
            .ok(&lease(Some("old"), "1"));
        let watch = server.expect(Method::GET, LEASES).await;
        for part in [
            "watch=true",
            "resourceVersion=1",
            "fieldSelector=metadata.name%3Dkubeprof-operator",
        ] {
            assert!(watch.uri.contains(part), "{part} not in {}", watch.uri);
        }
        watch.watch_events(&[
            ("MODIFIED", lease(Some("old"), "2")),
            ("MODIFIED", lease(None, "3")),
        ]);
        server
            .expect(Method::GET, LEASE)
            .await
            .ok(&lease(None, "3"));
        let take = server.expect(Method::PUT, LEASE).await;
        assert_eq!(take.body["spec"]["holderIdentity"], "standby");
        assert_eq!(take.body["spec"]["leaseTransitions"], 2);
        assert_eq!(
            take.body["metadata"]["resourceVersion"], "3",
            "a compare-and-swap on the version read"
        );
        take.echo();
        until(&mut leading, true).await;

        // Shutting down releases the lease.
        shutdown.cancel();
        server
            .expect(Method::GET, LEASE)
            .await
            .ok(&lease(Some("standby"), "4"));
        let release = server.expect(Method::PUT, LEASE).await;
        assert_eq!(release.body["spec"].get("holderIdentity"), None);
        release.echo();
        task.await.unwrap_or_default();
        assert!(!*leading.borrow());
    }

    #[tokio::test]
    async fn a_starting_replica_leaves_a_just_released_lease_to_the_standby() {
        let (mut server, leading, shutdown, task) = start(
            "replacement",
            Duration::from_millis(200),
            Duration::from_secs(15),
        );
        server
            .expect(Method::GET, LEASE)
            .await
            .ok(&lease(None, "5"));
        // Not a PUT: the replacement waits, watching.
        let watch = server.expect(Method::GET, LEASES).await;
        assert!(watch.uri.contains("watch=true"), "{}", watch.uri);
        watch.watch_events(&[("MODIFIED", lease(Some("standby"), "6"))]);
        server
            .expect(Method::GET, LEASE)
            .await
            .ok(&lease(Some("standby"), "6"));
        let watch = server.expect(Method::GET, LEASES).await;
        assert!(watch.uri.contains("resourceVersion=6"), "{}", watch.uri);
        assert!(!leading.has_changed().unwrap_or(true), "never led");
        shutdown.cancel();
        drop((watch, server));
        task.await.unwrap_or_default();
    }

    #[tokio::test]
    async fn a_lease_released_for_a_whole_retry_period_is_taken() {
        let (mut server, mut leading, shutdown, task) =
            start("op-1", Duration::from_millis(100), Duration::from_secs(15));
        server
            .expect(Method::GET, LEASE)
            .await
            .ok(&lease(None, "5"));
        server.expect(Method::GET, LEASES).await.watch_events(&[]);
        server
            .expect(Method::GET, LEASE)
            .await
            .ok(&lease(None, "5"));
        let take = server.expect(Method::PUT, LEASE).await;
        assert_eq!(take.body["spec"]["holderIdentity"], "op-1");
        take.echo();
        until(&mut leading, true).await;
        shutdown.cancel();
        server
            .expect(Method::GET, LEASE)
            .await
            .ok(&lease(Some("op-1"), "6"));
        server.expect(Method::PUT, LEASE).await.echo();
        task.await.unwrap_or_default();
    }

    #[tokio::test]
    async fn a_holder_that_stops_renewing_is_replaced_after_the_lease_duration() {
        let (mut server, mut leading, shutdown, task) = start(
            "standby",
            Duration::from_millis(50),
            Duration::from_millis(200),
        );
        // The record never changes: the holder is gone without releasing.
        for _ in 0..100 {
            let call = server.next().await;
            match (call.method.clone(), call.path()) {
                (Method::GET, LEASE) => call.ok(&lease(Some("old"), "7")),
                (Method::GET, LEASES) => call.watch_events(&[]),
                (Method::PUT, LEASE) => {
                    assert_eq!(call.body["spec"]["holderIdentity"], "standby");
                    assert_eq!(call.body["metadata"]["resourceVersion"], "7");
                    call.echo();
                    break;
                }
                (m, p) => panic!("unexpected {m} {p}"),
            }
        }
        until(&mut leading, true).await;
        shutdown.cancel();
        server
            .expect(Method::GET, LEASE)
            .await
            .ok(&lease(Some("standby"), "8"));
        server.expect(Method::PUT, LEASE).await.echo();
        task.await.unwrap_or_default();
    }

    #[tokio::test]
    async fn a_leader_that_cannot_renew_steps_down_before_its_lease_expires() {
        let (mut server, mut leading, shutdown, task) = start(
            "op-1",
            Duration::from_millis(50),
            Duration::from_millis(300),
        );
        server
            .expect(Method::GET, LEASE)
            .await
            .fail(404, "NotFound");
        let create = server.expect(Method::POST, LEASES).await;
        assert_eq!(create.body["spec"]["holderIdentity"], "op-1");
        create.echo();
        until(&mut leading, true).await;
        // The API is unreachable from now on; the leader must notice by itself.
        for _ in 0..100 {
            if !*leading.borrow() {
                break;
            }
            server
                .expect(Method::GET, LEASE)
                .await
                .fail(503, "ServiceUnavailable");
        }
        until(&mut leading, false).await;
        shutdown.cancel();
        drop(server);
        task.await.unwrap_or_default();
    }

    #[tokio::test]
    async fn the_lease_is_owned_by_the_operator_deployment() {
        let (mut server, mut leading, shutdown, task) = start_owned(
            "op-1",
            Duration::from_millis(50),
            Duration::from_secs(15),
            owner::tests::owner(),
        );
        server
            .expect(Method::GET, LEASE)
            .await
            .fail(404, "NotFound");
        let create = server.expect(Method::POST, LEASES).await;
        assert_eq!(
            create.body["metadata"]["ownerReferences"],
            owner::tests::expected_reference()
        );
        create.echo();
        until(&mut leading, true).await;
        // A Lease an operator without an owner made (before an upgrade) gets one at renewal.
        server
            .expect(Method::GET, LEASE)
            .await
            .ok(&lease(Some("op-1"), "2"));
        let renew = server.expect(Method::PUT, LEASE).await;
        assert_eq!(
            renew.body["metadata"]["ownerReferences"],
            owner::tests::expected_reference()
        );
        renew.echo();
        shutdown.cancel();
        drop(server);
        task.await.unwrap_or_default();
    }
}
