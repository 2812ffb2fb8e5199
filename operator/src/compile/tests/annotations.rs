//! Annotated pods: the Grafana and Pyroscope conventions, and targets taking precedence.

use kubeprof_crds::{ProfileKind, Profiles, job::OriginKind, relabel::Labels};
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
        policies: vec![mk_policy("p", 0, |_| {})],
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

/// One row of the compatibility table: a pod's annotations and the jobs kubeprof makes of
/// them, as (`__name__`, path, `host:port`, `seconds`) with the final labels.
struct CompatRow {
    name: &'static str,
    annotations: &'static [(&'static str, &'static str)],
    want: Vec<(
        &'static str,
        &'static str,
        &'static str,
        Option<u32>,
        Labels,
    )>,
}

/// The labels Alloy's chart pipeline gives every profile of pod `compat` in `shop`
/// (grafana/pyroscope `operations/pyroscope/helm/pyroscope/templates/configmap-alloy.yaml`:
/// `namespace`, `pod`, `container`; `pyroscope.scrape` adds `instance` and `job` and infers
/// `service_name` as `<namespace>/<container>`), with kubeprof's differences: `job` names
/// kubeprof rather than the Alloy component, `node` is added, and pod labels are not copied
/// unless the policy asks (`podLabels`).
fn compat_labels(name: &str, address: &str, extra: &[(&str, &str)]) -> Labels {
    let mut l: Labels = map(&[
        ("__name__", name),
        ("container", "app"),
        ("instance", address),
        ("job", "kubeprof/annotations"),
        ("namespace", "shop"),
        ("node", "n"),
        ("pod", "compat"),
        ("service_name", "shop/app"),
    ]);
    l.extend(map::<Labels>(extra));
    l
}

#[test]
fn alloy_and_pyroscope_chart_annotations_give_the_same_jobs_and_labels() {
    const A6060: &str = "127.0.0.9:6060";
    const A8080: &str = "127.0.0.9:8080";
    let delta = [("__delta__", "false")];
    let rows = vec![
        CompatRow {
            name: "grafana keys with port",
            annotations: &[
                ("profiles.grafana.com/cpu.scrape", "true"),
                ("profiles.grafana.com/cpu.port", "8080"),
            ],
            want: vec![(
                "process_cpu",
                "/debug/pprof/profile",
                A8080,
                Some(15),
                compat_labels("process_cpu", A8080, &[]),
            )],
        },
        CompatRow {
            name: "grafana keys with port_name; memory is delta'd here, so marked",
            annotations: &[
                ("profiles.grafana.com/memory.scrape", "true"),
                ("profiles.grafana.com/memory.port_name", "pprof"),
            ],
            want: vec![(
                "memory",
                "/debug/pprof/allocs",
                A6060,
                None,
                compat_labels("memory", A6060, &delta),
            )],
        },
        CompatRow {
            name: "path and scheme",
            annotations: &[
                ("profiles.grafana.com/goroutine.scrape", "true"),
                ("profiles.grafana.com/goroutine.port", "6060"),
                ("profiles.grafana.com/goroutine.path", "/admin/goroutine"),
                ("profiles.grafana.com/goroutine.scheme", "https"),
            ],
            want: vec![(
                "goroutine",
                "/admin/goroutine",
                A6060,
                None,
                compat_labels("goroutine", A6060, &[]),
            )],
        },
        CompatRow {
            name: "service_name: the grafana annotation beats the OpenTelemetry and pyroscope ones",
            annotations: &[
                ("profiles.grafana.com/mutex.scrape", "true"),
                ("profiles.grafana.com/mutex.port", "6060"),
                ("profiles.grafana.com/service_name", "checkout"),
                ("resource.opentelemetry.io/service.name", "otel-checkout"),
                ("pyroscope.io/service_name", "pyro-checkout"),
                ("profiles.grafana.com/service_git_ref", "v1.2.3"),
            ],
            want: vec![(
                "mutex",
                "/debug/pprof/mutex",
                A6060,
                None,
                compat_labels(
                    "mutex",
                    A6060,
                    &[
                        ("__delta__", "false"),
                        ("service_name", "checkout"),
                        ("service_git_ref", "v1.2.3"),
                    ],
                ),
            )],
        },
        CompatRow {
            name: "service_name from the OpenTelemetry resource annotation",
            annotations: &[
                ("profiles.grafana.com/block.scrape", "true"),
                ("profiles.grafana.com/block.port", "6060"),
                ("resource.opentelemetry.io/service.name", "otel-checkout"),
                ("pyroscope.io/service_name", "pyro-checkout"),
            ],
            want: vec![(
                "block",
                "/debug/pprof/block",
                A6060,
                None,
                compat_labels(
                    "block",
                    A6060,
                    &[("__delta__", "false"), ("service_name", "otel-checkout")],
                ),
            )],
        },
        CompatRow {
            name: "godeltaprof: Alloy's paths, the plain type names, already deltas",
            annotations: &[
                ("profiles.grafana.com/godeltaprof_memory.scrape", "true"),
                ("profiles.grafana.com/godeltaprof_memory.port", "6060"),
                ("profiles.grafana.com/godeltaprof_mutex.scrape", "true"),
                ("profiles.grafana.com/godeltaprof_mutex.port", "6060"),
                ("profiles.grafana.com/godeltaprof_block.scrape", "true"),
                ("profiles.grafana.com/godeltaprof_block.port", "6060"),
            ],
            want: vec![
                (
                    "block",
                    "/debug/pprof/delta_block",
                    A6060,
                    None,
                    compat_labels("block", A6060, &delta),
                ),
                (
                    "memory",
                    "/debug/pprof/delta_heap",
                    A6060,
                    None,
                    compat_labels("memory", A6060, &delta),
                ),
                (
                    "mutex",
                    "/debug/pprof/delta_mutex",
                    A6060,
                    None,
                    compat_labels("mutex", A6060, &delta),
                ),
            ],
        },
        CompatRow {
            name: "fgprof: /debug/fgprof, sampled over seconds like CPU",
            annotations: &[
                ("profiles.grafana.com/fgprof.scrape", "true"),
                ("profiles.grafana.com/fgprof.port_name", "http"),
            ],
            want: vec![(
                "fgprof",
                "/debug/fgprof",
                A8080,
                Some(15),
                compat_labels("fgprof", A8080, &[]),
            )],
        },
        CompatRow {
            name: "pyroscope.io keys: port, per-type switches, application-name",
            annotations: &[
                ("pyroscope.io/scrape", "true"),
                ("pyroscope.io/port", "8080"),
                ("pyroscope.io/application-name", "payments"),
                ("pyroscope.io/profile-mem-enabled", "false"),
                ("pyroscope.io/profile-goroutines-enabled", "false"),
                ("pyroscope.io/profile-mutex-enabled", "false"),
                ("pyroscope.io/profile-block-enabled", "false"),
            ],
            want: vec![(
                "process_cpu",
                "/debug/pprof/profile",
                A8080,
                Some(15),
                compat_labels("process_cpu", A8080, &[("service_name", "payments")]),
            )],
        },
    ];
    for row in rows {
        let mut pod = mk_pod("shop", "compat", &[("app", "compat")], "n", "127.0.0.9");
        pod.annotations = map(row.annotations);
        let c = compile(&Inputs {
            pods: vec![pod],
            namespaces: vec![mk_ns("shop", &[])],
            policies: vec![mk_policy("p", 0, |_| {})],
            ..Default::default()
        });
        let mut got: Vec<_> = jobs(&c)
            .iter()
            .map(|j| {
                (
                    j.profile.name.clone(),
                    j.profile.path.clone(),
                    j.address.clone(),
                    j.profile.seconds,
                    j.labels.clone(),
                )
            })
            .collect();
        got.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let want: Vec<_> = row
            .want
            .into_iter()
            .map(|(n, p, a, s, l)| (n.to_owned(), p.to_owned(), a.to_owned(), s, l))
            .collect();
        assert_eq!(got, want, "{}", row.name);
        // godeltaprof is never delta'd by the scraper; pull memory, mutex and block are.
        for j in jobs(&c) {
            assert_eq!(
                j.profile.delta,
                j.profile.kind.is_some_and(ProfileKind::cumulative),
                "{}",
                row.name
            );
        }
    }
}

