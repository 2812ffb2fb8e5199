//! Policies: which one governs a namespace, and how its defaults and limits apply.

use kubeprof_crds::Duration;
use pretty_assertions::assert_eq;

use super::*;

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
        ..Default::default()
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
        ..Default::default()
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
        ..Default::default()
    };
    let c = compile(&inputs);
    assert_eq!(jobs(&c).len(), 2 * 5);
    assert_eq!(reasons(facts(&c, "shop", "web")), ["LimitExceeded"]);
}
