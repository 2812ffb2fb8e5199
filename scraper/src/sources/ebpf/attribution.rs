//! Which processes to sample and how their profiles are labelled: a plan (the node's shard, or
//! the standalone file's section) joined with what `/proc` shows now. Pure but for reading
//! `/proc` and the cgroup tree under roots given by the caller, so tests use fixture trees.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
};

use kubeprof_crds::{
    constants::labels as names,
    job::{EbpfLabelling, EbpfShard},
    relabel::{CompiledRelabel, Labels, compile_all},
};
use kubeprof_ebpf::{ProcessFacts, Selection, parse_proc_cgroup};

use crate::config::ProcessSelector;

/// What the eBPF source is asked to do; `None` in a job set: load no BPF program.
#[derive(Clone, Debug, PartialEq)]
pub struct EbpfPlan {
    /// Samples per second per CPU.
    pub sample_rate: u32,
    /// How often the samples become profiles.
    pub period: std::time::Duration,
    /// This node's name (the `node` label), when known.
    pub node: Option<String>,
    /// Which processes.
    pub targets: EbpfTargets,
}

/// The two ways to say which processes.
#[derive(Clone, Debug, PartialEq)]
pub enum EbpfTargets {
    /// Cluster mode: the containers of the node's shard.
    Shard(EbpfShard),
    /// Standalone: processes of this machine, one labelling for all.
    Standalone(StandaloneTargets),
}

/// The standalone file's selection and labelling.
#[derive(Clone, Debug, PartialEq)]
pub struct StandaloneTargets {
    /// Which processes.
    pub processes: ProcessSelector,
    /// Labels before relabelling.
    pub labels: Labels,
    /// Rules over the labels and `__meta_process_*`.
    pub relabelings: Vec<kubeprof_crds::RelabelConfig>,
    /// Added after relabelling.
    pub external_labels: Labels,
    /// Sink names.
    pub sinks: Vec<String>,
}

/// Labels, rules and sinks of a group of processes, compiled.
#[derive(Debug)]
pub(crate) struct Labelling {
    labels: Labels,
    rules: Vec<CompiledRelabel>,
    external: Labels,
    sinks: Vec<String>,
    /// Host and standalone processes have no container: `service_name` defaults to their comm.
    service_from_comm: bool,
}

impl Labelling {
    fn compile(
        l: &EbpfLabelling,
        extra: Labels,
        service_from_comm: bool,
    ) -> Result<Self, kubeprof_crds::relabel::RelabelError> {
        let mut labels = l.labels.clone();
        labels.extend(extra);
        Ok(Self {
            labels,
            rules: compile_all(&l.relabelings)?,
            external: l.external_labels.clone(),
            sinks: l.sinks.clone(),
            service_from_comm,
        })
    }

    /// The final labels of `p`'s profile and its sinks, or `None` when a rule drops it.
    pub(crate) fn finalize(&self, p: &ProcessFacts) -> Option<(Vec<String>, Labels)> {
        let mut l = self.labels.clone();
        l.extend(p.meta_labels());
        if self.service_from_comm && !l.contains_key(names::SERVICE_NAME) {
            l.insert(names::SERVICE_NAME.into(), p.comm.clone());
        }
        let l = kubeprof_crds::labels::finalize(
            l,
            kubeprof_ebpf::PROFILE_NAME,
            &self.rules,
            &self.external,
        )?;
        Some((self.sinks.clone(), l))
    }
}

/// Where `/proc` and the cgroup v2 tree are (the host's, in a container that mounts them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roots {
    /// `/proc`.
    pub proc: PathBuf,
    /// The cgroup v2 mount: `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid node.
    pub cgroup: PathBuf,
}

impl Roots {
    /// The machine's own: `/proc`, and the cgroup v2 mount found under `/sys/fs/cgroup`.
    pub fn host() -> Self {
        let unified = Path::new("/sys/fs/cgroup/unified");
        let cgroup = if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
            && unified.join("cgroup.procs").exists()
        {
            unified.to_path_buf()
        } else {
            PathBuf::from("/sys/fs/cgroup")
        };
        Self {
            proc: PathBuf::from("/proc"),
            cgroup,
        }
    }
}

/// A plan compiled once per change: container IDs to their labelling.
#[derive(Debug)]
pub(crate) enum CompiledTargets {
    Shard {
        /// Container ID (lowercase hex) -> labelling.
        containers: HashMap<String, Arc<Labelling>>,
        /// For processes in no container, when the host is profiled.
        host: Option<Arc<Labelling>>,
    },
    Standalone {
        processes: ProcessSelector,
        labelling: Arc<Labelling>,
    },
}

