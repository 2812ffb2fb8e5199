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
