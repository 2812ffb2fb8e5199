//! What the scenarios read back: conditions, metrics, the Lease, deleted objects, profiles.

use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::ConfigMap};
use kube::Api;
use kubeprof_crds::{ProfilingTarget, constants::LEADER_LEASE};
use kubeprof_e2e::procs::eventually;

/// Who holds the leader Lease ("" when nobody).
pub async fn lease_holder(leases: &Api<Lease>) -> anyhow::Result<String> {
    let lease = leases.get(LEADER_LEASE).await?;
    Ok(lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default())
}

/// `(status, reason)` of the condition `type_`.
pub fn condition(t: &ProfilingTarget, type_: &str) -> Option<(String, String)> {
    t.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone()))
    })
}

/// The value of the first sample of `name` on the `/metrics` at `listen`.
pub async fn metric(listen: &str, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://{listen}/metrics"))
        .await?
        .text()
        .await?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no metric {name} at {listen}"))
}

/// Waits up to 30 s for the ConfigMap `name` to be gone.
pub async fn config_map_deleted(api: &Api<ConfigMap>, name: &str, by: &str) -> anyhow::Result<()> {
    eventually(
        &format!("{name} deleted{by}"),
        Duration::from_secs(30),
        || async {
            ensure!(api.get_opt(name).await?.is_none(), "{name} still exists");
            Ok(())
        },
    )
    .await
}

/// `raw` gunzipped, or as it is when it is not gzip.
pub fn decompress(raw: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    if flate2::read::GzDecoder::new(raw)
        .read_to_end(&mut out)
        .is_err()
    {
        return raw.to_vec();
    }
    out
}
