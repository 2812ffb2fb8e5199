//! The owner of what the operator creates at run time (job shards, the leader Lease, and any
//! other object it writes into its namespace): its own Deployment, so that deleting the
//! Deployment (`helm uninstall`) lets Kubernetes' garbage collector delete them too.
//!
//! The chart names the Deployment (`DEPLOYMENT_NAME`, in `POD_NAMESPACE`) and lets the operator
//! `get` it; its UID is read once at start. Without a name (run locally, in tests) the operator
//! works the same but owns nothing. A named Deployment that cannot be read is logged as an
//! error and the operator goes on without owners: profiling matters more than cleanup.

use k8s_openapi::{api::apps::v1::Deployment, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{Api, Client, Resource, api::ObjectMeta};

/// The owner reference every object the operator creates carries, if it knows its Deployment.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Owner(Option<OwnerReference>);

impl Owner {
    /// No owner: objects are left for whoever runs the operator to delete.
    pub(crate) fn none() -> Self {
        Self(None)
    }

    /// The Deployment `name` in `namespace` as owner, when it can be read; see the module
    /// documentation for what happens otherwise.
    pub(crate) async fn resolve(client: Client, namespace: &str, name: Option<&str>) -> Self {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            tracing::info!(
                "no DEPLOYMENT_NAME: the objects the operator creates have no owner and stay \
                 when it is uninstalled"
            );
            return Self::none();
        };
        match Api::<Deployment>::namespaced(client, namespace)
            .get(name)
            .await
        {
            Ok(d) => {
                let owner = Self::of(&d);
                if owner.0.is_none() {
                    tracing::error!(deployment = %name, %namespace, "the Deployment has no UID; its objects will have no owner");
                }
                owner
            }
            Err(e) => {
                tracing::error!(
                    deployment = %name,
                    %namespace,
                    error = %e,
                    "cannot read the operator's Deployment (RBAC needs `get` on it); the objects \
                     the operator creates will have no owner and stay after uninstalling"
                );
                Self::none()
            }
        }
    }

    /// `deployment` as owner (not as controller: it does not manage these objects, and
    /// without `blockOwnerDeletion` no permission on its finalizers is needed).
    pub(crate) fn of(deployment: &Deployment) -> Self {
        Self(deployment.controller_owner_ref(&()).map(|mut r| {
            r.controller = None;
            r.block_owner_deletion = None;
            r
        }))
    }

    /// The owner's UID, if any.
    pub(crate) fn uid(&self) -> Option<&str> {
        self.0.as_ref().map(|r| r.uid.as_str())
    }

    /// Whether `meta` lacks this owner (never, without an owner).
    pub(crate) fn missing_on(&self, meta: &ObjectMeta) -> bool {
        self.0.as_ref().is_some_and(|owner| {
            !meta
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.uid == owner.uid)
        })
    }

    /// The owner reference alone, as a strategic-merge patch of an object's metadata (which
    /// merges owner references by UID, keeping the others).
    pub(crate) fn patch(&self) -> Option<serde_json::Value> {
        let owner = self.0.as_ref()?;
        Some(serde_json::json!({ "metadata": { "ownerReferences": [owner] } }))
    }

    /// Makes `meta` owned by the operator's Deployment, keeping other owners; whether it
    /// changed. Does nothing without an owner.
    pub(crate) fn set_on(&self, meta: &mut ObjectMeta) -> bool {
        let Some(owner) = &self.0 else {
            return false;
        };
        let refs = meta.owner_references.get_or_insert_with(Vec::new);
        if refs.iter().any(|r| r.uid == owner.uid) {
            return false;
        }
        refs.push(owner.clone());
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The Deployment `kubeprof-operator` with UID `uid-deploy`, as owner.
    pub(crate) fn owner() -> Owner {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "kubeprof-operator", "namespace": "kubeprof", "uid": "uid-deploy" },
        }))
        .unwrap_or_default();
        Owner::of(&d)
    }

    /// What an object owned by [`owner`] carries.
    pub(crate) fn expected_reference() -> serde_json::Value {
        serde_json::json!([{
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "kubeprof-operator",
            "uid": "uid-deploy",
        }])
    }

    #[test]
    fn the_owner_is_added_once_beside_other_owners() {
        let mut meta = ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                uid: "other".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert!(owner().set_on(&mut meta));
        assert!(!owner().set_on(&mut meta));
        let refs = meta.owner_references.unwrap_or_default();
        assert_eq!(refs.len(), 2);
        assert_eq!(
            serde_json::to_value(&refs[1..]).unwrap_or_default(),
            expected_reference()
        );
        let mut none = ObjectMeta::default();
        assert!(!Owner::none().set_on(&mut none));
        assert_eq!(none.owner_references, None);
    }

    #[tokio::test]
    async fn the_deployment_is_read_once_and_a_refusal_leaves_no_owner() {
        let (client, mut server) = crate::mock::client();
        let path = "/apis/apps/v1/namespaces/kubeprof/deployments/kubeprof-operator";
        let answer = async {
            let d = serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": "kubeprof-operator", "namespace": "kubeprof", "uid": "uid-deploy" },
            });
            server.expect(http::Method::GET, path).await.ok(&d);
            server
                .expect(http::Method::GET, path)
                .await
                .fail(403, "Forbidden");
        };
        let resolving = async {
            let found = Owner::resolve(client.clone(), "kubeprof", Some("kubeprof-operator")).await;
            let refused =
                Owner::resolve(client.clone(), "kubeprof", Some("kubeprof-operator")).await;
            let unnamed = Owner::resolve(client, "kubeprof", None).await;
            (found, refused, unnamed)
        };
        let ((found, refused, unnamed), ()) = tokio::join!(resolving, answer);
        assert_eq!(found, owner());
        assert_eq!(found.uid(), Some("uid-deploy"));
        assert_eq!((refused, unnamed), (Owner::none(), Owner::none()));
    }
}
