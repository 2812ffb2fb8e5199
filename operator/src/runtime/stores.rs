//! The caches the operator reads: one watch per resource, trimmed to what compile and status
//! read, each telling the loop when something it cares about changed.

use std::{collections::HashMap, hash::Hash};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Node, Pod},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, Resource,
    api::PartialObjectMeta,
    core::DeserializeGuard,
    runtime::{
        Predicate, WatchStreamExt, predicates,
        reflector::{self, Store},
        watcher::{self, Event},
    },
};
use kubeprof_crds::{
    ProfilingPolicy, ProfilingTarget,
    constants::{COMPONENT_HEALTH, COMPONENT_JOBS, COMPONENT_LABEL},
};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::{RunError, Triggers};
use crate::{
    index::{self, PodIndex},
    metrics::{Metrics, Watched},
};

/// What the loop reads.
pub(crate) struct Stores {
    pub policies: Store<DeserializeGuard<ProfilingPolicy>>,
    pub targets: Store<DeserializeGuard<ProfilingTarget>>,
    pub pods: PodIndex,
    pub namespaces: Store<Namespace>,
    /// Nodes, name and labels only (the eBPF node selectors read them).
    pub nodes: Store<Node>,
    /// The published shards, metadata only: the content hash annotation says what one holds.
    pub shards: Store<PartialObjectMeta<ConfigMap>>,
    /// The scrapers' health reports.
    pub health: Store<ConfigMap>,
    /// The Roles granting the scraper its named objects.
    pub roles: Store<Role>,
    /// Their RoleBindings, metadata only (their content never changes).
    pub role_bindings: Store<PartialObjectMeta<RoleBinding>>,
}

/// Where the Roles granting the scraper its named objects are watched.
#[derive(Clone, Debug)]
pub(crate) struct AccessWatch {
    /// Their name (a field selector: the operator may list only that name).
    pub name: String,
    /// In every namespace (the scraper reads referenced Secrets), or only the operator's.
    pub cluster_wide: bool,
    /// Only this operator's (see [`crate::compile::access::ACCESS_FOR_LABEL`]).
    pub selector: String,
}

impl Stores {
    /// Starts every watch in the background. Changes of inputs notify `triggers.inputs`, of
    /// health reports `triggers.health`.
    pub(crate) fn watch(
        client: &Client,
        namespace: &str,
        access: &AccessWatch,
        metrics: &Metrics,
        triggers: &std::sync::Arc<Triggers>,
    ) -> Self {
        let cfg = watcher::Config::default;
        let by_name = || {
            cfg()
                .fields(&format!("metadata.name={}", access.name))
                .labels(&access.selector)
        };

        let t = triggers.clone();
        let on_inputs = move || t.inputs.notify_one();
        let t = triggers.clone();
        let on_health = move || t.health.notify_one();
        Self {
            policies: reflect(
                Watched::Policies,
                watcher::watcher(Api::all(client.clone()), cfg()).default_backoff(),
                metrics,
                on_inputs.clone(),
                spec_or_labels_changed(),
            ),
            targets: reflect(
                Watched::Targets,
                watcher::watcher(Api::all(client.clone()), cfg()).default_backoff(),
                metrics,
                on_inputs.clone(),
                spec_or_labels_changed(),
            ),
            pods: index_pods(
                watcher::watcher(Api::<Pod>::all(client.clone()), cfg()).default_backoff(),
                metrics,
                on_inputs.clone(),
            ),
            namespaces: reflect(
                Watched::Namespaces,
                watcher::watcher(Api::<Namespace>::all(client.clone()), cfg())
                    .default_backoff()
                    .modify(index::strip_namespace),
                metrics,
                on_inputs.clone(),
                always,
            ),
            // Only label changes matter: a node's status heartbeats trigger nothing.
            nodes: reflect(
                Watched::Nodes,
                watcher::watcher(Api::<Node>::all(client.clone()), cfg())
                    .default_backoff()
                    .modify(index::strip_node),
                metrics,
                on_inputs.clone(),
                labels_changed(),
            ),
            shards: reflect(
                Watched::Shards,
                watcher::watcher(
                    Api::<PartialObjectMeta<ConfigMap>>::namespaced(client.clone(), namespace),
                    cfg().labels(&format!("{COMPONENT_LABEL}={COMPONENT_JOBS}")),
                )
                .default_backoff()
                .modify(|m| m.metadata.managed_fields = None),
                metrics,
                // Someone else changed or deleted a shard: put it back.
                on_inputs.clone(),
                always,
            ),
            health: reflect(
                Watched::Health,
                watcher::watcher(
                    Api::<ConfigMap>::namespaced(client.clone(), namespace),
                    cfg().labels(&format!("{COMPONENT_LABEL}={COMPONENT_HEALTH}")),
                )
                .default_backoff()
                .modify(index::strip_config_map),
                metrics,
                on_health,
                always,
            ),
            // Someone else changed or deleted one (a `helm upgrade`, a person): put it back.
            roles: reflect(
                Watched::Roles,
                watcher::watcher(access.api(client, namespace), by_name())
                    .default_backoff()
                    .modify(|r: &mut Role| r.metadata.managed_fields = None),
                metrics,
                on_inputs.clone(),
                always,
            ),
            role_bindings: reflect(
                Watched::RoleBindings,
                watcher::watcher(access.api(client, namespace), by_name())
                    .default_backoff()
                    .modify(|m: &mut PartialObjectMeta<RoleBinding>| {
                        m.metadata.managed_fields = None;
                    }),
                metrics,
                on_inputs,
                always,
            ),
        }
    }

