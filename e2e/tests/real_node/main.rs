//! kubeprof installed as a user installs it, on a real node (`scripts/real-node.sh start`):
//! Helm's own engine installs the chart, the operator and the scraper run as pods of the image
//! `scripts/build-image.sh` builds, and real pods of the Go pprof service are profiled. Profiles
//! go to two sinks: files on the node's hostPath, and a Pyroscope-protocol receiver running as a
//! pod (`e2e/go/pushreceiver.go`) that decodes what it is pushed.
//!
//! One test, whose steps run in order because each starts from the cluster the previous one
//! left (a release is installed once, upgraded, then uninstalled):
//! 1. the CRDs with `kubectl create --validate=false` (a 1.20 server refuses Helm 4's server-side
//!    apply of them), then `helm install --skip-crds`, as the README says; `kubectl auth can-i`
//!    for both ServiceAccounts matches what the binaries do;
//! 2. a ProfilingTarget's Deployment and an annotated Deployment: their CPU profiles (with the
//!    Go service's frames) and memory profiles land in the file sink on the node's hostPath
//!    (the time from `helm install` to the first one is printed); `kubectl get pt` shows
//!    MATCHED 1, FAILING 0, READY True; kubeprof's own CPU profile arrives too; the push
//!    receiver gets the same profiles (labels, tenant, pprof that decodes with the Go frames);
//!    every kubeprof container runs as non-root with no capabilities (pod specs and /proc on
//!    the node), and each pod answers `/debug/pprof/profile` with a CPU profile; the chart's
//!    eBPF DaemonSet (`ebpf.enabled`, the policy's `ebpf` for the application namespace) stores
//!    `process_cpu` profiles of the checkout pod labelled with its pod and container, none of
//!    kubeprof's own (unselected) pods, and the policy shows 1 of 1 eBPF nodes running;
//! 3. scale up to 2: MATCHED 2 and profiles of the new pod;
//! 4. the scraper pod deleted: the DaemonSet recreates it and profiles keep arriving;
//! 5. the operator leader deleted: the other replica takes the lease, and a scale down to 1
//!    shows in status (only the leader writes status); no kubeprof container restarted;
//! 6. `helm upgrade` with changed values (external labels, log format): the new label arrives;
//! 7. a pod whose two containers both name their port `pprof`: both are profiled, each with its
//!    own `container` label, in both sinks;
//! 8. the scraper's own token reads the Secret the receiver sink references, and gets 403 for
//!    a Secret nothing references, for job shards and for another node's health report;
//! 9. the application namespace loses the label the policy selects: its targets turn Degraded,
//!    its jobs leave the scraper, and none of its profiles reaches either sink afterwards;
//! 10. `helm uninstall`: nothing is left but the CRDs (the operator's ConfigMaps and Lease go
//!     with the Deployment that owns them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code may panic

mod access;
mod rbac;
mod receiver;
mod scope;
mod security;
mod stage;

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use kubeprof_e2e::{
    procs::eventually,
    real_node::{NODE_NAME, RealNode, stored_profiles},
    say,
};
use serde_json::json;

