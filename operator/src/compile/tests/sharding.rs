//! Shards: jobs per node, the sinks they carry, and what a published shard may hold.

use std::collections::BTreeSet;

use kubeprof_crds::{SecretKeyRef, job::ScrapeAuth, policy::PyroscopeSink};
use pretty_assertions::assert_eq;

use super::*;

#[test]
fn sinks_of_the_same_name_in_two_policies_stay_apart() {
    // Two teams, two policies, each with a Pyroscope sink called `default`: each team's
    // profiles must reach its own tenant, even when their pods share a node.
    let team = |team: &'static str| {
        move |spec: &mut ProfilingPolicySpec| {
            spec.namespace_selector = Some(LabelSelector {
                match_labels: Some(map(&[("team", team)])),
                match_expressions: None,
            });
            spec.sinks = vec![SinkSpec {
                name: "default".into(),
                pyroscope: Some(PyroscopeSink {
                    url: "http://pyroscope:4040".into(),
                    tenant_id: Some(team.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }];
        }
    };
    let inputs = Inputs {
        policies: vec![
            mk_policy("team-a", 0, team("a")),
            mk_policy("team-b", 0, team("b")),
        ],
        targets: vec![
            mk_target("a", "web", "web", port("pprof")),
            mk_target("b", "web", "web", port("pprof")),
        ],
        pods: vec![
            mk_pod("a", "w", &[("app", "web")], "n", "127.0.0.2"),
            mk_pod("b", "w", &[("app", "web")], "n", "127.0.0.3"),
        ],
        namespaces: vec![mk_ns("a", &[("team", "a")]), mk_ns("b", &[("team", "b")])],
        ..Default::default()
    };
    let c = compile(&inputs);
    let shard = &c.shards[&Some("n".into())];
    let tenant_of = |ns: &str| {
        let job = shard
            .jobs
            .iter()
            .find(|j| j.origin.namespace == ns)
            .unwrap();
        assert_eq!(job.sinks.len(), 1, "{ns}: {:?}", job.sinks);
        let sink = shard.sinks.iter().find(|s| s.name == job.sinks[0]).unwrap();
        sink.pyroscope.as_ref().unwrap().tenant_id.clone().unwrap()
    };
    assert_eq!(tenant_of("a"), "a");
    assert_eq!(tenant_of("b"), "b");
    assert_eq!(shard.sinks.len(), 2);
}

#[test]
fn pods_without_a_governing_policy_publish_no_shard() {
    let mut annotated = mk_pod("shop", "a", &[], "n", "127.0.0.3");
    annotated.annotations = map(&[("pyroscope.io/scrape", "true")]);
    let inputs = Inputs {
        policies: vec![],
        targets: vec![mk_target("shop", "web", "web", port("pprof"))],
        pods: vec![
            mk_pod("shop", "w", &[("app", "web")], "n", "127.0.0.2"),
            annotated,
        ],
        namespaces: vec![mk_ns("shop", &[])],
        ..Default::default()
    };
    let c = compile(&inputs);
    assert!(c.shards.is_empty(), "{:?}", c.shards);
}

#[test]
fn credentials_stay_references_and_output_is_deterministic() {
    let endpoint = Endpoint {
        bearer_token_secret: Some(SecretKeyRef {
            name: "pprof-token".into(),
            key: "token".into(),
        }),
        ..port("pprof")
    };
    let mut inputs = Inputs {
        policies: vec![mk_policy("p", 0, |_| {})],
        targets: vec![mk_target("shop", "web", "web", endpoint)],
        pods: (0..20)
            .map(|i| {
                mk_pod(
                    "shop",
                    &format!("w{i}"),
                    &[("app", "web")],
                    &format!("node-{}", i % 3),
                    &format!("127.0.1.{i}"),
                )
            })
            .collect(),
        namespaces: vec![mk_ns("shop", &[])],
        ..Default::default()
    };
    let a = compile(&inputs);
    let job = jobs(&a)[0].clone();
    match &job.auth {
        Some(ScrapeAuth::Bearer { token }) => {
            let s = token.secret.as_ref().unwrap();
            assert_eq!(
                (s.namespace.as_str(), s.name.as_str(), s.key.as_str()),
                ("shop", "pprof-token", "token")
            );
            assert!(token.value.is_none() && token.file.is_none());
        }
        other => panic!("{other:?}"),
    }
    inputs.pods.reverse();
    let b = compile(&inputs);
    assert_eq!(a.shards.len(), 3);
    for (node, shard) in &a.shards {
        assert_eq!(
            shard.to_json(),
            b.shards[node].to_json(),
            "shard of {node:?} depends on input order"
        );
    }
}

#[test]
fn each_node_gets_its_own_shard_and_pods_without_a_node_share_one() {
    let mut unscheduled = mk_pod("shop", "w3", &[("app", "web")], "x", "127.0.0.4");
    unscheduled.node = None;
    let inputs = Inputs {
        targets: vec![mk_target("shop", "web", "web", port("pprof"))],
        pods: vec![
            mk_pod("shop", "w1", &[("app", "web")], "node-a", "127.0.0.2"),
            mk_pod("shop", "w2", &[("app", "web")], "node-b", "127.0.0.3"),
            unscheduled,
        ],
        namespaces: vec![mk_ns("shop", &[])],
        policies: vec![mk_policy("p", 0, |_| {})],
        ..Default::default()
    };
    let c = compile(&inputs);
    let pods_of = |node: Option<&str>| -> BTreeSet<String> {
        c.shards[&node.map(str::to_string)]
            .jobs
            .iter()
            .map(|j| j.labels["pod"].clone())
            .collect()
    };
    assert_eq!(c.shards.len(), 3);
    assert_eq!(pods_of(Some("node-a")), ["w1".to_string()].into());
    assert_eq!(pods_of(Some("node-b")), ["w2".to_string()].into());
    assert_eq!(pods_of(None), ["w3".to_string()].into());
}
