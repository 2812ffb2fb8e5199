//! What the scrapers may touch by name: the Secrets their jobs and sinks refer to, and the
//! scrape-health report of each node that has jobs. All scrapers share one ServiceAccount, so
//! the grant is the union over every node's shard, and RBAC can only bound it by
//! `resourceNames`: one Role per namespace that holds referenced Secrets (`get` on exactly those),
//! plus, in the operator's namespace, `patch` on exactly the health reports the operator created
//! (`create` cannot be limited by name, so the scraper gets none). Pure: the runtime watches the
//! Roles it wrote, compares, and writes the difference.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kubeprof_crds::{
    constants::{COMPONENT_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    health::health_object_name,
    job::JobShard,
};

/// [`COMPONENT_LABEL`] of the Roles and RoleBindings granting the scraper its named objects.
pub const COMPONENT_SCRAPER_ACCESS: &str = "scraper-access";
/// Label naming the operator's namespace on those Roles and RoleBindings: an operator watches,
/// rewrites and deletes only its own (another installation may use the same names).
pub const ACCESS_FOR_LABEL: &str = "kubeprof.io/scraper-namespace";
/// Annotation of a RoleBinding listing its subjects' ServiceAccounts (comma-separated): the
/// operator watches RoleBindings by metadata only, and rewrites one whose list differs (the
/// eBPF DaemonSet's ServiceAccount added or removed by a chart upgrade).
pub const SUBJECTS_ANNOTATION: &str = "kubeprof.io/subjects";

/// What the scrapers need by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScraperAccess {
    /// Names of the referenced Secrets, by namespace.
    pub secrets: BTreeMap<String, BTreeSet<String>>,
    /// Names of the health reports (in the operator's namespace) of the nodes with jobs.
    pub health_reports: BTreeSet<String>,
}

impl ScraperAccess {
    /// What the scrapers of `shards` need. Without `secrets` (the chart's
    /// `scraper.readSecrets` off), no Secret is granted.
    pub fn of(shards: &BTreeMap<Option<String>, JobShard>, secrets: bool) -> Self {
        let mut access = Self::default();
        for (node, shard) in shards {
            access
                .health_reports
                .insert(health_object_name(node.as_deref()));
            if secrets {
                for r in shard.secret_refs() {
                    access
                        .secrets
                        .entry(r.namespace)
                        .or_default()
                        .insert(r.name);
                }
            }
        }
        access
    }

    /// Both grants at once: what is granted while jobs change from `self` to `other`, so that
    /// a scraper never sees a job before it may read its Secrets or write its report.
    #[must_use]
    pub fn union(&self, other: &Self) -> Self {
        let mut out = self.clone();
        for (ns, names) in &other.secrets {
            out.secrets
                .entry(ns.clone())
                .or_default()
                .extend(names.iter().cloned());
        }
        out.health_reports
            .extend(other.health_reports.iter().cloned());
        out
    }

    /// What `roles` (Roles written by [`AccessNames::roles`]) grant now.
    pub fn granted_by<'a>(roles: impl IntoIterator<Item = &'a Role>, names: &AccessNames) -> Self {
        let mut access = Self::default();
        for role in roles {
            let ns = role.metadata.namespace.clone().unwrap_or_default();
            for rule in role.rules.iter().flatten() {
                let resource_names = rule.resource_names.iter().flatten().cloned();
                if rule.resources.iter().flatten().any(|r| r == "secrets") {
                    access
                        .secrets
                        .entry(ns.clone())
                        .or_default()
                        .extend(resource_names);
                } else if ns == names.namespace
                    && rule.resources.iter().flatten().any(|r| r == "configmaps")
                {
                    access.health_reports.extend(resource_names);
                }
            }
        }
        access.secrets.retain(|_, names| !names.is_empty());
        access
    }
}

