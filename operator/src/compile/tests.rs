//! The compile step, with small builders and no cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kubeprof_crds::{
    Duration, RelabelAction, RelabelConfig, SecretKeyRef,
    job::{OriginKind, ScrapeAuth},
    policy::{FileSink, ProfilingPolicySpec, SinkSpec},
    target::{Endpoint, ProfilingTargetSpec},
};
use pretty_assertions::assert_eq;

use super::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
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
        annotations: BTreeMap::new(),
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
        }],
    }
}

fn mk_ns(name: &str, labels: &[(&str, &str)]) -> NamespaceInfo {
    NamespaceInfo {
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

#[test]
fn a_target_selects_running_pods_and_publishes_per_node() {
    let mut stopped = mk_pod("shop", "web-2", &[("app", "web")], "node-b", "127.0.0.3");
    stopped.running = false;
    let inputs = Inputs {
        policies: vec![mk_policy("default", 0, |_| {})],
        targets: vec![mk_target("shop", "web", "web", port("pprof"))],
        pods: vec![
            mk_pod("shop", "web-1", &[("app", "web")], "node-a", "127.0.0.2"),
            stopped,
            mk_pod("shop", "db-1", &[("app", "db")], "node-a", "127.0.0.4"),
            mk_pod("other", "web-9", &[("app", "web")], "node-a", "127.0.0.5"),
        ],
        namespaces: vec![mk_ns("shop", &[]), mk_ns("other", &[])],
    };
    let c = compile(&inputs);
    assert_eq!(
        c.shards.keys().cloned().collect::<Vec<_>>(),
        vec![Some("node-a".to_string())]
    );
    assert_eq!(
        names(&c),
        [
            "block@127.0.0.2:6060",
            "goroutine@127.0.0.2:6060",
            "memory@127.0.0.2:6060",
            "mutex@127.0.0.2:6060",
            "process_cpu@127.0.0.2:6060"
        ]
    );
    let f = facts(&c, "shop", "web");
    assert_eq!((f.matched_pods, f.active_jobs), (1, 5));
    assert!(f.problems.is_empty(), "{:?}", f.problems);
    let job = jobs(&c)
        .into_iter()
        .find(|j| j.profile.name == "process_cpu")
        .unwrap();
    assert_eq!(job.origin.kind, OriginKind::ProfilingTarget);
    assert_eq!(job.profile.seconds, Some(15));
    for (k, v) in [
        ("namespace", "shop"),
        ("pod", "web-1"),
        ("container", "app"),
        ("node", "node-a"),
        ("service_name", "shop/app"),
        ("__name__", "process_cpu"),
    ] {
        assert_eq!(job.labels.get(k).map(String::as_str), Some(v), "{k}");
    }
    // Discovery labels are not published once relabelling has run.
    assert!(
        !job.labels.keys().any(|k| k.starts_with("__meta_")),
        "{:?}",
        job.labels
    );
    assert_eq!(job.sinks, ["default/default-files"]);
    assert_eq!(c.shards[&Some("node-a".into())].sinks.len(), 1);
    assert_eq!(c.policies["default"].matched_namespaces, 2);
}

#[test]
fn missing_ports_and_pods_are_reported() {
    let inputs = Inputs {
        targets: vec![
            mk_target("shop", "web", "web", port("nope")),
            mk_target("shop", "ghost", "ghost", port("pprof")),
        ],
        pods: vec![mk_pod("shop", "web-1", &[("app", "web")], "n", "127.0.0.2")],
        namespaces: vec![mk_ns("shop", &[])],
        ..Default::default()
    };
    let c = compile(&inputs);
    assert!(jobs(&c).is_empty());
    assert_eq!(reasons(facts(&c, "shop", "web")), ["PortNotFound"]);
    assert_eq!(reasons(facts(&c, "shop", "ghost")), ["NoMatchingPods"]);
}

#[test]
fn the_highest_priority_policy_governs_and_ties_go_to_the_first_name() {
    let prod = |spec: &mut ProfilingPolicySpec| {
        spec.namespace_selector = Some(LabelSelector {
            match_labels: Some(map(&[("env", "prod")])),
            match_expressions: None,
        });
    };
    let inputs = Inputs {
        policies: vec![
            mk_policy("b-prod", 10, prod),
            mk_policy("a-prod", 10, prod),
            mk_policy("catch-all", 0, |s| {
                s.defaults.interval = Duration::from_secs(60)
            }),
        ],
        targets: vec![
            mk_target("shop", "web", "web", port("pprof")),
            mk_target("dev", "web", "web", port("pprof")),
        ],
        pods: vec![
            mk_pod("shop", "w", &[("app", "web")], "n", "127.0.0.2"),
            mk_pod("dev", "w", &[("app", "web")], "n", "127.0.0.3"),
        ],
        namespaces: vec![mk_ns("shop", &[("env", "prod")]), mk_ns("dev", &[])],
    };
    let c = compile(&inputs);
    let by_ns = |ns: &str| {
        jobs(&c)
            .into_iter()
            .find(|j| j.origin.namespace == ns)
            .unwrap()
            .clone()
    };
    assert_eq!(by_ns("shop").sinks, ["a-prod/a-prod-files"]);
    assert_eq!(by_ns("shop").interval, Duration::from_secs(15));
    assert_eq!(by_ns("dev").sinks, ["catch-all/catch-all-files"]);
    assert_eq!(by_ns("dev").interval, Duration::from_secs(60));
    assert_eq!(c.policies["b-prod"].matched_namespaces, 0);
}

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
                pyroscope: Some(kubeprof_crds::policy::PyroscopeSink {
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
fn jobs_without_a_governing_policy_name_no_sink() {
    let inputs = Inputs {
        policies: vec![],
        targets: vec![mk_target("shop", "web", "web", port("pprof"))],
        pods: vec![mk_pod("shop", "w", &[("app", "web")], "n", "127.0.0.2")],
        namespaces: vec![mk_ns("shop", &[])],
    };
    let c = compile(&inputs);
    assert!(jobs(&c).iter().all(|j| j.sinks.is_empty()));
    assert!(c.shards.values().all(|s| s.sinks.is_empty()));
}

#[test]
fn limits_cap_targets_and_are_reported() {
    let inputs = Inputs {
        policies: vec![mk_policy("strict", 0, |s| {
            // A policy whose own default is below its minimum is refused (a CEL rule).
            s.defaults.interval = Duration::from_secs(30);
            s.limits.min_interval = Some(Duration::from_secs(30));
            s.limits.allowed_profile_types = vec!["cpu".into(), "memory".into()];
        })],
        targets: vec![mk_target(
            "shop",
            "web",
            "web",
            Endpoint {
                interval: Some(Duration::from_secs(5)),
                scrape_timeout: Some(Duration::from_secs(2)),
                ..port("pprof")
            },
        )],
        pods: vec![mk_pod("shop", "w", &[("app", "web")], "n", "127.0.0.2")],
        namespaces: vec![mk_ns("shop", &[])],
    };
    let c = compile(&inputs);
    assert_eq!(
        names(&c),
        ["memory@127.0.0.2:6060", "process_cpu@127.0.0.2:6060"]
    );
    assert!(
        jobs(&c)
            .iter()
            .all(|j| j.interval == Duration::from_secs(30))
    );
    assert_eq!(reasons(facts(&c, "shop", "web")), ["LimitExceeded"; 4]);
}

#[test]
fn annotated_pods_are_scraped_and_a_target_wins_per_type() {
    let mut grafana = mk_pod("shop", "g", &[("app", "g")], "n", "127.0.0.2");
    grafana.annotations = map(&[
        ("profiles.grafana.com/cpu.scrape", "true"),
        ("profiles.grafana.com/cpu.port_name", "pprof"),
        ("profiles.grafana.com/fgprof.scrape", "true"),
        ("profiles.grafana.com/fgprof.port", "6060"),
        ("profiles.grafana.com/fgprof.path", "/debug/fgprof"),
        ("profiles.grafana.com/memory.scrape", "false"),
    ]);
    let mut legacy = mk_pod("shop", "p", &[("app", "p")], "n", "127.0.0.3");
    legacy.annotations = map(&[
        ("pyroscope.io/scrape", "true"),
        ("pyroscope.io/port", "8080"),
        ("pyroscope.io/application-name", "payments"),
        ("pyroscope.io/profile-block-enabled", "false"),
        ("pyroscope.io/profile-mutex-enabled", "false"),
    ]);
    let mut both = mk_pod("shop", "b", &[("app", "b")], "n", "127.0.0.4");
    both.annotations = map(&[
        ("profiles.grafana.com/cpu.scrape", "true"),
        ("profiles.grafana.com/cpu.port", "6060"),
    ]);
    let inputs = Inputs {
        targets: vec![mk_target(
            "shop",
            "b",
            "b",
            Endpoint {
                profiles: kubeprof_crds::Profiles {
                    cpu: Some(Default::default()),
                    ..Default::default()
                },
                ..port("pprof")
            },
        )],
        pods: vec![grafana, legacy, both],
        namespaces: vec![mk_ns("shop", &[])],
        ..Default::default()
    };
    let c = compile(&inputs);
    let from = |pod: &str| -> Vec<String> {
        let mut v: Vec<String> = jobs(&c)
            .iter()
            .filter(|j| j.labels["pod"] == pod)
            .map(|j| format!("{}:{:?}:{}", j.profile.name, j.origin.kind, j.profile.path))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        from("g"),
        [
            "fgprof:Annotations:/debug/fgprof",
            "process_cpu:Annotations:/debug/pprof/profile"
        ]
    );
    assert_eq!(
        from("p"),
        [
            "goroutine:Annotations:/debug/pprof/goroutine",
            "memory:Annotations:/debug/pprof/allocs",
            "process_cpu:Annotations:/debug/pprof/profile"
        ]
    );
    assert!(
        jobs(&c)
            .iter()
            .filter(|j| j.labels["pod"] == "p")
            .all(|j| j.labels["service_name"] == "payments" && j.address == "127.0.0.3:8080")
    );
    // The target scrapes all five types of pod b; the annotation adds no second CPU job.
    let b = from("b");
    assert_eq!(b.iter().filter(|j| j.starts_with("process_cpu")).count(), 1);
    assert!(b.iter().all(|j| j.contains("ProfilingTarget")), "{b:?}");
}

#[test]
fn policies_can_turn_annotations_off() {
    let mut pod = mk_pod("shop", "g", &[], "n", "127.0.0.2");
    pod.annotations = map(&[
        ("profiles.grafana.com/cpu.scrape", "true"),
        ("pyroscope.io/scrape", "true"),
        ("pyroscope.io/port", "6060"),
    ]);
    let mut inputs = Inputs {
        policies: vec![mk_policy("p", 0, |s| s.annotations.grafana = false)],
        pods: vec![pod],
        namespaces: vec![mk_ns("shop", &[])],
        ..Default::default()
    };
    let c = compile(&inputs);
    // Only the Pyroscope keys count: all five default types from pyroscope.io/scrape, none
    // from the Grafana key alone.
    assert_eq!(jobs(&c).len(), 5);
    assert!(
        jobs(&c)
            .iter()
            .all(|j| j.origin.kind == OriginKind::Annotations)
    );
    inputs.policies[0].spec.annotations.enabled = false;
    assert!(jobs(&compile(&inputs)).is_empty());
}

#[test]
fn relabelling_runs_here_and_can_drop_a_target() {
    let mut endpoint = port("pprof");
    endpoint.relabelings = vec![
        RelabelConfig {
            source_labels: vec!["__name__".into()],
            regex: "process_cpu|memory".into(),
            action: RelabelAction::Keep,
            ..Default::default()
        },
        RelabelConfig {
            source_labels: vec!["__meta_kubernetes_pod_label_team".into()],
            target_label: Some("team".into()),
            ..Default::default()
        },
    ];
    let inputs = Inputs {
        policies: vec![mk_policy("p", 0, |s| {
            s.relabelings = vec![RelabelConfig {
                source_labels: vec!["pod".into()],
                regex: "canary-.*".into(),
                action: RelabelAction::Drop,
                ..Default::default()
            }];
            s.external_labels = map(&[("cluster", "eu")]);
        })],
        targets: vec![mk_target("shop", "web", "web", endpoint)],
        pods: vec![
            mk_pod(
                "shop",
                "web-1",
                &[("app", "web"), ("team", "core")],
                "n",
                "127.0.0.2",
            ),
            mk_pod("shop", "canary-1", &[("app", "web")], "n", "127.0.0.3"),
        ],
        namespaces: vec![mk_ns("shop", &[])],
    };
    let c = compile(&inputs);
    assert_eq!(
        names(&c),
        ["memory@127.0.0.2:6060", "process_cpu@127.0.0.2:6060"]
    );
    assert!(jobs(&c).iter().all(|j| j.labels["team"] == "core"
        && j.external_labels["cluster"] == "eu"
        && j.relabelings.is_empty()));
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
fn max_targets_per_namespace_is_enforced() {
    let inputs = Inputs {
        policies: vec![mk_policy("p", 0, |s| {
            s.limits.max_targets_per_namespace = Some(2)
        })],
        targets: vec![mk_target("shop", "web", "web", port("pprof"))],
        pods: (0..5)
            .map(|i| {
                mk_pod(
                    "shop",
                    &format!("w{i}"),
                    &[("app", "web")],
                    "n",
                    &format!("127.0.1.{i}"),
                )
            })
            .collect(),
        namespaces: vec![mk_ns("shop", &[])],
    };
    let c = compile(&inputs);
    assert_eq!(jobs(&c).len(), 2 * 5);
    assert_eq!(reasons(facts(&c, "shop", "web")), ["LimitExceeded"]);
}

/// What a server without CEL (before 1.25) lets through, or what was stored before a bound
/// existed, is refused here as a CEL-enforcing server would refuse it: reported, not applied.
#[test]
fn objects_a_cel_enforcing_server_would_refuse_are_reported_and_not_applied() {
    let both_ports = Endpoint {
        port_number: Some(6060),
        ..port("pprof")
    };
    let too_many_rules = Endpoint {
        relabelings: vec![
            RelabelConfig {
                action: RelabelAction::Keep,
                ..Default::default()
            };
            usize::try_from(kubeprof_crds::limits::MAX_RELABELINGS).unwrap() + 1
        ],
        ..port("pprof")
    };
    let two_backends = mk_policy("two-backends", 10, |s| {
        s.sinks[0].otlp = Some(kubeprof_crds::policy::OtlpSink {
            endpoint: "http://otel:4318".into(),
            ..Default::default()
        });
        s.defaults.interval = Duration::from_secs(60);
    });
    let inputs = Inputs {
        policies: vec![two_backends, mk_policy("fallback", 0, |_| {})],
        targets: vec![
            mk_target("shop", "both-ports", "web", both_ports),
            mk_target("shop", "too-many-rules", "web", too_many_rules),
            mk_target("shop", "fine", "web", port("pprof")),
        ],
        pods: vec![mk_pod("shop", "w", &[("app", "web")], "n", "127.0.0.2")],
        namespaces: vec![mk_ns("shop", &[])],
    };
    let c = compile(&inputs);

    let problems = |f: &TargetFacts| -> Vec<String> {
        f.problems
            .iter()
            .map(|p| format!("{}: {}", p.reason, p.message))
            .collect()
    };
    assert_eq!(
        problems(facts(&c, "shop", "both-ports")),
        ["InvalidSpec: spec.endpoints[0]: exactly one of port or portNumber must be set"]
    );
    assert_eq!(
        problems(facts(&c, "shop", "too-many-rules")),
        ["InvalidSpec: spec.endpoints[0].relabelings: Too many: 257: must have at most 256 items"]
    );
    assert_eq!(facts(&c, "shop", "both-ports").active_jobs, 0);
    assert_eq!(facts(&c, "shop", "too-many-rules").active_jobs, 0);

    // The refused policy governs nothing: the fallback's sink and defaults apply.
    let refused = &c.policies["two-backends"];
    assert_eq!(refused.matched_namespaces, 0);
    assert_eq!(
        refused
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.reason, p.message))
            .collect::<Vec<_>>(),
        ["InvalidSpec: spec.sinks[0]: a sink needs exactly one of pyroscope, parca, otlp or file"]
    );
    assert_eq!(c.policies["fallback"].matched_namespaces, 1);
    let fine: Vec<_> = jobs(&c);
    assert_eq!(fine.len(), 5, "only the valid target is scraped");
    assert!(fine.iter().all(|j| j.origin.name == "fine"
        && j.sinks == ["fallback/fallback-files"]
        && j.interval == Duration::from_secs(15)));
    assert_eq!(c.shards[&Some("n".to_string())].sinks.len(), 1);
}

#[test]
fn an_invalid_selector_is_reported_and_selects_nothing() {
    let bad = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                key: "app".into(),
                operator: "Matches".into(),
                values: Some(vec!["web".into()]),
            },
        ]),
    };
    let mut target = mk_target("shop", "web", "web", port("pprof"));
    target.spec.selector = bad.clone();
    let inputs = Inputs {
        policies: vec![
            mk_policy("broken", 10, |s| s.namespace_selector = Some(bad.clone())),
            mk_policy("fallback", 0, |_| {}),
        ],
        targets: vec![target],
        pods: vec![mk_pod("shop", "w", &[("app", "web")], "n", "127.0.0.2")],
        namespaces: vec![mk_ns("shop", &[])],
    };
    let c = compile(&inputs);
    assert!(jobs(&c).is_empty());
    let f = facts(&c, "shop", "web");
    assert_eq!(reasons(f), ["InvalidSpec", "NoMatchingPods"]);
    assert!(
        f.problems
            .iter()
            .any(|p| p.message.starts_with("selector: ")),
        "{:?}",
        f.problems
    );
    // A policy whose namespaceSelector is invalid governs nothing; the next one takes over.
    let broken = &c.policies["broken"];
    assert_eq!(broken.matched_namespaces, 0);
    assert_eq!(
        broken.problems.iter().map(|p| p.reason).collect::<Vec<_>>(),
        ["InvalidSpec"]
    );
    assert_eq!(c.policies["fallback"].matched_namespaces, 1);

    // Reported whatever the cluster holds, not only once a pod reaches the bad expression.
    let c = compile(&Inputs {
        pods: vec![],
        ..inputs
    });
    assert_eq!(
        reasons(facts(&c, "shop", "web")),
        ["InvalidSpec", "NoMatchingPods"]
    );
}

#[test]
fn a_target_namespace_selector_picks_namespaces_by_name_and_label() {
    let mut target = mk_target("ops", "web", "web", port("pprof"));
    target.spec.namespace_selector = Some(kubeprof_crds::NamespaceSelector {
        match_names: Some(vec!["a".into()]),
        match_labels: Some(map(&[("env", "prod")])),
        ..Default::default()
    });
    let inputs = Inputs {
        targets: vec![target],
        pods: ["ops", "a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, ns)| mk_pod(ns, "w", &[("app", "web")], "n", &format!("127.0.0.{i}")))
            .collect(),
        namespaces: vec![
            mk_ns("ops", &[]),
            mk_ns("a", &[]),
            mk_ns("b", &[("env", "prod")]),
            mk_ns("c", &[("env", "dev")]),
        ],
        ..Default::default()
    };
    let c = compile(&inputs);
    let namespaces: std::collections::BTreeSet<&str> = jobs(&c)
        .iter()
        .map(|j| j.labels["namespace"].as_str())
        .collect();
    assert_eq!(namespaces, ["a", "b"].into());
    assert_eq!(facts(&c, "ops", "web").matched_pods, 2);
}
