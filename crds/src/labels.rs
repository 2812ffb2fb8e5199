//! The label pipeline, defined once for every source of profiles (the operator's compile of pod
//! targets, the scraper's standalone targets, and the eBPF mode):
//!
//! 1. discovery labels ([`pod_discovery_labels`], or a static target's `__address__`/`job`), plus
//!    the target's static labels; `service_name` from the first non-empty of the pod's
//!    [`SERVICE_NAME_ANNOTATIONS`], else the target's `serviceName`; the source-code labels of
//!    [`SOURCE_CODE_ANNOTATIONS`]; `__delta__="false"` for profiles that hold deltas
//!    ([`mark_delta`]);
//! 2. `__name__` set to the profile type, so rules can match on it;
//! 3. relabel rules (Prometheus semantics; a `drop` ends here with `None`);
//! 4. `service_name`, when no rule or label set it: `<namespace>/<container>` from the Kubernetes
//!    discovery labels (as Grafana Alloy does), else the `job` label, else [`UNKNOWN_SERVICE`];
//! 5. `__name__`: the value the rules left, or the profile type when they removed it;
//! 6. `instance` is set to `__address__` when no rule set it (Prometheus and Alloy do); every
//!    other `__*` label but `__delta__` is removed (Alloy's `pyroscope.write` keeps `__name__`
//!    and `__delta__`; sinks of stores that do not know `__delta__` drop it themselves);
//! 7. external labels are added, never overriding.
//!
//! [`finalize`] is idempotent on its own output when no further rules are given, so the operator
//! can run steps 1–6 and publish the result, and the scraper can run the same function again
//! (with the external labels) without changing anything the operator decided.

use crate::{
    ResolvedProfile,
    constants::{SERVICE_NAME_ANNOTATIONS, SOURCE_CODE_ANNOTATIONS, labels as names},
    relabel::{CompiledRelabel, Labels, relabel, sanitize_label_name},
};

/// `service_name` of a profile whose labels name no service, namespace or job.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// What the label pipeline needs of a pod and one of its containers.
#[derive(Clone, Copy, Debug)]
pub struct PodContainer<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Pod name.
    pub pod: &'a str,
    /// Pod UID.
    pub uid: &'a str,
    /// Pod IP, when it has one.
    pub ip: Option<&'a str>,
    /// Node the pod runs on.
    pub node: Option<&'a str>,
    /// Pod labels.
    pub labels: &'a crate::packed::PackedMap,
    /// Pod annotations.
    pub annotations: &'a crate::packed::PackedMap,
    /// Container name.
    pub container: &'a str,
}

/// The port a pull target is scraped on.
#[derive(Clone, Copy, Debug)]
pub struct TargetPort<'a> {
    /// The container port's name, if it has one.
    pub name: Option<&'a str>,
    /// The port number.
    pub number: i32,
    /// `host:port` to scrape.
    pub address: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
}