/// Why part of a plan was left out (a relabel rule that does not compile).
#[derive(Debug)]
pub(crate) struct PlanProblem {
    /// The pod (`namespace/name`) or `host`.
    pub what: String,
    /// What is wrong.
    pub message: String,
}

/// Compiles `plan`, leaving out (and returning) the pods whose rules do not compile.
pub(crate) fn compile(plan: &EbpfPlan) -> (CompiledTargets, Vec<PlanProblem>) {
    let mut problems = Vec::new();
    let node_label = |l: &mut Labels| {
        if let Some(n) = &plan.node {
            l.entry("node".into()).or_insert_with(|| n.clone());
        }
    };
    match &plan.targets {
        EbpfTargets::Shard(shard) => {
            let mut containers = HashMap::new();
            for pod in &shard.pods {
                for c in &pod.containers {
                    let mut extra = Labels::from([
                        ("namespace".into(), pod.namespace.clone()),
                        ("pod".into(), pod.name.clone()),
                        ("container".into(), c.name.clone()),
                        (names::META_NAMESPACE.into(), pod.namespace.clone()),
                        (names::META_POD_NAME.into(), pod.name.clone()),
                        (names::META_CONTAINER_NAME.into(), c.name.clone()),
                    ]);
                    node_label(&mut extra);
                    // The operator's labels win over these defaults.
                    extra.retain(|k, _| !pod.labelling.labels.contains_key(k));
                    match Labelling::compile(&pod.labelling, extra, false) {
                        Ok(l) => {
                            containers.insert(c.id.to_ascii_lowercase(), Arc::new(l));
                        }
                        Err(e) => problems.push(PlanProblem {
                            what: format!("{}/{}", pod.namespace, pod.name),
                            message: e.to_string(),
                        }),
                    }
                }
            }
            let host = if shard.host_processes {
                let mut extra = Labels::new();
                node_label(&mut extra);
                let empty = EbpfLabelling {
                    origin: kubeprof_crds::job::JobOrigin {
                        kind: kubeprof_crds::job::OriginKind::ProfilingPolicy,
                        namespace: String::new(),
                        name: String::new(),
                    },
                    labels: Labels::new(),
                    relabelings: vec![],
                    external_labels: Labels::new(),
                    sinks: vec![],
                };
                match Labelling::compile(shard.host.as_ref().unwrap_or(&empty), extra, true) {
                    Ok(l) => Some(Arc::new(l)),
                    Err(e) => {
                        problems.push(PlanProblem {
                            what: "host".into(),
                            message: e.to_string(),
                        });
                        None
                    }
                }
            } else {
                None
            };
            (CompiledTargets::Shard { containers, host }, problems)
        }
        EbpfTargets::Standalone(s) => {
            let mut labels = s.labels.clone();
            node_label(&mut labels);
            let labelling = match compile_all(&s.relabelings) {
                Ok(rules) => Labelling {
                    labels,
                    rules,
                    external: s.external_labels.clone(),
                    sinks: s.sinks.clone(),
                    service_from_comm: true,
                },
                // Validated with the file; kept safe anyway: nothing is profiled.
                Err(e) => {
                    problems.push(PlanProblem {
                        what: "ebpf.relabelings".into(),
                        message: e.to_string(),
                    });
                    return (
                        CompiledTargets::Standalone {
                            processes: ProcessSelector::default(),
                            labelling: Arc::new(Labelling {
                                labels: Labels::new(),
                                rules: vec![],
                                external: Labels::new(),
                                sinks: vec![],
                                service_from_comm: true,
                            }),
                        },
                        problems,
                    );
                }
            };
            (
                CompiledTargets::Standalone {
                    processes: s.processes.clone(),
                    labelling: Arc::new(labelling),
                },
                problems,
            )
        }
    }
}

/// The processes found for a plan: what the kernel samples, and whose profile each sample
/// joins.
#[derive(Debug, Default)]
pub(crate) struct Attribution {
    /// For the kernel.
    pub selection: Selection,
    pids: HashMap<u32, Arc<Labelling>>,
    cgroups: HashMap<u64, Arc<Labelling>>,
    /// Processes seen in a container no plan selects: never host processes.
    foreign: BTreeSet<u32>,
    /// Every other sampled process (host processes, or `all` standalone).
    rest: Option<Arc<Labelling>>,
}

