//! ProfilingTargets: which pods they select, and the jobs and facts they give.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use kubeprof_crds::{NamespaceSelector, RelabelAction, RelabelConfig, job::OriginKind};
use pretty_assertions::assert_eq;

use super::*;

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
        ..Default::default()
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
        policies: vec![mk_policy("default", 0, |_| {})],
        ..Default::default()
    };
    let c = compile(&inputs);
    assert!(jobs(&c).is_empty());
    assert_eq!(reasons(facts(&c, "shop", "web")), ["PortNotFound"]);
    assert_eq!(reasons(facts(&c, "shop", "ghost")), ["NoMatchingPods"]);
}

#[test]
fn a_target_namespace_selector_picks_namespaces_by_name_and_label() {
    let mut target = mk_target("ops", "web", "web", port("pprof"));
    target.spec.namespace_selector = Some(NamespaceSelector {
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
        policies: vec![mk_policy("default", 0, |_| {})],
        ..Default::default()
    };
    let c = compile(&inputs);
    let namespaces: BTreeSet<&str> = jobs(&c)
        .iter()
        .map(|j| j.labels["namespace"].as_str())
        .collect();
    assert_eq!(namespaces, ["a", "b"].into());
    assert_eq!(facts(&c, "ops", "web").matched_pods, 2);
}

#[test]
fn an_invalid_selector_is_reported_and_selects_nothing() {
    let bad = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "app".into(),
            operator: "Matches".into(),
            values: Some(vec!["web".into()]),
        }]),
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
        ..Default::default()
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
        ..Default::default()
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
fn a_namespace_no_policy_governs_gets_no_jobs_and_says_why() {
    let prod_only = mk_policy("prod", 0, |s| {
        s.namespace_selector = Some(LabelSelector {
            match_labels: Some(map(&[("env", "prod")])),
            match_expressions: None,
        });
    });
    let mut annotated = mk_pod("shop", "api-1", &[("app", "api")], "n", "127.0.0.3");
    annotated.annotations = map(&[
        ("profiles.grafana.com/cpu.scrape", "true"),
        ("profiles.grafana.com/cpu.port_name", "pprof"),
    ]);
    let mut everywhere = mk_target("ops", "all-web", "web", port("pprof"));
    everywhere.spec.namespace_selector = Some(NamespaceSelector {
        match_names: Some(vec!["shop".into(), "prod-shop".into()]),
        ..Default::default()
    });
    let mut inputs = Inputs {
        policies: vec![prod_only],
        targets: vec![mk_target("shop", "web", "web", port("pprof")), everywhere],
        pods: vec![
            mk_pod("shop", "web-1", &[("app", "web")], "n", "127.0.0.2"),
            annotated,
            mk_pod("prod-shop", "web-1", &[("app", "web")], "n", "127.0.0.4"),
        ],
        namespaces: vec![mk_ns("shop", &[]), mk_ns("prod-shop", &[("env", "prod")])],
        ..Default::default()
    };
    let c = compile(&inputs);
    // Only the governed namespace's pod is scraped, and only towards its policy's sink.
    assert_eq!(names(&c).len(), 5);
    assert!(
        jobs(&c)
            .iter()
            .all(|j| j.labels["namespace"] == "prod-shop" && j.sinks == ["prod/prod-files"])
    );
    let web = facts(&c, "shop", "web");
    assert_eq!((web.matched_pods, web.active_jobs), (1, 0));
    assert_eq!(
        web.problems.iter().collect::<Vec<_>>(),
        [&Problem {
            reason: "NoPolicy",
            message: "namespace shop is selected by no ProfilingPolicy; profiles would go nowhere"
                .into()
        }]
    );
    // A target spanning both: jobs where a policy governs, NoPolicy for the rest.
    let all = facts(&c, "ops", "all-web");
    assert_eq!((all.matched_pods, all.active_jobs), (2, 5));
    assert_eq!(reasons(all), ["NoPolicy"]);
    assert_eq!(c.ungoverned_pods, BTreeMap::from([("shop".to_string(), 1)]));

    // The namespace gets the label back: everything recovers.
    inputs.namespaces[0] = mk_ns("shop", &[("env", "prod")]);
    let c = compile(&inputs);
    assert_eq!(facts(&c, "shop", "web").active_jobs, 5);
    assert!(facts(&c, "shop", "web").problems.is_empty());
    assert!(facts(&c, "ops", "all-web").problems.is_empty());
    assert!(c.ungoverned_pods.is_empty());
    assert!(
        jobs(&c)
            .iter()
            .any(|j| j.labels["pod"] == "api-1" && j.profile.name == "process_cpu")
    );
}

#[test]
fn a_target_in_a_namespace_without_policy_says_so_before_any_pod_runs() {
    let inputs = Inputs {
        targets: vec![mk_target("shop", "web", "web", port("pprof"))],
        namespaces: vec![mk_ns("shop", &[])],
        ..Default::default()
    };
    let c = compile(&inputs);
    assert_eq!(
        reasons(facts(&c, "shop", "web")),
        ["NoMatchingPods", "NoPolicy"]
    );
}

#[test]
fn a_port_name_two_containers_declare_gives_a_target_per_container() {
    let inputs = Inputs {
        policies: vec![mk_policy("default", 0, |_| {})],
        targets: vec![mk_target("shop", "web", "web", port("pprof"))],
        pods: vec![with_sidecar(mk_pod(
            "shop",
            "web-1",
            &[("app", "web")],
            "n",
            "127.0.0.2",
        ))],
        namespaces: vec![mk_ns("shop", &[])],
        ..Default::default()
    };
    let c = compile(&inputs);
    let mut cpu: Vec<(&str, &str)> = jobs(&c)
        .into_iter()
        .filter(|j| j.profile.name == "process_cpu")
        .map(|j| (j.labels["container"].as_str(), j.address.as_str()))
        .collect();
    cpu.sort_unstable();
    // 6060 is one socket, whichever containers declare it: scraped once.
    assert_eq!(
        cpu,
        [("app", "127.0.0.2:6060"), ("sidecar", "127.0.0.2:6061")]
    );
    let ids: BTreeSet<&str> = jobs(&c).iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids.len(), 10, "every job has its own id");
    let f = facts(&c, "shop", "web");
    assert_eq!((f.matched_pods, f.active_jobs), (1, 10));
    assert!(f.problems.is_empty(), "{:?}", f.problems);
}
