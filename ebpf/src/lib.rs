//! kubeprof-ebpf: the per-node eBPF profiler, which samples the processes of selected pods with
//! no change to the applications.
//!
//! So far it holds the part that needs no kernel: attributing a process to its container and pod
//! from `/proc/<pid>/cgroup` ([`parse_proc_cgroup`]), and the container ID form Kubernetes
//! reports in `status.containerStatuses[].containerID` ([`parse_status_container_id`]). Both
//! give a [`ContainerId`], so a sampled pid joins to the pod that runs it.
//!
//! This is the only crate of the workspace where `unsafe` code may appear (see `Cargo.toml`):
//! only in the BPF loader modules, each block with a `// SAFETY:` comment.

mod cgroup;

pub use cgroup::{
    CgroupError, Container, ContainerId, ContainerIdError, Runtime, parse_proc_cgroup,
    parse_status_container_id,
};
