//! kubeprof-ebpf: the per-node eBPF profiler, which samples the processes of selected pods with
//! no change to the applications.
//!
//! - [`Profiler`] loads a BPF program (`src/bpf/profile.bpf.c`) on a software CPU-clock perf
//!   event of every online CPU at [`ProfilerConfig::sample_rate_hz`]. For a task of the
//!   [`Selection`] (by cgroup v2 id, by tgid, or all; filtered in the kernel, so the cost follows
//!   what is profiled) it counts (tgid, thread, comm, cgroup, user stack, kernel stack) in BPF
//!   maps. [`Profiler::collect`] drains them (double-buffered: no sample lost or counted twice
//!   while draining), symbolises the stacks with blazesym and returns a [`Collection`], which
//!   [`Collection::profiles`] turns into one pprof CPU profile per group of processes the caller
//!   chooses (a container, usually), with the per-process facts ([`ProcessFacts::meta_labels`])
//!   for the label pipeline.
//! - [`parse_proc_cgroup`] and [`parse_status_container_id`] attribute a process to its
//!   container and pod; [`cgroup_id`] gives the id to select a container's cgroup by.
//!
//! # How the wiring is meant to look
//!
//! The scraper's eBPF source runs one [`Profiler`] per node on a thread of its own, calling
//! [`Profiler::run_period`] in a loop, and sets the [`Selection`] whenever its view of the
//! node's pods changes: on cgroup v2 the selected containers' cgroup ids (from the pod's
//! `containerStatuses[].containerID` joined with [`parse_proc_cgroup`] of the node's processes,
//! or the cgroup directory found by the same join), on cgroup v1 (where a container's v2 cgroup
//! is usually the root) their processes' tgids, rescanned every period. Config, in the
//! standalone YAML and in the operator's shard alike:
//!
//! ```yaml
//! ebpf:
//!   sampleRate: 97          # Hz per CPU (ProfilerConfig::sample_rate_hz)
//!   period: 15s             # how often run_period returns
//!   hostProcesses: false    # Selection::all (every process of the node)
//!   targets: [...]          # pods/containers selected by the policy: -> Selection
//! ```
//!
//! # Limits
//!
//! - **Frame-pointer unwinding.** The kernel walks stacks by frame pointers: full stacks for Go
//!   (which keeps them) and for C, C++ and Rust built with `-fno-omit-frame-pointer` (or
//!   `-C force-frame-pointers=yes`); for code built without them, the leaf function and a
//!   garbled or truncated rest. A leaf function without a frame of its own (GCC's
//!   `-momit-leaf-frame-pointer`, the default on some distributions; Go's frameless leaf
//!   functions; GCC 12 keeps leaf functions frameless above -O0 even with
//!   `-mno-omit-leaf-frame-pointer`) loses its caller from the stack.
//!   Unwinding with `.eh_frame` tables (as the OpenTelemetry profiler
//!   and Parca Agent do) would give full stacks for nearly every native binary, at the cost of
//!   parsing each binary's tables in user space, loading them into BPF maps (megabytes per
//!   node), and a much larger BPF program (bounded loops over the tables per frame).
//! - **No interpreter stacks yet**: Python, Ruby, Node.js and JVM code shows as the
//!   interpreter's or JIT's own frames (JIT frames unnamed).
//! - **Kernel >= 5.8** (BPF ring buffer); the program reads no kernel structure, so it needs no
//!   BTF. Root, or CAP_BPF + CAP_PERFMON + CAP_SYS_ADMIN (to open `/proc/<pid>/map_files`).
//! - **Cgroup ids are cgroup v2 ids**: on a cgroup v1 (hybrid) node containers usually share the
//!   v2 root cgroup, so select them by tgid there.
//! - Stacks are at most 127 frames; a stack the kernel's stack map cannot hold (full, or a hash
//!   collision) is counted in [`Losses::stacks`] and shown as a `[lost stack]` frame.
//! - The symboliser is bounded by size ([`ProfilerConfig::max_symbol_cache_bytes`],
//!   [`ProfilerConfig::max_symbolizer_file_bytes`]): least recently used files are unloaded
//!   once the collection that needed them has symbolised its samples, and parsed again when a
//!   later sample needs them (CPU traded for memory when many large binaries run at once).
//! - A process is read from `/proc` when it is first sampled (announced by the BPF program
//!   through a ring buffer), and its mapped files are kept open until its last samples are
//!   drained, so a short-lived process is symbolised when it lived long enough to be read (a few
//!   milliseconds); a pid reused within one period keeps the first process's mappings.
//!
//! This is the only crate of the workspace where `unsafe` code may appear (see `Cargo.toml`):
//! only in the sampler (`perf_event_open`, `membarrier`), each block with a `// SAFETY:` comment.