use crate::{
    receiver::{RECEIVER_IMAGE, Receiver, TENANT},
    stage::{DEMO_IMAGE, Stage, crds, demo_deployment, kubeprof_image},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_on_a_real_node() -> anyhow::Result<()> {
    let Some(node) = RealNode::get("real_node::helm_install_on_a_real_node")? else {
        return Ok(());
    };
    let images = node.images()?;
    for image in [kubeprof_image()?.as_str(), DEMO_IMAGE, RECEIVER_IMAGE] {
        ensure!(
            images.iter().any(|i| i == image),
            "node {NODE_NAME} has no image {image}: run scripts/build-image.sh (it imports into the running node)"
        );
    }
    // reqwest is built without a crypto provider of its own (the workspace's one is ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = Stage::new(&node)?;
    let result = scenario(&s).await;
    if result.is_err() {
        s.diagnostics();
    }
    s.cleanup();
    result
}

/// The eBPF DaemonSet's profiles: `process_cpu` of the checkout pod `pod`, written after
/// `since`, attributed to its pod and container (pulled CPU profiles carry `instance`, eBPF
/// ones do not); none of an unselected pod (kubeprof's own, in a namespace the policy governs
/// but its `ebpf.namespaces` leaves out); the policy counts the node as running it.
async fn ebpf_profiles(s: &Stage<'_>, pod: &str, since: SystemTime) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let cpu = s
        .profile(
            &[("pod", pod), ("instance", "")],
            "process_cpu",
            since,
            None,
            Duration::from_secs(120),
        )
        .await?;
    for (k, v) in [
        ("namespace", s.app_ns.as_str()),
        ("pod", pod),
        ("container", "checkout"),
        ("node", NODE_NAME),
        ("service_name", &format!("{}/checkout", s.app_ns)),
    ] {
        ensure!(cpu.label(k) == v, "eBPF label {k} of {:?}", cpu.labels);
    }
    let raw = std::fs::read(&cpu.path)?;
    let named = stage::profile_contains(&raw, "main.hotCPULeaf");
    say(&format!(
        "e2e real node: 2. eBPF: a process_cpu profile of {}/{pod} from the eBPF DaemonSet after {:.1} s ({}; labels {:?}; the Go frame main.hotCPULeaf {})",
        s.app_ns,
        t0.elapsed().as_secs_f64(),
        cpu.path.display(),
        cpu.labels,
        if named { "named" } else { "NOT named" },
    ));
    let policy = s.values["defaultPolicy"]["name"]
        .as_str()
        .context("the policy's name")?
        .to_owned();
    eventually(
        "the policy counts 1 node running eBPF",
        Duration::from_secs(60),
        || async {
            let running = s.node.kubectl(&[
                "get",
                "profilingpolicy",
                &policy,
                "-o",
                "jsonpath={.status.ebpfNodes}/{.status.ebpfRunningNodes}",
            ])?;
            ensure!(
                running.trim() == "1/1",
                "ebpfNodes/ebpfRunningNodes {running}"
            );
            Ok(())
        },
    )
    .await?;
    // Unselected: no eBPF profile of kubeprof's own pods (their pulled ones carry `instance`).
    let unselected: Vec<_> = stored_profiles(&s.profiles())
        .into_iter()
        .filter(|p| p.label("namespace") == s.ns() && p.label("instance").is_empty())
        .map(|p| p.labels)
        .collect();
    ensure!(
        unselected.is_empty(),
        "eBPF profiles of unselected pods: {unselected:?}"
    );
    say(&format!(
        "e2e real node: 2. eBPF: policy {policy} shows ebpfNodes 1, ebpfRunningNodes 1; no eBPF profile of the unselected pods in {}",
        s.ns()
    ));
    Ok(())
}

async fn scenario(s: &Stage<'_>) -> anyhow::Result<()> {
    let node = s.node;
    let crds = crds();
    // What the cluster holds before kubeprof: after uninstall, only the CRDs may be new.
    let cluster_before = security::cluster_objects(s)?;

    // The demo services and the push receiver first, so that the clock below measures
    // kubeprof alone.
    let receiver = Receiver::deploy(s, &s.sink_ns)?;
    let mut values = s.values.clone();
    values["defaultPolicy"]["spec"]["sinks"]
        .as_array_mut()
        .context("the default policy's sinks")?
        .push(receiver.sink());
    // The policy governs the namespaces with this label: the application's and kubeprof's
    // own (created here, before `helm install --create-namespace`, to carry it).
    let profiled = format!("{}=true", scope::PROFILED_LABEL);
    for ns in [s.app_ns.as_str(), s.ns()] {
        node.kubectl(&["create", "namespace", ns])?;
        node.kubectl(&["label", "namespace", ns, &profiled])?;
    }
    s.apply(&s.app_ns, &demo_deployment("checkout", json!({})))?;
    s.apply(
        &s.app_ns,
        &demo_deployment(
            "annotated",
            json!({
                "profiles.grafana.com/cpu.scrape": "true",
                "profiles.grafana.com/cpu.port_name": "pprof",
                "profiles.grafana.com/memory.scrape": "true",
                "profiles.grafana.com/memory.port_name": "pprof",
            }),
        ),
    )?;
    s.rollout(&s.app_ns, "deployment/checkout")?;
    s.rollout(&s.app_ns, "deployment/annotated")?;

    // 1. Install as the README says.
    let t0 = Instant::now();
    let since = SystemTime::now();
    // A previous run that died half-way may have left them.
    node.kubectl(&["delete", "--ignore-not-found", "-f", &crds])?;
    node.kubectl(&["create", "--validate=false", "-f", &crds])?;
    node.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "-f",
        &crds,
    ])?;
    let release = s.helm.install(&values)?;
    let installed = t0.elapsed();
    ensure!(release["status"] == "deployed", "helm install: {release}");
    say(&format!(
        "e2e real node: 1. CRDs created, helm install --wait done in {:.1} s: {release}",
        installed.as_secs_f64()
    ));
    s.apply(
        &s.app_ns,
        &json!({
            "apiVersion": "kubeprof.io/v1alpha1",
            "kind": "ProfilingTarget",
            "metadata": {"name": "checkout"},
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": "checkout"}},
                "endpoints": [{
                    "port": "pprof",
                    "interval": "10s",
                    "scrapeTimeout": "5s",
                    "profiles": {
                        "cpu": {"enabled": true, "seconds": 5},
                        "memory": {"enabled": true},
                        "goroutine": {"enabled": true},
                        "mutex": {"enabled": false},
                        "block": {"enabled": false},
                    },
                }],
            },
        }),
    )?;

    // What the ServiceAccounts may do, against what each binary does (and must not do), and
    // against README.md's table. The run-time grants follow the jobs the operator publishes.
    let secret = (receiver.ns.as_str(), receiver::TOKEN_SECRET);
    eventually(
        "kubectl auth can-i as the binaries need and README.md's RBAC table says",
        Duration::from_secs(60),
        || async {
            let rbac = rbac::differences(s, secret)?;
            ensure!(
                rbac.is_empty(),
                "RBAC differs from what the binaries need:\n{}",
                rbac.join("\n")
            );
            let listed = rbac::list_differences(s, secret)?;
            ensure!(
                listed.is_empty(),
                "kubectl auth can-i --list differs from README.md's RBAC table:\n{}",
                listed.join("\n")
            );
            Ok(())
        },
    )
    .await?;
    say(
        "e2e real node: 1. RBAC: kubectl auth can-i agrees with what the operator and the scraper do, and --list with README.md's table",
    );

    // 2. Profiles of real pods, on the node's disk.
    let checkout = s.pods(&s.app_ns, "app.kubernetes.io/name=checkout")?;
    let [first] = checkout.as_slice() else {
        bail!("expected one checkout pod, got {checkout:?}");
    };
    let memory = s
        .profile(
            &[("pod", first)],
            "memory",
            since,
            Some("main.leakyAllocator"),
            Duration::from_secs(120),
        )
        .await?;
    say(&format!(
        "e2e real node: helm install -> first stored profile: {:.1} s ({})",
        t0.elapsed().as_secs_f64(),
        memory.path.display()
    ));
    let cpu = s
        .profile(
            &[("pod", first)],
            "process_cpu",
            since,
            Some("main.hotCPULeaf"),
            Duration::from_secs(60),
        )
        .await?;
    for (k, v) in [
        ("namespace", s.app_ns.as_str()),
        ("container", "checkout"),
        ("node", NODE_NAME),
        ("service_name", &format!("{}/checkout", s.app_ns)),
    ] {
        ensure!(cpu.label(k) == v, "label {k} of {:?}", cpu.labels);
    }
    ensure!(
        !cpu.labels
            .keys()
            .any(|k| k.starts_with("__") && k != "__name__"),
        "internal labels reached the sink: {:?}",
        cpu.labels
    );
    let annotated = s.pods(&s.app_ns, "app.kubernetes.io/name=annotated")?;
    let annotated = annotated.first().context("no annotated pod")?;
    s.profile(
        &[("pod", annotated)],
        "process_cpu",
        since,
        Some("main.hotCPULeaf"),
        Duration::from_secs(60),
    )
    .await?;
    // The same profiles through the Pyroscope push API, in a pod behind a Service.
    let pushed = receiver
        .profile(
            &[("pod", first)],
            "process_cpu",
            since,
            Some("main.hotCPULeaf"),
            Duration::from_secs(60),
        )
        .await?;
    ebpf_profiles(s, first, since).await?;
    say(&format!(
        "e2e real node: helm install -> first pushed profile at the Pyroscope receiver: {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    for (k, v) in [
        ("namespace", s.app_ns.as_str()),
        ("container", "checkout"),
        ("node", NODE_NAME),
        ("service_name", &format!("{}/checkout", s.app_ns)),
    ] {
        ensure!(
            pushed.label(k) == v,
            "pushed label {k} of {:?}",
            pushed.labels
        );
    }
    ensure!(
        pushed.tenant == TENANT,
        "pushed with X-Scope-OrgID {:?}",
        pushed.tenant
    );
    // The scraper read the Secret the sink references.
    ensure!(
        pushed.authorization == format!("Bearer {}", receiver.token),
        "pushed with Authorization {:?}",
        pushed.authorization
    );
    ensure!(
        pushed.sample_types.iter().any(|t| t == "cpu:nanoseconds"),
        "pushed CPU profile's sample types {:?}",
        pushed.sample_types
    );
    // Alloy's pyroscope.write sends these two internal labels and no other.
    ensure!(
        !pushed
            .labels
            .keys()
            .any(|k| k.starts_with("__") && k != "__name__" && k != "__delta__"),
        "internal labels were pushed: {:?}",
        pushed.labels
    );
    let pushed_memory = receiver
        .profile(
            &[("pod", first)],
            "memory",
            since,
            Some("main.leakyAllocator"),
            Duration::from_secs(60),
        )
        .await?;
    say(&format!(
        "e2e real node: 2. pushed to the receiver and decoded there: process_cpu ({} samples, {:?}) and memory ({} samples, {:?})",
        pushed.samples, pushed.sample_types, pushed_memory.samples, pushed_memory.sample_types
    ));
    let table = s.pt_shows("checkout", 1, 3).await?;
    // kubeprof profiles itself: the chart annotates the operator's pods.
    let own = s
        .profile(
            &[("namespace", s.ns()), ("container", "operator")],
            "process_cpu",
            since,
            // An idle operator's 10 s profile may hold no sample in its own code.
            None,
            Duration::from_secs(90),
        )
        .await?;
    say(&format!(
        "e2e real node: 2. CPU and memory profiles of the target's pod, the annotated pod and the operator ({})\n{table}",
        own.label("pod")
    ));

    // Who the processes run as, and kubeprof profiling itself in its hardened pods.
    let processes = security::non_root(s)?;
    say(&format!(
        "e2e real node: 2. non-root, no capabilities:\n  {}",
        processes.join("\n  ")
    ));
    let own = security::self_profiles(s).await?;
    say(&format!(
        "e2e real node: 2. GET /debug/pprof/profile of each pod:\n  {}",
        own.join("\n  ")
    ));

    // 3. Scale up.
    node.kubectl(&[
        "scale",
        "-n",
        &s.app_ns,
        "deployment/checkout",
        "--replicas=2",
    ])?;
    s.rollout(&s.app_ns, "deployment/checkout")?;
    let pods = eventually("two checkout pods", Duration::from_secs(60), || async {
        let pods = s.pods(&s.app_ns, "app.kubernetes.io/name=checkout")?;
        ensure!(pods.len() == 2, "{pods:?}");
        Ok(pods)
    })
    .await?;
    let second = pods
        .iter()
        .find(|p| *p != first)
        .context("no new pod")?
        .clone();
    s.profile(
        &[("pod", &second)],
        "memory",
        since,
        Some("main.leakyAllocator"),
        Duration::from_secs(60),
    )
    .await?;
    let table = s.pt_shows("checkout", 2, 3).await?;
    say(&format!(
        "e2e real node: 3. scaled to 2: the new pod {second} is profiled\n{table}"
    ));

    // 4. The scraper pod deleted: the DaemonSet replaces it, profiles keep coming.
    let scraper_sel = "app.kubernetes.io/component=scraper";
    let old_scraper = s.pods(s.ns(), scraper_sel)?;
    node.kubectl(&[
        "delete",
        "pod",
        "-n",
        s.ns(),
        "-l",
        scraper_sel,
        "--wait=true",
    ])?;
    let new_scraper = eventually("a new scraper pod", Duration::from_secs(90), || async {
        let pods = s.pods(s.ns(), scraper_sel)?;
        ensure!(pods.len() == 1 && pods != old_scraper, "{pods:?}");
        Ok(pods)
    })
    .await?;
    s.rollout(s.ns(), "daemonset/kubeprof-scraper")?;
    let replaced = SystemTime::now();
    s.profile(
        &[("pod", first)],
        "memory",
        replaced,
        Some("main.leakyAllocator"),
        Duration::from_secs(60),
    )
    .await?;
    say(&format!(
        "e2e real node: 4. scraper {old_scraper:?} deleted, {new_scraper:?} took over and stores profiles"
    ));

    // 5. The operator leader deleted: the other replica leads.
    let lease = kubeprof_crds::constants::LEADER_LEASE;
    let holder = |s: &Stage<'_>| {
        s.node
            .kubectl(&[
                "get",
                "lease",
                "-n",
                s.ns(),
                lease,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .map(|h| h.trim().to_owned())
    };
    let leader = eventually("a leader", Duration::from_secs(60), || async {
        let h = holder(s)?;
        ensure!(!h.is_empty(), "no holder");
        Ok(h)
    })
    .await?;
    let operators = s.pods(s.ns(), "app.kubernetes.io/component=operator")?;
    ensure!(
        operators.len() == 2 && operators.contains(&leader),
        "operators {operators:?}, leader {leader}"
    );
    node.kubectl(&["delete", "pod", "-n", s.ns(), &leader, "--wait=false"])?;
    let new_leader = eventually("another leader", Duration::from_secs(90), || async {
        let h = holder(s)?;
        ensure!(!h.is_empty() && h != leader, "holder {h:?}");
        Ok(h)
    })
    .await?;
    // The warm standby takes over, not the Deployment's replacement for the deleted pod
    // (issue 16, item 10: the replacement used to win the race).
    ensure!(
        operators.contains(&new_leader),
        "the lease went to {new_leader}, not to the standby (operators before: {operators:?})"
    );
    node.kubectl(&[
        "scale",
        "-n",
        &s.app_ns,
        "deployment/checkout",
        "--replicas=1",
    ])?;
    let table = s.pt_shows("checkout", 1, 3).await?;
    say(&format!(
        "e2e real node: 5. leader {leader} deleted, {new_leader} leads; scaled to 1, status follows\n{table}"
    ));

    let restarted = s.restarts()?;
    ensure!(
        restarted.is_empty(),
        "kubeprof containers restarted: {restarted:?}"
    );

    // 6. helm upgrade with changed values.
    values["logFormat"] = json!("text");
    values["defaultPolicy"]["spec"]["externalLabels"] = json!({"cluster": "real-node"});
    let upgraded_at = SystemTime::now();
    let release = s.helm.upgrade(&values)?;
    ensure!(
        release["status"] == "deployed" && release["revision"] == 2,
        "helm upgrade: {release}"
    );
    s.rollout(s.ns(), "deployment/kubeprof-operator")?;
    s.rollout(s.ns(), "daemonset/kubeprof-scraper")?;
    let labelled = eventually(
        "a profile with the upgrade's external label",
        Duration::from_secs(90),
        || async {
            stored_profiles(&s.profiles())
                .into_iter()
                .find(|p| p.written > upgraded_at && p.label("cluster") == "real-node")
                .context("none yet")
        },
    )
    .await?;
    let args = node.kubectl(&[
        "get",
        "daemonset",
        "-n",
        s.ns(),
        "kubeprof-scraper",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].args}",
    ])?;
    ensure!(
        args.contains("--log-format=text"),
        "scraper args after upgrade: {args}"
    );
    say(&format!(
        "e2e real node: 6. helm upgrade (revision 2): {} carries cluster=real-node",
        labelled.path.display()
    ));

    // 7. Two containers whose ports share a name: both are scraped, each under its own name.
    let twins_at = SystemTime::now();
    scope::apply_twins(s)?;
    let twins = s.pods(&s.app_ns, "app.kubernetes.io/name=twins")?;
    let twins = twins.first().context("no twins pod")?;
    for container in ["twin-a", "twin-b"] {
        let labels = [("pod", twins.as_str()), ("container", container)];
        s.profile(
            &labels,
            "memory",
            twins_at,
            Some("main.leakyAllocator"),
            Duration::from_secs(60),
        )
        .await?;
        receiver
            .profile(
                &labels,
                "memory",
                twins_at,
                Some("main.leakyAllocator"),
                Duration::from_secs(60),
            )
            .await?;
    }
    let table = s.pt_shows("twins", 1, 2).await?;
    say(&format!(
        "e2e real node: 7. two containers with one port name: twin-a and twin-b both profiled, in both sinks\n{table}"
    ));

    // 8. One node's scraper, with its own token: the Secret a sink references, nothing else.
    let refused = access::scraper_is_confined(s, (&receiver.ns, receiver::TOKEN_SECRET))?;
    say(&format!(
        "e2e real node: 8. the scraper's token reads the sink's Secret, and gets:\n  {}",
        refused.join("\n  ")
    ));

    // 9. The application namespace leaves its policy: nothing of it goes anywhere.
    let left = scope::namespace_leaves(s, &receiver).await?;
    say(&format!(
        "e2e real node: 9. {} left the policy: no profile of it in either sink since; {left}",
        s.app_ns
    ));

    // 10. helm uninstall.
    let release = s.helm.uninstall()?;
    say(&format!("e2e real node: 10. helm uninstall: {release}"));
    eventually("kubeprof's pods gone", Duration::from_secs(90), || async {
        let left = node.kubectl(&[
            "get",
            "pods",
            "-n",
            s.ns(),
            "-l",
            "app.kubernetes.io/name=kubeprof",
            "-o",
            "name",
        ])?;
        ensure!(left.trim().is_empty(), "left: {left}");
        Ok(())
    })
    .await?;
    // Nothing but the CRDs (and the namespaces the test made) is left. The job shards, the
    // health reports and the Lease are the operator's and scrapers', not Helm's: they go only
    // when they name the operator's Deployment as their owner and the garbage collector (the
    // node's kube-controller-manager) follows it (issue 16, item 4).
    let own_namespaces = [s.ns(), s.app_ns.as_str(), s.sink_ns.as_str()];
    let left = eventually(
        "nothing but the CRDs after helm uninstall",
        Duration::from_secs(60),
        || async {
            let left = security::left_after_uninstall(s, &cluster_before, &own_namespaces)?;
            ensure!(left.is_empty(), "left behind: {}", left.join(", "));
            Ok(left)
        },
    )
    .await;
    if let Err(e) = left {
        bail!("{e:#}");
    }
    say("e2e real node: 10. after uninstall only the CRDs are left");
    Ok(())
}
