//! The operator's runtime: watches feed reflector stores; any significant change triggers one
//! reconciliation of everything (read stores -> compile -> publish shards -> write status).
//!
//! One global reconciliation rather than one per object: compile is a join over all objects (a
//! policy change touches every namespace it governs, a pod may be claimed by a target and by its
//! annotations), it runs in well under a second at 10,000 pods, and the writes it implies are
//! diffed against what is published, so an unchanged object is never written. Bursts of changes
//! are coalesced by a short debounce. Scrape-health changes re-use the last compile result and
//! only recompute status.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{Hash, Hasher},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{ConfigMap, Namespace, Pod},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{PartialObjectMeta, Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        WatchStreamExt,
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        reflector::{self, Store},
        watcher::{self, Event},
    },
};
use kubeprof_crds::{
    ProfilingPolicy, ProfilingTarget, conditions,
    constants::{COMPONENT_HEALTH, COMPONENT_JOBS, COMPONENT_LABEL, LEADER_LEASE},
    health::{HEALTH_DATA_KEY, HealthReport, origin_key},
    job::{JobOrigin, OriginKind},
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    apply::{Publisher, stale_health_reports},
    compile::{Compiled, Inputs, PolicyFacts, PolicyInput, TargetFacts, TargetInput, compile},
    index,
    leader::{self, LeaseSettings},
    metrics::Metrics,
    status::{self, HealthIndex},
};

/// Knobs of the runtime.
#[derive(Clone, Debug)]
pub struct Settings {
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
}

/// Why the runtime stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A store's writer went away before it was filled.
    #[error("the {0} watch stopped before its first list completed")]
    StoreNotReady(&'static str),
}

#[derive(Debug, Default)]
struct Triggers {
    inputs: Notify,
    health: Notify,
}

struct Stores {
    policies: Store<DeserializeGuard<ProfilingPolicy>>,
    targets: Store<DeserializeGuard<ProfilingTarget>>,
    pods: index::PodIndex,
    namespaces: Store<Namespace>,
    shards: Store<PartialObjectMeta<ConfigMap>>,
    health: Store<ConfigMap>,
}

/// Runs a reflector for `api` in the background; `significant` decides which events trigger.
fn reflect<K, S>(
    name: &'static str,
    stream: S,
    metrics: &Metrics,
    notify: impl Fn() + Send + 'static,
    mut significant: impl FnMut(&Event<K>) -> bool + Send + 'static,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let stream = reflector::reflector(writer, stream);
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(e) => {
                    if significant(&e) {
                        notify();
                    }
                }
                Err(e) => {
                    tracing::warn!(resource = name, error = %e, "watch failed; retrying with backoff");
                    metrics
                        .watch_restarts
                        .get_or_create(&crate::metrics::KindLabels { kind: name.into() })
                        .inc();
                }
            }
        }
    });
    store
}

/// For custom resources: only spec changes (a new generation), labels, creations and deletions
/// matter; status writes (our own, mostly) do not.
fn generation_filter<K: Resource>() -> impl FnMut(&Event<K>) -> bool + Send {
    fn key_and_fingerprint<K: Resource>(o: &K) -> (String, (Option<i64>, u64)) {
        let meta = o.meta();
        let key = format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or(""),
            meta.name.as_deref().unwrap_or("")
        );
        let mut h = std::collections::hash_map::DefaultHasher::new();
        meta.labels.hash(&mut h);
        (key, (meta.generation, h.finish()))
    }
    let mut seen: HashMap<String, (Option<i64>, u64)> = HashMap::new();
    move |e| match e {
        Event::Apply(o) => {
            let (key, fp) = key_and_fingerprint(o);
            seen.insert(key, fp) != Some(fp)
        }
        Event::InitApply(o) => {
            let (key, fp) = key_and_fingerprint(o);
            seen.insert(key, fp);
            false
        }
        Event::Delete(o) => {
            seen.remove(&key_and_fingerprint(o).0);
            true
        }
        Event::Init => false,
        Event::InitDone => true,
    }
}

/// Runs the pod watch into a [`index::PodIndex`]; only changes of what compile reads trigger.
fn index_pods<S>(
    stream: S,
    metrics: &Metrics,
    notify: impl Fn() + Send + 'static,
) -> index::PodIndex
where
    S: Stream<Item = Result<Event<Pod>, watcher::Error>> + Send + 'static,
{
    let index = index::PodIndex::default();
    let writer = index.clone();
    let metrics = metrics.clone();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        let mut relist = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(e) => {
                    if writer.apply(e, &mut relist) {
                        notify();
                    }
                }
                Err(e) => {
                    tracing::warn!(resource = "pods", error = %e, "watch failed; retrying with backoff");
                    metrics
                        .watch_restarts
                        .get_or_create(&crate::metrics::KindLabels {
                            kind: "pods".into(),
                        })
                        .inc();
                }
            }
        }
    });
    index
}