mod cgroup;
mod process;
mod profile;
mod profiler;
mod sampler;
mod symbolize;

pub use cgroup::{
    CgroupError, Container, ContainerId, ContainerIdError, Runtime, parse_proc_cgroup,
    parse_status_container_id,
};
pub use process::{ProcessFacts, labels};
pub use profiler::{CollectStats, Collection, GroupProfile, LOST_STACK, Profiler, ProfilerConfig};
pub use sampler::{Losses, MapCapacities, Selection};

use std::path::Path;

/// The profile type of every profile this crate builds: the `__name__` the label pipeline gives
/// it (`kubeprof_crds::labels::finalize`), as Grafana Alloy's and Pyroscope's eBPF profilers do.
pub const PROFILE_NAME: &str = "process_cpu";

/// Why the profiler could not start or collect.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// The sample rate is 0 or above 10 kHz.
    #[error("sample rate {0} Hz is out of range (1..=10000)")]
    SampleRate(u32),
    /// A step of loading the BPF program failed.
    #[error("could not {what}: {source}")]
    Load {
        /// The step.
        what: &'static str,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },
    /// The BPF object lacks a map (a build problem).
    #[error("the BPF object has no map {0}")]
    MissingMap(&'static str),
    /// `/sys/devices/system/cpu/online` could not be read.
    #[error("could not read the online CPUs from /sys/devices/system/cpu/online")]
    OnlineCpus,
    /// `perf_event_open` failed.
    #[error(
        "could not open a CPU-clock perf event on CPU {cpu} (needs root or CAP_PERFMON): {source}"
    )]
    PerfEvent {
        /// The CPU.
        cpu: u32,
        /// The OS error.
        source: std::io::Error,
    },
    /// Updating a BPF map failed.
    #[error("could not update BPF map {map}: {source}")]
    UpdateMap {
        /// The map.
        map: &'static str,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },
}

impl SamplerError {
    /// Whether the process may not use BPF or perf events here (not root, no CAP_BPF /
    /// CAP_PERFMON, or a seccomp profile that forbids `bpf`): the profiler cannot run on this
    /// node, as opposed to a bug or a resource limit.
    pub fn is_permission_denied(&self) -> bool {
        match self {
            Self::Load { source, .. } | Self::UpdateMap { source, .. } => {
                source.kind() == libbpf_rs::ErrorKind::PermissionDenied
            }
            Self::PerfEvent { source, .. } => {
                source.kind() == std::io::ErrorKind::PermissionDenied
                    || source.raw_os_error() == Some(libc::EACCES)
            }
            _ => false,
        }
    }
}

/// The cgroup v2 id of the cgroup directory `path` (e.g. `/sys/fs/cgroup/<...>`, or
/// `/sys/fs/cgroup/unified/<...>` on a hybrid node): what `bpf_get_current_cgroup_id` returns for
/// its processes, and what [`Selection::cgroup_ids`] holds. It is the directory's inode number.
pub fn cgroup_id(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(path)?.ino())
}
