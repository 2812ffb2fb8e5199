//! Writing what [`ScraperAccess`] says the scrapers need: a Role and RoleBinding per namespace
//! (server-side apply, only when the rules differ from what the watch shows), deleted with the
//! last reference; and the health report of every node with jobs, created empty so that its
//! scraper, which may only patch it, can fill it in.
//!
//! Ordering is what keeps scrapers working: [`Grants::widen`] runs before the shards are
//! published (grant the union of old and new), [`Grants::narrow`] after (revoke what no shard
//! needs any more).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::ConfigMap,
        rbac::v1::{ClusterRole, Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ObjectMeta, PartialObjectMeta, Patch, PatchParams, PostParams},
};
use kubeprof_crds::constants::{
    COMPONENT_HEALTH, COMPONENT_LABEL, FIELD_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    SHARD_NODE_LABEL,
};

use crate::{
    compile::access::{AccessNames, SUBJECTS_ANNOTATION, ScraperAccess},
    metrics::{Failure, Metrics},
};

/// Why granting failed.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// A Role or RoleBinding could not be written.
    #[error("cannot write {kind} {namespace}/{name}: {source}")]
    Write {
        /// Role or RoleBinding.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A Role or RoleBinding no longer needed could not be deleted.
    #[error("cannot delete {kind} {namespace}/{name}: {source}")]
    Delete {
        /// Role or RoleBinding.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A health report could not be created.
    #[error("cannot create the health report {name}: {source}")]
    CreateReport {
        /// ConfigMap name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// What the watches show of the objects [`Grants`] writes.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The Roles named [`AccessNames::object_name`].
    pub roles: &'a [Arc<Role>],
    /// The RoleBindings of that name.
    pub bindings: &'a [Arc<PartialObjectMeta<RoleBinding>>],
    /// Names of the health reports that exist.
    pub reports: BTreeSet<String>,
    /// The namespaces that exist (a Role in a missing namespace cannot be written, and a
    /// Secret there cannot exist).
    pub namespaces: BTreeSet<String>,
}

/// What [`Grants::widen`] wrote, so that [`Grants::narrow`] in the same pass does not write it
/// again before the watches have seen it.
#[derive(Debug, Default)]
pub struct Written {
    roles: BTreeMap<String, Role>,
    bindings: BTreeSet<String>,
}

/// Writes the scrapers' Roles, RoleBindings and empty health reports.
pub struct Grants {
    client: Client,
    names: AccessNames,
    /// The cluster-scoped owner to look up (`--owner-cluster-role`), until found.
    owner_cluster_role: Option<String>,
    metrics: Metrics,
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl Grants {
    /// Grants for the scraper ServiceAccount in `names`; every object gets `owner_cluster_role`
    /// (looked up by name) as its owner when it is given.
    pub fn new(
        client: Client,
        names: AccessNames,
        owner_cluster_role: Option<String>,
        metrics: Metrics,
    ) -> Self {
        Self {
            client,
            names,
            owner_cluster_role,
            metrics,
        }
    }

    /// Whether an eBPF DaemonSet is deployed (its profilers report in their own key of the
    /// health reports).
    pub fn ebpf_deployed(&self) -> bool {
        self.names.ebpf_service_account.is_some()
    }

    /// Name of the Roles and RoleBindings (what the watches select).
    pub fn object_name(&self) -> String {
        self.names.object_name()
    }

    /// What the Roles `roles` grant the scrapers now.
    pub fn granted(&self, roles: &[Arc<Role>]) -> ScraperAccess {
        ScraperAccess::granted_by(roles.iter().map(|r| &**r), &self.names)
    }

    /// Grants what `wanted` needs on top of what the Roles grant now, and creates the missing
    /// health reports. Every write is attempted; the first error is returned.
    pub async fn widen(
        &mut self,
        wanted: &ScraperAccess,
        observed: &Observed<'_>,
    ) -> (Written, Result<(), GrantError>) {
        self.find_owner().await;
        let granted = ScraperAccess::granted_by(observed.roles.iter().map(|r| &**r), &self.names);
        let mut first_error = None;
        for name in wanted.health_reports.difference(&observed.reports) {
            if let Err(e) = self.create_report(name).await {
                self.metrics.error(Failure::Grant);
                first_error.get_or_insert(e);
            }
        }
        let (written, r) = self
            .converge(&granted.union(wanted), observed, None, false)
            .await;
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
        (written, first_error.map_or(Ok(()), Err))
    }

    /// Grants exactly what `wanted` needs: narrows the Roles, deletes those of namespaces that
    /// need nothing any more (never the operator's own).
    pub async fn narrow(
        &mut self,
        wanted: &ScraperAccess,
        observed: &Observed<'_>,
        written: &Written,
    ) -> Result<(), GrantError> {
        self.converge(wanted, observed, Some(written), true).await.1
    }

    async fn converge(
        &self,
        access: &ScraperAccess,
        observed: &Observed<'_>,
        written_before: Option<&Written>,
        delete: bool,
    ) -> (Written, Result<(), GrantError>) {
        let mut desired = self.names.roles(access);
        desired.retain(|ns, _| observed.namespaces.contains(ns) || *ns == self.names.namespace);
        let current: BTreeMap<String, &Role> = observed
            .roles
            .iter()
            .map(|r| (r.namespace().unwrap_or_default(), &**r))
            .collect();
        // Bound to the current subjects: a binding written before the eBPF DaemonSet was
        // enabled (or disabled) is written again.
        let subjects = self.names.subjects_annotation();
        let bound: BTreeSet<String> = observed
            .bindings
            .iter()
            .filter(|b| {
                b.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SUBJECTS_ANNOTATION))
                    .map_or(self.names.ebpf_service_account.is_none(), |s| {
                        *s == subjects
                    })
            })
            .map(|b| b.namespace().unwrap_or_default())
            .collect();
        let existing: BTreeSet<String> = observed
            .bindings
            .iter()
            .map(|b| b.namespace().unwrap_or_default())
            .collect();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut written = Written::default();
        let mut first_error = None;
        for (ns, role) in &desired {
            let same = |r: &Role| {
                r.rules.clone().unwrap_or_default() == role.rules.clone().unwrap_or_default()
                    && (self.names.owner.is_none()
                        || r.metadata.owner_references == role.metadata.owner_references)
            };
            let up_to_date = current.get(ns).is_some_and(|r| same(r))
                || written_before
                    .and_then(|w| w.roles.get(ns))
                    .is_some_and(same);
            if !up_to_date {
                let api: Api<Role> = Api::namespaced(self.client.clone(), ns);
                match api
                    .patch(&self.object_name(), &params, &Patch::Apply(role))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(namespace = %ns, role = %self.object_name(), "updated the scraper's access");
                        written.roles.insert(ns.clone(), role.clone());
                    }
                    Err(source) => {
                        self.metrics.error(Failure::Grant);
                        first_error.get_or_insert(GrantError::Write {
                            kind: "Role",
                            namespace: ns.clone(),
                            name: self.object_name(),
                            source,
                        });
                        // A binding to a Role that could not be written is refused.
                        continue;
                    }
                }
            }
            let already_bound =
                bound.contains(ns) || written_before.is_some_and(|w| w.bindings.contains(ns));
            if !already_bound {
                let api: Api<RoleBinding> = Api::namespaced(self.client.clone(), ns);
                let binding = self.names.binding(ns);
                match api
                    .patch(&self.object_name(), &params, &Patch::Apply(&binding))
                    .await
                {
                    Ok(_) => {
                        written.bindings.insert(ns.clone());
                    }
                    Err(source) => {
                        self.metrics.error(Failure::Grant);
                        first_error.get_or_insert(GrantError::Write {
                            kind: "RoleBinding",
                            namespace: ns.clone(),
                            name: self.object_name(),
                            source,
                        });
                    }
                }
            }
        }
        if delete {
            let stale: BTreeSet<&String> = current
                .keys()
                .chain(existing.iter())
                .filter(|ns| !desired.contains_key(*ns) && **ns != self.names.namespace)
                .collect();
            for ns in stale {
                // The binding first: a binding without its Role grants nothing, but is clutter.
                if let Err(e) = self.delete::<RoleBinding>("RoleBinding", ns).await {
                    first_error.get_or_insert(e);
                }
                if let Err(e) = self.delete::<Role>("Role", ns).await {
                    first_error.get_or_insert(e);
                } else {
                    tracing::info!(namespace = %ns, "no Secret referenced in the namespace any more: revoked the scraper's access");
                }
            }
        }
        (written, first_error.map_or(Ok(()), Err))
    }

    async fn delete<K>(&self, kind: &'static str, namespace: &str) -> Result<(), GrantError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        match api
            .delete(&self.object_name(), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(source) => {
                self.metrics.error(Failure::Grant);
                Err(GrantError::Delete {
                    kind,
                    namespace: namespace.into(),
                    name: self.object_name(),
                    source,
                })
            }
        }
    }

    /// Creates the empty health report `name`; one that exists already is left alone (its
    /// scraper owns the content).
    async fn create_report(&self, name: &str) -> Result<(), GrantError> {
        let mut labels = BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
            (COMPONENT_LABEL.to_string(), COMPONENT_HEALTH.to_string()),
        ]);
        // The node's name is in the report's name; the label is there to select by.
        if let Some(node) = name
            .split_once('.')
            .map(|(_, node)| node)
            .filter(|n| n.len() <= 63)
        {
            labels.insert(SHARD_NODE_LABEL.into(), node.into());
        }
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.names.namespace);
        match api.create(&PostParams::default(), &cm).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(source) => Err(GrantError::CreateReport {
                name: name.into(),
                source,
            }),
        }
    }

    /// Looks the owner up until found; without it, objects are written without an owner.
    async fn find_owner(&mut self) {
        let Some(name) = self.owner_cluster_role.clone() else {
            return;
        };
        let api: Api<ClusterRole> = Api::all(self.client.clone());
        match api.get(&name).await {
            Ok(role) => {
                self.names.owner = Some(OwnerReference {
                    api_version: "rbac.authorization.k8s.io/v1".into(),
                    kind: "ClusterRole".into(),
                    name,
                    uid: role.uid().unwrap_or_default(),
                    ..Default::default()
                });
                self.owner_cluster_role = None;
            }
            Err(e) => {
                tracing::warn!(cluster_role = %name, error = %e, "cannot read the owner of the scraper's Roles; writing them without one for now");
            }
        }
    }
}