/// Who gets the access, and the names of what grants it.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessNames {
    /// The operator's namespace: the scraper's ServiceAccount and the health reports live here.
    pub namespace: String,
    /// The scraper's ServiceAccount.
    pub service_account: String,
    /// The eBPF profilers' ServiceAccount (the chart's eBPF DaemonSet, `ebpf.enabled`): a
    /// second subject of every RoleBinding, as it reads the same sinks' Secrets and patches the
    /// same health reports (its own key of them). `None`: no eBPF DaemonSet is deployed.
    pub ebpf_service_account: Option<String>,
    /// Owner of every Role and RoleBinding (a cluster-scoped object the chart installs, so that
    /// `helm uninstall` takes those in other namespaces too); none: they have no owner.
    pub owner: Option<OwnerReference>,
}

impl AccessNames {
    /// The label selector of this operator's Roles and RoleBindings.
    pub fn selector(&self) -> String {
        format!("{ACCESS_FOR_LABEL}={}", self.namespace)
    }

    /// Name of every Role and RoleBinding granting the scraper its named objects.
    pub fn object_name(&self) -> String {
        format!("{}-named", self.service_account)
    }

    /// The ServiceAccounts the RoleBindings name, the scraper's first.
    pub fn subjects(&self) -> Vec<&str> {
        std::iter::once(self.service_account.as_str())
            .chain(self.ebpf_service_account.as_deref())
            .collect()
    }

    /// The value of [`SUBJECTS_ANNOTATION`] on a RoleBinding that is up to date.
    pub fn subjects_annotation(&self) -> String {
        self.subjects().join(",")
    }

