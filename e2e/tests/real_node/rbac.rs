//! What the chart's ServiceAccounts may do, asked of the API server's authorizer
//! (`kubectl auth can-i`), against what each binary does. The chart tests compare the rendered
//! Roles with the README's table; this asks the server that enforces them.

use std::collections::BTreeSet;

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

/// One permission: (resource as `kubectl auth can-i --list` names it, `resource.group[/sub]`;
/// resource name or ""; verb).
type Grant = (String, String, String);

/// The README's RBAC table (`### RBAC`) for `account` (`operator` or `scraper`), with
/// `<release>` replaced: `(scope, grant)` per row, resource, name and verb.
fn readme_grants(release: &str, account: &str) -> anyhow::Result<Vec<(String, Grant)>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let section = readme
        .split_once("\n### RBAC\n")
        .map(|(_, rest)| rest.split_once("\n#").map_or(rest, |(s, _)| s))
        .ok_or_else(|| anyhow::anyhow!("README.md has no ### RBAC section"))?;
    let split = |cell: &str| -> Vec<String> {
        cell.split(',')
            .map(|c| c.trim().trim_matches('`').replace("<release>", release))
            .filter(|c| !c.is_empty())
            .collect()
    };
    let mut out = Vec::new();
    for line in section.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let [who, scope, group, resources, names, verbs, _why] = cells.as_slice() else {
            continue;
        };
        if *who != format!("`<release>-{account}`") {
            continue;
        }
        let group = if *group == "core" {
            String::new()
        } else {
            group.trim_matches('`').to_owned()
        };
        for resource in split(resources) {
            // `leases.coordination.k8s.io`, `profilingtargets.kubeprof.io/status`.
            let qualified = match (group.is_empty(), resource.split_once('/')) {
                (true, _) => resource.clone(),
                (false, Some((r, sub))) => format!("{r}.{group}/{sub}"),
                (false, None) => format!("{resource}.{group}"),
            };
            let names = split(names);
            for name in if names.is_empty() {
                vec![String::new()]
            } else {
                names
            } {
                for verb in split(verbs) {
                    out.push(((*scope).to_owned(), (qualified.clone(), name.clone(), verb)));
                }
            }
        }
    }
    anyhow::ensure!(
        !out.is_empty(),
        "README.md's RBAC table has no row for {account}"
    );
    Ok(out)
}

/// `kubectl auth can-i --list --as=USER -n NS`, one grant per (resource, name, verb).
fn can_i_list(s: &Stage<'_>, user: &str, ns: &str) -> anyhow::Result<BTreeSet<Grant>> {
    let out = s
        .node
        .kubectl(&["auth", "can-i", "--list", "--as", user, "-n", ns])?;
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    let col = |name: &str| {
        header
            .find(name)
            .ok_or_else(|| anyhow::anyhow!("no column {name} in {header:?}"))
    };
    let (names_at, verbs_at) = (col("Resource Names")?, col("Verbs")?);
    let urls_at = col("Non-Resource URLs")?;
    let cell = |line: &str, from: usize, to: usize| {
        line.get(from..to.min(line.len()))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let list = |cell: String| -> Vec<String> {
        cell.trim_start_matches('[')
            .trim_end_matches(']')
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let mut grants = BTreeSet::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let resource = cell(line, 0, urls_at);
        if resource.is_empty() {
            continue; // a non-resource URL (discovery, /healthz, ...)
        }
        let names = list(cell(line, names_at, verbs_at));
        for verb in list(cell(line, verbs_at, line.len())) {
            if names.is_empty() {
                grants.insert((resource.clone(), String::new(), verb.clone()));
            }
            for name in &names {
                grants.insert((resource.clone(), name.clone(), verb.clone()));
            }
        }
    }
    Ok(grants)
}

/// `kubectl auth can-i --list` for both ServiceAccounts, in the release namespace (cluster and
/// namespace rows of the README's table) and in another namespace (cluster rows only), minus
/// what any ServiceAccount of that namespace may do (discovery, self-reviews): differences
/// from the README's table, as readable lines.
pub fn list_differences(s: &Stage<'_>) -> anyhow::Result<Vec<String>> {
    let release = s.helm.name.as_str();
    let mut differences = Vec::new();
    for account in ["operator", "scraper"] {
        let table = readme_grants(release, account)?;
        for (ns, scopes) in [
            (s.ns(), &["cluster", "namespace"][..]),
            (s.app_ns.as_str(), &["cluster"][..]),
        ] {
            let user = format!("system:serviceaccount:{}:{release}-{account}", s.ns());
            // A ServiceAccount that does not exist gets the groups every one gets.
            let nobody = format!("system:serviceaccount:{}:nobody", s.ns());
            let baseline = can_i_list(s, &nobody, ns)?;
            let granted: BTreeSet<Grant> = can_i_list(s, &user, ns)?
                .difference(&baseline)
                .cloned()
                .collect();
            let documented: BTreeSet<Grant> = table
                .iter()
                .filter(|(scope, _)| scopes.contains(&scope.as_str()))
                .map(|(_, g)| g.clone())
                .collect();
            for g in granted.difference(&documented) {
                differences.push(format!(
                    "{account} in {ns}: granted but not in README.md's table: {g:?}"
                ));
            }
            for g in documented.difference(&granted) {
                differences.push(format!(
                    "{account} in {ns}: in README.md's table but not granted: {g:?}"
                ));
            }
        }
    }
    Ok(differences)
}