#[test]
fn pod_labels_are_copied_only_when_the_policy_says_so() {
    let mut pod = mk_pod(
        "shop",
        "compat",
        &[("app.kubernetes.io/name", "checkout"), ("pod", "spoof")],
        "n",
        "127.0.0.9",
    );
    pod.annotations = map(&[
        ("profiles.grafana.com/cpu.scrape", "true"),
        ("profiles.grafana.com/cpu.port", "6060"),
    ]);
    let labels_with = |pod_labels: bool| {
        let c = compile(&Inputs {
            policies: vec![mk_policy("p", 0, |s| s.pod_labels = pod_labels)],
            pods: vec![pod.clone()],
            namespaces: vec![mk_ns("shop", &[])],
            ..Default::default()
        });
        jobs(&c)[0].labels.clone()
    };
    let off = labels_with(false);
    assert!(!off.contains_key("app_kubernetes_io_name"), "{off:?}");
    let on = labels_with(true);
    assert_eq!(on["app_kubernetes_io_name"], "checkout");
    // A pod label never overwrites what kubeprof sets.
    assert_eq!(on["pod"], "compat");
}

#[test]
fn an_annotated_port_name_two_containers_declare_is_scraped_in_both() {
    let mut pod = with_sidecar(mk_pod("shop", "g", &[], "n", "127.0.0.2"));
    pod.annotations = map(&[
        ("profiles.grafana.com/cpu.scrape", "true"),
        ("profiles.grafana.com/cpu.port_name", "pprof"),
    ]);
    let c = compile(&Inputs {
        pods: vec![pod],
        namespaces: vec![mk_ns("shop", &[])],
        policies: vec![mk_policy("p", 0, |_| {})],
        ..Default::default()
    });
    let mut got: Vec<(&str, &str, &str)> = jobs(&c)
        .into_iter()
        .map(|j| {
            (
                j.labels["container"].as_str(),
                j.labels["service_name"].as_str(),
                j.address.as_str(),
            )
        })
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        [
            ("app", "shop/app", "127.0.0.2:6060"),
            ("sidecar", "shop/sidecar", "127.0.0.2:6061")
        ]
    );
}
