//! What the operator keeps of the cluster: watch streams trimmed to the fields [`compile`] reads,
//! and the conversions from API objects to its inputs.
//!
//! [`compile`]: crate::compile::compile

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, RwLock},
};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use kube::{ResourceExt, runtime::watcher};
use kubeprof_crds::packed::PackedMap;

use crate::compile::{ContainerInfo, NamespaceInfo, NodeInfo, PodInfo, PodKey, PortInfo, sampling};

/// Pods as [`compile`] sees them, kept up to date by a watch. Holding [`PodInfo`] rather than
/// `Pod` objects keeps 10,000 pods in a few megabytes instead of tens (a `Pod` with one
/// container is over 4 KiB before any of its strings).
///
/// [`compile`]: crate::compile::compile
///
/// It also records which pods changed since [`PodIndex::changes`] last took them, so that the
/// compile only redoes what they touch.
#[derive(Clone, Debug, Default)]
pub struct PodIndex {
    pods: Arc<RwLock<Pods>>,
    ready: Arc<tokio::sync::Notify>,
    filled: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, Default)]
struct Pods {
    by_key: HashMap<PodKey, Arc<PodInfo>>,
    /// Changed since the last [`PodIndex::changes`].
    changed: HashSet<PodKey>,
    /// A re-list replaced everything: the next [`PodIndex::changes`] returns every pod.
    relisted: bool,
}

/// Pods changed since the last look.
#[derive(Debug, Default)]
pub struct PodChanges {
    /// Every pod is in `pods` (after a re-list, or when asked for all): a pod held before and
    /// missing here is gone.
    pub all: bool,
    /// Changed pods (`None`: deleted).
    pub pods: Vec<(PodKey, Option<Arc<PodInfo>>)>,
}