    /// Waits until every store holds its first list; `false` if `shutdown` came first.
    pub(crate) async fn filled(&self, shutdown: &CancellationToken) -> Result<bool, RunError> {
        macro_rules! wait_ready {
            ($($field:ident),*) => {$(
                tokio::select! {
                    r = self.$field.wait_until_ready() => {
                        r.map_err(|_| RunError::StoreNotReady(stringify!($field)))?
                    }
                    () = shutdown.cancelled() => return Ok(false),
                }
            )*};
        }
        wait_ready!(
            policies,
            targets,
            namespaces,
            nodes,
            shards,
            health,
            roles,
            role_bindings
        );
        tokio::select! {
            () = self.pods.wait_until_ready() => {}
            () = shutdown.cancelled() => return Ok(false),
        }
        tracing::info!(
            policies = self.policies.len(),
            targets = self.targets.len(),
            pods = self.pods.len(),
            namespaces = self.namespaces.len(),
            nodes = self.nodes.len(),
            "caches filled"
        );
        Ok(true)
    }
}

impl AccessWatch {
    fn api<K>(&self, client: &Client, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        if self.cluster_wide {
            Api::all(client.clone())
        } else {
            Api::namespaced(client.clone(), namespace)
        }
    }
}

/// Runs a reflector in the background; `significant` decides which events trigger.
fn reflect<K, S>(
    watched: Watched,
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
                Err(e) => watch_failed(watched, &e, &metrics),
            }
        }
    });
    store
}

fn watch_failed(watched: Watched, error: &watcher::Error, metrics: &Metrics) {
    tracing::warn!(resource = watched.as_str(), error = %error, "watch failed; retrying with backoff");
    metrics.watch_restart(watched);
}

/// For custom resources: only spec changes (a new generation), labels, creations and deletions
/// matter; status writes (our own, mostly) do not.
fn spec_or_labels_changed<K: Resource>() -> impl FnMut(&Event<K>) -> bool + Send {
    fingerprint_changed(predicates::generation.combine(predicates::labels))
}

/// For nodes: only labels, creations and deletions matter (status changes all the time).
fn labels_changed<K: Resource>() -> impl FnMut(&Event<K>) -> bool + Send {
    fingerprint_changed(predicates::labels)
}

/// Whether an event changes `fingerprint` of its object (or creates or deletes one).
fn fingerprint_changed<K: Resource>(
    fingerprint: impl Predicate<K> + Send,
) -> impl FnMut(&Event<K>) -> bool + Send {
    let key = |o: &K| {
        let meta = o.meta();
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or(""),
            meta.name.as_deref().unwrap_or("")
        )
    };
    let mut seen: HashMap<String, Option<u64>> = HashMap::new();
    move |e| match e {
        Event::Apply(o) => {
            let fp = fingerprint.hash_property(o);
            seen.insert(key(o), fp) != Some(fp)
        }
        Event::InitApply(o) => {
            seen.insert(key(o), fingerprint.hash_property(o));
            false
        }
        Event::Delete(o) => {
            seen.remove(&key(o));
            true
        }
        Event::Init => false,
        Event::InitDone => true,
    }
}

