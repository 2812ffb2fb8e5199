//! One pass of the loop: read the stores, compile, publish the shards, write the statuses.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Instant,
};

use futures::StreamExt;
use k8s_openapi::{api::core::v1::ObjectReference, jiff::Timestamp};
use kube::{Client, Resource, ResourceExt};
use kubeprof_crds::{
    health::{
        EBPF_HEALTH_DATA_KEY, EbpfReport, HEALTH_DATA_KEY, HealthReport, health_object_name,
        origin_key,
    },
    job::{JobOrigin, OriginKind},
};

use super::stores::Stores;
use crate::{
    compile::{
        Incremental, NamespaceInfo, NodeInfo, Objects, PodKey, PolicyFacts, PolicyInput,
        TargetFacts, TargetInput, access::ScraperAccess,
    },
    grants::{Grants, Observed},
    index,
    metrics::{Failure, Metrics},
    owner::Owner,
    publish::{Built, EarlyWrites, Publisher, payload_config_map, stale_health_reports},
    status::{self, HealthIndex, ObjectKey, Status, StatusWriter, UnreadableStatus},
};

/// Status writes in flight at once.
const CONCURRENT_STATUS_WRITES: usize = 16;

/// What a pass has to do, or (as its result) what failed and must be done again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Work {
    /// Compile and publish (and then write status).
    pub inputs: bool,
    /// Write status.
    pub status: bool,
}

impl Work {
    /// Nothing to do.
    pub(crate) fn any(self) -> bool {
        self.inputs || self.status
    }
}

/// Shards queued from the compile to the writer at most: a few megabytes of ConfigMaps.
const EARLY_QUEUE: usize = 256;

/// A shard object built by the compile, with the Secrets its jobs reference.
struct BuiltShard {
    node: Option<String>,
    cm: k8s_openapi::api::core::v1::ConfigMap,
    secrets: BTreeSet<(String, String)>,
}

/// The status facts of one compile.
#[derive(Debug, Default)]
struct Facts {
    targets: BTreeMap<(String, String), Arc<TargetFacts>>,
    policies: BTreeMap<String, PolicyFacts>,
    /// The nodes the compile gave a shard (published, or to be retried).
    shard_nodes: BTreeSet<Option<String>>,
}

/// Compiles, publishes and writes status; remembers what it wrote.
#[derive(Debug)]
pub(crate) struct Reconciler {
    publisher: Publisher,
    grants: Grants,
    /// Grant the scraper the Secrets its jobs refer to.
    grant_secrets: bool,
    statuses: StatusWriter,
    metrics: Metrics,
    /// The compile, kept up to date change by change (`None`: start over from every pod, at
    /// first and after a compile panicked).
    compiled: Option<Incremental>,
    /// What status needs of the last compile.
    facts: Option<Arc<Facts>>,
    /// The Secrets the jobs of each node's shard refer to (every node with a shard).
    node_secrets: BTreeMap<Option<String>, BTreeSet<(String, String)>>,
    /// When the last compile's sampling rotates (since the Unix epoch).
    next_rotation: Option<std::time::Duration>,
    /// Namespaces with annotated pods but no policy, as last reported.
    ungoverned_namespaces: BTreeSet<String>,
}

impl Reconciler {
    /// A reconciler publishing into `namespace`, reporting Events as `identity`.
    pub(crate) fn new(
        client: Client,
        namespace: &str,
        identity: &str,
        grants: Grants,
        grant_secrets: bool,
        metrics: Metrics,
    ) -> Self {
        Self {
            publisher: Publisher::new(client.clone(), namespace, metrics.clone()),
            grants,
            grant_secrets,
            statuses: StatusWriter::new(client, identity, metrics.clone()),
            metrics,
            compiled: None,
            facts: None,
            node_secrets: BTreeMap::new(),
            next_rotation: None,
            ungoverned_namespaces: BTreeSet::new(),
        }
    }

