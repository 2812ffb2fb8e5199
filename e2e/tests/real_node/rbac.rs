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
/// Events, its job ConfigMaps and its Lease, reads its own Deployment (the owner of what it
/// creates), and keeps the scraper's Roles (it may `get` Secrets only because RBAC lets it grant
/// no more than it holds). The scraper watches the job shards, patches its node's health report
/// and reads the Secret `secret` in `secret_ns` that a sink references, by name. Neither may do
/// the rest.
pub fn differences(
    s: &Stage<'_>,
    (secret_ns, secret): (&str, &str),
) -> anyhow::Result<Vec<String>> {
    let ns = s.ns();
    let app = s.app_ns.as_str();
    let release = s.helm.name.as_str();
    let operator = format!("system:serviceaccount:{ns}:{release}-operator");
    let scraper = format!("system:serviceaccount:{ns}:{release}-scraper");
    let ebpf = format!("system:serviceaccount:{ns}:{release}-ebpf");
    let own_deployment = format!("deployments.apps/{release}-operator");
    let node = kubeprof_e2e::real_node::NODE_NAME;
    let own_health = format!(
        "configmaps/{}.{node}",
        kubeprof_crds::constants::HEALTH_OBJECT_PREFIX
    );
    let own_shard = format!(
        "configmaps/{}.{node}",
        kubeprof_crds::constants::JOBS_OBJECT_PREFIX
    );
    let referenced = format!("secrets/{secret}");
    #[rustfmt::skip]
    let checks: [Check<'_>; 37] = [
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
        (&operator, "create", "roles.rbac.authorization.k8s.io", None, Some(app), true),
        // ... and nothing more of these.
        (&operator, "list", "secrets", None, Some(app), false),
        (&operator, "create", "configmaps", None, Some(app), false),
        (&operator, "delete", "pods", None, Some(app), false),
        (&operator, "update", "profilingtargets.kubeprof.io", None, Some(app), false),
        (&operator, "update", "leases.coordination.k8s.io/another", None, Some(ns), false),
        (&operator, "get", "deployments.apps/another", None, Some(ns), false),
        (&operator, "patch", "roles.rbac.authorization.k8s.io/another", None, Some(app), false),
        // The scraper's needs.
        (&scraper, "watch", "configmaps", None, Some(ns), true),
        (&scraper, "patch", &own_health, None, Some(ns), true),
        (&scraper, "get", &referenced, None, Some(secret_ns), true),
        // ... and nothing more of these.
        (&scraper, "get", "secrets", None, Some(app), false),
        (&scraper, "list", "secrets", None, Some(secret_ns), false),
        (&scraper, "patch", &own_shard, None, Some(ns), false),
        (&scraper, "list", "pods", None, None, false),
        (&scraper, "create", "configmaps", None, Some(app), false),
        (&scraper, "delete", "configmaps", None, Some(ns), false),
        (&scraper, "update", "leases.coordination.k8s.io/kubeprof-operator", None, Some(ns), false),
        (&scraper, "patch", "profilingtargets.kubeprof.io", Some("status"), Some(app), false),
        // The eBPF profiler's needs: its shard, its key of its node's report, its sinks'
        // Secrets ...
        (&ebpf, "watch", "configmaps", None, Some(ns), true),
        (&ebpf, "patch", &own_health, None, Some(ns), true),
        (&ebpf, "get", &referenced, None, Some(secret_ns), true),
        // ... and nothing more of these.
        (&ebpf, "patch", &own_shard, None, Some(ns), false),
        (&ebpf, "list", "secrets", None, Some(secret_ns), false),
        (&ebpf, "list", "pods", None, None, false),
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

/// A row of the README's RBAC table, for one account.
struct Row {
    /// `cluster`, `namespace`, or `run time, <where>`.
    scope: String,
    /// `resource.group[/sub]` as `kubectl auth can-i --list` names it.
    resources: Vec<String>,
    /// The resource names; `None`: names known only at run time ("each Secret a job or sink
    /// refers to"), which the caller supplies.
    names: Option<Vec<String>>,
    verbs: Vec<String>,
}

/// The backticked words of a cell, with `<release>` and `<node>` filled in.
fn ticked(cell: &str, release: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(|w| {
            w.replace("<release>", release)
                .replace("<node>", kubeprof_e2e::real_node::NODE_NAME)
        })
        .collect()
}

/// The README's RBAC table (`### RBAC`) for `account` (`operator`, `scraper` or `ebpf`), as
/// the real-node test installs the chart (`scraper.readSecrets` and `ebpf.enabled` on).
fn readme_rows(release: &str, account: &str) -> anyhow::Result<Vec<Row>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let section = readme
        .split_once("\n### RBAC\n")
        .map(|(_, rest)| rest.split_once("\n#").map_or(rest, |(s, _)| s))
        .ok_or_else(|| anyhow::anyhow!("README.md has no ### RBAC section"))?;
    let mut out = Vec::new();
    for line in section.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let [who, scope, group, resources, names, verbs, why] = cells.as_slice() else {
            continue;
        };
        if *who != format!("`<release>-{account}`")
            || why.contains("only without `scraper.readSecrets`")
        {
            continue;
        }
        let group = if *group == "core" {
            String::new()
        } else {
            group.trim_matches('`').to_owned()
        };
        let resources = ticked(resources, release)
            .into_iter()
            // `leases.coordination.k8s.io`, `profilingtargets.kubeprof.io/status`.
            .map(|r| match (group.is_empty(), r.split_once('/')) {
                (true, _) => r,
                (false, Some((r, sub))) => format!("{r}.{group}/{sub}"),
                (false, None) => format!("{r}.{group}"),
            })
            .collect();
        let fixed = ticked(names, release);
        out.push(Row {
            scope: (*scope).to_owned(),
            resources,
            names: if fixed.is_empty() && !names.is_empty() {
                None
            } else {
                Some(fixed)
            },
            verbs: ticked(verbs, release),
        });
    }
    anyhow::ensure!(
        !out.is_empty(),
        "README.md's RBAC table has no row for {account}"
    );
    Ok(out)
}