/// Runs the pod watch into a [`PodIndex`]; only changes of what compile reads trigger.
fn index_pods<S>(stream: S, metrics: &Metrics, notify: impl Fn() + Send + 'static) -> PodIndex
where
    S: Stream<Item = Result<Event<Pod>, watcher::Error>> + Send + 'static,
{
    let index = PodIndex::default();
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
                Err(e) => watch_failed(Watched::Pods, &e, &metrics),
            }
        }
    });
    index
}

fn always<K>(e: &Event<K>) -> bool {
    !matches!(e, Event::Init | Event::InitApply(_))
}

/// A store holding `objects`, as if its watch had listed them.
#[cfg(test)]
fn store_of<K>(objects: Vec<K>) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (store, mut writer) = reflector::store::<K>();
    for o in objects {
        writer.apply_watcher_event(&Event::Apply(o));
    }
    store
}

#[cfg(test)]
impl Stores {
    /// The same stores, as if the watches also showed these health reports, Roles and
    /// RoleBindings.
    pub(crate) fn with_access(
        mut self,
        health: Vec<ConfigMap>,
        roles: Vec<Role>,
        bindings: Vec<PartialObjectMeta<RoleBinding>>,
    ) -> Self {
        self.health = store_of(health);
        self.roles = store_of(roles);
        self.role_bindings = store_of(bindings);
        self
    }

    /// Stores holding these objects, as if every watch had listed them (no shards or health
    /// reports published yet).
    pub(crate) fn of(
        policies: Vec<DeserializeGuard<ProfilingPolicy>>,
        targets: Vec<DeserializeGuard<ProfilingTarget>>,
        pods: Vec<Pod>,
        namespaces: Vec<Namespace>,
    ) -> Self {
        let index = PodIndex::default();
        let mut relist = None;
        index.apply(Event::Init, &mut relist);
        for p in pods {
            index.apply(Event::InitApply(p), &mut relist);
        }
        index.apply(Event::InitDone, &mut relist);
        Self {
            policies: store_of(policies),
            targets: store_of(targets),
            pods: index,
            namespaces: store_of(namespaces),
            nodes: store_of(Vec::new()),
            shards: store_of(Vec::new()),
            health: store_of(Vec::new()),
            roles: store_of(Vec::new()),
            role_bindings: store_of(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn policy(generation: i64, team: &str) -> ProfilingPolicy {
        let mut p = ProfilingPolicy::new("default", Default::default());
        p.metadata = ObjectMeta {
            name: Some("default".into()),
            generation: Some(generation),
            labels: Some([("team".to_string(), team.to_string())].into()),
            ..Default::default()
        };
        p
    }

    #[test]
    fn custom_resources_trigger_on_spec_and_labels_not_on_status() {
        let mut significant = spec_or_labels_changed::<ProfilingPolicy>();
        assert!(!significant(&Event::Init));
        assert!(!significant(&Event::InitApply(policy(1, "a"))));
        assert!(significant(&Event::InitDone));
        let mut status_only = policy(1, "a");
        status_only.status = Some(Default::default());
        assert!(!significant(&Event::Apply(status_only)), "a status write");
        assert!(significant(&Event::Apply(policy(2, "a"))), "a spec change");
        assert!(significant(&Event::Apply(policy(2, "b"))), "a label change");
        assert!(!significant(&Event::Apply(policy(2, "b"))));
        assert!(significant(&Event::Delete(policy(2, "b"))));
        assert!(significant(&Event::Apply(policy(2, "b"))), "created again");
    }
    fn node(zone: &str, ready: &str) -> Node {
        let mut n = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some([("zone".to_string(), zone.to_string())].into()),
                ..Default::default()
            },
            status: Some(k8s_openapi::api::core::v1::NodeStatus {
                conditions: Some(vec![k8s_openapi::api::core::v1::NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        index::strip_node(&mut n);
        n
    }

    #[test]
    fn nodes_trigger_on_labels_not_on_status() {
        let mut significant = labels_changed::<Node>();
        assert!(!significant(&Event::InitApply(node("a", "True"))));
        assert!(significant(&Event::InitDone));
        assert!(
            !significant(&Event::Apply(node("a", "False"))),
            "a heartbeat"
        );
        assert!(significant(&Event::Apply(node("b", "False"))), "relabelled");
        assert!(significant(&Event::Delete(node("b", "False"))));
    }
}
