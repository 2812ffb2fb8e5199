//! What the operator keeps of the cluster: watch streams trimmed to the fields [`compile`] reads,
//! and the conversions from API objects to its inputs.
//!
//! [`compile`]: crate::compile::compile

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, PodSpec, PodStatus};
use kube::ResourceExt;

use crate::compile::{ContainerInfo, NamespaceInfo, PodInfo, PortInfo};

/// Drops what the operator never reads from a pod, so 10,000 cached pods stay small: managed
/// fields, volumes, env, probes, resources, and every status field but phase and IP.
pub fn strip_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.owner_references = None;
    pod.metadata.finalizers = None;
    if let Some(spec) = pod.spec.take() {
        pod.spec = Some(PodSpec {
            node_name: spec.node_name,
            containers: spec
                .containers
                .into_iter()
                .map(|c| k8s_openapi::api::core::v1::Container {
                    name: c.name,
                    ports: c.ports,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
    }
    if let Some(status) = pod.status.take() {
        pod.status = Some(PodStatus {
            phase: status.phase,
            pod_ip: status.pod_ip,
            ..Default::default()
        });
    }
}

/// Namespaces: only name and labels matter.
pub fn strip_namespace(ns: &mut Namespace) {
    ns.metadata.managed_fields = None;
    ns.metadata.annotations = None;
    ns.spec = None;
    ns.status = None;
}

/// ConfigMaps kubeprof publishes or receives: the managed fields are noise.
pub fn strip_config_map(cm: &mut ConfigMap) {
    cm.metadata.managed_fields = None;
}

/// The compile view of a pod.
pub fn pod_info(pod: &Pod) -> PodInfo {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    PodInfo {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        labels: pod.labels().clone(),
        annotations: pod.annotations().clone(),
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
    use k8s_openapi::api::core::v1::{Container, ContainerPort, EnvVar};

    #[test]
    fn stripped_pods_keep_what_compile_reads() {
        let mut pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                uid: Some("u1".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-a".into()),
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("example/web:1".into()),
                    env: Some(vec![EnvVar {
                        name: "X".into(),
                        value: Some("y".into()),
                        ..Default::default()
                    }]),
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
                phase: Some("Running".into()),
                pod_ip: Some("10.0.0.7".into()),
                host_ip: Some("192.168.0.1".into()),
                ..Default::default()
            }),
        };
        let before = pod_info(&pod);
        strip_pod(&mut pod);
        assert_eq!(pod_info(&pod), before);
        let c = &pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default()[0];
        assert!(c.env.is_none() && c.image.is_none());
        assert!(
            pod.status
                .as_ref()
                .and_then(|s| s.host_ip.clone())
                .is_none()
        );
        assert!(before.running);
        assert_eq!(before.node.as_deref(), Some("node-a"));
        assert_eq!(before.containers[0].ports[0].number, 6060);
    }
}
