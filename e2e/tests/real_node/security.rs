//! What a security reviewer checks on the running release: who the processes run as (the pod
//! specs, and the processes themselves in the node's /proc), that both components profile
//! themselves in their hardened pods, and that `helm uninstall` leaves nothing but the CRDs.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context, bail, ensure};
use kubeprof_crds::constants::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use kubeprof_e2e::procs::eventually;

use crate::stage::Stage;

/// The one init container that may run as root (the chart's `chown` of the file sink's
/// hostPath), and the one capability it may have.
const ROOT_INIT: &str = "own-file-sink-dir";

/// Every kubeprof pod's long-running containers (but the eBPF profiler's) run as non-root with
/// every capability dropped, read-only root and no privilege escalation, in their specs and in
/// fact (the uid and the effective capabilities of their processes on the node); the only root
/// step is the chart's init container with `CAP_CHOWN` alone. Returns one line per container checked.
pub fn non_root(s: &Stage<'_>) -> anyhow::Result<Vec<String>> {
    let out = s.node.kubectl(&[
        "get",
        "pods",
        "-n",
        s.ns(),
        "-l",
        "app.kubernetes.io/name=kubeprof",
        "-o",
        "json",
    ])?;
    let pods: serde_json::Value = serde_json::from_str(&out)?;
    let mut seen = Vec::new();
    for pod in pods["items"].as_array().into_iter().flatten() {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        // The eBPF profiler is the one component that needs privileges (issue 16).
        if pod["metadata"]["labels"]["app.kubernetes.io/component"]
            .as_str()
            .is_some_and(|c| c.contains("ebpf"))
        {
            continue;
        }
        let spec = &pod["spec"];
        let pod_sc = &spec["securityContext"];
        for init in spec["initContainers"].as_array().into_iter().flatten() {
            let c = init["name"].as_str().unwrap_or_default();
            let sc = &init["securityContext"];
            let added = sc["capabilities"]["add"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            ensure!(
                c == ROOT_INIT
                    && added == [serde_json::json!("CHOWN")]
                    && sc["capabilities"]["drop"] == serde_json::json!(["ALL"])
                    && sc["allowPrivilegeEscalation"] == false,
                "{name}: init container {c} has {sc}: only {ROOT_INIT} may run as root, with CAP_CHOWN alone"
            );
        }
        for container in spec["containers"].as_array().into_iter().flatten() {
            let c = container["name"].as_str().unwrap_or_default();
            let sc = &container["securityContext"];
            let uid = sc["runAsUser"]
                .as_u64()
                .or_else(|| pod_sc["runAsUser"].as_u64());
            let non_root = sc["runAsNonRoot"]
                .as_bool()
                .or_else(|| pod_sc["runAsNonRoot"].as_bool());
            ensure!(
                non_root == Some(true) && uid.is_some_and(|u| u != 0),
                "{name}/{c}: runAsNonRoot {non_root:?}, runAsUser {uid:?} (pod {pod_sc}, container {sc})"
            );
            ensure!(
                sc["readOnlyRootFilesystem"] == true
                    && sc["allowPrivilegeEscalation"] == false
                    && sc["capabilities"]["drop"] == serde_json::json!(["ALL"])
                    && sc["capabilities"]["add"].is_null()
                    && sc["privileged"] != true,
                "{name}/{c}: securityContext {sc}"
            );
            let id = pod["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == c)
                .and_then(|s| s["containerID"].as_str())
                .and_then(|id| id.split_once("://"))
                .map(|(_, id)| id.to_owned())
                .with_context(|| format!("{name}/{c}: no containerID"))?;
            let (pid, uids, cap_eff) = process_of(&id)?;
            ensure!(
                uids.iter().all(|u| *u != 0 && Some(u64::from(*u)) == uid),
                "{name}/{c}: process {pid} runs with uids {uids:?} (real, effective, saved, fs), want {uid:?}"
            );
            ensure!(
                cap_eff == 0,
                "{name}/{c}: process {pid} has effective capabilities {cap_eff:#x}"
            );
            seen.push(format!("{name}/{c}: pid {pid} uid {uids:?} CapEff 0"));
        }
    }
    ensure!(
        seen.len() >= 3,
        "expected the operator's two pods and the scraper's, checked {seen:?}"
    );
    Ok(seen)
}

/// The host pid of container `id`'s first process (its cgroup path names the container), with
/// its uids (real, effective, saved, filesystem) and effective capabilities from
/// /proc/PID/status.
fn process_of(id: &str) -> anyhow::Result<(u32, Vec<u32>, u64)> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|cg| cg.lines().any(|l| l.ends_with(id)))
        })
        .collect();
    pids.sort_unstable();
    let Some(&pid) = pids.first() else {
        bail!("no process on the node in the cgroup of container {id}");
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("/proc/{pid}/status has no {name}"))
    };
    let uids = field("Uid:")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<Vec<u32>, _>>()?;
    let cap_eff = u64::from_str_radix(field("CapEff:")?, 16)?;
    Ok((pid, uids, cap_eff))
}