/// What the README's rows grant in one namespace: `cluster` rows everywhere, `namespace` rows
/// and `run time, release namespace` rows in the release namespace, and `run time` rows of
/// Secrets where `secrets` (the referenced Secrets of that namespace) is not empty.
fn documented(rows: &[Row], release_ns: bool, secrets: &[&str]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for row in rows {
        let names: Vec<String> = match (&row.names, row.scope.as_str()) {
            (_, "cluster") => row.names.clone().unwrap_or_default(),
            (_, "namespace") if release_ns => row.names.clone().unwrap_or_default(),
            (Some(names), scope)
                if scope.starts_with("run time, release namespace") && release_ns =>
            {
                names.clone()
            }
            (None, scope) if scope.starts_with("run time") && !secrets.is_empty() => {
                secrets.iter().map(|s| (*s).to_owned()).collect()
            }
            _ => continue,
        };
        let names = if names.is_empty() {
            vec![String::new()]
        } else {
            names
        };
        for resource in &row.resources {
            for name in &names {
                for verb in &row.verbs {
                    out.insert((resource.clone(), name.clone(), verb.clone()));
                }
            }
        }
    }
    out
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

/// `kubectl auth can-i --list` for both ServiceAccounts, minus what any ServiceAccount may do
/// (discovery, self-reviews), against the README's table: in the release namespace, in the
/// application namespace (no referenced Secret), and in `secret_ns` whose Secret `secret` a sink
/// references. Differences as readable lines.
pub fn list_differences(
    s: &Stage<'_>,
    (secret_ns, secret): (&str, &str),
) -> anyhow::Result<Vec<String>> {
    let release = s.helm.name.as_str();
    let mut differences = Vec::new();
    for account in ["operator", "scraper", "ebpf"] {
        let rows = readme_rows(release, account)?;
        for (ns, release_ns, secrets) in [
            (s.ns(), true, &[][..]),
            (s.app_ns.as_str(), false, &[][..]),
            (secret_ns, false, &[secret][..]),
        ] {
            let user = format!("system:serviceaccount:{}:{release}-{account}", s.ns());
            // A ServiceAccount that does not exist gets the groups every one gets.
            let nobody = format!("system:serviceaccount:{}:nobody", s.ns());
            let baseline = can_i_list(s, &nobody, ns)?;
            let granted: BTreeSet<Grant> = can_i_list(s, &user, ns)?
                .difference(&baseline)
                .cloned()
                .collect();
            let documented = documented(&rows, release_ns, secrets);
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

/// The README's table reads as the grants `kubectl auth can-i --list` prints (no node needed).
#[test]
fn readme_table_reads_as_can_i_list_grants() {
    let g = |r: &str, n: &str, v: &str| (r.to_owned(), n.to_owned(), v.to_owned());
    let scraper = readme_rows("kp", "scraper").unwrap();
    let in_release = documented(&scraper, true, &[]);
    assert!(
        in_release.contains(&g("configmaps", "", "watch")),
        "{in_release:?}"
    );
    assert!(
        in_release.contains(&g(
            "configmaps",
            &format!("kubeprof-health.{}", kubeprof_e2e::real_node::NODE_NAME),
            "patch"
        )),
        "{in_release:?}"
    );
    let with_secret = documented(&scraper, false, &["token"]);
    assert_eq!(
        with_secret,
        BTreeSet::from([g("secrets", "token", "get")]),
        "the scraper, where a Secret is referenced"
    );
    let operator = documented(&readme_rows("kp", "operator").unwrap(), true, &[]);
    for grant in [
        g("leases.coordination.k8s.io", "kubeprof-operator", "update"),
        g("profilingtargets.kubeprof.io/status", "", "patch"),
        g("deployments.apps", "kp-operator", "get"),
    ] {
        assert!(operator.contains(&grant), "{grant:?} in {operator:?}");
    }
}
