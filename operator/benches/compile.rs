//! The compile step at cluster scale: 10,000 pods in 200 namespaces on 100 nodes, half opted in
//! by Grafana annotations, half selected by 100 ProfilingTargets. Prints the time of one full
//! compile. Run: `cargo bench -p kubeprof-operator --bench compile`.
use std::{collections::BTreeMap, hint::black_box, time::Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kubeprof_crds::{
    policy::{FileSink, ProfilingPolicySpec, SinkSpec},
    target::{Endpoint, ProfilingTargetSpec},
};
use kubeprof_operator::compile::{
    ContainerInfo, Inputs, NamespaceInfo, Owner, PodInfo, PolicyInput, PortInfo, TargetInput,
    compile,
};

fn main() {
    let (pods, namespaces, nodes, targets) = (10_000usize, 200usize, 100usize, 100usize);
    let mut inputs = Inputs {
        policies: vec![PolicyInput {
            name: "default".into(),
            spec: ProfilingPolicySpec {
                sinks: vec![SinkSpec {
                    name: "files".into(),
                    file: Some(FileSink {
                        directory: "/p".into(),
                        retention_bytes: None,
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        }],
        namespaces: (0..namespaces)
            .map(|i| NamespaceInfo {
                name: format!("ns-{i}"),
                labels: BTreeMap::new(),
            })
            .collect(),
        ..Default::default()
    };
    for t in 0..targets {
        // Targets 0..99 live in namespaces 0..99 and select app=svc-<t>.
        inputs.targets.push(TargetInput {
            namespace: format!("ns-{t}"),
            name: format!("svc-{t}"),
            spec: ProfilingTargetSpec {
                selector: LabelSelector {
                    match_labels: Some([("app".to_string(), format!("svc-{t}"))].into()),
                    match_expressions: None,
                },
                endpoints: vec![Endpoint {
                    port: Some("pprof".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
        });
    }
    for i in 0..pods {
        let annotated = i % 2 == 1;
        let ns = if annotated { 100 + i % 100 } else { i % 100 };
        let mut annotations = BTreeMap::new();
        if annotated {
            for (k, v) in [
                ("profiles.grafana.com/cpu.scrape", "true"),
                ("profiles.grafana.com/cpu.port_name", "pprof"),
                ("profiles.grafana.com/memory.scrape", "true"),
                ("profiles.grafana.com/memory.port_name", "pprof"),
            ] {
                annotations.insert(k.to_string(), v.to_string());
            }
        }
        inputs.pods.push(PodInfo {
            namespace: format!("ns-{ns}"),
            name: format!("pod-{i}"),
            uid: format!("uid-{i}"),
            labels: [
                ("app".to_string(), format!("svc-{}", i % 100)),
                ("team".to_string(), "core".to_string()),
            ]
            .into(),
            annotations,
            node: Some(format!("node-{}", i % nodes)),
            ip: Some(format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)),
            running: true,
            containers: vec![ContainerInfo {
                name: "app".into(),
                ports: vec![PortInfo {
                    name: Some("pprof".into()),
                    number: 6060,
                }],
                id: None,
            }],
            owner: Some(Owner {
                kind: "Deployment".into(),
                name: format!("svc-{}", i % 100),
            }),
        });
    }
    let first = compile(&inputs);
    let jobs: usize = first.shards.values().map(|s| s.jobs.len()).sum();
    let rounds = 5;
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(compile(black_box(&inputs)));
    }
    let per = start.elapsed() / rounds;
    let json_start = Instant::now();
    let bytes: usize = first.shards.values().map(|s| s.to_json().len()).sum();
    println!(
        "compile: {pods} pods, {namespaces} namespaces, {nodes} nodes, {targets} targets -> {jobs} jobs in {} shards",
        first.shards.len()
    );
    println!(
        "compile: {per:?} per full compile; shards serialize to {} KiB in {:?}",
        bytes / 1024,
        json_start.elapsed()
    );
}
