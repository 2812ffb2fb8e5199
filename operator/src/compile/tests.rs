//! The compile step, with small builders and no cluster: the builders and helpers every test
//! module shares, then one module per step.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kubeprof_crds::{
    policy::{FileSink, ProfilingPolicySpec, SinkSpec},
    target::{Endpoint, ProfilingTargetSpec},
};

use super::*;

mod annotations;
mod ebpf;
mod incremental;
mod policies;
mod sampling;
mod sharding;
mod targets;
mod validate;

fn map<M: FromIterator<(String, String)>>(pairs: &[(&str, &str)]) -> M {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn mk_pod(ns: &str, name: &str, labels: &[(&str, &str)], node: &str, ip: &str) -> PodInfo {
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        uid: format!("uid-{ns}-{name}"),
        labels: map(labels),
        annotations: PackedMap::new(),
        node: Some(node.into()),
        ip: Some(ip.into()),
        running: true,
        containers: vec![ContainerInfo {
            name: "app".into(),
            ports: vec![
                PortInfo {
                    name: Some("pprof".into()),
                    number: 6060,
                },
                PortInfo {
                    name: Some("http".into()),
                    number: 8080,
                },
            ],
            id: Some(format!("{ns}-{name}-app")),
        }],
        owner: None,
    }
}

/// `pod` with a second container, "sidecar", that also names a port `pprof` (on 6061), and a
/// third that declares the app's port 6060 again.
fn with_sidecar(mut pod: PodInfo) -> PodInfo {
    pod.containers.push(ContainerInfo {
        name: "sidecar".into(),
        ports: vec![PortInfo {
            name: Some("pprof".into()),
            number: 6061,
        }],
        id: Some(format!("{}-{}-sidecar", pod.namespace, pod.name)),
    });
    pod.containers.push(ContainerInfo {
        name: "again".into(),
        ports: vec![PortInfo {
            name: Some("pprof".into()),
            number: 6060,
        }],
        id: None,
    });
    pod
}

fn mk_ns(name: &str, labels: &[(&str, &str)]) -> NamespaceInfo {
    NamespaceInfo {
        name: name.into(),
        labels: map(labels),
    }
}

fn mk_node(name: &str, labels: &[(&str, &str)]) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        labels: map(labels),
    }
}

fn mk_target(ns: &str, name: &str, app: &str, endpoint: Endpoint) -> TargetInput {
    TargetInput {
        namespace: ns.into(),
        name: name.into(),
        spec: ProfilingTargetSpec {
            selector: LabelSelector {
                match_labels: Some(map(&[("app", app)])),
                match_expressions: None,
            },
            endpoints: vec![endpoint],
            ..Default::default()
        },
    }
}

fn port(name: &str) -> Endpoint {
    Endpoint {
        port: Some(name.into()),
        ..Default::default()
    }
}

fn mk_policy(name: &str, priority: i32, f: impl FnOnce(&mut ProfilingPolicySpec)) -> PolicyInput {
    let mut spec = ProfilingPolicySpec {
        priority,
        sinks: vec![SinkSpec {
            name: format!("{name}-files"),
            file: Some(FileSink {
                directory: "/p".into(),
                retention_bytes: None,
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    f(&mut spec);
    PolicyInput {
        name: name.into(),
        spec,
    }
}

fn jobs(c: &Compiled) -> Vec<&ScrapeJob> {
    c.shards.values().flat_map(|s| s.jobs.iter()).collect()
}

fn names(c: &Compiled) -> Vec<String> {
    let mut n: Vec<String> = jobs(c)
        .iter()
        .map(|j| format!("{}@{}", j.profile.name, j.address))
        .collect();
    n.sort();
    n
}

fn facts<'a>(c: &'a Compiled, ns: &str, name: &str) -> &'a TargetFacts {
    &c.targets[&(ns.to_string(), name.to_string())]
}

fn reasons(f: &TargetFacts) -> Vec<&'static str> {
    f.problems.iter().map(|p| p.reason).collect()
}