fn always<K>(e: &Event<K>) -> bool {
    !matches!(e, Event::Init | Event::InitApply(_))
}

/// Runs until `shutdown`: watches, elects, reconciles. `ready` is set once every store is
/// filled (a replica that is not the leader is ready too: it is a warm standby).
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    ready: impl Fn(bool),
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let triggers = Arc::new(Triggers::default());
    let cfg = watcher::Config::default;
    let t = triggers.clone();
    let on_inputs = move || t.inputs.notify_one();
    let stores = Stores {
        policies: reflect(
            "profilingpolicies",
            watcher::watcher(
                Api::<DeserializeGuard<ProfilingPolicy>>::all(client.clone()),
                cfg(),
            )
            .default_backoff(),
            &metrics,
            on_inputs.clone(),
            generation_filter(),
        ),
        targets: reflect(
            "profilingtargets",
            watcher::watcher(
                Api::<DeserializeGuard<ProfilingTarget>>::all(client.clone()),
                cfg(),
            )
            .default_backoff(),
            &metrics,
            on_inputs.clone(),
            generation_filter(),
        ),
        pods: index_pods(
            watcher::watcher(Api::<Pod>::all(client.clone()), cfg()).default_backoff(),
            &metrics,
            on_inputs.clone(),
        ),
        namespaces: reflect(
            "namespaces",
            watcher::watcher(Api::<Namespace>::all(client.clone()), cfg())
                .default_backoff()
                .modify(index::strip_namespace),
            &metrics,
            on_inputs.clone(),
            always,
        ),
        shards: reflect(
            "shards",
            // Metadata only: the content hash annotation says what a shard holds.
            watcher::watcher(
                Api::<PartialObjectMeta<ConfigMap>>::namespaced(
                    client.clone(),
                    &settings.namespace,
                ),
                cfg().labels(&format!("{COMPONENT_LABEL}={COMPONENT_JOBS}")),
            )
            .default_backoff()
            .modify(|m| m.metadata.managed_fields = None),
            &metrics,
            // Someone else changed or deleted a shard: put it back.
            on_inputs.clone(),
            always,
        ),
        health: {
            let t = triggers.clone();
            reflect(
                "health",
                watcher::watcher(
                    Api::<ConfigMap>::namespaced(client.clone(), &settings.namespace),
                    cfg().labels(&format!("{COMPONENT_LABEL}={COMPONENT_HEALTH}")),
                )
                .default_backoff()
                .modify(index::strip_config_map),
                &metrics,
                move || t.health.notify_one(),
                always,
            )
        },
    };
    macro_rules! wait_ready {
        ($($field:ident),*) => {$(
            tokio::select! {
                r = stores.$field.wait_until_ready() => r.map_err(|_| RunError::StoreNotReady(stringify!($field)))?,
                () = shutdown.cancelled() => return Ok(()),
            }
        )*};
    }
    wait_ready!(policies, targets, namespaces, shards, health);
    tokio::select! {
        () = stores.pods.wait_until_ready() => {}
        () = shutdown.cancelled() => return Ok(()),
    }
    tracing::info!(
        policies = stores.policies.len(),
        targets = stores.targets.len(),
        pods = stores.pods.len(),
        namespaces = stores.namespaces.len(),
        "caches filled"
    );
    ready(true);

    let (mut leading, election) = leader::spawn(
        Api::<Lease>::namespaced(client.clone(), &settings.namespace),
        LeaseSettings {
            name: LEADER_LEASE.into(),
            identity: settings.identity.clone(),
            lease_duration: settings.lease_duration,
            renew_every: settings.renew_every,
        },
        shutdown.clone(),
    );
    let mut reconciler = Reconciler {
        publisher: Publisher::new(client.clone(), &settings.namespace, metrics.clone()),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "kubeprof-operator".into(),
                instance: Some(settings.identity.clone()),
            },
        ),
        client,
        metrics: metrics.clone(),
        facts: None,
        written_status: HashMap::new(),
    };
    let mut inputs_dirty = true;
    let mut health_dirty = true;
    let mut last_full = Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = triggers.inputs.notified() => inputs_dirty = true,
            () = triggers.health.notified() => health_dirty = true,
            changed = leading.changed() => {
                if changed.is_err() { break; }
                let now_leading = *leading.borrow_and_update();
                metrics.leader.set(i64::from(now_leading));
                if now_leading {
                    tracing::info!(identity = %settings.identity, "leading: reconciling");
                    reconciler.reset();
                    inputs_dirty = true;
                } else {
                    tracing::info!(identity = %settings.identity, "standing by");
                }
            }
            () = tokio::time::sleep(settings.resync) => inputs_dirty = true,
        }
        if !*leading.borrow() {
            continue;
        }
        // Coalesce a burst (a rollout, the initial list) into one pass.
        tokio::time::sleep(settings.debounce).await;
        if last_full.elapsed() >= settings.resync {
            inputs_dirty = true;
        }
        if inputs_dirty {
            last_full = Instant::now();
            reconciler.recompile(&stores).await;
        }
        if inputs_dirty || health_dirty {
            reconciler.write_status(&stores).await;
        }
        inputs_dirty = false;
        health_dirty = false;
    }
    let _ = election.await;
    Ok(())
}