    /// When the published jobs' sampling chooses other pods: the loop compiles again then.
    pub(crate) fn next_rotation(&self) -> Option<std::time::SystemTime> {
        self.next_rotation
            .and_then(|d| std::time::UNIX_EPOCH.checked_add(d))
    }

    /// The same reconciler, making `owner` the owner of the shards it publishes.
    pub(crate) fn with_owner(mut self, owner: Owner) -> Self {
        self.publisher = self.publisher.with_owner(owner);
        self
    }

    /// Forgets what was written (after regaining leadership: another replica may have written
    /// in between).
    pub(crate) fn reset(&mut self) {
        self.publisher.reset();
        self.statuses.reset();
    }

    /// Does `work`; returns the part that failed (every write was attempted and logged).
    pub(crate) async fn pass(&mut self, stores: &Stores, work: Work) -> Work {
        let mut failed = Work::default();
        if work.inputs {
            failed.inputs = !self.recompile(stores).await;
        }
        if work.any() {
            failed.status = !self.write_status(stores).await;
        }
        failed
    }

    /// Everything compile reads but the pods.
    fn objects(
        stores: &Stores,
    ) -> (
        Vec<PolicyInput>,
        Vec<TargetInput>,
        Vec<NamespaceInfo>,
        Vec<NodeInfo>,
    ) {
        (
            stores
                .policies
                .state()
                .iter()
                .filter_map(|g| g.0.as_ref().ok())
                .map(|p| PolicyInput {
                    name: p.name_any(),
                    spec: p.spec.clone(),
                })
                .collect(),
            stores
                .targets
                .state()
                .iter()
                .filter_map(|g| g.0.as_ref().ok())
                .map(|t| TargetInput {
                    namespace: t.namespace().unwrap_or_default(),
                    name: t.name_any(),
                    spec: t.spec.clone(),
                })
                .collect(),
            stores
                .namespaces
                .state()
                .iter()
                .map(|n| index::namespace_info(n))
                .collect(),
            stores
                .nodes
                .state()
                .iter()
                .map(|n| index::node_info(n))
                .collect(),
        )
    }