/// `GET /debug/pprof/profile?seconds=1` of every operator and scraper pod, at its pod IP on
/// its `metrics` port (the node reaches pod IPs on its bridge): 200 and a CPU profile that
/// decodes. Returns one line per pod.
pub async fn self_profiles(s: &Stage<'_>) -> anyhow::Result<Vec<String>> {
    let out = s.node.kubectl(&[
        "get",
        "pods",
        "-n",
        s.ns(),
        "-l",
        "app.kubernetes.io/name=kubeprof",
        "-o",
        "json",
    ])?;
    let pods: serde_json::Value = serde_json::from_str(&out)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(45))
        .build()?;
    let mut lines = Vec::new();
    for pod in pods["items"].as_array().into_iter().flatten() {
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let ip = pod["status"]["podIP"].as_str().context("no pod IP")?;
        let port = pod["spec"]["containers"][0]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "metrics")
            .and_then(|p| p["containerPort"].as_u64())
            .with_context(|| format!("{name}: no metrics port"))?;
        let url = format!("http://{ip}:{port}/debug/pprof/profile?seconds=1");
        // The scraper takes the operator's CPU profile on schedule too, nearly all the time; a
        // process runs one CPU profile at a time, so ours waits for its turn (up to one
        // scrape's profile): the client's timeout allows for that.
        let profile = eventually(
            &format!("GET {url} ({name})"),
            Duration::from_secs(60),
            || async {
                let response = http.get(&url).send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                ensure!(
                    status == reqwest::StatusCode::OK,
                    "{status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                );
                let profile =
                    kubeprof_pprof::decode(&body, &kubeprof_pprof::DecodeLimits::default())
                        .context("the body is not a pprof profile")?;
                Ok(profile)
            },
        )
        .await?;
        let types = profile
            .sample_type
            .iter()
            .map(|t| kubeprof_pprof::string(&profile, t.r#type).to_owned())
            .collect::<Vec<_>>();
        ensure!(
            types.iter().any(|t| t == "cpu" || t == "samples"),
            "{name}: sample types {types:?}"
        );
        lines.push(format!(
            "{name}: {types:?}, {} samples",
            profile.sample.len()
        ));
    }
    ensure!(lines.len() >= 3, "expected three kubeprof pods: {lines:?}");
    Ok(lines)
}

/// The names of every cluster-scoped object whose kind can be listed
/// (`kind.group/name`), to compare before install and after uninstall.
pub fn cluster_objects(s: &Stage<'_>) -> anyhow::Result<BTreeSet<String>> {
    objects(s, None)
}

/// Every object in namespace `ns` (or cluster-scoped with `None`) of every kind that can be
/// listed, as `kind.group/name`, Events left out (they expire on their own).
fn objects(s: &Stage<'_>, ns: Option<&str>) -> anyhow::Result<BTreeSet<String>> {
    let namespaced = if ns.is_some() { "true" } else { "false" };
    let kinds = s.node.kubectl(&[
        "api-resources",
        "--verbs=list",
        &format!("--namespaced={namespaced}"),
        "-o",
        "name",
    ])?;
    let kinds = kinds
        .lines()
        .filter(|k| !k.is_empty() && *k != "events" && *k != "events.events.k8s.io")
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec!["get", kinds.as_str(), "-o", "name", "--ignore-not-found"];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    Ok(s.node
        .kubectl(&args)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// After `helm uninstall`: what is left in the release namespace beyond what Kubernetes puts
/// in every namespace, and the cluster-scoped objects that were not there before the install
/// but the CRDs and the test's namespaces. Empty when uninstall cleaned up.
pub fn left_after_uninstall(
    s: &Stage<'_>,
    before: &BTreeSet<String>,
    own_namespaces: &[&str],
) -> anyhow::Result<Vec<String>> {
    let mut left = Vec::new();
    for o in objects(s, Some(s.ns()))? {
        // Kubernetes' own in every namespace: the default ServiceAccount (and its token
        // Secret before 1.24) and the root CA ConfigMap.
        let every_namespace = o == "serviceaccount/default"
            || o.starts_with("secret/default-token-")
            || o == "configmap/kube-root-ca.crt";
        if !every_namespace {
            left.push(format!("{o} (namespace {})", s.ns()));
        }
    }
    // The operator's objects in other namespaces (the scraper's Roles and RoleBindings that
    // grant the referenced Secrets) carry its managed-by label and go with it too.
    for ns in own_namespaces.iter().filter(|ns| **ns != s.ns()) {
        let managed = format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}");
        let ours = s.node.kubectl(&[
            "get",
            "roles,rolebindings,configmaps,secrets,leases",
            "-n",
            ns,
            "-l",
            &managed,
            "-o",
            "name",
        ])?;
        left.extend(
            ours.lines()
                .filter(|l| !l.is_empty())
                .map(|o| format!("{o} (namespace {ns})")),
        );
    }
    for o in cluster_objects(s)?.difference(before) {
        // The CRDs, and the API group the server registers for them.
        let crd = (o.starts_with("customresourcedefinition.apiextensions.k8s.io/")
            && o.ends_with(".kubeprof.io"))
            || o == "apiservice.apiregistration.k8s.io/v1alpha1.kubeprof.io";
        let test_ns = own_namespaces
            .iter()
            .any(|ns| o == &format!("namespace/{ns}"));
        if !crd && !test_ns {
            left.push(o.clone());
        }
    }
    Ok(left)
}
