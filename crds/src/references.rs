//! The Secrets a job contract refers to. The operator grants the scraper `get` on exactly these
//! (a Role per namespace, limited by `resourceNames`), and the scraper reads exactly these, so
//! both sides find them the same way.

use serde::Serialize;

use crate::{
    NamespacedSecretKeyRef,
    job::{JobShard, ScrapeJob},
    policy::SinkSpec,
};

/// Every Secret reference inside `value`, found by shape (an object with exactly the string
/// fields `namespace`, `name` and `key`), so a credential field added to sinks or to a job's
/// `auth` and `tls` later is never missed. Only for parts that carry credentials: a label map
/// can have that shape too.
pub fn secret_refs(value: &impl Serialize) -> Vec<NamespacedSecretKeyRef> {
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
    if let Ok(v) = serde_json::to_value(value) {
        walk(&v, &mut out);
    }
    out
}

impl JobShard {
    /// Every Secret this shard's jobs and sinks refer to. Walks only the parts that carry
    /// credentials (each job's `auth` and `tls`, the sinks): labels of the shape of a reference
    /// are not one, and a whole shard at 10,000 pods is tens of megabytes.
    pub fn secret_refs(&self) -> Vec<NamespacedSecretKeyRef> {
        jobs_secret_refs(&self.jobs, &self.sinks)
    }
}

/// Every Secret `jobs` and `sinks` refer to (see [`JobShard::secret_refs`]).
pub fn jobs_secret_refs(jobs: &[ScrapeJob], sinks: &[SinkSpec]) -> Vec<NamespacedSecretKeyRef> {
    let mut out = secret_refs(&sinks);
    for job in jobs {
        if job.auth.is_some() || job.tls.is_some() {
            out.extend(secret_refs(&(&job.auth, &job.tls)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{CredentialRef, ScrapeAuth, ScrapeTls};

    fn secret(namespace: &str, name: &str, key: &str) -> CredentialRef {
        CredentialRef {
            secret: Some(NamespacedSecretKeyRef {
                namespace: namespace.into(),
                name: name.into(),
                key: key.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_shard_names_the_secrets_of_its_jobs_and_sinks_and_nothing_else() {
        let job: ScrapeJob = serde_json::from_value(serde_json::json!({
            "id": "a", "origin": {"kind": "ProfilingTarget", "namespace": "shop", "name": "t"},
            "address": "10.0.0.1:6060", "profile": {"name": "process_cpu", "path": "/debug/pprof/profile", "delta": false},
            "interval": "15s", "timeout": "10s",
            "labels": {"namespace": "shop", "name": "not-a-secret", "key": "x"},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut with_auth = job.clone();
        with_auth.auth = Some(ScrapeAuth::Basic {
            username: CredentialRef::literal("me"),
            password: secret("shop", "basic", "password"),
        });
        with_auth.tls = Some(ScrapeTls {
            ca: Some(secret("shop", "tls", "ca.crt")),
            ..Default::default()
        });
        let sinks = serde_json::from_value(serde_json::json!([
            {"name": "p/pyro", "pyroscope": {"url": "http://pyro:4040",
              "bearerTokenSecret": {"namespace": "monitoring", "name": "pyro-token", "key": "token"}}},
            {"name": "p/files", "file": {"directory": "/var/lib/kubeprof/profiles"}},
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        let shard = JobShard::new(Some("node-a".into()), vec![job, with_auth], sinks);
        let names = |refs: Vec<NamespacedSecretKeyRef>| {
            let mut v: Vec<String> = refs
                .into_iter()
                .map(|r| format!("{}/{}/{}", r.namespace, r.name, r.key))
                .collect();
            v.sort();
            v
        };
        let found = names(shard.secret_refs());
        assert_eq!(
            found,
            [
                "monitoring/pyro-token/token",
                "shop/basic/password",
                "shop/tls/ca.crt"
            ]
        );
        // The job's labels have the shape of a reference, and are not one.
        assert_eq!(names(secret_refs(&shard)).len(), found.len() + 2);
    }
}