impl Attribution {
    /// The final labels and sinks of `p`'s profile; `None`: not selected, or dropped by a rule.
    pub(crate) fn labels_of(&self, p: &ProcessFacts) -> Option<(Vec<String>, Labels)> {
        let labelling = match self.pids.get(&p.pid) {
            Some(l) => l,
            None => match self.cgroups.get(&p.cgroup_id) {
                Some(l) => l,
                None if self.foreign.contains(&p.pid) => return None,
                None => self.rest.as_ref()?,
            },
        };
        labelling.finalize(p)
    }

    /// Keeps what `older` knew of processes `self` no longer sees (they exited within the
    /// period, and their samples are still to be drained).
    pub(crate) fn remember(&mut self, older: &Self) {
        for (pid, l) in &older.pids {
            self.pids.entry(*pid).or_insert_with(|| Arc::clone(l));
        }
        for (id, l) in &older.cgroups {
            self.cgroups.entry(*id).or_insert_with(|| Arc::clone(l));
        }
        self.foreign.extend(older.foreign.iter().copied());
    }

    /// Processes found selected.
    pub(crate) fn processes(&self) -> usize {
        self.pids.len()
    }
}

/// Pids of `/proc`.
fn pids(proc_root: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The cgroup v2 path of a process (`0::<path>`).
fn v2_path(cgroup_file: &str) -> Option<&str> {
    cgroup_file.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Joins `targets` with the processes under `roots` now.
pub(crate) fn scan(targets: &CompiledTargets, roots: &Roots) -> Attribution {
    let mut a = Attribution::default();
    match targets {
        CompiledTargets::Shard { containers, host } => {
            a.selection.all = host.is_some();
            a.rest = host.clone();
            for pid in pids(&roots.proc) {
                let Ok(text) = std::fs::read(roots.proc.join(format!("{pid}/cgroup"))) else {
                    continue;
                };
                let Ok(Some(container)) = parse_proc_cgroup(&text) else {
                    continue;
                };
                let Some(l) = containers.get(container.id.as_str()) else {
                    a.foreign.insert(pid);
                    continue;
                };
                a.pids.insert(pid, Arc::clone(l));
                a.selection.tgids.insert(pid);
                // On cgroup v2 the container's own cgroup selects its processes in the kernel,
                // new ones included; on v1 (hybrid) the v2 path is the root, shared by all.
                let text = String::from_utf8_lossy(&text);
                if let Some(path) = v2_path(&text).filter(|p| p.contains(container.id.as_str()))
                    && let Ok(id) =
                        kubeprof_ebpf::cgroup_id(&roots.cgroup.join(path.trim_start_matches('/')))
                {
                    a.selection.cgroup_ids.insert(id);
                    a.cgroups.insert(id, Arc::clone(l));
                }
            }
        }
        CompiledTargets::Standalone {
            processes,
            labelling,
        } => {
            if processes.all {
                a.selection.all = true;
                a.rest = Some(Arc::clone(labelling));
                return a;
            }
            for &pid in &processes.pids {
                if roots.proc.join(pid.to_string()).exists() {
                    a.selection.tgids.insert(pid);
                    a.pids.insert(pid, Arc::clone(labelling));
                }
            }
            for path in &processes.cgroups {
                for id in cgroup_tree_ids(&roots.cgroup.join(path.trim_start_matches('/'))) {
                    a.selection.cgroup_ids.insert(id);
                    a.cgroups.insert(id, Arc::clone(labelling));
                }
            }
            if processes.comms.is_empty() && processes.executables.is_empty() {
                return a;
            }
            for pid in pids(&roots.proc) {
                let dir = roots.proc.join(pid.to_string());
                let comm_matches = !processes.comms.is_empty()
                    && std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| {
                        processes
                            .comms
                            .iter()
                            .any(|x| x == c.trim_end_matches('\n'))
                    });
                let exe_matches = !comm_matches
                    && !processes.executables.is_empty()
                    && std::fs::read_link(dir.join("exe"))
                        .is_ok_and(|e| processes.executables.iter().any(|x| Path::new(x) == e));
                if comm_matches || exe_matches {
                    a.selection.tgids.insert(pid);
                    a.pids.insert(pid, Arc::clone(labelling));
                }
            }
        }
    }
    a
}

/// Largest number of cgroups one configured path may stand for.
const MAX_CGROUPS_PER_PATH: usize = 4_096;

/// The ids of the cgroup at `dir` and of its descendants (the kernel matches exact cgroups).
fn cgroup_tree_ids(dir: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        if out.len() >= MAX_CGROUPS_PER_PATH {
            break;
        }
        let Ok(id) = kubeprof_ebpf::cgroup_id(&d) else {
            continue;
        };
        out.push(id);
        if let Ok(entries) = std::fs::read_dir(&d) {
            todo.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}