    fn meta(&self, namespace: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.object_name()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
                (
                    COMPONENT_LABEL.to_string(),
                    COMPONENT_SCRAPER_ACCESS.to_string(),
                ),
                (ACCESS_FOR_LABEL.to_string(), self.namespace.clone()),
            ])),
            owner_references: self.owner.clone().map(|o| vec![o]),
            ..Default::default()
        }
    }

    /// The Role of every namespace `access` names, and always one in the operator's namespace
    /// (a Role without rules grants nothing: never a rule with no `resourceNames`, which would
    /// grant every name).
    pub fn roles(&self, access: &ScraperAccess) -> BTreeMap<String, Role> {
        let mut roles = BTreeMap::new();
        let named = |resource: &str, names: &BTreeSet<String>, verb: &str| PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec![resource.into()]),
            resource_names: Some(names.iter().cloned().collect()),
            verbs: vec![verb.into()],
            ..Default::default()
        };
        for (ns, names) in &access.secrets {
            if names.is_empty() {
                continue;
            }
            roles.insert(
                ns.clone(),
                Role {
                    metadata: self.meta(ns),
                    rules: Some(vec![named("secrets", names, "get")]),
                },
            );
        }
        let own = roles.entry(self.namespace.clone()).or_insert_with(|| Role {
            metadata: self.meta(&self.namespace),
            rules: Some(Vec::new()),
        });
        if !access.health_reports.is_empty() {
            // `patch` alone: the scraper writes its report by server-side apply, which on an
            // object that does not exist would need `create`; so it can never make one.
            own.rules.get_or_insert_with(Vec::new).push(named(
                "configmaps",
                &access.health_reports,
                "patch",
            ));
        }
        roles
    }

    /// The RoleBinding giving the Role of `namespace` to the scraper's ServiceAccount (and the
    /// eBPF profilers' one, when deployed).
    pub fn binding(&self, namespace: &str) -> RoleBinding {
        let mut metadata = self.meta(namespace);
        metadata.annotations = Some(BTreeMap::from([(
            SUBJECTS_ANNOTATION.to_string(),
            self.subjects_annotation(),
        )]));
        RoleBinding {
            metadata,
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: self.object_name(),
            },
            subjects: Some(
                self.subjects()
                    .into_iter()
                    .map(|name| Subject {
                        kind: "ServiceAccount".into(),
                        name: name.into(),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeprof_crds::{NamespacedSecretKeyRef, job::ScrapeJob, policy::SinkSpec};

    fn names() -> AccessNames {
        AccessNames {
            namespace: "kubeprof".into(),
            service_account: "kp-scraper".into(),
            ebpf_service_account: None,
            owner: None,
        }
    }

    fn secret(ns: &str, name: &str) -> serde_json::Value {
        serde_json::json!({"namespace": ns, "name": name, "key": "k"})
    }

    fn job(id: &str, auth: Option<serde_json::Value>) -> ScrapeJob {
        let mut job = serde_json::json!({
            "id": id, "origin": {"kind": "ProfilingTarget", "namespace": "shop", "name": "t"},
            "address": "10.0.0.1:6060",
            "profile": {"name": "process_cpu", "path": "/debug/pprof/profile", "delta": false},
            "interval": "15s", "timeout": "10s",
        });
        if let Some(auth) = auth {
            job["auth"] = auth;
        }
        serde_json::from_value(job).unwrap_or_else(|e| panic!("{e}"))
    }

    fn pyroscope_sink(name: &str, token: serde_json::Value) -> SinkSpec {
        serde_json::from_value(serde_json::json!({
            "name": name, "pyroscope": {"url": "http://pyro:4040", "bearerTokenSecret": token},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn shards() -> BTreeMap<Option<String>, JobShard> {
        let bearer =
            |ns, name| Some(serde_json::json!({"bearer": {"token": {"secret": secret(ns, name)}}}));
        BTreeMap::from([
            (
                Some("node-a".to_string()),
                JobShard::new(
                    Some("node-a".into()),
                    vec![job("a", bearer("shop", "token")), job("b", None)],
                    vec![pyroscope_sink("p/pyro", secret("monitoring", "pyro"))],
                ),
            ),
            (
                Some("node-b".to_string()),
                JobShard::new(
                    Some("node-b".into()),
                    vec![job("c", bearer("shop", "other-token"))],
                    vec![pyroscope_sink("p/pyro", secret("monitoring", "pyro"))],
                ),
            ),
            (None, JobShard::new(None, vec![job("d", None)], Vec::new())),
        ])
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn rules(role: &Role) -> Vec<(String, Vec<String>, Vec<String>)> {
        role.rules
            .iter()
            .flatten()
            .map(|r| {
                (
                    r.resources.clone().unwrap_or_default().join(","),
                    r.resource_names.clone().unwrap_or_default(),
                    r.verbs.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn every_referenced_secret_and_every_node_report_is_named_and_nothing_else() {
        let access = ScraperAccess::of(&shards(), true);
        assert_eq!(
            access.secrets,
            BTreeMap::from([
                ("monitoring".to_string(), set(&["pyro"])),
                ("shop".to_string(), set(&["other-token", "token"])),
            ])
        );
        assert_eq!(
            access.health_reports,
            set(&[
                "kubeprof-health",
                "kubeprof-health.node-a",
                "kubeprof-health.node-b"
            ])
        );
        let roles = names().roles(&access);
        assert_eq!(
            roles.keys().collect::<Vec<_>>(),
            ["kubeprof", "monitoring", "shop"]
        );
        let v = |s: &[&str]| s.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            rules(&roles["shop"]),
            [("secrets".into(), v(&["other-token", "token"]), v(&["get"]))]
        );
        assert_eq!(
            rules(&roles["kubeprof"]),
            [(
                "configmaps".into(),
                v(&[
                    "kubeprof-health",
                    "kubeprof-health.node-a",
                    "kubeprof-health.node-b"
                ]),
                v(&["patch"])
            )]
        );
        for role in roles.values() {
            assert_eq!(role.metadata.name.as_deref(), Some("kp-scraper-named"));
        }
        // What the Roles grant reads back as what was asked.
        assert_eq!(ScraperAccess::granted_by(roles.values(), &names()), access);
    }

    #[test]
    fn without_secrets_or_jobs_nothing_is_granted_by_an_empty_name_list() {
        let access = ScraperAccess::of(&shards(), false);
        assert!(access.secrets.is_empty());
        let roles = names().roles(&access);
        assert_eq!(roles.keys().collect::<Vec<_>>(), ["kubeprof"]);

        // No jobs at all: the operator's namespace keeps a Role with no rules, never a rule
        // with an empty `resourceNames` (which RBAC reads as every name).
        let roles = names().roles(&ScraperAccess::of(&BTreeMap::new(), true));
        assert_eq!(roles.len(), 1);
        assert_eq!(roles["kubeprof"].rules, Some(Vec::new()));
    }

    #[test]
    fn a_namespace_no_longer_referenced_loses_its_role_and_a_change_grants_before_it_revokes() {
        let before = ScraperAccess::of(&shards(), true);
        let mut fewer = shards();
        fewer.remove(&Some("node-b".to_string()));
        let after = ScraperAccess::of(&fewer, true);
        assert_eq!(after.secrets["shop"], set(&["token"]));
        assert!(!after.health_reports.contains("kubeprof-health.node-b"));

        // While the jobs change, both are granted.
        assert_eq!(before.union(&after), before);
        let mut moved = fewer.clone();
        if let Some(shard) = moved.get_mut(&Some("node-a".to_string())) {
            shard.sinks = vec![pyroscope_sink("p/pyro", secret("other", "pyro"))];
        }
        let moved = ScraperAccess::of(&moved, true);
        let both = after.union(&moved);
        assert_eq!(
            both.secrets.keys().collect::<Vec<_>>(),
            ["monitoring", "other", "shop"]
        );
        // Then only the new ones: `monitoring` is referenced no more and has no Role.
        let roles = names().roles(&moved);
        assert_eq!(
            roles.keys().collect::<Vec<_>>(),
            ["kubeprof", "other", "shop"]
        );
    }

    #[test]
    fn the_binding_gives_the_role_to_the_scraper_service_account() {
        let b = names().binding("shop");
        assert_eq!(b.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(b.role_ref.kind, "Role");
        assert_eq!(b.role_ref.name, "kp-scraper-named");
        let subjects = b.subjects.unwrap_or_default();
        assert_eq!(subjects.len(), 1);
        assert_eq!(
            (
                subjects[0].kind.as_str(),
                subjects[0].name.as_str(),
                subjects[0].namespace.as_deref()
            ),
            ("ServiceAccount", "kp-scraper", Some("kubeprof"))
        );
    }

    #[test]
    fn with_the_ebpf_daemonset_its_service_account_is_a_second_subject() {
        let mut n = names();
        assert_eq!(n.subjects_annotation(), "kp-scraper");
        n.ebpf_service_account = Some("kp-ebpf".into());
        let b = n.binding("shop");
        let subjects: Vec<_> = b
            .subjects
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.name, s.namespace))
            .collect();
        assert_eq!(
            subjects,
            [
                ("kp-scraper".to_string(), Some("kubeprof".to_string())),
                ("kp-ebpf".to_string(), Some("kubeprof".to_string()))
            ]
        );
        assert_eq!(
            b.metadata
                .annotations
                .unwrap_or_default()
                .get(SUBJECTS_ANNOTATION)
                .map(String::as_str),
            Some("kp-scraper,kp-ebpf")
        );
    }

    #[test]
    fn references_found_by_the_scraper_are_the_ones_granted() {
        // Both sides use the same walk over jobs and sinks.
        let shard = &shards()[&Some("node-a".to_string())];
        let mut refs: Vec<NamespacedSecretKeyRef> =
            kubeprof_crds::references::jobs_secret_refs(&shard.jobs, &shard.sinks);
        refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let granted = ScraperAccess::of(&shards(), true);
        for r in refs {
            assert!(granted.secrets[&r.namespace].contains(&r.name), "{r:?}");
        }
    }
}
