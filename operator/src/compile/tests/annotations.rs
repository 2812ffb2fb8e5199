//! Annotated pods: the Grafana and Pyroscope conventions, and targets taking precedence.

use kubeprof_crds::{Profiles, job::OriginKind};
use pretty_assertions::assert_eq;

use super::*;

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
                profiles: Profiles {
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
fn annotation_mistakes_are_reported_on_the_governing_policy() {
    let mut pod = mk_pod("shop", "g", &[], "n", "127.0.0.2");
    pod.annotations = map(&[
        ("profiles.grafana.com/cpu.scrape", "true"),
        ("profiles.grafana.com/cpu.port", "sixty"),
        ("profiles.grafana.com/memory.scrape", "true"),
        ("profiles.grafana.com/memory.port_name", "nope"),
    ]);
    let inputs = Inputs {
        policies: vec![mk_policy("p", 0, |_| {})],
        pods: vec![pod],
        namespaces: vec![mk_ns("shop", &[])],
        ..Default::default()
    };
    let c = compile(&inputs);
    // Two ports on the pod and neither usable annotation: no job, two problems.
    assert!(jobs(&c).is_empty());
    let problems: Vec<(&str, &str)> = c.policies["p"]
        .problems
        .iter()
        .map(|p| (p.reason, p.message.as_str()))
        .collect();
    assert_eq!(
        problems,
        [
            (
                "InvalidSpec",
                r#"pod shop/g: profiles.grafana.com/cpu.port: "sixty" is not a port number"#
            ),
            (
                "PortNotFound",
                "pod shop/g: annotations for cpu name no port the pod declares"
            ),
            (
                "PortNotFound",
                "pod shop/g: annotations for memory name no port the pod declares"
            ),
        ]
    );
    // A pod that produced no job is no target of the policy.
    assert_eq!(c.policies["p"].targets, 0);
}