impl PodIndex {
    /// Every pod, in no particular order.
    #[cfg(test)]
    pub fn snapshot(&self) -> Vec<PodInfo> {
        self.read().by_key.values().map(|p| (**p).clone()).collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Pods> {
        self.pods.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Pods> {
        self.pods.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The pods changed since the last call (every pod with `everything`, or after a re-list).
    pub fn changes(&self, everything: bool) -> PodChanges {
        let mut pods = self.write();
        let changed = std::mem::take(&mut pods.changed);
        if everything || std::mem::take(&mut pods.relisted) {
            return PodChanges {
                all: true,
                pods: pods
                    .by_key
                    .iter()
                    .map(|(k, p)| (k.clone(), Some(p.clone())))
                    .collect(),
            };
        }
        PodChanges {
            all: false,
            pods: changed
                .into_iter()
                .map(|k| {
                    let p = pods.by_key.get(&k).cloned();
                    (k, p)
                })
                .collect(),
        }
    }

    /// Number of pods.
    pub fn len(&self) -> usize {
        self.read().by_key.len()
    }

    /// Whether there are none.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the first list completed.
    pub async fn wait_until_ready(&self) {
        use std::sync::atomic::Ordering;
        loop {
            let notified = self.ready.notified();
            if self.filled.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Applies one watch event; whether it changed what compile sees.
    pub fn apply(
        &self,
        event: watcher::Event<Pod>,
        relist: &mut Option<HashMap<PodKey, Arc<PodInfo>>>,
    ) -> bool {
        use std::sync::atomic::Ordering;
        let key = |p: &Pod| (p.namespace().unwrap_or_default(), p.name_any());
        match event {
            watcher::Event::Init => {
                *relist = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(p) => {
                if let Some(buffer) = relist.as_mut() {
                    buffer.insert(key(&p), Arc::new(pod_info(&p)));
                }
                false
            }
            watcher::Event::InitDone => {
                if let Some(buffer) = relist.take() {
                    let mut pods = self.write();
                    pods.by_key = buffer;
                    pods.changed.clear();
                    pods.relisted = true;
                }
                self.filled.store(true, Ordering::Release);
                self.ready.notify_waiters();
                true
            }
            watcher::Event::Apply(p) => {
                let info = pod_info(&p);
                let key = key(&p);
                let mut pods = self.write();
                match pods.by_key.get(&key) {
                    Some(old) if **old == info => false,
                    _ => {
                        pods.by_key.insert(key.clone(), Arc::new(info));
                        pods.changed.insert(key);
                        true
                    }
                }
            }
            watcher::Event::Delete(p) => {
                let key = key(&p);
                let mut pods = self.write();
                let gone = pods.by_key.remove(&key).is_some();
                if gone {
                    pods.changed.insert(key);
                }
                gone
            }
        }
    }
}

/// Namespaces: only name and labels matter.
pub fn strip_namespace(ns: &mut Namespace) {
    ns.metadata.managed_fields = None;
    ns.metadata.annotations = None;
    ns.spec = None;
    ns.status = None;
}

/// Nodes: only name and labels matter (the eBPF node selectors read them). Everything else,
/// status above all, goes, so a node's heartbeats cost nothing but the event.
pub fn strip_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
    node.metadata.owner_references = None;
    node.metadata.finalizers = None;
    node.spec = None;
    node.status = None;
}

/// The compile view of a node.
pub fn node_info(node: &Node) -> NodeInfo {
    NodeInfo {
        name: node.name_any(),
        labels: node.labels().clone(),
    }
}

/// A running container's ID as its pod's status reports it (`containerd://<id>`,
/// `cri-o://<id>`, `docker://<id>`), without the runtime prefix; `None` while it is not running
/// (waiting to start, or terminated: no process of it to sample). A container that runs but
/// has not passed its startup probe yet has processes, so it counts.
fn container_id(status: &k8s_openapi::api::core::v1::ContainerStatus) -> Option<String> {
    status.state.as_ref()?.running.as_ref()?;
    let raw = status.container_id.as_deref()?;
    let id = raw.split_once("://").map_or(raw, |(_, id)| id);
    (!id.is_empty()).then(|| id.to_owned())
}

/// ConfigMaps kubeprof publishes or receives: the managed fields are noise.
pub fn strip_config_map(cm: &mut ConfigMap) {
    cm.metadata.managed_fields = None;
}

/// The compile view of a pod.
pub fn pod_info(pod: &Pod) -> PodInfo {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let labels = PackedMap::from(pod.labels());
    PodInfo {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        owner: pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| sampling::owner(&o.kind, &o.name, &labels)),
        labels,
        annotations: pod.annotations().into(),
        node: spec.and_then(|s| s.node_name.clone()),
        ip: status
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty()),
        // A pod being deleted is on its way out: its jobs go now, not after the grace period.
        running: status.and_then(|s| s.phase.as_deref()) == Some("Running")
            && pod.metadata.deletion_timestamp.is_none(),
        containers: spec
            .map(|s| {
                s.containers
                    .iter()
                    .map(|c| ContainerInfo {
                        id: status
                            .and_then(|s| s.container_statuses.as_ref())
                            .and_then(|all| all.iter().find(|cs| cs.name == c.name))
                            .and_then(container_id),
                        name: c.name.clone(),
                        ports: c
                            .ports
                            .iter()
                            .flatten()
                            .map(|p| PortInfo {
                                name: p.name.clone(),
                                number: p.container_port,
                            })
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The compile view of a namespace.
pub fn namespace_info(ns: &Namespace) -> NamespaceInfo {
    let mut labels: BTreeMap<String, String> = ns.labels().clone();
    // Servers from 1.21 label every namespace with its name; older ones do not. Adding it here
    // lets selectors on `kubernetes.io/metadata.name` work on every server.
    labels
        .entry("kubernetes.io/metadata.name".into())
        .or_insert_with(|| ns.name_any());
    NamespaceInfo {
        name: ns.name_any(),
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, PodStatus};

    fn pod(name: &str, phase: &str) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-a".into()),
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("example/web:1".into()),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 6060,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: Some("10.0.0.7".into()),
                host_ip: Some("192.168.0.1".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn pods_become_what_compile_reads() {
        let info = pod_info(&pod("web-1", "Running"));
        assert!(info.running);
        assert_eq!(info.node.as_deref(), Some("node-a"));
        assert_eq!(info.ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(info.containers[0].ports[0].number, 6060);
        assert!(!pod_info(&pod("web-1", "Pending")).running);
        assert_eq!(info.owner, None, "no controller");
    }

    #[test]
    fn running_containers_carry_their_runtime_id_without_its_prefix() {
        use k8s_openapi::api::core::v1::{
            ContainerState, ContainerStateRunning, ContainerStateWaiting, ContainerStatus,
        };
        let mut p = pod("web-1", "Running");
        if let Some(spec) = p.spec.as_mut() {
            for name in ["sidecar", "init-like"] {
                spec.containers.push(Container {
                    name: name.into(),
                    ..Default::default()
                });
            }
        }
        let status = |name: &str, id: Option<&str>, running: bool| ContainerStatus {
            name: name.into(),
            container_id: id.map(String::from),
            state: Some(if running {
                ContainerState {
                    running: Some(ContainerStateRunning::default()),
                    ..Default::default()
                }
            } else {
                ContainerState {
                    waiting: Some(ContainerStateWaiting::default()),
                    ..Default::default()
                }
            }),
            ..Default::default()
        };
        if let Some(s) = p.status.as_mut() {
            s.container_statuses = Some(vec![
                status("sidecar", Some("cri-o://0123abcd"), true),
                status("app", Some("containerd://9f8e7d"), true),
                // Restarting: its old ID has no process any more.
                status("init-like", Some("containerd://dead"), false),
            ]);
        }
        let ids: Vec<(String, Option<String>)> = pod_info(&p)
            .containers
            .into_iter()
            .map(|c| (c.name, c.id))
            .collect();
        assert_eq!(
            ids,
            [
                ("app".to_string(), Some("9f8e7d".to_string())),
                ("sidecar".to_string(), Some("0123abcd".to_string())),
                ("init-like".to_string(), None),
            ]
        );
        assert_eq!(pod_info(&pod("web-1", "Running")).containers[0].id, None);
    }

    #[test]
    fn nodes_keep_only_their_name_and_labels() {
        use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};
        let mut node = Node {
            metadata: kube::api::ObjectMeta {
                name: Some("n1".into()),
                labels: Some([("zone".to_string(), "a".to_string())].into()),
                annotations: Some([("big".to_string(), "x".repeat(1000))].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus::default()),
        };
        strip_node(&mut node);
        assert!(node.spec.is_none() && node.status.is_none());
        assert!(node.metadata.annotations.is_none());
        let info = node_info(&node);
        assert_eq!(info.name, "n1");
        assert_eq!(info.labels["zone"], "a");
    }

    #[test]
    fn a_pods_workload_is_its_controller_with_replica_sets_read_as_their_deployment() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let owned = |kind: &str, name: &str, controller| {
            let mut p = pod("web-7d4b9c8f6-x2x9q", "Running");
            p.metadata
                .labels
                .get_or_insert_default()
                .insert("pod-template-hash".into(), "7d4b9c8f6".into());
            p.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: kind.into(),
                name: name.into(),
                uid: "uid-owner".into(),
                controller: Some(controller),
                ..Default::default()
            }]);
            pod_info(&p).owner.map(|o| (o.kind, o.name))
        };
        assert_eq!(
            owned("ReplicaSet", "web-7d4b9c8f6", true),
            Some(("Deployment".into(), "web".into()))
        );
        assert_eq!(
            owned("StatefulSet", "db", true),
            Some(("StatefulSet".into(), "db".into()))
        );
        assert_eq!(owned("ConfigMap", "not-a-controller", false), None);
    }

    #[test]
    fn the_index_follows_lists_and_changes() {
        let index = PodIndex::default();
        let mut relist = None;
        assert!(!index.apply(watcher::Event::Init, &mut relist));
        assert!(!index.apply(watcher::Event::InitApply(pod("a", "Running")), &mut relist));
        assert!(index.is_empty(), "a list shows only once complete");
        assert!(index.apply(watcher::Event::InitDone, &mut relist));
        assert_eq!(index.len(), 1);
        // A change compile does not read (host IP) triggers nothing; a phase change does.
        let mut same = pod("a", "Running");
        if let Some(s) = same.status.as_mut() {
            s.host_ip = Some("192.168.0.2".into());
        }
        assert!(!index.apply(watcher::Event::Apply(same), &mut relist));
        assert!(index.apply(watcher::Event::Apply(pod("a", "Succeeded")), &mut relist));
        assert!(index.apply(watcher::Event::Delete(pod("a", "Succeeded")), &mut relist));
        assert!(index.is_empty());
        // A re-list replaces everything at once.
        index.apply(watcher::Event::Apply(pod("gone", "Running")), &mut relist);
        index.apply(watcher::Event::Init, &mut relist);
        index.apply(watcher::Event::InitApply(pod("b", "Running")), &mut relist);
        index.apply(watcher::Event::InitDone, &mut relist);
        assert_eq!(
            index
                .snapshot()
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
    }
}
