//! eBPF sections: which nodes get one, which pods and containers they list, how those are
//! labelled, and the sinks the shard carries for them.

use kubeprof_crds::{
    RelabelAction, RelabelConfig,
    job::{EbpfPod, EbpfShard, OriginKind},
    policy::EbpfNamespaces,
    target::TargetEbpf,
};
use pretty_assertions::assert_eq;

use super::*;

fn ebpf_on(selector: Option<&[(&str, &str)]>) -> impl FnOnce(&mut ProfilingPolicySpec) {
    let selector = selector.map(|l| LabelSelector {
        match_labels: Some(map(l)),
        match_expressions: None,
    });
    move |s: &mut ProfilingPolicySpec| {
        s.ebpf.enabled = true;
        s.ebpf.node_selector = selector;
    }
}

fn section<'a>(c: &'a Compiled, node: &str) -> &'a EbpfShard {
    c.shards
        .get(&Some(node.to_string()))
        .unwrap_or_else(|| panic!("no shard for {node}: {:?}", c.shards.keys()))
        .ebpf
        .as_ref()
        .unwrap_or_else(|| panic!("no eBPF section on {node}"))
}

fn pod_names(s: &EbpfShard) -> Vec<String> {
    s.pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect()
}

fn pod<'a>(s: &'a EbpfShard, ns: &str, name: &str) -> &'a EbpfPod {
    s.pods
        .iter()
        .find(|p| p.namespace == ns && p.name == name)
        .unwrap_or_else(|| panic!("{ns}/{name} not in {:?}", pod_names(s)))
}

fn rule(target: &str, replacement: &str) -> RelabelConfig {
    RelabelConfig {
        target_label: Some(target.into()),
        replacement: replacement.into(),
        action: RelabelAction::Replace,
        ..Default::default()
    }
}

#[test]
fn a_policys_node_selector_and_namespaces_reach_the_right_shards() {
    let mut stopped = mk_pod("shop", "stopped", &[("app", "web")], "n-ebpf", "10.0.0.4");
    stopped.running = false;
    let mut waiting = mk_pod("shop", "waiting", &[("app", "web")], "n-ebpf", "10.0.0.5");
    waiting.containers[0].id = None;
    let inputs = Inputs {
        policies: vec![mk_policy("p", 0, |s| {
            ebpf_on(Some(&[("kubeprof.io/ebpf", "true")]))(s);
            s.ebpf.namespaces = EbpfNamespaces {
                include: vec![],
                exclude: vec!["secret".into()],
            };
            s.external_labels = map(&[("cluster", "eu")]);
            s.relabelings = vec![rule("team", "core")];
        })],
        namespaces: vec![mk_ns("shop", &[]), mk_ns("secret", &[])],
        nodes: vec![
            mk_node("n-ebpf", &[("kubeprof.io/ebpf", "true")]),
            mk_node("n-plain", &[("kubeprof.io/ebpf", "false")]),
        ],
        pods: vec![
            with_sidecar(mk_pod("shop", "a", &[("app", "web")], "n-ebpf", "10.0.0.1")),
            mk_pod("shop", "b", &[("app", "web")], "n-plain", "10.0.0.2"),
            mk_pod("secret", "c", &[("app", "web")], "n-ebpf", "10.0.0.3"),
            stopped,
            waiting,
        ],
        ..Default::default()
    };
    let c = compile(&inputs);
    // No target, no annotation: no pull job anywhere, and no shard on the unselected node.
    assert!(jobs(&c).is_empty());
    assert_eq!(
        c.shards.keys().collect::<Vec<_>>(),
        [&Some("n-ebpf".to_string())]
    );
    let s = section(&c, "n-ebpf");
    // Excluded namespace, stopped pod and pod without a started container: absent.
    assert_eq!(pod_names(s), ["shop/a"]);
    let a = pod(s, "shop", "a");
    let containers: Vec<(&str, &str)> = a
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.id.as_str()))
        .collect();
    assert_eq!(
        containers,
        [("app", "shop-a-app"), ("sidecar", "shop-a-sidecar")],
        "only started containers, with their IDs"
    );
    let l = &a.labelling;
    assert_eq!(
        (l.origin.kind, l.origin.name.as_str()),
        (OriginKind::ProfilingPolicy, "p")
    );
    assert_eq!(l.labels["namespace"], "shop");
    assert_eq!(l.labels["pod"], "a");
    assert_eq!(l.labels["node"], "n-ebpf");
    assert_eq!(l.labels["__meta_kubernetes_pod_label_app"], "web");
    assert_eq!(l.labels["__meta_kubernetes_pod_uid"], "uid-shop-a");
    for per_port_or_container in [
        "container",
        "__meta_kubernetes_pod_container_name",
        "__address__",
        "__meta_kubernetes_pod_container_port_number",
    ] {
        assert!(
            !l.labels.contains_key(per_port_or_container),
            "{per_port_or_container}"
        );
    }
    assert_eq!(l.relabelings, vec![rule("team", "core")]);
    assert_eq!(l.external_labels, map(&[("cluster", "eu")]));
    assert_eq!(l.sinks, ["p/p-files"]);
    // The sink travels with the shard although no pull job names it.
    let shard = &c.shards[&Some("n-ebpf".to_string())];
    assert_eq!(
        shard
            .sinks
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["p/p-files"]
    );
    assert_eq!((s.sample_rate, s.host_processes), (97, false));
    assert_eq!(s.host, None);
    assert_eq!(
        c.policies["p"].ebpf_nodes,
        BTreeSet::from(["n-ebpf".to_string()])
    );
}