/// The status facts of one compile.
#[derive(Debug, Default)]
struct Facts {
    targets: BTreeMap<(String, String), TargetFacts>,
    policies: BTreeMap<String, PolicyFacts>,
    /// The nodes the compile gave a shard (published, or to be retried).
    shard_nodes: BTreeSet<Option<String>>,
}

struct Reconciler {
    client: Client,
    publisher: Publisher,
    recorder: Recorder,
    metrics: Metrics,
    /// What status needs of the last compile (the shards themselves are dropped once
    /// published: at 10,000 pods they are tens of megabytes).
    facts: Option<Arc<Facts>>,
    /// What was last written per object (`kind/ns/name`), so a lagging cache causes no rewrite.
    written_status: HashMap<String, serde_json::Value>,
}

impl Reconciler {
    fn reset(&mut self) {
        self.publisher.reset();
        self.written_status.clear();
    }

    fn inputs(stores: &Stores) -> Inputs {
        Inputs {
            policies: stores
                .policies
                .state()
                .iter()
                .filter_map(|g| g.0.as_ref().ok())
                .map(|p| PolicyInput {
                    name: p.name_any(),
                    spec: p.spec.clone(),
                })
                .collect(),
            targets: stores
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
            pods: stores.pods.snapshot(),
            namespaces: stores
                .namespaces
                .state()
                .iter()
                .map(|n| index::namespace_info(n))
                .collect(),
        }
    }