/// Discovery labels of a pod's container (and port, for pull targets), as Prometheus'
/// Kubernetes discovery names them, plus the plain `namespace`, `pod`, `container` and `node`
/// labels every profile carries.
pub fn pod_discovery_labels(pod: &PodContainer<'_>, port: Option<&TargetPort<'_>>) -> Labels {
    let mut l = Labels::new();
    if let Some(port) = port {
        l.insert(names::ADDRESS.into(), port.address.into());
        l.insert(names::SCHEME.into(), port.scheme.into());
        if let Some(name) = port.name {
            l.insert(names::META_CONTAINER_PORT_NAME.into(), name.into());
        }
        l.insert(
            names::META_CONTAINER_PORT_NUMBER.into(),
            port.number.to_string(),
        );
    }
    l.insert(names::META_NAMESPACE.into(), pod.namespace.into());
    l.insert(names::META_POD_NAME.into(), pod.pod.into());
    l.insert(names::META_POD_UID.into(), pod.uid.into());
    if let Some(ip) = pod.ip {
        l.insert(names::META_POD_IP.into(), ip.into());
    }
    l.insert(names::META_CONTAINER_NAME.into(), pod.container.into());
    if let Some(node) = pod.node {
        l.insert(names::META_NODE_NAME.into(), node.into());
        l.insert("node".into(), node.into());
    }
    for (k, v) in pod.labels.iter() {
        l.insert(
            format!("{}{}", names::META_POD_LABEL_PREFIX, sanitize_label_name(k)),
            v.into(),
        );
    }
    for (k, v) in pod.annotations.iter() {
        l.insert(
            format!(
                "{}{}",
                names::META_POD_ANNOTATION_PREFIX,
                sanitize_label_name(k)
            ),
            v.into(),
        );
    }
    l.insert("namespace".into(), pod.namespace.into());
    l.insert("pod".into(), pod.pod.into());
    l.insert("container".into(), pod.container.into());
    let annotation = |key: &str| {
        pod.annotations
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    if let Some(service) = SERVICE_NAME_ANNOTATIONS.into_iter().find_map(annotation) {
        l.insert(names::SERVICE_NAME.into(), service.into());
    }
    for (key, label) in SOURCE_CODE_ANNOTATIONS {
        if let Some(v) = annotation(key) {
            l.insert(label.into(), v.into());
        }
    }
    l
}

/// Marks the labels of a profile that holds deltas (computed by the scraper, or by a
/// godeltaprof endpoint) with `__delta__="false"`, so that Pyroscope does not compute deltas
/// of it again; removes a stale mark otherwise.
pub fn mark_delta(l: &mut Labels, profile: &ResolvedProfile) {
    if profile.sends_deltas() {
        l.insert(names::DELTA.into(), "false".into());
    } else {
        l.remove(names::DELTA);
    }
}

/// The `service_name` of labels that do not set one (step 4 of the pipeline).
pub fn default_service_name(l: &Labels) -> String {
    match (
        l.get(names::META_NAMESPACE),
        l.get(names::META_CONTAINER_NAME),
    ) {
        (Some(ns), Some(container)) => format!("{ns}/{container}"),
        _ => l
            .get(names::JOB)
            .filter(|j| !j.is_empty())
            .cloned()
            .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned()),
    }
}

/// The final labels of a profile of type `profile_name` (steps 2–7), or `None` when a rule
/// drops it.
pub fn finalize(
    l: Labels,
    profile_name: &str,
    rules: &[CompiledRelabel],
    external: &Labels,
) -> Option<Labels> {
    let l = apply_rules(l, profile_name, rules)?;
    Some(finish(l, profile_name, external))
}

/// Steps 2–3: the labels after the relabel rules, internal labels (`__address__`, ...) still
/// present, or `None` when a rule drops the target.
pub fn apply_rules(mut l: Labels, profile_name: &str, rules: &[CompiledRelabel]) -> Option<Labels> {
    // Already-final labels keep the `__name__` an earlier pass decided.
    l.entry(names::NAME.to_owned())
        .or_insert_with(|| profile_name.to_owned());
    relabel(&mut l, rules).then_some(l)
}