#[test]
fn pull_jobs_and_the_ebpf_section_share_a_shard() {
    let inputs = Inputs {
        policies: vec![mk_policy("p", 0, ebpf_on(None))],
        targets: vec![mk_target("shop", "web", "web", port("pprof"))],
        namespaces: vec![mk_ns("shop", &[])],
        nodes: vec![mk_node("n", &[])],
        pods: vec![mk_pod("shop", "a", &[("app", "web")], "n", "10.0.0.1")],
        ..Default::default()
    };
    let c = compile(&inputs);
    let shard = &c.shards[&Some("n".to_string())];
    assert!(!shard.jobs.is_empty());
    assert_eq!(pod_names(section(&c, "n")), ["shop/a"]);
    // The target does not opt in: the policy is the origin.
    assert_eq!(
        section(&c, "n").pods[0].labelling.origin.kind,
        OriginKind::ProfilingPolicy
    );
}

#[test]
fn a_target_opt_in_adds_its_pods_where_the_policys_namespaces_do_not() {
    let mut opted = mk_target("shop", "web", "web", port("pprof"));
    opted.spec.labels = map(&[("tier", "front")]);
    opted.spec.service_name = Some("shop-web".into());
    opted.spec.ebpf = Some(TargetEbpf {
        enabled: true,
        relabelings: vec![rule("from", "target")],
    });
    // In a namespace whose policy runs no eBPF, the opt-in does nothing.
    let mut elsewhere = mk_target("batch", "web", "web", port("pprof"));
    elsewhere.spec.ebpf = opted.spec.ebpf.clone();
    let mut suspended = mk_target("shop", "db", "db", port("pprof"));
    suspended.spec.suspend = true;
    suspended.spec.ebpf = opted.spec.ebpf.clone();
    let inputs = Inputs {
        policies: vec![
            mk_policy("p", 0, |s| {
                ebpf_on(None)(s);
                s.ebpf.namespaces.include = vec!["other".into()];
                s.relabelings = vec![rule("from", "policy")];
                s.namespace_selector = Some(LabelSelector {
                    match_labels: Some(map(&[("team", "a")])),
                    match_expressions: None,
                });
            }),
            mk_policy("q", 0, |s| {
                s.namespace_selector = Some(LabelSelector {
                    match_labels: Some(map(&[("team", "b")])),
                    match_expressions: None,
                });
            }),
        ],
        targets: vec![opted, elsewhere, suspended],
        namespaces: vec![
            mk_ns("shop", &[("team", "a")]),
            mk_ns("other", &[("team", "a")]),
            mk_ns("batch", &[("team", "b")]),
        ],
        nodes: vec![mk_node("n", &[])],
        pods: vec![
            mk_pod("shop", "web-1", &[("app", "web")], "n", "10.0.0.1"),
            mk_pod("shop", "db-1", &[("app", "db")], "n", "10.0.0.2"),
            mk_pod("other", "any", &[("app", "x")], "n", "10.0.0.3"),
            mk_pod("batch", "web-2", &[("app", "web")], "n", "10.0.0.4"),
        ],
        ..Default::default()
    };
    let c = compile(&inputs);
    let s = section(&c, "n");
    assert_eq!(pod_names(s), ["other/any", "shop/web-1"]);
    let l = &pod(s, "shop", "web-1").labelling;
    assert_eq!(
        (
            l.origin.kind,
            l.origin.namespace.as_str(),
            l.origin.name.as_str()
        ),
        (OriginKind::ProfilingTarget, "shop", "web")
    );
    assert_eq!(l.labels["tier"], "front");
    assert_eq!(l.labels["service_name"], "shop-web");
    assert_eq!(
        l.relabelings,
        vec![rule("from", "policy"), rule("from", "target")],
        "the policy's rules, then the target's"
    );
    assert_eq!(l.sinks, ["p/p-files"]);
    let any = &pod(s, "other", "any").labelling;
    assert_eq!(any.origin.kind, OriginKind::ProfilingPolicy);
    assert!(!any.labels.contains_key("tier"));
    // q runs no eBPF: it selects no node.
    assert!(!c.policies["q"].ebpf_nodes.contains("n"));
}