    #[tracing::instrument(skip_all)]
    async fn recompile(&mut self, stores: &Stores) {
        let started = Instant::now();
        self.metrics.reconciles.inc();
        let inputs = Self::inputs(stores);
        let compiled = match tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            (compile(&inputs), t.elapsed())
        })
        .await
        {
            Ok((c, took)) => {
                self.metrics.compile_duration.observe(took.as_secs_f64());
                Arc::new(c)
            }
            Err(e) => {
                tracing::error!(error = %e, "compile panicked; keeping the published jobs");
                self.metrics.error("compile");
                return;
            }
        };
        let jobs: usize = compiled.shards.values().map(|s| s.jobs.len()).sum();
        for s in compiled.shards.values() {
            self.metrics.jobs_per_shard.observe(s.jobs.len() as f64);
        }
        self.metrics
            .jobs
            .set(i64::try_from(jobs).unwrap_or(i64::MAX));
        self.metrics
            .shards
            .set(i64::try_from(compiled.shards.len()).unwrap_or(i64::MAX));
        match self
            .publisher
            .publish(&compiled.shards, &stores.shards.state())
            .await
        {
            Ok(stats) => {
                if stats.written + stats.deleted > 0 {
                    tracing::info!(
                        jobs,
                        shards = compiled.shards.len(),
                        written = stats.written,
                        deleted = stats.deleted,
                        unchanged = stats.unchanged,
                        "published job shards"
                    );
                }
            }
            // The next trigger or resync retries; the error is counted by kind.
            Err(e) => tracing::warn!(error = %e, "publishing job shards failed; will retry"),
        }
        let Compiled {
            shards,
            targets,
            policies,
        } = Arc::unwrap_or_clone(compiled);
        let shard_nodes = shards.into_keys().collect();
        self.facts = Some(Arc::new(Facts {
            targets,
            policies,
            shard_nodes,
        }));
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
    }

    async fn write_status(&mut self, stores: &Stores) {
        let Some(compiled) = self.facts.clone() else {
            return;
        };
        let reports: Vec<HealthReport> = stores
            .health
            .state()
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
            &compiled.shard_nodes,
            stores
                .health
                .state()
                .iter()
                .filter_map(|cm| cm.metadata.name.as_deref()),
        );
        if !stale.is_empty() {
            let deleted = self.publisher.delete_health_reports(stale).await;
            tracing::info!(deleted, "deleted the health reports of nodes without jobs");
        }
        let health = HealthIndex::new(&reports);
        let now = Timestamp::now();
        let empty = TargetFacts::default();

        for guard in stores.targets.state() {
            let meta = guard.meta().clone();
            let (ns, name) = (
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            );
            let (new, previous) = match &guard.0 {
                Ok(t) => {
                    let facts = compiled
                        .targets
                        .get(&(ns.clone(), name.clone()))
                        .unwrap_or(&empty);
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
                    (
                        serde_json::to_value(&s).unwrap_or_default(),
                        t.status.as_ref().and_then(|p| serde_json::to_value(p).ok()),
                    )
                }
                Err(invalid) => {
                    let conds = status::invalid_conditions(&invalid.error, meta.generation, now);
                    (
                        serde_json::json!({
                            "observedGeneration": meta.generation,
                            "conditions": conds,
                        }),
                        None,
                    )
                }
            };
            let api: Api<DeserializeGuard<ProfilingTarget>> =
                Api::namespaced(self.client.clone(), &ns);
            let reference = guard.object_ref(&());
            self.write_one(
                "target_status",
                &api,
                &format!("pt/{ns}/{name}"),
                &name,
                new,
                previous,
                reference,
            )
            .await;
        }

        for guard in stores.policies.state() {
            let meta = guard.meta().clone();
            let name = meta.name.clone().unwrap_or_default();
            let (new, previous) = match &guard.0 {
                Ok(p) => {
                    let facts = compiled.policies.get(&name).cloned().unwrap_or_default();
                    let s = status::policy_status(&facts, meta.generation, p.status.as_ref(), now);
                    (
                        serde_json::to_value(&s).unwrap_or_default(),
                        p.status.as_ref().and_then(|p| serde_json::to_value(p).ok()),
                    )
                }
                Err(invalid) => (
                    serde_json::json!({
                        "observedGeneration": meta.generation,
                        "conditions": status::invalid_conditions(&invalid.error, meta.generation, now),
                    }),
                    None,
                ),
            };
            let api: Api<DeserializeGuard<ProfilingPolicy>> = Api::all(self.client.clone());
            let reference = guard.object_ref(&());
            self.write_one(
                "policy_status",
                &api,
                &format!("pp/{name}"),
                &name,
                new,
                previous,
                reference,
            )
            .await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_one<K>(
        &mut self,
        kind: &'static str,
        api: &Api<K>,
        key: &str,
        name: &str,
        new: serde_json::Value,
        previous: Option<serde_json::Value>,
        reference: k8s_openapi::api::core::v1::ObjectReference,
    ) where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        if previous.as_ref() == Some(&new) || self.written_status.get(key) == Some(&new) {
            return;
        }
        // A merge patch leaves absent fields alone: clear the optional ones explicitly.
        let mut body = new.clone();
        if let Some(obj) = body.as_object_mut() {
            for field in ["lastScrapeTime", "lastError"] {
                obj.entry(field).or_insert(serde_json::Value::Null);
            }
        }
        match api
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": body })),
            )
            .await
        {
            Ok(_) => {
                self.metrics.status_writes.inc();
                self.written_status.insert(key.to_string(), new.clone());
                self.emit_events(&reference, previous.as_ref(), &new).await;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                self.metrics.error(kind);
                tracing::warn!(object = key, error = %e, "cannot write status");
            }
        }
    }

    /// Events for what a user would want to hear about: degradation (and its reason changing)
    /// and recovery.
    async fn emit_events(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        previous: Option<&serde_json::Value>,
        new: &serde_json::Value,
    ) {
        let find = |v: Option<&serde_json::Value>, t: &str| -> Option<(String, String, String)> {
            v?.get("conditions")?.as_array()?.iter().find_map(|c| {
                (c.get("type")?.as_str()? == t).then(|| {
                    (
                        c.get("status")
                            .and_then(|s| s.as_str())
                            .unwrap_or("")
                            .to_string(),
                        c.get("reason")
                            .and_then(|s| s.as_str())
                            .unwrap_or("")
                            .to_string(),
                        c.get("message")
                            .and_then(|s| s.as_str())
                            .unwrap_or("")
                            .to_string(),
                    )
                })
            })
        };
        let before = find(previous, conditions::DEGRADED);
        let after = find(Some(new), conditions::DEGRADED);
        let event = match (&before, &after) {
            (b, Some((s, reason, message)))
                if s == "True" && b.as_ref().map(|b| (&b.0, &b.1)) != Some((s, reason)) =>
            {
                Some(KubeEvent {
                    type_: EventType::Warning,
                    reason: reason.clone(),
                    note: Some(message.chars().take(1000).collect()),
                    action: "Reconcile".into(),
                    secondary: None,
                })
            }
            (Some((b, _, _)), Some((s, _, _))) if b == "True" && s == "False" => Some(KubeEvent {
                type_: EventType::Normal,
                reason: "Recovered".into(),
                note: Some("all jobs are published and scraping".into()),
                action: "Reconcile".into(),
                secondary: None,
            }),
            _ => None,
        };
        if let Some(event) = event
            && let Err(e) = self.recorder.publish(&event, reference).await
        {
            self.metrics.error("event");
            tracing::debug!(error = %e, "cannot publish event");
        }
    }
}
