//! Secrets read from the API under the scraper's own RBAC, cached.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Mutex,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use kubeprof_crds::NamespacedSecretKeyRef;

use crate::{
    credentials::{CredentialError, SecretSource},
    sources::JobSet,
};

/// Secrets read from the API, cached: a scrape never waits on the API server, and a Secret
/// that cannot be read now keeps its last value.
pub struct KubeSecrets {
    client: Client,
    cache: Mutex<HashMap<(String, String), SecretEntry>>,
}

/// A Secret's keys, or why it cannot be read.
type SecretEntry = Result<BTreeMap<String, String>, String>;

impl std::fmt::Debug for KubeSecrets {
    // Never prints secret values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSecrets").finish_non_exhaustive()
    }
}

impl KubeSecrets {
    /// A cache reading through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Mutex::default(),
        }
    }

    /// Loads every Secret the set refers to (jobs and sinks), and refreshes those already known;
    /// whether every one of them could be read.
    pub async fn load(&self, set: &JobSet) -> bool {
        let mut wanted: HashSet<(String, String)> = secret_refs(set)
            .into_iter()
            .map(|r| (r.namespace, r.name))
            .collect();
        wanted.extend(
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned(),
        );
        let mut all_read = true;
        for (namespace, name) in wanted {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
            let value = match api.get_opt(&name).await {
                Ok(Some(secret)) => {
                    let mut data: BTreeMap<String, String> = secret.string_data.unwrap_or_default();
                    for (k, v) in secret.data.unwrap_or_default() {
                        data.insert(k, String::from_utf8_lossy(&v.0).into_owned());
                    }
                    Ok(data)
                }
                Ok(None) => Err("secret not found".to_string()),
                // The operator grants `get` on each referenced Secret by name, just before it
                // publishes the jobs that refer to it; a refusal right after that is retried.
                Err(kube::Error::Api(e)) if e.code == 403 => Err(format!(
                    "the scraper may not read it ({}): the operator grants access to referenced \
                     Secrets only with the chart's scraper.readSecrets",
                    e.message
                )),
                Err(e) => {
                    // Unreachable API: keep whatever was known.
                    tracing::warn!(secret = %format!("{namespace}/{name}"), error = %e, "cannot read secret; keeping the cached value");
                    all_read = false;
                    continue;
                }
            };
            all_read &= value.is_ok();
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((namespace, name), value);
        }
        all_read
    }
}

impl SecretSource for KubeSecrets {
    fn read(&self, r: &NamespacedSecretKeyRef) -> Result<String, CredentialError> {
        let err = |message: String| CredentialError::Secret {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            key: r.key.clone(),
            message,
        };
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(&(r.namespace.clone(), r.name.clone())) {
            None => Err(err("not loaded yet".into())),
            Some(Err(e)) => Err(err(e.clone())),
            Some(Ok(data)) => data
                .get(&r.key)
                .cloned()
                .ok_or_else(|| err("no such key".into())),
        }
    }
}

/// Every Secret reference in a job set: the ones the operator grants this scraper `get` on.
pub fn secret_refs(set: &JobSet) -> Vec<NamespacedSecretKeyRef> {
    kubeprof_crds::references::jobs_secret_refs(&set.jobs, &set.sinks)
}
