//! The labels a profile is sent with: discovery labels -> relabel rules -> external labels.

use kubeprof_crds::{
    constants::labels,
    relabel::{CompiledRelabel, Labels, relabel},
};

/// Final labels of a profile of `profile_name`, or `None` when a rule drops the target.
///
/// `__name__` is set to the profile type before the rules run (so rules can match on it) and
/// kept afterwards; every other `__*` label is removed; external labels never override;
/// `service_name` defaults to `<namespace>/<container>` (as Grafana Alloy does) when the
/// Kubernetes discovery labels are present, else to the `job` label.
pub fn finalize(
    discovery: &Labels,
    profile_name: &str,
    rules: &[CompiledRelabel],
    external: &Labels,
) -> Option<Labels> {
    let mut l = discovery.clone();
    l.insert(labels::NAME.to_owned(), profile_name.to_owned());
    if !relabel(&mut l, rules) {
        return None;
    }
    let default_service = match (
        l.get(labels::META_NAMESPACE),
        l.get(labels::META_CONTAINER_NAME),
    ) {
        (Some(ns), Some(container)) => Some(format!("{ns}/{container}")),
        _ => l.get(labels::JOB).cloned(),
    };
    // A relabel rule may have set __name__; a profile type must survive it.
    let name = l
        .get(labels::NAME)
        .cloned()
        .unwrap_or_else(|| profile_name.to_owned());
    l.retain(|k, _| !k.starts_with(labels::RESERVED_PREFIX));
    for (k, v) in external {
        l.entry(k.clone()).or_insert_with(|| v.clone());
    }
    l.insert(labels::NAME.to_owned(), name);
    if !l.contains_key(labels::SERVICE_NAME) {
        l.insert(
            labels::SERVICE_NAME.to_owned(),
            default_service.unwrap_or_else(|| "unknown_service".to_owned()),
        );
    }
    Some(l)
}

#[cfg(test)]
mod tests {
    use kubeprof_crds::{RelabelAction, RelabelConfig, relabel::compile_all};

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kubernetes_defaults_and_internal_labels_removed() {
        let discovery = labels(&[
            ("__address__", "10.0.0.1:6060"),
            ("__meta_kubernetes_namespace", "shop"),
            ("__meta_kubernetes_pod_container_name", "checkout"),
            ("pod", "checkout-1"),
        ]);
        let out = finalize(
            &discovery,
            "process_cpu",
            &[],
            &labels(&[("cluster", "eu"), ("pod", "ignored")]),
        )
        .unwrap();
        assert_eq!(
            out,
            labels(&[
                ("__name__", "process_cpu"),
                ("cluster", "eu"),
                ("pod", "checkout-1"),
                ("service_name", "shop/checkout"),
            ])
        );
    }

    #[test]
    fn rules_see_the_type_and_can_drop_or_rename() {
        let rules = compile_all(&[
            RelabelConfig {
                source_labels: vec!["__name__".into()],
                regex: "goroutine".into(),
                action: RelabelAction::Drop,
                ..Default::default()
            },
            RelabelConfig {
                source_labels: vec!["job".into()],
                target_label: Some("service_name".into()),
                replacement: "svc-$1".into(),
                ..Default::default()
            },
        ])
        .unwrap();
        let discovery = labels(&[("job", "demo")]);
        assert_eq!(
            finalize(&discovery, "goroutine", &rules, &Labels::new()),
            None
        );
        let out = finalize(&discovery, "memory", &rules, &Labels::new()).unwrap();
        assert_eq!(out["service_name"], "svc-demo");
        assert_eq!(out["__name__"], "memory");
    }
}
