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

    /// Loads every Secret the set refers to (jobs and sinks), and refreshes those already known.
    pub async fn load(&self, set: &JobSet) {
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
                Err(kube::Error::Api(e)) if e.code == 403 => Err(format!(
                    "the scraper may not read it ({}); enable scraper.readSecrets in the chart",
                    e.message
                )),
                Err(e) => {
                    // Unreachable API: keep whatever was known.
                    tracing::warn!(secret = %format!("{namespace}/{name}"), error = %e, "cannot read secret; keeping the cached value");
                    continue;
                }
            };
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((namespace, name), value);
        }
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

/// Every Secret reference in a job set. Found by shape (`namespace`, `name`, `key`) in the
/// serialized set, so a credential field added to jobs or sinks later is never missed.
pub fn secret_refs(set: &JobSet) -> Vec<NamespacedSecretKeyRef> {
    fn walk(v: &serde_json::Value, out: &mut Vec<NamespacedSecretKeyRef>) {
        match v {
            serde_json::Value::Object(map) => {
                if map.len() == 3
                    && ["namespace", "name", "key"]
                        .iter()
                        .all(|k| map.get(*k).is_some_and(serde_json::Value::is_string))
                    && let Ok(r) = serde_json::from_value(v.clone())
                {
                    out.push(r);
                    return;
                }
                map.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::to_value(&set.jobs) {
        walk(&v, &mut out);
    }
    if let Ok(v) = serde_json::to_value(&set.sinks) {
        walk(&v, &mut out);
    }
    out
}