/// Steps 4–7 on the output of [`apply_rules`].
pub fn finish(mut l: Labels, profile_name: &str, external: &Labels) -> Labels {
    if l.get(names::SERVICE_NAME).is_none_or(String::is_empty) {
        let service = default_service_name(&l);
        l.insert(names::SERVICE_NAME.to_owned(), service);
    }
    let name = l
        .remove(names::NAME)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| profile_name.to_owned());
    if !l.contains_key(names::INSTANCE)
        && let Some(address) = l.get(names::ADDRESS).filter(|a| !a.is_empty()).cloned()
    {
        l.insert(names::INSTANCE.to_owned(), address);
    }
    l.retain(|k, _| !k.starts_with(names::RESERVED_PREFIX) || k == names::DELTA);
    l.insert(names::NAME.to_owned(), name);
    for (k, v) in external {
        l.entry(k.clone()).or_insert_with(|| v.clone());
    }
    l
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;
    use crate::{RelabelAction, RelabelConfig, relabel::compile_all};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn rule(f: impl FnOnce(&mut RelabelConfig)) -> RelabelConfig {
        let mut r = RelabelConfig::default();
        f(&mut r);
        r
    }

    fn pod_labels() -> Labels {
        let pod_l = labels(&[("app.kubernetes.io/name", "checkout")]);
        let ann = labels(&[("profiles.grafana.com/cpu.scrape", "true")]);
        pod_discovery_labels(
            &PodContainer {
                namespace: "shop",
                pod: "checkout-1",
                uid: "u-1",
                ip: Some("10.0.0.1"),
                node: Some("node-a"),
                labels: &(&pod_l).into(),
                annotations: &(&ann).into(),
                container: "app",
            },
            Some(&TargetPort {
                name: Some("pprof"),
                number: 6060,
                address: "10.0.0.1:6060",
                scheme: "http",
            }),
        )
    }

    #[test]
    fn discovery_labels_of_a_pod_port() {
        assert_eq!(
            pod_labels(),
            labels(&[
                ("__address__", "10.0.0.1:6060"),
                ("__meta_kubernetes_namespace", "shop"),
                (
                    "__meta_kubernetes_pod_annotation_profiles_grafana_com_cpu_scrape",
                    "true"
                ),
                ("__meta_kubernetes_pod_container_name", "app"),
                ("__meta_kubernetes_pod_container_port_name", "pprof"),
                ("__meta_kubernetes_pod_container_port_number", "6060"),
                ("__meta_kubernetes_pod_ip", "10.0.0.1"),
                (
                    "__meta_kubernetes_pod_label_app_kubernetes_io_name",
                    "checkout"
                ),
                ("__meta_kubernetes_pod_name", "checkout-1"),
                ("__meta_kubernetes_pod_node_name", "node-a"),
                ("__meta_kubernetes_pod_uid", "u-1"),
                ("__scheme__", "http"),
                ("container", "app"),
                ("namespace", "shop"),
                ("node", "node-a"),
                ("pod", "checkout-1"),
            ])
        );
    }

    #[test]
    fn annotations_name_the_service_and_its_source() {
        let of = |pairs: &[(&str, &str)]| {
            let ann = labels(pairs);
            let l = pod_discovery_labels(
                &PodContainer {
                    namespace: "shop",
                    pod: "checkout-1",
                    uid: "u-1",
                    ip: None,
                    node: None,
                    labels: &crate::packed::PackedMap::new(),
                    annotations: &(&ann).into(),
                    container: "app",
                },
                None,
            );
            finish(l, "memory", &Labels::new())
        };
        let service = |pairs: &[(&str, &str)]| of(pairs)["service_name"].clone();
        let all = [
            ("pyroscope.io/application-name", "legacy"),
            ("pyroscope.io/service_name", "pyro"),
            ("resource.opentelemetry.io/service.name", "otel"),
            ("profiles.grafana.com/service_name", "grafana"),
        ];
        // Each source beats the ones after it; an empty value counts as unset.
        assert_eq!(service(&all), "grafana");
        assert_eq!(service(&all[..3]), "otel");
        assert_eq!(service(&all[..2]), "pyro");
        assert_eq!(service(&all[..1]), "legacy");
        assert_eq!(
            service(&[("profiles.grafana.com/service_name", " "), all[0]]),
            "legacy"
        );
        assert_eq!(service(&[]), "shop/app");
        let l = of(&[
            (
                "profiles.grafana.com/service_repository",
                "https://github.com/acme/shop",
            ),
            ("profiles.grafana.com/service_git_ref", "v1.2.3"),
            ("profiles.grafana.com/service_root_path", "src/checkout"),
        ]);
        assert_eq!(l["service_repository"], "https://github.com/acme/shop");
        assert_eq!(l["service_git_ref"], "v1.2.3");
        assert_eq!(l["service_root_path"], "src/checkout");
    }

    #[test]
    fn only_profiles_holding_deltas_are_marked() {
        let mut l = Labels::new();
        let memory = crate::Profiles::default().resolve(&crate::ProfileKind::ALL, 15);
        for p in &memory {
            mark_delta(&mut l, p);
            let want = matches!(p.name.as_str(), "memory" | "mutex" | "block");
            assert_eq!(l.contains_key("__delta__"), want, "{}", p.name);
        }
    }

    /// One row: rules, external labels, the expected result (`None`: dropped).
    struct Case {
        name: &'static str,
        input: Labels,
        rules: Vec<RelabelConfig>,
        external: Labels,
        want: Option<Labels>,
    }

    #[test]
    fn pipeline_table() {
        let cases = vec![
            Case {
                name: "kubernetes target: service_name from namespace/container, __* removed",
                input: pod_labels(),
                rules: vec![],
                external: labels(&[("cluster", "eu"), ("pod", "ignored")]),
                want: Some(labels(&[
                    ("__name__", "process_cpu"),
                    ("cluster", "eu"),
                    ("container", "app"),
                    ("instance", "10.0.0.1:6060"),
                    ("namespace", "shop"),
                    ("node", "node-a"),
                    ("pod", "checkout-1"),
                    ("service_name", "shop/app"),
                ])),
            },
            Case {
                name: "static target: service_name from job",
                input: labels(&[("__address__", "127.0.0.1:6060"), ("job", "demo")]),
                rules: vec![],
                external: Labels::new(),
                want: Some(labels(&[
                    ("__name__", "process_cpu"),
                    ("instance", "127.0.0.1:6060"),
                    ("job", "demo"),
                    ("service_name", "demo"),
                ])),
            },
            Case {
                name: "nothing to name the service by",
                input: labels(&[("__address__", "127.0.0.1:6060")]),
                rules: vec![],
                external: Labels::new(),
                want: Some(labels(&[
                    ("__name__", "process_cpu"),
                    ("instance", "127.0.0.1:6060"),
                    ("service_name", UNKNOWN_SERVICE),
                ])),
            },
            Case {
                name: "an explicit service_name wins over the default",
                input: {
                    let mut l = pod_labels();
                    l.insert("service_name".into(), "checkout".into());
                    l
                },
                rules: vec![rule(|r| {
                    r.action = RelabelAction::LabelKeep;
                    r.regex = "__.*|service_name".into();
                })],
                external: Labels::new(),
                want: Some(labels(&[
                    ("__name__", "process_cpu"),
                    ("instance", "10.0.0.1:6060"),
                    ("service_name", "checkout"),
                ])),
            },
            Case {
                name: "an empty service_name counts as unset",
                input: labels(&[("job", "demo"), ("service_name", "")]),
                rules: vec![],
                external: Labels::new(),
                want: Some(labels(&[
                    ("__name__", "process_cpu"),
                    ("job", "demo"),
                    ("service_name", "demo"),
                ])),
            },
            Case {
                name: "rules see the profile type and can drop it",
                input: pod_labels(),
                rules: vec![rule(|r| {
                    r.source_labels = vec!["__name__".into()];
                    r.regex = "process_cpu".into();
                    r.action = RelabelAction::Drop;
                })],
                external: Labels::new(),
                want: None,
            },
            Case {
                name: "a rule may rename __name__, and removing it restores the type",
                input: labels(&[("job", "demo")]),
                rules: vec![rule(|r| {
                    r.action = RelabelAction::LabelDrop;
                    r.regex = "__name__".into();
                })],
                external: Labels::new(),
                want: Some(labels(&[
                    ("__name__", "process_cpu"),
                    ("job", "demo"),
                    ("service_name", "demo"),
                ])),
            },
            Case {
                name: "a rule setting __name__ is kept",
                input: labels(&[("job", "demo")]),
                rules: vec![rule(|r| {
                    r.target_label = Some("__name__".into());
                    r.replacement = "wall".into();
                    r.source_labels = vec!["job".into()];
                })],
                external: Labels::new(),
                want: Some(labels(&[
                    ("__name__", "wall"),
                    ("job", "demo"),
                    ("service_name", "demo"),
                ])),
            },
            Case {
                name: "rules run on discovery labels before they are removed",
                input: pod_labels(),
                rules: vec![rule(|r| {
                    r.source_labels =
                        vec!["__meta_kubernetes_pod_label_app_kubernetes_io_name".into()];
                    r.target_label = Some("app".into());
                })],
                external: Labels::new(),
                want: Some(labels(&[
                    ("__name__", "process_cpu"),
                    ("app", "checkout"),
                    ("container", "app"),
                    ("instance", "10.0.0.1:6060"),
                    ("namespace", "shop"),
                    ("node", "node-a"),
                    ("pod", "checkout-1"),
                    ("service_name", "shop/app"),
                ])),
            },
            Case {
                name: "__delta__ is kept, like __name__; a rule's instance is kept",
                input: labels(&[
                    ("__address__", "10.0.0.1:6060"),
                    ("__delta__", "false"),
                    ("job", "demo"),
                ]),
                rules: vec![rule(|r| {
                    r.target_label = Some("instance".into());
                    r.replacement = "checkout-1".into();
                })],
                external: Labels::new(),
                want: Some(labels(&[
                    ("__delta__", "false"),
                    ("__name__", "process_cpu"),
                    ("instance", "checkout-1"),
                    ("job", "demo"),
                    ("service_name", "demo"),
                ])),
            },
        ];
        for case in cases {
            let rules = compile_all(&case.rules).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let got = finalize(case.input.clone(), "process_cpu", &rules, &case.external);
            assert_eq!(got, case.want, "{}", case.name);
            // The scraper runs the pipeline again on what the operator published.
            if let Some(once) = got {
                let twice = finalize(once.clone(), "process_cpu", &[], &case.external);
                assert_eq!(twice, Some(once), "{}: not idempotent", case.name);
            }
        }
    }
}
