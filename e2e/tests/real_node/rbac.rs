//! What the chart's ServiceAccounts may do, asked of the API server's authorizer
//! (`kubectl auth can-i`), against what each binary does. The chart tests compare the rendered
//! Roles with the README's table; this asks the server that enforces them.

use crate::stage::Stage;

/// (who, verb, resource, subresource, namespace, allowed)
type Check<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    bool,
);

/// The questions whose answers differ from what the binaries need, as readable lines. Each
/// asks whether `who` may `verb` a `resource` (`TYPE` or `TYPE/NAME`, with an optional
/// subresource) in a namespace (`None`: all namespaces).
///
/// The operator watches pods, namespaces and both CRs cluster-wide, writes CR status and
/// Events, its job ConfigMaps and its Lease, and reads its own Deployment (the owner of what it
/// creates). The scraper watches its node's jobs, writes its health report and reads the Secrets
/// that targets reference (`scraper.readSecrets`, on by default). Neither may do the rest.
pub fn differences(s: &Stage<'_>) -> anyhow::Result<Vec<String>> {
    let ns = s.ns();
    let app = s.app_ns.as_str();
    let release = s.helm.name.as_str();
    let operator = format!("system:serviceaccount:{ns}:{release}-operator");
    let scraper = format!("system:serviceaccount:{ns}:{release}-scraper");
    let own_deployment = format!("deployments.apps/{release}-operator");
    #[rustfmt::skip]
    let checks: [Check<'_>; 27] = [
        // The operator's needs.
        (&operator, "watch", "pods", None, None, true),
        (&operator, "watch", "namespaces", None, None, true),
        (&operator, "watch", "profilingtargets.kubeprof.io", None, None, true),
        (&operator, "watch", "profilingpolicies.kubeprof.io", None, None, true),
        (&operator, "patch", "profilingtargets.kubeprof.io", Some("status"), Some(app), true),
        (&operator, "patch", "profilingpolicies.kubeprof.io", Some("status"), None, true),
        (&operator, "create", "events.events.k8s.io", None, Some(app), true),
        (&operator, "create", "configmaps", None, Some(ns), true),
        (&operator, "patch", "configmaps", None, Some(ns), true),
        (&operator, "delete", "configmaps", None, Some(ns), true),
        (&operator, "update", "leases.coordination.k8s.io/kubeprof-operator", None, Some(ns), true),
        (&operator, "get", &own_deployment, None, Some(ns), true),
        // ... and nothing more of these.
        (&operator, "get", "secrets", None, Some(app), false),
        (&operator, "create", "configmaps", None, Some(app), false),
        (&operator, "delete", "pods", None, Some(app), false),
        (&operator, "update", "profilingtargets.kubeprof.io", None, Some(app), false),
        (&operator, "update", "leases.coordination.k8s.io/another", None, Some(ns), false),
        (&operator, "get", "deployments.apps/another", None, Some(ns), false),
        // The scraper's needs.
        (&scraper, "watch", "configmaps", None, Some(ns), true),
        (&scraper, "patch", "configmaps", None, Some(ns), true),
        (&scraper, "get", "secrets", None, Some(app), true),
        // ... and nothing more of these.
        (&scraper, "list", "secrets", None, Some(app), false),
        (&scraper, "list", "pods", None, None, false),
        (&scraper, "create", "configmaps", None, Some(app), false),
        (&scraper, "delete", "configmaps", None, Some(ns), false),
        (&scraper, "update", "leases.coordination.k8s.io/kubeprof-operator", None, Some(ns), false),
        (&scraper, "patch", "profilingtargets.kubeprof.io", Some("status"), Some(app), false),
    ];
    let mut differences = Vec::new();
    for (who, verb, resource, subresource, namespace, allowed) in checks {
        let can = s.node.can_i(who, verb, resource, subresource, namespace)?;
        if can != allowed {
            differences.push(format!(
                "{who} {verb} {resource}{} in {}: {}, should {}",
                subresource.map(|s| format!(" ({s})")).unwrap_or_default(),
                namespace.unwrap_or("all namespaces"),
                if can { "allowed" } else { "denied" },
                if allowed { "be allowed" } else { "not be" },
            ));
        }
    }
    Ok(differences)
}
