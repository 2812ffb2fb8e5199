//! Objects the API server would have refused: reported, and nothing of them applied.

use kubeprof_crds::{Duration, RelabelAction, RelabelConfig, limits, policy::OtlpSink};
use pretty_assertions::assert_eq;

use super::*;

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
            usize::try_from(limits::MAX_RELABELINGS).unwrap() + 1
        ],
        ..port("pprof")
    };
    let two_backends = mk_policy("two-backends", 10, |s| {
        s.sinks[0].otlp = Some(OtlpSink {
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
        ..Default::default()
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

/// Absurd objects, as a careless or hostile user writes them: 10,000 endpoints, selectors of
/// 10,000 terms, the longest interval, a 100,000-character label. Each is reported on its own
/// object, none panics, and the sane target beside them is scraped as usual.
#[test]
fn absurd_objects_are_reported_and_do_not_block_the_others() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    let mut endless = mk_target("shop", "endless", "web", port("pprof"));
    endless.spec.endpoints = vec![port("pprof"); 10_000];
    let mut wide = mk_target("shop", "wide-selector", "web", port("pprof"));
    wide.spec.selector.match_expressions = Some(
        (0..10_000)
            .map(|i| LabelSelectorRequirement {
                key: format!("k{i}"),
                operator: "In".into(),
                values: Some(vec!["v".into(); 10]),
            })
            .collect(),
    );
    let mut long_label = mk_target("shop", "long-label", "web", port("pprof"));
    long_label
        .spec
        .labels
        .insert("team".into(), "x".repeat(100_000));
    let slowest = mk_target(
        "shop",
        "slowest",
        "web",
        Endpoint {
            interval: Some(Duration::from_secs(24 * 3600)),
            scrape_timeout: Some(Duration::from_secs(24 * 3600 - 1)),
            ..port("pprof")
        },
    );
    let inputs = Inputs {
        policies: vec![mk_policy("fallback", 0, |_| {})],
        targets: vec![
            endless,
            wide,
            long_label,
            slowest,
            mk_target("shop", "fine", "web", port("pprof")),
        ],
        pods: vec![mk_pod("shop", "w", &[("app", "web")], "n", "127.0.0.2")],
        namespaces: vec![mk_ns("shop", &[])],
        ..Default::default()
    };
    let c = compile(&inputs);

    let first_problem = |name: &str| {
        facts(&c, "shop", name)
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.reason, p.message))
            .next()
            .unwrap_or_default()
    };
    assert_eq!(
        first_problem("endless"),
        "InvalidSpec: spec.endpoints: Too many: 10000: must have at most 64 items"
    );
    assert!(
        first_problem("wide-selector")
            .starts_with("InvalidSpec: spec.selector.matchExpressions: Too many: 10000"),
        "{}",
        first_problem("wide-selector")
    );
    assert!(
        first_problem("long-label").starts_with("InvalidSpec: spec.labels.team: Too long"),
        "{}",
        first_problem("long-label")
    );
    for refused in ["endless", "wide-selector", "long-label"] {
        assert_eq!(facts(&c, "shop", refused).active_jobs, 0, "{refused}");
    }
    // A day is the longest interval: accepted, scheduled like any other.
    assert_eq!(first_problem("slowest"), "");
    let by_target = |name: &str| {
        jobs(&c)
            .into_iter()
            .filter(|j| j.origin.name == name)
            .count()
    };
    assert_eq!((by_target("slowest"), by_target("fine")), (5, 5));
}

/// Objects the Rust types cannot hold (a duration over 24h, JSON nested past any schema) are
/// read as errors, which the runtime reports on the object (`InvalidSpec`, "cannot be read"),
/// never a panic of the watch.
#[test]
fn unreadable_absurd_objects_are_errors_that_name_why() {
    use kube::core::DeserializeGuard;
    use kubeprof_crds::ProfilingTarget;

    let object = |spec: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "kubeprof.io/v1alpha1",
            "kind": "ProfilingTarget",
            "metadata": {"name": "t", "namespace": "shop"},
            "spec": spec,
        })
    };
    let read = |v: serde_json::Value| {
        serde_json::from_value::<DeserializeGuard<ProfilingTarget>>(v)
            .unwrap()
            .0
            .map(|_| ())
            .map_err(|e| e.error)
    };
    let huge = object(serde_json::json!({
        "selector": {},
        "endpoints": [{"port": "pprof", "interval": "9223372036854775813s"}],
    }));
    let err = read(huge).unwrap_err();
    assert!(err.contains("24h"), "{err}");
    // 1,000 levels of nesting where a selector goes.
    let mut deep = serde_json::json!("x");
    for _ in 0..1_000 {
        deep = serde_json::json!({ "matchLabels": deep });
    }
    let text = object(serde_json::json!({"selector": deep, "endpoints": []})).to_string();
    // serde_json stops at 128 levels when reading text, as the watch reads it.
    let err = serde_json::from_str::<DeserializeGuard<ProfilingTarget>>(&text)
        .map(|g| g.0.map(|_| ()).map_err(|e| e.error));
    assert!(
        matches!(&err, Err(_) | Ok(Err(_))),
        "a 1,000-deep selector was read: {err:?}"
    );
}