    /// Brings the compile up to date and publishes what changed, granting the scrapers what
    /// the new jobs need before and revoking what they no longer need after; whether all of it
    /// succeeded (a compile that panicked keeps the published jobs and is not retried: it would
    /// panic again; the next change starts over from every pod).
    #[tracing::instrument(skip_all)]
    async fn recompile(&mut self, stores: &Stores) -> bool {
        let started = Instant::now();
        self.metrics.reconciles.inc();
        let (policies, targets, namespaces, nodes) = Self::objects(stores);
        let compiled = self.compiled.take();
        let changes = stores.pods.changes(compiled.is_none());
        let mut pods = changes.pods;
        if changes.all {
            // After a re-list: what is not listed any more is gone.
            let listed: std::collections::HashSet<&PodKey> = pods.iter().map(|(k, _)| k).collect();
            let gone: Vec<PodKey> = compiled
                .iter()
                .flat_map(|c| c.pod_keys())
                .filter(|k| !listed.contains(k))
                .collect();
            pods.extend(gone.into_iter().map(|k| (k, None)));
        }
        if compiled.is_none() {
            self.node_secrets.clear();
        }
        let namespace = self.publisher.namespace().to_owned();
        let owner = self.publisher.owner().clone();
        // Shards go to the writer as they are built (see `EarlyWrites`).
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<BuiltShard>(EARLY_QUEUE);
        let compiling = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let mut engine = compiled.unwrap_or_default();
            let mut built = Built::default();
            let mut secrets = Vec::new();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            engine.update(
                Objects {
                    policies: &policies,
                    targets: &targets,
                    namespaces: &namespaces,
                    nodes: &nodes,
                },
                pods,
                now,
                |node, shard| {
                    let cm = shard.map(|s| {
                        payload_config_map(&namespace, node.as_deref(), &s.payload, &owner)
                    });
                    built.record(node, cm.as_ref());
                    let refs = shard.map(|s| s.secrets.clone());
                    if let (Some(cm), Some(refs)) = (cm, &refs) {
                        let shard = BuiltShard {
                            node: node.clone(),
                            cm,
                            secrets: refs.clone(),
                        };
                        if let Err(back) = ready_tx.blocking_send(shard) {
                            built.keep(back.0.cm);
                        }
                    }
                    secrets.push((node.clone(), refs));
                },
            );
            (engine, built, secrets, t.elapsed())
        });
        // Write each shard whose scraper already has its grants while the compile goes on.
        let granted = self.grants.granted(&stores.roles.state());
        let reports: BTreeSet<String> = stores
            .health
            .state()
            .iter()
            .map(|cm| cm.name_any())
            .collect();
        // A Role grants nothing without its RoleBinding.
        let bound: BTreeSet<String> = stores
            .role_bindings
            .state()
            .iter()
            .filter_map(|b| b.namespace())
            .collect();
        let own_namespace = self.publisher.namespace().to_owned();
        let mut early = EarlyWrites::new(&mut self.publisher, &stores.shards.state());
        while let Some(shard) = ready_rx.recv().await {
            let report = health_object_name(shard.node.as_deref());
            let ready = reports.contains(&report)
                && granted.health_reports.contains(&report)
                && bound.contains(&own_namespace)
                && (!self.grant_secrets
                    || shard.secrets.iter().all(|(ns, name)| {
                        bound.contains(ns)
                            && granted.secrets.get(ns).is_some_and(|s| s.contains(name))
                    }));
            early.offer(shard.cm, ready).await;
        }
        let (early_stats, early_error, deferred) = early.finish().await;
        if let Some(e) = &early_error {
            tracing::warn!(error = %e, "publishing a job shard failed; retrying it after the compile");
        }
        let result = compiling.await.map(|(engine, mut built, secrets, took)| {
            for cm in deferred {
                built.keep(cm);
            }
            (engine, built, secrets, took)
        });
        let compiled_in = started.elapsed();
        let (engine, built) = match result {
            Ok((engine, built, secrets, took)) => {
                self.metrics.compile_duration.observe(took.as_secs_f64());
                for (node, refs) in secrets {
                    match refs {
                        Some(refs) => self.node_secrets.insert(node, refs),
                        None => self.node_secrets.remove(&node),
                    };
                }
                (self.compiled.insert(engine), built)
            }
            Err(e) => {
                tracing::error!(error = %e, "compile panicked; keeping the published jobs");
                // Not retried at the (now past) rotation either: it would panic again.
                self.next_rotation = None;
                self.metrics.error(Failure::Compile);
                return true;
            }
        };
        let sizes = engine.shard_sizes();
        let jobs: usize = sizes.values().sum();
        self.metrics
            .jobs
            .set(i64::try_from(jobs).unwrap_or(i64::MAX));
        self.metrics
            .shards
            .set(i64::try_from(sizes.len()).unwrap_or(i64::MAX));
        for (node, _) in &built.fingerprints {
            if let Some(n) = sizes.get(node) {
                self.metrics.jobs_per_shard.observe(*n as f64);
            }
        }
        // What the scrapers of every shard need (kept per node: only recomputed shards change).
        let mut access = ScraperAccess::default();
        for (node, refs) in &self.node_secrets {
            access
                .health_reports
                .insert(health_object_name(node.as_deref()));
            if self.grant_secrets {
                for (ns, name) in refs {
                    access
                        .secrets
                        .entry(ns.clone())
                        .or_default()
                        .insert(name.clone());
                }
            }
        }
        // Grant first: a scraper must never see a job whose Secrets it may not read yet, nor
        // have jobs and no health report to write.
        let roles = stores.roles.state();
        let bindings = stores.role_bindings.state();
        let observed = Observed {
            roles: &roles,
            bindings: &bindings,
            reports: stores
                .health
                .state()
                .iter()
                .map(|cm| cm.name_any())
                .collect(),
            namespaces: stores
                .namespaces
                .state()
                .iter()
                .map(|n| n.name_any())
                .collect(),
        };
        let (widened, granted) = self.grants.widen(&access, &observed).await;
        if let Err(e) = &granted {
            tracing::warn!(error = %e, "granting the scrapers access failed");
        }
        let namespace = self.publisher.namespace().to_owned();
        let owner = self.publisher.owner().clone();
        let engine: &Incremental = engine;
        let publishing = Instant::now();
        let recomputed = built.fingerprints.len();
        let published = match self
            .publisher
            .publish_changes(built, &stores.shards.state(), |node| {
                engine
                    .shard(node)
                    .map(|s| payload_config_map(&namespace, node.as_deref(), &s.payload, &owner))
            })
            .await
        {
            Ok(mut stats) => {
                stats.written += early_stats.written;
                stats.unchanged = stats.unchanged.saturating_sub(early_stats.written);
                if stats.written + stats.deleted > 0 {
                    tracing::info!(
                        jobs,
                        shards = sizes.len(),
                        written = stats.written,
                        deleted = stats.deleted,
                        unchanged = stats.unchanged,
                        recomputed,
                        compile_ms = compiled_in.as_millis(),
                        publish_ms = publishing.elapsed().as_millis(),
                        "published job shards"
                    );
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "publishing job shards failed");
                false
            }
        };
        // Revoke last, and only what the published jobs no longer need: if publishing failed,
        // scrapers may still run the old jobs.
        let revoked = if published {
            match self.grants.narrow(&access, &observed, &widened).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "revoking the scrapers' access failed");
                    false
                }
            }
        } else {
            true
        };
        let published = published && granted.is_ok() && revoked;
        self.next_rotation = engine.next_rotation();
        let ungoverned = engine.ungoverned_pods();
        self.facts = Some(Arc::new(Facts {
            targets: engine.target_facts().clone(),
            policies: engine.policy_facts().clone(),
            shard_nodes: sizes.into_keys().cloned().collect(),
        }));
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.observe_heap();
        self.report_ungoverned(ungoverned);
        published
    }

    /// Annotated pods no policy governs have no status to show it: a gauge, and a warning
    /// naming their namespaces whenever that list changes.
    fn report_ungoverned(&mut self, pods: BTreeMap<String, usize>) {
        let total: usize = pods.values().sum();
        self.metrics
            .ungoverned_pods
            .set(i64::try_from(total).unwrap_or(i64::MAX));
        let namespaces: BTreeSet<String> = pods.into_keys().collect();
        if namespaces != self.ungoverned_namespaces {
            if !namespaces.is_empty() {
                tracing::warn!(
                    pods = total,
                    namespaces = ?namespaces,
                    "annotated pods in namespaces no ProfilingPolicy governs get no jobs: \
                     their profiles would go nowhere"
                );
            }
            self.ungoverned_namespaces = namespaces;
        }
    }

    /// Deletes stale health reports and writes every status that changed; whether all of it
    /// succeeded.
    async fn write_status(&mut self, stores: &Stores) -> bool {
        let Some(facts) = self.facts.clone() else {
            return true;
        };
        let mut ok = true;
        let health_objects = stores.health.state();
        let reports: Vec<HealthReport> = health_objects
            .iter()
            .filter_map(|cm| {
                let json = cm.data.as_ref()?.get(HEALTH_DATA_KEY)?;
                match HealthReport::from_json(json) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(object = %cm.name_any(), error = %e, "ignoring an unreadable health report");
                        None
                    }
                }
            })
            .collect();
        // Runs on health changes too: a scraper that loses its last jobs writes one more report
        // after its shard went, and that one must go as well.
        let stale = stale_health_reports(
            &facts.shard_nodes,
            health_objects
                .iter()
                .filter_map(|cm| cm.metadata.name.as_deref()),
        );
        if !stale.is_empty() {
            match self.publisher.delete_health_reports(stale.clone()).await {
                Ok(deleted) => {
                    tracing::info!(deleted, "deleted the health reports of nodes without jobs");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot delete a stale health report");
                    ok = false;
                }
            }
        }
        let unowned: Vec<String> = health_objects
            .iter()
            .filter(|cm| self.publisher.owner().missing_on(&cm.metadata))
            .filter_map(|cm| cm.metadata.name.clone())
            .filter(|name| !stale.contains(name))
            .collect();
        if !unowned.is_empty() {
            match self.publisher.own_health_reports(unowned).await {
                Ok(owned) => tracing::debug!(owned, "health reports owned by the operator"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot own a health report");
                    ok = false;
                }
            }
        }
        let mut health = HealthIndex::new(&reports);
        if self.grants.ebpf_deployed() {
            let ebpf_reports: Vec<EbpfReport> = health_objects
                .iter()
                .filter_map(|cm| {
                    let json = cm.data.as_ref()?.get(EBPF_HEALTH_DATA_KEY)?;
                    match EbpfReport::from_json(json) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            tracing::warn!(object = %cm.name_any(), error = %e, "ignoring an unreadable eBPF report");
                            None
                        }
                    }
                })
                .collect();
            health = health.with_ebpf_reports(&ebpf_reports);
        }
        // Whole seconds: what the API stores of a condition's time, so that a status computed
        // again compares equal to the one written.
        let now = Timestamp::now();
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
        let empty = TargetFacts::default();

        // Computed first, then written a few at a time: at 200 targets, one by one they held
        // the next compile back by seconds while the API server was busy.
        let mut writes: Vec<(ObjectKey, ObjectReference, Status, Option<Status>)> = Vec::new();
        for guard in stores.targets.state() {
            let meta = guard.meta();
            let (ns, name) = (
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            );
            let (new, previous) = match &guard.0 {
                Ok(t) => {
                    let facts = facts
                        .targets
                        .get(&(ns.clone(), name.clone()))
                        .map_or(&empty, |f| &**f);
                    let key = origin_key(&JobOrigin {
                        kind: OriginKind::ProfilingTarget,
                        namespace: ns.clone(),
                        name: name.clone(),
                    });
                    let s = status::target_status(
                        facts,
                        &key,
                        &health,
                        meta.generation,
                        t.status.as_ref(),
                        now,
                    );
                    (Status::Target(s), t.status.clone().map(Status::Target))
                }
                Err(invalid) => (unreadable(&invalid.error, meta.generation, now), None),
            };
            let key = ObjectKey::Target {
                namespace: ns,
                name,
            };
            writes.push((key, guard.object_ref(&()), new, previous));
        }

        for guard in stores.policies.state() {
            let meta = guard.meta();
            let name = meta.name.clone().unwrap_or_default();
            let (new, previous) = match &guard.0 {
                Ok(p) => {
                    let facts = facts.policies.get(&name).cloned().unwrap_or_default();
                    let s = status::policy_status(
                        &facts,
                        &health,
                        meta.generation,
                        p.status.as_ref(),
                        now,
                    );
                    (Status::Policy(s), p.status.clone().map(Status::Policy))
                }
                Err(invalid) => (unreadable(&invalid.error, meta.generation, now), None),
            };
            writes.push((
                ObjectKey::Policy { name },
                guard.object_ref(&()),
                new,
                previous,
            ));
        }
        let statuses = &self.statuses;
        let results: Vec<bool> = futures::stream::iter(writes)
            .map(|(key, reference, new, previous)| async move {
                match statuses.write(key, &reference, new, previous).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(object = %e.object, error = %e, "cannot write status");
                        false
                    }
                }
            })
            .buffer_unordered(CONCURRENT_STATUS_WRITES)
            .collect()
            .await;
        ok && results.into_iter().all(|r| r)
    }
}

fn unreadable(error: &str, generation: Option<i64>, now: Timestamp) -> Status {
    Status::Unreadable(UnreadableStatus {
        observed_generation: generation,
        conditions: status::invalid_conditions(error, generation, now),
    })
}
