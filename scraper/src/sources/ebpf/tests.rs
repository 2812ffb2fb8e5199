//! The eBPF plan joined with a recorded `/proc` and cgroup tree: which processes the kernel
//! samples, and the labels each one's profile gets. No BPF, no cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::path::Path;

use kubeprof_crds::{
    RelabelConfig,
    job::{EbpfContainer, EbpfLabelling, EbpfPod, EbpfShard, JobOrigin, OriginKind},
    relabel::{Labels, RelabelAction},
};
use kubeprof_ebpf::ProcessFacts;
use pretty_assertions::assert_eq;

use super::attribution::{self, EbpfPlan, EbpfTargets, Roots, StandaloneTargets};
use crate::config::ProcessSelector;

const CART: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const OTHER: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const UID: &str = "0f5c5a3e-8a1b-4c8e-9b5e-0123456789ab";

/// A fake host: `/proc/<pid>/{cgroup,comm}` and a cgroup v2 tree.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn roots(&self) -> Roots {
        Roots {
            proc: self.dir.path().join("proc"),
            cgroup: self.dir.path().join("cgroup"),
        }
    }

    /// A process whose `/proc/<pid>/cgroup` is `cgroup_file`; the v2 directory it names is made.
    fn process(&self, pid: u32, comm: &str, cgroup_file: &str) {
        let d = self.dir.path().join(format!("proc/{pid}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
        std::fs::write(d.join("cgroup"), cgroup_file).unwrap();
        if let Some(p) = cgroup_file.lines().find_map(|l| l.strip_prefix("0::")) {
            std::fs::create_dir_all(self.cgroup_dir(p)).unwrap();
        }
    }

    fn cgroup_dir(&self, path: &str) -> std::path::PathBuf {
        self.dir
            .path()
            .join("cgroup")
            .join(path.trim_start_matches('/'))
    }
}

fn v2_container(id: &str) -> String {
    format!("0::/kubepods/burstable/pod{UID}/{id}\n")
}

fn cgroup_id(p: &Path) -> u64 {
    kubeprof_ebpf::cgroup_id(p).unwrap()
}

fn labelling(labels: &[(&str, &str)], rules: Vec<RelabelConfig>, sinks: &[&str]) -> EbpfLabelling {
    EbpfLabelling {
        origin: JobOrigin {
            kind: OriginKind::ProfilingPolicy,
            namespace: String::new(),
            name: "cpu-everywhere".into(),
        },
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        relabelings: rules,
        external_labels: Labels::from([("cluster".into(), "prod".into())]),
        sinks: sinks.iter().map(|s| s.to_string()).collect(),
    }
}

fn comm_to_process_label() -> RelabelConfig {
    RelabelConfig {
        source_labels: vec!["__meta_process_comm".into()],
        target_label: Some("process".into()),
        action: RelabelAction::Replace,
        ..Default::default()
    }
}

fn shard(host_processes: bool) -> EbpfShard {
    EbpfShard {
        sample_rate: 19,
        period: kubeprof_crds::Duration::from_secs(15),
        host_processes,
        host: host_processes.then(|| labelling(&[], vec![], &["cpu-everywhere/default"])),
        pods: vec![EbpfPod {
            namespace: "shop".into(),
            name: "cart-0".into(),
            containers: vec![EbpfContainer {
                name: "app".into(),
                // As the operator writes it; the case differs from /proc's on purpose.
                id: CART.to_uppercase(),
            }],
            labelling: labelling(
                &[("__meta_kubernetes_pod_label_app", "cart")],
                vec![comm_to_process_label()],
                &["cpu-everywhere/default"],
            ),
        }],
    }
}

fn plan(targets: EbpfTargets) -> EbpfPlan {
    EbpfPlan {
        sample_rate: 19,
        period: std::time::Duration::from_secs(15),
        node: Some("node-a".into()),
        targets,
    }
}

fn facts(pid: u32, comm: &str, cgroup_id: u64) -> ProcessFacts {
    ProcessFacts {
        pid,
        comm: comm.into(),
        exe: Some(format!("/usr/bin/{comm}")),
        cgroup_id,
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_shard_selects_its_containers_and_labels_them_like_scraped_profiles() {
    let host = Host::new();
    host.process(100, "cart", &v2_container(CART));
    host.process(200, "other", &v2_container(OTHER));
    host.process(300, "sshd", "0::/system.slice/ssh.service\n");
    let cart_cgroup = cgroup_id(&host.cgroup_dir(&format!("/kubepods/burstable/pod{UID}/{CART}")));

    let (targets, problems) = attribution::compile(&plan(EbpfTargets::Shard(shard(false))));
    assert!(problems.is_empty());
    let a = attribution::scan(&targets, &host.roots());

    assert!(!a.selection.all, "no host processes were asked for");
    assert_eq!(
        a.selection.tgids.iter().copied().collect::<Vec<_>>(),
        vec![100]
    );
    assert_eq!(
        a.selection.cgroup_ids.iter().copied().collect::<Vec<_>>(),
        vec![cart_cgroup]
    );
    let (sinks, l) = a.labels_of(&facts(100, "cart", cart_cgroup)).unwrap();
    assert_eq!(sinks, vec!["cpu-everywhere/default".to_string()]);
    assert_eq!(
        l,
        labels(&[
            ("__name__", "process_cpu"),
            ("cluster", "prod"),
            ("container", "app"),
            ("namespace", "shop"),
            ("node", "node-a"),
            ("pod", "cart-0"),
            ("process", "cart"),
            ("service_name", "shop/app"),
        ])
    );
    // A process of the container that started after the scan is known by its cgroup.
    assert!(
        a.labels_of(&facts(101, "cart-worker", cart_cgroup))
            .is_some()
    );
    // Nothing of an unselected pod or of the host.
    assert_eq!(a.labels_of(&facts(200, "other", 0)), None);
    assert_eq!(a.labels_of(&facts(300, "sshd", 0)), None);
}

#[test]
fn host_processes_get_the_host_labelling_but_other_pods_stay_out() {
    let host = Host::new();
    host.process(100, "cart", &v2_container(CART));
    host.process(200, "other", &v2_container(OTHER));
    host.process(300, "sshd", "0::/system.slice/ssh.service\n");
    let (targets, _) = attribution::compile(&plan(EbpfTargets::Shard(shard(true))));
    let a = attribution::scan(&targets, &host.roots());

    assert!(a.selection.all);
    let (_, l) = a.labels_of(&facts(300, "sshd", 7)).unwrap();
    assert_eq!(l["service_name"], "sshd");
    assert_eq!(l["node"], "node-a");
    assert!(!l.contains_key("container"));
    assert_eq!(a.labels_of(&facts(200, "other", 0)), None);
    assert_eq!(
        a.labels_of(&facts(100, "cart", 0)).unwrap().1["container"],
        "app"
    );
}

#[test]
fn on_cgroup_v1_containers_are_selected_by_process_not_by_the_shared_root() {
    let host = Host::new();
    host.process(
        400,
        "cart",
        &format!("12:memory:/kubepods/burstable/pod{UID}/{CART}\n1:name=systemd:/kubepods/burstable/pod{UID}/{CART}\n0::/\n"),
    );
    let (targets, _) = attribution::compile(&plan(EbpfTargets::Shard(shard(false))));
    let a = attribution::scan(&targets, &host.roots());
    assert_eq!(
        a.selection.tgids.iter().copied().collect::<Vec<_>>(),
        vec![400]
    );
    assert!(
        a.selection.cgroup_ids.is_empty(),
        "the v2 root is everyone's"
    );
    assert!(a.labels_of(&facts(400, "cart", 1)).is_some());
}

#[test]
fn processes_of_an_earlier_scan_keep_their_labels_until_collected() {
    let host = Host::new();
    host.process(100, "cart", &v2_container(CART));
    let (targets, _) = attribution::compile(&plan(EbpfTargets::Shard(shard(false))));
    let first = attribution::scan(&targets, &host.roots());
    std::fs::remove_dir_all(host.dir.path().join("proc/100")).unwrap();
    let mut second = attribution::scan(&targets, &host.roots());
    assert!(second.selection.tgids.is_empty());
    second.remember(&first);
    assert!(
        second.labels_of(&facts(100, "cart", 0)).is_some(),
        "exited mid-period"
    );
}

fn standalone(processes: ProcessSelector, rules: Vec<RelabelConfig>) -> EbpfPlan {
    plan(EbpfTargets::Standalone(StandaloneTargets {
        processes,
        labels: labels(&[("env", "dev")]),
        relabelings: rules,
        external_labels: Labels::new(),
        sinks: vec!["local".into()],
    }))
}

#[test]
fn standalone_selects_by_comm_pid_and_cgroup_tree() {
    let host = Host::new();
    host.process(10, "spin", "0::/user.slice/a.scope\n");
    host.process(11, "idle", "0::/user.slice/b.scope\n");
    host.process(12, "web", "0::/system.slice/web.service/worker\n");
    let drop_idle = RelabelConfig {
        source_labels: vec!["__meta_process_comm".into()],
        regex: "web".into(),
        action: RelabelAction::Drop,
        ..Default::default()
    };
    let (targets, _) = attribution::compile(&standalone(
        ProcessSelector {
            comms: vec!["spin".into()],
            pids: vec![11, 999],
            cgroups: vec!["/system.slice/web.service".into()],
            ..Default::default()
        },
        vec![drop_idle],
    ));
    let a = attribution::scan(&targets, &host.roots());
    assert_eq!(
        a.selection.tgids.iter().copied().collect::<Vec<_>>(),
        vec![10, 11]
    );
    let web = cgroup_id(&host.cgroup_dir("/system.slice/web.service"));
    let worker = cgroup_id(&host.cgroup_dir("/system.slice/web.service/worker"));
    assert_eq!(
        a.selection.cgroup_ids,
        [web, worker].into_iter().collect(),
        "a cgroup and its descendants"
    );
    let (sinks, l) = a.labels_of(&facts(10, "spin", 0)).unwrap();
    assert_eq!(sinks, vec!["local".to_string()]);
    assert_eq!(
        l,
        labels(&[
            ("__name__", "process_cpu"),
            ("env", "dev"),
            ("node", "node-a"),
            ("service_name", "spin"),
        ])
    );
    assert_eq!(
        a.labels_of(&facts(12, "web", worker)),
        None,
        "dropped by a rule"
    );
    assert_eq!(a.labels_of(&facts(13, "other", 0)), None, "not selected");
}

/// BPF programs this process holds open (only one test of this binary loads any).
fn own_bpf_programs() -> usize {
    std::fs::read_dir("/proc/self/fdinfo")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_to_string(e.path()).is_ok_and(|i| i.contains("prog_type:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Polls `cond` (bounded, so a bug fails instead of hanging).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

fn source(
    plan: Option<EbpfPlan>,
) -> (
    tokio::sync::watch::Sender<std::sync::Arc<crate::sources::JobSet>>,
    super::EbpfSource,
    crate::Metrics,
    crate::Outputs,
) {
    let metrics = crate::Metrics::unregistered();
    let outputs = crate::Outputs::start(
        &[],
        std::sync::Arc::new(crate::SecretsDir(None)),
        crate::RetryConfig::default(),
        &metrics,
    )
    .unwrap();
    let (tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(crate::sources::JobSet {
        ebpf: plan,
        ..Default::default()
    }));
    let src =
        super::EbpfSource::start(rx, outputs.handle(), metrics.clone(), Roots::host()).unwrap();
    (tx, src, metrics, outputs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_loads_the_program_and_its_removal_unloads_it() {
    let test = "a_plan_loads_the_program_and_its_removal_unloads_it";
    let me = ProcessSelector {
        pids: vec![std::process::id()],
        ..Default::default()
    };
    let (tx, src, metrics, _outputs) = source(None);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(own_bpf_programs(), 0, "no plan, no program");
    assert!(src.status().get().is_none());

    tx.send_replace(std::sync::Arc::new(crate::sources::JobSet {
        ebpf: Some(standalone(me, vec![])),
        ..Default::default()
    }));
    eventually("loaded or failed", || src.status().get().is_some()).await;
    let status = src.status().get().unwrap();
    if let Some(why) = status
        .reason
        .as_deref()
        .filter(|r| r.starts_with("permission_denied"))
    {
        println!("SKIPPED {test}: BPF is not allowed here ({why})");
        return;
    }
    assert!(status.running, "{status:?}");
    assert_eq!(metrics.ebpf_running.get(), 1);
    assert!(own_bpf_programs() > 0);

    tx.send_replace(std::sync::Arc::new(crate::sources::JobSet::default()));
    eventually("unloaded", || metrics.ebpf_running.get() == 0).await;
    assert_eq!(own_bpf_programs(), 0, "the program is gone with the plan");
    assert!(src.status().get().is_none());
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_cannot_load_is_reported_with_its_reason() {
    let mut plan = standalone(
        ProcessSelector {
            all: true,
            ..Default::default()
        },
        vec![],
    );
    plan.sample_rate = 0; // refused before anything touches the kernel
    let (_tx, src, metrics, _outputs) = source(Some(plan));
    eventually("reported", || src.status().get().is_some()).await;
    let status = src.status().get().unwrap();
    assert!(!status.running);
    let reason = status.reason.unwrap_or_default();
    assert!(
        reason.starts_with("config: ") && reason.contains("sample rate 0"),
        "{reason}"
    );
    let errors = metrics
        .ebpf_errors
        .get_or_create(&crate::metrics::ReasonLabels {
            reason: "config".into(),
        })
        .get();
    assert_eq!(errors, 1);
    src.stop().await;
}