#[test]
fn the_rate_is_the_highest_and_host_processes_follow_the_first_policy_asking() {
    let governs_nothing = |s: &mut ProfilingPolicySpec| {
        s.namespace_selector = Some(LabelSelector {
            match_labels: Some(map(&[("team", "none")])),
            match_expressions: None,
        });
    };
    let low = mk_policy("low", 0, |s| {
        ebpf_on(None)(s);
        s.ebpf.sample_rate = 49;
        s.ebpf.host_processes = true;
        s.external_labels = map(&[("cluster", "eu")]);
        s.relabelings = vec![rule("host", "yes")];
    });
    let high = mk_policy("high", 5, |s| {
        ebpf_on(Some(&[("zone", "a")]))(s);
        s.ebpf.sample_rate = 199;
        governs_nothing(s);
    });
    let inputs = Inputs {
        policies: vec![low.clone(), high.clone()],
        namespaces: vec![mk_ns("shop", &[])],
        nodes: vec![
            mk_node("a", &[("zone", "a")]),
            mk_node("b", &[("zone", "b")]),
        ],
        ..Default::default()
    };
    let c = compile(&inputs);
    // No pod at all: both nodes still get a section, for the host and the profiler's health.
    let a = section(&c, "a");
    assert_eq!((a.sample_rate, a.host_processes), (199, true));
    assert!(a.pods.is_empty());
    let host = a.host.as_ref().unwrap();
    assert_eq!(
        (host.origin.kind, host.origin.name.as_str()),
        (OriginKind::ProfilingPolicy, "low")
    );
    assert_eq!(host.sinks, ["low/low-files"]);
    assert_eq!(host.external_labels, map(&[("cluster", "eu")]));
    assert_eq!(host.relabelings, vec![rule("host", "yes")]);
    assert_eq!(
        c.shards[&Some("a".to_string())]
            .sinks
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["low/low-files"]
    );
    assert_eq!(section(&c, "b").sample_rate, 49);
    assert_eq!(c.policies["high"].ebpf_nodes.len(), 1);
    assert_eq!(c.policies["low"].ebpf_nodes.len(), 2);

    // When the higher-priority policy asks too, it labels the host.
    let mut high_host = high;
    high_host.spec.ebpf.host_processes = true;
    let c = compile(&Inputs {
        policies: vec![low, high_host],
        ..inputs.clone()
    });
    assert_eq!(section(&c, "a").host.as_ref().unwrap().origin.name, "high");
    assert_eq!(section(&c, "b").host.as_ref().unwrap().origin.name, "low");
}

#[test]
fn nodes_no_policy_selects_get_no_section_and_without_jobs_no_shard() {
    let inputs = Inputs {
        policies: vec![
            mk_policy("p", 0, ebpf_on(Some(&[("gpu", "yes")]))),
            // Disabled: its selector selects nothing.
            mk_policy("off", 0, |s| s.ebpf.node_selector = None),
        ],
        targets: vec![mk_target("shop", "web", "web", port("pprof"))],
        namespaces: vec![mk_ns("shop", &[])],
        nodes: vec![mk_node("n", &[]), mk_node("idle", &[])],
        pods: vec![mk_pod("shop", "a", &[("app", "web")], "n", "10.0.0.1")],
        ..Default::default()
    };
    let c = compile(&inputs);
    assert_eq!(
        c.shards.keys().collect::<Vec<_>>(),
        [&Some("n".to_string())]
    );
    assert_eq!(c.shards[&Some("n".to_string())].ebpf, None);
    assert!(c.policies["p"].ebpf_nodes.is_empty());
    assert!(c.policies["off"].ebpf_nodes.is_empty());
}

#[test]
fn an_invalid_node_selector_selects_no_node_and_is_reported() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    let inputs = Inputs {
        policies: vec![mk_policy("p", 0, |s| {
            s.ebpf.enabled = true;
            s.ebpf.node_selector = Some(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "zone".into(),
                    operator: "In".into(),
                    values: None,
                }]),
            });
        })],
        namespaces: vec![mk_ns("shop", &[])],
        nodes: vec![mk_node("n", &[("zone", "a")])],
        pods: vec![mk_pod("shop", "a", &[("app", "web")], "n", "10.0.0.1")],
        ..Default::default()
    };
    let c = compile(&inputs);
    assert!(c.shards.is_empty());
    let problems: Vec<_> = c.policies["p"].problems.iter().collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        problems[0].reason,
        kubeprof_crds::conditions::REASON_INVALID_SPEC
    );
    assert!(
        problems[0].message.starts_with("ebpf.nodeSelector:"),
        "{}",
        problems[0].message
    );
}

#[test]
fn a_pod_on_a_node_not_known_yet_is_not_profiled() {
    let inputs = Inputs {
        policies: vec![mk_policy("p", 0, ebpf_on(None))],
        namespaces: vec![mk_ns("shop", &[])],
        pods: vec![mk_pod("shop", "a", &[("app", "web")], "new", "10.0.0.1")],
        ..Default::default()
    };
    assert!(compile(&inputs).shards.is_empty());
}
